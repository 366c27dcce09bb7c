"""Image segmenters: cut each image into superpixels labelled ``0..S_n-1``.

Every segmenter is a :class:`~attribshield.base.Component` with one method,
``segment(X) -> (N, H, W) long tensor``.  Labels are always consecutive from 0 (what the
``lime`` package assumes), and a ``UserWarning`` is raised when an image gets fewer than 4
segments (an explanation over 1-3 segments says almost nothing).

On 32x32 CIFAR images ``lime``'s default quickshift gives a median of one segment; the fixed
grid (fast, deterministic, identical for every image) is the default of
:class:`~attribshield.explainers.LimeExplainer` for small images.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from skimage.segmentation import relabel_sequential

from .._params import Integral, validate_params
from .._validation import check_images
from ..base import Component

__all__ = [
    "GridSegmenter",
    "SlicSegmenter",
    "QuickshiftSegmenter",
    "default_segmenter",
    "relabel_consecutive",
    "MIN_SEGMENTS",
]

MIN_SEGMENTS = 4


def _has_segment(v) -> bool:
    """an object with a segment(X) method"""
    return hasattr(v, "segment")


def relabel_consecutive(segments: torch.Tensor) -> torch.Tensor:
    """Relabel each image's segment map to consecutive labels ``0..S_n-1``.

    A per-image wrapper of :func:`skimage.segmentation.relabel_sequential`: each image's
    labels are shifted so that the smallest becomes 0 (which ``relabel_sequential`` keeps as
    0), then the others are numbered 1, 2, ... in increasing order.

    Parameters
    ----------
    segments : torch.Tensor of shape (N, H, W), integer
        Arbitrary (possibly non-consecutive, possibly negative) labels per image.

    Returns
    -------
    torch.Tensor of shape (N, H, W), int64
        Labels ordered like the sorted unique input labels of each image; on ``segments``'
        device.

    Examples
    --------
    >>> import torch
    >>> relabel_consecutive(torch.tensor([[[7, 7], [-2, 30]], [[4, 1], [1, 4]]]))
    tensor([[[1, 1],
             [0, 2]],
    <BLANKLINE>
            [[1, 0],
             [0, 1]]])
    """
    out = torch.empty_like(segments, dtype=torch.long)
    for i in range(segments.shape[0]):
        labels = segments[i].detach().cpu().numpy().astype(np.int64)
        if labels.size:  # relabel_sequential rejects empty and negative label fields
            labels -= labels.min()
            out[i] = torch.from_numpy(relabel_sequential(labels)[0].astype(np.int64, copy=False))
    return out


def _check_segments(segments, X) -> torch.Tensor:
    """Integer labels ``(N, H, W)`` on ``X``'s device, relabelled to ``0..S_n-1`` if needed."""
    n, _, h, w = X.shape
    seg = torch.as_tensor(segments, device=X.device)
    if seg.ndim == 2:
        seg = seg[None]
    if seg.ndim != 3 or tuple(seg.shape[1:]) != (h, w) or seg.shape[0] not in (1, n):
        raise ValueError(f"segments must have shape (N, H, W) = ({n}, {h}, {w}), got {tuple(seg.shape)}")
    if (seg.is_floating_point() or seg.dtype == torch.bool) and not bool((seg == seg.round()).all()):
        raise ValueError("segments must hold integer labels")
    seg = seg.long().expand(n, h, w)
    if bool((seg < 0).any()):
        raise ValueError("segments must hold labels >= 0")
    flat = seg.reshape(n, -1)
    present = torch.zeros(n, int(flat.max()) + 1, dtype=torch.bool, device=seg.device)
    present.scatter_(1, flat, True)
    if bool((present.sum(1) != flat.amax(1) + 1).any()):
        return relabel_consecutive(seg)
    return seg.contiguous()


def _warn_few(segments: torch.Tensor, name: str) -> None:
    n_seg = segments.flatten(1).amax(1) + 1
    few = int((n_seg < MIN_SEGMENTS).sum())
    if few:
        warnings.warn(
            f"{name}: {few} of {segments.shape[0]} images got fewer than {MIN_SEGMENTS} segments "
            f"(min {int(n_seg.min())}); their explanations are nearly degenerate. "
            "Use a finer segmentation (e.g. GridSegmenter or SlicSegmenter) for small images.",
            UserWarning,
            stacklevel=3,
        )


