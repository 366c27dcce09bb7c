"""Tests of attribshield.maskers.OracleMasker / OracleExplainer: the known-shortcut upper bound."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM
from attribshield.data import load_digits, plant_shortcut, shortcut_palette, shortcut_segment_mask
from attribshield.explainers import GradientExplainer, GridSegmenter
from attribshield.maskers import OracleAttribution, OracleExplainer, OracleMasker, detect_patch, pixel_mask
from attribshield.regularizers import SpuriousGradientPenalty
from attribshield.testing import TinyMLP


def planted(n=12, c=3, size=8, p=2, n_classes=10, seed=0, **kw):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.2, 0.8, size=(n, c, size, size)).astype(np.float32)
    y = np.arange(n) % n_classes
    Xp, info = plant_shortcut(X, y, patch_size=p, n_classes=n_classes, random_state=seed, return_info=True, **kw)
    return X, Xp, y, info


def test_selects_exactly_the_planted_segments():
    X, Xp, y, info = planted(n=16)
    masker = OracleMasker.from_shortcut(patch_size=2, n_classes=10, n_channels=3)
    want = shortcut_segment_mask(info)
    sel = masker.find_spurious(None, Xp, y)
    assert torch.equal(sel.selected, want)
    assert isinstance(sel.attribution, OracleAttribution)
    scores = masker.segment_scores(X=torch.as_tensor(Xp))
    assert torch.equal(masker.select(scores), want)
    assert torch.allclose(scores.sum(1), torch.ones(16))


def test_patch_straddling_segments_and_other_segmenters():
    # a 3x3 patch on a grid of 2x2 cells covers 4 segments; a coarser grid covers 1
    _, Xp, y, info = planted(n=8, p=3, seed=1)
    masker = OracleMasker.from_shortcut(patch_size=3, n_classes=10, n_channels=3)
    assert torch.equal(masker.find_spurious(None, Xp, y).selected, shortcut_segment_mask(info))
    assert int(masker.find_spurious(None, Xp, y).selected.sum(1).min()) == 4
    coarse = GridSegmenter(cell=4)
    seg = coarse.segment(torch.as_tensor(Xp))
    got = masker.find_spurious(None, Xp, y, explainer=GradientExplainer(segmenter=coarse))
    assert torch.equal(got.selected, shortcut_segment_mask(info, segments=seg))


def test_images_without_a_patch_get_nothing():
    X, Xp, y, _ = planted(n=6)
    masker = OracleMasker.from_shortcut(patch_size=2)
    sel = masker.find_spurious(None, X, y)
    assert not sel.selected.any() and float(sel.scores.abs().sum()) == 0.0
    mixed = np.concatenate([X[:3], Xp[3:]])
    got = masker.find_spurious(None, mixed, y).selected
    assert not got[:3].any() and got[3:].sum(1).tolist() == [1, 1, 1]


def test_other_palette_colours_and_partial_squares_are_not_patches():
    X, _, y, _ = planted(n=2)
    Xm = X.copy()
    Xm[0, :, :2, :2] = np.array([1.0, 0.5, 0.0], dtype=np.float32)[:, None, None]  # not a palette colour
    Xm[1, :, :2, :2] = np.array([1.0, 0.0, 0.0], dtype=np.float32)[:, None, None]  # red ...
    Xm[1, :, 1, 1] = 0.3  # ... but not a whole square
    assert not OracleMasker.from_shortcut(patch_size=2).find_spurious(None, Xm, y).selected.any()


def test_grayscale_digits():
    X, y = load_digits()
    X, y = X[:60], y[:60]
    Xp, info = plant_shortcut(X, y, patch_size=2, n_classes=10, random_state=0, return_info=True)
    masker = OracleMasker.from_shortcut(patch_size=2, n_classes=10, n_channels=1)
    assert torch.equal(masker.find_spurious(None, Xp, y).selected, shortcut_segment_mask(info))


def test_uint8_images():
    X, _, y, _ = planted(n=8)
    Xu = np.round(X * 255).astype(np.uint8)
    Xpu, info = plant_shortcut(Xu, y, patch_size=2, n_classes=10, random_state=0, return_info=True)
    masker = OracleMasker.from_shortcut(patch_size=2)
    assert torch.equal(masker.find_spurious(None, Xpu, y).selected, shortcut_segment_mask(info))
    Xf = torch.as_tensor(Xpu).float() / 255.0  # what the estimator feeds the loop
    assert torch.equal(masker.select(masker.segment_scores(X=Xf)), shortcut_segment_mask(info))


def test_corners_only_false_finds_a_moved_patch():
    X, Xp, y, info = planted(n=8)
    pal = shortcut_palette(10)
    moved = X.copy()
    for i in range(8):  # a whole patch away from the corners (as after a random crop)
        moved[i, :, 3 + i % 3:5 + i % 3, 2:4] = pal[i][:, None, None]
    assert not detect_patch(moved, pal, 2).any()
    found = detect_patch(moved, pal, 2, corners_only=False)
    assert int(found.sum()) == 8 * 4
    assert all(bool(found[i, 0, 3 + i % 3:5 + i % 3, 2:4].all()) for i in range(8))
    assert torch.equal(detect_patch(Xp, pal, 2, corners_only=False), detect_patch(Xp, pal, 2))


@pytest.mark.parametrize("fill", ["mean", "constant", "blur", "noise"])
def test_apply_fills_only_the_patch_segments(fill):
    _, Xp, y, info = planted(n=6)
    masker = OracleMasker.from_shortcut(patch_size=2, fill=fill, fill_value=0.25, random_state=0)
    sel = masker.find_spurious(None, Xp, y)
    Xt = torch.as_tensor(Xp)
    out = masker.apply(Xt, sel.segments, sel.selected)
    m = pixel_mask(sel.segments, sel.selected, dtype=torch.bool).expand_as(Xt)
    assert torch.equal(out[~m], Xt[~m])
    assert out.shape == Xt.shape and out.dtype == Xt.dtype
    if fill != "mean":  # 'mean' over a segment that is the patch keeps the patch's colour
        assert not detect_patch(out, shortcut_palette(10), 2).any()  # the patch is gone
    if fill == "constant":
        assert torch.all(out[m] == 0.25)
    if fill == "mean":
        assert torch.allclose(masker.apply(out, sel.segments, sel.selected), out)
        assert torch.allclose(masker.apply_mask(Xt, pixel_mask(sel.segments, sel.selected), sel.segments), out)


def test_mean_fill_removes_a_square_smaller_than_its_segment():
    # 16x16 images: the default grid's cells are 4x4, the square 2x2 (as 4x4 squares in 8x8
    # cells on CIFAR-10): the filled cell is uniform and no longer holds a palette square
    _, Xp, y, info = planted(n=6, size=16)
    masker = OracleMasker.from_shortcut(patch_size=2)
    sel = masker.find_spurious(None, Xp, y)
    assert torch.equal(sel.selected, shortcut_segment_mask(info))
    out = masker.apply(torch.as_tensor(Xp), sel.segments, sel.selected)
    assert not detect_patch(out, shortcut_palette(10), 2).any()


def test_explainer_and_masker_agree_and_protocol():
    _, Xp, y, info = planted(n=8)
    masker = OracleMasker.from_shortcut(patch_size=2)
    expl = masker.explainer()
    assert isinstance(expl, OracleExplainer) and expl.palette == masker.palette
    att = expl.explain(None, torch.as_tensor(Xp), torch.as_tensor(y))
    assert isinstance(att, OracleAttribution)
    scores = masker.segment_scores(att, attribution_adv=None, input_grad=None, segments=att.segments)
    assert torch.equal(masker.select(scores, att.valid), shortcut_segment_mask(info))
    assert masker.needs() == frozenset({"attribution"})
    # target=None: the model's predictions are stored
    model = TinyMLP(num_classes=10)
    att2 = expl.explain(model, torch.as_tensor(Xp))
    assert torch.equal(att2.target, model(torch.as_tensor(Xp)).argmax(1))
    assert torch.equal(att2.weights, att.weights)


def test_other_explanations_are_refused():
    _, Xp, y, _ = planted(n=4)
    att = GradientExplainer().explain(TinyMLP(num_classes=10), torch.as_tensor(Xp), torch.as_tensor(y))
    masker = OracleMasker.from_shortcut(patch_size=2)
    with pytest.raises(ValueError, match="OracleExplainer"):
        masker.segment_scores(att)
    with pytest.raises(ValueError, match="OracleExplainer"):
        masker.segment_scores(segments=att.segments)


@pytest.mark.parametrize("kwargs, match", [
    ({"palette": None}, "from_shortcut"),
    ({"palette": [[1.5, 0, 0]]}, r"\[0, 1\]"),
    ({"palette": [1.0, 0.0, 0.0]}, "shape"),
    ({"patch_size": 0}, "patch_size"),
    ({"tol": -1}, "tol"),
    ({"corners_only": "yes"}, "corners_only"),
    ({"fill": "zeros"}, "fill"),
    ({"fill_value": 2.0}, "fill_value"),
    ({"blur_sigma": 0}, "blur_sigma"),
])
def test_bad_parameters_raise_before_work(kwargs, match):
    _, Xp, y, _ = planted(n=2)
    params = {"palette": shortcut_palette(10).tolist(), **kwargs}
    with pytest.raises(ValueError, match=match):
        OracleMasker(**params).find_spurious(None, Xp, y)


def test_bad_inputs_raise():
    _, Xp, y, _ = planted(n=2)
    masker = OracleMasker.from_shortcut(patch_size=2)
    with pytest.raises(ValueError, match="channels"):
        OracleMasker.from_shortcut(patch_size=2, n_channels=1).find_spurious(None, Xp, y)
    with pytest.raises(ValueError, match="exceeds"):
        OracleMasker.from_shortcut(patch_size=9).find_spurious(None, Xp, y)
    with pytest.raises(ValueError):
        masker.find_spurious(None, Xp, y[:1])
    with pytest.raises(ValueError):
        masker.find_spurious(None, Xp, y, attacker=object())
    with pytest.raises(ValueError):
        masker.select(torch.zeros(3))
    with pytest.raises(ValueError):
        OracleExplainer(palette=shortcut_palette(10)).explain(None, torch.as_tensor(Xp))  # no target, no model
    with pytest.raises(ValueError):
        OracleMasker.from_shortcut(n_classes=0)


def test_clone_and_pickle():
    masker = OracleMasker.from_shortcut(patch_size=2, fill="constant", fill_value=0.5)
    c = clone(masker)
    assert c.get_params() == masker.get_params()
    assert np.allclose(np.asarray(masker.palette), shortcut_palette(10, dtype="float64"))
    back = pickle.loads(pickle.dumps(masker))
    _, Xp, y, info = planted(n=4)
    assert torch.equal(back.find_spurious(None, Xp, y).selected, shortcut_segment_mask(info))


def _net(masker, **kw):
    return RobustAttributionClassifier(
        TinyMLP, module__num_classes=10, classes=list(range(10)), masker=masker,
        explainer=masker.explainer(), attacker=FGSM(eps=0.05, random_start=True, random_state=0),
        regularizer=SpuriousGradientPenalty(weight=0.1), max_epochs=1, batch_size=16, lr=0.05, verbose=0,
        random_state=0, **kw)


def test_online_training_masks_the_planted_segments():
    _, Xp, y, info = planted(n=32)
    masker = OracleMasker.from_shortcut(patch_size=2)
    net = _net(masker, refine_mode="online", mask_fraction=0.5, penalty_fraction=0.25, audit_size=0).fit(Xp, y)
    assert np.isfinite(net.history[-1, "masked_loss"]) and np.isfinite(net.history[-1, "penalty_loss"])
    # the selection the training step computes for a batch: the first half's planted segments
    X = torch.as_tensor(Xp[:16])
    seg, sel, has = net._online_selection(net.module_, X, None, torch.as_tensor(y[:16]), None)
    assert has.tolist() == [True] * 8 + [False] * 8
    assert torch.equal(sel[:8], shortcut_segment_mask({**info, "corner": info["corner"][:8]}))
    assert not sel[8:].any()


def test_rounds_training_caches_the_planted_segments():
    _, Xp, y, info = planted(n=32)
    net = _net(OracleMasker.from_shortcut(patch_size=2), refine_mode="rounds", refine_fraction=1.0).fit(Xp, y)
    seg, sel, has = net.mask_cache_.batch(torch.arange(32), "cpu")
    assert bool(has.all())
    assert torch.equal(sel[:, :16], shortcut_segment_mask(info))
