"""Tests of attribshield.evaluation.occlusion on analytic tiny models (8x8 images, 4x4 grid)."""
from __future__ import annotations

import copy
import doctest

import numpy as np
import pytest
import torch
from torch import nn

from attribshield.evaluation import clean_accuracy, occlude_segments, occlusion_accuracy
from attribshield.evaluation import occlusion as occlusion_module
from attribshield.explainers import Attribution, GridSegmenter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread (see tests/test_evaluation.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SEGMENT = 5  # on an 8x8 image the 4x4 grid has cells of 2x2; label 5 covers rows 2-3, columns 2-3


class _OneSegment(nn.Module):
    """Looks only inside grid segment 5: class 0 iff pixel (2, 2) exceeds pixel (3, 3) by 0.01.

    Filling segment 5 (with its mean colour or any constant) makes the two pixels equal, so the
    prediction becomes class 1 whatever the image; every other segment is ignored.
    """

    def forward(self, x):
        d = 10 * (x[:, 0, 2, 2] - x[:, 0, 3, 3])
        return torch.stack([d, torch.full_like(d, 0.1)], 1)


def _one_segment_data(n=16, seed=0):
    """``n`` images, the first half of class 0 and the second half of class 1 (the model's labels)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 1, 8, 8, generator=g)
    half = n // 2
    X[:half, 0, 2, 2], X[:half, 0, 3, 3] = 0.9, 0.1
    X[half:, 0, 2, 2], X[half:, 0, 3, 3] = 0.1, 0.9
    y = torch.tensor([0] * half + [1] * (n - half))
    return X, y


def _linear(n_classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes))


def _bn_mlp(n_classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, n_classes))


def _data(n=8, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _labels(model, X, flip=()):
    with torch.no_grad():
        y = model.eval()(X).argmax(1)
    for i in flip:
        y[i] = (y[i] + 1) % 4
    return y


class _Fitted:
    """Stand-in for a fitted estimator: only ``module_`` matters."""

    def __init__(self, module):
        self.module_ = module


class _FixedExplainer:
    """Returns preset segment weights (one row per image) and records its calls."""

    def __init__(self, weights):
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.calls = []

    def explain(self, model, X, target=None, *, segments=None):
        self.calls.append((X.shape[0], None if segments is None else segments.clone(), target))
        n, s = X.shape[0], self.weights.shape[1]
        w = self.weights.expand(n, s) if self.weights.shape[0] == 1 else self.weights
        return Attribution(segments=segments, weights=w, valid=torch.ones(n, s, dtype=torch.bool),
                           intercept=torch.zeros(n), score=torch.ones(n), target=torch.as_tensor(target))


class _Recorder(nn.Module):
    """Wraps a model and keeps every batch it is called on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


# --------------------------------------------------------------------------- images
def test_occluded_pixels_equal_the_segment_mean_and_others_are_unchanged():
    X = _data(5, seed=3)
    seg = GridSegmenter().segment(X)
    g = torch.Generator().manual_seed(1)
    hidden = torch.rand(5, 16, generator=g) < 0.4
    out = occlude_segments(X, seg, hidden)
    assert out.shape == X.shape and out.dtype == X.dtype
    for n in range(5):
        for s in range(16):
            pix = seg[n] == s
            if hidden[n, s]:
                expected = float(X[n, 0][pix].double().mean())
                assert (out[n, 0][pix].double() - expected).abs().max() < 1e-7
            else:
                assert torch.equal(out[n, 0][pix], X[n, 0][pix])
    # a constant fill; nothing hidden is the identity; X itself is not modified
    const = occlude_segments(X, seg, hidden, fill=0.25)
    pix = torch.gather(hidden, 1, seg.flatten(1)).view(5, 1, 8, 8)
    assert torch.equal(const[pix], torch.full_like(const[pix], 0.25)) and torch.equal(const[~pix], X[~pix])
    assert torch.equal(occlude_segments(X, seg, torch.zeros(5, 16, dtype=torch.bool)), X)


def test_occluded_colour_images_take_each_channel_mean():
    X = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seg = GridSegmenter().segment(X)
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, SEGMENT] = True
    out = occlude_segments(X, seg, hidden)
    cell = out[:, :, 2:4, 2:4]
    assert torch.allclose(cell, X[:, :, 2:4, 2:4].mean((2, 3), keepdim=True).expand_as(cell), atol=1e-7)
    out[:, :, 2:4, 2:4] = X[:, :, 2:4, 2:4]
    assert torch.equal(out, X)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fill": "zero"}, "fill"),
        ({"fill": 1.5}, "fill"),
        ({"fill": True}, "fill"),
        ({"hidden": torch.ones(2, 16)}, "bool"),
        ({"hidden": torch.ones(2, 4, dtype=torch.bool)}, "columns"),
        ({"segments": torch.zeros(2, 8, 8)}, "integer"),
    ],
)
def test_occlude_segments_rejects_bad_input(kwargs, match):
    X = _data(2)
    args = {"X": X, "segments": GridSegmenter().segment(X), "hidden": torch.ones(2, 16, dtype=torch.bool)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        occlude_segments(**args)


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("mode", ["random", "attributed"])
def test_k_zero_is_clean_accuracy_and_needs_no_explanation(mode):
    model = _linear()
    X = _data(10)
    y = _labels(model, X, flip=[0, 4, 7])
    never = _FixedExplainer(torch.zeros(1, 16))
    per = occlusion_accuracy(model, X, y, 0, mode=mode, explainer=never, random_state=0, return_per_sample=True)
    assert np.array_equal(per, clean_accuracy(model, X, y, return_per_sample=True))
    assert occlusion_accuracy(_Fitted(model), X.numpy(), y.numpy(), k=0, mode=mode) == pytest.approx(0.7)
    assert never.calls == []


def test_attributed_k1_removes_exactly_the_segment_the_model_uses():
    X, y = _one_segment_data(16)
    model = _OneSegment()
    assert clean_accuracy(model, X, y) == 1.0
    for fill in ("mean", 0.0):
        per = occlusion_accuracy(model, X, y, 1, mode="attributed", fill=fill, random_state=0, return_per_sample=True)
        # segment 5 hidden everywhere: class 1 for every image, so exactly the class-0 half is wrong
        assert per.tolist() == [False] * 8 + [True] * 8, fill


def test_attributed_mode_occludes_the_top_k_segments_of_the_explanation():
    model = _Recorder(_linear())
    X = _data(3, seed=2)
    y = _labels(model.inner, X)
    w = torch.stack([torch.arange(16.0), -torch.arange(16.0), torch.zeros(16)])  # ties: lower label first
    w[2, 9] = 1.0
    explainer = _FixedExplainer(w)
    occlusion_accuracy(model, X, y, [2, 3], mode="attributed", explainer=explainer, batch_size=64)
    assert len(explainer.calls) == 1  # one explanation for every k
    n_expl, seg, target = explainer.calls[0]
    assert n_expl == 3 and torch.equal(seg, GridSegmenter().segment(X))
    assert torch.equal(torch.as_tensor(target), model.inner(X).argmax(1))  # the clean prediction
    seen = model.seen[-2:]  # the k=2 and k=3 batches
    for got, top in zip(seen, ([[15, 14], [0, 1], [9, 0]], [[15, 14, 13], [0, 1, 2], [9, 0, 1]])):
        hidden = torch.zeros(3, 16, dtype=torch.bool)
        hidden[torch.arange(3)[:, None], torch.tensor(top)] = True
        assert torch.equal(got, occlude_segments(X, seg, hidden))


def test_random_occlusion_drops_with_k_as_expected():
    X, y = _one_segment_data(400, seed=1)
    ks = [0, 1, 2, 4, 8, 16]
    acc = occlusion_accuracy(_OneSegment(), X, y, ks, mode="random", random_state=0)
    assert list(acc) == ks
    vals = [acc[k] for k in ks]
    # nested random sets: a point once broken stays broken, so the curve never rises
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert acc[0] == 1.0 and acc[16] == 0.5
    for k in (1, 2, 4, 8):  # segment 5 is hidden with probability k/16; then half the points fail
        assert acc[k] == pytest.approx(1 - k / 32, abs=0.06), k
    # per image, exactly k segments are hidden: k=16 of 16 leaves only the fill
    per = occlusion_accuracy(_OneSegment(), X, y, 16, random_state=5, return_per_sample=True)
    assert per.tolist() == [False] * 200 + [True] * 200


def test_random_occlusion_hides_k_distinct_segments_per_image():
    model = _Recorder(_linear())
    X = _data(6, seed=4)
    y = _labels(model.inner, X)
    occlusion_accuracy(model, X, y, 3, random_state=0, fill=0.0)
    seg = GridSegmenter().segment(X)
    filled = model.seen[-1] == 0
    for n in range(6):
        cells = {int(s) for s in seg[n][filled[n, 0]].unique()}
        assert len(cells) == 3 and all(bool(filled[n, 0][seg[n] == s].all()) for s in cells)


def test_seeded_results_are_deterministic_batch_invariant_and_protect_the_global_rng():
    model = _linear()
    X = _data(24, seed=5)
    y = _labels(model, X)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = occlusion_accuracy(model, X, y, [2, 6], random_state=7, return_per_sample=True)
    assert torch.equal(torch.rand(3), expected_next), "the caller's global RNG stream was changed"
    b = occlusion_accuracy(model, X, y, [2, 6], random_state=7, batch_size=5, return_per_sample=True)
    c = occlusion_accuracy(model, X, y, [2, 6], random_state=8, return_per_sample=True)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a[6], c[6])
    d = occlusion_accuracy(model, X, y, 4, mode="attributed", random_state=0, return_per_sample=True)
    e = occlusion_accuracy(model, X, y, 4, mode="attributed", random_state=0, batch_size=7, return_per_sample=True)
    assert np.array_equal(d, e)


