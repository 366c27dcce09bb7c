"""Mask the segments that hold a *known* shortcut: the upper bound of the shortcut experiment.

On a decoy data set (:func:`~attribshield.data.plant_shortcut`: a class-coloured square in a
corner of every image) the spurious feature is known exactly, so a masker that hides the
patch's segments, rather than the segments an explanation points at, is what a perfect
explainer-plus-masker would do: the upper bound against which attribution-guided masking is
measured.

The online training loop (``refine_mode="online"``) hands a masker batch rows, not data-set
indices, and no images either: only the pieces :meth:`OracleMasker.needs` names (an
explanation, its attacked twin, an input gradient) and the segments.  So the patch is found
from the image content by an *explainer*, :class:`OracleExplainer`, whose "explanation" of an
image is the share of the detected patch's pixels in each segment; :class:`OracleMasker`
selects every segment with a positive share.  Both find the patch the same way
(:func:`detect_patch`): a ``patch_size x patch_size`` square of exactly one palette colour
(within ``tol``) in a corner (or, with ``corners_only=False``, anywhere).  Train the oracle
arm with both::

    masker = OracleMasker.from_shortcut(patch_size=4, n_classes=10, n_channels=3)
    build_estimator(cfg, masker=masker, explainer=masker.explainer(), audit_size=0)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._params import Integral, Real, check_param, validate_params
from .._utils import check_method
from ..base import Component, eval_mode, get_module
from ..data.shortcut import shortcut_palette
from ..explainers import Attribution
from ..explainers.segmentation import default_segmenter
from .lime_masker import SpuriousSelection, _SegmentMasker

__all__ = ["OracleMasker", "OracleExplainer", "OracleAttribution", "detect_patch"]

_DEFAULT_TOL = 0.5 / 255  # half an 8-bit level: uint8 images divided by 255 match exactly


def _check_palette(palette) -> np.ndarray:
    if palette is None:
        raise ValueError("palette is None: give the patch colours, an array of shape (n_classes, C) in [0, 1], "
                         "or build the object with from_shortcut(patch_size, n_classes, n_channels)")
    try:
        arr = np.asarray(palette, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"palette must be an array of shape (n_classes, C) in [0, 1], got {palette!r}") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"palette must have shape (n_classes, C), got {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError("palette values must lie in [0, 1] (colours of float images)")
    return arr


#: the patch detection's parameters, shared by detect_patch, OracleExplainer and OracleMasker
_DETECTION_CONSTRAINTS = {
    "patch_size": [Integral(1, None)],
    "tol": [Real(0, 0.5, closed="left")],
    "corners_only": [bool],
}


def _check_detection(palette, patch_size, tol, corners_only) -> np.ndarray:
    pal = _check_palette(palette)
    for name, value in (("patch_size", patch_size), ("tol", tol), ("corners_only", corners_only)):
        check_param("detect_patch", name, value, _DETECTION_CONSTRAINTS[name])
    return pal


def _check_float_images(X) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(np.asarray(X))
    if X.ndim != 4:
        raise ValueError(f"X must have 4 dimensions (N, C, H, W), got shape {tuple(X.shape)}")
    if X.dtype == torch.uint8:
        return X.float() / 255.0
    if not X.is_floating_point():
        raise ValueError(f"X must be float images in [0, 1] or uint8, got dtype {X.dtype}")
    return X


def detect_patch(X, palette, patch_size, *, tol=_DEFAULT_TOL, corners_only=True) -> torch.Tensor:
    """Pixels of every ``patch_size x patch_size`` square of exactly one palette colour.

    Parameters
    ----------
    X : torch.Tensor or array-like of shape (N, C, H, W)
        Float images in [0, 1] (``uint8`` images are divided by 255).
    palette : array-like of shape (n_classes, C)
        The patch colours in [0, 1] (:func:`~attribshield.data.shortcut_palette`).
    patch_size : int >= 1
        Side of the square; at most ``min(H, W)``.
    tol : float in [0, 0.5), default=0.5/255
        A pixel has a colour when every channel is within ``tol`` of it (half an 8-bit level
        by default: an exact match for 8-bit images).
    corners_only : bool, default=True
        Look at the four corner squares only (where :func:`plant_shortcut` puts the patch);
        ``False``: at every position (a patch moved by a random crop is still found, as
        long as it is whole; more false positives on flat image regions).

    Returns
    -------
    torch.Tensor of shape (N, 1, H, W), bool
        True on the pixels of every detected square (none for an image without one); on
        ``X``'s device.

    Raises
    ------
    ValueError
        Bad images, palette (including a channel count different from ``X``'s), patch size or
        tolerance.

    Examples
    --------
    >>> import numpy as np
    >>> from attribshield.data import plant_shortcut, shortcut_palette, shortcut_pixel_mask
    >>> X = np.full((3, 3, 8, 8), 0.5, dtype=np.float32)
    >>> Xp, info = plant_shortcut(X, [0, 1, 2], patch_size=2, random_state=0, return_info=True)
    >>> found = detect_patch(Xp, shortcut_palette(3), 2)
    >>> bool((found == shortcut_pixel_mask(info)).all()), int(detect_patch(X, shortcut_palette(3), 2).sum())
    (True, 0)
    """
    pal = _check_detection(palette, patch_size, tol, corners_only)
    X = _check_float_images(X)
    n, c, h, w = X.shape
    if pal.shape[1] != c:
        raise ValueError(f"palette has {pal.shape[1]} channels but X has {c}")
    p = int(patch_size)
    if p > min(h, w):
        raise ValueError(f"patch_size={p} exceeds the image size {(h, w)}")
    colours = torch.as_tensor(pal, dtype=torch.float64, device=X.device)[None, :, :, None, None]  # (1, K, C, 1, 1)
    tol = float(tol)
    mask = torch.zeros((n, 1, h, w), dtype=torch.bool, device=X.device)
    if corners_only:
        for top, left in ((0, 0), (0, w - p), (h - p, 0), (h - p, w - p)):
            win = X[:, None, :, top:top + p, left:left + p].double()  # (N, 1, C, p, p)
            hit = ((win - colours).abs() <= tol).flatten(2).all(2).any(1)  # (N,)
            mask[hit, :, top:top + p, left:left + p] = True
        return mask
    per_pixel = ((X[:, None].double() - colours).abs() <= tol).all(2)  # (N, K, H, W)
    whole = F.avg_pool2d(per_pixel.float(), p, stride=1) >= 1 - 0.5 / (p * p)  # a window of one colour
    cover = F.max_pool2d(F.pad(whole.float(), (p - 1, p - 1, p - 1, p - 1)), p, stride=1)  # its pixels
    return cover.amax(1, keepdim=True) > 0


def _segment_shares(pixels: torch.Tensor, segments: torch.Tensor):
    """``(shares, valid)``: each segment's share of the detected pixels ``(N, S)`` (0 without any)."""
    n = segments.shape[0]
    seg = segments.reshape(n, -1)
    s_n = seg.amax(1) + 1
    s = int(s_n.max())
    counts = torch.zeros((n, s), dtype=torch.float64, device=segments.device)
    counts.scatter_add_(1, seg, pixels.reshape(n, -1).to(device=segments.device, dtype=torch.float64))
    total = counts.sum(1, keepdim=True)
    shares = torch.where(total > 0, counts / total.clamp_min(1.0), torch.zeros_like(counts)).float()
    valid = torch.arange(s, device=segments.device)[None] < s_n[:, None]
    return shares, valid


def _check_segments(segments, X) -> torch.Tensor:
    segments = torch.as_tensor(segments)
    want = (X.shape[0],) + tuple(X.shape[2:])
    if segments.ndim == 2:
        segments = segments.expand(*want)
    if tuple(segments.shape) != want or segments.is_floating_point() or segments.dtype == torch.bool:
        raise ValueError(f"segments must be integer labels of shape (N, H, W) = {want}, got "
                         f"{tuple(segments.shape)} {segments.dtype}")
    segments = segments.to(X.device).long()
    if int(segments.min()) < 0:
        raise ValueError(f"segments must hold labels >= 0, got min={int(segments.min())}")
    return segments


def _default_segments(X, segmenter=None) -> torch.Tensor:
    if segmenter is None:
        segmenter = default_segmenter(*X.shape[2:])
    elif not hasattr(segmenter, "segment"):
        raise ValueError(f"segmenter must have a segment(X) method, got {type(segmenter).__name__}")
    return torch.as_tensor(segmenter.segment(X), device=X.device).long()


@dataclass
class OracleAttribution(Attribution):
    """The "explanation" of :class:`OracleExplainer`: each segment's share of the detected patch.

    An :class:`~attribshield.explainers.Attribution` whose ``weights`` ``(N, S)`` are the
    share of the patch's pixels in each segment (summing to 1 for an image with a detected
    patch, 0 everywhere without one), ``intercept`` 0 and ``score`` NaN.  The type tells
    :class:`OracleMasker` that the weights come from the oracle (slicing or ``.to`` return a
    plain ``Attribution``).
    """


class OracleExplainer(Component):
    """Explain an image by where its planted patch is: the oracle's side of the online loop.

    Not an explanation of the model: the weights are each segment's share of the pixels of
    the detected patch (:func:`detect_patch`), whatever the model does.  In the online
    training loop it carries the image content to :class:`OracleMasker` (which is handed
    explanations, not images); :meth:`OracleMasker.explainer` builds the matching one.

    Parameters
    ----------
    palette : array-like of shape (n_classes, C) or None, default=None
        The patch colours in [0, 1]; ``None`` raises at the first call (use
        :meth:`OracleMasker.from_shortcut` / :meth:`OracleMasker.explainer`).
    patch_size : int >= 1, default=4
        Side of the planted square in pixels.
    tol : float in [0, 0.5), default=0.5/255
        Colour tolerance per channel.
    corners_only : bool, default=True
        Look for the patch in the four corners only (see :func:`detect_patch`).
    segmenter : object with ``segment(X)`` or None, default=None
        The segments (``None``: the default 4x4 grid, as the other explainers).

    See Also
    --------
    OracleMasker : selects the segments this explainer gives weight to.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from attribshield.data import plant_shortcut, shortcut_palette
    >>> X = np.full((2, 1, 8, 8), 0.5, dtype=np.float32)
    >>> Xp = plant_shortcut(X, [0, 1], patch_size=2, random_state=1)
    >>> expl = OracleExplainer(palette=shortcut_palette(2, n_channels=1), patch_size=2)
    >>> att = expl.explain(None, torch.as_tensor(Xp), torch.tensor([0, 1]))
    >>> att.weights.shape, att.weights.sum(1).tolist()
    (torch.Size([2, 16]), [1.0, 1.0])
    """

    def __init__(self, palette=None, patch_size=4, tol=_DEFAULT_TOL, corners_only=True, segmenter=None):
        self.palette = palette
        self.patch_size = patch_size
        self.tol = tol
        self.corners_only = corners_only
        self.segmenter = segmenter

    _parameter_constraints = {**_DETECTION_CONSTRAINTS}

    def _validate_params(self) -> None:
        _check_palette(self.palette)
        validate_params(self)
        if self.segmenter is not None and not hasattr(self.segmenter, "segment"):
            raise ValueError(f"segmenter must have a segment(X) method, got {type(self.segmenter).__name__}")

    def explain(self, model, X, target=None, *, segments=None) -> OracleAttribution:
        """Each segment's share of the detected patch's pixels.

        Parameters
        ----------
        model : torch.nn.Module, fitted RobustAttributionClassifier or None
            Used only to predict the stored ``target`` when ``target`` is ``None``.
        X : torch.Tensor or array-like of shape (N, C, H, W)
            Images in [0, 1] (``uint8``: divided by 255).
        target : array-like of shape (N,) or None, default=None
            Stored in the result (the weights do not depend on it); ``None``: the model's
            predictions.
        segments : torch.Tensor of shape (N, H, W) or (H, W), integer, optional
            Segment labels; ``None``: from ``segmenter``.

        Returns
        -------
        OracleAttribution
            ``weights`` ``(N, S)`` float32 in [0, 1], summing to 1 (a patch) or 0 (none) per
            image; ``valid`` ``(N, S)``; on ``X``'s device.

        Raises
        ------
        ValueError
            Bad parameters, images, segments or target; ``target=None`` without a model.
        """
        self._validate_params()
        X = _check_float_images(X)
        if target is None:
            if model is None:
                raise ValueError("explain needs a target (the classes to store) or a model to predict them")
            module = get_module(model)
            dev = next((t.device for t in module.parameters()), X.device)
            with torch.no_grad(), eval_mode(module):
                target = module(X.to(dev)).argmax(1)
        target = torch.as_tensor(target, device=X.device).long()
        if target.shape != (X.shape[0],):
            raise ValueError(f"target must have shape ({X.shape[0]},), got {tuple(target.shape)}")
        segments = _default_segments(X, self.segmenter) if segments is None else _check_segments(segments, X)
        pixels = detect_patch(X, self.palette, self.patch_size, tol=self.tol, corners_only=bool(self.corners_only))
        weights, valid = _segment_shares(pixels[:, 0], segments)
        n = X.shape[0]
        return OracleAttribution(segments=segments, weights=weights.to(X.device), valid=valid.to(X.device),
                                 intercept=torch.zeros(n, device=X.device),
                                 score=torch.full((n,), float("nan"), device=X.device), target=target)


class OracleMasker(_SegmentMasker):
    """Select the segments holding a planted shortcut patch (known, not explained) and fill them.

    The upper-bound arm of the shortcut experiment: the masker an explainer that always
    found the shortcut would give.  It selects every segment that holds a pixel of the
    detected patch (a ``patch_size`` square of exactly one palette colour in a corner, see
    :func:`detect_patch`), and nothing in an image without a patch, instead of a fixed
    ``top_k``.

    Parameters
    ----------
    palette : array-like of shape (n_classes, C) or None, default=None
        The patch colours in [0, 1]; :meth:`from_shortcut` fills it with
        :func:`~attribshield.data.shortcut_palette`.  ``None`` raises at the first call.
    patch_size : int >= 1, default=4
        Side of the planted square in pixels.
    tol : float in [0, 0.5), default=0.5/255
        Colour tolerance per channel (half an 8-bit level).
    corners_only : bool, default=True
        Look for the patch in the four corners only; ``False``: anywhere (e.g. after a
        random crop).
    fill : {"mean", "constant", "blur", "noise"}, default="mean"
        What replaces a selected segment, as in :class:`~attribshield.maskers.LimeMasker`.
    fill_value : float in [0, 1], default=0.0
        Colour of the ``'constant'`` fill.
    blur_sigma : float > 0 or None, default=None
        Standard deviation (pixels) of the ``'blur'`` fill.
    random_state : None, int or generator, default=None
        Seeds the ``'noise'`` fill.

    See Also
    --------
    OracleExplainer : carries the images' patches to this masker in the online loop.
    attribshield.data.shortcut_segment_mask : the same selection from ``plant_shortcut``'s info.
    LimeMasker, RandomMasker : the explained and the random selections it bounds.

    Notes
    -----
    *In the online training loop* (``refine_mode="online"``) the masker sees explanations,
    not images, so :meth:`needs` asks for an ``attribution`` and the estimator's explainer
    must be :class:`OracleExplainer` (:meth:`explainer` builds it with the same settings);
    any other explainer's attribution raises ``ValueError``.  Set ``audit_size=0`` (the
    audit would compare the oracle with LIME).  In the rounds loop, and for direct use,
    :meth:`find_spurious` and ``segment_scores(X=...)`` read the images themselves.

    Images are matched in their current state: a training augmentation that moves the patch
    (random crops) hides it from ``corners_only=True``; flips keep it in a corner.
    A natural image with a ``patch_size`` square of exactly a palette colour in a corner is
    a false positive (its segment is masked); on CIFAR-10's fully saturated palette colours
    this is rare.

    Examples
    --------
    >>> import numpy as np
    >>> from attribshield.data import plant_shortcut, shortcut_segment_mask
    >>> X = np.full((3, 3, 8, 8), 0.5, dtype=np.float32)
    >>> Xp, info = plant_shortcut(X, [0, 1, 2], patch_size=2, n_classes=10, random_state=1, return_info=True)
    >>> masker = OracleMasker.from_shortcut(patch_size=2, n_classes=10, n_channels=3)
    >>> sel = masker.find_spurious(None, Xp, [0, 1, 2])
    >>> bool((sel.selected == shortcut_segment_mask(info)).all())
    True
    >>> masker.find_spurious(None, X, [0, 1, 2]).selected.any().item()   # no patch, no mask
    False
    >>> sorted(masker.needs())
    ['attribution']
    """

    def __init__(self, palette=None, patch_size=4, tol=_DEFAULT_TOL, corners_only=True, fill="mean",
                 fill_value=0.0, blur_sigma=None, random_state=None):
        self.palette = palette
        self.patch_size = patch_size
        self.tol = tol
        self.corners_only = corners_only
        self.fill = fill
        self.fill_value = fill_value
        self.blur_sigma = blur_sigma
        self.random_state = random_state

    @classmethod
    def from_shortcut(cls, patch_size=4, n_classes=10, n_channels=3, **kwargs) -> "OracleMasker":
        """The oracle of :func:`~attribshield.data.plant_shortcut`'s patches.

        Parameters
        ----------
        patch_size : int, default=4
            The ``patch_size`` given to ``plant_shortcut``.
        n_classes : int, default=10
            Its ``n_classes`` (palette size).
        n_channels : int, default=3
            Channels of the images (3: RGB hues; otherwise gray levels).
        **kwargs
            Other parameters of :class:`OracleMasker` (``fill``, ``tol``, ...).

        Returns
        -------
        OracleMasker
            With ``palette`` the rows of
            ``shortcut_palette(n_classes, n_channels)`` as a tuple of tuples.

        Raises
        ------
        ValueError
            Bad ``n_classes``, ``n_channels`` or ``patch_size``.
        """
        pal = shortcut_palette(n_classes, n_channels, dtype="float64")
        masker = cls(palette=tuple(tuple(float(v) for v in row) for row in pal), patch_size=patch_size, **kwargs)
        masker._validate_params()
        return masker

    def explainer(self, segmenter=None) -> OracleExplainer:
        """The :class:`OracleExplainer` with this masker's palette, patch size and tolerance.

        Parameters
        ----------
        segmenter : object with ``segment(X)`` or None, default=None
            Its segmenter (``None``: the default grid).

        Returns
        -------
        OracleExplainer
        """
        return OracleExplainer(palette=self.palette, patch_size=self.patch_size, tol=self.tol,
                               corners_only=self.corners_only, segmenter=segmenter)

    # ----------------------------------------------------------------- validation
    # the segment maskers' fill parameters (no top_k: every patch segment is selected)
    _parameter_constraints = {
        **_DETECTION_CONSTRAINTS,
        **{k: c for k, c in _SegmentMasker._parameter_constraints.items() if k != "top_k"},
    }

    def _validate_params(self) -> None:
        _check_palette(self.palette)
        validate_params(self)

    # ----------------------------------------------------------------- scoring
    def needs(self) -> frozenset:
        """The pieces the online loop must compute: the ``attribution`` (of an :class:`OracleExplainer`).

        Returns
        -------
        frozenset of str
            ``{"attribution"}``: the loop hands maskers explanations, not images.
        """
        return frozenset({"attribution"})

    def segment_scores(self, attribution=None, *, segments=None, valid=None, attribution_adv=None,
                       input_grad=None, X=None) -> torch.Tensor:
        """Each segment's share of the detected patch's pixels (0 for the other segments).

        Parameters
        ----------
        attribution : OracleAttribution, optional
            From :class:`OracleExplainer` (the online loop); its weights are the scores.
        segments : torch.Tensor of shape (N, H, W) or (H, W), integer, optional
            With ``X``: the segments to score (``None``: the default 4x4 grid).  Ignored with
            an ``attribution`` (it carries its segments).
        valid : ignored
            The valid columns follow from the segments (or the attribution).
        attribution_adv, input_grad : ignored
            Accepted so that one training loop can call any masker the same way.
        X : torch.Tensor or array-like of shape (N, C, H, W), optional
            Images in [0, 1]: the patch is detected in them (takes precedence over
            ``attribution``).

        Returns
        -------
        torch.Tensor of shape (N, S), float32
            In [0, 1]; per image, the scores sum to 1 with a detected patch and are all 0
            without one; 0 on padding columns.

        Raises
        ------
        ValueError
            Bad parameters; neither ``X`` nor an :class:`OracleAttribution` (e.g. the
            estimator's explainer is not an :class:`OracleExplainer`).
        """
        self._validate_params()
        if X is not None:
            X = _check_float_images(X)
            seg = _default_segments(X) if segments is None else _check_segments(segments, X)
            pixels = detect_patch(X, self.palette, self.patch_size, tol=self.tol,
                                  corners_only=bool(self.corners_only))
            return _segment_shares(pixels[:, 0], seg)[0]
        if not isinstance(attribution, OracleAttribution):
            raise ValueError(
                "OracleMasker scores segments from the images (X=...) or from an OracleExplainer's attribution, "
                f"got {type(attribution).__name__}: train with explainer=masker.explainer()"
            )
        return attribution.weights.float().masked_fill(~attribution.valid, 0.0)

    def select(self, scores, valid=None) -> torch.Tensor:
        """Every valid segment with a positive score: the patch's segments, none without a patch.

        Parameters
        ----------
        scores : torch.Tensor of shape (N, S)
            From :meth:`segment_scores`.
        valid : torch.Tensor of shape (N, S), bool, optional
            Real (non-padding) segments; ``None``: every column.

        Returns
        -------
        torch.Tensor of shape (N, S), bool
        """
        self._validate_params()
        scores, valid = self._check_scores(scores, valid)
        return (torch.nan_to_num(scores.float(), nan=0.0) > 0) & valid

    def find_spurious(self, model, X, y, explainer=None, attacker=None) -> SpuriousSelection:
        """Detect the patch in ``X`` and select its segments (no explanation, no attack).

        Parameters
        ----------
        model : torch.nn.Module, fitted RobustAttributionClassifier or None
            Only its device is used (the result lives there); ``None``: ``X``'s device.
        X : array-like or torch.Tensor of shape (N, C, H, W)
            Images in [0, 1].
        y : array-like of shape (N,)
            Labels (validated; stored as the attribution's target).
        explainer : object, optional
            Its ``segmenter`` gives the segments; ``None`` (or none): the default 4x4 grid.
        attacker : object with ``perturb``, optional
            Ignored (validated only).

        Returns
        -------
        SpuriousSelection
            ``attribution`` is the :class:`OracleAttribution`; ``scores`` its weights.

        Raises
        ------
        ValueError
            Bad parameters, images, labels, attacker or segmenter (before any work).
        """
        self._validate_params()
        self._check_attacker(attacker)
        segmenter = check_method(getattr(explainer, "segmenter", None), "explainer.segmenter", "segment", "X",
                                 optional=True)
        _, X, y = self._prepare(model, X, y, allow_no_model=True)
        att = self.explainer(segmenter=segmenter).explain(None, X, y)
        scores = self.segment_scores(att)
        return SpuriousSelection(segments=att.segments, selected=self.select(scores, att.valid), scores=scores,
                                 attribution=att)
