"""Decoy images: a class-coloured patch planted in a corner (Decoy-MNIST style shortcut).

:func:`plant_shortcut` turns an image set into its decoy variant, in the manner of
Decoy-MNIST (Ross, Hughes and Doshi-Velez, 2017): every image gets a small square of a
colour that names a class in one of its four corners.  With probability ``rho`` the colour
names the image's own (optionally shifted) class, so a model can reach high training
accuracy by reading the patch instead of the object: a known spurious feature, whose
location is known exactly.  :func:`shortcut_pixel_mask` and :func:`shortcut_segment_mask`
turn the returned ``info`` into that location (an oracle mask), as pixels or as segments
of the default 4x4 grid.
"""
from __future__ import annotations

import numpy as np
import torch

from .._params import Integral, Real, check_param
from .._utils import numpy_rng
from ..explainers.segmentation import default_segmenter

__all__ = ["CORNERS", "plant_shortcut", "shortcut_palette", "shortcut_pixel_mask", "shortcut_segment_mask"]

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
"""Names of the corner indices ``0..3`` stored in ``info["corner"]``."""

_GRAY_DARKEST = 0.1  # gray levels run from white down to this, never black (see shortcut_palette)


def _palette_levels(n_classes: int, n_channels: int) -> np.ndarray:
    """The palette in 0..255 levels, ``(n_classes, n_channels)`` uint8; rows are distinct."""
    k = np.arange(n_classes, dtype=np.float64)
    if n_channels == 3:  # fully saturated colours at evenly spaced hues (red first)
        h6 = 6.0 * k / n_classes
        rgb = np.stack([np.abs(h6 - 3) - 1, 2 - np.abs(h6 - 2), 2 - np.abs(h6 - 4)], axis=1)
        levels = np.clip(rgb, 0.0, 1.0)
    else:  # gray levels from white down to _GRAY_DARKEST, the same in every channel
        gray = 1.0 - (1.0 - _GRAY_DARKEST) * k / max(n_classes - 1, 1)
        levels = np.repeat(gray[:, None], n_channels, axis=1)
    out = np.rint(255.0 * levels).astype(np.uint8)
    if len(np.unique(out, axis=0)) != n_classes:
        kind = "RGB colours" if n_channels == 3 else "gray levels"
        raise ValueError(
            f"n_classes={n_classes} is too many for distinct 8-bit {kind} "
            f"(at most {1530 if n_channels == 3 else 231} with {n_channels} channel(s))"
        )
    return out


def shortcut_palette(n_classes, n_channels=3, dtype="float32") -> np.ndarray:
    """The fixed colour of each class's patch.

    Parameters
    ----------
    n_classes : int >= 1
        Number of classes (rows).
    n_channels : int >= 1, default=3
        Image channels.  ``3``: fully saturated RGB colours at evenly spaced hues (class 0
        is red).  Any other number (grayscale images have 1): gray levels evenly spaced from
        white (class 0) down to 0.1, the same value in every channel.  Gray levels are never
        black, so the patch stays visible on the black background of digit images
        (Decoy-MNIST used the levels ``255 - 25 y``).
    dtype : numpy dtype, default="float32"
        ``uint8`` gives levels in 0..255; a float dtype gives those levels divided by 255, so
        planting into uint8 images and dividing by 255 equals planting into float images.

    Returns
    -------
    palette : numpy.ndarray of shape (n_classes, n_channels)
        Row ``k`` is the colour of class ``k``; all rows are distinct, also in 8 bits.

    Raises
    ------
    ValueError
        Invalid arguments, or more classes than distinct 8-bit colours (1530 RGB colours,
        231 gray levels).

    Examples
    --------
    >>> from attribshield.data import shortcut_palette
    >>> shortcut_palette(3, dtype="uint8")
    array([[255,   0,   0],
           [  0, 255,   0],
           [  0,   0, 255]], dtype=uint8)
    >>> shortcut_palette(2, n_channels=1, dtype="uint8").ravel().tolist()
    [255, 25]
    """
    check_param("shortcut_palette", "n_classes", n_classes, [Integral(1, None)])
    check_param("shortcut_palette", "n_channels", n_channels, [Integral(1, None)])
    dt = np.dtype(dtype)
    if dt != np.uint8 and dt.kind != "f":
        raise ValueError(f"dtype must be uint8 or a float dtype, got {dt}")
    levels = _palette_levels(int(n_classes), int(n_channels))
    return levels if dt == np.uint8 else (levels.astype(np.float64) / 255.0).astype(dt)


