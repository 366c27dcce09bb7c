"""A scikit-learn scorer for robust accuracy (``scoring=`` in ``GridSearchCV``)."""
from __future__ import annotations

import numpy as np

from .._utils import check_batch_size
from .robust import robust_accuracy

__all__ = ["make_robust_scorer"]


class _RobustScorer:
    """Picklable callable ``scorer(estimator, X, y) -> robust accuracy``."""

    def __init__(self, attacker, batch_size):
        self.attacker = attacker
        self.batch_size = batch_size

    def __call__(self, estimator, X, y, **kwargs):
        if hasattr(estimator, "steps"):  # a Pipeline: score its final estimator on the transformed X
            for _, step in estimator.steps[:-1]:
                if step is not None and step != "passthrough":
                    X = step.transform(X)
            estimator = estimator.steps[-1][1]
        encode = getattr(estimator, "encode_labels", None)
        if encode is not None:  # labels -> the module's output indices (unknown labels: ValueError)
            y = encode(np.asarray(y.cpu() if hasattr(y, "cpu") else y))
        return robust_accuracy(estimator, X, y, self.attacker, batch_size=self.batch_size)

    def __repr__(self):
        return f"make_robust_scorer({self.attacker!r})"


def make_robust_scorer(attacker, *, batch_size=256):
    """Return a scorer computing robust accuracy under ``attacker``; higher is better.

    Parameters
    ----------
    attacker : Attacker
        E.g. ``PGD(eps=8/255, steps=10)``.
    batch_size : int, default=256

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float`` in [0, 1], for ``GridSearchCV(..., scoring=scorer)``
        or ``cross_val_score``.  ``estimator`` is a fitted
        :class:`~attribshield.RobustAttributionClassifier` (or a Pipeline ending in one).

    Examples
    --------
    >>> from attribshield.attacks import PGD
    >>> scorer = make_robust_scorer(PGD(eps=8 / 255, steps=10))
    >>> callable(scorer)
    True
    """
    if not hasattr(attacker, "perturb"):
        raise ValueError(f"attacker must have a perturb(model, X, y) method, got {type(attacker).__name__}")
    return _RobustScorer(attacker, check_batch_size(batch_size))
