"""Data sets as arrays ready for the estimator: ``(N, C, H, W)`` float32 in [0, 1] and int64 labels.

* :func:`load_digits`: scikit-learn's bundled 8x8 digits, the embedded default (offline);
* :func:`load_cifar10`, :func:`load_cifar100`: torchvision's CIFAR datasets (``download=True``
  downloads; ``verify=False`` accepts re-packed copies);
* :mod:`attribshield.data.cifar10c`: CIFAR-10-C corruptions, loader and builder;
* :func:`plant_shortcut`: a Decoy-MNIST-style variant of any image set (a class-coloured
  corner patch), with :func:`shortcut_segment_mask` for the oracle mask.
"""
from attribshield.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    load_cifar10,
    load_cifar100,
)
from attribshield.data.cifar10c import (
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    build_cifar10c,
    corrupt,
    get_cifar10c,
    iter_cifar10c,
    load_cifar10c,
)
from attribshield.data.digits import DIGITS_CLASSES, load_digits
from attribshield.data.shortcut import (
    CORNERS,
    plant_shortcut,
    shortcut_palette,
    shortcut_pixel_mask,
    shortcut_segment_mask,
)

__all__ = [
    "load_digits",
    "DIGITS_CLASSES",
    "load_cifar10",
    "load_cifar100",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "corrupt",
    "load_cifar10c",
    "iter_cifar10c",
    "build_cifar10c",
    "get_cifar10c",
    "plant_shortcut",
    "shortcut_palette",
    "shortcut_pixel_mask",
    "shortcut_segment_mask",
    "CORNERS",
]
