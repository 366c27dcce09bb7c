"""attribshield: explainability-guided defense for image classifiers.

LIME attributions tell which image regions a model leans on; attribshield turns them into a
training signal (masking and sensitivity penalties on spurious regions) inside adversarial
training, and evaluates the result without fooling itself.
"""
from . import attacks, bounds, evaluation, explainers, maskers, models, regularizers
from .estimator import RobustAttributionClassifier

__version__ = "0.1.0"
__all__ = ["RobustAttributionClassifier", "attacks", "bounds", "evaluation", "explainers", "maskers",
           "models", "regularizers", "__version__"]
