"""CIFAR-10-C: the common-corruption benchmark (Hendrycks & Dietterich, ICLR 2019).

Three pieces:

* :func:`corrupt` applies one of the corruptions at a severity 1..5 to a batch of images, with
  the published 32x32 parameters (``PARAMETERS``), re-implemented with numpy, scipy,
  scikit-image and PIL (no OpenCV, no ImageMagick, no Wand); it and the kernels live in
  ``attribshield/data/_corruption_kernels.py`` and are imported from here;
* :func:`load_cifar10c` reads the official release (``<name>.npy``, uint8, shape
  (50000, 32, 32, 3), five severity blocks of 10,000 test images, and ``labels.npy``);
* :func:`build_cifar10c` regenerates that layout from the CIFAR-10 test split (seeded, cached
  per file, with a progress bar), and :func:`get_cifar10c` loads when present, else builds.

Where the re-implementation differs from the published generator is listed in ``docs/data.md``.
"""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import numpy as np

from attribshield._params import Integral, check_param
from attribshield._validation import check_images, check_labels
from attribshield.data._corruption_kernels import (
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    _check_name,
    _check_severity,
    corrupt,
)
from attribshield.data._frost import frost_source
from attribshield.data.cifar import load_cifar10

__all__ = [
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "ALL_CORRUPTIONS",
    "SEVERITIES",
    "PARAMETERS",
    "corrupt",
    "load_cifar10c",
    "iter_cifar10c",
    "build_cifar10c",
    "get_cifar10c",
]

# ----------------------------------------------------------------------------------------------
# on-disk layout (official release): <name>.npy uint8 (5 * n, 32, 32, 3), labels.npy (5 * n,)

_HOWTO = (
    "Download the official release (https://zenodo.org/record/2535967, CIFAR-10-C.tar) and unpack "
    "it there, or regenerate it with attribshield.data.cifar10c.build_cifar10c(cifar10_root, "
    "out_dir) (or get_cifar10c(root, cifar10_root=...))."
)
_MANIFEST = "attribshield_build.json"


def _check_list(values, what):
    if values is None:
        return None
    if isinstance(values, (str, numbers.Integral)):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"{what} is empty")
    return values


def _check_corruptions(corruptions):
    names = _check_list(corruptions, "corruptions")
    names = list(CORRUPTIONS) if names is None else names
    for n in names:
        _check_name(n)
    return names


def _check_severities(severities):
    sev = _check_list(severities, "severities")
    sev = list(SEVERITIES) if sev is None else sev
    return [_check_severity(s, "cifar10c") for s in sev]


def _check_n_images(n_images):
    check_param("cifar10c", "n_images", n_images, [None, Integral(1, None)])
    return None if n_images is None else int(n_images)


def _read_labels(root):
    path = root / "labels.npy"
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10-C not found: {path} is missing. {_HOWTO}")
    labels = np.load(path)
    if labels.ndim != 1 or len(labels) % 5 or len(labels) == 0:
        raise ValueError(f"{path} must hold 5 blocks of labels (shape (5 * n,)), got shape {labels.shape}")
    block = len(labels) // 5
    blocks = labels.reshape(5, block)
    if not (blocks == blocks[0]).all():
        raise ValueError(f"{path}: the 5 severity blocks of labels differ; not the CIFAR-10-C layout")
    return blocks[0].astype(np.int64), block


def _severity_file(root, name, severity):
    return root / f"{name}_s{severity}.npy"


def _available(root, name, severity):
    return (root / f"{name}.npy").is_file() or _severity_file(root, name, severity).is_file()


def _read_block(root, name, severity, block, n):
    full = root / f"{name}.npy"
    if full.is_file():
        arr = np.load(full, mmap_mode="r")
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != 5 * block or arr.shape[-1] != 3:
            raise ValueError(
                f"{full} must be uint8 of shape ({5 * block}, H, W, 3) to match labels.npy, "
                f"got {arr.dtype} {arr.shape}"
            )
        start = (severity - 1) * block
        return np.asarray(arr[start:start + n])
    part = _severity_file(root, name, severity)
    if part.is_file():
        arr = np.load(part, mmap_mode="r")
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != block or arr.shape[-1] != 3:
            raise ValueError(f"{part} must be uint8 of shape ({block}, H, W, 3), got {arr.dtype} {arr.shape}")
        return np.asarray(arr[:n])
    raise FileNotFoundError(f"CIFAR-10-C corruption {name!r} not found in {root} (no {name}.npy). {_HOWTO}")


