"""Projected gradient descent (Madry et al.) in Linf and L2, with restarts and targets."""
from __future__ import annotations

import torch

from .._params import Real
from ._base import GradientAttack
from ._threat import project, random_start, step


class PGD(GradientAttack):
    """Projected gradient descent on the cross-entropy.

    Parameters
    ----------
    eps : float, default=8/255
        Radius of the threat model.
    step_size : float or None, default=None
        Step length; ``None`` means ``2.5 * eps / steps`` (Madry et al.'s rule).
    steps : int, default=10
        Iterations per restart (>= 1).
    norm : {"Linf", "L2"}, default="Linf"
    random_start : bool, default=True
        Start each restart at a uniformly random point of the ball.
    restarts : int, default=1
        Number of random restarts; for each sample the first successful adversarial example
        is kept, or, where none succeeds, the one of largest loss.
    random_state : int or None, default=None
        Seed of the random starts.

    Notes
    -----
    ``perturb(model, X, y, target=None)``: untargeted (increase the loss on ``y``) unless
    ``target`` is given, in which case the loss on ``target`` is decreased.  ``X`` is
    ``(N, C, H, W)`` in [0, 1]; ``X_adv`` keeps shape, dtype and device, stays in [0, 1]
    and within ``eps`` of ``X``.  The module runs in eval mode during the attack.

    References
    ----------
    Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018.

    Examples
    --------
    >>> import torch
    >>> from attribshield.attacks import PGD
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> X, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    >>> X_adv = PGD(eps=0.5, norm="L2", steps=5).perturb(model, X, y)
    >>> bool(((X_adv - X).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all())
    True
    """

    def __init__(self, eps=8 / 255, step_size=None, steps=10, norm="Linf", random_start=True,
                 restarts=1, random_state=None):
        self.eps = eps
        self.step_size = step_size
        self.steps = steps
        self.norm = norm
        self.random_start = random_start
        self.restarts = restarts
        self.random_state = random_state

    def _step_size(self):
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def _budget(self, X, mask):
        """Per-sample (or per-pixel) radius; overridden by :class:`GuidedPGD`."""
        return self.eps

    def _attack(self, module, X, y, target, mask=None):
        eps = self._budget(X, mask)
        alpha = self._step_size()
        if isinstance(eps, torch.Tensor):  # per-pixel budgets scale the step too
            alpha = alpha * eps / self.eps
        gen = self._generator(X.device)
        if self.restarts == 1:  # a single run: no bookkeeping, no extra forward pass
            return self._run(module, X, y, target, eps, alpha, gen)
        best = X.clone()
        best_loss = torch.full((X.shape[0],), -float("inf"), device=X.device)
        done = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
        for _ in range(self.restarts):
            idx = (~done).nonzero().flatten()
            if idx.numel() == 0:
                break
            Xi, yi = X[idx], y[idx]
            ti = None if target is None else target[idx]
            ei = eps[idx] if isinstance(eps, torch.Tensor) and eps.shape[0] == X.shape[0] else eps
            ai = alpha[idx] if isinstance(alpha, torch.Tensor) and alpha.shape[0] == X.shape[0] else alpha
            X_adv = self._run(module, Xi, yi, ti, ei, ai, gen)
            with torch.no_grad():
                logits = module(X_adv)
                tgt = yi if ti is None else ti
                loss = torch.nn.functional.cross_entropy(logits.float(), tgt, reduction="none")
                if ti is not None:
                    loss = -loss
                ok = self._success(logits, yi, ti)
                better = ok | (loss > best_loss[idx])
                sel = idx[better]
                best[sel] = X_adv[better]
                best_loss[sel] = loss[better]
                done[idx[ok]] = True
        return best


    def _run(self, module, X, y, target, eps, alpha, gen):
        """One PGD run from a random (or no) start; returns the last iterate."""
        norm = self.norm
        if norm == "Linf":  # the box around X, intersected with [0, 1], computed once
            lo, hi = (X - eps).clamp_(min=0), (X + eps).clamp_(max=1)
        if self.random_start:
            X_adv = (X + random_start(X, eps, norm, gen)).clamp_(0, 1)
        else:
            X_adv = X
        for _ in range(self.steps):
            _, grad = self._loss_and_grad(module, X_adv, y, target)
            X_adv = X_adv + step(grad, alpha, norm)
            if norm == "Linf":  # projection onto box and [0, 1] at once
                X_adv = torch.minimum(torch.maximum(X_adv, lo), hi)
            else:
                X_adv = (X + project(X_adv - X, eps, norm)).clamp_(0, 1)
        return X_adv


