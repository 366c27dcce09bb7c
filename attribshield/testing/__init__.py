"""Small models and data for tests and doctests (like ``captum.testing``)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["TinyMLP", "LinearImageModel", "ConstantModel", "make_images", "write_cifar100"]


class TinyMLP(nn.Module):
    """Flatten -> Linear -> ReLU -> Linear; lazily sized to the input."""

    def __init__(self, num_classes: int = 3, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class LinearImageModel(nn.Module):
    """Logits ``W @ flatten(x) + b``: an analytic model for attacks, LIME and bounds tests."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32))
        b = torch.zeros(self.weight.shape[0]) if bias is None else torch.as_tensor(bias, dtype=torch.float32)
        self.bias = nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


class ConstantModel(nn.Module):
    """Ignores its input: the same logits for every image (gradient zero)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(-1, 1, num_classes))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def make_images(n=24, c=1, h=8, w=8, n_classes=3, seed=0):
    """Separable toy images: class ``k`` brightens the ``k``-th horizontal band."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.uniform(0.0, 0.4, size=(n, c, h, w)).astype(np.float32)
    band = max(1, h // n_classes)
    for i, k in enumerate(y):
        X[i, :, k * band:(k + 1) * band, :] += 0.5
    return np.clip(X, 0, 1).astype(np.float32), y.astype(np.int64)


def write_cifar100(root, n_train=12, n_test=5, seed=0):
    """Write a small CIFAR-100 in torchvision's on-disk layout (``root/cifar-100-python/``).

    Random uint8 images with random fine labels (coarse = fine // 5); returns the written
    ``{"train": entry, "test": entry}`` dicts.  No copy of CIFAR-100 exists on the project's
    machines, so its loader and pipeline are tested on such files.
    """
    import pickle
    from pathlib import Path

    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    content = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        entry = {"data": data, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine],
                 "filenames": [f"img{i}.png" for i in range(n)]}
        with open(folder / split, "wb") as fh:
            pickle.dump(entry, fh)
        content[split] = entry
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    with open(folder / "meta", "wb") as fh:
        pickle.dump(meta, fh)
    return content
