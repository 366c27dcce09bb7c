"""Threat-model arithmetic shared by the attacks: norms, projections, steps, random starts.

All functions work on batches ``(N, C, H, W)`` and treat each sample independently.
``eps`` may be a float or a tensor broadcastable to ``X`` (a per-pixel budget, used by
:class:`~attribshield.attacks.GuidedPGD`).
"""
from __future__ import annotations

import torch

NORMS = ("Linf", "L2")
_TINY = 1e-12


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped ``(N, 1, 1, 1)`` for broadcasting."""
    return t.flatten(1).norm(p=2, dim=1).clamp_min(_TINY).view(-1, *([1] * (t.ndim - 1)))


def project(delta: torch.Tensor, eps, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "Linf":
        if isinstance(eps, torch.Tensor):
            return torch.maximum(torch.minimum(delta, eps), -eps)
        return delta.clamp(-eps, eps)
    n = _flat_norm(delta)
    return delta * torch.clamp(eps / n, max=1.0)


def step(grad: torch.Tensor, step_size, norm: str) -> torch.Tensor:
    """Steepest-ascent step of length ``step_size`` in ``norm`` for gradient ``grad``."""
    if norm == "Linf":
        return step_size * grad.sign()
    return step_size * grad / _flat_norm(grad)


def random_start(X: torch.Tensor, eps, norm: str, generator=None) -> torch.Tensor:
    """A random ``delta`` inside the ball: uniform in the Linf box, or uniform in the L2 ball."""
    if norm == "Linf":
        u = torch.rand(X.shape, generator=generator, device=X.device, dtype=X.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(X.shape, generator=generator, device=X.device, dtype=X.dtype)
    g = g / _flat_norm(g)
    d = X[0].numel()
    r = torch.rand((X.shape[0],), generator=generator, device=X.device, dtype=X.dtype) ** (1.0 / d)
    return g * r.view(-1, *([1] * (X.ndim - 1))) * eps


def distance(X_adv: torch.Tensor, X: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample distance ``||X_adv - X||`` in ``norm``, shape ``(N,)``."""
    d = (X_adv - X).flatten(1)
    return d.abs().amax(dim=1) if norm == "Linf" else d.norm(p=2, dim=1)
