"""CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019): parameters, kernels, :func:`corrupt`.

The 18 corruptions of the published generator at its 32x32 parameters (``PARAMETERS``),
re-implemented with numpy, scipy, scikit-image and PIL (no OpenCV, no ImageMagick, no Wand).
Each kernel is ``f(x, c, rng)`` on a float64 batch ``(N, H, W, 3)`` in [0, 1] with one
severity's parameters ``c``; :func:`corrupt` validates its inputs, applies one kernel and
quantizes as the generator does.

The public names are re-exported by :mod:`attribshield.data.cifar10c` (import them from there
or from :mod:`attribshield.data`), which reads and builds the on-disk data set.  Where the
re-implementation differs from the published generator is listed in ``docs/data.md``.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from scipy import ndimage

from attribshield._params import Integral, check_param
from attribshield._utils import numpy_rng
from attribshield.data._frost import frost_textures

__all__ = ["CORRUPTIONS", "EXTRA_CORRUPTIONS", "ALL_CORRUPTIONS", "SEVERITIES", "PARAMETERS", "corrupt"]

#: The 15 benchmark corruptions, in the canonical order (noise, blur, weather, digital).
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: The held-out corruptions (not in the benchmark mean). ``spatter`` is not implemented.
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)

_S = 32  # the generator's image size: elastic_transform's parameters are fractions of it
#: Published parameters for 32x32 images, one entry per severity 1..5.
PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": tuple(tuple(1 + 0.01 * k for k in range(n + 1)) for n in (5, 10, 15, 20, 25)),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "elastic_transform": tuple(
        (_S * a, _S * s, _S * f)
        for a, s, f in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
    ),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

# ----------------------------------------------------------------------------------------------
# helpers (images are float64 batches (N, H, W, 3) in [0, 1], as the generator's HxWx3 arrays)


def _gaussian(x, sigma):
    """skimage ``gaussian(x, sigma, channel_axis=-1)`` on a batch: mode 'nearest', truncate 4."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)


# Values within this distance (in 0..255 units) below an integer count as that integer: float32
# inputs carry ~1e-5 of rounding noise there, which would otherwise flip a truncation.
_TRUNC_TOL = 1e-3


def _to_uint8_trunc(x):
    """``np.uint8(x * 255)`` as the generator does: truncation toward zero, not rounding."""
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + _TRUNC_TOL)


def _zoom_matrix(n_in, factor):
    """Linear-interpolation matrix of ``scipy.ndimage.zoom(order=1)`` along one axis.

    scipy maps output sample ``o`` to input coordinate ``o (n_in - 1) / (n_out - 1)`` with
    ``n_out = round(n_in * factor)``; every coordinate lies inside, so no border mode is needed.
    """
    n_out = int(round(n_in * factor))
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.arange(n_out), lo), 1 - frac)
    np.add.at(mat, (np.arange(n_out), hi), frac)
    return mat


def _clipped_zoom(x, factor):
    """Zoom the centre of each (N, H, W, C) image by ``factor`` (bilinear) and crop to H x W.

    Same result as the generator's ``scipy.ndimage.zoom(crop, (factor, factor, 1), order=1)``
    followed by the central crop, computed as two small matrix products over the batch.
    """
    h, w = x.shape[1:3]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    rows, cols = _zoom_matrix(ch, factor), _zoom_matrix(cw, factor)
    th, tw = (rows.shape[0] - h) // 2, (cols.shape[0] - w) // 2
    rows, cols = rows[th:th + h], cols[tw:tw + w]
    crop = x[:, top:top + ch, left:left + cw].transpose(0, 3, 1, 2)  # (N, C, ch, cw)
    return (rows @ crop @ cols.T).transpose(0, 2, 3, 1)


