"""LIME's arithmetic, batched over images: fills, the sample kernel and the weighted ridge.

Pure tensor functions with no model in them: :func:`segment_means` and :func:`fill_segments`
build the perturbed images, :func:`lime_kernel` weighs the samples as ``lime_image`` does,
:func:`weighted_ridge` solves one closed-form ridge regression per image (all images together,
in float64) and :func:`_r2` scores a given fit.  :func:`_logit_control_variate` is the
model-assisted estimator of ``LimeExplainer(control_variate="logit")``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._sampling import draw_masks

__all__ = ["segment_means", "fill_segments", "lime_kernel", "weighted_ridge"]


def segment_means(X: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Replace every pixel by the per-channel mean colour of its segment.

    Parameters
    ----------
    X : torch.Tensor of shape (N, C, H, W)
    segments : torch.Tensor of shape (N, H, W), int64, labels ``0..S_n-1``

    Returns
    -------
    torch.Tensor of shape (N, C, H, W)
        ``lime``'s "fudged image" for ``hide_color=None``.
    """
    n, c, h, w = X.shape
    s = int(segments.max()) + 1
    flat = segments.reshape(n, 1, h * w).expand(n, c, h * w)
    sums = torch.zeros(n, c, s, dtype=torch.float64, device=X.device)
    sums.scatter_add_(2, flat, X.reshape(n, c, h * w).double())
    counts = torch.zeros(n, 1, s, dtype=torch.float64, device=X.device)
    counts.scatter_add_(2, flat[:, :1], torch.ones(n, 1, h * w, dtype=torch.float64, device=X.device))
    means = sums / counts.clamp_min(1)
    return torch.gather(means, 2, flat).reshape(n, c, h, w).to(X.dtype)


def _fill_image(X: torch.Tensor, segments: torch.Tensor, fill) -> torch.Tensor:
    """Image whose pixels replace hidden segments: ``(N, C, H, W)``, dtype of ``X``."""
    if isinstance(fill, str):
        if fill == "mean":
            return segment_means(X, segments)
        raise ValueError(f"fill must be 'mean', a number or a tensor of images, got {fill!r}")
    if isinstance(fill, bool):
        raise ValueError(f"fill must be 'mean', a number or a tensor of images, got {fill!r}")
    if isinstance(fill, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(fill)):
            raise ValueError(f"fill must be finite, got {fill!r}")
        return torch.full_like(X, float(fill))
    f = torch.as_tensor(fill, dtype=X.dtype, device=X.device)
    try:
        f = torch.broadcast_to(f, X.shape)
    except RuntimeError as exc:
        raise ValueError(f"fill of shape {tuple(f.shape)} does not broadcast to X of shape {tuple(X.shape)}") from exc
    if not bool(torch.isfinite(f).all()):
        raise ValueError("fill contains non-finite values")
    return f


def fill_segments(X, segments, keep, fill="mean") -> torch.Tensor:
    """Build perturbed images: hidden segments are replaced by the fill.

    Parameters
    ----------
    X : torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    segments : torch.Tensor of shape (N, H, W), int64
        Labels ``0..S_n-1``.
    keep : torch.Tensor of shape (N, P, S) or (N, S), bool
        ``True`` keeps the segment, ``False`` hides it (``S`` > every label).
    fill : {"mean"}, float or tensor broadcastable to (N, C, H, W), default="mean"
        ``"mean"``: each segment's mean colour (``lime``'s ``hide_color=None``); a number:
        a constant colour; a tensor: a fill image (e.g. a blurred copy).

    Returns
    -------
    torch.Tensor of shape (N, P, C, H, W) (or (N, C, H, W) when ``keep`` is 2-D)
        Same dtype and device as ``X``.
    """
    squeeze = keep.ndim == 2
    if squeeze:
        keep = keep[:, None]
    n, c, h, w = X.shape
    if keep.shape[0] != n or segments.shape != (n, h, w):
        raise ValueError(
            f"inconsistent shapes: X {tuple(X.shape)}, segments {tuple(segments.shape)}, keep {tuple(keep.shape)}"
        )
    if keep.shape[2] < int(segments.max()) + 1:
        raise ValueError(f"keep has {keep.shape[2]} columns but segments has labels up to {int(segments.max())}")
    fimg = _fill_image(X, segments, fill)
    p = keep.shape[1]
    idx = segments.reshape(n, 1, h * w).expand(n, p, h * w)
    kp = torch.gather(keep.bool(), 2, idx).reshape(n, p, 1, h, w)
    out = torch.where(kp, X[:, None], fimg[:, None])
    return out[:, 0] if squeeze else out


