"""Tests of CIFAR-10-C: the corruptions, the loader of the official layout and the builder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from attribshield.data import _corruption_kernels as kernels
from attribshield.data.cifar10c import (
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    PARAMETERS,
    build_cifar10c,
    corrupt,
    get_cifar10c,
    iter_cifar10c,
    load_cifar10c,
)

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform", "speckle_noise"}
DETERMINISTIC = set(ALL_CORRUPTIONS) - RANDOM


def smooth_images(n, seed=0):
    """Smooth random colour fields in [0.1, 0.9], quantized to 8 bits like real images."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(n, 3, 32, 32)), (0, 0, 2.5, 2.5))
    x -= x.min(axis=(1, 2, 3), keepdims=True)
    x /= x.max(axis=(1, 2, 3), keepdims=True)
    return (np.round((0.1 + 0.8 * x) * 255) / 255).astype(np.float32)


@pytest.fixture(scope="module")
def images():
    return smooth_images(4)


def test_corruption_lists():
    assert CORRUPTIONS == (
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
        "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
        "elastic_transform", "pixelate", "jpeg_compression",
    )
    assert set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "saturate"}
    assert all(len(PARAMETERS[n]) == 5 for n in ALL_CORRUPTIONS)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_shape_range_dtype_and_seed(images, name):
    for severity in (1, 5):
        out = corrupt(images, name, severity, random_state=0)
        assert isinstance(out, np.ndarray) and out.shape == images.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        # quantize=True: 8-bit values as in the release
        np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-3)
        again = corrupt(images, name, severity, random_state=0)
        np.testing.assert_array_equal(out, again)
        other = corrupt(images, name, severity, random_state=1)
        if name in RANDOM:
            assert not np.array_equal(out, other), f"{name} ignores random_state"
        else:
            np.testing.assert_array_equal(out, other)
    assert not np.array_equal(corrupt(images, name, 5, random_state=0), images)


def dist(a, b, centered=False):
    d = a.astype(np.float64) - b
    if centered:
        d = d - d.mean(axis=(2, 3), keepdims=True)
    return float(np.sqrt((d**2).mean(axis=(1, 2, 3))).mean())


@pytest.fixture(scope="module")
def distances():
    """Mean RMS distance from the clean image at severities 1..5 (16 smooth images, seed 0)."""
    x = smooth_images(16, seed=3)
    out = {}
    for name in ALL_CORRUPTIONS:
        # frost: the image weight falls (1 -> 0.75) while the frost weight rises, so the plain
        # distance is non-monotone (the image darkens less than the frost brightens); the
        # distance after removing each image's mean colour (texture added, structure lost)
        # grows monotonically.
        out[name] = [dist(corrupt(x, name, s, random_state=0), x, centered=name == "frost") for s in range(1, 6)]
    return out


MONOTONE = [n for n in ALL_CORRUPTIONS if n not in {"glass_blur", "motion_blur", "elastic_transform", "saturate"}]


@pytest.mark.parametrize("name", MONOTONE)
def test_distance_grows_with_severity(distances, name):
    d = distances[name]
    assert all(a < b for a, b in zip(d, d[1:])), f"{name}: {np.round(d, 4)}"


def test_non_monotone_corruptions_follow_their_parameters(distances):
    # glass_blur (sigma, delta, iterations) = (.05,1,1), (.25,1,1), (.4,1,1), (.25,1,2), (.4,1,2):
    # within severities 1-3 only the blur grows, and blurring hides the pixel shuffles, so the
    # distance shrinks slightly; a second shuffle pass (4, 5) moves it much farther.  The
    # monotone trend: at equal sigma, 2 iterations > 1 iteration.
    g = distances["glass_blur"]
    assert g[3] > g[1] and g[4] > g[2] and min(g[3:]) > max(g[:3])
    # motion_blur (radius, sigma) = (6,1), (6,1.5), (6,2), (8,2), (9,2.5): the kernel weights
    # exp(-i^2 / 2 sigma^2) are ~0 beyond i = 12 for sigma 2, so severities 3 and 4 coincide
    # (as with ImageMagick's kernel); otherwise the distance grows with sigma.
    m = distances["motion_blur"]
    assert m[0] < m[1] < m[2] < m[4] and abs(m[3] - m[2]) < 1e-3
    # elastic_transform: the affine jitter shrinks 2.56 -> 0.96 px while the elastic field
    # (sub-pixel here) grows, so the pixel distance *falls* with severity in the published
    # parameters: we test that trend.
    e = distances["elastic_transform"]
    assert all(a > b for a, b in zip(e, e[1:])), np.round(e, 4)
    # saturate (extra): severities 1-2 desaturate (factor .3, .1), 3-5 saturate more and more.
    s = distances["saturate"]
    assert s[0] < s[1] and s[2] < s[3] < s[4]