def iter_cifar10c(root, corruptions=None, severities=SEVERITIES, *, n_images=None, dtype="float32"):
    """Yield ``(name, severity, X)`` for each requested block, reading one block at a time.

    Same arguments as :func:`load_cifar10c`; memory stays at one block (10,000 images:
    123 MB as float32, 31 MB as uint8).  The labels come from :func:`load_cifar10c` or
    ``labels.npy``.
    """
    root, names, sevs, n_images, dtype, block = _prepare_load(root, corruptions, severities, n_images, dtype)
    n = block if n_images is None else min(n_images, block)
    for name in names:
        for s in sevs:
            yield name, s, _convert(_read_block(root, name, s, block, n), dtype)


def _convert(hwc, dtype):
    x = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
    if dtype == "uint8":
        return x
    out = x.astype(np.float32)
    out *= np.float32(1 / 255)
    return out


def _prepare_load(root, corruptions, severities, n_images, dtype):
    if root is None or not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a path to the CIFAR-10-C folder, got {root!r}")
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
    names = _check_corruptions(corruptions)
    sevs = _check_severities(severities)
    n_images = _check_n_images(n_images)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10-C folder {root} does not exist. {_HOWTO}")
    _, block = _read_labels(root)
    missing = [f"{n} (severity {s})" for n in names for s in sevs if not _available(root, n, s)]
    if missing:
        raise FileNotFoundError(f"CIFAR-10-C in {root} lacks: {', '.join(missing)}. {_HOWTO}")
    return root, names, sevs, n_images, dtype, block


def load_cifar10c(root, corruptions=None, severities=SEVERITIES, *, n_images=None, dtype="float32"):
    """Load CIFAR-10-C blocks from the official release layout.

    Parameters
    ----------
    root : str or path-like
        Folder with ``labels.npy`` and one ``<name>.npy`` per corruption: uint8 of shape
        (5 n, H, W, 3) (n = 10,000 in the official release), severity 1 in rows 0..n-1,
        severity 5 last, each block in test-set order.  Files written by
        :func:`build_cifar10c` for a subset of severities (``<name>_s<k>.npy``) are read too.
    corruptions : sequence of str, default=None
        Names to load; ``None`` means the 15 benchmark corruptions (:data:`CORRUPTIONS`).
    severities : sequence of int, default=(1, 2, 3, 4, 5)
    n_images : int, default=None
        Keep only the first ``n_images`` of each block (all when ``None``).
    dtype : {"float32", "uint8"}, default="float32"
        float32 in [0, 1] or uint8 in 0..255.  Memory: the whole benchmark is 75 blocks of
        10,000 images, 9.2 GB as float32 (2.3 GB as uint8); use :func:`iter_cifar10c` to
        stream it.

    Returns
    -------
    data : dict
        ``data[name, severity]`` is an array of shape (n, 3, H, W).
    y : numpy.ndarray of shape (n,), int64
        The labels, the same for every block.

    Raises
    ------
    FileNotFoundError
        Missing folder, ``labels.npy`` or corruption file; the message says how to get them.
    ValueError
        Invalid arguments, or files that do not follow the layout.
    """
    root_, names, sevs, n_images, dtype, block = _prepare_load(root, corruptions, severities, n_images, dtype)
    y, _ = _read_labels(root_)
    n = block if n_images is None else min(n_images, block)
    data = {
        (name, s): X
        for name, s, X in iter_cifar10c(root_, names, sevs, n_images=n_images, dtype=dtype)
    }
    return data, y[:n]