def lime_kernel(keep: torch.Tensor, valid: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """``lime_image``'s sample weights ``sqrt(exp(-d^2 / kernel_width^2))``.

    ``d`` is the cosine distance between the mask (valid columns only) and the all-ones mask:
    ``d = 1 - sqrt(k / S_n)`` with ``k`` kept segments (``d = 1`` for the empty mask, as in
    scikit-learn).

    Parameters
    ----------
    keep : torch.Tensor of shape (N, P, S), bool
    valid : torch.Tensor of shape (N, S), bool
    kernel_width : float

    Returns
    -------
    torch.Tensor of shape (N, P), float64, in (0, 1]
    """
    k = (keep & valid[:, None]).sum(2).double()
    s_n = valid.sum(1, keepdim=True).double()
    d = 1.0 - torch.sqrt(k / s_n)
    return torch.sqrt(torch.exp(-(d**2) / kernel_width**2))


def weighted_ridge(Z, y, sample_weight, valid, alpha: float = 1.0):
    """Weighted ridge regressions with intercept, one per image, in closed form.

    Solves ``min_b sum_p w_p (y_p - c - z_p . b)^2 + alpha ||b||^2`` for every image, as
    scikit-learn's ``Ridge(alpha, fit_intercept=True).fit(Z, y, sample_weight=w)`` does.

    Parameters
    ----------
    Z : torch.Tensor of shape (N, P, S)
        Design (masks); columns where ``valid`` is False are ignored (coefficient 0).
    y : torch.Tensor of shape (N, P) or (N, P, K)
        One target, or ``K`` targets fitted at once.
    sample_weight : torch.Tensor of shape (N, P), >= 0
    valid : torch.Tensor of shape (N, S), bool
    alpha : float, default=1.0

    Returns
    -------
    coef : torch.Tensor of shape (N, S) (or (N, S, K)), float64
    intercept : torch.Tensor of shape (N,) (or (N, K)), float64
    score : torch.Tensor of shape (N,) (or (N, K)), float64
        Weighted R^2 (1.0 for a perfect fit of a constant target, 0.0 when the fit is
        imperfect but the target is constant, as scikit-learn).
    """
    Z = Z.double() * valid[:, None].double()
    y = y.double()
    multi = y.ndim == 3
    if not multi:
        y = y[..., None]
    w = sample_weight.double()
    wsum = w.sum(1, keepdim=True)
    zbar = (w[..., None] * Z).sum(1) / wsum  # (N, S)
    ybar = (w[..., None] * y).sum(1) / wsum  # (N, K)
    Zc = Z - zbar[:, None]
    yc = y - ybar[:, None]
    Zw = Zc * w[..., None]
    A = Zw.transpose(1, 2) @ Zc  # (N, S, S)
    b = Zw.transpose(1, 2) @ yc  # (N, S, K)
    diag = torch.where(valid, torch.full_like(zbar, float(alpha)), torch.ones_like(zbar))
    A = A + torch.diag_embed(diag)
    coef = torch.linalg.solve(A, b) * valid[..., None]  # (N, S, K)
    intercept = ybar - (zbar[..., None] * coef).sum(1)  # (N, K)
    resid = yc - Zc @ coef
    ss_res = (w[..., None] * resid**2).sum(1)
    ss_tot = (w[..., None] * yc**2).sum(1)
    tiny = torch.finfo(torch.float64).eps * (w[..., None] * y**2).sum(1).clamp_min(1e-300)
    score = torch.where(
        ss_tot > tiny, 1.0 - ss_res / ss_tot.clamp_min(1e-300), torch.where(ss_res <= tiny, 1.0, 0.0).double()
    )
    if not multi:
        return coef[..., 0], intercept[..., 0], score[..., 0]
    return coef, intercept, score


def _r2(Z, y, w, valid, coef, intercept) -> torch.Tensor:
    """Weighted R^2 of ``intercept + Z @ coef`` on ``y``."""
    Z = Z.double() * valid[:, None].double()
    pred = intercept[:, None] + (Z * coef[:, None]).sum(2)
    ybar = (w * y).sum(1, keepdim=True) / w.sum(1, keepdim=True)
    ss_res = (w * (y - pred) ** 2).sum(1)
    ss_tot = (w * (y - ybar) ** 2).sum(1)
    return torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-300), (ss_res <= 0).double())


def _logit_control_variate(keep, logits, sw, valid, target, generator, *, alpha, kernel_width, cv_samples):
    """Model-assisted LIME: fit the logits linearly in the mask, use the softmax of that
    fit as a (nonlinear) surrogate ``h`` of the target probability, whose LIME regression
    is computed on ``cv_samples`` cheap surrogate masks.  Only ``y - h`` is estimated from
    the model's samples.  Returns ``(coef, intercept)``."""
    n, p, s = keep.shape
    # nearly unpenalised fit of every logit (the penalty would bias the surrogate)
    J, a_l, _ = weighted_ridge(keep, logits, sw, valid, 1e-6)  # (n,S,K), (n,K)
    y = torch.softmax(logits.double(), 2).gather(2, target[:, None, None].expand(n, p, 1))[..., 0]

    def surrogate(Z, rows):
        lg = a_l[rows, None] + (Z.double() * valid[rows, None]) @ J[rows]
        return torch.softmax(lg, 2).gather(2, target[rows, None, None].expand(-1, Z.shape[1], 1))[..., 0]

    everything = slice(None)
    coef, icpt, _ = weighted_ridge(keep, y - surrogate(keep, everything), sw, valid, float(alpha))
    m = int(cv_samples)
    step = max(1, (1 << 18) // (m * max(1, s // 16)))  # bounded memory for the surrogate masks
    for a in range(0, n, step):
        rows = slice(a, min(a + step, n))
        zm = draw_masks(rows.stop - a, m, s, method="foldover", generator=generator, device=keep.device)
        zm = zm | ~valid[rows, None]
        wm = lime_kernel(zm, valid[rows], float(kernel_width))
        wm = wm * (sw[rows].sum(1, keepdim=True) / wm.sum(1, keepdim=True))  # same penalty strength
        pc, pi, _ = weighted_ridge(zm, surrogate(zm, rows), wm, valid[rows], float(alpha))
        coef[rows] += pc
        icpt[rows] += pi
    return coef, icpt