def _motion(x, radius, sigma, angles):
    """One-sided linear motion blur, one angle (degrees) per image, edge-replicated borders.

    Output pixel ``p`` is ``sum_i k_i x(p + round(i * (sin a, cos a)))`` for ``i = 0..2r`` with
    ``k_i`` proportional to ``exp(-i^2 / (2 sigma^2))``: the kernel ImageMagick's
    ``-motion-blur radius x sigma + angle`` uses (width 2r+1).
    """
    n, h, w = x.shape[:3]
    width = 2 * int(radius) + 1
    k = np.exp(-(np.arange(width) ** 2) / (2.0 * sigma**2))
    k /= k.sum()
    rad = np.deg2rad(np.asarray(angles, dtype=np.float64))
    out = np.zeros_like(x)
    rows, cols = np.arange(h), np.arange(w)
    batch = np.arange(n)[:, None, None]
    for i in range(width):
        dy = np.ceil(i * np.sin(rad) - 0.5).astype(np.int64)
        dx = np.ceil(i * np.cos(rad) - 0.5).astype(np.int64)
        r = np.clip(rows[None, :] + dy[:, None], 0, h - 1)[:, :, None]
        c = np.clip(cols[None, :] + dx[:, None], 0, w - 1)[:, None, :]
        out += k[i] * x[batch, r, c]
    return out


def _disk(radius, alias_blur):
    """Anti-aliased disk kernel of the generator, trimmed to its non-zero support."""
    half = 8 if radius <= 8 else int(np.ceil(radius))
    grid = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    ks = 3 if radius <= 8 else 5
    t = np.arange(ks) - ks // 2
    g = np.exp(-(t**2) / (2.0 * alias_blur**2))
    g /= g.sum()
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    disk = ndimage.correlate1d(disk, g, axis=1, mode="mirror")
    nz_r, nz_c = np.nonzero(disk)
    return disk[nz_r.min():nz_r.max() + 1, nz_c.min():nz_c.max() + 1]


def _bilinear(x, rows, cols, mode):
    """Sample each image of (N, H, W, C) at float coordinates (N, H, W) (bilinear, per channel)."""
    n, h, w, c = x.shape
    planes = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n * c, h, w)
    nn = np.broadcast_to(np.arange(n * c, dtype=np.float64)[:, None, None], (n * c, h, w))
    rr = np.repeat(rows, c, axis=0)
    cc = np.repeat(cols, c, axis=0)
    out = ndimage.map_coordinates(planes, [nn, rr, cc], order=1, mode=mode)
    return out.reshape(n, c, h, w).transpose(0, 2, 3, 1)


def _plasma(n, mapsize, decay, rng):
    """Diamond-square plasma fractal, one (mapsize, mapsize) map per image, scaled to [0, 1]."""
    m = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def jitter(a):
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + np.roll(corner, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half::step, half::step] = jitter(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = jitter(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2))
        m[:, half::step, 0::step] = jitter(dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1))
        step //= 2
        wibble /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _hsv_channel(x, channel, fn):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(x)
    hsv[..., channel] = np.clip(fn(hsv[..., channel]), 0, 1)
    return hsv2rgb(hsv)


def _per_image_pil(x, fn):
    from PIL import Image

    u8 = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    out = np.empty(x.shape, dtype=np.float64)
    for i in range(len(u8)):
        out[i] = np.asarray(fn(Image.fromarray(u8[i])), dtype=np.float64) / 255.0
    return out


# ----------------------------------------------------------------------------------------------
# the corruptions: f(x, c, rng) on (N, H, W, 3) float64 in [0, 1]


def _gaussian_noise(x, c, rng):
    return x + rng.normal(0.0, c, x.shape)


def _shot_noise(x, c, rng):
    return rng.poisson(x * c) / c


def _impulse_noise(x, c, rng):
    # skimage random_noise(mode='s&p', amount=c): each value (per channel) flips with
    # probability c, to 1 or 0 with equal odds.
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def _speckle_noise(x, c, rng):
    return x + x * rng.normal(0.0, c, x.shape)


def _gaussian_blur(x, c, rng):
    return _gaussian(x, c)


def _defocus_blur(x, c, rng):
    kernel = _disk(*c)
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


def _glass_blur(x, c, rng):
    sigma, delta, iterations = c
    n, h, w = x.shape[:3]
    x = _to_uint8_trunc(_gaussian(x, sigma))
    batch = np.arange(n)
    positions = [(i, j) for i in range(h - delta, delta, -1) for j in range(w - delta, delta, -1)]
    for _ in range(iterations):
        d = rng.integers(-delta, delta, size=(len(positions), 2, n))
        for (i, j), (dx, dy) in zip(positions, d):
            # The generator writes ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy rows:
            # the right-hand side holds views, so this copies x[h', w'] into x[h, w] and leaves
            # x[h', w'] unchanged.  We reproduce that (not a true swap) to match the release.
            x[batch, i, j] = x[batch, i + dy, j + dx]
    return _gaussian(x / 255.0, sigma)


