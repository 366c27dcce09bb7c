"""The attribution-aware lower bound on the adversarial distortion, and how to check it.

Split the input coordinates into a relevant set ``R`` and a spurious set ``S`` (a pixel mask
from an explanation).  With the margin ``g(x) = f_y(x) - max_{j != y} f_j(x)`` and ``L_R``,
``L_S`` bounds on the dual norm of the margin's gradient restricted to ``R`` and ``S`` over the
ball of radius ``r`` around ``x``, every perturbation ``d`` that flips the prediction has

* ``||d||_inf >= min(r, g(x) / (L_R + L_S))`` (dual norm: l1), and
* ``||d||_2 >= min(r, g(x) / sqrt(L_R^2 + L_S^2))`` (dual norm: l2).

``L_R`` and ``L_S`` are *estimated* from gradients at sampled points of the ball, so the bound
is an estimate, not a certificate: :func:`minimal_adversarial_distortion` finds (an upper
bound on) the true smallest distortion with an attack, and :func:`bound_violation_rate` says
how often the estimate was too optimistic.  See ``docs/theory.md`` for the proof sketch.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._params import Integral, Real, check_param
from ._utils import check_batch_size, prepare
from .attacks._threat import check_norm, project, random_start, step
from .base import eval_mode, make_generator

__all__ = ["margin", "attribution_lower_bound", "minimal_adversarial_distortion", "bound_violation_rate"]


def _prepare(model, X, y):
    module, X, y, _ = prepare(model, X, y)
    return module, X, y


def _check_int(owner, name, v, low) -> int:
    check_param(owner, name, v, [Integral(low, None)])
    return int(v)


def _check_radius(owner, name, v) -> float:
    check_param(owner, name, v, [Real(0, None, closed="neither")])
    return float(v)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y - max_{j != y} f_j`` per row of ``logits`` (N, K); positive iff correct (no ties)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - other


def _margin_and_grad(module, X, y):
    X = X.detach().requires_grad_(True)
    g = margin(module(X).float(), y)
    (grad,) = torch.autograd.grad(g.sum(), X)
    return g.detach(), grad


def _check_mask(mask, X):
    m = torch.as_tensor(mask.detach() if isinstance(mask, torch.Tensor) else np.asarray(mask), device=X.device)
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[0] not in (1, X.shape[0]) or m.shape[1] not in (1, X.shape[1]) \
            or tuple(m.shape[2:]) != tuple(X.shape[2:]):
        raise ValueError(f"spurious_mask must have shape (N, H, W), (N, 1, H, W) or (N, C, H, W) matching X "
                         f"{tuple(X.shape)}, got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("spurious_mask must be boolean or hold only 0 and 1")
        m = m != 0
    return m.expand(X.shape[0], X.shape[1], *X.shape[2:])


def attribution_lower_bound(model, X, y, spurious_mask, norm="Linf", radius=8 / 255, n_samples=32, *,
                            random_state=0, batch_size=256):
    """Estimate the attribution-aware lower bound on the distortion needed to flip each prediction.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
        Returns logits.
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
        True labels.
    spurious_mask : bool array-like of shape (N, H, W), (N, 1, H, W) or (N, C, H, W)
        ``True`` on the spurious coordinates ``S``; the rest is ``R``.
    norm : {"Linf", "L2"}, default="Linf"
    radius : float, default=8/255
        Radius ``r`` of the ball in which the gradient norms are estimated (> 0); the bound
        never exceeds it.
    n_samples : int, default=32
        Random points of the ball (intersected with [0, 1]) at which the gradient is taken,
        besides ``x`` itself (>= 0).  More samples, a larger (safer) estimate of ``L``.
    random_state : int or None, default=0
    batch_size : int, default=256

    Returns
    -------
    result : dict of numpy.ndarray of shape (N,)
        ``margin`` (``g(x)``, logits), ``L_R`` and ``L_S`` (largest sampled dual norm of the
        margin gradient on ``R`` / ``S``), ``bound`` (in units of ``norm``, in ``[0, r]``;
        0 for misclassified points); plus ``norm`` and ``radius``.

    Notes
    -----
    The gradient of ``g`` at a point uses the runner-up class at that point (``g`` is a
    minimum of smooth functions; this is its gradient almost everywhere).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    >>> X, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    >>> mask = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    >>> res = attribution_lower_bound(model, X, y, mask, norm="L2", radius=1.0, n_samples=4)
    >>> res["bound"].shape
    (3,)
    """
    norm = check_norm(norm)
    radius = _check_radius("attribution_lower_bound", "radius", radius)
    n_samples = _check_int("attribution_lower_bound", "n_samples", n_samples, 0)
    batch_size = check_batch_size(batch_size, "attribution_lower_bound")
    module, X, y = _prepare(model, X, y)
    S = _check_mask(spurious_mask, X)
    gen = make_generator(random_state, X.device)
    q = 1 if norm == "Linf" else 2
    g0 = torch.empty(X.shape[0], device=X.device)
    L_R = torch.zeros(X.shape[0], device=X.device)
    L_S = torch.zeros(X.shape[0], device=X.device)
    with eval_mode(module), torch.enable_grad():
        for start in range(0, X.shape[0], batch_size):
            sl = slice(start, min(start + batch_size, X.shape[0]))
            Xb, yb, Sb = X[sl], y[sl], S[sl]
            for i in range(n_samples + 1):
                if i == 0:
                    P = Xb
                else:
                    P = (Xb + random_start(Xb, radius, norm, gen)).clamp(0, 1)
                g, grad = _margin_and_grad(module, P, yb)
                if i == 0:
                    g0[sl] = g
                grad = grad.float()
                lr = grad.masked_fill(Sb, 0).flatten(1).norm(p=q, dim=1)
                ls = grad.masked_fill(~Sb, 0).flatten(1).norm(p=q, dim=1)
                L_R[sl] = torch.maximum(L_R[sl], lr)
                L_S[sl] = torch.maximum(L_S[sl], ls)
    g0, L_R, L_S = g0.double(), L_R.double(), L_S.double()
    L = L_R + L_S if norm == "Linf" else torch.sqrt(L_R**2 + L_S**2)
    ratio = torch.where(L > 0, g0.clamp_min(0) / L.clamp_min(1e-30), torch.full_like(g0, float("inf")))
    bound = torch.where(g0 > 0, ratio.clamp(max=radius), torch.zeros_like(g0))
    to_np = lambda t: t.detach().cpu().numpy().astype(np.float64)  # noqa: E731
    return {"margin": to_np(g0), "L_R": to_np(L_R), "L_S": to_np(L_S), "bound": to_np(bound),
            "norm": norm, "radius": radius}


def _pgd_per_sample(module, X, y, eps, norm, steps, restarts, gen):
    """Margin-loss PGD with a per-sample radius ``eps`` (N,); returns (found, X_best, dist_best).

    Every iterate is checked: the successful one closest to ``X`` is kept, so the returned
    distance can be below ``eps``.
    """
    n = X.shape[0]
    e = eps.view(-1, *([1] * (X.ndim - 1))).to(X.dtype)
    alpha = 2.5 * e / steps
    found = torch.zeros(n, dtype=torch.bool, device=X.device)
    best = X.clone()
    best_d = torch.full((n,), float("inf"), device=X.device)
    for r in range(restarts):
        if r == 0:
            delta = torch.zeros_like(X)
        else:
            delta = (X + random_start(X, e, norm, gen)).clamp(0, 1) - X
        for _ in range(steps + 1):
            Xa = X + delta
            g, grad = _margin_and_grad(module, Xa, y)
            ok = g < 0
            d = (delta.flatten(1).abs().amax(1) if norm == "Linf" else delta.flatten(1).norm(dim=1)).float()
            upd = ok & (d < best_d)
            best[upd], best_d[upd] = Xa[upd].detach(), d[upd]
            found |= ok
            delta = project(delta + step(-grad, alpha, norm), e, norm)
            delta = (X + delta).clamp(0, 1) - X
    return found, best, best_d


def minimal_adversarial_distortion(model, X, y, norm="Linf", eps_max=None, *, n_search=12, steps=20,
                                   restarts=1, random_state=0, batch_size=256, return_adversarial=False):
    """Smallest adversarial distortion found per sample, by binary search over the radius.

    For each sample, PGD on the margin loss (``max_{j != y} f_j - f_y``, from ``x`` and then
    from ``restarts - 1`` random starts) is run at radius ``eps_max``; where it succeeds, the
    radius is bisected ``n_search`` times (success: shrink to the distance actually found;
    failure: raise the lower end).  The result is the distance of the closest adversarial
    example found, an *upper* bound on the true minimal distortion (a stronger attack can only
    lower it).

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
    norm : {"Linf", "L2"}, default="Linf"
    eps_max : float or None, default=None
        Largest radius tried (> 0); ``None``: 1 for Linf and ``sqrt(C*H*W)`` for L2 (the whole box).
    n_search : int, default=12
        Bisection steps (the bracket shrinks by 2 per step).
    steps : int, default=20
        PGD iterations per radius (step ``2.5 * eps / steps``).
    restarts : int, default=1
    random_state : int or None, default=0
    batch_size : int, default=256
    return_adversarial : bool, default=False
        Also return the closest adversarial examples found (``X`` where none).

    Returns
    -------
    result : dict
        ``distortion``: numpy.ndarray (N,), the distance in ``norm`` of the closest adversarial
        example found; 0 for misclassified points, ``inf`` where none was found up to
        ``eps_max``.  ``X_adv`` (torch.Tensor like ``X``) with ``return_adversarial=True``.
    """
    norm = check_norm(norm)
    n_search = _check_int("minimal_adversarial_distortion", "n_search", n_search, 0)
    steps = _check_int("minimal_adversarial_distortion", "steps", steps, 1)
    restarts = _check_int("minimal_adversarial_distortion", "restarts", restarts, 1)
    batch_size = check_batch_size(batch_size, "minimal_adversarial_distortion")
    module, X, y = _prepare(model, X, y)
    if eps_max is None:
        eps_max = 1.0 if norm == "Linf" else math.sqrt(X[0].numel())
    eps_max = _check_radius("minimal_adversarial_distortion", "eps_max", eps_max)
    gen = make_generator(random_state, X.device)
    dist = torch.full((X.shape[0],), float("inf"), device=X.device)
    X_adv = X.clone()
    with eval_mode(module), torch.enable_grad():
        for start in range(0, X.shape[0], batch_size):
            sl = slice(start, min(start + batch_size, X.shape[0]))
            Xb, yb = X[sl], y[sl]
            with torch.no_grad():
                wrong = module(Xb).argmax(1) != yb
            d = torch.full((Xb.shape[0],), float("inf"), device=X.device)
            d[wrong] = 0.0
            best = Xb.clone()
            lo = torch.zeros(Xb.shape[0], device=X.device)
            hi = torch.full((Xb.shape[0],), eps_max, device=X.device)
            for it in range(n_search + 1):
                active = ~wrong & (torch.isfinite(d) | (it == 0))
                if it > 0:
                    active &= (hi - lo) > 1e-7 * eps_max
                idx = active.nonzero().flatten()
                if idx.numel() == 0:
                    break
                eps = hi[idx] if it == 0 else (lo[idx] + hi[idx]) / 2
                ok, xa, da = _pgd_per_sample(module, Xb[idx], yb[idx], eps, norm, steps, restarts, gen)
                better = ok & (da < d[idx])
                d[idx[better]] = da[better]
                best[idx[better]] = xa[better]
                hi[idx[ok]] = torch.minimum(eps[ok], da[ok])
                lo[idx[~ok]] = eps[~ok]
            dist[sl] = d
            X_adv[sl] = best
    out = {"distortion": dist.cpu().numpy().astype(np.float64), "norm": norm, "eps_max": eps_max}
    if return_adversarial:
        out["X_adv"] = X_adv
    return out


def bound_violation_rate(bound, distortion, *, rtol=1e-4, atol=1e-6):
    """Fraction of points whose lower bound exceeds the distortion an attack actually found.

    Parameters
    ----------
    bound : array-like of shape (N,)
        Lower bounds (:func:`attribution_lower_bound`'s ``bound``).
    distortion : array-like of shape (N,)
        Distortions found (:func:`minimal_adversarial_distortion`; ``inf`` = none found,
        which can never contradict a bound).
    rtol, atol : float
        A violation is ``bound > distortion * (1 + rtol) + atol`` (float rounding slack).

    Returns
    -------
    rate : float in [0, 1]
        Violations divided by the number of points with a positive bound (the correctly
        classified ones, where the bound claims something); ``nan`` if there are none.
    """
    b = np.asarray(bound, dtype=np.float64)
    d = np.asarray(distortion, dtype=np.float64)
    if b.shape != d.shape or b.ndim != 1:
        raise ValueError(f"bound and distortion must be 1-D arrays of the same length, got {b.shape} and {d.shape}")
    if np.isnan(b).any() or np.isnan(d).any():
        raise ValueError("bound and distortion must not contain NaN")
    claimed = b > 0
    if not claimed.any():
        return float("nan")
    violated = claimed & (b > d * (1 + rtol) + atol)
    return float(violated.sum() / claimed.sum())
