"""Batched, exact LIME for image classifiers.

:class:`LimeExplainer` computes the same explanation as ``lime.lime_image`` (binary segment
masks, first sample all ones, segment-mean fill, cosine-distance kernel, weighted ridge with
intercept on the target-class probability), but for many images at once: perturbed images are
built on the module's device in bounded chunks, the model runs on large batches under
``no_grad`` in eval mode, and the ridge regressions are solved in closed form, one small
``S x S`` system per image, all images together (in float64).

The pieces live in private modules: the result type :class:`Attribution` in
``_attribution.py``, LIME's arithmetic (fills, kernel, ridge) in ``_lime_math.py``, and what
adapts the classifier (device and dtype, forward passes, :func:`fuse_conv_bn`) in
``_model.py``.  Its public names are re-exported here (``__all__``), so existing
``from attribshield.explainers.lime import ...`` lines keep working.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref

import torch

from .._params import Integral, Options, Real, validate_params
from .._validation import check_labels
from ..base import Component, eval_mode, make_generator
from ._attribution import Attribution
from ._lime_math import (
    _fill_image,
    _logit_control_variate,
    _r2,
    fill_segments,
    lime_kernel,
    segment_means,
    weighted_ridge,
)
from ._model import _checked_logits, _forward_logits, _is_int, _module_and_images, fuse_conv_bn
from ._quantize import quantize_int8
from ._quantize import quantized_engine as _int8_engine
from ._sampling import SAMPLINGS, draw_masks
from .segmentation import MIN_SEGMENTS, _check_segments, _has_segment, default_segmenter

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

    _parameter_constraints = {
        "n_samples": [Integral(2, None)],
        "segmenter": [None, _has_segment],
        "kernel_width": [Real(0, None, closed="neither")],
        "alpha": [Real(0, None)],
        "sampling": [Options(*SAMPLINGS)],
        "control_variate": [None, Options("logit")],
        "cv_samples": [Integral(2, None)],
        "batch_size": [Integral(1, None)],
        "autocast": [None, Options("bf16", "fp16")],
        "quantize": [None, Options("int8")],
    }

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
        validate_params(self)
        if self.quantize is not None and self.autocast is not None:
            raise ValueError("quantize='int8' cannot be combined with autocast (the int8 copy has its own arithmetic)")

    # ----------------------------------------------------------------- forward
    def _logits(self, module, X) -> torch.Tensor:
        """Logits ``(B, K)`` of a batch, with the configured memory format and autocast."""
        return _forward_logits(module, X, channels_last=self.channels_last, autocast=self.autocast)

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

    def _int8_module(self, module, X, fimg, seg):
        """The cached int8 copy of ``module``, rebuilt when its weights or buffers changed."""
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
        module, X, device = _module_and_images(model, X)
        n, c, h, w = X.shape
        out_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
        if self.quantize is not None and device.type != "cpu":
            raise ValueError(f"quantize='int8' runs on the CPU only; the module is on {device}")
        if self.fuse_bn and self.quantize is None:
            module = fuse_conv_bn(module, channels_last=bool(self.channels_last))
        # the int8 copy's packed weights belong to the engine it was converted under: run it there
        engine = _int8_engine() if self.quantize is not None else contextlib.nullcontext()
        with eval_mode(module), torch.no_grad(), engine:
            # one pass on the clean images: validates the input and gives the classes
            logits = _checked_logits(module, X[: min(n, int(self.batch_size))])
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
                seg = _check_segments(segments, X)
            s_n = seg.reshape(n, -1).amax(1) + 1
            s_max = int(s_n.max())
            if int(s_n.min()) < MIN_SEGMENTS and segments is not None:
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
                    coef, icpt = _logit_control_variate(
                        keep, logits, sw, valid[a:b], target[a:b], generator, alpha=float(self.alpha),
                        kernel_width=float(self.kernel_width), cv_samples=int(self.cv_samples),
                    )
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