class GuidedPGD(PGD):
    """Attribution-guided PGD: a larger per-pixel budget on given (spurious) regions.

    The budget is ``eps * spurious_scale`` on pixels where ``mask`` is 1 and
    ``eps * relevant_scale`` elsewhere (Linf), and the step is scaled alike, so the attack
    concentrates its effort on the regions an explanation marked as spurious.  Used by the
    method for adversarial augmentation: the model is trained to withstand large changes in
    regions it should not rely on.  Without a mask it is plain :class:`PGD`.

    Parameters
    ----------
    eps, step_size, steps, norm, random_start, restarts, random_state
        As in :class:`PGD`.
    spurious_scale : float, default=2.0
        Budget multiplier on masked pixels (>= 0).
    relevant_scale : float, default=1.0
        Budget multiplier on unmasked pixels (>= 0).

    Notes
    -----
    ``perturb(model, X, y, mask=M)`` with ``M`` of shape ``(N, 1, H, W)`` or ``(N, C, H, W)``
    in [0, 1].  With ``norm="Linf"`` the result lies within ``eps * max(spurious_scale,
    relevant_scale)`` of ``X`` and within the per-pixel budget everywhere.  With
    ``norm="L2"`` the L2 radius stays ``eps`` and the mask reweights the step direction.
    """

    accepts_mask = True  # perturb(..., mask=M): a larger budget inside M

    def __init__(self, eps=8 / 255, step_size=None, steps=10, norm="Linf", random_start=True,
                 restarts=1, spurious_scale=2.0, relevant_scale=1.0, random_state=None):
        super().__init__(eps=eps, step_size=step_size, steps=steps, norm=norm,
                         random_start=random_start, restarts=restarts, random_state=random_state)
        self.spurious_scale = spurious_scale
        self.relevant_scale = relevant_scale

    _parameter_constraints = {**PGD._parameter_constraints,
                              "spurious_scale": [Real(0, None)], "relevant_scale": [Real(0, None)]}

    def _budget(self, X, mask):
        if mask is None or self.norm != "Linf":
            return self.eps
        mask = torch.as_tensor(mask, device=X.device, dtype=X.dtype)
        if mask.ndim != 4 or mask.shape[0] != X.shape[0] or mask.shape[2:] != X.shape[2:]:
            raise ValueError(f"mask must have shape (N, 1 or C, H, W) matching X {tuple(X.shape)}, "
                             f"got {tuple(mask.shape)}")
        w = mask * self.spurious_scale + (1 - mask) * self.relevant_scale
        return (self.eps * w).expand_as(X).contiguous()

    def _attack(self, module, X, y, target, mask=None):
        if mask is not None and self.norm == "L2":
            # L2: keep the radius, bias the step direction toward the masked pixels
            mask = torch.as_tensor(mask, device=X.device, dtype=X.dtype)
            w = mask * self.spurious_scale + (1 - mask) * self.relevant_scale
            return self._l2_guided(module, X, y, target, w)
        return super()._attack(module, X, y, target, mask=mask)

    def _l2_guided(self, module, X, y, target, w):
        alpha = self._step_size()
        delta = torch.zeros_like(X)
        if self.random_start:
            delta = random_start(X, self.eps, "L2", self._generator(X.device))
            delta = (X + delta).clamp(0, 1) - X
        for _ in range(self.steps):
            _, grad = self._loss_and_grad(module, X + delta, y, target)
            delta = project(delta + step(grad * w, alpha, "L2"), self.eps, "L2")
            delta = (X + delta).clamp(0, 1) - X
        return X + delta

    def perturb(self, model, X, y, *, target=None, mask=None):
        """As :meth:`PGD.perturb`, with ``mask`` ``(N, 1 or C, H, W)`` marking spurious pixels."""
        return super().perturb(model, X, y, target=target, mask=mask)
