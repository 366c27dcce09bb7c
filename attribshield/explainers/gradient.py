"""First-order LIME: per-segment attributions from one input gradient.

LIME estimates, by regression over random on/off masks, the effect on the target-class
probability ``p_y`` of keeping each segment instead of replacing it by the fill.  Linearising
``p_y`` at the image ``x`` gives that effect in closed form: replacing segment ``j`` by the fill
image ``b`` changes ``p_y`` by about

``w_j = sum_{pixels p in j, channels c} d p_y / d x_{c,p} * (x_{c,p} - b_{c,p})``

(gradient times input-minus-baseline, summed over the segment).  :class:`GradientExplainer`
computes these weights with one forward and one backward pass per image, instead of LIME's
hundreds of forward passes, and returns the same :class:`~attribshield.explainers.Attribution`.
:func:`attribute_from_grad` does the last step for a training loop that already holds an
input gradient (e.g. the one an FGSM step computed).
"""
from __future__ import annotations

import math

import torch

from .._params import Integral, Options, Real, check_param, validate_params
from .._validation import check_labels
from ..base import Component, eval_mode, make_generator
from ._attribution import Attribution
from ._lime_math import _fill_image
from ._model import _checked_logits, _forward_logits, _is_int, _module_and_images
from .segmentation import _check_segments, default_segmenter

__all__ = ["GradientExplainer", "attribute_from_grad", "blend_segments", "latin_hypercube", "OUTPUTS"]

OUTPUTS = ("proba", "log_proba")


_FILL_CONSTRAINTS = [Options("mean"), Real()]


def _check_fill(fill, owner) -> None:
    check_param(owner, "fill", fill, _FILL_CONSTRAINTS)


