"""Regularizers: penalise the model's sensitivity inside the spurious mask.

:class:`SpuriousGradientPenalty` is the squared input gradient of the loss on the masked
pixels (double backprop); :class:`SpuriousSensitivityPenalty` estimates the same quantity by
a central finite difference along random sign directions (no second-order graph).
Both: ``penalty(model, X, y, mask) -> scalar tensor``.
:class:`GradAlign` (no mask, ``requires_mask = False``) aligns the input gradients at ``x``
and at a random neighbour, against catastrophic overfitting of single-step training.
"""
from .gradalign import GradAlign
from .input_gradient import SpuriousGradientPenalty
from .sensitivity import SpuriousSensitivityPenalty

__all__ = ["SpuriousGradientPenalty", "SpuriousSensitivityPenalty", "GradAlign"]
