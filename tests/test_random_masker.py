"""Tests of attribshield.maskers.RandomMasker: the random-segment control."""
from __future__ import annotations

import doctest
import itertools
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from sklearn.base import clone

from attribshield.base import Masker
from attribshield.explainers import GridSegmenter, LimeExplainer
from attribshield.maskers import LimeMasker, RandomMasker, SpuriousSelection, pixel_mask
from attribshield.maskers import random_masker as random_masker_module
from attribshield.testing import LinearImageModel

FAST = settings(deadline=None, max_examples=15)


def random_segments(n, s, h=8, w=8, seed=0):
    """Random label maps with every label 0..s-1 present in each image."""
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, s, (n, h * w), generator=g)
    for i in range(n):
        seg[i, torch.randperm(h * w, generator=g)[:s]] = torch.arange(s)
    return seg.reshape(n, h, w)


class NoExplain:
    """An explainer that must not be asked for explanations (only its segmenter is read)."""

    def __init__(self, segmenter=None):
        self.segmenter = segmenter

    def explain(self, *args, **kwargs):  # pragma: no cover - must not run
        raise AssertionError("RandomMasker must not explain")


# --------------------------------------------------------------------------- uniformity
def test_each_valid_segment_is_equally_likely_chi_square():
    masker = RandomMasker(top_k=3, random_state=0)
    valid = torch.ones(500, 16, dtype=torch.bool)
    counts = torch.zeros(16)
    for _ in range(20):  # 10,000 images, fresh draws per call
        sel = masker.select(masker.segment_scores(valid=valid), valid)
        counts += sel.sum(0)
    assert int(counts.sum()) == 3 * 10_000
    assert chisquare(counts.numpy()).pvalue > 1e-3


def test_every_subset_is_equally_likely_chi_square():
    """Joint uniformity: each of the C(5, 2) = 10 pairs, not just each segment."""
    masker = RandomMasker(top_k=2, random_state=1)
    valid = torch.ones(6000, 5, dtype=torch.bool)
    sel = masker.select(masker.segment_scores(valid=valid), valid)
    pairs = {p: 0 for p in itertools.combinations(range(5), 2)}
    for row in sel.tolist():
        pairs[tuple(j for j, v in enumerate(row) if v)] += 1
    assert chisquare(list(pairs.values())).pvalue > 1e-3


def test_uniform_over_valid_segments_never_padding():
    masker = RandomMasker(top_k=2, random_state=2)
    valid = torch.arange(7)[None] < torch.tensor([4, 7] * 2000)[:, None]  # 4 or 7 valid segments
    sel = masker.select(masker.segment_scores(valid=valid), valid)
    assert not bool((sel & ~valid).any())
    assert torch.equal(sel.sum(1), torch.full((4000,), 2))
    assert chisquare(sel[0::2, :4].sum(0).numpy()).pvalue > 1e-3
    assert chisquare(sel[1::2].sum(0).numpy()).pvalue > 1e-3


# --------------------------------------------------------------------------- properties
@FAST
@given(n=st.integers(1, 5), s=st.integers(1, 12), top_k=st.integers(1, 14), seed=st.integers(0, 1000))
def test_exact_count_and_scores(n, s, top_k, seed):
    g = torch.Generator().manual_seed(seed)
    n_valid = torch.randint(1, s + 1, (n,), generator=g)
    valid = torch.arange(s)[None] < n_valid[:, None]
    masker = RandomMasker(top_k=top_k, random_state=seed)
    scores = masker.segment_scores(valid=valid)
    assert scores.shape == (n, s) and scores.dtype == torch.float32
    assert torch.equal(scores[~valid], torch.zeros(int((~valid).sum())))
    for i in range(n):
        k = int(n_valid[i])  # the valid scores are a permutation of 1/k, 2/k, ..., 1
        expect = torch.arange(1, k + 1, dtype=torch.float64) / k
        assert torch.allclose(scores[i, :k].double().sort().values, expect)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sel = masker.select(scores, valid)
    assert torch.equal(sel.sum(1), torch.clamp(n_valid, max=top_k))
    assert not bool((sel & ~valid).any())


def test_determinism_for_a_seed_fresh_draws_per_call():
    valid = torch.ones(8, 16, dtype=torch.bool)
    a, b = RandomMasker(random_state=3), RandomMasker(random_state=3)
    a1, a2 = a.segment_scores(valid=valid), a.segment_scores(valid=valid)
    assert torch.equal(a1, b.segment_scores(valid=valid)) and torch.equal(a2, b.segment_scores(valid=valid))
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, RandomMasker(random_state=4).segment_scores(valid=valid))
    torch.manual_seed(5)  # random_state=None draws from torch's global generator
    c = RandomMasker().segment_scores(valid=valid)
    torch.manual_seed(5)
    assert torch.equal(c, RandomMasker().segment_scores(valid=valid))


def test_scores_from_attribution_segments_or_valid():
    X = torch.rand(2, 1, 8, 8)
    attr = LimeExplainer(n_samples=20, random_state=0).explain(LinearImageModel(torch.randn(3, 64)), X)
    m = RandomMasker(random_state=0)
    s_attr = m.segment_scores(attr, attribution_adv=object(), input_grad=object())  # extra pieces ignored
    assert s_attr.shape == (2, 16)
    seg = torch.stack([random_segments(1, 3)[0], random_segments(1, 5, seed=1)[0]])
    s_seg = RandomMasker(random_state=0).segment_scores(segments=seg)
    assert s_seg.shape == (2, 5) and torch.equal(s_seg[0, 3:], torch.zeros(2)) and bool((s_seg[1] > 0).all())
    assert m.needs() == frozenset()
    with pytest.raises(ValueError, match="segments"):
        m.segment_scores()
    with pytest.raises(ValueError, match="segments must be an integer"):
        m.segment_scores(segments=seg.float())
    with pytest.raises(ValueError, match="valid must have shape"):
        m.segment_scores(valid=torch.ones(4, dtype=torch.bool))


