"""Small models and data for tests and doctests (like ``captum.testing``)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["TinyMLP", "LinearImageModel", "ConstantModel", "make_images"]


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
