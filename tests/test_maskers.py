"""Tests of attribshield.maskers: selection, fills, pixel masks and spurious-segment criteria."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from attribshield.attacks import FGSM
from attribshield.explainers import GridSegmenter, LimeExplainer
from attribshield.maskers import LimeMasker, SpuriousSelection, gaussian_blur, pixel_mask

FAST = settings(deadline=None, max_examples=15)


# --------------------------------------------------------------------------- helpers
def random_segments(n, s, h=8, w=8, seed=0):
    """Random label maps with every label 0..s-1 present in each image (s <= h*w)."""
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, s, (n, h * w), generator=g)
    for i in range(n):
        pos = torch.randperm(h * w, generator=g)[:s]
        seg[i, pos] = torch.arange(s)
    return seg.reshape(n, h, w)


def quadrants(n=1, h=8, w=8):
    """4 segments: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""
    r = torch.arange(h)[:, None] >= h // 2
    c = torch.arange(w)[None, :] >= w // 2
    return (r.long() * 2 + c.long()).expand(n, h, w).clone()


class FixedLinear(torch.nn.Module):
    """Two-class linear model on flattened 1x8x8 images: logits ``[s, -s]``, ``s = <a, x>``."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(a.reshape(-1).clone())

    def forward(self, x):
        s = x.flatten(1) @ self.a
        return torch.stack([s, -s], 1)


def segment_pixel_weights(values, seg):
    """Pixel weights constant per segment: ``values[seg]`` (H, W)."""
    return torch.as_tensor(values, dtype=torch.float32)[seg[0]]


# --------------------------------------------------------------------------- select
@FAST
@given(
    n=st.integers(1, 4),
    s=st.integers(1, 10),
    top_k=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
def test_select_exactly_min_topk_nvalid(n, s, top_k, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, s, generator=g)
    n_valid = torch.randint(1, s + 1, (n,), generator=g)
    valid = torch.arange(s)[None] < n_valid[:, None]
    masker = LimeMasker(top_k=top_k)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sel = masker.select(scores, valid)
    assert sel.dtype == torch.bool and sel.shape == (n, s)
    assert torch.equal(sel.sum(1), torch.clamp(n_valid, max=top_k))
    assert not bool((sel & ~valid).any())
    # the selected segments are the highest valid scores
    for i in range(n):
        v = scores[i, : int(n_valid[i])]
        chosen = v[sel[i, : int(n_valid[i])]]
        rest = v[~sel[i, : int(n_valid[i])]]
        if len(rest) and len(chosen):
            assert float(chosen.min()) >= float(rest.max())
    n_warn = sum(issubclass(w.category, UserWarning) for w in rec)
    assert n_warn == (1 if bool((n_valid < top_k).any()) else 0)


def test_select_prefers_valid_segments_even_with_low_scores():
    scores = torch.tensor([[-5.0, -7.0, 3.0, 4.0]])
    valid = torch.tensor([[True, True, False, False]])
    sel = LimeMasker(top_k=2).select(scores, valid)
    assert sel.tolist() == [[True, True, False, False]]
    sel = LimeMasker(top_k=2).select(torch.tensor([[float("nan"), 1.0, 2.0]]), torch.tensor([[True, True, False]]))
    assert sel.tolist() == [[True, True, False]]


@FAST
@given(s=st.integers(2, 12), seed=st.integers(0, 1000))
def test_more_segments_masked_as_top_k_grows(s, seed):
    scores = torch.randn(3, s, generator=torch.Generator().manual_seed(seed))
    valid = torch.ones(3, s, dtype=torch.bool)
    prev = torch.zeros(3, s, dtype=torch.bool)
    for k in range(1, s + 1):
        sel = LimeMasker(top_k=k).select(scores, valid)
        assert bool((sel.sum(1) > prev.sum(1)).all())
        assert not bool((prev & ~sel).any())  # nested selections (distinct scores)
        prev = sel


def test_select_threshold():
    scores = torch.tensor([[0.2, 0.5, 1.0, 0.7], [1.0, 0.0, 0.49, 0.9]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    sel = LimeMasker(threshold=0.5).select(scores, valid)
    assert sel.tolist() == [[False, True, True, False], [True, False, False, True]]


# --------------------------------------------------------------------------- apply
@FAST
@given(
    n=st.integers(1, 3),
    c=st.sampled_from([1, 3]),
    s=st.integers(1, 12),
    fill=st.sampled_from(["mean", "constant", "blur", "noise"]),
    fill_value=st.floats(0, 1),
    seed=st.integers(0, 1000),
)
def test_apply_changes_only_masked_pixels_and_respects_fill(n, c, s, fill, fill_value, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, c, 8, 8, generator=g)
    seg = random_segments(n, s, seed=seed)
    selected = torch.rand(n, s, generator=g) < 0.5
    masker = LimeMasker(fill=fill, fill_value=fill_value, random_state=seed)
    out = masker.apply(X, seg, selected)
    assert out.shape == X.shape and out.dtype == X.dtype and out.device == X.device
    m = pixel_mask(seg, selected, dtype=torch.bool).expand_as(X)
    assert torch.equal(out[~m], X[~m])
    if fill == "constant":
        assert bool((out[m] == float(torch.tensor(fill_value, dtype=X.dtype))).all())
    elif fill == "mean":
        for i in range(n):
            for j in torch.nonzero(selected[i]).flatten().tolist():
                pix = seg[i] == j
                expect = X[i][:, pix].double().mean(1).float()
                assert torch.allclose(out[i][:, pix], expect[:, None].expand(-1, int(pix.sum())), atol=1e-6)
    elif fill == "blur":
        assert torch.allclose(out[m], gaussian_blur(X, 1.0)[m])
    else:
        assert bool((out[m] >= 0).all() and (out[m] < 1).all())
        again = LimeMasker(fill="noise", random_state=seed).apply(X, seg, selected)
        assert torch.equal(out, again)


@FAST
@given(fill=st.sampled_from(["mean", "constant"]), s=st.integers(1, 10), seed=st.integers(0, 1000))
def test_apply_twice_equals_once(fill, s, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(2, 3, 8, 8, generator=g)
    seg = random_segments(2, s, seed=seed)
    selected = torch.rand(2, s, generator=g) < 0.5
    masker = LimeMasker(fill=fill, fill_value=0.3)
    once = masker.apply(X, seg, selected)
    assert torch.equal(masker.apply(once, seg, selected), once)


def test_blur_is_not_idempotent_but_stays_in_range():
    X = torch.rand(2, 3, 8, 8)
    seg = quadrants(2)
    sel = torch.tensor([[True, False, False, False]] * 2)
    masker = LimeMasker(fill="blur", blur_sigma=1.5)
    once = masker.apply(X, seg, sel)
    assert not torch.equal(masker.apply(once, seg, sel), once)
    b = gaussian_blur(X, 2.0)
    assert float(b.min()) >= 0 and float(b.max()) <= 1
    const = torch.full((1, 1, 8, 8), 0.4)
    assert torch.allclose(gaussian_blur(const, 3.0), const)


def test_noise_fill_draws_fresh_noise_each_call_but_is_reproducible():
    X = torch.rand(1, 1, 8, 8)
    seg, sel = quadrants(), torch.tensor([[True, True, False, False]])
    a = LimeMasker(fill="noise", random_state=3)
    b = LimeMasker(fill="noise", random_state=3)
    a1, a2 = a.apply(X, seg, sel), a.apply(X, seg, sel)
    assert not torch.equal(a1, a2)
    assert torch.equal(a1, b.apply(X, seg, sel)) and torch.equal(a2, b.apply(X, seg, sel))


def test_pixel_mask_and_apply_mask():
    seg = random_segments(2, 6, seed=1)
    sel = torch.tensor([[True, False, True, False, False, False], [False] * 5 + [True]])
    pm = pixel_mask(seg, sel)
    assert pm.shape == (2, 1, 8, 8) and pm.dtype == torch.float32
    assert set(pm.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(pm[:, 0].bool(), sel.gather(1, seg.reshape(2, -1)).reshape(2, 8, 8))
    X = torch.rand(2, 3, 8, 8)
    for fill in ("mean", "constant", "blur"):
        masker = LimeMasker(fill=fill, fill_value=0.7)
        assert torch.allclose(masker.apply_mask(X, pm, segments=seg), masker.apply(X, seg, sel), atol=1e-6)
    # without segments, 'mean' uses the mean colour of the whole masked region
    out = LimeMasker(fill="mean").apply_mask(X, pm)
    m = pm.bool().expand_as(X)
    for i in range(2):
        region = X[i][:, pm[i, 0].bool()].mean(1)
        assert torch.allclose(out[i][:, pm[i, 0].bool()], region[:, None].expand(-1, int(pm[i].sum())), atol=1e-6)
    assert torch.equal(out[~m], X[~m])
    assert torch.equal(LimeMasker().apply_mask(X, torch.zeros(2, 1, 8, 8)), X)
    with pytest.raises(ValueError, match="labels up to"):
        pixel_mask(seg, sel[:, :3])
    with pytest.raises(ValueError, match="mask must have shape"):
        LimeMasker().apply_mask(X, torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="segments must have shape"):
        LimeMasker().apply(X, seg[:, :4], sel)


# --------------------------------------------------------------------------- criteria
def _linear_case():
    """Segment 0 supports class 0, segment 1 is strong negative evidence, 2 and 3 ignored."""
    seg = quadrants(2)
    a = segment_pixel_weights([0.3, -0.3, 0.0, 0.0], seg)
    model = FixedLinear(a)
    X = torch.full((2, 1, 8, 8), 0.5) + 0.05 * torch.rand(2, 1, 8, 8)
    y = torch.tensor([0, 0])
    return model, X, y, seg


def test_irrelevant_picks_sensitive_negative_segment():
    model, X, y, seg = _linear_case()
    explainer = LimeExplainer(n_samples=200, fill=0.0, segmenter=GridSegmenter(cell=4), random_state=0)
    res = LimeMasker(criterion="irrelevant", top_k=1).find_spurious(model, X, y, explainer)
    assert isinstance(res, SpuriousSelection)
    assert bool((res.attribution.weights[:, 1] < 0).all()) and bool((res.attribution.weights[:, 0] > 0).all())
    assert res.selected.tolist() == [[False, True, False, False]] * 2
    # segment 0 (positive weight) scores 0 although it carries gradient mass; ignored ones too
    assert torch.equal(res.irrelevance[:, [0, 2, 3]], torch.zeros(2, 3))
    assert torch.allclose(res.irrelevance[:, 1], torch.full((2,), 0.5), atol=1e-5)
    assert torch.allclose(res.scores[:, 1], torch.ones(2))
    assert torch.equal(res.pixel_mask()[:, 0].bool(), seg == 1)
    assert model.a.grad is None


class ShiftSegment:
    """A fake attacker: brightens the top-right quadrant (segment 1) only."""

    def perturb(self, model, X, y):
        out = X.clone()
        out[:, :, : X.shape[2] // 2, X.shape[3] // 2 :] = 1.0
        return out


def test_unstable_with_attacker_picks_the_attacked_segment():
    seg = quadrants(2)
    a = segment_pixel_weights([0.1, 0.1, 0.1, 0.1], seg)
    model = FixedLinear(a)
    X = torch.full((2, 1, 8, 8), 0.1)
    y = torch.tensor([0, 1])
    explainer = LimeExplainer(n_samples=200, fill=0.0, segmenter=GridSegmenter(cell=4), random_state=0)
    res = LimeMasker(criterion="unstable", top_k=1).find_spurious(model, X, y, explainer, attacker=ShiftSegment())
    assert res.selected.tolist() == [[False, True, False, False]] * 2
    assert bool((res.instability[:, 1] > 3 * res.instability[:, [0, 2, 3]].amax(1)).all())
    assert res.irrelevance is None


def test_unstable_with_real_attacker_and_noise_and_combined():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 3))
    model.train()
    X, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    explainer = LimeExplainer(n_samples=100, random_state=0)
    for attacker in (FGSM(eps=0.1), None):
        res = LimeMasker(criterion="combined", top_k=2, random_state=0).find_spurious(
            model, X, y, explainer, attacker=attacker
        )
        assert res.selected.shape == (3, 16) and torch.equal(res.selected.sum(1), torch.full((3,), 2))
        assert bool((res.scores >= 0).all() and (res.scores <= 1).all())
        u = res.instability / res.instability.amax(1, keepdim=True)
        i_max = res.irrelevance.amax(1, keepdim=True)
        i = torch.where(i_max > 0, res.irrelevance / i_max.clamp_min(1e-30), torch.zeros_like(res.irrelevance))
        assert torch.allclose(res.scores, 0.5 * (u + i), atol=1e-6)
        assert bool((res.instability > 0).any())
    assert model.training and model[3].training  # modes restored
    assert all(p.grad is None for p in model.parameters())
    # noisy copies are reproducible for a fixed random_state
    r1 = LimeMasker(criterion="unstable", random_state=5).find_spurious(model, X, y, explainer)
    r2 = LimeMasker(criterion="unstable", random_state=5).find_spurious(model, X, y, explainer)
    assert torch.equal(r1.scores, r2.scores) and torch.equal(r1.selected, r2.selected)


def test_find_spurious_threshold_and_top_k_clipping_warns():
    model, X, y, seg = _linear_case()
    explainer = LimeExplainer(n_samples=100, fill=0.0, segmenter=GridSegmenter(cell=4), random_state=0)
    res = LimeMasker(criterion="irrelevant", threshold=1.0).find_spurious(model, X, y, explainer)
    assert res.selected.tolist() == [[False, True, False, False]] * 2
    with pytest.warns(UserWarning, match="top_k=5 exceeds"):
        res = LimeMasker(criterion="irrelevant", top_k=5).find_spurious(model, X, y, explainer)
    assert bool(res.selected.all())


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"criterion": "random"}, "criterion"),
        ({"fill": "zeros"}, "fill must be"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"fill_value": 2.0}, "fill_value"),
        ({"noise_std": 0}, "noise_std"),
        ({"n_noise": 0}, "n_noise"),
        ({"blur_sigma": -1.0}, "blur_sigma"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    masker = LimeMasker(**kwargs)  # __init__ does not validate
    with pytest.raises(ValueError, match=match):
        masker.select(torch.rand(1, 4), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=match):
        masker.apply(torch.rand(1, 1, 8, 8), quadrants(), torch.zeros(1, 4, dtype=torch.bool))


def test_find_spurious_bad_inputs():
    model, X, y, _ = _linear_case()
    with pytest.raises(ValueError, match="needs an explainer"):
        LimeMasker().find_spurious(model, X, y, None)
    explainer = LimeExplainer(n_samples=20)
    with pytest.raises(ValueError, match="different lengths"):
        LimeMasker().find_spurious(model, X, y[:1], explainer)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LimeMasker().find_spurious(model, X + 2, y, explainer)
    with pytest.raises(ValueError, match="perturb"):
        LimeMasker().find_spurious(model, X, y, explainer, attacker=object())


def test_clone_and_pickle_after_use():
    masker = LimeMasker(criterion="unstable", top_k=4, fill="noise", random_state=1)
    masker.apply(torch.rand(1, 1, 8, 8), quadrants(), torch.ones(1, 4, dtype=torch.bool))
    c = clone(masker)
    assert c.get_params() == masker.get_params() and "_generators" not in c.__dict__
    p = pickle.loads(pickle.dumps(masker))
    assert p.get_params() == masker.get_params()
    assert np.isclose(float(p.apply(torch.rand(1, 1, 8, 8), quadrants(), torch.ones(1, 4, dtype=torch.bool)).mean()),
                      float(c.apply(torch.rand(1, 1, 8, 8), quadrants(), torch.ones(1, 4, dtype=torch.bool)).mean()))


# --------------------------------------------------------------------------- 'dominant'
class QuadrantLogit(torch.nn.Module):
    """Class 0's logit is ``8 * mean(top-right quadrant)``; class 1's is 0 (no parameters)."""

    def forward(self, x):
        q = x[:, :, : x.shape[2] // 2, x.shape[3] // 2 :].mean((1, 2, 3))
        return torch.stack([8.0 * q, torch.zeros_like(q)], 1)


class RaisingAttacker:
    def perturb(self, model, X, y):  # pragma: no cover - must not run
        raise AssertionError("'dominant' must not attack")


def test_dominant_picks_the_segment_the_model_depends_on():
    model = QuadrantLogit()
    X = 0.3 + 0.7 * torch.rand(3, 1, 8, 8)
    y = torch.tensor([0, 0, 0])
    explainer = LimeExplainer(n_samples=300, fill=0.0, segmenter=GridSegmenter(cell=4), random_state=0)
    masker = LimeMasker(criterion="dominant", top_k=1)
    assert masker.needs() == frozenset({"attribution"})
    res = masker.find_spurious(model, X, y, explainer, attacker=RaisingAttacker())
    assert res.selected.tolist() == [[False, True, False, False]] * 3
    assert bool((res.scores[:, 1] > 0.9).all()) and res.instability is None and res.irrelevance is None
    assert torch.allclose(res.scores.sum(1), torch.ones(3))  # shares of the positive evidence
    assert torch.equal(res.pixel_mask()[:, 0].bool(), quadrants(3) == 1)
    res_t = LimeMasker(criterion="dominant", threshold=0.5).find_spurious(model, X, y, explainer)
    assert torch.equal(res_t.selected, res.selected)


def _attribution(weights, valid=None, seg=None):
    from attribshield.explainers import Attribution

    weights = torch.as_tensor(weights, dtype=torch.float32)
    n, s = weights.shape
    valid = torch.ones(n, s, dtype=torch.bool) if valid is None else torch.as_tensor(valid)
    seg = random_segments(n, s) if seg is None else seg
    return Attribution(segments=seg, weights=weights, valid=valid, intercept=torch.zeros(n),
                       score=torch.ones(n), target=torch.zeros(n, dtype=torch.long))


def test_dominant_scores_by_hand():
    attr = _attribution([[0.3, 0.1, -0.5, 0.0], [-0.1, -0.2, 0.0, -0.3], [0.2, 0.0, 0.6, 0.4]],
                        valid=[[True] * 4, [True] * 4, [True, True, True, False]])
    scores = LimeMasker(criterion="dominant").segment_scores(attr)
    expect = torch.tensor([[0.75, 0.25, 0.0, 0.0], [0.0] * 4, [0.25, 0.0, 0.75, 0.0]])
    assert torch.allclose(scores, expect)  # no positive evidence: all 0; padding: 0


# --------------------------------------------------------------------------- segment_scores
def test_needs_per_criterion():
    assert LimeMasker(criterion="unstable").needs() == {"attribution", "attribution_adv"}
    assert LimeMasker(criterion="irrelevant").needs() == {"attribution", "input_grad"}
    assert LimeMasker(criterion="combined").needs() == {"attribution", "attribution_adv", "input_grad"}
    assert isinstance(LimeMasker().needs(), frozenset)
    with pytest.raises(ValueError, match="criterion"):
        LimeMasker(criterion="random").needs()


def test_segment_scores_equal_find_spurious_from_precomputed_pieces():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    X, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    explainer = LimeExplainer(n_samples=60, random_state=0)
    attacker = FGSM(eps=0.1)
    # the pieces an online training loop holds
    attr = explainer.explain(model, X, y)
    X_adv = attacker.perturb(model, X, y)
    attr_adv = explainer.explain(model, X_adv, y, segments=attr.segments)
    x = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y, reduction="sum"), x)
    from attribshield.maskers import CRITERIA

    assert CRITERIA == ("unstable", "irrelevant", "combined", "dominant")
    for criterion in CRITERIA:
        masker = LimeMasker(criterion=criterion, top_k=2)
        res = masker.find_spurious(model, X, y, explainer, attacker=attacker)
        pieces = {"attribution_adv": attr_adv, "input_grad": grad}
        scores = masker.segment_scores(attr, **{k: v for k, v in pieces.items() if k in masker.needs()})
        assert torch.allclose(scores, res.scores, atol=1e-6), criterion
        assert torch.equal(masker.select(scores, attr.valid), res.selected)
        assert bool((scores >= 0).all() and (scores <= 1).all())
        # a positive per-image factor on the gradient (mean reduction, -log p_y) changes nothing
        if "input_grad" in masker.needs():
            scaled = masker.segment_scores(attr, attribution_adv=attr_adv, input_grad=-grad * torch.rand(4, 1, 1, 1))
            assert torch.allclose(scaled, scores, atol=1e-6)


def test_segment_scores_by_hand_and_noisy_copies():
    seg = quadrants(2)
    attr = _attribution([[0.4, -0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1]], seg=seg)
    adv = _attribution([[0.1, -0.2, 0.3, 0.0], [0.1, 0.1, 0.1, 0.1]], seg=seg)
    u = LimeMasker(criterion="unstable").segment_scores(attr, attribution_adv=adv)
    assert torch.allclose(u, torch.tensor([[1.0, 0.0, 2 / 3, 0.0], [0.0] * 4]))
    # a list of noisy copies: the population std over the clean weights and the copies
    copies = [adv, _attribution([[0.4, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1]], seg=seg)]
    u2 = LimeMasker(criterion="unstable").segment_scores(attr, attribution_adv=copies)
    std = torch.stack([attr.weights, copies[0].weights, copies[1].weights]).std(0, correction=0)
    assert torch.allclose(u2, std / std.amax(1, keepdim=True).clamp_min(1e-30))
    # irrelevant: gradient mass share on non-positive segments, max-normalised
    grad = torch.zeros(2, 1, 8, 8)
    grad[:, :, :4, 4:] = -1.0  # all mass on segment 1 (top right), weight -0.2 / 0.1
    grad[:, :, 4:, 4:] = 3.0  # segment 3, weight 0.0 / 0.1
    i = LimeMasker(criterion="irrelevant").segment_scores(attr, input_grad=grad)
    assert torch.allclose(i, torch.tensor([[0.0, 1 / 3, 0.0, 1.0], [0.0] * 4]))


def test_segment_scores_missing_or_bad_pieces_raise():
    attr = _attribution([[0.4, -0.2, 0.1, 0.0]], seg=quadrants())
    with pytest.raises(ValueError, match="attribution_adv"):
        LimeMasker(criterion="unstable").segment_scores(attr)
    with pytest.raises(ValueError, match="input_grad"):
        LimeMasker(criterion="irrelevant").segment_scores(attr)
    with pytest.raises(ValueError, match="attribution_adv"):
        LimeMasker(criterion="combined").segment_scores(attr, input_grad=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="attribution"):
        LimeMasker(criterion="dominant").segment_scores(None)
    with pytest.raises(ValueError, match="attribution_adv.weights must have the shape"):
        LimeMasker(criterion="unstable").segment_scores(attr, attribution_adv=_attribution([[0.1, 0.2]]))
    with pytest.raises(ValueError, match="input_grad must have shape"):
        LimeMasker(criterion="irrelevant").segment_scores(attr, input_grad=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="criterion"):
        LimeMasker(criterion="random").segment_scores(attr)
