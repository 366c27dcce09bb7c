"""Evaluation that cannot fool itself.

Accuracy under our attacks and under independent ones (torchattacks' AutoAttack and the
black-box Square attack), gradient-masking checks, accuracy under common corruptions
(CIFAR-10-C) and under occlusion of image segments (random ones, or those the model's own
attributions rank highest), stability of LIME explanations under attack, the fidelity of any
explanation to the model on held-out perturbations, a robust-accuracy scorer for scikit-learn
searches, and JSON/Markdown/PNG reports.

Every function takes a ``torch.nn.Module`` returning logits or a fitted
:class:`~attribshield.RobustAttributionClassifier`, plus images ``X`` ``(N, C, H, W)`` in
[0, 1] and labels ``y`` ``(N,)``.
"""
from .corruptions import corruption_accuracy, corruption_records
from .fidelity import surrogate_r2
from .occlusion import occlude_segments, occlusion_accuracy
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
from .stats import mcnemar_exact, paired_bootstrap_ci, paired_verdict, pooled_mcnemar_exact, seed_matched_differences

__all__ = [
    "mcnemar_exact",
    "pooled_mcnemar_exact",
    "paired_bootstrap_ci",
    "paired_verdict",
    "seed_matched_differences",
    "clean_accuracy",
    "robust_accuracy",
    "autoattack_accuracy",
    "square_accuracy",
    "accuracy_vs_eps",
    "robustness_report",
    "corruption_accuracy",
    "corruption_records",
    "surrogate_r2",
    "occlusion_accuracy",
    "occlude_segments",
    "attribution_stability",
    "topk_intersection",
    "segment_spearman",
    "make_robust_scorer",
    "evaluate_model",
    "write_report",
]