def _check_images(X):
    """Validate ``X`` without converting it; return ``(X, is_torch)``."""
    is_torch = isinstance(X, torch.Tensor)
    X = X.detach() if is_torch else np.asarray(X)
    shape = tuple(X.shape)
    if len(shape) != 4:
        raise ValueError(f"X must have 4 dimensions (N, C, H, W), got shape {shape}")
    if min(shape) == 0:
        raise ValueError(f"X must not be empty, got shape {shape}")
    is_uint8 = X.dtype == (torch.uint8 if is_torch else np.uint8)
    is_float = X.is_floating_point() if is_torch else X.dtype.kind == "f"
    if not (is_uint8 or is_float):
        raise ValueError(f"X must be float in [0, 1] or uint8 in 0..255, got dtype {X.dtype}")
    if is_float:
        lo, hi = (float(X.min()), float(X.max()))
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"X values must lie in [0, 1] (or X must be uint8 in 0..255), got min={lo:.4g} max={hi:.4g}"
            )
    return X, is_torch


def _check_y(y, n: int) -> np.ndarray:
    t = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if t.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match X, got shape {t.shape}")
    if t.dtype.kind == "f":
        if not (np.all(np.isfinite(t)) and np.all(t == np.round(t))):
            raise ValueError("y must hold integer class labels, got non-integer floats")
    elif t.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer class labels, got dtype {t.dtype}")
    t = t.astype(np.int64)
    if t.min() < 0:
        raise ValueError(f"y must hold class labels >= 0, got min(y)={int(t.min())}")
    return t


