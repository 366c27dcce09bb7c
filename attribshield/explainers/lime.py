"""Batched, exact LIME for image classifiers.

:class:`LimeExplainer` computes the same explanation as ``lime.lime_image`` (binary segment
masks, first sample all ones, segment-mean fill, cosine-distance kernel, weighted ridge with
intercept on the target-class probability), but for many images at once: perturbed images are
built on the module's device in bounded chunks, the model runs on large batches under
``no_grad`` in eval mode, and the ridge regressions are solved in closed form, one small
``S x S`` system per image, all images together (in float64).

:class:`Attribution` is the result: segment weights plus everything needed to map them back to
pixels, rank segments, plot them, move them between devices and subset them.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .._validation import check_images, check_labels
from ..base import Component, eval_mode, get_module, make_generator
from ._quantize import quantize_int8
from ._quantize import quantized_engine as _int8_engine
from ._sampling import SAMPLINGS, draw_masks
from .segmentation import MIN_SEGMENTS, default_segmenter

__all__ = [
    "Attribution",
    "LimeExplainer",
    "fill_segments",
    "segment_means",
    "lime_kernel",
    "fuse_conv_bn",
    "weighted_ridge",
]

# images per chunk is chosen so that one chunk holds about this many perturbed samples
# (masks, probabilities and the regression design: ~40 bytes per sample and segment).
_SAMPLES_PER_CHUNK = 1 << 19


# --------------------------------------------------------------------------- result
@dataclass
class Attribution:
    """LIME explanations of a batch of images.

    Attributes
    ----------
    segments : torch.Tensor of shape (N, H, W), int64
        Segment label of every pixel, ``0..S_n-1`` for image ``n``.
    weights : torch.Tensor of shape (N, S), float
        Ridge coefficient of each segment (effect of keeping the segment on the target-class
        probability).  ``S`` is the largest segment count in the batch; columns
        ``>= S_n`` are padding, equal to 0 and ``False`` in :attr:`valid`.
    valid : torch.Tensor of shape (N, S), bool
        Which columns of :attr:`weights` are real segments.
    intercept : torch.Tensor of shape (N,), float
        Ridge intercept (predicted probability with every segment hidden).
    score : torch.Tensor of shape (N,), float
        Weighted R^2 of the surrogate on the perturbed samples (``lime``'s ``score``), <= 1.
    target : torch.Tensor of shape (N,), int64
        Explained class of each image.
    """

    segments: torch.Tensor
    weights: torch.Tensor
    valid: torch.Tensor
    intercept: torch.Tensor
    score: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def __getitem__(self, index) -> "Attribution":
        """Subset by an int, slice, bool mask or index array (the batch dimension is kept)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1) if index != -1 else slice(-1, None)
        elif not isinstance(index, slice):
            index = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
            index = index.to(self.weights.device)
        return Attribution(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def n_segments(self) -> torch.Tensor:
        """Number of segments of each image, shape ``(N,)``."""
        return self.valid.sum(1)

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def to(self, device) -> "Attribution":
        """Return a copy with every tensor on ``device``."""
        return Attribution(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def cpu(self) -> "Attribution":
        return self.to("cpu")

    def numpy(self) -> dict:
        """Return the fields as a dict of NumPy arrays (on the CPU)."""
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}

    def to_pixels(self) -> torch.Tensor:
        """Spread each segment's weight over its pixels.

        Returns
        -------
        torch.Tensor of shape (N, 1, H, W)
            Constant within each segment, same dtype and device as :attr:`weights`.
        """
        n, h, w = self.segments.shape
        pix = torch.gather(self.weights, 1, self.segments.reshape(n, h * w))
        return pix.reshape(n, 1, h, w)

    def top_segments(self, k: int) -> torch.Tensor:
        """Indices of the ``k`` segments with the largest (most positive) weights.

        Parameters
        ----------
        k : int
            ``1 <= k <= S``.

        Returns
        -------
        torch.Tensor of shape (N, k), int64
            Sorted by weight, descending.  For an image with fewer than ``k`` segments the
            last entries are padding columns (``>= S_n``), which match no pixel.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.weights.shape[1]:
            raise ValueError(f"k must be an integer in [1, {self.weights.shape[1]}], got {k!r}")
        ranked = self.weights.masked_fill(~self.valid, float("-inf"))
        return torch.topk(ranked, int(k), dim=1, sorted=True).indices

    def plot(self, images, k: int = 3, *, max_images: int = 8, cmap: str = "RdBu_r"):
        """Plot images with their ``k`` most positive segments outlined, and the weight map.

        Parameters
        ----------
        images : array-like or torch.Tensor of shape (N, C, H, W)
            The explained images, in [0, 1].
        k : int, default=3
            Segments to outline (like ``lime``'s ``get_image_and_mask(positive_only=True)``).
        max_images : int, default=8
            Plot at most this many images (columns).
        cmap : str, default="RdBu_r"
            Colour map of the weight map (symmetric around 0).

        Returns
        -------
        matplotlib.figure.Figure
            Two rows: overlays and weight maps.
        """
        import matplotlib.pyplot as plt
        from skimage.segmentation import mark_boundaries

        X = check_images(images, name="images")
        if X.shape[0] != len(self) or tuple(X.shape[2:]) != tuple(self.segments.shape[1:]):
            raise ValueError(
                f"images of shape {tuple(X.shape)} do not match the attribution "
                f"({len(self)} images of size {tuple(self.segments.shape[1:])})"
            )
        n = min(len(self), int(max_images))
        k = min(int(k), self.weights.shape[1])
        top = self.top_segments(k)[:n].cpu()
        seg = self.segments[:n].cpu()
        pix = self.to_pixels()[:n, 0].detach().float().cpu()
        imgs = X[:n].detach().cpu().permute(0, 2, 3, 1).double().numpy()
        if imgs.shape[-1] == 1:
            imgs = np.repeat(imgs, 3, axis=-1)
        fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.2), squeeze=False)
        for i in range(n):
            keep = torch.isin(seg[i], top[i]).numpy()
            overlay = imgs[i] * (0.35 + 0.65 * keep[..., None])
            axes[0, i].imshow(mark_boundaries(overlay, keep.astype(int), color=(1, 1, 0)))
            axes[0, i].set_title(f"class {int(self.target[i])}", fontsize=8)
            lim = float(pix[i].abs().max()) or 1.0
            axes[1, i].imshow(pix[i].numpy(), cmap=cmap, vmin=-lim, vmax=lim)
            axes[1, i].set_title(f"R2 {float(self.score[i]):.2f}", fontsize=8)
            for ax in axes[:, i]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        return fig


# --------------------------------------------------------------------------- building blocks
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


def _module_device(module: torch.nn.Module, X: torch.Tensor) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return X.device


def _module_dtype(module: torch.nn.Module, X: torch.Tensor) -> torch.dtype:
    """Floating dtype of the module's parameters (float64 modules get float64 inputs)."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return X.dtype


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def fuse_conv_bn(module: torch.nn.Module, channels_last: bool = False) -> torch.nn.Module:
    """An eval-mode copy of ``module`` with each ``Conv2d -> BatchNorm2d`` pair folded.

    Pairs are found inside ``nn.Sequential`` containers (at any depth): a ``Conv2d``
    immediately followed by a ``BatchNorm2d`` with running statistics becomes one ``Conv2d``
    whose weights and bias absorb the normalisation, and the ``BatchNorm2d`` becomes
    ``nn.Identity``.  The result computes the same function as ``module.eval()`` up to
    float rounding.  ``module`` itself is not modified.

    Parameters
    ----------
    module : torch.nn.Module
    channels_last : bool, default=False
        Also store the copy's 4-D parameters in ``torch.channels_last`` format.

    Returns
    -------
    torch.nn.Module
        The folded copy, in eval mode.

    Examples
    --------
    >>> import torch
    >>> from attribshield.models import SmallCNN
    >>> m = SmallCNN().eval()
    >>> f = fuse_conv_bn(m)
    >>> x = torch.rand(2, 3, 32, 32)
    >>> torch.allclose(m(x), f(x), atol=1e-4)
    True
    >>> sum(isinstance(l, torch.nn.BatchNorm2d) for l in f.modules())
    0
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(module).eval()
    for seq in [m for m in fused.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (type(conv) is torch.nn.Conv2d and type(bn) is torch.nn.BatchNorm2d
                    and bn.track_running_stats and bn.running_mean is not None):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = torch.nn.Identity()
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused


# --------------------------------------------------------------------------- explainer
class LimeExplainer(Component):
    """Batched LIME (``lime_image`` math) for image classifiers returning logits.

    Parameters
    ----------
    n_samples : int, default=1000
        Perturbed samples per image (>= 2), the first keeping every segment (``lime``'s
        ``num_samples``).
    segmenter : Component or None, default=None
        Object with ``segment(X) -> (N, H, W)``.  ``None``: a 4x4 :class:`GridSegmenter`
        (cell 8 on 32x32 images, cell 2 on 8x8 digits).
    fill : {"mean"}, float or tensor, default="mean"
        What replaces a hidden segment (see :func:`fill_segments`); ``"mean"`` is ``lime``'s
        ``hide_color=None``.
    kernel_width : float, default=0.25
        Width of the kernel ``sqrt(exp(-d^2 / kernel_width^2))`` on the cosine distance.
    alpha : float, default=1.0
        Ridge penalty (``lime``'s ``Ridge(alpha=1)``).
    sampling : {"lime", "antithetic", "orthogonal", "foldover"}, default="lime"
        Mask design.  ``"lime"`` is i.i.d. Bernoulli(1/2) (``lime``'s).  The others have the
        same marginal distribution and lower variance: ``"foldover"`` (scrambled orthogonal
        array plus complements) reaches ``lime``'s 1,000-sample fidelity with about 600
        samples (see ``docs/explainers.md``).
    control_variate : {None, "logit"}, default=None
        ``"logit"`` turns on model-assisted LIME: the logits of the samples are fitted
        linearly in the mask (all classes), the softmax of that fit is a nonlinear surrogate
        of the target probability whose LIME regression is computed on ``cv_samples`` cheap
        surrogate masks, and only the residual ``probability - surrogate`` is estimated from
        the model's samples.  No extra forward passes; the variance drops by the share of the
        probability's nonlinearity that the surrogate captures.  Same regression target, but
        no longer ``lime``'s estimator sample for sample.  ``None``: exact ``lime``.
    cv_samples : int, default=8192
        Surrogate masks per image for ``control_variate="logit"`` (cost: ``cv_samples * S * K``
        multiply-adds per image, far below one forward pass of a CNN).
    batch_size : int, default=256
        Perturbed images per forward pass.
    channels_last : bool, default=False
        Run the forward passes in ``torch.channels_last`` memory format (faster convolutions
        on CPU; the module itself is not modified).
    autocast : {None, "bf16", "fp16"}, default=None
        Run the forward passes under ``torch.autocast`` with this dtype (probabilities then
        move by up to a few 1e-2; see ``docs/performance.md``).
    fuse_bn : bool, default=False
        Explain with a copy of the module in which every ``Conv2d`` directly followed by a
        ``BatchNorm2d`` (inside an ``nn.Sequential``) is folded into one convolution: the
        same function in eval mode up to float rounding, one memory pass less per layer
        (1.10x forward throughput for ``SmallCNN`` with channels_last + bf16, measured in
        ``docs/performance.md``).  Modules without such pairs (e.g. pre-activation ResNets)
        are used as they are.  The caller's module is never modified.
    quantize : {None, "int8"}, default=None
        ``"int8"`` runs the perturbed forward passes on a statically quantized int8 copy of
        the module (CPU only; see :func:`attribshield.explainers.quantize_int8`), calibrated
        on perturbed copies of the first images explained after the module's weights last
        changed (the copy is cached until they change again).  The target class is still
        the float model's prediction.  About 1.9x the forward throughput of channels_last +
        bf16 for ``SmallCNN`` on an AVX-512 VNNI CPU; what it does to the weights is measured
        in ``docs/performance.md``.  Cannot be combined with ``autocast``; the module must be
        traceable by ``torch.fx``.
    random_state : None, int or generator, default=None
        Seeds the masks (see :func:`attribshield.base.make_generator`).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> attr = LimeExplainer(n_samples=50, random_state=0).explain(model, torch.rand(2, 1, 8, 8))
    >>> attr.weights.shape, attr.to_pixels().shape
    (torch.Size([2, 16]), torch.Size([2, 1, 8, 8]))
    """

    def __init__(
        self,
        n_samples=1000,
        segmenter=None,
        fill="mean",
        kernel_width=0.25,
        alpha=1.0,
        sampling="lime",
        control_variate=None,
        cv_samples=8192,
        batch_size=256,
        channels_last=False,
        autocast=None,
        fuse_bn=False,
        quantize=None,
        random_state=None,
    ):
        self.n_samples = n_samples
        self.segmenter = segmenter
        self.fill = fill
        self.kernel_width = kernel_width
        self.alpha = alpha
        self.sampling = sampling
        self.control_variate = control_variate
        self.cv_samples = cv_samples
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.autocast = autocast
        self.fuse_bn = fuse_bn
        self.quantize = quantize
        self.random_state = random_state

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_int8_cache", None)  # a weak reference and a derived module: rebuilt on use
        return state

    # ----------------------------------------------------------------- validation
    def _validate_params(self) -> None:
        if not _is_int(self.n_samples) or self.n_samples < 2:
            raise ValueError(f"n_samples must be an integer >= 2, got {self.n_samples!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("kernel_width",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float, np.number)) or not a >= 0 or not math.isfinite(a):
            raise ValueError(f"alpha must be a finite number >= 0, got {a!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.control_variate not in (None, "logit"):
            raise ValueError(f"control_variate must be None or 'logit', got {self.control_variate!r}")
        if not _is_int(self.cv_samples) or self.cv_samples < 2:
            raise ValueError(f"cv_samples must be an integer >= 2, got {self.cv_samples!r}")
        if self.autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {self.autocast!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {self.quantize!r}")
        if self.quantize is not None and self.autocast is not None:
            raise ValueError("quantize='int8' cannot be combined with autocast (the int8 copy has its own arithmetic)")
        if self.segmenter is not None and not hasattr(self.segmenter, "segment"):
            raise ValueError(f"segmenter must have a segment(X) method, got {type(self.segmenter).__name__}")

    def _check_segments(self, segments, X) -> torch.Tensor:
        n, _, h, w = X.shape
        seg = torch.as_tensor(segments, device=X.device)
        if seg.ndim == 2:
            seg = seg[None]
        if seg.ndim != 3 or tuple(seg.shape[1:]) != (h, w) or seg.shape[0] not in (1, n):
            raise ValueError(f"segments must have shape (N, H, W) = ({n}, {h}, {w}), got {tuple(seg.shape)}")
        if seg.is_floating_point() or seg.dtype == torch.bool:
            if not bool((seg == seg.round()).all()):
                raise ValueError("segments must hold integer labels")
        seg = seg.long().expand(n, h, w)
        if bool((seg < 0).any()):
            raise ValueError("segments must hold labels >= 0")
        # relabel images whose labels are not 0..S_n-1 (lime assumes consecutive labels)
        s = int(seg.max()) + 1
        present = torch.zeros(n, s, dtype=torch.bool, device=seg.device)
        present.scatter_(1, seg.reshape(n, -1), True)
        n_present = present.sum(1)
        max_lab = seg.reshape(n, -1).amax(1)
        need = (n_present != max_lab + 1).nonzero().flatten().tolist()
        if need:
            seg = seg.clone()
            for i in need:
                seg[i] = torch.unique(seg[i], return_inverse=True)[1].reshape(h, w)
        return seg

    # ----------------------------------------------------------------- forward
    def _logits(self, module, X) -> torch.Tensor:
        """Logits ``(B, K)`` of a batch, with the configured memory format and autocast."""
        if self.channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        if self.autocast is not None:
            dt = torch.bfloat16 if self.autocast == "bf16" else torch.float16
            with torch.autocast(device_type=X.device.type, dtype=dt):
                return module(X)
        return module(X)

    def _sample_outputs(self, module, X, fimg, seg, keep, target, all_logits=False) -> torch.Tensor:
        """Run the model on all perturbed samples, built ``batch_size`` at a time.

        Returns the target probabilities ``(n, P)`` (float64), or with ``all_logits`` the
        logits ``(n, P, K)`` (float32, float64 for float64 inputs).
        """
        n, c, h, w = X.shape
        p = keep.shape[1]
        total = n * p
        seg_flat = seg.reshape(n, h * w)
        keep_flat = keep.reshape(total, -1)
        bs = int(self.batch_size)
        out = None
        for start in range(0, total, bs):
            stop = min(start + bs, total)
            img = torch.arange(start, stop, device=X.device) // p
            kp = torch.gather(keep_flat[start:stop], 1, seg_flat[img]).reshape(-1, 1, h, w)
            logits = self._logits(module, torch.where(kp, X[img], fimg[img]))
            if all_logits:
                if out is None:
                    dt = torch.float64 if X.dtype == torch.float64 else torch.float32
                    out = torch.empty(total, logits.shape[1], dtype=dt, device=X.device)
                out[start:stop] = logits
            else:
                if out is None:
                    out = torch.empty(total, dtype=torch.float64, device=X.device)
                out[start:stop] = torch.softmax(logits.double(), 1).gather(1, target[img, None])[:, 0]
        return out.reshape(n, p, -1) if all_logits else out.reshape(n, p)

    def _logit_control_variate(self, keep, logits, sw, valid, target, generator):
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
        coef, icpt, _ = weighted_ridge(keep, y - surrogate(keep, everything), sw, valid, float(self.alpha))
        m = int(self.cv_samples)
        step = max(1, (1 << 18) // (m * max(1, s // 16)))  # bounded memory for the surrogate masks
        for a in range(0, n, step):
            rows = slice(a, min(a + step, n))
            zm = draw_masks(rows.stop - a, m, s, method="foldover", generator=generator, device=keep.device)
            zm = zm | ~valid[rows, None]
            wm = lime_kernel(zm, valid[rows], float(self.kernel_width))
            wm = wm * (sw[rows].sum(1, keepdim=True) / wm.sum(1, keepdim=True))  # same penalty strength
            pc, pi, _ = weighted_ridge(zm, surrogate(zm, rows), wm, valid[rows], float(self.alpha))
            coef[rows] += pc
            icpt[rows] += pi
        return coef, icpt


    def _int8_module(self, module, X, fimg, seg):
        """The cached int8 copy of ``module``, rebuilt when its weights or buffers changed."""
        import weakref

        key = tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())
        cache = self.__dict__.get("_int8_cache")
        if cache is not None and cache[0]() is module and cache[1] == key:
            return cache[2]
        # calibration: up to 64 images x 4 masks (the first keeping every segment)
        m = min(X.shape[0], 64)
        s = int(seg[:m].max()) + 1
        # a fixed stream, so that a cache hit or miss never shifts the explanation's masks
        gen = torch.Generator(device=X.device).manual_seed(0)
        keep = draw_masks(m, 4, s, method="lime", generator=gen, device=X.device)
        kp = torch.gather(keep.reshape(m * 4, s), 1, seg[:m].reshape(m, -1).repeat_interleave(4, 0))
        kp = kp.reshape(-1, 1, *X.shape[2:])
        calib = torch.where(kp, X[:m].repeat_interleave(4, 0), fimg[:m].repeat_interleave(4, 0))
        q = quantize_int8(module, calib)
        self.__dict__["_int8_cache"] = (weakref.ref(module), key, q)
        return q

    # ----------------------------------------------------------------- public
    def explain(self, model, X, target=None, *, segments=None, samples=None) -> Attribution:
        """Explain the predictions of ``model`` on ``X``.

        Parameters
        ----------
        model : torch.nn.Module or fitted RobustAttributionClassifier
            Returns logits ``(B, K)``; probabilities are their softmax.
        X : array-like or torch.Tensor of shape (N, C, H, W)
            Images in [0, 1] (moved to the module's device).
        target : None, int or array-like of shape (N,), default=None
            Class to explain per image; ``None``: the predicted class.
        segments : array-like of shape (N, H, W) or (H, W), optional
            Fixed segmentation (integer labels, relabelled to ``0..S_n-1`` when needed);
            ``None`` runs the segmenter.
        samples : bool array-like of shape (N or 1, P, S), optional
            Fixed masks (``True`` = kept), e.g. to reproduce ``lime``'s; overrides
            ``n_samples`` and ``sampling``.  ``S`` must equal the largest segment count.

        Returns
        -------
        Attribution
            On the module's device; ``weights`` in float32 (float64 when ``X`` is float64).

        Raises
        ------
        ValueError
            Invalid hyperparameters, non-finite or out-of-range images, inputs the module
            rejects (e.g. a wrong channel count), a target out of range, malformed
            ``segments`` or ``samples``.
        """
        self._validate_params()
        module = get_module(model)
        X = check_images(X)
        n, c, h, w = X.shape
        device = _module_device(module, X)
        X = X.to(device=device, dtype=_module_dtype(module, X))
        out_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
        if self.quantize is not None and device.type != "cpu":
            raise ValueError(f"quantize='int8' runs on the CPU only; the module is on {device}")
        if self.fuse_bn and self.quantize is None:
            module = fuse_conv_bn(module, channels_last=bool(self.channels_last))
        # the int8 copy's packed weights belong to the engine it was converted under: run it there
        engine = _int8_engine() if self.quantize is not None else contextlib.nullcontext()
        with eval_mode(module), torch.no_grad(), engine:
            # one pass on the clean images: validates the input and gives the classes
            try:
                logits = module(X[: min(n, int(self.batch_size))])
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise ValueError(
                    f"the module rejected images of shape (N, {c}, {h}, {w}) "
                    f"(wrong channel count or size?): {exc}"
                ) from exc
            if logits.ndim != 2:
                raise ValueError(f"the module must return logits of shape (B, K), got shape {tuple(logits.shape)}")
            n_classes = logits.shape[1]
            if target is None:
                preds = [logits.argmax(1)]
                for a in range(logits.shape[0], n, int(self.batch_size)):
                    preds.append(module(X[a : a + int(self.batch_size)]).argmax(1))
                target = torch.cat(preds)
            else:
                if _is_int(target) or (isinstance(target, torch.Tensor) and target.ndim == 0):
                    target = [int(target)] * n
                target = check_labels(target, n, name="target", n_classes=n_classes)
            target = torch.as_tensor(target, device=device).long()

            if segments is None:
                segmenter = self.segmenter if self.segmenter is not None else default_segmenter(h, w)
                seg = segmenter.segment(X).to(device).long()
            else:
                seg = self._check_segments(segments, X)
            s_n = seg.reshape(n, -1).amax(1) + 1
            s_max = int(s_n.max())
            if int(s_n.min()) < MIN_SEGMENTS and segments is not None:
                import warnings

                warnings.warn(
                    f"{int((s_n < MIN_SEGMENTS).sum())} images have fewer than {MIN_SEGMENTS} segments",
                    UserWarning,
                    stacklevel=2,
                )
            valid = torch.arange(s_max, device=device)[None] < s_n[:, None]

            if samples is not None:
                keep_all = torch.as_tensor(samples, device=device)
                if keep_all.dtype != torch.bool:
                    if not bool(((keep_all == 0) | (keep_all == 1)).all()):
                        raise ValueError("samples must be binary (bool or 0/1)")
                    keep_all = keep_all.bool()
                if keep_all.ndim == 2:
                    keep_all = keep_all[None]
                if keep_all.ndim != 3 or keep_all.shape[0] not in (1, n) or keep_all.shape[2] != s_max:
                    raise ValueError(
                        f"samples must have shape (N or 1, P, S) with N={n}, S={s_max}, got {tuple(keep_all.shape)}"
                    )
                if keep_all.shape[1] < 2:
                    raise ValueError(f"samples must hold at least 2 masks per image, got {keep_all.shape[1]}")
                keep_all = keep_all.expand(n, -1, -1)
            generator = make_generator(self.random_state, device)

            fimg = _fill_image(X, seg, self.fill)
            sample_module = module
            if self.quantize is not None:
                sample_module = self._int8_module(module, X, fimg, seg)
            p = keep_all.shape[1] if samples is not None else int(self.n_samples)
            chunk = max(1, _SAMPLES_PER_CHUNK // (p * max(1, s_max // 16)))
            coefs, intercepts, scores = [], [], []
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                if samples is not None:
                    keep = keep_all[a:b]
                else:
                    keep = draw_masks(b - a, p, s_max, method=self.sampling, generator=generator, device=device)
                keep = keep | ~valid[a:b, None]
                if self.control_variate:
                    logits = self._sample_outputs(sample_module, X[a:b], fimg[a:b], seg[a:b], keep, target[a:b], True)
                    sw = lime_kernel(keep, valid[a:b], float(self.kernel_width))
                    index = target[a:b, None, None].expand(-1, keep.shape[1], 1)
                    y = torch.softmax(logits.double(), 2).gather(2, index)[..., 0]
                    coef, icpt = self._logit_control_variate(keep, logits, sw, valid[a:b], target[a:b], generator)
                    score = _r2(keep, y, sw, valid[a:b], coef, icpt)
                else:
                    y = self._sample_outputs(sample_module, X[a:b], fimg[a:b], seg[a:b], keep, target[a:b])
                    sw = lime_kernel(keep, valid[a:b], float(self.kernel_width))
                    coef, icpt, score = weighted_ridge(keep, y, sw, valid[a:b], float(self.alpha))
                coefs.append(coef)
                intercepts.append(icpt)
                scores.append(score)
        return Attribution(
            segments=seg,
            weights=torch.cat(coefs).to(out_dtype),
            valid=valid,
            intercept=torch.cat(intercepts).to(out_dtype),
            score=torch.cat(scores).to(out_dtype),
            target=target,
        )


def _r2(Z, y, w, valid, coef, intercept) -> torch.Tensor:
    """Weighted R^2 of ``intercept + Z @ coef`` on ``y``."""
    Z = Z.double() * valid[:, None].double()
    pred = intercept[:, None] + (Z * coef[:, None]).sum(2)
    ybar = (w * y).sum(1, keepdim=True) / w.sum(1, keepdim=True)
    ss_res = (w * (y - pred) ** 2).sum(1)
    ss_tot = (w * (y - ybar) ** 2).sum(1)
    return torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-300), (ss_res <= 0).double())
