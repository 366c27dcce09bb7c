"""Evaluation that cannot fool itself.

Accuracy under our attacks and under independent ones (torchattacks' AutoAttack and the
black-box Square attack), gradient-masking checks, accuracy under common corruptions
(CIFAR-10-C), stability of LIME explanations under attack, a robust-accuracy scorer for
scikit-learn searches, and JSON/Markdown/PNG reports.

Every function takes a ``torch.nn.Module`` returning logits or a fitted
:class:`~attribshield.RobustAttributionClassifier`, plus images ``X`` ``(N, C, H, W)`` in
[0, 1] and labels ``y`` ``(N,)``.
"""
from .corruptions import corruption_accuracy
from .report import evaluate_model, write_report
from .robust import (
    accuracy_vs_eps,
    autoattack_accuracy,
    clean_accuracy,
    robust_accuracy,
    robustness_report,
    square_accuracy,
)
from .scoring import make_robust_scorer
from .stability import attribution_stability, segment_spearman, topk_intersection

__all__ = [
    "clean_accuracy",
    "robust_accuracy",
    "autoattack_accuracy",
    "square_accuracy",
    "accuracy_vs_eps",
    "robustness_report",
    "corruption_accuracy",
    "attribution_stability",
    "topk_intersection",
    "segment_spearman",
    "make_robust_scorer",
    "evaluate_model",
    "write_report",
]
