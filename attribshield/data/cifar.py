"""CIFAR-10 and CIFAR-100 as arrays, on top of torchvision's datasets.

The loaders read torchvision's on-disk layout (``<root>/cifar-10-batches-py/`` and
``<root>/cifar-100-python/``) through :class:`torchvision.datasets.CIFAR10` /
:class:`~torchvision.datasets.CIFAR100`, so ``download=True`` is torchvision's own download
path.  ``verify=False`` skips torchvision's md5 check, for re-packed copies whose pickles hold
the same images but different bytes.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch
from torchvision.datasets import CIFAR10 as _TVCIFAR10
from torchvision.datasets import CIFAR100 as _TVCIFAR100

__all__ = [
    "load_cifar10",
    "load_cifar100",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]

#: Class names of CIFAR-10 in label order.
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
#: Per-channel mean and standard deviation of the CIFAR-10 training images (values in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_DTYPES = ("float32", "uint8")


def _without_md5(cls):
    """A subclass of a torchvision CIFAR dataset whose file lists carry no checksum."""

    class Unverified(cls):
        train_list = [[name, None] for name, _ in cls.train_list]
        test_list = [[name, None] for name, _ in cls.test_list]
        meta = {**cls.meta, "md5": None}

    Unverified.__name__ = Unverified.__qualname__ = f"Unverified{cls.__name__}"
    return Unverified


_UnverifiedCIFAR10 = _without_md5(_TVCIFAR10)
_UnverifiedCIFAR100 = _without_md5(_TVCIFAR100)
_UNVERIFIED = {_TVCIFAR10: _UnverifiedCIFAR10, _TVCIFAR100: _UnverifiedCIFAR100}


def _check_args(root, train, dtype, download, verify):
    if root is None or not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a path to the folder that holds the data set, got {root!r}")
    for name, value in (("train", train), ("download", download), ("verify", verify)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")


def _open(tv_cls, root, train, download, verify, *, label):
    """Build the torchvision dataset, turning its generic RuntimeError into clear errors."""
    root = Path(root).expanduser()
    folder = root / tv_cls.base_folder
    files = [name for name, _ in tv_cls.train_list + tv_cls.test_list] + [tv_cls.meta["filename"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"{label} not found under {root}: expected torchvision's layout {folder}/ with "
            f"{', '.join(files)} (missing: {', '.join(missing)}). Get it with "
            f"download=True (torchvision downloads and extracts it into root), or unpack the "
            f"official python archive into {root}; a re-packed copy (e.g. made by "
            f"shared/data/materialize.py) loads with verify=False."
        )
    cls = tv_cls if verify else _UNVERIFIED[tv_cls]
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as exc:
        if "corrupted" not in str(exc):
            raise
        raise ValueError(
            f"{label} files under {folder} failed torchvision's md5 check. Files re-packed "
            f"from another copy hold the same images with different bytes: load them with "
            f"verify=False; otherwise delete the folder and use download=True. ({exc})"
        ) from exc


def _to_array(data_hwc: np.ndarray, dtype: str) -> np.ndarray:
    X = np.ascontiguousarray(np.asarray(data_hwc, dtype=np.uint8).transpose(0, 3, 1, 2))
    if dtype == "uint8":
        return X
    out = X.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


def load_cifar10(root, train: bool = True, download: bool = False, verify: bool = True, *,
                 dtype: str = "float32", return_X_y: bool = True):
    """Load CIFAR-10 as arrays through :class:`torchvision.datasets.CIFAR10`.

    Parameters
    ----------
    root : str or path-like
        Folder holding ``cifar-10-batches-py/`` (torchvision's layout).
    train : bool, default=True
        The 50,000 training images, or the 10,000 test images with ``False``.
    download : bool, default=False
        Passed to torchvision: download and extract the archive into ``root`` when missing.
    verify : bool, default=True
        Check the md5 of every batch file as torchvision does.  ``False`` accepts re-packed
        copies whose bytes differ from the official archive.
    dtype : {"float32", "uint8"}, default="float32"
        ``"float32"`` gives values in [0, 1]; ``"uint8"`` keeps 0..255 (4x less memory:
        the 50,000 training images take 150 MB instead of 600 MB).
    return_X_y : bool, default=True
        Return ``(X, y)``; with ``False`` a :class:`sklearn.utils.Bunch` with ``data``,
        ``target`` and ``classes``.

    Returns
    -------
    X : numpy.ndarray of shape (N, 3, 32, 32)
        float32 in [0, 1] (or uint8 in 0..255), N = 50,000 (train) or 10,000 (test).
    y : numpy.ndarray of shape (N,), int64
        Labels 0..9 in the order of :data:`CIFAR10_CLASSES`.

    Raises
    ------
    FileNotFoundError
        The files are missing and ``download=False``; the message says how to get them.
    ValueError
        Invalid arguments, or an md5 mismatch with ``verify=True``.
    """
    _check_args(root, train, dtype, download, verify)
    ds = _open(_TVCIFAR10, root, train, download, verify, label="CIFAR-10")
    X = _to_array(ds.data, dtype)
    y = np.asarray(ds.targets, dtype=np.int64)
    if return_X_y:
        return X, y
    return Bunch(data=X, target=y, classes=tuple(ds.classes))


def load_cifar100(root, train: bool = True, download: bool = False, verify: bool = True, *,
                  label_type: str = "fine", dtype: str = "float32", return_X_y: bool = True):
    """Load CIFAR-100 as arrays through :class:`torchvision.datasets.CIFAR100`.

    Parameters
    ----------
    root : str or path-like
        Folder holding ``cifar-100-python/`` with ``train``, ``test`` and ``meta``.
    train : bool, default=True
        Training split (50,000 images) or test split (10,000) with ``False``.
    download : bool, default=False
        Passed to torchvision.
    verify : bool, default=True
        Check torchvision's md5 of ``train``, ``test`` and ``meta``; ``False`` skips it.
    label_type : {"fine", "coarse"}, default="fine"
        The 100 fine classes or the 20 superclasses.
    dtype : {"float32", "uint8"}, default="float32"
        As in :func:`load_cifar10`.
    return_X_y : bool, default=True
        Return ``(X, y)``; with ``False`` a Bunch with ``data``, ``target``, ``classes``.

    Returns
    -------
    X : numpy.ndarray of shape (N, 3, 32, 32)
        float32 in [0, 1] (or uint8).
    y : numpy.ndarray of shape (N,), int64
        Fine labels 0..99 or coarse labels 0..19.

    Raises
    ------
    FileNotFoundError
        Missing files with ``download=False``.
    ValueError
        Invalid arguments, or an md5 mismatch with ``verify=True``.
    """
    _check_args(root, train, dtype, download, verify)
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    ds = _open(_TVCIFAR100, root, train, download, verify, label="CIFAR-100")
    X = _to_array(ds.data, dtype)
    if label_type == "fine":
        y = np.asarray(ds.targets, dtype=np.int64)
        classes = tuple(ds.classes)
    else:
        # torchvision keeps only the fine labels: read the coarse ones from the same files.
        folder = Path(ds.root) / ds.base_folder
        file_list = ds.train_list if train else ds.test_list
        labels = []
        for name, _ in file_list:
            with open(folder / name, "rb") as fh:
                labels.extend(pickle.load(fh, encoding="latin1")["coarse_labels"])
        y = np.asarray(labels, dtype=np.int64)
        with open(folder / ds.meta["filename"], "rb") as fh:
            classes = tuple(pickle.load(fh, encoding="latin1")["coarse_label_names"])
    if return_X_y:
        return X, y
    return Bunch(data=X, target=y, classes=classes)
