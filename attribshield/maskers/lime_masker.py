"""Find the segments a model relies on spuriously (from LIME), and hide them.

:class:`LimeMasker` turns explanations into a training signal.  For each image it scores
every segment with one of four criteria (see ``docs/method.md`` for the reasoning):

``'unstable'``
    ``|w_j(x) - w_j(x_adv)|``: how much the segment's LIME weight moves when the image is
    attacked (``x_adv`` from the estimator's attacker, explained with the *same* segments);
    without an attacker, the standard deviation of ``w_j`` over the clean image and
    ``n_noise`` noisy copies.  Evidence that moves under an imperceptible perturbation is
    not evidence about the class.
``'irrelevant'``
    the share of the input-gradient mass ``sum |d CE / d x|`` on the segment, counted only
    where the segment's weight for the *true* class is ``<= 0``: the model reacts to the
    segment although keeping it does not support the right answer.
``'combined'``
    the mean of both, each divided by its per-image maximum.
``'dominant'``
    ``max(w_j, 0) / sum_k max(w_k, 0)``: the segment's share of the positive evidence for
    the true class, from the clean explanation alone.  The model's own shortcut: hiding it
    makes the model find another explanation.

:meth:`LimeMasker.select` keeps the ``top_k`` highest-scoring segments per image (or every
segment scoring at least ``threshold``) and :meth:`LimeMasker.apply` fills them.
:meth:`LimeMasker.segment_scores` computes the scores from precomputed pieces (an explanation,
its attacked twin, an input gradient: :meth:`LimeMasker.needs` says which), for training
loops that already hold them.

The selection and fills are shared with :class:`~attribshield.maskers.RandomMasker` (the
control that picks the same number of segments at random) through :class:`_SegmentMasker`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F

from .._params import Integral, Options, Real, validate_params
from .._utils import module_device
from .._validation import check_images, check_labels
from ..base import Component, eval_mode, get_module
from .fill import FILLS, _check_segments_selected, fill_image, pixel_mask

__all__ = ["LimeMasker", "SpuriousSelection", "CRITERIA"]

CRITERIA = ("unstable", "irrelevant", "combined", "dominant")

#: the pieces :meth:`LimeMasker.segment_scores` needs for each criterion
_NEEDS = {
    "unstable": frozenset({"attribution", "attribution_adv"}),
    "irrelevant": frozenset({"attribution", "input_grad"}),
    "combined": frozenset({"attribution", "attribution_adv", "input_grad"}),
    "dominant": frozenset({"attribution"}),
}


@dataclass
class SpuriousSelection:
    """Result of :meth:`LimeMasker.find_spurious` (and :meth:`RandomMasker.find_spurious`).

    Attributes
    ----------
    segments : torch.Tensor of shape (N, H, W), int64
        Segment labels ``0..S_n-1`` (those of the clean explanation).
    selected : torch.Tensor of shape (N, S), bool
        Spurious segments chosen by :meth:`LimeMasker.select`; padding columns are False.
    scores : torch.Tensor of shape (N, S), float
        Spuriousness of each segment, higher = more spurious, in [0, 1] (each criterion is
        divided by its per-image maximum; ``'combined'`` averages the two; ``'dominant'`` is
        the share of the positive evidence); 0 on padding.
    attribution : Attribution or None
        The clean explanation of ``X`` for the true class (``None`` from
        :class:`~attribshield.maskers.RandomMasker`, which explains nothing).
    instability : torch.Tensor of shape (N, S) or None
        Raw instability (``|w(x) - w(x_adv)|`` or the std over noisy copies), before
        normalisation; ``None`` unless the criterion is ``'unstable'`` or ``'combined'``.
    irrelevance : torch.Tensor of shape (N, S) or None
        Raw irrelevance (share of the gradient mass on non-positive-weight segments, in
        [0, 1], summing to at most 1 per image); ``None`` unless the criterion is
        ``'irrelevant'`` or ``'combined'``.
    """

    segments: torch.Tensor
    selected: torch.Tensor
    scores: torch.Tensor
    attribution: object
    instability: Optional[torch.Tensor] = None
    irrelevance: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.selected.shape[0])

    def pixel_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The selection as a pixel mask of shape ``(N, 1, H, W)`` with values in {0, 1}."""
        return pixel_mask(self.segments, self.selected, dtype=dtype)

    def to(self, device) -> "SpuriousSelection":
        """Return a copy with every tensor (and the attribution) on ``device``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to(device) if v is not None and hasattr(v, "to") else v
        return SpuriousSelection(**out)


def _max_normalise(s: torch.Tensor) -> torch.Tensor:
    """Divide each row by its maximum (rows whose maximum is <= 0 become 0)."""
    mx = s.amax(1, keepdim=True)
    return torch.where(mx > 0, s / mx.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))


class _SegmentMasker(Component):
    """Shared parts of the segment maskers: top-k selection, fills and input preparation.

    Subclasses store ``top_k``, ``fill``, ``fill_value``, ``blur_sigma`` and ``random_state``
    (the ``'noise'`` fill's generator) and provide ``find_spurious``, ``segment_scores`` and
    ``needs``.  :meth:`_selection_threshold` returns ``None`` (top-k selection) unless a
    subclass has a threshold.
    """

    # ----------------------------------------------------------------- validation
    _parameter_constraints = {
        "fill": [Options(*FILLS)],
        "top_k": [Integral(1, None)],
        "fill_value": [Real(0, 1)],
        "blur_sigma": [None, Real(0, None, closed="neither")],
    }

    def _validate_params(self) -> None:
        validate_params(self)

    def _selection_threshold(self):
        """``None`` for top-k selection, else the score threshold."""
        return None

    @staticmethod
    def _check_attacker(attacker) -> None:
        if attacker is not None and not hasattr(attacker, "perturb"):
            raise ValueError(f"attacker must have a perturb(model, X, y) method, got {type(attacker).__name__}")

    @staticmethod
    def _prepare(model, X, y, allow_no_model=False):
        """``(module, X, y)``: validated images and labels on the module's device (``X``'s
        device, and ``module=None``, for ``model=None`` when ``allow_no_model``)."""
        module = None if model is None and allow_no_model else get_module(model)
        X = check_images(X)
        y = check_labels(y, X.shape[0])
        device = X.device if module is None else module_device(module, X.device)
        return module, X.to(device), y.to(device)

    # ----------------------------------------------------------------- selection
    @staticmethod
    def _check_scores(scores, valid):
        """``(scores, valid)`` as tensors of the same ``(N, S)`` shape; ``valid=None``: all True."""
        scores = torch.as_tensor(scores)
        if scores.ndim != 2:
            raise ValueError(f"scores must have shape (N, S), got {tuple(scores.shape)}")
        if valid is None:
            valid = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        valid = torch.as_tensor(valid, device=scores.device)
        if valid.shape != scores.shape:
            raise ValueError(f"valid must have the shape of scores {tuple(scores.shape)}, got {tuple(valid.shape)}")
        return scores, valid.bool()

    def select(self, scores, valid=None) -> torch.Tensor:
        """Choose the spurious segments of each image.

        Parameters
        ----------
        scores : torch.Tensor of shape (N, S), float
            Higher = more spurious (NaN counts as the lowest score).
        valid : torch.Tensor of shape (N, S), bool, optional
            Real (non-padding) segments; ``None``: every column is valid.  Invalid columns
            are never selected.

        Returns
        -------
        torch.Tensor of shape (N, S), bool
            Without a threshold: exactly ``min(top_k, n_valid)`` segments per image, the
            highest scores (ties broken by ``torch.topk``).  With one (``LimeMasker``'s
            ``threshold``): every valid segment with ``score >= threshold``.

        Warns
        -----
        UserWarning
            Once per call when ``top_k`` exceeds some image's number of valid segments (the
            selection is clipped to all of them).
        """
        self._validate_params()
        scores, valid = self._check_scores(scores, valid)
        scores = scores.float() if not scores.is_floating_point() else scores
        threshold = self._selection_threshold()
        if threshold is not None:
            return (scores >= float(threshold)) & valid
        k = int(self.top_k)
        n_valid = valid.sum(1)
        if scores.shape[1] == 0:
            return valid.clone()
        if bool((n_valid < k).any()):
            warnings.warn(
                f"top_k={k} exceeds the number of segments of {int((n_valid < k).sum())} of "
                f"{scores.shape[0]} images (min {int(n_valid.min())}); selecting all of their segments",
                UserWarning,
                stacklevel=2,
            )
        k_eff = min(k, scores.shape[1])
        # valid columns rank by score (NaN and -inf as the lowest finite number), invalid
        # columns below every valid one
        lowest = torch.finfo(torch.float64).min
        key = torch.nan_to_num(scores.double(), nan=lowest, neginf=lowest, posinf=torch.finfo(torch.float64).max)
        key = key.masked_fill(~valid, -math.inf)
        idx = torch.topk(key, k_eff, dim=1).indices
        sel = torch.zeros_like(valid)
        sel.scatter_(1, idx, True)
        return sel & valid

    # ----------------------------------------------------------------- filling
    def apply(self, X, segments, selected) -> torch.Tensor:
        """Fill the selected segments.

        Parameters
        ----------
        X : torch.Tensor of shape (N, C, H, W)
            Images in [0, 1] (not validated for range: this runs every training step).
        segments : torch.Tensor of shape (N, H, W), integer
            Segment labels ``0..S_n-1``.
        selected : torch.Tensor of shape (N, S), bool
            Segments to fill (``S`` > every label).

        Returns
        -------
        torch.Tensor of shape (N, C, H, W)
            Same dtype and device as ``X``; pixels outside the selected segments are
            unchanged, the others hold the fill (``'mean'``: their segment's mean colour).
        """
        self._validate_params()
        X = self._check_X(X)
        _check_segments_selected(segments, selected)
        want = (X.shape[0],) + tuple(X.shape[2:])
        if tuple(segments.shape) != want:
            raise ValueError(f"segments must have shape (N, H, W) = {want}, got {tuple(segments.shape)}")
        segments = segments.to(X.device).long()
        m = pixel_mask(segments, selected.to(X.device), dtype=torch.bool)
        fimg = fill_image(
            X,
            self.fill,
            segments=segments,
            fill_value=self.fill_value,
            blur_sigma=self.blur_sigma,
            generator=self._generator(X.device),
        )
        return torch.where(m, fimg, X)

    def apply_mask(self, X, mask, segments=None) -> torch.Tensor:
        """Fill the pixels of a pixel mask (e.g. one cached by the refinement loop).

        Parameters
        ----------
        X : torch.Tensor of shape (N, C, H, W)
            Images in [0, 1].
        mask : torch.Tensor of shape (N, 1, H, W) or (N, C, H, W), values in [0, 1]
            1 = fill; fractional values blend: ``X * (1 - mask) + fill * mask``.
        segments : torch.Tensor of shape (N, H, W), optional
            With segments, ``'mean'`` fills each pixel with its segment's mean colour (equal to
            :meth:`apply` when ``mask`` is a union of segments); without, with the mean colour
            of the masked region of each image.

        Returns
        -------
        torch.Tensor of shape (N, C, H, W)
            Same dtype and device as ``X``; pixels where ``mask == 0`` are unchanged.
        """
        self._validate_params()
        X = self._check_X(X)
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[0] != X.shape[0] \
                or mask.shape[1] not in (1, X.shape[1]) or tuple(mask.shape[2:]) != tuple(X.shape[2:]):
            raise ValueError(
                f"mask must have shape (N, 1, H, W) or (N, C, H, W) matching X {tuple(X.shape)}, "
                f"got {tuple(getattr(mask, 'shape', ()))}"
            )
        mask = mask.to(device=X.device, dtype=X.dtype)
        if segments is not None:
            segments = torch.as_tensor(segments, device=X.device).long()
        fimg = fill_image(
            X,
            self.fill,
            segments=segments,
            mask=mask,
            fill_value=self.fill_value,
            blur_sigma=self.blur_sigma,
            generator=self._generator(X.device),
        )
        return X * (1 - mask) + fimg * mask

    @staticmethod
    def _check_X(X) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            X = check_images(X)
        if X.ndim != 4:
            raise ValueError(f"X must have 4 dimensions (N, C, H, W), got shape {tuple(X.shape)}")
        if not X.is_floating_point():
            raise ValueError(f"X must be a float tensor in [0, 1], got dtype {X.dtype}")
        return X


# --------------------------------------------------------------------------- raw criteria
def _check_attribution(attribution, name: str = "attribution"):
    if attribution is None:
        raise ValueError(f"{name} is required: an Attribution (e.g. from LimeExplainer.explain), got None")
    for field in ("weights", "valid", "segments"):
        if not isinstance(getattr(attribution, field, None), torch.Tensor):
            raise ValueError(
                f"{name} must be an Attribution with weights, valid and segments tensors, "
                f"got {type(attribution).__name__}"
            )
    if attribution.weights.ndim != 2 or attribution.valid.shape != attribution.weights.shape:
        raise ValueError(
            f"{name}.weights and {name}.valid must have the same shape (N, S), got "
            f"{tuple(attribution.weights.shape)} and {tuple(attribution.valid.shape)}"
        )


def _instability(attr, attr_adv) -> torch.Tensor:
    """Raw instability ``(N, S)``: ``|w - w_adv|``, or the std over ``[w, *w_copies]``."""
    w = attr.weights
    twins = [attr_adv] if not isinstance(attr_adv, (list, tuple)) else list(attr_adv)
    if not twins:
        raise ValueError("attribution_adv must be an Attribution or a non-empty sequence of them, got []")
    for t in twins:
        _check_attribution(t, "attribution_adv")
        if t.weights.shape != w.shape:
            raise ValueError(
                f"attribution_adv.weights must have the shape of attribution.weights {tuple(w.shape)} "
                f"(explain the twin with the same segments), got {tuple(t.weights.shape)}"
            )
    if not isinstance(attr_adv, (list, tuple)):
        return (w - attr_adv.weights.to(w)).abs()
    return torch.stack([w] + [t.weights.to(w) for t in twins]).std(0, correction=0)


def _irrelevance(attr, input_grad) -> torch.Tensor:
    """Raw irrelevance ``(N, S)``: gradient-mass share of segments with weight <= 0."""
    n, s = attr.weights.shape
    seg = attr.segments
    device = attr.weights.device
    g = torch.as_tensor(input_grad)
    if g.ndim != 4 or g.shape[0] != n or tuple(g.shape[2:]) != tuple(seg.shape[1:]):
        raise ValueError(
            f"input_grad must have shape (N, C, H, W) = ({n}, C, {seg.shape[1]}, {seg.shape[2]}), "
            f"got {tuple(g.shape)}"
        )
    h, w = seg.shape[1:]
    seg = seg.to(device).reshape(n, h * w).long()
    pix = g.to(device).abs().sum(1).reshape(n, h * w).double()
    mass = torch.zeros(n, s, dtype=torch.float64, device=device)
    mass.scatter_add_(1, seg, pix)
    total = mass.sum(1, keepdim=True)
    share = torch.where(total > 0, mass / total.clamp_min(1e-300), torch.zeros_like(mass))
    gate = (attr.weights <= 0) & attr.valid.to(device)
    return (share * gate).to(attr.weights.dtype)


def _dominance(attr) -> torch.Tensor:
    """Share of the positive evidence ``max(w_j, 0) / sum_k max(w_k, 0)`` (0 without any)."""
    pos = attr.weights.double().clamp_min(0.0).masked_fill(~attr.valid.to(attr.weights.device), 0.0)
    total = pos.sum(1, keepdim=True)
    share = torch.where(total > 0, pos / total.clamp_min(1e-300), torch.zeros_like(pos))
    return share.to(attr.weights.dtype)


class LimeMasker(_SegmentMasker):
    """Select spurious segments from LIME explanations and fill them.

    Parameters
    ----------
    criterion : {"combined", "unstable", "irrelevant", "dominant"}, default="combined"
        How a segment's spuriousness is scored (module docstring, ``docs/method.md``).
    top_k : int, default=3
        Segments selected per image (at most the image's segment count; a ``UserWarning``
        says when it is clipped).  Ignored when ``threshold`` is set.
    threshold : float in (0, 1] or None, default=None
        When set, select every segment whose score is ``>= threshold``.  Scores are relative
        to the image's most spurious segment (each criterion is divided by its per-image
        maximum, so the top segment of ``'unstable'`` / ``'irrelevant'`` scores 1, and
        ``'combined'`` = the mean of both reaches 1 only where they agree), except for
        ``'dominant'``, whose score is the segment's share of the positive evidence
        (``threshold=0.5``: the segment carrying at least half of it, if any).
    fill : {"mean", "constant", "blur", "noise"}, default="mean"
        What replaces a selected segment: its mean colour (``lime``'s ``hide_color=None``),
        ``fill_value``, a Gaussian-blurred copy of the image, or uniform noise in [0, 1).
    fill_value : float in [0, 1], default=0.0
        Colour of the ``'constant'`` fill.
    noise_std : float > 0, default=0.05
        Standard deviation of the Gaussian noise of the noisy copies (``'unstable'`` without
        an attacker); copies are clipped to [0, 1].
    n_noise : int >= 1, default=2
        Noisy copies explained per image (each costs one explanation).
    random_state : None, int or generator, default=None
        Seeds the noisy copies and the ``'noise'`` fill.  A generator is created lazily per
        device and kept, so successive calls draw fresh (but reproducible) noise.
    blur_sigma : float > 0 or None, default=None
        Standard deviation (pixels) of the ``'blur'`` fill; ``None``: ``max(1, min(H, W)/8)``
        (1 pixel on 8x8 digits, 4 pixels on 32x32 CIFAR images).

    See Also
    --------
    attribshield.explainers.LimeExplainer : the explanations this masker reads.
    attribshield.explainers.GradientExplainer : first-order (one backward pass) explanations.
    attribshield.maskers.RandomMasker : the same dose of masking on random segments (control).
    attribshield.regularizers.SpuriousGradientPenalty : penalises sensitivity inside the mask.

    Notes
    -----
    Cost of :meth:`find_spurious` for ``N`` images: one explanation of ``X``, plus one
    explanation of ``X_adv`` and one attack (``'unstable'`` with an attacker) or ``n_noise``
    explanations (without), plus one forward+backward pass (``'irrelevant'``); ``'dominant'``
    needs the clean explanation only.  Explanations dominate; use an explainer with a fixed
    ``random_state`` so that ``x`` and its twins are explained with the same LIME masks
    (common random numbers): their weight differences then measure the model, not the
    sampler.

    :meth:`apply` with ``'mean'`` or ``'constant'`` is idempotent (a filled segment already
    has its mean colour); ``'blur'`` and ``'noise'`` are not.

    Examples
    --------
    >>> import torch
    >>> seg = torch.arange(4).repeat_interleave(16).reshape(1, 8, 8)
    >>> masker = LimeMasker(top_k=1, fill="constant", fill_value=0.5)
    >>> sel = masker.select(torch.tensor([[0.1, 0.9, 0.3, 0.0]]), torch.ones(1, 4, dtype=torch.bool))
    >>> sel
    tensor([[False,  True, False, False]])
    >>> out = masker.apply(torch.zeros(1, 1, 8, 8), seg, sel)
    >>> out[0, 0, 2:4].unique().tolist(), out[0, 0, :2].unique().tolist()
    ([0.5], [0.0])
    >>> sorted(LimeMasker(criterion="dominant").needs())
    ['attribution']
    """

    def __init__(
        self,
        criterion="combined",
        top_k=3,
        threshold=None,
        fill="mean",
        fill_value=0.0,
        noise_std=0.05,
        n_noise=2,
        random_state=None,
        blur_sigma=None,
    ):
        self.criterion = criterion
        self.top_k = top_k
        self.threshold = threshold
        self.fill = fill
        self.fill_value = fill_value
        self.noise_std = noise_std
        self.n_noise = n_noise
        self.random_state = random_state
        self.blur_sigma = blur_sigma

    # ----------------------------------------------------------------- validation
    _parameter_constraints = {
        "criterion": [Options(*CRITERIA)],
        **_SegmentMasker._parameter_constraints,
        # scores are relative to the image's most spurious segment
        "threshold": [None, Real(0, 1, closed="right")],
        "noise_std": [Real(0, None, closed="neither")],
        "n_noise": [Integral(1, None)],
    }

    def _selection_threshold(self):
        return self.threshold

    # ----------------------------------------------------------------- scoring
    def needs(self) -> frozenset:
        """The pieces :meth:`segment_scores` needs for the current ``criterion``.

        Returns
        -------
        frozenset of str
            Names from ``{"attribution", "attribution_adv", "input_grad"}``:
            ``'unstable'`` needs ``attribution`` and ``attribution_adv``, ``'irrelevant'``
            ``attribution`` and ``input_grad``, ``'combined'`` all three, ``'dominant'`` only
            ``attribution``.
        """
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        return _NEEDS[self.criterion]

    def segment_scores(self, attribution, *, attribution_adv=None, input_grad=None, segments=None,
                       valid=None) -> torch.Tensor:
        """Spuriousness scores from precomputed pieces (e.g. inside a per-batch training loop).

        ``segments`` and ``valid`` are accepted for a uniform masker protocol (``RandomMasker``
        needs only them) and ignored: the attribution carries both.

        Parameters
        ----------
        attribution : Attribution
            Clean explanation of the images for their **true** classes (``weights`` and
            ``valid`` of shape ``(N, S)``, ``segments`` of shape ``(N, H, W)``).
        attribution_adv : Attribution or sequence of Attribution, optional
            Needed by ``'unstable'`` and ``'combined'``.  One attribution of the attacked
            images, explained with the same segments (instability ``|w - w_adv|``), or a
            sequence of attributions of noisy copies (instability = the population standard
            deviation over the clean weights and the copies').
        input_grad : torch.Tensor of shape (N, C, H, W), optional
            Needed by ``'irrelevant'`` and ``'combined'``: the gradient of the per-example
            loss (cross-entropy of the true class) with respect to the input.  Any positive
            per-image factor (e.g. a mean-reduced loss, or the gradient of ``-log p_y``)
            leaves the scores unchanged.

        Returns
        -------
        torch.Tensor of shape (N, S)
            Scores in [0, 1], higher = more spurious, 0 on padding columns; on the
            attribution's device.  Pass them to :meth:`select` with ``attribution.valid``.

        Raises
        ------
        ValueError
            Invalid hyperparameters, a piece the criterion needs is missing (the message names
            it; see :meth:`needs`), or pieces of mismatched shapes.

        Examples
        --------
        >>> import torch
        >>> from attribshield.explainers import Attribution
        >>> attr = Attribution(segments=torch.arange(4).repeat_interleave(4).reshape(1, 4, 4),
        ...                    weights=torch.tensor([[0.6, 0.2, -0.1, 0.0]]),
        ...                    valid=torch.ones(1, 4, dtype=torch.bool), intercept=torch.zeros(1),
        ...                    score=torch.ones(1), target=torch.zeros(1, dtype=torch.long))
        >>> LimeMasker(criterion="dominant").segment_scores(attr)
        tensor([[0.7500, 0.2500, 0.0000, 0.0000]])
        """
        self._validate_params()
        return self._scores(attribution, attribution_adv, input_grad)[0]

    def _scores(self, attr, attr_adv, input_grad):
        """``(scores, instability, irrelevance)``; the raw criteria are None where unused."""
        _check_attribution(attr)
        need = self.needs()
        if "attribution_adv" in need and attr_adv is None:
            raise ValueError(
                f"criterion={self.criterion!r} needs attribution_adv (an explanation of the attacked images "
                "with the same segments, or a list of explanations of noisy copies)"
            )
        if "input_grad" in need and input_grad is None:
            raise ValueError(
                f"criterion={self.criterion!r} needs input_grad (the gradient of the per-example loss "
                "with respect to the input, shape (N, C, H, W))"
            )
        valid = attr.valid
        inst = irr = None
        if "attribution_adv" in need:
            inst = _instability(attr, attr_adv).masked_fill(~valid, 0.0)
        if "input_grad" in need:
            irr = _irrelevance(attr, input_grad)
        if self.criterion == "unstable":
            scores = _max_normalise(inst)
        elif self.criterion == "irrelevant":
            scores = _max_normalise(irr)
        elif self.criterion == "combined":
            scores = 0.5 * (_max_normalise(inst) + _max_normalise(irr))
        else:
            scores = _dominance(attr)
        return scores.masked_fill(~valid, 0.0), inst, irr

    def _twins(self, module, X, y, explainer, attacker, attr, batch_size):
        """Explanations of the attacked images (one Attribution) or of ``n_noise`` noisy
        copies (a list), all with the segments of ``attr``."""
        seg = attr.segments
        if attacker is not None:
            parts = []
            for a in range(0, X.shape[0], batch_size):
                parts.append(attacker.perturb(module, X[a : a + batch_size], y[a : a + batch_size]))
            X_adv = torch.cat(parts).detach()
            return explainer.explain(module, X_adv, y, segments=seg)
        gen = self._generator(X.device)
        twins = []
        for _ in range(int(self.n_noise)):
            noise = torch.randn(X.shape, generator=gen, device=X.device, dtype=X.dtype)
            Xn = (X + float(self.noise_std) * noise).clamp_(0.0, 1.0)
            twins.append(explainer.explain(module, Xn, y, segments=seg))
        return twins

    @staticmethod
    def _input_grad(module, X, y, batch_size) -> torch.Tensor:
        """``d CE(f(x_i), y_i) / d x_i`` for every image, ``(N, C, H, W)`` (0 where the output
        does not depend on the input)."""
        grad = torch.zeros_like(X)
        with torch.enable_grad():
            for a in range(0, X.shape[0], batch_size):
                b = min(a + batch_size, X.shape[0])
                xa = X[a:b].detach().requires_grad_(True)
                loss = F.cross_entropy(module(xa).float(), y[a:b], reduction="sum")
                if not loss.requires_grad:  # the output does not depend on anything that requires grad
                    continue
                (g,) = torch.autograd.grad(loss, xa, allow_unused=True)
                if g is not None:
                    grad[a:b] = g
        return grad

    def find_spurious(self, model, X, y, explainer, attacker=None) -> SpuriousSelection:
        """Explain ``X`` for its true classes and select the spurious segments.

        Computes the pieces :meth:`needs` names (the clean explanation; the explanation of
        the attacked images or of noisy copies; the input gradient of the cross-entropy) and
        scores them with :meth:`segment_scores`.

        Parameters
        ----------
        model : torch.nn.Module or fitted RobustAttributionClassifier
            Returns logits ``(B, K)``.  Put in eval mode for the call; every submodule's
            training flag is restored after.  Parameter ``.grad`` fields are not touched.
        X : array-like or torch.Tensor of shape (N, C, H, W)
            Images in [0, 1] (moved to the model's device).
        y : array-like of shape (N,)
            True labels; explanations are for these classes.
        explainer : object with ``explain(model, X, target, *, segments=None) -> Attribution``
            E.g. :class:`attribshield.explainers.LimeExplainer`.
        attacker : object with ``perturb(model, X, y) -> X_adv``, optional
            Used by ``'unstable'`` / ``'combined'``; ``None``: noisy copies instead.

        Returns
        -------
        SpuriousSelection
            On the model's device.

        Raises
        ------
        ValueError
            Invalid hyperparameters, images or labels, or an ``explainer`` without
            ``explain`` (checked before any explanation is computed).
        """
        self._validate_params()
        if explainer is None or not hasattr(explainer, "explain"):
            raise ValueError(
                f"find_spurious needs an explainer with an explain(model, X, target) method, got {explainer!r}"
            )
        self._check_attacker(attacker)
        module, X, y = self._prepare(model, X, y)
        batch_size = int(getattr(explainer, "batch_size", 256) or 256)
        need = self.needs()
        with eval_mode(module):
            attr = explainer.explain(module, X, y)
            attr_adv = grad = None
            if "attribution_adv" in need:
                attr_adv = self._twins(module, X, y, explainer, attacker, attr, batch_size)
            if "input_grad" in need:
                grad = self._input_grad(module, X, y, batch_size)
        scores, inst, irr = self._scores(attr, attr_adv, grad)
        selected = self.select(scores, attr.valid)
        return SpuriousSelection(
            segments=attr.segments,
            selected=selected,
            scores=scores,
            attribution=attr,
            instability=inst,
            irrelevance=irr,
        )