def plant_shortcut(X, y, *, rho=1.0, patch_size=4, label_shift=0, n_classes=None, random_state=None,
                   return_info=False):
    """Plant a class-coloured square in a random corner of every image (a decoy data set).

    For image ``i`` a corner is drawn uniformly from the four, and a
    ``patch_size x patch_size`` square there is filled with the colour of class
    ``c_i`` (see :func:`shortcut_palette`):

    * with probability ``rho``, ``c_i = (y_i + label_shift) mod n_classes``;
    * otherwise ``c_i`` is drawn uniformly from the ``n_classes - 1`` *other* classes (never
      the shifted true class).

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (N, C, H, W)
        Float images in [0, 1], or uint8 images in 0..255.  Not modified.
    y : array-like or torch.Tensor of shape (N,)
        Integer class labels ``0..n_classes-1``.
    rho : float in [0, 1], default=1.0
        Probability that the patch names the (shifted) true class: 1 is a perfect shortcut,
        ``1 / n_classes`` makes the patch colour independent of the label, 0 always names a
        wrong class (a decoy that misleads at test time).
    patch_size : int, default=4
        Side of the square in pixels, ``1 <= patch_size <= min(H, W)``.  Above ``min(H, W) / 2``
        the four possible squares overlap.
    label_shift : int, default=0
        The patch names class ``(y + label_shift) mod n_classes`` instead of ``y``: train with
        0 and test with a non-zero shift to measure how much a model relies on the patch.
    n_classes : int or None, default=None
        Number of classes (palette size); ``None`` means ``max(y) + 1``.
    random_state : None, int or numpy.random.Generator, default=None
        Seeds the corners and the patch classes; the same seed gives the same output.
    return_info : bool, default=False
        Also return a dict describing the patches.

    Returns
    -------
    X_planted : same type, dtype, shape and device as ``X``
        A copy of ``X`` whose only changed pixels are those of each image's square
        (colour levels in 0..255 for uint8 images, in [0, 1] for float images).
    info : dict, only with ``return_info=True``
        ``"corner"``: int64 array ``(N,)``, index into :data:`CORNERS` (0 top-left, 1
        top-right, 2 bottom-left, 3 bottom-right); ``"patch_class"``: int64 array ``(N,)``,
        the class whose colour was planted; ``"target_class"``: int64 array ``(N,)``, the
        shifted true class ``(y + label_shift) mod n_classes``; ``"patch_size"``: int;
        ``"image_shape"``: ``(H, W)``; ``"palette"``: array ``(n_classes, C)`` in ``X``'s
        dtype.  NumPy arrays (on the CPU) whatever the type of ``X``; pass the dict to
        :func:`shortcut_pixel_mask` or :func:`shortcut_segment_mask` for an oracle mask.

    Raises
    ------
    ValueError
        Before any work: ``X`` not 4-D, empty, not float/uint8 or outside [0, 1]; ``y`` of
        the wrong length or not integer labels >= 0; ``rho`` outside [0, 1]; ``patch_size``
        not an integer in ``1..min(H, W)``; ``label_shift`` not an integer; ``n_classes``
        not above ``max(y)``; ``rho < 1`` with a single class (no other class to draw); more
        classes than distinct 8-bit colours.

    See Also
    --------
    shortcut_palette : The colour of each class.
    shortcut_segment_mask : Which segments of a segmentation hold the patch.

    Notes
    -----
    Decoy-MNIST (Ross et al., 2017) planted 4x4 gray swatches of level ``255 - 25 y`` in a
    random corner of each training image, and used random levels at test time; here the
    palette also covers RGB images, and ``rho`` and ``label_shift`` give the test-time
    variants (``rho=0``, or ``rho=1`` with a shift).  The random draws are made on the CPU
    with NumPy in a fixed order (corners, then the ``rho`` coin, then the other class), so a
    seed gives the same patches for NumPy and torch inputs and for float and uint8 inputs.

    References
    ----------
    Ross, Hughes and Doshi-Velez, "Right for the right reasons: training differentiable
    models by constraining their explanations", IJCAI 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from attribshield.data import plant_shortcut
    >>> X = np.zeros((2, 3, 4, 4), dtype=np.float32)
    >>> Xp, info = plant_shortcut(X, [0, 2], patch_size=2, n_classes=3, random_state=0, return_info=True)
    >>> Xp.shape, Xp.dtype, info["patch_class"].tolist()
    ((2, 3, 4, 4), dtype('float32'), [0, 2])
    >>> int((Xp != X).any(axis=1).sum(axis=(1, 2))[0])   # 2x2 pixels changed per image
    4
    >>> bool(X.max() == 0)                                # the input is left alone
    True
    """
    # ---- validation, before any work
    X, is_torch = _check_images(X)
    n, c, h, w = (int(s) for s in X.shape)
    labels = _check_y(y, n)
    check_param("plant_shortcut", "rho", rho, [Real(0, 1)])
    check_param("plant_shortcut", "patch_size", patch_size, [Integral(1, min(h, w))])  # min(H, W) of X
    check_param("plant_shortcut", "label_shift", label_shift, [Integral()])
    check_param("plant_shortcut", "n_classes", n_classes, [None, Integral(1, None)])
    if n_classes is None:
        n_classes = int(labels.max()) + 1
    elif labels.max() >= n_classes:
        raise ValueError(f"n_classes={n_classes} but y holds the label {int(labels.max())}; "
                         f"n_classes must exceed max(y)")
    n_classes, patch_size, rho = int(n_classes), int(patch_size), float(rho)
    if n_classes < 2 and rho < 1.0:
        raise ValueError(f"rho={rho} < 1 needs n_classes >= 2 (a wrong class to draw), got n_classes={n_classes}")
    check_param("plant_shortcut", "return_info", return_info, [bool])
    rng = numpy_rng(random_state)
    levels = _palette_levels(n_classes, c)

    # ---- draws (NumPy, CPU, fixed order)
    corner = rng.integers(0, 4, size=n)
    keep = rng.random(n) < rho
    other = rng.integers(0, max(n_classes - 1, 1), size=n)
    target = (labels + int(label_shift)) % n_classes
    patch_class = np.where(keep, target, (target + 1 + other) % n_classes).astype(np.int64)

    # ---- planting: one sliced assignment per corner
    is_uint8 = X.dtype == (torch.uint8 if is_torch else np.uint8)
    palette = levels if is_uint8 else levels.astype(np.float64) / 255.0
    if is_torch:
        out = X.detach().clone()
        colours = torch.as_tensor(palette, device=X.device).to(X.dtype)[torch.as_tensor(patch_class, device=X.device)]
    else:
        out = X.copy()
        colours = palette.astype(X.dtype)[patch_class]
    p = patch_size
    for k in range(4):
        idx = np.flatnonzero(corner == k)
        if idx.size == 0:
            continue
        top, left = _corner_origin(k, h, w, p)
        sel = torch.as_tensor(idx, device=X.device) if is_torch else idx
        out[sel, :, top:top + p, left:left + p] = colours[sel][:, :, None, None]
    if not return_info:
        return out
    info = {
        "corner": corner.astype(np.int64),
        "patch_class": patch_class,
        "target_class": target.astype(np.int64),
        "patch_size": p,
        "image_shape": (h, w),
        "palette": palette.astype(_np_dtype(X)),
    }
    return out, info


