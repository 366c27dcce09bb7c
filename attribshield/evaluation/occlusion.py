"""Accuracy under occlusion: ``k`` segments of every image are filled, chosen at random or as
the model's own most attributed ones.

A model that is robust in a small ``Linf`` ball can still hinge on a handful of image regions;
hiding them is a perturbation far outside the ball (Duan et al., ICLR 2023).
:func:`occlusion_accuracy` measures it with the segmentation and fill of LIME (a 4x4
:class:`~attribshield.explainers.GridSegmenter` and each segment's mean colour by default),
and :func:`occlude_segments` builds the occluded images.
"""
from __future__ import annotations

import numpy as np
import torch

from .._params import Integral, Options, Real, check_param
from .._utils import batches, check_batch_size, predict, prepare, to_numpy
from .._validation import check_images
from ..base import eval_mode
from ..explainers.lime import LimeExplainer, fill_segments, segment_means
from ..explainers.segmentation import default_segmenter, relabel_consecutive

__all__ = ["occlusion_accuracy", "occlude_segments", "OCCLUSION_MODES"]

OCCLUSION_MODES = ("random", "attributed")


# --------------------------------------------------------------------------- validation
def _check_ks(k, owner="occlusion_accuracy"):
    """``(list of int, scalar)``: the occlusion sizes, deduplicated in the given order."""
    scalar = not isinstance(k, (list, tuple, range, np.ndarray))
    values = [k] if scalar else list(np.asarray(k).ravel()) if isinstance(k, np.ndarray) else list(k)
    if not values:
        raise ValueError(f"{owner}: k must be an integer >= 0 or a non-empty list of them, got an empty sequence")
    for v in values:
        check_param(owner, "k", v, [Integral(0, None)])
    return list(dict.fromkeys(int(v) for v in values)), scalar


def _check_fill(fill, owner):
    """``'mean'`` or the constant fill as a float (images live in [0, 1])."""
    check_param(owner, "fill", fill, [Options("mean"), Real(0, 1)])
    return fill if isinstance(fill, str) else float(fill)


def _check_segments(seg, shape) -> torch.Tensor:
    """Validate a segmenter's output and relabel images whose labels are not ``0..S_n-1``."""
    n, _, h, w = shape
    seg = torch.as_tensor(seg)
    if tuple(seg.shape) != (n, h, w):
        raise ValueError(f"the segmenter must return labels of shape (N, H, W) = ({n}, {h}, {w}), "
                         f"got {tuple(seg.shape)}")
    if seg.is_floating_point() or seg.dtype == torch.bool:
        raise ValueError(f"the segmenter must return integer labels, got dtype {seg.dtype}")
    seg = seg.long()
    flat = seg.reshape(n, -1)
    if bool((flat < 0).any()):
        return relabel_consecutive(seg)
    present = torch.zeros(n, int(flat.max()) + 1, dtype=torch.bool, device=seg.device)
    present.scatter_(1, flat, True)
    if bool((present.sum(1) != flat.amax(1) + 1).any()):
        return relabel_consecutive(seg)
    return seg


# --------------------------------------------------------------------------- images
def occlude_segments(X, segments, hidden, fill="mean") -> torch.Tensor:
    """Fill the ``hidden`` segments of each image; every other pixel is left unchanged.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    segments : array-like or torch.Tensor of shape (N, H, W), int
        Segment labels ``0..S_n-1`` per image.
    hidden : bool array-like or torch.Tensor of shape (N, S)
        ``True`` occludes the segment (``S`` > every label).
    fill : {"mean"} or float in [0, 1], default="mean"
        ``"mean"``: each hidden segment takes its own per-channel mean colour (``lime``'s
        ``hide_color=None``, :func:`~attribshield.explainers.segment_means`); a number: that
        constant grey level.

    Returns
    -------
    torch.Tensor of shape (N, C, H, W)
        Same dtype and device as ``X`` (as validated), values in [0, 1].

    Examples
    --------
    >>> import torch
    >>> X = torch.tensor([[[[0.0, 1.0], [0.2, 0.4]]]])
    >>> segments = torch.tensor([[[0, 0], [1, 1]]])
    >>> occlude_segments(X, segments, torch.tensor([[True, False]]))
    tensor([[[[0.5000, 0.5000],
              [0.2000, 0.4000]]]])
    >>> occlude_segments(X, segments, torch.tensor([[False, True]]), fill=0.0)
    tensor([[[[0., 1.],
              [0., 0.]]]])
    """
    fill = _check_fill(fill, "occlude_segments")
    X = check_images(X)
    seg = torch.as_tensor(segments, device=X.device)
    if seg.is_floating_point() or seg.dtype == torch.bool:
        raise ValueError(f"segments must hold integer labels, got dtype {seg.dtype}")
    hidden = torch.as_tensor(hidden, device=X.device)
    if hidden.dtype != torch.bool:
        raise ValueError(f"hidden must be a bool mask of shape (N, S), got dtype {hidden.dtype}")
    if hidden.ndim != 2:
        raise ValueError(f"hidden must have shape (N, S), got {tuple(hidden.shape)}")
    seg = seg.long()
    if bool((seg < 0).any()):
        raise ValueError("segments must hold labels >= 0")
    return _occlude(X, seg, hidden, fill)


