"""Find the segments a model relies on spuriously (from LIME), and hide them.

:class:`LimeMasker` turns explanations into a training signal.  For each image it scores
every segment with one of three criteria (see ``docs/method.md`` for the reasoning):

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

:meth:`LimeMasker.select` keeps the ``top_k`` highest-scoring segments per image (or every
segment scoring at least ``threshold``) and :meth:`LimeMasker.apply` fills them.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F

from .._validation import check_images, check_labels
from ..base import Component, eval_mode, get_module
from .fill import FILLS, _check_segments_selected, fill_image, pixel_mask

__all__ = ["LimeMasker", "SpuriousSelection", "CRITERIA"]

CRITERIA = ("unstable", "irrelevant", "combined")


@dataclass
class SpuriousSelection:
    """Result of :meth:`LimeMasker.find_spurious`.

    Attributes
    ----------
    segments : torch.Tensor of shape (N, H, W), int64
        Segment labels ``0..S_n-1`` (those of the clean explanation).
    selected : torch.Tensor of shape (N, S), bool
        Spurious segments chosen by :meth:`LimeMasker.select`; padding columns are False.
    scores : torch.Tensor of shape (N, S), float
        Spuriousness of each segment, higher = more spurious, in [0, 1] (each criterion is
        divided by its per-image maximum; ``'combined'`` averages the two); 0 on padding.
    attribution : Attribution
        The clean explanation of ``X`` for the true class.
    instability : torch.Tensor of shape (N, S) or None
        Raw instability (``|w(x) - w(x_adv)|`` or the std over noisy copies), before
        normalisation; ``None`` for ``criterion='irrelevant'``.
    irrelevance : torch.Tensor of shape (N, S) or None
        Raw irrelevance (share of the gradient mass on non-positive-weight segments, in
        [0, 1], summing to at most 1 per image); ``None`` for ``criterion='unstable'``.
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


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _max_normalise(s: torch.Tensor) -> torch.Tensor:
    """Divide each row by its maximum (rows whose maximum is <= 0 become 0)."""
    mx = s.amax(1, keepdim=True)
    return torch.where(mx > 0, s / mx.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))


def _module_device(module: torch.nn.Module, X: torch.Tensor) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return X.device