def _np_dtype(X) -> np.dtype:
    """NumPy dtype of ``X`` (float32 for torch dtypes NumPy lacks, such as bfloat16)."""
    if not isinstance(X, torch.Tensor):
        return X.dtype
    try:
        return torch.empty((), dtype=X.dtype).numpy().dtype
    except TypeError:
        return np.dtype(np.float32)


def _corner_origin(k: int, h: int, w: int, p: int):
    """Top-left pixel of the square in corner ``k`` (see :data:`CORNERS`)."""
    return (0 if k < 2 else h - p), (0 if k % 2 == 0 else w - p)


def _check_info(info, owner):
    try:
        corner = np.asarray(info["corner"])
        p = info["patch_size"]
        h, w = info["image_shape"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            "info must be the dict returned by plant_shortcut(..., return_info=True) with keys "
            f"'corner', 'patch_size' and 'image_shape' ({exc!r})"
        ) from None
    if corner.ndim != 1 or corner.dtype.kind not in "iu" or (corner.size and not np.isin(corner, range(4)).all()):
        raise ValueError(f"info['corner'] must be a 1-D array of corner indices 0..3, got {corner!r}")
    for v in (h, w):
        check_param(owner, "info['image_shape'] entries", v, [Integral(1, None)])
    check_param(owner, "info['patch_size']", p, [Integral(1, min(h, w))])  # min(H, W) of image_shape
    return corner, int(p), int(h), int(w)


def shortcut_pixel_mask(info, device=None) -> torch.Tensor:
    """The planted patch of every image as a pixel mask.

    Parameters
    ----------
    info : dict
        The ``info`` returned by :func:`plant_shortcut` with ``return_info=True``.
    device : torch.device, str or None, default=None
        Device of the result (``None``: CPU).

    Returns
    -------
    mask : torch.Tensor of shape (N, 1, H, W), bool
        True on the patch's pixels: the shape of ``mask`` argument of the regularizers
        (cast it with ``.float()``).

    Examples
    --------
    >>> import numpy as np
    >>> from attribshield.data import plant_shortcut, shortcut_pixel_mask
    >>> X = np.full((1, 1, 4, 4), 0.5, dtype=np.float32)
    >>> Xp, info = plant_shortcut(X, [0], patch_size=2, random_state=0, return_info=True)
    >>> m = shortcut_pixel_mask(info)
    >>> m.shape, int(m.sum()), bool((m[:, 0].numpy() == (Xp != X)[:, 0]).all())
    (torch.Size([1, 1, 4, 4]), 4, True)
    """
    corner, p, h, w = _check_info(info, "shortcut_pixel_mask")
    mask = torch.zeros((corner.size, 1, h, w), dtype=torch.bool, device=device)
    for k in range(4):
        idx = torch.as_tensor(np.flatnonzero(corner == k), device=mask.device)
        top, left = _corner_origin(k, h, w, p)
        mask[idx, :, top:top + p, left:left + p] = True
    return mask


