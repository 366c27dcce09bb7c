"""TRADES: the KL attack and the clean-plus-KL training objective (Zhang et al., 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._params import Real
from ._base import GradientAttack
from ._threat import project, step


class TRADES(GradientAttack):
    """TRADES adversarial training as a pluggable attacker.

    ``perturb`` maximises ``KL(f(x) || f(x'))`` over the eps-ball by projected sign-gradient
    ascent from ``x + 0.001 * N(0, I)`` (the labels are not used); :meth:`objective` is the
    training loss ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``.  The estimator calls
    ``objective`` instead of its own adversarial cross-entropy whenever the attacker has one,
    so ``RobustAttributionClassifier(attacker=TRADES(beta=6))`` is TRADES training.

    Parameters
    ----------
    eps : float, default=8/255
        Radius of the threat model.
    steps : int, default=10
        Ascent steps of the inner maximisation.
    step_size : float or None, default=None
        ``None`` means ``2.5 * eps / steps`` (the PGD default of this library; the paper uses
        0.007 with 10 steps at eps 0.031, which is close).
    beta : float, default=6.0
        Weight of the KL term (the paper's 1/lambda; 6 is its CIFAR-10 setting).
    norm : {"Linf", "L2"}, default="Linf"
    random_state : int or None, default=None
        Seed of the Gaussian start.

    References
    ----------
    Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically principled trade-off between
    robustness and accuracy", ICML 2019.

    Examples
    --------
    >>> import torch
    >>> from attribshield.attacks import TRADES
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = TRADES(eps=0.1, steps=3).perturb(model, X, y)
    >>> bool(((X_adv - X).abs() <= 0.1 + 1e-6).all())
    True
    >>> loss = TRADES(beta=6.0).objective(model(X), model(X_adv), y)
    >>> loss.ndim
    0
    """

    def __init__(self, eps=8 / 255, steps=10, step_size=None, beta=6.0, norm="Linf", random_state=None):
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.beta = beta
        self.norm = norm
        self.random_state = random_state

    _parameter_constraints = {**GradientAttack._parameter_constraints, "beta": [Real(0, None)]}

    provides_objective = True  # the estimator trains on objective(), not on CE(f(x_adv), y)

    def _attack(self, module, X, y, target):
        if target is not None:
            raise ValueError("TRADES is an untargeted, label-free attack; target is not supported")
        eps, norm = self.eps, self.norm
        alpha = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        with torch.no_grad():
            p_clean = F.softmax(module(X).float(), dim=1)
        noise = torch.randn(X.shape, generator=self._generator(X.device), device=X.device, dtype=X.dtype)
        delta = ((X + 0.001 * noise).clamp(0, 1) - X)
        if norm == "Linf":
            lo, hi = (X - eps).clamp(min=0), (X + eps).clamp(max=1)
        for _ in range(self.steps):
            X_adv = (X + delta).detach().requires_grad_(True)
            log_p_adv = F.log_softmax(module(X_adv).float(), dim=1)
            loss = F.kl_div(log_p_adv, p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, X_adv)
            if norm == "Linf":
                delta = torch.minimum(torch.maximum(X + delta + step(grad, alpha, norm), lo), hi) - X
            else:
                delta = project(delta + step(grad, alpha, norm), eps, norm)
                delta = (X + delta).clamp(0, 1) - X
        return X + delta

    def objective(self, logits_clean, logits_adv, y):
        """``CE(logits_clean, y) + beta * KL(softmax(logits_clean) || softmax(logits_adv))``.

        Both logits come from the module in training mode; the KL is averaged over the batch
        (``batchmean``), as in the paper's reference code.
        """
        self._validate_params()
        ce = F.cross_entropy(logits_clean.float(), y)
        kl = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_clean.float(), dim=1),
                      reduction="batchmean")
        return ce + self.beta * kl