class LimeMasker(Component):
    """Select spurious segments from LIME explanations and fill them.

    Parameters
    ----------
    criterion : {"combined", "unstable", "irrelevant"}, default="combined"
        How a segment's spuriousness is scored (module docstring, ``docs/method.md``).
    top_k : int, default=3
        Segments selected per image (at most the image's segment count; a ``UserWarning``
        says when it is clipped).  Ignored when ``threshold`` is set.
    threshold : float in (0, 1] or None, default=None
        When set, select every segment whose score is ``>= threshold``.  Scores are relative
        to the image's most spurious segment (each criterion is divided by its per-image
        maximum, so the top segment of ``'unstable'`` / ``'irrelevant'`` scores 1, and
        ``'combined'`` = the mean of both reaches 1 only where they agree).
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
    attribshield.regularizers.SpuriousGradientPenalty : penalises sensitivity inside the mask.

    Notes
    -----
    Cost of :meth:`find_spurious` for ``N`` images: one explanation of ``X``, plus one
    explanation of ``X_adv`` and one attack (``'unstable'`` with an attacker) or ``n_noise``
    explanations (without), plus one forward+backward pass (``'irrelevant'``).  Explanations
    dominate; use an explainer with a fixed ``random_state`` so that ``x`` and its twins are
    explained with the same LIME masks (common random numbers): their weight differences
    then measure the model, not the sampler.

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
    def _validate_params(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {self.fill!r}")
        if not _is_int(self.top_k) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.threshold is not None and (not _is_real(self.threshold) or not 0 < self.threshold <= 1):
            raise ValueError(
                f"threshold must be None or a number in (0, 1] (scores are relative to the image's "
                f"most spurious segment), got {self.threshold!r}"
            )
        if not _is_real(self.fill_value) or not 0 <= self.fill_value <= 1:
            raise ValueError(f"fill_value must be a number in [0, 1], got {self.fill_value!r}")
        if not _is_real(self.noise_std) or not self.noise_std > 0:
            raise ValueError(f"noise_std must be a finite number > 0, got {self.noise_std!r}")
        if not _is_int(self.n_noise) or self.n_noise < 1:
            raise ValueError(f"n_noise must be an integer >= 1, got {self.n_noise!r}")
        if self.blur_sigma is not None and (not _is_real(self.blur_sigma) or not self.blur_sigma > 0):
            raise ValueError(f"blur_sigma must be None or a finite number > 0, got {self.blur_sigma!r}")

    # ----------------------------------------------------------------- scoring
    def _instability(self, module, X, y, explainer, attacker, attr, batch_size):
        """Raw instability ``(N, S)``: ``|w(x) - w(x_adv)|`` or the std over noisy copies."""
        seg = attr.segments
        if attacker is not None:
            parts = []
            for a in range(0, X.shape[0], batch_size):
                parts.append(attacker.perturb(module, X[a : a + batch_size], y[a : a + batch_size]))
            X_adv = torch.cat(parts).detach()
            w_adv = explainer.explain(module, X_adv, y, segments=seg).weights
            return (attr.weights - w_adv.to(attr.weights)).abs()
        gen = self._generator(X.device)
        ws = [attr.weights]
        for _ in range(int(self.n_noise)):
            noise = torch.randn(X.shape, generator=gen, device=X.device, dtype=X.dtype)
            Xn = (X + float(self.noise_std) * noise).clamp_(0.0, 1.0)
            ws.append(explainer.explain(module, Xn, y, segments=seg).weights.to(attr.weights))
        return torch.stack(ws).std(0, correction=0)

    @staticmethod
    def _irrelevance(module, X, y, attr, batch_size):
        """Raw irrelevance ``(N, S)``: gradient-mass share of segments with weight <= 0."""
        n, c, h, w = X.shape
        s = attr.weights.shape[1]
        mass = torch.zeros(n, s, dtype=torch.float64, device=X.device)
        seg = attr.segments.to(X.device).reshape(n, h * w)
        with torch.enable_grad():
            for a in range(0, n, batch_size):
                b = min(a + batch_size, n)
                xa = X[a:b].detach().requires_grad_(True)
                loss = F.cross_entropy(module(xa).float(), y[a:b], reduction="sum")
                if loss.requires_grad:
                    (g,) = torch.autograd.grad(loss, xa, allow_unused=True)
                else:  # the output does not depend on anything that requires grad
                    g = None
                if g is None:
                    continue
                pix = g.abs().sum(1).reshape(b - a, h * w).double()
                mass[a:b].scatter_add_(1, seg[a:b], pix)
        total = mass.sum(1, keepdim=True)
        share = torch.where(total > 0, mass / total.clamp_min(1e-300), torch.zeros_like(mass))
        gate = (attr.weights.to(X.device) <= 0) & attr.valid.to(X.device)
        return (share * gate).to(attr.weights.dtype).to(attr.weights.device)

    def find_spurious(self, model, X, y, explainer, attacker=None) -> SpuriousSelection:
        """Explain ``X`` for its true classes and select the spurious segments.

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
        if attacker is not None and not hasattr(attacker, "perturb"):
            raise ValueError(f"attacker must have a perturb(model, X, y) method, got {type(attacker).__name__}")
        module = get_module(model)
        X = check_images(X)
        y = check_labels(y, X.shape[0])
        device = _module_device(module, X)
        X = X.to(device)
        y = y.to(device)
        batch_size = int(getattr(explainer, "batch_size", 256) or 256)
        with eval_mode(module):
            attr = explainer.explain(module, X, y)
            valid = attr.valid
            inst = irr = None
            if self.criterion in ("unstable", "combined"):
                inst = self._instability(module, X, y, explainer, attacker, attr, batch_size)
                inst = inst.masked_fill(~valid, 0.0)
            if self.criterion in ("irrelevant", "combined"):
                irr = self._irrelevance(module, X, y, attr, batch_size)
        if self.criterion == "unstable":
            scores = _max_normalise(inst)
        elif self.criterion == "irrelevant":
            scores = _max_normalise(irr)
        else:
            scores = 0.5 * (_max_normalise(inst) + _max_normalise(irr))
        scores = scores.masked_fill(~valid, 0.0)
        selected = self.select(scores, valid)
        return SpuriousSelection(
            segments=attr.segments,
            selected=selected,
            scores=scores,
            attribution=attr,
            instability=inst,
            irrelevance=irr,
        )

    # ----------------------------------------------------------------- selection
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
            ``threshold is None``: exactly ``min(top_k, n_valid)`` segments per image, the
            highest scores (ties broken by ``torch.topk``).  Otherwise every valid segment
            with ``score >= threshold``.

        Warns
        -----
        UserWarning
            Once per call when ``top_k`` exceeds some image's number of valid segments (the
            selection is clipped to all of them).
        """
        self._validate_params()
        scores = torch.as_tensor(scores)
        if scores.ndim != 2:
            raise ValueError(f"scores must have shape (N, S), got {tuple(scores.shape)}")
        if valid is None:
            valid = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        valid = torch.as_tensor(valid, device=scores.device)
        if valid.shape != scores.shape:
            raise ValueError(f"valid must have the shape of scores {tuple(scores.shape)}, got {tuple(valid.shape)}")
        valid = valid.bool()
        scores = scores.float() if not scores.is_floating_point() else scores
        if self.threshold is not None:
            return (scores >= float(self.threshold)) & valid
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