def attribute_from_grad(X, grad, segments, target, *, fill="mean", value=None) -> Attribution:
    """Per-segment first-order attributions from a given input gradient.

    ``weights[n, j] = sum_{c, p in segment j} grad[n, c, p] * (X[n, c, p] - fill[n, c, p])``:
    the linearised change of the differentiated output when segment ``j`` is replaced by the
    fill (what LIME's regression estimates, see :class:`GradientExplainer`).

    Parameters
    ----------
    X : torch.Tensor of shape (N, C, H, W), float
        The images the gradient was taken at (not range-checked: this runs in training loops).
    grad : torch.Tensor of shape (N, C, H, W)
        Gradient of the explained output with respect to ``X``, per example: ``d p_y / d x``
        for LIME's scale, or ``d log p_y / d x``, which is minus the gradient of the
        per-example cross-entropy that an FGSM step computes (with the loss summed over the
        batch, or times the batch size with a mean-reduced loss).
    segments : torch.Tensor of shape (N, H, W), integer
        Labels ``0..S_n-1`` per image (not relabelled; a missing label gets weight 0).
    target : int or array-like of shape (N,)
        The class the gradient belongs to (stored in the result).
    fill : "mean" or float, default="mean"
        The replacement image: each segment's mean colour (``lime``'s ``hide_color=None``,
        :class:`~attribshield.explainers.LimeExplainer`'s default) or a constant colour.
    value : torch.Tensor of shape (N,), optional
        The differentiated output at ``X`` (``p_y(x)`` or ``log p_y(x)``); sets
        ``intercept = value - weights.sum(1)``.  ``None``: the intercept is NaN.

    Returns
    -------
    Attribution
        On ``X``'s device; ``weights`` ``(N, S)`` in float32 (float64 for float64 ``X``), 0 and
        ``valid=False`` on padding columns; ``score`` is NaN (no surrogate is fitted).

    Raises
    ------
    ValueError
        Mismatched shapes, non-integer or negative segments, a bad ``fill`` or ``target``.

    Notes
    -----
    ``d log p_y / d x = (d p_y / d x) / p_y``: the two gradients differ by a positive factor
    per image, so the weights of ``log p_y`` are those of ``p_y`` divided by ``p_y(x)`` and
    rank the segments of an image identically.  Anything that compares segments within an
    image (top-k selection, per-image max-normalised scores) gets the same result from
    either.

    Examples
    --------
    >>> import torch
    >>> X = torch.full((1, 1, 4, 4), 0.5)
    >>> seg = torch.arange(4).repeat_interleave(4).reshape(1, 4, 4)
    >>> grad = torch.zeros(1, 1, 4, 4); grad[0, 0, 0] = 1.0   # only segment 0 matters
    >>> attribute_from_grad(X, grad, seg, 0, fill=0.0).weights
    tensor([[2., 0., 0., 0.]])
    """
    _check_fill(fill, "attribute_from_grad")
    if not isinstance(X, torch.Tensor) or X.ndim != 4 or not X.is_floating_point():
        raise ValueError(f"X must be a float tensor of shape (N, C, H, W), got {getattr(X, 'shape', type(X))}")
    n, c, h, w = X.shape
    grad = torch.as_tensor(grad, device=X.device)
    if tuple(grad.shape) != tuple(X.shape):
        raise ValueError(f"grad must have the shape of X {tuple(X.shape)}, got {tuple(grad.shape)}")
    seg = torch.as_tensor(segments, device=X.device)
    if seg.ndim != 3 or tuple(seg.shape) != (n, h, w) or seg.is_floating_point() or seg.dtype == torch.bool:
        raise ValueError(
            f"segments must be an integer tensor of shape (N, H, W) = ({n}, {h}, {w}), got {tuple(seg.shape)}"
        )
    seg = seg.long()
    if bool((seg < 0).any()):
        raise ValueError("segments must hold labels >= 0")
    if _is_int(target) or (isinstance(target, torch.Tensor) and target.ndim == 0):
        target = [int(target)] * n
    target = check_labels(target, n, name="target").to(X.device)
    out_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
    flat = seg.reshape(n, h * w)
    s_n = flat.amax(1) + 1
    s = int(s_n.max())
    fimg = _fill_image(X, seg, fill)
    contrib = (grad.double() * (X.double() - fimg.double())).sum(1).reshape(n, h * w)
    weights = torch.zeros(n, s, dtype=torch.float64, device=X.device).scatter_add_(1, flat, contrib)
    valid = torch.arange(s, device=X.device)[None] < s_n[:, None]
    if value is None:
        intercept = torch.full((n,), math.nan, dtype=torch.float64, device=X.device)
    else:
        value = torch.as_tensor(value, device=X.device).double()
        if tuple(value.shape) != (n,):
            raise ValueError(f"value must have shape (N,) = ({n},), got {tuple(value.shape)}")
        intercept = value - weights.sum(1)
    return Attribution(
        segments=seg,
        weights=weights.to(out_dtype),
        valid=valid,
        intercept=intercept.to(out_dtype),
        score=torch.full((n,), math.nan, dtype=out_dtype, device=X.device),
        target=target,
    )


def latin_hypercube(k: int, n: int, s: int, generator=None, device="cpu") -> torch.Tensor:
    """``k`` Latin-hypercube points in ``[0, 1]^s`` for each of ``n`` images: ``(k, n, s)``.

    Every coordinate of an image's ``k`` points falls once in each stratum
    ``[i / k, (i + 1) / k)``, in an independent random order per coordinate and image, at a
    uniform position inside the stratum: each point is uniform on the cube, and the mean of
    an additive function over the ``k`` points has lower variance than over ``k``
    independent points (McKay, Beckman and Conover 1979).

    Examples
    --------
    >>> pts = latin_hypercube(4, 2, 3, torch.Generator().manual_seed(0))
    >>> pts.shape, sorted((pts[:, 0, 0] * 4).floor().int().tolist())
    (torch.Size([4, 2, 3]), [0, 1, 2, 3])
    """
    strata = torch.rand(k, n, s, generator=generator, device=device).argsort(0)
    return (strata + torch.rand(k, n, s, generator=generator, device=device)) / k


def blend_segments(X, fimg, segments, keep) -> torch.Tensor:
    """``fimg + m * (X - fimg)`` with ``m`` the keep fraction ``keep[n, s]`` of each pixel's
    segment: ``(N, C, H, W)``.  ``keep`` is ``(N, S)`` in [0, 1] (0 fills a segment, 1 keeps it)."""
    n, _, h, w = X.shape
    m = keep.to(X.dtype).gather(1, segments.reshape(n, h * w)).reshape(n, 1, h, w)
    return fimg + m * (X - fimg)