def _fill_tensor(X, seg, fill) -> torch.Tensor:
    return segment_means(X, seg) if fill == "mean" else torch.full_like(X, fill)


def _occlude(X, seg, hidden, fill, fimg=None) -> torch.Tensor:
    """:func:`occlude_segments` without validation; ``fimg`` is a precomputed fill image."""
    if fimg is None:
        fimg = _fill_tensor(X, seg, fill)
    return fill_segments(X, seg, ~hidden, fill=fimg)


def _hidden_mask(order: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``(N, S)`` mask of the first ``k`` segments of each row of ``order``."""
    hidden = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    if k:
        hidden.scatter_(1, order[:, :k], True)
    return hidden


# --------------------------------------------------------------------------- accuracy
def occlusion_accuracy(model, X, y, k, mode="random", fill="mean", explainer=None, random_state=None, *,
                       segmenter=None, batch_size=256, return_per_sample=False):
    """Accuracy when ``k`` segments of every image are occluded.

    Each image is cut into segments (a 4x4 grid by default, as
    :class:`~attribshield.explainers.LimeExplainer` does) and ``k`` of them are filled
    (:func:`occlude_segments`): chosen uniformly at random per image (``mode="random"``), or
    the ``k`` segments with the largest attribution for the model's own prediction on the
    clean image (``mode="attributed"``), the regions its decision rests on most.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
        Returns logits ``(N, n_classes)``.
    X : array-like or torch.Tensor of shape (N, C, H, W)
        Images in [0, 1].
    y : array-like or torch.Tensor of shape (N,)
        Integer labels.
    k : int or sequence of int
        Segments to occlude per image, ``0 <= k <= S`` (``S``: the smallest segment count
        of the batch); ``k=0`` is the clean accuracy.  A list, tuple or range returns one
        accuracy per entry; the random orders and the attributions are computed once for
        all of them, so the occluded sets are nested (``k=1``'s segment is among ``k=2``'s).
    mode : {"random", "attributed"}, default="random"
    fill : {"mean"} or float in [0, 1], default="mean"
        ``"mean"``: each occluded segment takes its own mean colour (``lime``'s
        ``hide_color=None``); a number: that constant grey level.
    explainer : Explainer or None, default=None
        For ``mode="attributed"``: ``explain(model, X, target, segments=...)`` returning an
        object with segment ``weights`` of shape ``(N, >= S)`` (an :class:`Attribution`),
        called once, with the clean predictions as targets and the segments used for
        occlusion.
        ``None``: ``LimeExplainer(n_samples=200, sampling="foldover", fill=fill,
        random_state=seed)``.  Ignored for ``mode="random"``.
    random_state : int or None, default=None
        Seeds the random segment orders and the default explainer.  Everything runs inside
        ``torch.random.fork_rng`` with torch's global generator seeded from it (so a model or
        explainer that draws from the global generator is reproducible too), and the caller's
        global random state is restored afterwards.  ``None`` draws the seed from torch's
        global generator (advancing it by one draw).
    segmenter : Component or None, default=None
        Object with ``segment(X) -> (N, H, W)`` labels.  ``None``: the explainer's
        ``segmenter`` when it has one set, else a 4x4 :class:`GridSegmenter`.
    batch_size : int, default=256
        Images per forward pass.
    return_per_sample : bool, default=False
        Return the per-sample correctness instead of the mean.

    Returns
    -------
    accuracy : float in [0, 1], or numpy.ndarray of shape (N,), bool
        With a sequence ``k``: a dict ``{k: accuracy}`` in the given order.

    Raises
    ------
    ValueError
        A bad ``k`` (negative, not an integer, a bool, larger than the segment count), an
        unknown ``mode``, a bad ``fill``, an explainer or segmenter without the needed
        method, and the errors of :func:`clean_accuracy`, all before any explanation runs.

    See Also
    --------
    occlude_segments : builds the occluded images.
    attribshield.evaluation.corruption_accuracy : accuracy under common corruptions.

    Notes
    -----
    ``l_inf`` adversarial training is known to be fragile under occlusion: Duan et al.
    (ICLR 2023) find that it makes a few input features dominate the prediction (an
    "inequality phenomenon" that grows with ``eps``), so occluding those features fools an
    adversarially trained model far more often than a standard one.  The gap between the
    ``"attributed"`` and the ``"random"`` curves measures that concentration; methods that
    spread the model's evidence over more segments should narrow it.

    Points misclassified on the clean image may become correct once occluded: this is
    accuracy on occluded images, not a robust accuracy.  In ``"attributed"`` mode the
    segments are ranked by weight, most positive first (ties: the lower label first), and
    the explanation's target is the clean prediction, whatever the label.

    References
    ----------
    Duan, Chen, Zhu, Jia, Zhang and Xue, "Inequality phenomenon in l_inf-adversarial
    training, and its unrealized threats", ICLR 2023.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> X = torch.rand(6, 1, 8, 8)
    >>> y = model(X).argmax(1)
    >>> occlusion_accuracy(model, X, y, k=0)
    1.0
    >>> acc = occlusion_accuracy(model, X, y, k=[1, 4], mode="attributed", random_state=0)
    >>> sorted(acc), all(0 <= a <= 1 for a in acc.values())
    ([1, 4], True)
    """
    ks, scalar = _check_ks(k, "occlusion_accuracy")
    check_param("occlusion_accuracy", "mode", mode, [Options(*OCCLUSION_MODES)])
    fill = _check_fill(fill, "occlusion_accuracy")
    if explainer is not None and not hasattr(explainer, "explain"):
        raise ValueError(f"explainer must have an explain(model, X, target, segments=...) method, "
                         f"got {type(explainer).__name__}")
    if segmenter is not None and not hasattr(segmenter, "segment"):
        raise ValueError(f"segmenter must have a segment(X) method, got {type(segmenter).__name__}")
    check_param("occlusion_accuracy", "random_state", random_state, [None, Integral(0, None)])
    batch_size = check_batch_size(batch_size)
    module, X, y, device = prepare(model, X, y)
    n, _, h, w = X.shape

    if segmenter is None:
        segmenter = getattr(explainer, "segmenter", None) if explainer is not None else None
        if segmenter is None:
            segmenter = default_segmenter(h, w)
    seg = _check_segments(segmenter.segment(X), X.shape).to(device)
    n_seg = seg.reshape(n, -1).amax(1) + 1
    s_min, s_max = int(n_seg.min()), int(n_seg.max())
    if max(ks) > s_min:
        raise ValueError(f"k={max(ks)} is larger than the number of segments ({s_min}"
                         f"{'' if s_min == s_max else ' in the image with the fewest'})")
    valid = torch.arange(s_max, device=device)[None] < n_seg[:, None]

    seed = int(random_state) if random_state is not None else int(torch.randint(0, 2**62, (1,)).item())
    # torch.manual_seed below seeds every CUDA device: fork (and so restore) all of them
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(module):
        torch.manual_seed(seed)
        pred = predict(module, X, batch_size)
        if max(ks) == 0:
            order = torch.zeros(n, 0, dtype=torch.long, device=device)
        elif mode == "random":
            # a uniformly random order of each image's real segments (padding columns last);
            # drawn on the CPU so that the choice does not depend on the device
            gen = torch.Generator().manual_seed(seed)
            scores = torch.rand(n, s_max, generator=gen, dtype=torch.float64).to(device)
            order = scores.masked_fill(~valid, float("inf")).argsort(1)
        else:
            if explainer is None:
                explainer = LimeExplainer(n_samples=200, sampling="foldover", fill=fill, random_state=seed)
            attr = explainer.explain(module, X, pred, segments=seg)
            weights = torch.as_tensor(attr.weights).to(device)
            if weights.ndim != 2 or weights.shape[0] != n or weights.shape[1] < s_max:
                raise ValueError(f"the explainer returned weights of shape {tuple(weights.shape)}, expected "
                                 f"({n}, >= {s_max})")
            weights = weights[:, :s_max].double()
            ranked = weights.masked_fill(~valid, float("-inf"))
            order = torch.argsort(ranked, dim=1, descending=True, stable=True)
        results = {kk: (pred == y) if kk == 0 else torch.empty(n, dtype=torch.bool, device=device) for kk in ks}
        for s in batches(n, batch_size) if max(ks) else ():
            fimg = _fill_tensor(X[s], seg[s], fill)  # once per batch, shared by every k
            for kk in ks:
                if kk:
                    Xo = _occlude(X[s], seg[s], _hidden_mask(order[s], kk), fill, fimg)
                    with torch.no_grad():
                        results[kk][s] = module(Xo).argmax(1) == y[s]

    def finish(c):
        c = to_numpy(c).astype(bool)
        return c if return_per_sample else float(c.mean())

    out = {kk: finish(c) for kk, c in results.items()}
    return out[ks[0]] if scalar else out