def test_elastic_local_field_grows_with_severity():
    # The elastic part alone (affine jitter set to 0) moves the image farther as severity grows
    # from 2 to 5 (severity 1 has no elastic field).
    x = smooth_images(8, seed=5).transpose(0, 2, 3, 1).astype(np.float64)
    d = []
    for alpha, sigma, _ in PARAMETERS["elastic_transform"][1:]:
        out = kernels._elastic_transform(x, (alpha, sigma, 0.0), np.random.default_rng(0))
        d.append(np.sqrt(((out - x) ** 2).mean()))
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_noise_statistics_match_parameters():
    x = np.full((8, 3, 32, 32), 0.5, dtype=np.float64)
    for s, sigma in enumerate(PARAMETERS["gaussian_noise"], start=1):
        out = corrupt(x, "gaussian_noise", s, random_state=s, quantize=False)
        assert abs((out - x).std() - sigma) < 0.05 * sigma
    out = corrupt(x, "impulse_noise", 5, random_state=0, quantize=False)
    flipped = out != 0.5
    assert abs(flipped.mean() - 0.07) < 0.01 and set(np.unique(out[flipped])) == {0.0, 1.0}
    out = corrupt(x, "contrast", 5, quantize=False)  # uniform image: contrast changes nothing
    np.testing.assert_allclose(out, x, atol=1e-12)


def test_defocus_kernel_and_zoom_match_references():
    k = kernels._disk(0.3, 0.4)  # disk of one pixel blurred by a 3x3 Gaussian
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.4**2))
    np.testing.assert_allclose(k, np.outer(g, g) / np.outer(g, g).sum(), atol=1e-12)
    assert abs(kernels._disk(1.5, 0.1).sum() - 1) < 1e-12
    # zoom as scipy.ndimage.zoom(order=1) of the centre crop, as the generator does
    x = np.random.default_rng(0).random((2, 32, 32, 3))
    for z in (1.03, 1.17, 1.25, 1.75):
        ch = int(np.ceil(32 / z))
        top = (32 - ch) // 2
        ref = ndimage.zoom(x[:, top:top + ch, top:top + ch], (1, z, z, 1), order=1)
        t = (ref.shape[1] - 32) // 2
        np.testing.assert_allclose(kernels._clipped_zoom(x, z), ref[:, t:t + 32, t:t + 32], atol=1e-12)


def test_glass_blur_copies_like_the_generator():
    # with sigma ~ 0 every output pixel comes from itself or an up/left neighbour
    x = np.arange(32 * 32 * 3, dtype=np.float64).reshape(1, 32, 32, 3) / (32 * 32 * 3)
    out = kernels._glass_blur(x, (1e-6, 1, 1), np.random.default_rng(0))
    src = kernels._to_uint8_trunc(x) / 255
    moved = 0
    for i in range(2, 32):
        for j in range(2, 32):
            cands = [src[0, i + di, j + dj] for di in (-1, 0) for dj in (-1, 0)]
            assert any(np.allclose(out[0, i, j], c, atol=1e-6) for c in cands)
            moved += not np.allclose(out[0, i, j], src[0, i, j], atol=1e-6)
    assert moved > 0.5 * 30 * 30


def test_types_devices_and_quantize(images):
    t = torch.from_numpy(images).double()
    out = corrupt(t, "fog", 3, random_state=0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.device == t.device
    np.testing.assert_allclose(out.numpy(), corrupt(images, "fog", 3, random_state=0), atol=1e-6)
    u8 = np.round(images * 255).astype(np.uint8)
    out8 = corrupt(u8, "contrast", 2)
    assert out8.dtype == np.uint8
    np.testing.assert_array_equal(out8, np.round(corrupt(images, "contrast", 2) * 255))
    raw = corrupt(images, "contrast", 2, quantize=False)
    assert not np.allclose(raw * 255, np.round(raw * 255))
    assert np.all(raw - corrupt(images, "contrast", 2) >= -1e-6)  # truncation, as np.uint8 does


@settings(deadline=None, max_examples=10)
@given(name=st.sampled_from(ALL_CORRUPTIONS), severity=st.integers(1, 5), seed=st.integers(0, 2**16),
       n=st.integers(1, 3), const=st.floats(0.0, 1.0))
def test_property_range_and_shape(name, severity, seed, n, const):
    rng = np.random.default_rng(seed)
    x = np.clip(const + 0.3 * rng.standard_normal((n, 3, 32, 32)), 0, 1).astype(np.float32)
    out = corrupt(x, name, severity, random_state=seed)
    assert out.shape == x.shape and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "args, match",
    [
        (("blur", 1), "unknown corruption"),
        (("spatter", 1), "spatter"),
        (("fog", 0), "severity"),
        (("fog", 6), "severity"),
        (("fog", 2.5), "severity"),
        (("fog", True), "severity"),
    ],
)
def test_bad_name_or_severity(images, args, match):
    with pytest.raises(ValueError, match=match):
        corrupt(images, *args)


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((2, 1, 32, 32), np.float32), "3 colour channels"),
        (np.zeros((3, 32, 32), np.float32), "dimensions"),
        (np.full((1, 3, 32, 32), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((1, 3, 32, 32), np.nan, np.float32), "non-finite"),
        (np.zeros((1, 3, 4, 4), np.float32), "8x8"),
        (np.zeros((0, 3, 32, 32), np.float32), "empty"),
    ],
)
def test_bad_images(X, match):
    with pytest.raises(ValueError, match=match):
        corrupt(X, "contrast", 1)


