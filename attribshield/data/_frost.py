"""Frost textures for the ``frost`` corruption of CIFAR-10-C.

The published generator blends each image with a random crop of one of five frost photographs
(``frost1.png`` .. ``frost5.jpg``; it draws ``randint(5)``, so a sixth file it ships is never
used), each first shrunk to 0.2 of its size with OpenCV's bilinear ``resize``.  The
``imagecorruptions`` package (optional extra ``attribshield[cifar10c]``) ships those photos; we
read them as plain files (its Python module, which needs OpenCV, is never imported).

Without the package, :func:`frost_textures` returns five *procedural* ice-crystal textures:
seeded, deterministic, with the per-channel mean and standard deviation of the five photos
(measured on the shrunk photos), but not the photos themselves.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["frost_textures", "frost_source"]

_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

# Per-channel mean and std (0..255) of the five photos after the 0.2 shrink, and their sizes.
_PHOTO_STATS = (
    ((120, 180), (77.5, 149.0, 165.7), (26.8, 16.4, 15.3)),
    ((63, 112), (200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
    ((63, 112), (200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
    ((70, 105), (138.0, 153.2, 165.6), (29.0, 29.0, 30.2)),
    ((99, 132), (112.3, 123.3, 134.7), (44.3, 43.2, 41.6)),
)


def _package_dir() -> Path | None:
    """Folder of the installed ``imagecorruptions`` frost photos, found without importing it."""
    try:
        spec = importlib.util.find_spec("imagecorruptions")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "frost"
        if all((folder / f).is_file() for f in _FILES):
            return folder
    return None


def frost_source() -> str:
    """``"imagecorruptions"`` when the frost photos are installed, else ``"procedural"``."""
    return "imagecorruptions" if _package_dir() is not None else "procedural"


def _shrink(img: np.ndarray, factor: int = 5) -> np.ndarray:
    """OpenCV's ``resize(fx=0.2, fy=0.2, INTER_LINEAR)`` without OpenCV.

    Destination pixel ``i`` maps to source coordinate ``(i + 0.5) * 5 - 0.5 = 5 i + 2``: an
    integer, so bilinear interpolation reduces to picking that pixel (no anti-aliasing).
    """
    h, w = img.shape[:2]
    nh, nw = int(round(h / factor)), int(round(w / factor))
    rows = np.minimum(factor * np.arange(nh) + factor // 2, h - 1)
    cols = np.minimum(factor * np.arange(nw) + factor // 2, w - 1)
    return img[rows][:, cols]


def _load_photos(folder: Path) -> tuple[np.ndarray, ...]:
    from PIL import Image

    out = []
    for name in _FILES:
        with Image.open(folder / name) as im:
            out.append(np.ascontiguousarray(_shrink(np.asarray(im.convert("RGB"), dtype=np.uint8))))
    return tuple(out)


def _ice_pattern(shape, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std ice-crystal pattern: branching needles over haze and grain."""
    from skimage.draw import line_aa

    h, w = shape
    needles = np.zeros((h, w))
    n_seeds = max(4, h * w // 400)
    for _ in range(n_seeds):
        r0, c0 = rng.uniform(0, h), rng.uniform(0, w)
        base = rng.uniform(0, np.pi)
        for k in range(rng.integers(3, 7)):  # a star of needles (hexagonal-ish)
            ang = base + k * np.pi / 3 + rng.normal(0, 0.15)
            length = rng.uniform(6, 30)
            strength = rng.uniform(0.4, 1.0)
            steps = np.linspace(0, length, 4)
            for t0, t1 in zip(steps[:-1], steps[1:]):
                ra, ca = r0 + t0 * np.sin(ang), c0 + t0 * np.cos(ang)
                rb, cb = r0 + t1 * np.sin(ang), c0 + t1 * np.cos(ang)
                rr, cc, val = line_aa(int(ra), int(ca), int(rb), int(cb))
                ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                needles[rr[ok], cc[ok]] += strength * val[ok]
                for side in (-1, 1):  # side branches at +-60 degrees
                    if rng.random() < 0.5:
                        b = ang + side * np.pi / 3
                        bl = rng.uniform(2, 0.5 * length)
                        rr, cc, val = line_aa(int(rb), int(cb), int(rb + bl * np.sin(b)), int(cb + bl * np.cos(b)))
                        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                        needles[rr[ok], cc[ok]] += 0.6 * strength * val[ok]
    needles = ndimage.gaussian_filter(needles, 0.6)
    haze = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6, mode="wrap")
    grain = ndimage.gaussian_filter(rng.normal(size=(h, w)), 0.7, mode="wrap")
    parts = [p / (p.std() + 1e-12) for p in (needles, haze, grain)]
    pattern = 0.6 * parts[0] + 0.5 * parts[1] + 1.0 * parts[2]
    return (pattern - pattern.mean()) / pattern.std()


def _procedural() -> tuple[np.ndarray, ...]:
    out = []
    for seed, (shape, mean, std) in enumerate(_PHOTO_STATS):
        rng = np.random.default_rng(seed + 2019)
        pattern = _ice_pattern(shape, rng)
        tex = np.asarray(mean)[None, None, :] + np.asarray(std)[None, None, :] * pattern[..., None]
        out.append(np.clip(np.round(tex), 0, 255).astype(np.uint8))
    return tuple(out)


@functools.lru_cache(maxsize=2)
def _textures(source: str) -> tuple[np.ndarray, ...]:
    if source == "imagecorruptions":
        folder = _package_dir()
        if folder is None:  # pragma: no cover - checked by the caller
            raise ValueError("the imagecorruptions frost photos are not installed")
        return _load_photos(folder)
    return _procedural()


def frost_textures(source: str | None = None) -> tuple[np.ndarray, ...]:
    """The five frost textures as uint8 RGB arrays of shape (h_k, w_k, 3), already shrunk.

    Parameters
    ----------
    source : {None, "imagecorruptions", "procedural"}, default=None
        ``None`` picks the photos when ``imagecorruptions`` is installed, else the procedural
        textures.
    """
    if source is None:
        source = frost_source()
    if source not in ("imagecorruptions", "procedural"):
        raise ValueError(f"frost texture source must be 'imagecorruptions' or 'procedural', got {source!r}")
    if source == "imagecorruptions" and _package_dir() is None:
        raise ValueError(
            "frost texture source 'imagecorruptions' requested but the package is not installed: "
            "pip install 'attribshield[cifar10c]' (or imagecorruptions --no-deps)"
        )
    return _textures(source)
