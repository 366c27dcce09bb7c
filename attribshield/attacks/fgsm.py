"""Fast Gradient Sign Method, with the random start of "Fast is better than free"."""
from __future__ import annotations

import torch

from ._base import GradientAttack
from ._threat import project, random_start, step


class FGSM(GradientAttack):
    """Single-step attack (FGSM), optionally from a random start (FGSM-RS).

    With ``random_start=True`` and ``step_size=1.25 * eps`` this is the attack of "fast"
    adversarial training (Wong, Rice and Kolter, 2020).

    Parameters
    ----------
    eps : float, default=8/255
        Radius of the threat model (``||X_adv - X|| <= eps``).
    random_start : bool, default=False
        Start from a uniformly random point of the eps-ball instead of ``X``.
    step_size : float or None, default=None
        Length of the step; ``None`` means ``eps`` without random start (classic FGSM) and
        ``1.25 * eps`` with it (FGSM-RS).
    norm : {"Linf", "L2"}, default="Linf"
        With ``"L2"`` the step follows the normalised gradient (fast gradient method).
    random_state : int or None, default=None
        Seed of the random start (``None``: torch's global generator).

    Notes
    -----
    Shapes: ``X`` is ``(N, C, H, W)`` in [0, 1]; ``X_adv`` has the same shape, dtype and
    device and lies in [0, 1] and in the eps-ball around ``X``.

    References
    ----------
    Goodfellow, Shlens and Szegedy, "Explaining and harnessing adversarial examples", 2015.
    Wong, Rice and Kolter, "Fast is better than free: revisiting adversarial training", 2020.

    Examples
    --------
    >>> import torch
    >>> from attribshield.attacks import FGSM
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = FGSM(eps=0.1).perturb(model, X, y)
    >>> bool(((X_adv - X).abs() <= 0.1 + 1e-6).all())
    True
    """

    def __init__(self, eps=8 / 255, random_start=False, step_size=None, norm="Linf", random_state=None):
        self.eps = eps
        self.random_start = random_start
        self.step_size = step_size
        self.norm = norm
        self.random_state = random_state

    provides_input_grad = True  # perturb(..., return_grad=True): the step's gradient, for reuse

    def _attack(self, module, X, y, target, return_grad=False):
        X_adv, grad = self._fgsm(module, X, y, target)
        return (X_adv, grad) if return_grad else X_adv

    def _fgsm(self, module, X, y, target):
        eps, norm = self.eps, self.norm
        alpha = self.step_size
        if alpha is None:
            alpha = 1.25 * eps if self.random_start else eps
        if self.random_start:
            delta = random_start(X, eps, norm, self._generator(X.device))
            delta = (X + delta).clamp(0, 1) - X
        else:
            delta = torch.zeros_like(X)
        _, grad = self._loss_and_grad(module, X + delta, y, target)
        if norm == "Linf":  # projection onto the box and [0, 1] at once
            X_adv = X + delta + step(grad, alpha, norm)
            return torch.minimum(torch.maximum(X_adv, (X - eps).clamp_(min=0)), (X + eps).clamp_(max=1)), grad
        delta = project(delta + step(grad, alpha, norm), eps, norm)
        return (X + delta).clamp(0, 1), grad
