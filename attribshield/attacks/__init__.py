"""Adversarial attacks: ``perturb(model, X, y, *, target=None) -> X_adv``.

Inputs are ``(N, C, H, W)`` tensors in [0, 1]; normalisation belongs inside the model.
"""
from ._threat import NORMS, distance, project
from .fgsm import FGSM
from .nfgsm import NFGSM
from .pgd import PGD, GuidedPGD
from .trades import TRADES

__all__ = ["FGSM", "NFGSM", "PGD", "GuidedPGD", "TRADES", "NORMS", "distance", "project"]
