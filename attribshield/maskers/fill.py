"""Fill strategies for masked pixels, and segment selections turned into pixel masks.

Everything here is batched and runs on the device of its inputs: per-segment statistics are
computed with ``scatter_add`` and spread back with ``gather``, so there is no Python loop
over images (these functions run at every training step).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ..explainers.lime import segment_means

__all__ = ["FILLS", "pixel_mask", "gaussian_blur", "fill_image", "masked_region_mean"]

FILLS = ("mean", "constant", "blur", "noise")


def _check_segments_selected(segments: torch.Tensor, selected: torch.Tensor) -> None:
    if not isinstance(segments, torch.Tensor) or segments.ndim != 3:
        got = getattr(segments, "shape", type(segments))
        raise ValueError(f"segments must be a tensor of shape (N, H, W), got {got}")
    if segments.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"segments must hold integer labels, got dtype {segments.dtype}")
    if not isinstance(selected, torch.Tensor) or selected.ndim != 2:
        raise ValueError(f"selected must be a tensor of shape (N, S), got {getattr(selected, 'shape', type(selected))}")
    if selected.shape[0] != segments.shape[0]:
        raise ValueError(
            f"segments and selected disagree on the batch size: {segments.shape[0]} vs {selected.shape[0]}"
        )


def pixel_mask(segments: torch.Tensor, selected: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Spread a per-segment selection over the pixels.

    Parameters
    ----------
    segments : torch.Tensor of shape (N, H, W), integer
        Segment labels ``0..S_n-1`` of each image.
    selected : torch.Tensor of shape (N, S), bool
        Selected (spurious) segments; ``S`` must exceed every label.  Labels that no column
        covers raise a ``ValueError``.
    dtype : torch.dtype, default=torch.float32
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor of shape (N, 1, H, W), values in {0, 1}
        1 on the pixels of selected segments; on ``segments``' device.

    Examples
    --------
    >>> import torch
    >>> seg = torch.tensor([[[0, 1], [2, 2]]])
    >>> pixel_mask(seg, torch.tensor([[False, True, True]]))[0, 0]
    tensor([[0., 1.],
            [1., 1.]])
    """
    _check_segments_selected(segments, selected)
    n, h, w = segments.shape
    flat = segments.reshape(n, h * w).long()
    if flat.numel() and int(flat.max()) >= selected.shape[1]:
        raise ValueError(f"selected has {selected.shape[1]} columns but segments has labels up to {int(flat.max())}")
    m = torch.gather(selected.to(segments.device).bool(), 1, flat)
    return m.reshape(n, 1, h, w).to(dtype)


def gaussian_blur(X: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every channel (replicate padding, same size).

    torchvision's :func:`~torchvision.transforms.v2.functional.gaussian_blur` with a kernel of
    ``2 r + 1`` taps, ``r = max(1, ceil(3 sigma))``, applied to ``X`` padded by ``r`` pixels
    that repeat the border ones (torchvision itself reflects at the border, and reflection
    needs ``r`` smaller than the image; the padded rim it reflects is cropped away).

    Parameters
    ----------
    X : torch.Tensor of shape (N, C, H, W), floating
    sigma : float
        Standard deviation in pixels (> 0); the kernel is truncated at ``3 sigma``.

    Returns
    -------
    torch.Tensor of shape (N, C, H, W)
        Same dtype and device; a convex combination of pixels, so it stays in [0, 1].

    Notes
    -----
    torchvision convolves with the full 2-D kernel (``(2 r + 1)^2`` taps) rather than two 1-D
    passes: on a CPU, 128 CIFAR images at the default ``sigma`` of 32x32 images (4 pixels)
    take about 3x as long as a separable blur; at ``sigma = 1`` it is as fast.

    Examples
    --------
    >>> import torch
    >>> X = torch.zeros(1, 1, 7, 7)
    >>> X[0, 0, 3, 3] = 1.0
    >>> B = gaussian_blur(X, 0.5)  # radius 2: the 5 x 5 kernel stays inside the image here
    >>> B.shape, round(float(B.sum()), 4), round(float(B[0, 0, 3, 3]), 4)
    (torch.Size([1, 1, 7, 7]), 1.0, 0.6187)
    >>> C = torch.full((2, 3, 8, 8), 0.4)
    >>> bool(torch.allclose(gaussian_blur(C, 3.0), C))  # radius 9 > 8 pixels: fine
    True
    """
    radius = max(1, int(math.ceil(3.0 * float(sigma))))
    x = F.pad(X, (radius, radius, radius, radius), mode="replicate")
    x = TF.gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[float(sigma)] * 2)
    return x[..., radius:-radius, radius:-radius]


def masked_region_mean(X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean colour of the masked region, broadcast to ``X``'s shape.

    Used by the ``'mean'`` fill when only a pixel mask is known (no segmentation): the
    union of the masked pixels is treated as one region.  Images with an empty mask get
    their own mean colour (it is never used there).

    Parameters
    ----------
    X : torch.Tensor of shape (N, C, H, W)
    mask : torch.Tensor of shape (N, 1, H, W) or (N, C, H, W), in [0, 1]

    Returns
    -------
    torch.Tensor of shape (N, C, H, W)
    """
    m = mask.to(X.dtype).expand_as(X)
    tot = m.sum((2, 3), keepdim=True)
    mean_masked = (X * m).sum((2, 3), keepdim=True) / tot.clamp_min(torch.finfo(X.dtype).tiny)
    mean_all = X.mean((2, 3), keepdim=True)
    return torch.where(tot > 0, mean_masked, mean_all).expand_as(X)


def fill_image(X, fill, *, segments=None, mask=None, fill_value=0.0, blur_sigma=None, generator=None):
    """The image whose pixels replace the masked ones (``(N, C, H, W)``, dtype of ``X``).

    Parameters
    ----------
    X : torch.Tensor of shape (N, C, H, W), in [0, 1]
    fill : {"mean", "constant", "blur", "noise"}
        ``"mean"``: each segment's mean colour (``lime``'s ``hide_color=None``; with only a
        pixel ``mask`` and no ``segments``: the mean colour of the masked region);
        ``"constant"``: ``fill_value``; ``"blur"``: a Gaussian-blurred copy of ``X`` with
        standard deviation ``blur_sigma`` (``None``: ``max(1, min(H, W) / 8)`` pixels);
        ``"noise"``: i.i.d. uniform noise in [0, 1) drawn from ``generator``.
    segments : torch.Tensor of shape (N, H, W), optional
    mask : torch.Tensor of shape (N, 1 or C, H, W), optional
    fill_value : float, default=0.0
    blur_sigma : float or None, default=None
    generator : torch.Generator or None, default=None
    """
    if fill == "mean":
        if segments is not None:
            return segment_means(X, segments.long())
        if mask is None:  # pragma: no cover - internal misuse
            raise ValueError("the 'mean' fill needs segments or a mask")
        return masked_region_mean(X, mask)
    if fill == "constant":
        return torch.full_like(X, float(fill_value))
    if fill == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(1.0, min(X.shape[2:]) / 8.0)
        return gaussian_blur(X, float(sigma))
    if fill == "noise":
        return torch.rand(X.shape, generator=generator, device=X.device, dtype=X.dtype)
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