def _to_hwc_numpy(X: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, 3) float64 numpy (grey images replicated to RGB)."""
    arr = X.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


class GridSegmenter(Component):
    """Cut images into a regular grid of square cells.

    Parameters
    ----------
    cell : int or None, default=None
        Side of a cell in pixels.  ``None`` picks ``max(1, min(H, W) // 4)``: a 4x4 grid
        (16 segments) on both 8x8 digits (cell 2) and 32x32 CIFAR images (cell 8).  Border
        cells are smaller when the side is not a multiple of ``cell``.

    Examples
    --------
    >>> import torch
    >>> seg = GridSegmenter(cell=2).segment(torch.rand(3, 1, 8, 8))
    >>> seg.shape, int(seg.max()) + 1
    (torch.Size([3, 8, 8]), 16)
    """

    _parameter_constraints = {"cell": [None, Integral(1, None)]}

    def __init__(self, cell=None):
        self.cell = cell

    def _validate_params(self) -> None:
        validate_params(self)

    def segment(self, X) -> torch.Tensor:
        """Return grid labels of shape ``(N, H, W)`` (int64, row-major, on ``X``'s device)."""
        self._validate_params()
        X = check_images(X)
        n, _, h, w = X.shape
        cell = int(self.cell) if self.cell is not None else max(1, min(h, w) // 4)
        n_cols = math.ceil(w / cell)
        rows = torch.arange(h, device=X.device) // cell
        cols = torch.arange(w, device=X.device) // cell
        grid = rows[:, None] * n_cols + cols[None, :]
        seg = grid.expand(n, h, w).clone()
        _warn_few(seg, type(self).__name__)
        return seg


class SlicSegmenter(Component):
    """SLIC superpixels (:func:`skimage.segmentation.slic`), labels from 0.

    Parameters
    ----------
    n_segments : int, default=25
        Approximate number of segments (about 13 / 22 / 32 segments for 16 / 25 / 50 on
        32x32 CIFAR images).
    compactness : float, default=10.0
        Balance of colour proximity and space proximity (higher = squarer segments).
    sigma : float, default=0.0
        Gaussian smoothing before segmenting.
    start_label : int, default=0
        Kept at 0: ``lime`` assumes labels ``0..S-1``; scikit-image >= 0.19 starts at 1 by
        default, which leaves segment 0 empty and never hides the last one in ``lime``.
        Labels are relabelled consecutively from 0 in any case.
    """

    _parameter_constraints = {"n_segments": [Integral(1, None)]}

    def __init__(self, n_segments=25, compactness=10.0, sigma=0.0, start_label=0):
        self.n_segments = n_segments
        self.compactness = compactness
        self.sigma = sigma
        self.start_label = start_label

    def _validate_params(self) -> None:
        validate_params(self)

    def segment(self, X) -> torch.Tensor:
        """Return SLIC labels of shape ``(N, H, W)`` (int64, on ``X``'s device)."""
        from skimage.segmentation import slic

        self._validate_params()
        X = check_images(X)
        arr = _to_hwc_numpy(X)
        out = np.stack(
            [
                slic(
                    img,
                    n_segments=int(self.n_segments),
                    compactness=float(self.compactness),
                    sigma=float(self.sigma),
                    start_label=int(self.start_label),
                    channel_axis=-1,
                )
                for img in arr
            ]
        )
        seg = relabel_consecutive(torch.from_numpy(out.astype(np.int64))).to(X.device)
        _warn_few(seg, type(self).__name__)
        return seg


class QuickshiftSegmenter(Component):
    """Quickshift superpixels (:func:`skimage.segmentation.quickshift`), ``lime``'s default.

    Parameters
    ----------
    kernel_size : float, default=4
    max_dist : float, default=200
    ratio : float, default=0.2
    random_state : int, default=0
        Seed of quickshift's tie-breaking noise.

    Notes
    -----
    On 32x32 images these defaults give about one segment per image (a ``UserWarning`` says
    so); they are meant for large photographs.
    """

    def __init__(self, kernel_size=4, max_dist=200, ratio=0.2, random_state=0):
        self.kernel_size = kernel_size
        self.max_dist = max_dist
        self.ratio = ratio
        self.random_state = random_state

    def segment(self, X) -> torch.Tensor:
        """Return quickshift labels of shape ``(N, H, W)`` (int64, on ``X``'s device)."""
        from skimage.segmentation import quickshift

        X = check_images(X)
        arr = _to_hwc_numpy(X)
        seed = 0 if self.random_state is None else int(self.random_state)
        out = np.stack(
            [
                quickshift(
                    img,
                    kernel_size=self.kernel_size,
                    max_dist=self.max_dist,
                    ratio=self.ratio,
                    rng=seed,
                )
                for img in arr
            ]
        )
        seg = relabel_consecutive(torch.from_numpy(out.astype(np.int64))).to(X.device)
        _warn_few(seg, type(self).__name__)
        return seg


def default_segmenter(height: int, width: int) -> Component:
    """The segmenter used when none is given: a 4x4 grid (16 segments) for any image size."""
    return GridSegmenter(cell=max(1, min(height, width) // 4))