def _source_arrays(source, verify):
    if isinstance(source, (str, os.PathLike)):

        return load_cifar10(source, train=False, verify=verify, dtype="uint8")
    if isinstance(source, (tuple, list)) and len(source) == 2:
        X, y = source
        t = check_images(X, name="X")
        if t.shape[1] != 3:
            raise ValueError(f"X must have 3 colour channels (N, 3, H, W), got shape {tuple(t.shape)}")

        y = check_labels(y, len(t)).numpy()
        x = np.round(t.cpu().numpy() * 255).astype(np.uint8)
        return x, y
    raise ValueError(
        "source must be the CIFAR-10 root folder (with cifar-10-batches-py/) or a tuple (X, y) "
        f"of test images (N, 3, H, W) and labels, got {type(source).__name__}"
    )


def _atomic_save(path, fill, shape):
    tmp = path.with_name(path.name + ".partial.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    fill(arr)
    arr.flush()
    del arr
    os.replace(tmp, path)


def build_cifar10c(source, out_dir, corruptions=None, severities=SEVERITIES, *, random_state=0,
                   n_images=None, verify=True, chunk_size=1000, progress=True, overwrite=False):
    """Regenerate CIFAR-10-C from the CIFAR-10 test split, in the official on-disk layout.

    Each ``(corruption, severity, chunk)`` gets its own random stream derived from
    ``random_state``, so the output does not depend on which files already existed or on
    the order of building.  Existing files are kept (the cache); files are written
    atomically, so an interrupted build leaves no truncated ``.npy``.

    Parameters
    ----------
    source : str, path-like or tuple (X, y)
        The CIFAR-10 root (``cifar-10-batches-py/``; its test split is used) or arrays
        ``X`` (N, 3, H, W) in [0, 1] (or uint8) and labels ``y`` (N,).
    out_dir : str or path-like
        Created when missing.
    corruptions : sequence of str, default=None
        ``None`` builds the 15 benchmark corruptions; extras may be named.
    severities : sequence of int, default=(1, 2, 3, 4, 5)
        With all five, ``<name>.npy`` holds the five blocks as in the official release; with
        a subset, one ``<name>_s<k>.npy`` per severity is written (read by the loader, and
        reused when all five are built later).
    random_state : int, default=0
    n_images : int, default=None
        Use only the first ``n_images`` test images (quick, partial builds).
    verify : bool, default=True
        Passed to :func:`~attribshield.data.load_cifar10` when ``source`` is a folder.
    chunk_size : int, default=1000
        Images corrupted per call (bounds memory; part of the seeding, keep it fixed).
    progress : bool, default=True
        Show a tqdm progress bar.
    overwrite : bool, default=False
        Rebuild files that exist.

    Returns
    -------
    out_dir : pathlib.Path

    Raises
    ------
    ValueError
        Invalid arguments, or an ``out_dir`` built with another ``random_state`` or
        ``n_images`` (use another folder or ``overwrite=True``).
    """
    from tqdm.auto import tqdm


    names = _check_corruptions(corruptions)
    sevs = sorted(set(_check_severities(severities)))
    n_images = _check_n_images(n_images)
    check_param("build_cifar10c", "random_state", random_state, [Integral(0, None)])  # it names the cache
    check_param("build_cifar10c", "chunk_size", chunk_size, [Integral(1, None)])
    if out_dir is None or not isinstance(out_dir, (str, os.PathLike)):
        raise ValueError(f"out_dir must be a path, got {out_dir!r}")
    X, y = _source_arrays(source, verify)
    if n_images is not None:
        X, y = X[:n_images], y[:n_images]
    n = len(X)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    settings = {"random_state": int(random_state), "n_images": n, "chunk_size": int(chunk_size),
                "quantize": True, "frost_textures": frost_source(), "format": 1}
    manifest = out / _MANIFEST
    labels_path = out / "labels.npy"
    if manifest.is_file() and not overwrite:
        old = json.loads(manifest.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if k != "frost_textures" and old.get(k) != v}
        if diff:
            raise ValueError(
                f"{out} was built with other settings {diff} (old, new): use another out_dir or overwrite=True"
            )
    elif labels_path.is_file() and not overwrite:
        old_labels = np.load(labels_path)
        if old_labels.shape != (5 * n,) or not (old_labels == np.tile(y, 5)).all():
            raise ValueError(
                f"{labels_path} does not match the {n} source labels: use another out_dir or overwrite=True"
            )
    np.save(labels_path, np.tile(y.astype(np.int64), 5))
    manifest.write_text(json.dumps(settings, indent=1))

    clean = X.astype(np.float32) * np.float32(1 / 255)  # (n, 3, H, W), as load_cifar10 scales
    hwc = (X.shape[2], X.shape[3], 3)
    n_chunks = -(-n // chunk_size)

    def make_block(name, severity, bar):
        part = _severity_file(out, name, severity)
        if part.is_file() and not overwrite:  # reuse a single-severity file built before
            bar.update(n_chunks)
            return np.load(part)
        block = np.empty((n,) + hwc, dtype=np.uint8)
        for k in range(n_chunks):
            seed = np.random.SeedSequence(int(random_state), spawn_key=(ALL_CORRUPTIONS.index(name), severity, k))
            lo, hi = k * chunk_size, min(n, (k + 1) * chunk_size)
            xc = corrupt(clean[lo:hi], name, severity, random_state=np.random.default_rng(seed))
            block[lo:hi] = np.round(xc * 255).astype(np.uint8).transpose(0, 2, 3, 1)
            bar.update(1)
        return block

    todo = []
    for name in names:
        if sevs == list(SEVERITIES):
            if overwrite or not (out / f"{name}.npy").is_file():
                todo.append((name, None))
        else:
            todo += [(name, s) for s in sevs if overwrite or not _severity_file(out, name, s).is_file()]
    total = sum(n_chunks * (5 if s is None else 1) for _, s in todo)
    with tqdm(total=total, disable=not progress, desc="CIFAR-10-C", unit="chunk") as bar:
        for name, s in todo:
            bar.set_postfix_str(name if s is None else f"{name} s{s}")
            if s is None:
                def fill(arr, name=name):
                    for sev in SEVERITIES:
                        arr[(sev - 1) * n:sev * n] = make_block(name, sev, bar)
                _atomic_save(out / f"{name}.npy", fill, (5 * n,) + hwc)
            else:
                _atomic_save(_severity_file(out, name, s),
                             lambda arr, name=name, s=s: arr.__setitem__(slice(None), make_block(name, s, bar)),
                             (n,) + hwc)
    return out


def get_cifar10c(root, cifar10_root=None, corruptions=None, severities=SEVERITIES, *, n_images=None,
                 dtype="float32", random_state=0, verify=True, progress=True):
    """Load CIFAR-10-C from ``root``, building the missing files first when needed.

    Parameters
    ----------
    root : str or path-like
        Folder with the official release, or where to build it.
    cifar10_root : str, path-like or tuple (X, y), default=None
        Source for :func:`build_cifar10c` when files are missing; ``None`` then raises.
    corruptions, severities, n_images, dtype
        As in :func:`load_cifar10c`.
    random_state, verify, progress
        As in :func:`build_cifar10c` (used only when building).

    Returns
    -------
    data : dict
        ``data[name, severity]`` of shape (n, 3, H, W).
    y : numpy.ndarray of shape (n,), int64
    """
    names = _check_corruptions(corruptions)
    sevs = _check_severities(severities)
    rootp = Path(root).expanduser() if isinstance(root, (str, os.PathLike)) else root
    have = (isinstance(rootp, Path) and (rootp / "labels.npy").is_file()
            and all(_available(rootp, nm, s) for nm in names for s in sevs))
    if not have:
        if cifar10_root is None:
            raise FileNotFoundError(
                f"CIFAR-10-C is not (fully) present in {root} and no cifar10_root was given to build it. {_HOWTO}"
            )
        build_cifar10c(cifar10_root, rootp, names, sevs, random_state=random_state, n_images=n_images,
                       verify=verify, progress=progress)
    return load_cifar10c(rootp, names, sevs, n_images=n_images, dtype=dtype)
