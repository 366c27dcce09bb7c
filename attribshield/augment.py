"""Training-time data augmentation on whole batches: random crop with padding and flips.

:class:`RandomCropFlip` is the standard CIFAR recipe (``RandomCrop(32, padding=4)`` and
``RandomHorizontalFlip()`` of torchvision) applied to a whole batch at once, each image with
its own offsets and flip.  It also returns where every output pixel came from, so that
per-sample state computed on the un-augmented image (the refinement loop's cached segment
maps) can follow the image through the augmentation.

Why not torchvision's per-item transforms: on this project's CPUs, ``v2.RandomCrop`` +
``v2.RandomHorizontalFlip`` cost about 0.5 ms per 32x32 image, 25 s per 50,000-image epoch,
half of an FGSM-RS epoch of the SmallCNN (docs/architecture.md); the batched gather costs
about 1 ms per batch of 128.  The result equals torchvision's for the same offsets and flip
(tested against ``torchvision.transforms.v2.functional``).
"""
from __future__ import annotations

import torch

from ._params import Integral, validate_params
from .base import Component

__all__ = ["RandomCropFlip"]


class RandomCropFlip(Component):
    """Random crop of a zero-padded image and a random horizontal flip, per image of a batch.

    Parameters
    ----------
    padding : int, default=4
        Zero padding on every side before cropping back to the original size (torchvision's
        ``RandomCrop(size, padding=padding)`` with ``fill=0``).  0 disables cropping.
    flip : bool, default=True
        Flip each image horizontally with probability 1/2.
    random_state : None, int or generator, default=None
        Seeds the offsets and flips; ``None`` uses torch's global generator.

    Examples
    --------
    >>> import torch
    >>> aug = RandomCropFlip(padding=2, random_state=0)
    >>> X = torch.rand(5, 3, 8, 8)
    >>> X_aug, src = aug(X)
    >>> X_aug.shape, src.shape
    (torch.Size([5, 3, 8, 8]), torch.Size([5, 8, 8]))
    >>> bool(((src >= 0) | (X_aug.abs().sum(1) == 0)).all())  # padding pixels are 0
    True
    """

    _parameter_constraints = {"padding": [Integral(0, None)], "flip": [bool]}

    def __init__(self, padding=4, flip=True, random_state=None):
        self.padding = padding
        self.flip = flip
        self.random_state = random_state

    def draw(self, n: int, device) -> tuple:
        """Random ``(dy, dx, flipped)`` for ``n`` images: offsets in ``0..2*padding``."""
        validate_params(self)
        gen = self._generator(device)
        p = int(self.padding)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=device)
        if self.flip:
            flipped = torch.randint(0, 2, (n,), generator=gen, device=device).bool()
        else:
            flipped = torch.zeros(n, dtype=torch.bool, device=device)
        return dy, dx, flipped

    @staticmethod
    def apply(X: torch.Tensor, dy, dx, flipped, padding: int) -> tuple:
        """Crop-and-flip ``X`` with given offsets; returns ``(X_aug, src)``.

        ``src[n, i, j]`` is the flat index ``r * W + c`` of the pixel of image ``n`` that
        lands at ``(i, j)``, or -1 where the output shows padding.
        """
        n, c, h, w = X.shape
        p = int(padding)
        dev = X.device
        rows = dy[:, None] - p + torch.arange(h, device=dev)[None, :]  # (N, H) source rows
        cols_out = torch.arange(w, device=dev)[None, :].expand(n, w)
        cols_out = torch.where(flipped[:, None], w - 1 - cols_out, cols_out)  # flip after crop
        cols = dx[:, None] - p + cols_out  # (N, W) source columns
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        src = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (N, H, W)
        flat = X.reshape(n, c, h * w)
        out = flat.gather(2, src.reshape(n, 1, h * w).expand(n, c, h * w)).reshape(n, c, h, w)
        out = out * inside[:, None].to(out.dtype)
        if X.is_contiguous(memory_format=torch.channels_last) and not X.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out, torch.where(inside, src, torch.full_like(src, -1))

    def __call__(self, X: torch.Tensor) -> tuple:
        """Augment a batch ``(N, C, H, W)``; returns ``(X_aug, src)`` (see :meth:`apply`)."""
        if not isinstance(X, torch.Tensor) or X.ndim != 4:
            raise ValueError(f"X must be a tensor of shape (N, C, H, W), got {type(X).__name__} "
                             f"of shape {tuple(getattr(X, 'shape', ()))}")
        dy, dx, flipped = self.draw(X.shape[0], X.device)
        return self.apply(X, dy, dx, flipped, int(self.padding))


def follow(values: torch.Tensor, src: torch.Tensor, fill) -> torch.Tensor:
    """Move a per-pixel map ``(N, H, W)`` through an augmentation: ``out[n, i, j] =
    values[n].flat[src[n, i, j]]``, and ``fill`` where ``src`` is -1 (padding)."""
    n, h, w = src.shape
    flat = values.reshape(n, h * w)
    out = flat.gather(1, src.clamp_min(0).reshape(n, h * w)).reshape(n, h, w)
    return torch.where(src >= 0, out, torch.as_tensor(fill, dtype=out.dtype, device=out.device))