class GradientExplainer(Component):
    """First-order LIME: segment weights from one input gradient per image.

    For each image ``x`` and explained class ``y``, the weight of segment ``j`` is

    ``w_j = sum_{pixels p in j, channels c} d out / d x_{c,p} * (x_{c,p} - b_{c,p})``

    with ``out = p_y(x)`` (``output="proba"``, LIME's regression target) or ``log p_y(x)``,
    and ``b`` the fill image (each segment's mean colour, or a constant): the linearised
    effect on ``out`` of keeping segment ``j`` instead of replacing it by the fill, which is
    what :class:`~attribshield.explainers.LimeExplainer`'s ridge regression estimates.

    Parameters
    ----------
    segmenter : Component or None, default=None
        Object with ``segment(X) -> (N, H, W)``.  ``None``: a 4x4
        :class:`~attribshield.explainers.GridSegmenter`, as :class:`LimeExplainer` uses.
    fill : "mean" or float, default="mean"
        The replacement of a removed segment: its mean colour (``lime``'s
        ``hide_color=None``) or a constant colour.
    output : {"proba", "log_proba"}, default="proba"
        The differentiated output: the explained class's probability (LIME's scale) or its
        log (the negative cross-entropy; weights divided by ``p_y(x)``, same ranking within
        an image).
    batch_size : int, default=256
        Images per forward/backward pass.
    n_steps : int >= 1 or None, default=None
        Where the gradient is taken.  ``None``: at ``x`` (what a training loop's attack
        computes anyway, see :meth:`attribute_from_grad`).  ``k``: the mean of the gradients at
        the midpoints of ``k`` equal steps on the straight path from the fill ``b`` to ``x``
        (integrated gradients with the midpoint rule, Sundararajan et al. 2017), so that the
        weights add up to about ``out(x) - out(b)``; ``n_steps=1`` is the gradient at the
        half-way blend ``(x + b) / 2``.  Costs ``k`` forward and backward passes per image.
        On the CIFAR-10 benchmark of docs/performance.md the median Spearman correlation with
        exact LIME was 0.49 at ``x``, 0.76 with ``n_steps=1`` and 0.81 with ``n_steps=8``:
        LIME's masks hide about half of the image, so gradients taken towards the fill match
        its regression better.  With ``path="cube"`` the ``k`` points are drawn instead.
    path : {"straight", "cube"}, default="straight"
        Where the ``n_steps`` gradients are taken.  ``"straight"``: on the straight path from
        the fill to ``x`` (integrated gradients, above; every segment at the same blend).
        ``"cube"``: at ``k`` random blends ``b + m_s * (x - b)`` with an independent keep
        fraction ``m_s`` in [0, 1] per segment, drawn by Latin hypercube sampling (each
        segment's ``k`` fractions fall one in each of the ``k`` strata of [0, 1]).  By the
        fundamental theorem of calculus the mean gradient over uniform ``m`` is an unbiased
        estimate of ``E[out(m_j = 1) - out(m_j = 0)]`` over the other segments' random
        blends: the effect of removing segment ``j`` while the others are partly removed,
        which is what LIME's regression over random masks measures (a continuous Banzhaf
        value).  On the CIFAR-10 benchmark of docs/performance.md, ``n_steps=8`` reached a
        median Spearman correlation of 0.89 with exact LIME at 2,000 samples, above exact
        LIME at 64 samples (0.88) at 8 forward and backward passes per image.  Needs ``n_steps``.
    random_state : None, int or generator, default=None
        Seeds the blends of ``path="cube"``, drawn for the whole call at once from a generator
        seeded afresh in every call: a seeded explainer explains the same images the same way
        every time, whatever the ``batch_size``.  Unused otherwise.
    channels_last : bool, default=False
        Run the forward and backward passes in ``torch.channels_last`` memory format (faster
        convolutions on CPU; the module itself is not modified).
    autocast : {None, "bf16", "fp16"}, default=None
        Run the forward passes (and so their backward passes) under ``torch.autocast`` with
        this dtype; the explained output is computed in float64 from the logits either way.
        On the CIFAR-10 benchmark of docs/performance.md, channels_last + bf16 made the cube
        path about 3x faster on an AVX-512 CPU and moved its median Spearman correlation with
        exact LIME by at most 0.005.

    See Also
    --------
    attribute_from_grad : the last step alone, for training loops that already hold an input
        gradient (also a method of ``GradientExplainer``, with the explainer's ``fill``).
    LimeExplainer : the sampled estimate of the same (non-linearised) effects.
    attribshield.maskers.LimeMasker : reads either explainer.

    Notes
    -----
    The result is an :class:`~attribshield.explainers.Attribution` with
    ``intercept = out(x) - sum_j w_j``, the linearised value of ``out`` with every segment
    removed (LIME's intercept is its fitted value there), and ``score`` NaN (no surrogate is
    fitted, so there is no R^2).

    The two agree exactly (LIME with ``alpha -> 0``) when ``out`` is affine along every
    mixture of ``x`` and the fill, e.g. for a model whose ``p_y`` is linear in the pixels.
    They differ where the model is not: LIME's masks remove about half the segments at once,
    so its weights include saturation and interactions between segments, while the gradient
    sees only the infinitesimal neighbourhood of ``x`` (a confident prediction with
    ``p_y`` near 1 has a small gradient although removing its evidence would change it;
    the gradient of a ReLU network is also noisier from pixel to pixel than finite
    differences).  It costs one forward and one backward pass per image instead of
    ``n_samples`` forward passes, and is deterministic.

    References
    ----------
    Ribeiro, Singh and Guestrin, "Why should I trust you?": Explaining the predictions of any
    classifier, KDD 2016.

    Ancona, Ceolini, Oztireli and Gross, "Towards better understanding of gradient-based
    attribution methods for deep neural networks", ICLR 2018.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> attr = GradientExplainer().explain(model, torch.rand(2, 1, 8, 8))
    >>> attr.weights.shape, attr.to_pixels().shape
    (torch.Size([2, 16]), torch.Size([2, 1, 8, 8]))

    Gradients at 8 random per-segment blends instead (closer to LIME's weights):

    >>> cube = GradientExplainer(n_steps=8, path="cube", random_state=0)
    >>> cube.explain(model, torch.rand(2, 1, 8, 8)).weights.shape
    torch.Size([2, 16])
    """

    @property
    def uses_input_grad(self) -> bool:
        """Declared capability: a training loop may turn its own input gradient at ``x`` into
        this explainer's attributions (``attribute_from_grad``).  Only with ``n_steps=None``:
        otherwise the gradients are taken elsewhere (blends of ``x`` and the fill), and the
        loop calls :meth:`explain`."""
        return self.n_steps is None

    def attribute_from_grad(self, X, grad, segments, target, *, value=None) -> Attribution:
        """Attributions from a given input gradient with this explainer's ``fill``
        (see the module-level :func:`attribute_from_grad`)."""
        self._validate_params()
        return attribute_from_grad(X, grad, segments, target, fill=self.fill, value=value)

    def __init__(self, segmenter=None, fill="mean", output="proba", batch_size=256, n_steps=None,
                 path="straight", random_state=None, channels_last=False, autocast=None):
        self.segmenter = segmenter
        self.fill = fill
        self.output = output
        self.batch_size = batch_size
        self.n_steps = n_steps
        self.path = path
        self.random_state = random_state
        self.channels_last = channels_last
        self.autocast = autocast

    _parameter_constraints = {
        "fill": _FILL_CONSTRAINTS,
        "output": [Options(*OUTPUTS)],
        "batch_size": [Integral(1, None)],
        "n_steps": [None, Integral(1, None)],
        "path": [Options("straight", "cube")],
        "random_state": [None, "random_state"],
        "channels_last": [bool],
        "autocast": [None, Options("bf16", "fp16")],
    }

    def _validate_params(self) -> None:
        if self.segmenter is not None and not hasattr(self.segmenter, "segment"):
            raise ValueError(f"segmenter must have a segment(X) method, got {type(self.segmenter).__name__}")
        validate_params(self)
        if self.path == "cube" and self.n_steps is None:
            raise ValueError("path='cube' needs n_steps (the number of random blends per image), got None")

    def explain(self, model, X, target=None, *, segments=None, samples=None) -> Attribution:
        """Explain the predictions of ``model`` on ``X``.

        Parameters
        ----------
        model : torch.nn.Module or fitted RobustAttributionClassifier
            Returns logits ``(B, K)``.  In eval mode for the call (every submodule's flag is
            restored after); the gradient is taken with respect to the input only, so the
            parameters' ``.grad`` fields are not touched.
        X : array-like or torch.Tensor of shape (N, C, H, W)
            Images in [0, 1] (moved to the module's device; not modified).
        target : None, int or array-like of shape (N,), default=None
            Class to explain per image; ``None``: the predicted class.
        segments : array-like of shape (N, H, W) or (H, W), optional
            Fixed segmentation (integer labels, relabelled to ``0..S_n-1`` when needed);
            ``None`` runs the segmenter.
        samples : None
            Accepted for the explainer protocol; this explainer draws no perturbation
            samples, so anything but ``None`` raises.

        Returns
        -------
        Attribution
            On the module's device; ``weights`` ``(N, S)`` in float32 (float64 for float64
            modules or images), 0 and ``valid=False`` on padding columns;
            ``intercept = out(x) - weights.sum(1)``; ``score`` NaN.

        Raises
        ------
        ValueError
            Invalid hyperparameters, ``samples`` given, non-finite or out-of-range images,
            inputs the module rejects, a target out of range, malformed ``segments``.
        """
        self._validate_params()
        if samples is not None:
            raise ValueError("samples must be None: GradientExplainer draws no perturbation samples")
        module, X, device = _module_and_images(model, X)
        n, c, h, w = X.shape
        if target is not None:
            if _is_int(target) or (isinstance(target, torch.Tensor) and target.ndim == 0):
                target = [int(target)] * n
            target = check_labels(target, n, name="target").to(device)
        if segments is None:
            segmenter = self.segmenter if self.segmenter is not None else default_segmenter(h, w)
            seg = torch.as_tensor(segmenter.segment(X), device=device).long()
        else:
            seg = _check_segments(segments, X)
        bs = int(self.batch_size)
        grad = torch.zeros_like(X)
        value = torch.empty(n, dtype=torch.float64, device=device)
        classes = torch.empty(n, dtype=torch.long, device=device)
        steps = None if self.n_steps is None else int(self.n_steps)
        keep = None
        if self.path == "cube":
            # a fresh generator per call, as LimeExplainer: a seeded explainer explains the same
            # images the same way every time
            keep = latin_hypercube(steps, n, int(seg.amax()) + 1, make_generator(self.random_state, device), device)
        def forward(x):
            return _forward_logits(module, x, channels_last=bool(self.channels_last), autocast=self.autocast)

        with eval_mode(module), torch.enable_grad():
            for a in range(0, n, bs):
                b = min(a + bs, n)
                xa = X[a:b].detach().clone().requires_grad_(steps is None)
                logits = _checked_logits(forward, xa)
                if a == 0 and target is not None:
                    check_labels(target, n, name="target", n_classes=logits.shape[1])
                t = logits.detach().argmax(1) if target is None else target[a:b]
                out = self._output(logits, t)
                if steps is None:
                    grad[a:b] = self._grad(out, xa)
                else:  # mean gradient over blends of the fill and x
                    base = _fill_image(xa, seg[a:b], self.fill)
                    for i in range(steps):
                        if keep is None:  # integrated gradients, midpoint rule
                            xp = base + (2 * i + 1) / (2 * steps) * (xa - base)
                        else:  # one keep fraction per segment
                            xp = blend_segments(xa, base, seg[a:b], keep[i, a:b])
                        xp = xp.detach().requires_grad_(True)
                        grad[a:b] += self._grad(self._output(_checked_logits(forward, xp), t), xp) / steps
                value[a:b] = out.detach()
                classes[a:b] = t
        return attribute_from_grad(X, grad, seg, classes, fill=self.fill, value=value)

    def _output(self, logits, t):
        """The differentiated output per image: ``log p_t`` or ``p_t`` (float64)."""
        out = torch.log_softmax(logits.double(), 1).gather(1, t[:, None])[:, 0]
        return out.exp() if self.output == "proba" else out

    @staticmethod
    def _grad(out, x):
        """``d out.sum() / d x`` (zeros where the output does not depend on ``x``)."""
        if not out.requires_grad:
            return torch.zeros_like(x)
        (g,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
        return torch.zeros_like(x) if g is None else g
