"""Shared checks of the regularizers."""
from __future__ import annotations

import torch

from .._params import Real, validate_params
from ..base import Component, get_module


def _check_batch(regularizer, model, X, y):
    """Validate ``regularizer``'s hyperparameters, ``X`` and ``y``; return ``(module, X, y)``.

    ``X`` comes back detached, ``y`` as int64 labels on ``X``'s device.
    """
    regularizer._validate_params()
    module = get_module(model)
    if not isinstance(X, torch.Tensor) or X.ndim != 4 or not X.is_floating_point():
        raise ValueError(
            f"X must be a float tensor of shape (N, C, H, W), got {type(X).__name__} "
            f"of shape {tuple(getattr(X, 'shape', ()))}"
        )
    n = X.shape[0]
    y = torch.as_tensor(y, device=X.device)
    if y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must be integer labels of shape ({n},), got {y.dtype} of shape {tuple(y.shape)}")
    return module, X.detach(), y.long()


class _MaskedPenalty(Component):
    """Base: validates ``weight``, the inputs and the mask; the zero shortcut."""

    _parameter_constraints = {"weight": [Real(0, None)]}

    def _validate_params(self) -> None:
        validate_params(self)

    @staticmethod
    def _zero(X: torch.Tensor) -> torch.Tensor:
        # a leaf that requires grad: adding it to a loss and calling backward() always works,
        # even when the penalty is the whole loss
        return torch.zeros((), dtype=torch.float32, device=X.device, requires_grad=True)

    def _prepare(self, model, X, y, mask):
        """Validate and return ``(module, X, y, mask, empty)``; ``empty`` = nothing to penalise."""
        module, X, y = _check_batch(self, model, X, y)
        n, c, h, w = X.shape
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[0] != n \
                or mask.shape[1] not in (1, c) or tuple(mask.shape[2:]) != (h, w):
            raise ValueError(
                f"mask must have shape (N, 1, H, W) or (N, C, H, W) = ({n}, 1 or {c}, {h}, {w}), "
                f"got {tuple(getattr(mask, 'shape', ()))}"
            )
        mask = mask.detach().to(device=X.device, dtype=X.dtype)
        lo, hi = torch.stack([mask.amin(), mask.amax()]).tolist()  # one host sync
        if not (lo >= 0 and hi <= 1):  # also catches NaN
            raise ValueError(f"mask values must lie in [0, 1], got min={lo:.4g} max={hi:.4g}")
        empty = hi == 0 or float(self.weight) == 0.0
        return module, X, y, mask, empty
