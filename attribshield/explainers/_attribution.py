"""The result of a LIME explanation: :class:`Attribution`.

Segment weights plus everything needed to map them back to pixels, rank segments, plot them,
move them between devices and subset them.  Every explainer of this package returns one
(:class:`~attribshield.explainers.LimeExplainer`, the amortized, gradient and reference
explainers).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .._params import Integral, check_param
from .._validation import check_images

__all__ = ["Attribution"]


@dataclass
class Attribution:
    """LIME explanations of a batch of images.

    Attributes
    ----------
    segments : torch.Tensor of shape (N, H, W), int64
        Segment label of every pixel, ``0..S_n-1`` for image ``n``.
    weights : torch.Tensor of shape (N, S), float
        Ridge coefficient of each segment (effect of keeping the segment on the target-class
        probability).  ``S`` is the largest segment count in the batch; columns
        ``>= S_n`` are padding, equal to 0 and ``False`` in :attr:`valid`.
    valid : torch.Tensor of shape (N, S), bool
        Which columns of :attr:`weights` are real segments.
    intercept : torch.Tensor of shape (N,), float
        Ridge intercept (predicted probability with every segment hidden).
    score : torch.Tensor of shape (N,), float
        Weighted R^2 of the surrogate on the perturbed samples (``lime``'s ``score``), <= 1.
    target : torch.Tensor of shape (N,), int64
        Explained class of each image.
    """

    segments: torch.Tensor
    weights: torch.Tensor
    valid: torch.Tensor
    intercept: torch.Tensor
    score: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def __getitem__(self, index) -> "Attribution":
        """Subset by an int, slice, bool mask or index array (the batch dimension is kept)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1) if index != -1 else slice(-1, None)
        elif not isinstance(index, slice):
            index = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
            index = index.to(self.weights.device)
        return Attribution(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def n_segments(self) -> torch.Tensor:
        """Number of segments of each image, shape ``(N,)``."""
        return self.valid.sum(1)

    @property
    def device(self) -> torch.device:
        return self.weights.device

    def to(self, device) -> "Attribution":
        """Return a copy with every tensor on ``device``."""
        return Attribution(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def cpu(self) -> "Attribution":
        return self.to("cpu")

    def numpy(self) -> dict:
        """Return the fields as a dict of NumPy arrays (on the CPU)."""
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}

    def to_pixels(self) -> torch.Tensor:
        """Spread each segment's weight over its pixels.

        Returns
        -------
        torch.Tensor of shape (N, 1, H, W)
            Constant within each segment, same dtype and device as :attr:`weights`.
        """
        n, h, w = self.segments.shape
        pix = torch.gather(self.weights, 1, self.segments.reshape(n, h * w))
        return pix.reshape(n, 1, h, w)

    def top_segments(self, k: int) -> torch.Tensor:
        """Indices of the ``k`` segments with the largest (most positive) weights.

        Parameters
        ----------
        k : int
            ``1 <= k <= S``.

        Returns
        -------
        torch.Tensor of shape (N, k), int64
            Sorted by weight, descending.  For an image with fewer than ``k`` segments the
            last entries are padding columns (``>= S_n``), which match no pixel.
        """
        check_param("Attribution.top_segments", "k", k, [Integral(1, self.weights.shape[1])])
        ranked = self.weights.masked_fill(~self.valid, float("-inf"))
        return torch.topk(ranked, int(k), dim=1, sorted=True).indices

    def plot(self, images, k: int = 3, *, max_images: int = 8, cmap: str = "RdBu_r"):
        """Plot images with their ``k`` most positive segments outlined, and the weight map.

        Parameters
        ----------
        images : array-like or torch.Tensor of shape (N, C, H, W)
            The explained images, in [0, 1].
        k : int, default=3
            Segments to outline (like ``lime``'s ``get_image_and_mask(positive_only=True)``).
        max_images : int, default=8
            Plot at most this many images (columns).
        cmap : str, default="RdBu_r"
            Colour map of the weight map (symmetric around 0).

        Returns
        -------
        matplotlib.figure.Figure
            Two rows: overlays and weight maps.
        """
        import matplotlib.pyplot as plt
        from skimage.segmentation import mark_boundaries

        X = check_images(images, name="images")
        if X.shape[0] != len(self) or tuple(X.shape[2:]) != tuple(self.segments.shape[1:]):
            raise ValueError(
                f"images of shape {tuple(X.shape)} do not match the attribution "
                f"({len(self)} images of size {tuple(self.segments.shape[1:])})"
            )
        n = min(len(self), int(max_images))
        k = min(int(k), self.weights.shape[1])
        top = self.top_segments(k)[:n].cpu()
        seg = self.segments[:n].cpu()
        pix = self.to_pixels()[:n, 0].detach().float().cpu()
        imgs = X[:n].detach().cpu().permute(0, 2, 3, 1).double().numpy()
        if imgs.shape[-1] == 1:
            imgs = np.repeat(imgs, 3, axis=-1)
        fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.2), squeeze=False)
        for i in range(n):
            keep = torch.isin(seg[i], top[i]).numpy()
            overlay = imgs[i] * (0.35 + 0.65 * keep[..., None])
            axes[0, i].imshow(mark_boundaries(overlay, keep.astype(int), color=(1, 1, 0)))
            axes[0, i].set_title(f"class {int(self.target[i])}", fontsize=8)
            lim = float(pix[i].abs().max()) or 1.0
            axes[1, i].imshow(pix[i].numpy(), cmap=cmap, vmin=-lim, vmax=lim)
            axes[1, i].set_title(f"R2 {float(self.score[i]):.2f}", fontsize=8)
            for ax in axes[:, i]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        return fig
