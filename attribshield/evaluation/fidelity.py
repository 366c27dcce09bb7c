"""Fidelity of an explanation to the model: how well its segment weights predict the model's
output on held-out perturbations, with no reference explanation needed."""
from __future__ import annotations

import numpy as np
import torch

from .._params import Integral, Real, check_param
from .._utils import batches, check_batch_size, check_flag, module_device, to_numpy
from .._validation import check_images
from ..base import eval_mode, get_module, make_generator
from ..explainers._attribution import Attribution
from ..explainers._lime_math import _fill_image, _r2, fill_segments, lime_kernel
from ..explainers._sampling import draw_masks

__all__ = ["surrogate_r2"]


def surrogate_r2(model, X, attribution, *, n_samples=512, fill="mean", kernel_width=0.25, rescale=False,
                 random_state=None, batch_size=512) -> np.ndarray:
    """Weighted R^2 of an explanation's linear surrogate on fresh LIME perturbations.

    For each image, ``n_samples`` keep-masks are drawn as ``lime`` draws them (the first keeps
    every segment, the others i.i.d. Bernoulli(1/2)), the model is run on the images with the
    hidden segments filled, and the probability of the explained class is predicted by
    ``b + a * (w . z)`` from the attribution's weights ``w``; the intercept ``b`` (and with
    ``rescale`` the scale ``a``) is fitted by weighted least squares with LIME's kernel
    weights, and ``a = 1`` otherwise.  The result is LIME's own goodness-of-fit (its
    ``score``), but measured on masks the explanation never saw: an explanation whose
    weights are the population LIME solution scores highest, whatever explainer produced
    it, so gradient, amortized and sampled explanations are compared on the model itself.
    ``rescale=True`` scores the direction of ``w`` only (first-order attributions are often
    right up to a per-image scale).

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
        Returns logits ``(B, K)``; run in eval mode under ``no_grad``.
    X : array-like or torch.Tensor of shape (N, C, H, W)
        The explained images, in [0, 1].
    attribution : Attribution or sequence of Attribution
        Explanations of ``X``: their ``segments``, ``weights``, ``valid`` and ``target`` are
        used.  Several explanations of the same images (same segments and targets, e.g. from
        different explainers) are scored on the same masks with one set of forward passes.
    n_samples : int, default=512
        Masks per image (>= 3).
    fill : {"mean"}, float or tensor, default="mean"
        What replaces a hidden segment, as in :class:`~attribshield.explainers.LimeExplainer`.
    kernel_width : float, default=0.25
        Width of LIME's kernel on the cosine distance to the all-ones mask.
    rescale : bool, default=False
        Also fit the scale ``a`` per image.
    random_state : None, int or generator, default=None
        Seeds the masks (the same seed scores several explanations on the same masks).
    batch_size : int, default=512
        Perturbed images per forward pass.

    Returns
    -------
    numpy.ndarray of shape (N,), or (A, N) for a sequence of A attributions
        Weighted R^2 per image (at most 1; negative when the surrogate predicts worse than the
        weighted mean, which only happens without ``rescale``).

    Raises
    ------
    ValueError
        Invalid parameters, an attribution that is not an :class:`Attribution` or does not
        match ``X`` (count or image size), or attributions with different segments or targets,
        before any forward pass.

    Examples
    --------
    >>> import torch
    >>> from attribshield.explainers import LimeExplainer
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> X = torch.rand(4, 1, 8, 8)
    >>> attr = LimeExplainer(n_samples=200, random_state=0).explain(model, X)
    >>> r2 = surrogate_r2(model, X, attr, n_samples=100, random_state=1)
    >>> r2.shape, bool((r2 <= 1).all())
    ((4,), True)
    """
    check_param("surrogate_r2", "n_samples", n_samples, [Integral(3, None)])
    check_param("surrogate_r2", "kernel_width", kernel_width, [Real(0, None, closed="neither")])
    rescale = check_flag(rescale, "rescale")
    batch_size = check_batch_size(batch_size, "surrogate_r2")
    single = isinstance(attribution, Attribution)
    attrs = [attribution] if single else list(attribution) if isinstance(attribution, (list, tuple)) else None
    if not attrs or not all(isinstance(a, Attribution) for a in attrs):
        raise ValueError(f"attribution must be an Attribution (an explainer's output) or a non-empty sequence of "
                         f"them, got {type(attribution).__name__}")
    module = get_module(model)
    X = check_images(X)
    n, _, h, w = X.shape
    first = attrs[0]
    if first.weights.shape[0] != n or tuple(first.segments.shape) != (n, h, w):
        raise ValueError(
            f"attribution explains {first.weights.shape[0]} images with segments of shape "
            f"{tuple(first.segments.shape)[1:]}; X holds {n} images of {h}x{w}"
        )
    for a in attrs[1:]:
        if not (a.weights.shape == first.weights.shape and torch.equal(a.segments.cpu(), first.segments.cpu())
                and torch.equal(a.target.cpu(), first.target.cpu())):
            raise ValueError("the attributions must share their segments and targets (explanations of the same "
                             "images for the same classes)")
    device = module_device(module, X.device)
    X = X.to(device)
    seg = first.segments.to(device).long()
    valid = first.valid.to(device)
    target = first.target.to(device).long()
    fimg = _fill_image(X, seg, fill)
    generator = make_generator(random_state, device)
    keep = draw_masks(n, int(n_samples), valid.shape[1], method="lime", generator=generator, device=device)
    keep = keep | ~valid[:, None]  # padding columns match no pixel
    P = keep.shape[1]
    f = torch.empty(n, P, dtype=torch.float64, device=device)
    per = max(1, int(batch_size) // P)
    with eval_mode(module), torch.no_grad():
        for rows in batches(n, per):
            imgs = fill_segments(X[rows], seg[rows], keep[rows], fill=fimg[rows])
            logits = module(imgs.reshape(-1, *X.shape[1:]))
            probs = torch.softmax(logits.double(), 1).reshape(imgs.shape[0], P, -1)
            f[rows] = probs.gather(2, target[rows, None, None].expand(-1, P, 1))[..., 0]
    sw = lime_kernel(keep, valid, float(kernel_width)).double()
    wn = sw / sw.sum(1, keepdim=True)
    f_bar = (wn * f).sum(1)
    fc = f - f_bar[:, None]
    out = []
    for a in attrs:
        coef = a.weights.to(device).double() * valid
        lin = (keep.double() * coef[:, None]).sum(2)  # (N, P)
        lin_bar = (wn * lin).sum(1)
        if rescale:  # the weighted least-squares scale of the centred surrogate
            lc = lin - lin_bar[:, None]
            var = (wn * lc**2).sum(1)
            scale = torch.where(var > 0, (wn * lc * fc).sum(1) / var.clamp_min(1e-300), 0.0)
            coef = coef * scale[:, None]
            lin_bar = lin_bar * scale
        # the weighted least-squares intercept, then LIME's own R^2 (_r2, as in Attribution.score)
        out.append(to_numpy(_r2(keep, f, sw, valid, coef, f_bar - lin_bar)))
    return out[0] if single else np.stack(out)