# --------------------------------------------------------------------------- apply
@FAST
@given(fill=st.sampled_from(["mean", "constant", "blur", "noise"]), s=st.integers(1, 12), seed=st.integers(0, 1000))
def test_apply_changes_only_masked_pixels_like_lime_masker(fill, s, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(3, 3, 8, 8, generator=g)
    seg = random_segments(3, s, seed=seed)
    masker = RandomMasker(top_k=2, fill=fill, fill_value=0.4, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sel = masker.select(masker.segment_scores(segments=seg))
    out = masker.apply(X, seg, sel)
    m = pixel_mask(seg, sel, dtype=torch.bool).expand_as(X)
    assert out.shape == X.shape and out.dtype == X.dtype
    assert torch.equal(out[~m], X[~m])
    if fill == "noise":
        assert bool((out[m] >= 0).all() and (out[m] < 1).all())
    else:  # the same fills as LimeMasker
        assert torch.equal(out, LimeMasker(fill=fill, fill_value=0.4).apply(X, seg, sel))
    assert torch.allclose(masker.apply_mask(X, pixel_mask(seg, sel), segments=seg)[~m], X[~m])


# --------------------------------------------------------------------------- find_spurious
def test_find_spurious_segments_without_explaining():
    model = LinearImageModel(torch.randn(3, 64))
    X, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    res = RandomMasker(top_k=1, random_state=0).find_spurious(model, X, y, NoExplain(GridSegmenter(cell=4)))
    assert isinstance(res, SpuriousSelection) and res.attribution is None
    assert res.instability is None and res.irrelevance is None
    assert res.selected.shape == (4, 4) and torch.equal(res.selected.sum(1), torch.ones(4, dtype=torch.long))
    assert torch.equal(res.segments, GridSegmenter(cell=4).segment(X))
    assert torch.equal(res.pixel_mask().sum((1, 2, 3)), torch.full((4,), 16.0))
    # the default grid (16 segments) without an explainer, without a segmenter, or without a model
    for explainer in (None, NoExplain(), LimeExplainer(n_samples=10)):
        res = RandomMasker(random_state=0).find_spurious(model, X, y, explainer)
        assert res.selected.shape == (4, 16) and torch.equal(res.selected.sum(1), torch.full((4,), 3))
    res2 = RandomMasker(random_state=0).find_spurious(None, X, y)
    assert torch.equal(res2.selected, res.selected)  # same seed, same draws
    assert model.weight.grad is None


def test_find_spurious_bad_inputs():
    X, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    m = RandomMasker()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.find_spurious(None, X + 2, y)
    with pytest.raises(ValueError, match="different lengths"):
        m.find_spurious(None, X, y[:1])
    with pytest.raises(ValueError, match="perturb"):
        m.find_spurious(None, X, y, attacker=object())
    with pytest.raises(ValueError, match="segmenter"):
        m.find_spurious(None, X, y, NoExplain(segmenter=object()))


def test_trains_in_the_closed_loop():
    from attribshield import RobustAttributionClassifier
    from attribshield.testing import TinyMLP, make_images

    X, y = make_images(n=16)
    clf = RobustAttributionClassifier(TinyMLP, masker=RandomMasker(top_k=2, random_state=0),
                                      explainer=LimeExplainer(segmenter=GridSegmenter(cell=4)),
                                      refine_every=1, refine_fraction=1.0, max_epochs=2, lr=0.1,
                                      batch_size=8, verbose=0, random_state=0).fit(X, y)
    assert bool((clf.mask_cache_.selected.sum(1) == 2).all())
    assert any("masked_loss" in b for b in clf.history[-1]["batches"])


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"fill": "zeros"}, "fill must be"),
        ({"fill_value": 2.0}, "fill_value"),
        ({"blur_sigma": -1.0}, "blur_sigma"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    masker = RandomMasker(**kwargs)  # __init__ does not validate
    valid = torch.ones(1, 4, dtype=torch.bool)
    seg = random_segments(1, 4)
    for call in (lambda: masker.segment_scores(valid=valid), lambda: masker.select(torch.rand(1, 4), valid),
                 lambda: masker.apply(torch.rand(1, 1, 8, 8), seg, valid),
                 lambda: masker.find_spurious(None, torch.rand(1, 1, 8, 8), [0])):
        with pytest.raises(ValueError, match=match):
            call()


def test_protocol_clone_pickle_and_doctests():
    masker = RandomMasker(top_k=2, fill="noise", random_state=1)
    assert isinstance(masker, Masker)
    masker.segment_scores(valid=torch.ones(2, 4, dtype=torch.bool))  # creates the generator
    c = clone(masker)
    assert c.get_params() == masker.get_params() and "_generators" not in c.__dict__
    p = pickle.loads(pickle.dumps(masker))
    valid = torch.ones(3, 6, dtype=torch.bool)
    assert torch.equal(p.segment_scores(valid=valid), c.segment_scores(valid=valid))  # restart from the seed
    res = doctest.testmod(random_masker_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
