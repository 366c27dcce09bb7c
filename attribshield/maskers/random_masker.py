"""Mask random segments: the control for attribution-guided masking.

:class:`RandomMasker` has the interface of :class:`~attribshield.maskers.LimeMasker` (the same
segments, number of segments per image and fills) but picks the segments uniformly at random,
without explaining anything.  Training with it answers the question an ablation must ask of
attribution guidance: is masking the segments LIME points at better than masking as many
segments at random (a Cutout-like augmentation at the same dose)?
"""
from __future__ import annotations

import torch

from .._utils import check_method
from ..explainers.segmentation import default_segmenter
from .lime_masker import SpuriousSelection, _SegmentMasker

__all__ = ["RandomMasker"]


class RandomMasker(_SegmentMasker):
    """Select ``top_k`` segments per image uniformly at random and fill them.

    Parameters
    ----------
    top_k : int, default=3
        Segments selected per image: exactly ``min(top_k, n_valid)`` (a ``UserWarning`` says
        when some image has fewer segments).
    fill : {"mean", "constant", "blur", "noise"}, default="mean"
        What replaces a selected segment, as in :class:`LimeMasker`: its mean colour,
        ``fill_value``, a Gaussian-blurred copy of the image, or uniform noise in [0, 1).
    fill_value : float in [0, 1], default=0.0
        Colour of the ``'constant'`` fill.
    blur_sigma : float > 0 or None, default=None
        Standard deviation (pixels) of the ``'blur'`` fill; ``None``: ``max(1, min(H, W)/8)``.
    random_state : None, int or generator, default=None
        Seeds the choice of segments and the ``'noise'`` fill.  A generator is created lazily
        per device and kept, so successive calls draw fresh (but reproducible) selections;
        ``None`` draws from torch's global generator.

    See Also
    --------
    LimeMasker : selects the segments from explanations instead.

    Notes
    -----
    The segments are those the explainer would use (its ``segmenter``, or the default 4x4
    grid), so a :class:`RandomMasker` and a :class:`LimeMasker` with the same explainer and
    ``top_k`` mask the same amount of every image; only the choice differs.  No explanation,
    attack or gradient is computed: :meth:`find_spurious` costs one segmentation.

    Every valid segment of an image is equally likely and exactly ``min(top_k, n_valid)`` are
    chosen: :meth:`segment_scores` ranks the valid segments of each image by a random
    permutation, and :meth:`select` keeps the ``top_k`` highest ranks.

    Examples
    --------
    >>> import torch
    >>> masker = RandomMasker(top_k=2, fill="constant", fill_value=0.5, random_state=0)
    >>> seg = torch.arange(4).repeat_interleave(16).reshape(1, 8, 8).expand(3, 8, 8)
    >>> scores = masker.segment_scores(segments=seg)
    >>> selected = masker.select(scores)
    >>> selected.sum(1).tolist()
    [2, 2, 2]
    >>> out = masker.apply(torch.zeros(3, 1, 8, 8), seg, selected)
    >>> (out == 0.5).sum().item() == 2 * 16 * 3
    True
    >>> masker.needs()
    frozenset()
    """

    def __init__(self, top_k=3, fill="mean", fill_value=0.0, blur_sigma=None, random_state=None):
        self.top_k = top_k
        self.fill = fill
        self.fill_value = fill_value
        self.blur_sigma = blur_sigma
        self.random_state = random_state

    def needs(self) -> frozenset:
        """The pieces :meth:`segment_scores` needs: none (only the segments).

        Returns
        -------
        frozenset
            Always empty.
        """
        return frozenset()

    def segment_scores(self, attribution=None, *, segments=None, valid=None, attribution_adv=None,
                       input_grad=None) -> torch.Tensor:
        """Random scores whose top-k per image is a uniformly random set of valid segments.

        Parameters
        ----------
        attribution : Attribution, optional
            Only its ``valid`` mask is read (any explanation works; none is needed).
        segments : torch.Tensor of shape (N, H, W), integer, optional
            Segment labels ``0..S_n-1``; used when neither ``attribution`` nor ``valid`` is
            given (``S_n`` = the image's largest label + 1).
        valid : torch.Tensor of shape (N, S), bool, optional
            Real (non-padding) segments; takes precedence over ``segments``.
        attribution_adv, input_grad : ignored
            Accepted so that one training loop can call any masker the same way.

        Returns
        -------
        torch.Tensor of shape (N, S), float32
            For each image, its ``n_valid`` valid segments get the scores
            ``1/n_valid, 2/n_valid, ..., 1`` in a uniformly random order (all distinct); 0 on
            padding columns.  On the device of the input.

        Raises
        ------
        ValueError
            Invalid hyperparameters, or none of ``attribution``, ``valid``, ``segments``.
        """
        self._validate_params()
        if attribution is not None:
            valid = getattr(attribution, "valid", None)
            if not isinstance(valid, torch.Tensor):
                raise ValueError(
                    f"attribution must have a valid tensor of shape (N, S), got {type(attribution).__name__}"
                )
        elif valid is None:
            if segments is None:
                raise ValueError("segment_scores needs segments (N, H, W), valid (N, S) or an attribution")
            segments = torch.as_tensor(segments)
            if segments.ndim != 3 or segments.is_floating_point() or segments.dtype == torch.bool:
                raise ValueError(f"segments must be an integer tensor of shape (N, H, W), got {tuple(segments.shape)}")
            s_n = segments.reshape(segments.shape[0], -1).amax(1) + 1
            valid = torch.arange(int(s_n.max()), device=segments.device)[None] < s_n[:, None]
        valid = torch.as_tensor(valid).bool()
        if valid.ndim != 2:
            raise ValueError(f"valid must have shape (N, S), got {tuple(valid.shape)}")
        n, s = valid.shape
        # a random permutation per image (argsort of i.i.d. uniforms), invalid columns first
        key = torch.rand(n, s, generator=self._generator(valid.device), device=valid.device, dtype=torch.float64)
        key = key.masked_fill(~valid, -1.0)
        rank = torch.empty(n, s, dtype=torch.long, device=valid.device)
        rank.scatter_(1, key.argsort(1), torch.arange(s, device=valid.device).expand(n, s))
        n_valid = valid.sum(1, keepdim=True)
        scores = (rank - (s - n_valid) + 1).double() / n_valid.clamp_min(1)
        return scores.masked_fill(~valid, 0.0).float()

    def find_spurious(self, model, X, y, explainer=None, attacker=None) -> SpuriousSelection:
        """Segment ``X`` as the explainer would and select ``top_k`` random segments per image.

        Parameters
        ----------
        model : torch.nn.Module, fitted RobustAttributionClassifier or None
            Only its device is used (the result lives there); ``None``: ``X``'s device.
        X : array-like or torch.Tensor of shape (N, C, H, W)
            Images in [0, 1].
        y : array-like of shape (N,)
            Labels (validated, otherwise unused).
        explainer : object, optional
            Its ``segmenter`` (``segment(X) -> (N, H, W)``) gives the segments; ``None``, or
            an explainer without one: the default 4x4 grid
            (:func:`~attribshield.explainers.default_segmenter`).  Nothing is explained.
        attacker : object with ``perturb``, optional
            Ignored (validated only).

        Returns
        -------
        SpuriousSelection
            ``attribution``, ``instability`` and ``irrelevance`` are ``None``; ``scores`` are
            those of :meth:`segment_scores`.  On the model's device.

        Raises
        ------
        ValueError
            Invalid hyperparameters, images, labels, attacker or segmenter (before any work).
        """
        self._validate_params()
        self._check_attacker(attacker)
        segmenter = check_method(getattr(explainer, "segmenter", None), "explainer.segmenter", "segment", "X",
                                 optional=True)
        _, X, _ = self._prepare(model, X, y, allow_no_model=True)
        device = X.device
        if segmenter is None:
            segmenter = default_segmenter(*X.shape[2:])
        segments = torch.as_tensor(segmenter.segment(X), device=device).long()
        s_n = segments.reshape(segments.shape[0], -1).amax(1) + 1
        valid = torch.arange(int(s_n.max()), device=device)[None] < s_n[:, None]
        scores = self.segment_scores(valid=valid)
        return SpuriousSelection(segments=segments, selected=self.select(scores, valid), scores=scores,
                                 attribution=None)