def test_eval_mode_used_and_flags_restored():
    model = _bn_mlp()
    X = _data(12)
    y = _labels(model, X)
    model.train()
    model[2].eval()
    flags = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    assert occlusion_accuracy(model, X, y, 0, batch_size=5) == 1.0  # eval-mode predictions
    occlusion_accuracy(model, X, y, [1, 2], mode="attributed", random_state=0)
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_custom_segmenter_and_the_explainers_own():
    from attribshield.explainers import LimeExplainer

    model = _linear()
    X = _data(4)
    y = _labels(model, X)
    coarse = GridSegmenter(cell=4)  # 2x2 grid: 4 segments
    acc = occlusion_accuracy(model, X, y, [4], segmenter=coarse)
    assert set(acc) == {4}
    with pytest.raises(ValueError, match=r"larger than the number of segments \(4\)"):
        occlusion_accuracy(model, X, y, 5, segmenter=coarse)
    explainer = LimeExplainer(n_samples=20, segmenter=coarse, random_state=0)
    with pytest.raises(ValueError, match=r"segments \(4\)"):
        occlusion_accuracy(model, X, y, 5, mode="attributed", explainer=explainer)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": -1}, "k must"),
        ({"k": 1.5}, "k must"),
        ({"k": True}, "k must"),
        ({"k": []}, "empty"),
        ({"k": [1, -2]}, "k must"),
        ({"k": 17}, "larger than the number of segments"),
        ({"k": [1, 17], "mode": "attributed"}, "larger than the number of segments"),
        ({"mode": "worst"}, "mode"),
        ({"fill": "black"}, "fill"),
        ({"fill": float("nan")}, "fill"),
        ({"fill": -0.1}, "fill"),
        ({"fill": False}, "fill"),
        ({"explainer": object(), "mode": "attributed"}, "explainer"),
        ({"segmenter": object()}, "segmenter"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": "0"}, "random_state"),
        ({"batch_size": 0}, "batch_size"),
        ({"X": torch.rand(4, 1, 8, 8) * 3}, r"\[0, 1\]"),
        ({"y": torch.zeros(3, dtype=torch.long)}, "different lengths"),
    ],
)
def test_bad_arguments_raise_value_error_before_any_explanation(kwargs, match):
    model = _linear()
    X = _data(4)
    explainer = _FixedExplainer(torch.zeros(1, 16))
    args = {"model": model, "X": X, "y": _labels(model, X), "k": 1, "mode": "attributed", "explainer": explainer}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        occlusion_accuracy(**args)
    assert explainer.calls == []


def test_docstring_examples():
    res = doctest.testmod(occlusion_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0