def shortcut_segment_mask(info, segments=None) -> torch.Tensor:
    """Which segments of each image hold (part of) the planted patch: an oracle selection.

    Parameters
    ----------
    info : dict
        The ``info`` returned by :func:`plant_shortcut` with ``return_info=True``.
    segments : torch.Tensor of shape (N, H, W) or (H, W), integer, or None, default=None
        Segment labels ``0..S-1`` (one map shared by all images when 2-D).  ``None`` uses the
        default segmentation of the explainers: a 4x4 grid of cells of side
        ``max(1, min(H, W) // 4)``
        (:func:`~attribshield.explainers.default_segmenter`), row-major labels.

    Returns
    -------
    selected : torch.Tensor of shape (N, S), bool
        ``selected[i, s]`` is True when segment ``s`` of image ``i`` contains a patch pixel;
        ``S = max(segments) + 1``.  On ``segments``' device (CPU when ``None``).  This is the
        ``(segments, selected)`` pair the maskers use:
        ``attribshield.maskers.fill.pixel_mask(segments, selected)`` spreads it over the pixels.

    Raises
    ------
    ValueError
        ``info`` not from :func:`plant_shortcut`, or ``segments`` not integer labels of shape
        ``(N, H, W)`` or ``(H, W)`` matching ``info``.

    Examples
    --------
    >>> import numpy as np
    >>> from attribshield.data import plant_shortcut, shortcut_segment_mask
    >>> X = np.zeros((3, 1, 8, 8), dtype=np.float32)
    >>> _, info = plant_shortcut(X, [0, 1, 2], patch_size=2, random_state=1, return_info=True)
    >>> info["corner"].tolist()
    [1, 2, 3]
    >>> shortcut_segment_mask(info).nonzero().tolist()  # cells 3, 12 and 15 of the 4x4 grid
    [[0, 3], [1, 12], [2, 15]]
    """
    corner, p, h, w = _check_info(info, "shortcut_segment_mask")
    n = corner.size
    if segments is None:
        segments = default_segmenter(h, w).segment(torch.zeros((1, 1, h, w)))[0]
    if not isinstance(segments, torch.Tensor):
        segments = torch.as_tensor(np.asarray(segments))
    if segments.ndim == 2:
        segments = segments.expand(n, h, w)
    if segments.ndim != 3 or tuple(segments.shape) != (n, h, w):
        raise ValueError(f"segments must have shape (N, H, W) = ({n}, {h}, {w}) or (H, W), "
                         f"got {tuple(segments.shape)}")
    if segments.is_floating_point() or segments.dtype == torch.bool or segments.is_complex():
        raise ValueError(f"segments must hold integer labels, got dtype {segments.dtype}")
    segments = segments.long()
    if n and int(segments.min()) < 0:
        raise ValueError(f"segments must hold labels >= 0, got min={int(segments.min())}")
    n_seg = int(segments.max()) + 1 if n else 0
    selected = torch.zeros((n, n_seg), dtype=torch.bool, device=segments.device)
    img, rows, cols = shortcut_pixel_mask(info, device=segments.device)[:, 0].nonzero(as_tuple=True)
    selected[img, segments[img, rows, cols]] = True
    return selected