# ---------------------------------------------------------------------------------------------
# loader (official layout) and builder


def _write_official(root, n=4, names=("fog", "contrast")):
    root.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % 10
    np.save(root / "labels.npy", np.tile(labels, 5))
    for k, name in enumerate(names):
        arr = np.zeros((5 * n, 32, 32, 3), np.uint8)
        for s in range(5):
            arr[s * n:(s + 1) * n] = 10 * (s + 1) + k  # each block recognisable
        arr[:, 0, 1, 2] = np.arange(5 * n)  # and each row, in HWC order
        np.save(root / f"{name}.npy", arr)
    return labels


def test_loader_reads_official_layout(tmp_path):
    labels = _write_official(tmp_path)
    data, y = load_cifar10c(tmp_path, ["fog", "contrast"], [2, 5], dtype="uint8")
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64 and set(data) == {("fog", 2), ("fog", 5), ("contrast", 2), ("contrast", 5)}
    X = data["contrast", 5]
    assert X.shape == (4, 3, 32, 32) and X.dtype == np.uint8
    assert X[0, 0, 0, 0] == 51 and X[0, 1, 0, 0] == 51
    np.testing.assert_array_equal(X[:, 2, 0, 1], np.arange(16, 20))  # rows 16..19 = severity 5
    data, y = load_cifar10c(tmp_path, "fog", 1, n_images=2)
    assert data["fog", 1].shape == (2, 3, 32, 32) and data["fog", 1].dtype == np.float32
    assert np.allclose(data["fog", 1][:, 0], 10 / 255) and len(y) == 2
    blocks = list(iter_cifar10c(tmp_path, ["fog"], (3, 4), dtype="uint8"))
    assert [(n, s) for n, s, _ in blocks] == [("fog", 3), ("fog", 4)] and blocks[1][2][0, 0, 5, 5] == 40


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_cifar10c"):
        load_cifar10c(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_cifar10c(tmp_path)
    _write_official(tmp_path)
    with pytest.raises(FileNotFoundError, match="snow"):
        load_cifar10c(tmp_path, ["fog", "snow"])
    with pytest.raises(ValueError, match="unknown corruption"):
        load_cifar10c(tmp_path, ["fogg"])
    with pytest.raises(ValueError, match="severity"):
        load_cifar10c(tmp_path, ["fog"], [0])
    with pytest.raises(ValueError, match="dtype"):
        load_cifar10c(tmp_path, ["fog"], dtype="float16")
    np.save(tmp_path / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 of shape"):
        load_cifar10c(tmp_path, ["fog"])


def test_build_then_load_round_trip(tmp_path):
    X = smooth_images(5, seed=7)
    y = np.array([3, 1, 4, 1, 5])
    names = ["gaussian_noise", "contrast"]
    out = build_cifar10c((X, y), tmp_path / "c", names, random_state=0, chunk_size=3, progress=False)
    assert json.loads((out / "attribshield_build.json").read_text())["random_state"] == 0
    raw = np.load(out / "contrast.npy")
    assert raw.shape == (25, 32, 32, 3) and raw.dtype == np.uint8
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.tile(y, 5))
    data, yy = load_cifar10c(out, names)
    np.testing.assert_array_equal(yy, y)
    for s in range(1, 6):  # deterministic corruption: identical to corrupt()
        np.testing.assert_allclose(data["contrast", s], corrupt(X, "contrast", s), atol=1e-6)
        assert data["gaussian_noise", s].shape == X.shape
    # seeded: a second build elsewhere gives the same bytes; another seed does not
    again = build_cifar10c((X, y), tmp_path / "d", ["gaussian_noise"], random_state=0, chunk_size=3, progress=False)
    np.testing.assert_array_equal(np.load(again / "gaussian_noise.npy"), np.load(out / "gaussian_noise.npy"))
    other = build_cifar10c((X, y), tmp_path / "e", ["gaussian_noise"], random_state=1, chunk_size=3, progress=False)
    assert not np.array_equal(np.load(other / "gaussian_noise.npy"), np.load(out / "gaussian_noise.npy"))
    # cached: existing files are not rebuilt
    np.save(out / "contrast.npy", np.zeros_like(raw))
    build_cifar10c((X, y), out, names, random_state=0, chunk_size=3, progress=False)
    assert np.load(out / "contrast.npy").max() == 0
    with pytest.raises(ValueError, match="other settings"):
        build_cifar10c((X, y), out, names, random_state=5, chunk_size=3, progress=False)


def test_build_subset_of_severities_then_all(tmp_path):
    X = smooth_images(3, seed=1)
    y = np.array([0, 1, 2])
    build_cifar10c((X, y), tmp_path, ["fog"], severities=[2], progress=False)
    assert (tmp_path / "fog_s2.npy").is_file() and not (tmp_path / "fog.npy").exists()
    part, _ = load_cifar10c(tmp_path, ["fog"], [2])
    with pytest.raises(FileNotFoundError, match="severity 3"):
        load_cifar10c(tmp_path, ["fog"], [3])
    full, _ = get_cifar10c(tmp_path, (X, y), ["fog"], progress=False)
    assert (tmp_path / "fog.npy").is_file()
    np.testing.assert_array_equal(full["fog", 2], part["fog", 2])
    assert len(full) == 5


def test_get_cifar10c_needs_a_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10_root"):
        get_cifar10c(tmp_path, None, ["fog"])


def test_build_bad_arguments(tmp_path):
    X, y = smooth_images(2), np.array([0, 1])
    with pytest.raises(ValueError, match="random_state"):
        build_cifar10c((X, y), tmp_path, ["fog"], random_state=None, progress=False)
    with pytest.raises(ValueError, match="source"):
        build_cifar10c(X, tmp_path, ["fog"], progress=False)
    with pytest.raises(ValueError, match="different lengths"):
        build_cifar10c((X, y[:1]), tmp_path, ["fog"], progress=False)
    with pytest.raises(ValueError, match="n_images"):
        build_cifar10c((X, y), tmp_path, ["fog"], n_images=0, progress=False)


def test_build_from_real_cifar10(cifar10_root, tmp_path):
    out = build_cifar10c(cifar10_root, tmp_path, ["brightness"], n_images=3, verify=False, progress=False)
    data, y = load_cifar10c(out, ["brightness"], [1, 5])
    from attribshield.data import load_cifar10

    Xt, yt = load_cifar10(cifar10_root, train=False, verify=False)
    np.testing.assert_array_equal(y, yt[:3])
    np.testing.assert_allclose(data["brightness", 5], corrupt(Xt[:3], "brightness", 5), atol=1e-6)
    assert data["brightness", 5].mean() > data["brightness", 1].mean() > Xt[:3].mean()


def test_frost_textures_procedural_and_photos():
    from attribshield.data import _frost

    assert _frost.frost_source() in ("imagecorruptions", "procedural")
    proc = _frost.frost_textures("procedural")
    assert len(proc) == 5 and all(t.dtype == np.uint8 and t.ndim == 3 and t.shape[2] == 3 for t in proc)
    for tex, (shape, mean, std) in zip(proc, _frost._PHOTO_STATS):
        assert tex.shape[:2] == shape
        np.testing.assert_allclose(tex.reshape(-1, 3).mean(0), mean, atol=3)
        np.testing.assert_allclose(tex.reshape(-1, 3).std(0), std, rtol=0.15)
    np.testing.assert_array_equal(proc[0], _frost._procedural()[0])  # seeded
    x = smooth_images(3).transpose(0, 2, 3, 1).astype(np.float64)
    out = kernels._frost(x, PARAMETERS["frost"][4], np.random.default_rng(0), textures=proc)
    assert out.shape == x.shape and (out >= x * 0.75 - 1e-12).all() and (out - 0.75 * x).mean() > 0.1
    with pytest.raises(ValueError, match="procedural"):
        _frost.frost_textures("photos")
    if _frost.frost_source() == "imagecorruptions":
        photos = _frost.frost_textures("imagecorruptions")
        assert [t.shape[:2] for t in photos] == [s for s, _, _ in _frost._PHOTO_STATS]
