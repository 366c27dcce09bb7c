"""Penalise the model's input gradient inside the spurious mask (double backprop)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import _MaskedPenalty

__all__ = ["SpuriousGradientPenalty"]


class SpuriousGradientPenalty(_MaskedPenalty):
    """Squared input gradient of the loss on the spurious pixels.

    ``R = weight * mean_i sum_pixels (M_i * grad_x CE(f(x_i), y_i))^2``

    Parameters
    ----------
    weight : float >= 0, default=1.0
        Multiplier ``lambda`` of the penalty (0 switches it off at no cost).

    Notes
    -----
    The cross-entropy is summed over the batch before differentiating, so the gradient with
    respect to ``x_i`` is the gradient of ``CE_i`` alone (in eval mode) and its scale does
    not depend on the batch size; the penalty then averages over images.  The gradient is
    taken with ``create_graph=True`` (double backprop), so the penalty is differentiable with
    respect to the parameters.  Cost: one forward pass, one backward pass that builds a graph,
    and, at the caller's ``backward()``, a backward pass through that backward (about 3x a
    plain forward+backward of the batch).

    The model's mode is left as the caller set it.  In train mode, BatchNorm layers use the
    batch statistics (so ``x_i``'s gradient has small terms through the other images) and
    update their running statistics once more with the clean batch.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> X, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    >>> pen = SpuriousGradientPenalty(weight=0.5).penalty(model, X, y, torch.ones(3, 1, 2, 2))
    >>> pen.ndim, bool(pen >= 0), pen.requires_grad
    (0, True, True)
    """

    requires_mask = True  # declared capability: penalises inside the spurious mask

    def __init__(self, weight=1.0):
        self.weight = weight

    def penalty(self, model, X, y, mask) -> torch.Tensor:
        """Return the penalty for a batch.

        Parameters
        ----------
        model : torch.nn.Module or fitted RobustAttributionClassifier
            Returns logits ``(N, K)``.  Its mode is not changed.
        X : torch.Tensor of shape (N, C, H, W)
            Clean images (on the model's device).
        y : torch.Tensor of shape (N,)
            True labels.
        mask : torch.Tensor of shape (N, 1, H, W) or (N, C, H, W), values in [0, 1]
            Spurious pixels (1 = penalised).

        Returns
        -------
        torch.Tensor, scalar, float32, >= 0
            Differentiable with respect to the parameters; a zero that still supports
            ``backward()`` when ``weight == 0`` or the mask is empty.
        """
        module, X, y, mask, empty = self._prepare(model, X, y, mask)
        if empty:
            return self._zero(X)
        X = X.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(module(X).float(), y, reduction="sum")
            if not loss.requires_grad:  # nothing in the model depends on X or parameters
                return self._zero(X)
            (g,) = torch.autograd.grad(loss, X, create_graph=True, allow_unused=True)
            if g is None:  # the output does not depend on X: constant model
                return self._zero(X)
            per_image = (mask * g).pow(2).flatten(1).sum(1)
            return float(self.weight) * per_image.float().mean()