def _motion_blur(x, c, rng):
    radius, sigma = c
    angles = rng.uniform(-45, 45, size=len(x))
    return _motion(x, radius, sigma, angles)


def _zoom_blur(x, c, rng):
    out = x.copy()
    for factor in c:
        out += _clipped_zoom(x, factor)
    return out / (len(c) + 1)


def _snow(x, c, rng):
    loc, scale, zoom, threshold, radius, sigma, blend = c
    n, h, w = x.shape[:3]
    layer = rng.normal(loc, scale, size=(n, h, w, 1))
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255.0  # the generator stores it as 8-bit
    layer = _motion(layer, radius, sigma, rng.uniform(-135, -45, size=n))
    layer = np.round(layer * 255) / 255.0  # ImageMagick returns 8-bit
    gray = x @ np.array([0.299, 0.587, 0.114])
    x = blend * x + (1 - blend) * np.maximum(x, gray[..., None] * 1.5 + 0.5)
    return x + layer + layer[:, ::-1, ::-1]


def _frost(x, c, rng, textures=None):

    textures = frost_textures() if textures is None else textures
    n, h, w = x.shape[:3]
    out = np.empty_like(x)
    which = rng.integers(len(textures), size=n)
    for i in range(n):
        tex = textures[which[i]]
        if tex.shape[0] <= h or tex.shape[1] <= w:  # images larger than the texture: tile it
            reps = (h // tex.shape[0] + 2, w // tex.shape[1] + 2, 1)
            tex = np.tile(tex, reps)
        r0 = rng.integers(0, tex.shape[0] - h)
        c0 = rng.integers(0, tex.shape[1] - w)
        out[i] = c[0] * x[i] + c[1] * tex[r0:r0 + h, c0:c0 + w] / 255.0
    return out


def _fog(x, c, rng):
    strength, decay = c
    n, h, w = x.shape[:3]
    size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma(n, size, decay, rng)[:, :h, :w, None]
    return x * max_val / (max_val + strength)


def _brightness(x, c, rng):
    return _hsv_channel(x, 2, lambda v: v + c)


def _contrast(x, c, rng):
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def _saturate(x, c, rng):
    return _hsv_channel(x, 1, lambda s: s * c[0] + c[1])


def _elastic_transform(x, c, rng):
    alpha, sigma, affine = c
    n, h, w = x.shape[:3]
    # 1. random affine: three points (x, y) jittered by up to `affine` pixels (OpenCV's
    #    getAffineTransform + warpAffine, bilinear, BORDER_REFLECT_101 = scipy 'mirror').
    centre = np.array([w // 2, h // 2], dtype=np.float64)
    half = min(h, w) // 3
    src = np.array([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src[None] + rng.uniform(-affine, affine, size=(n, 3, 2))
    ones = np.ones((3, 1))
    m = np.linalg.solve(np.hstack([src, ones])[None], dst)  # (n, 3, 2): [x y 1] @ m = dst
    a = np.transpose(m[:, :2, :], (0, 2, 1))  # (n, 2, 2) linear part acting on (x, y)
    b = m[:, 2, :]
    a_inv = np.linalg.inv(a)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    p = np.stack([xx, yy], axis=-1)[None] - b[:, None, None, :]  # (n, h, w, 2)
    q = np.einsum("nij,nhwj->nhwi", a_inv, p)  # source (x, y) of each output pixel
    x = _bilinear(x, q[..., 1], q[..., 0], mode="mirror")
    # 2. elastic displacement: Gaussian-smoothed uniform noise scaled by alpha
    #    (skimage gaussian, mode 'reflect', truncate 3), then scipy map_coordinates 'reflect'.
    noise = rng.uniform(-1, 1, size=(2, n, h, w))
    disp = ndimage.gaussian_filter(noise, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=3.0) * alpha
    dx, dy = disp[0], disp[1]
    return _bilinear(x, yy[None] + dy, xx[None] + dx, mode="reflect")


def _pixelate(x, c, rng):
    from PIL import Image

    h, w = x.shape[1:3]
    small = (int(w * c), int(h * c))
    return _per_image_pil(x, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.BOX))


def _jpeg_compression(x, c, rng):
    from PIL import Image

    def encode(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=c)
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert("RGB").copy()

    return _per_image_pil(x, encode)


_FUNCS = {name: globals()[f"_{name}"] for name in ALL_CORRUPTIONS}


# ----------------------------------------------------------------------------------------------
# validation and the public entry point


def _check_name(name):
    if not isinstance(name, str) or name not in _FUNCS:
        hint = " ('spatter' is not implemented)" if name == "spatter" else ""
        raise ValueError(f"unknown corruption {name!r}{hint}; choose one of {', '.join(ALL_CORRUPTIONS)}")
    return name


def _check_severity(severity, owner="corrupt"):
    check_param(owner, "severity", severity, [Integral(1, 5)])
    return int(severity)


def _check_batch(X, name="X"):
    """Validate an image batch with numpy only (no torch kernels: they are slow on tiny arrays
    when threads are contended) and return it as a numpy array (uint8 or float)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        arr = X.numpy() if X.dtype not in (torch.bfloat16,) else X.float().numpy()
    else:
        arr = np.asarray(X)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "uif":
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got dtype={arr.dtype}")
    if arr.ndim != 4:
        raise ValueError(
            f"{name} must have 4 dimensions (N, 3, H, W), got {arr.ndim} dimensions with shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: got 0 samples (shape {arr.shape})")
    if arr.shape[1] != 3:
        raise ValueError(f"{name} must have 3 colour channels (N, 3, H, W), got shape {arr.shape}")
    if arr.shape[2] < 8 or arr.shape[3] < 8:
        raise ValueError(f"images must be at least 8x8 pixels, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must be float in [0, 1] or uint8 in 0..255, got integer dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite values (NaN or inf)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1], got min={lo:.4g} max={hi:.4g}")
    return arr


def corrupt(X, name, severity, random_state=None, *, quantize=True):
    """Apply one CIFAR-10-C corruption at one severity to a batch of images.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (N, 3, H, W)
        Float values in [0, 1] (or uint8 in 0..255).  The parameters are the published ones for
        32x32 images; other sizes work but are not calibrated.
    name : str
        One of :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
    severity : int
        1 (mildest) to 5.
    random_state : None, int or numpy.random.Generator, default=None
        Seeds the random parts (noise, glass-blur shuffles, blur angles, snow, frost crops,
        fog, elastic fields).  ``None`` draws fresh entropy.
    quantize : bool, default=True
        Store the result in 8 bits as the published generator does (``np.uint8(x * 255)``,
        i.e. truncation), so values are multiples of 1/255.  ``False`` keeps full precision.

    Returns
    -------
    X_c : same type as ``X``, shape (N, 3, H, W)
        Values in [0, 1]; same dtype (uint8 inputs give uint8) and, for tensors, same device
        (the work itself runs on the CPU).

    Raises
    ------
    ValueError
        Unknown ``name``, ``severity`` outside 1..5, or images that are not a valid
        (N, 3, H, W) batch in [0, 1] with H, W >= 8.

    Examples
    --------
    >>> import numpy as np
    >>> from attribshield.data.cifar10c import corrupt
    >>> X = np.full((2, 3, 32, 32), 0.5, dtype=np.float32)
    >>> Xc = corrupt(X, "gaussian_noise", 3, random_state=0)
    >>> Xc.shape, Xc.dtype, bool(Xc.min() >= 0 and Xc.max() <= 1)
    ((2, 3, 32, 32), dtype('float32'), True)
    """
    _check_name(name)
    c = PARAMETERS[name][_check_severity(severity) - 1]
    is_tensor = isinstance(X, torch.Tensor)
    arr = _check_batch(X)
    in_dtype = X.dtype if is_tensor else arr.dtype
    rng = numpy_rng(random_state)
    x = arr.astype(np.float64).transpose(0, 2, 3, 1)
    if arr.dtype == np.uint8:
        x /= 255.0
    out = np.clip(_FUNCS[name](x, c, rng), 0.0, 1.0)
    if quantize:
        out = _to_uint8_trunc(out) / 255.0
    out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    if is_tensor:
        res = torch.from_numpy(np.round(out * 255).astype(np.uint8) if in_dtype == torch.uint8 else out)
        return res.to(device=X.device, dtype=in_dtype)
    if in_dtype == np.uint8:
        return np.round(out * 255).astype(np.uint8)
    return out.astype(in_dtype, copy=False)
