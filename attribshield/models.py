"""Reference architectures: every module takes images in [0, 1] and returns logits.

Normalisation (per-channel mean/std) lives *inside* the module (``mean``/``std`` arguments),
so attacks and explainers can work in the natural [0, 1] pixel space.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Normalize", "SmallCNN", "PreActResNet18", "DigitsNet", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a module so it travels with the model."""

    def __init__(self, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]):
        super().__init__()
        mean = torch.as_tensor(mean if mean is not None else [0.0], dtype=torch.float32)
        std = torch.as_tensor(std if std is not None else [1.0], dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _conv_bn(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A VGG-style CNN for 32x32 images (about 0.81M parameters with the defaults).

    Three stages of two 3x3 conv-BN-ReLU layers (``width``, ``2*width``, ``4*width``
    channels) with max pooling, then a 4x4 max pool and a two-layer classifier.

    Parameters
    ----------
    num_classes : int, default=10
    in_channels : int, default=3
    width : int, default=32
    mean, std : sequence of float or None, default=CIFAR-10 statistics
        Per-channel normalisation applied inside the module.

    Examples
    --------
    >>> import torch
    >>> SmallCNN(num_classes=10)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        if in_channels != 3 and mean is CIFAR10_MEAN:
            mean, std = None, None
        w = width
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), *_conv_bn(4 * w, 4 * w), nn.AdaptiveMaxPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Linear(4 * w * 16, 8 * w), nn.ReLU(inplace=True),
                                        nn.Linear(8 * w, num_classes))
        self.in_channels = in_channels

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(self.normalize(x)), 1))


class _PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 32x32 inputs (He et al., 2016; 11.2M parameters).

    The architecture of "Fast is better than free" and many RobustBench entries.

    Parameters
    ----------
    num_classes : int, default=10
    in_channels : int, default=3
    mean, std : sequence of float or None, default=CIFAR-10 statistics
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        if in_channels != 3 and mean is CIFAR10_MEAN:
            mean, std = None, None
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(_PreActBlock(cin, cout, stride), _PreActBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)
        self.in_channels = in_channels

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


class DigitsNet(nn.Module):
    """A small CNN for scikit-learn's 1x8x8 digits (about 20k parameters).

    Parameters
    ----------
    num_classes : int, default=10
    in_channels : int, default=1
    width : int, default=16

    Examples
    --------
    >>> import torch
    >>> DigitsNet()(torch.rand(4, 1, 8, 8)).shape
    torch.Size([4, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 64), nn.ReLU(inplace=True),
                                        nn.Linear(64, num_classes))
        self.in_channels = in_channels

    def forward(self, x):
        return self.classifier(self.features(x))
