"""Tests of attribshield.data.shortcut: the Decoy-MNIST-style corner patch and its oracle masks."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

import attribshield.data.shortcut as shortcut_module
from attribshield.data import (
    CORNERS,
    plant_shortcut,
    shortcut_palette,
    shortcut_pixel_mask,
    shortcut_segment_mask,
)
from attribshield.explainers import default_segmenter
from attribshield.maskers.fill import pixel_mask

FAST = settings(deadline=None, max_examples=12)


def images(n=8, c=3, h=8, w=8, seed=0, kind="float32", backend="numpy"):
    rng = np.random.default_rng(seed)
    if kind == "uint8":
        X = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    else:
        X = rng.random((n, c, h, w)).astype(kind)
    y = rng.integers(0, 5, size=n)
    return (torch.from_numpy(X) if backend == "torch" else X), y


def to_np(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def read_patch(Xp, info):
    """The colour of each planted square read from the pixels (all pixels of a square agree)."""
    Xp, p = to_np(Xp), info["patch_size"]
    h, w = info["image_shape"]
    out = []
    for i, k in enumerate(info["corner"]):
        top = 0 if k < 2 else h - p
        left = 0 if k % 2 == 0 else w - p
        sq = Xp[i, :, top:top + p, left:left + p].reshape(Xp.shape[1], -1)
        assert (sq == sq[:, :1]).all(), "the square is not of one colour"
        out.append(sq[:, 0])
    return np.stack(out)


def class_of_colour(colours, palette):
    """Index of each colour in the palette (fails if a colour is not in it)."""
    eq = (colours[:, None, :] == palette[None, :, :]).all(-1)
    assert (eq.sum(1) == 1).all()
    return eq.argmax(1)


def test_docstring_examples():
    res = doctest.testmod(shortcut_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


# ---------------------------------------------------------------- only the patch changes
@FAST
@given(seed=st.integers(0, 10_000), c=st.sampled_from([1, 3]), hw=st.sampled_from([(8, 8), (6, 10), (5, 5)]),
       p=st.integers(1, 5), kind=st.sampled_from(["float32", "float64", "uint8"]),
       backend=st.sampled_from(["numpy", "torch"]), rho=st.floats(0, 1), shift=st.integers(-7, 7))
def test_only_patch_pixels_change_and_type_is_kept(seed, c, hw, p, kind, backend, rho, shift):
    h, w = hw
    p = min(p, h, w)
    X, y = images(n=6, c=c, h=h, w=w, seed=seed, kind=kind, backend=backend)
    X0 = X.copy() if backend == "numpy" else X.clone()
    Xp, info = plant_shortcut(X, y, rho=rho, patch_size=p, label_shift=shift, n_classes=5, random_state=seed,
                              return_info=True)
    assert type(Xp) is type(X) and Xp.shape == X.shape and Xp.dtype == X.dtype
    assert (to_np(X) == to_np(X0)).all(), "the input was modified"
    mask = shortcut_pixel_mask(info).numpy()  # (N, 1, H, W)
    assert mask.sum(axis=(1, 2, 3)).tolist() == [p * p] * 6
    outside = np.broadcast_to(~mask, X.shape)
    assert (to_np(Xp)[outside] == to_np(X)[outside]).all()
    # inside: exactly the palette colour of the recorded class, in the image's dtype and scale
    palette = info["palette"]
    assert palette.dtype == to_np(X).dtype and palette.shape == (5, c)
    np.testing.assert_array_equal(read_patch(Xp, info), palette[info["patch_class"]])
    if kind == "uint8":
        np.testing.assert_array_equal(palette, shortcut_palette(5, c, dtype="uint8"))


def test_torch_input_keeps_device_and_ignores_grad():
    X = torch.rand(4, 3, 8, 8, requires_grad=True)
    Xp = plant_shortcut(X, torch.tensor([0, 1, 2, 1]), random_state=0)
    assert isinstance(Xp, torch.Tensor) and Xp.device == X.device and not Xp.requires_grad


@pytest.mark.cuda
def test_cuda_tensor_stays_on_cuda_and_matches_cpu():
    X, y = images(backend="torch")
    Xp = plant_shortcut(X.cuda(), torch.as_tensor(y).cuda(), random_state=3)
    assert Xp.is_cuda
    assert torch.equal(Xp.cpu(), plant_shortcut(X, y, random_state=3))


# ---------------------------------------------------------------- the palette
@pytest.mark.parametrize("c", [1, 2, 3, 4])
@pytest.mark.parametrize("n_classes", [1, 2, 3, 10, 100])
def test_palette_colours_are_distinct_in_8_bits_and_float(c, n_classes):
    u8 = shortcut_palette(n_classes, c, dtype="uint8")
    f = shortcut_palette(n_classes, c)
    assert u8.shape == f.shape == (n_classes, c) and u8.dtype == np.uint8 and f.dtype == np.float32
    assert len(np.unique(u8, axis=0)) == n_classes
    np.testing.assert_allclose(f, u8 / 255.0, atol=1e-7)
    if c != 3:  # gray levels: one value per row, never black (visible on digit backgrounds)
        assert (u8 == u8[:, :1]).all() and u8.min() > 0 and u8[0, 0] == 255


def test_palette_rgb_is_fully_saturated_and_deterministic():
    a = shortcut_palette(10, 3, dtype="uint8")
    assert (a.max(1) == 255).all() and (a.min(1) == 0).all()
    np.testing.assert_array_equal(a, shortcut_palette(10, 3, dtype="uint8"))


def test_palette_too_many_classes_and_bad_arguments():
    shortcut_palette(231, 1)
    with pytest.raises(ValueError, match="n_classes=232 is too many"):
        shortcut_palette(232, 1)
    with pytest.raises(ValueError, match="too many"):
        plant_shortcut(np.zeros((1, 3, 4, 4)), [0], n_classes=2000)
    for kwargs, name in [({"n_classes": 0}, "n_classes"), ({"n_classes": 2.0}, "n_classes"),
                         ({"n_classes": 2, "n_channels": 0}, "n_channels"),
                         ({"n_classes": 2, "dtype": "int32"}, "dtype")]:
        with pytest.raises(ValueError, match=name):
            shortcut_palette(**kwargs)


# ---------------------------------------------------------------- which colour is planted
@FAST
@given(seed=st.integers(0, 10_000), shift=st.integers(-12, 12), c=st.sampled_from([1, 3]),
       n_classes=st.integers(2, 7))
def test_rho_one_plants_the_shifted_true_class(seed, shift, c, n_classes):
    rng = np.random.default_rng(seed)
    X = rng.random((20, c, 8, 8)).astype(np.float32)
    y = rng.integers(0, n_classes, size=20)
    Xp, info = plant_shortcut(X, y, rho=1.0, patch_size=3, label_shift=shift, n_classes=n_classes,
                              random_state=seed, return_info=True)
    read = class_of_colour(read_patch(Xp, info), info["palette"])
    np.testing.assert_array_equal(read, (y + shift) % n_classes)
    np.testing.assert_array_equal(info["patch_class"], read)
    np.testing.assert_array_equal(info["target_class"], (y + shift) % n_classes)


def test_shift_by_n_classes_is_no_shift():
    X, y = images(n=30)
    a = plant_shortcut(X, y, rho=0.6, label_shift=0, n_classes=5, random_state=4)
    b = plant_shortcut(X, y, rho=0.6, label_shift=5, n_classes=5, random_state=4)
    c = plant_shortcut(X, y, rho=0.6, label_shift=-10, n_classes=5, random_state=4)
    assert (a == b).all() and (a == c).all()


def test_rho_zero_never_plants_the_true_class_and_is_uniform_over_the_others():
    n, k = 6000, 4
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, size=n)
    X = np.zeros((n, 1, 4, 4), dtype=np.uint8)
    Xp, info = plant_shortcut(X, y, rho=0.0, patch_size=2, label_shift=1, n_classes=k, random_state=0,
                              return_info=True)
    read = class_of_colour(read_patch(Xp, info), info["palette"])
    target = (y + 1) % k
    assert not (read == target).any()
    offsets = (read - target) % k  # 1..k-1, uniform
    counts = np.bincount(offsets, minlength=k)[1:]
    assert chisquare(counts).pvalue > 1e-3, counts
    # and uniform over the other classes for every true class
    for cls in range(k):
        sub = np.bincount(read[target == cls], minlength=k)
        assert sub[cls] == 0
        assert chisquare(np.delete(sub, cls)).pvalue > 1e-3, (cls, sub)


@pytest.mark.parametrize("rho", [0.25, 0.5, 0.9])
def test_intermediate_rho_is_the_fraction_of_agreeing_patches(rho):
    n = 4000
    y = np.arange(n) % 10
    _, info = plant_shortcut(np.zeros((n, 1, 4, 4), np.float32), y, rho=rho, patch_size=1, random_state=1,
                             return_info=True)
    agree = (info["patch_class"] == y).mean()
    assert abs(agree - rho) < 4 * np.sqrt(rho * (1 - rho) / n)


def test_corners_are_uniform_and_named():
    n = 4000
    X = np.zeros((n, 1, 6, 6), dtype=np.float32)
    Xp, info = plant_shortcut(X, np.zeros(n, dtype=int), n_classes=2, patch_size=2, random_state=2,
                              return_info=True)
    counts = np.bincount(info["corner"], minlength=4)
    assert counts.sum() == n and chisquare(counts).pvalue > 1e-3, counts
    assert CORNERS == ("top-left", "top-right", "bottom-left", "bottom-right")
    # the recorded corner is where the pixels changed (class 0 is white on a black image)
    changed = Xp[:, 0] != 0
    assert changed[info["corner"] == 0][:, 0, 0].all() and changed[info["corner"] == 1][:, 0, -1].all()
    assert changed[info["corner"] == 2][:, -1, 0].all() and changed[info["corner"] == 3][:, -1, -1].all()


def test_n_classes_defaults_to_max_label_plus_one():
    X, _ = images(n=5)
    _, info = plant_shortcut(X, [0, 3, 1, 3, 2], random_state=0, return_info=True)
    assert info["palette"].shape == (4, 3)


# ---------------------------------------------------------------- determinism and types
def test_same_seed_same_output_and_backends_and_dtypes_agree():
    Xf, y = images(n=40, kind="float32")
    a = plant_shortcut(Xf, y, rho=0.5, random_state=7)
    b = plant_shortcut(Xf, y, rho=0.5, random_state=7)
    assert (a == b).all()
    assert not (a == plant_shortcut(Xf, y, rho=0.5, random_state=8)).all()
    t = plant_shortcut(torch.from_numpy(Xf), torch.from_numpy(y), rho=0.5, random_state=7)
    np.testing.assert_array_equal(t.numpy(), a)
    g = plant_shortcut(Xf, y, rho=0.5, random_state=np.random.default_rng(7))
    np.testing.assert_array_equal(g, a)
    # uint8 planting then /255 is float planting of the /255 images (same patches)
    Xu, _ = images(n=40, kind="uint8")
    pu = plant_shortcut(Xu, y, rho=0.5, random_state=7)
    pf = plant_shortcut(Xu.astype(np.float32) / 255, y, rho=0.5, random_state=7)
    assert pu.dtype == np.uint8
    np.testing.assert_allclose(pu.astype(np.float32) / 255, pf, atol=1e-6)


def test_uint8_torch_and_float16():
    X = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    Xp = plant_shortcut(X, [0, 1, 2], n_classes=3, random_state=0)
    assert Xp.dtype == torch.uint8
    X16 = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float16)
    assert plant_shortcut(X16, [0, 1, 2], random_state=0).dtype == np.float16


# ---------------------------------------------------------------- validation
X_OK = np.zeros((3, 1, 8, 8), dtype=np.float32)
Y_OK = [0, 1, 2]


@pytest.mark.parametrize("X, y, kwargs, name", [
    (np.zeros((3, 8, 8)), Y_OK, {}, "4 dimensions"),
    (np.zeros((0, 1, 8, 8)), [], {}, "empty"),
    (np.zeros((3, 1, 8, 8), dtype=np.int32), Y_OK, {}, "uint8"),
    (np.full((3, 1, 8, 8), 2.0), Y_OK, {}, r"\[0, 1\]"),
    (np.full((3, 1, 8, 8), np.nan), Y_OK, {}, r"\[0, 1\]"),
    (X_OK, [0, 1], {}, "y must have shape"),
    (X_OK, [0.5, 1, 2], {}, "integer"),
    (X_OK, ["a", "b", "c"], {}, "integer"),
    (X_OK, [-1, 0, 1], {}, ">= 0"),
    (X_OK, Y_OK, {"rho": 1.5}, "rho"),
    (X_OK, Y_OK, {"rho": -0.1}, "rho"),
    (X_OK, Y_OK, {"rho": float("nan")}, "rho"),
    (X_OK, Y_OK, {"rho": True}, "rho"),
    (X_OK, Y_OK, {"patch_size": 0}, "patch_size"),
    (X_OK, Y_OK, {"patch_size": 9}, "patch_size"),
    (X_OK, Y_OK, {"patch_size": 2.0}, "patch_size"),
    (X_OK, Y_OK, {"label_shift": 0.5}, "label_shift"),
    (X_OK, Y_OK, {"n_classes": 2}, "n_classes"),
    (X_OK, Y_OK, {"n_classes": 0}, "n_classes"),
    (X_OK, [0, 0, 0], {"rho": 0.5}, "n_classes >= 2"),
    (X_OK, Y_OK, {"random_state": -1}, "random_state"),
    (X_OK, Y_OK, {"random_state": "a"}, "random_state"),
    (X_OK, Y_OK, {"return_info": "yes"}, "return_info"),
])
def test_bad_arguments_raise_value_error_naming_them(X, y, kwargs, name):
    with pytest.raises(ValueError, match=name):
        plant_shortcut(X, y, **kwargs)


def test_single_class_with_rho_one_is_allowed():
    Xp = plant_shortcut(X_OK, [0, 0, 0], random_state=0)
    assert (shortcut_palette(1, 1)[0, 0] == 1.0) and Xp.max() == 1.0


# ---------------------------------------------------------------- oracle masks
@pytest.mark.parametrize("hw, p, expected_cells", [
    ((8, 8), 2, {0: [0], 1: [3], 2: [12], 3: [15]}),        # digits: cell 2
    ((32, 32), 4, {0: [0], 1: [3], 2: [12], 3: [15]}),      # CIFAR: cell 8
    ((8, 8), 3, {0: [0, 1, 4, 5], 1: [2, 3, 6, 7], 2: [8, 9, 12, 13], 3: [10, 11, 14, 15]}),
])
def test_segment_mask_on_the_default_grid(hw, p, expected_cells):
    h, w = hw
    n = 40
    X = np.zeros((n, 3, h, w), dtype=np.float32)
    _, info = plant_shortcut(X, np.arange(n) % 3, patch_size=p, random_state=0, return_info=True)
    sel = shortcut_segment_mask(info)
    assert sel.dtype == torch.bool and sel.shape == (n, 16)
    for i, k in enumerate(info["corner"]):
        assert sel[i].nonzero().flatten().tolist() == expected_cells[int(k)]


@FAST
@given(seed=st.integers(0, 10_000), hw=st.sampled_from([(8, 8), (12, 8), (7, 9)]), p=st.integers(1, 7))
def test_segment_mask_covers_exactly_the_segments_touched_by_the_patch(seed, hw, p):
    h, w = hw
    p = min(p, h, w)
    X = np.zeros((5, 1, h, w), dtype=np.float32)
    _, info = plant_shortcut(X, [0, 1, 2, 3, 4], patch_size=p, random_state=seed, return_info=True)
    for segments in (None, torch.as_tensor(np.random.default_rng(seed).integers(0, 6, size=(5, h, w)))):
        seg = default_segmenter(h, w).segment(torch.zeros(5, 1, h, w)) if segments is None else segments
        sel = shortcut_segment_mask(info, segments)
        patch = shortcut_pixel_mask(info)
        spread = pixel_mask(seg, sel).bool()  # every pixel of a selected segment
        assert bool((spread | ~patch).all()), "a patch pixel lies outside the selected segments"
        for i in range(5):  # and every selected segment holds a patch pixel
            touched = set(seg[i][patch[i, 0]].unique().tolist())
            assert set(sel[i].nonzero().flatten().tolist()) == touched


def test_segment_mask_with_a_shared_2d_map_and_bad_inputs():
    X = np.zeros((2, 1, 4, 4), dtype=np.float32)
    _, info = plant_shortcut(X, [0, 1], patch_size=2, random_state=1, return_info=True)
    halves = torch.tensor([[0, 0, 1, 1]] * 4)  # left / right half
    sel = shortcut_segment_mask(info, halves)
    right = torch.as_tensor(info["corner"] % 2 == 1)
    assert torch.equal(sel, torch.stack([~right, right], 1))
    with pytest.raises(ValueError, match="segments must have shape"):
        shortcut_segment_mask(info, torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        shortcut_segment_mask(info, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="info must be"):
        shortcut_segment_mask({"corner": [0]})
    with pytest.raises(ValueError, match="corner"):
        shortcut_pixel_mask({**info, "corner": np.array([0, 5])})
    with pytest.raises(ValueError, match="patch_size"):
        shortcut_pixel_mask({**info, "patch_size": 5})
