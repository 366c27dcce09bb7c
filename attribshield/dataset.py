"""Datasets the estimator trains on: images with labels, and the sample index of every item.

Kept apart from :mod:`attribshield.estimator` (as skorch keeps ``dataset.py`` apart from
``net.py``) so that the refinement loop and the estimator both import it without a cycle.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "IndexedDataset"]


class ImageDataset(Dataset):
    """Images (float in [0, 1] or uint8) with labels; items are ``({"X": x, "index": i}, y)``.

    The sample index travels with every batch so that per-sample state (the refinement
    loop's mask cache) stays correct under shuffling and batching.  ``uint8`` images are kept
    as ``uint8`` in memory (4x smaller) and scaled to [0, 1] per item.

    Parameters
    ----------
    X : torch.Tensor of shape (N, C, H, W)
        float in [0, 1] or uint8 in 0..255.
    y : torch.Tensor of shape (N,) or None, default=None
        Labels; ``None`` gives label 0 for every item (prediction).

    Examples
    --------
    >>> import torch
    >>> ds = ImageDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 1]))
    >>> item, label = ds[2]
    >>> sorted(item), int(item["index"]), int(label), item["X"].dtype
    (['X', 'index'], 2, 1, torch.float32)
    """

    def __init__(self, X: torch.Tensor, y=None):
        self.X = X
        self.y = y
        self._scale = X.dtype == torch.uint8

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        x = self.X[i]
        if self._scale:
            x = x.float().div_(255.0)
        y = self.y[i] if self.y is not None else torch.tensor(0)
        return {"X": x, "index": torch.tensor(i)}, y

    def gather(self, positions):
        """Images (float in [0, 1]), labels and indices of ``positions``, without the per-item loop."""
        idx = torch.as_tensor(positions, dtype=torch.long)
        X = self.X[idx]
        X = X.float() / 255.0 if X.dtype == torch.uint8 else X
        return X, self.y[idx], idx


class IndexedDataset(Dataset):
    """Wraps a user's ``Dataset`` of ``(x, y)`` items so that the index travels along."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        x, y = item if isinstance(item, (tuple, list)) else (item, torch.tensor(0))
        return {"X": torch.as_tensor(x), "index": torch.tensor(i)}, y

    def gather(self, positions):
        """Images, labels and indices of ``positions`` (one item at a time)."""
        items = [self[int(p)] for p in positions]
        X = torch.stack([torch.as_tensor(it[0]["X"]) for it in items])
        X = X.float() / 255.0 if X.dtype == torch.uint8 else X
        y = torch.stack([torch.as_tensor(it[1]) for it in items])
        idx = torch.stack([torch.as_tensor(it[0]["index"]) for it in items])
        return X, y, idx
