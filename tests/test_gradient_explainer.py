"""Tests of attribshield.explainers.gradient: first-order LIME from one input gradient."""
from __future__ import annotations

import doctest
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from attribshield.base import Explainer
from attribshield.explainers import Attribution, GradientExplainer, GridSegmenter, LimeExplainer, segment_means
from attribshield.explainers import gradient as gradient_module
from attribshield.explainers.gradient import attribute_from_grad
from attribshield.maskers import LimeMasker
from attribshield.testing import ConstantModel, LinearImageModel

FAST = settings(deadline=None, max_examples=15)


# --------------------------------------------------------------------------- tiny models
class LinearProba(torch.nn.Module):
    """Two classes with ``p_0(x) = b + <a, x>`` exactly (logits are the log-probabilities)."""

    def __init__(self, a, b=0.5):
        super().__init__()
        self.a = torch.nn.Parameter(torch.as_tensor(a, dtype=torch.float32).reshape(-1).clone())
        self.b = b

    def forward(self, x):
        p = self.b + x.flatten(1) @ self.a.to(x.dtype)
        return torch.stack([torch.log(p), torch.log1p(-p)], 1)


def quadrants(n=1, h=8, w=8):
    r = torch.arange(h)[:, None] >= h // 2
    c = torch.arange(w)[None, :] >= w // 2
    return (r.long() * 2 + c.long()).expand(n, h, w).clone()


def random_segments(n, s, h=8, w=8, seed=0):
    """Random label maps with every label 0..s-1 present in each image."""
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, s, (n, h * w), generator=g)
    for i in range(n):
        seg[i, torch.randperm(h * w, generator=g)[:s]] = torch.arange(s)
    return seg.reshape(n, h, w)


def tiny_cnn(c=3, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(c, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Tanh(),
                            torch.nn.Dropout(0.5), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                            torch.nn.Linear(16, k))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def by_hand(grad, X, seg, fill):
    """sum over each segment's pixels and channels of grad * (X - fill), float64."""
    n, s = X.shape[0], int(seg.max()) + 1
    contrib = (grad.double() * (X.double() - fill.double())).sum(1).reshape(n, -1)
    out = torch.zeros(n, s, dtype=torch.float64)
    for j in range(s):
        out[:, j] = (contrib * (seg.reshape(n, -1) == j)).sum(1)
    return out


# --------------------------------------------------------------------------- analytic values
@pytest.mark.parametrize("fill", ["mean", 0.3])
def test_exactly_linear_probability(fill):
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(64, generator=g) - 0.5) * 0.01  # p_0 stays in (0.1, 0.9) on [0, 1] images
    model = LinearProba(a)
    X = torch.rand(3, 1, 8, 8, generator=g)
    seg = GridSegmenter(cell=2).segment(X)
    attr = GradientExplainer(fill=fill).explain(model, X, 0)
    fimg = segment_means(X, seg) if fill == "mean" else torch.full_like(X, fill)
    expect = by_hand(a.reshape(1, 1, 8, 8).expand_as(X), X, seg, fimg)
    assert isinstance(attr, Attribution)
    assert attr.weights.dtype == torch.float32 and attr.weights.shape == (3, 16)
    assert torch.allclose(attr.weights.double(), expect, atol=1e-6)
    # the intercept is the (here exact) value with every segment removed: p_0(fill image)
    p_fill = torch.softmax(model(fimg).double(), 1)[:, 0]
    assert torch.allclose(attr.intercept.double(), p_fill, atol=1e-6)
    assert bool(torch.isnan(attr.score).all()) and attr.target.tolist() == [0, 0, 0]
    # class 1 has the opposite weights
    assert torch.allclose(GradientExplainer(fill=fill).explain(model, X, 1).weights, -attr.weights, atol=1e-6)


def test_equals_unregularised_lime_on_a_linear_probability():
    """First-order LIME: where p_y is linear in the pixels, LIME's regression is exact and equal."""
    g = torch.Generator().manual_seed(1)
    model = LinearProba((torch.rand(64, generator=g) - 0.5) * 0.01)
    X = torch.rand(2, 1, 8, 8, generator=g)
    grad_attr = GradientExplainer().explain(model, X, 0)
    lime_attr = LimeExplainer(n_samples=100, alpha=0.0, random_state=0).explain(model, X, 0)
    assert torch.allclose(grad_attr.weights, lime_attr.weights, atol=1e-5)
    assert torch.allclose(grad_attr.intercept, lime_attr.intercept, atol=1e-5)


@pytest.mark.parametrize("output", ["proba", "log_proba"])
def test_linear_softmax_model_by_hand(output):
    g = torch.Generator().manual_seed(2)
    W, b = torch.randn(3, 3 * 64, generator=g) * 0.1, torch.randn(3, generator=g)
    model = LinearImageModel(W, b)
    X = torch.rand(4, 3, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    seg = random_segments(4, 7, seed=2)
    attr = GradientExplainer(output=output).explain(model, X, y, segments=seg)
    p = torch.softmax(X.flatten(1).double() @ W.T.double() + b.double(), 1)
    dlogp = W.double()[y] - p @ W.double()  # d log p_y / d x
    grad = dlogp * p.gather(1, y[:, None]) if output == "proba" else dlogp
    expect = by_hand(grad.reshape(X.shape), X, seg, segment_means(X, seg))
    assert torch.allclose(attr.weights.double(), expect, atol=1e-6)
    value = p.gather(1, y[:, None])[:, 0]
    value = value if output == "proba" else value.log()
    assert torch.allclose(attr.intercept.double(), value - expect.sum(1), atol=1e-5)


def test_zero_for_ignored_segments_and_constant_models():
    seg = quadrants(3)
    W = torch.zeros(2, 64)
    W[0] = (seg[0] == 1).flatten().float()  # class 0 reads the top-right quadrant only
    X = torch.rand(3, 1, 8, 8)
    attr = GradientExplainer(fill=0.0).explain(LinearImageModel(W), X, 0, segments=seg)
    assert torch.equal(attr.weights[:, [0, 2, 3]], torch.zeros(3, 3))
    assert bool((attr.weights[:, 1] > 0).all())
    const = GradientExplainer().explain(ConstantModel(3), X)
    assert torch.equal(const.weights, torch.zeros(3, 16))
    assert torch.allclose(const.intercept, torch.softmax(torch.linspace(-1, 1, 3), 0)[2].expand(3))


# --------------------------------------------------------------------------- properties
@FAST
@given(n=st.integers(1, 4), s=st.integers(1, 12), c=st.sampled_from([1, 3]), seed=st.integers(0, 1000))
def test_pixel_map_is_constant_per_segment_and_shaped(n, s, c, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, c, 8, 8, generator=g)
    seg = random_segments(n, s, seed=seed)
    attr = GradientExplainer().explain(tiny_cnn(c), X, segments=seg)
    pix = attr.to_pixels()
    assert pix.shape == (n, 1, 8, 8) and attr.weights.shape == (n, s) and bool(attr.valid.all())
    for i in range(n):
        for j in range(s):
            vals = pix[i, 0][seg[i] == j]
            assert bool((vals == vals[0]).all()) and float(vals[0]) == float(attr.weights[i, j])


def test_batch_equals_one_by_one_and_is_deterministic():
    model = tiny_cnn(3).eval()
    X = torch.rand(5, 3, 8, 8)
    explainer = GradientExplainer(batch_size=2)
    batch = explainer.explain(model, X)
    assert torch.equal(batch.target, model(X).argmax(1))  # target None: the predicted class
    for i in range(5):
        one = GradientExplainer().explain(model, X[i : i + 1])
        assert torch.allclose(one.weights, batch.weights[i : i + 1], atol=1e-6)
        assert torch.allclose(one.intercept, batch.intercept[i : i + 1], atol=1e-6)
        assert torch.equal(one.target, batch.target[i : i + 1])
    assert torch.equal(explainer.explain(model, X).weights, batch.weights)


def test_padding_relabelling_and_shared_segments():
    X = torch.rand(2, 1, 8, 8)
    seg = torch.stack([quadrants()[0] * 2 + 1, random_segments(1, 6, seed=3)[0]])  # labels 1, 3, 5, 7 -> 0..3
    attr = GradientExplainer().explain(tiny_cnn(1), X, segments=seg)
    assert attr.weights.shape == (2, 6) and attr.valid.tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    assert torch.equal(attr.weights[0, 4:], torch.zeros(2)) and torch.equal(attr.segments[0], quadrants()[0])
    assert attr.top_segments(6)[0, 4:].min() >= 4  # padding ranks last
    # one (H, W) segmentation for every image
    shared = GradientExplainer().explain(tiny_cnn(1), X, segments=quadrants()[0])
    assert shared.weights.shape == (2, 4) and torch.equal(shared.segments, quadrants(2))


def test_modes_param_grads_and_input_untouched():
    model = tiny_cnn(3)
    model.train()
    model[3].eval()  # a submodule with its own flag
    marker = torch.full_like(model[0].weight, 7.0)
    model[0].weight.grad = marker.clone()
    X = torch.rand(4, 3, 8, 8)
    X0 = X.clone()
    a = GradientExplainer().explain(model, X)
    b = GradientExplainer().explain(model, X)
    assert torch.equal(a.weights, b.weights)  # eval mode: no dropout, BatchNorm running stats
    assert model.training and model[1].training and not model[3].training
    assert torch.equal(model[0].weight.grad, marker)
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")
    assert torch.equal(X, X0)
    with torch.no_grad():  # works inside a caller's no_grad block
        assert torch.equal(GradientExplainer().explain(model, X).weights, a.weights)


def test_float64_module_gives_float64_weights():
    model = LinearImageModel(torch.randn(3, 64) * 0.1).double()
    attr = GradientExplainer().explain(model, torch.rand(2, 1, 8, 8))
    assert attr.weights.dtype == torch.float64 and attr.intercept.dtype == torch.float64


# --------------------------------------------------------------------------- attribute_from_grad
def test_attribute_from_grad_matches_explain_and_fgsm_gradient():
    model = tiny_cnn(3).eval()
    X, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    seg = GridSegmenter(cell=2).segment(X)
    # the gradient an FGSM step computes: d CE / d x (summed over the batch); log p_y = -CE
    x = X.clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(ce, x)
    from_grad = GradientExplainer().attribute_from_grad(X, -g, seg, y)
    log_attr = GradientExplainer(output="log_proba").explain(model, X, y, segments=seg)
    assert torch.allclose(from_grad.weights, log_attr.weights, atol=1e-6)
    assert bool(torch.isnan(from_grad.intercept).all()) and torch.equal(from_grad.target, y)
    # d log p_y = d p_y / p_y: a positive factor per image, the same ranking within an image
    proba = GradientExplainer().explain(model, X, y, segments=seg)
    p_y = torch.softmax(model(X).double(), 1).gather(1, y[:, None])
    assert torch.allclose(proba.weights.double(), log_attr.weights.double() * p_y, atol=1e-6)
    assert torch.equal(proba.weights.argsort(1), log_attr.weights.argsort(1))
    # value sets the intercept
    v = torch.log(p_y[:, 0])
    with_value = attribute_from_grad(X, -g, seg, y, value=v)
    assert torch.allclose(with_value.intercept.double(), v - from_grad.weights.double().sum(1), atol=1e-6)
    # the masker reads it like any explanation
    sel = LimeMasker(criterion="dominant", top_k=2).select(
        LimeMasker(criterion="dominant").segment_scores(proba), proba.valid)
    assert torch.equal(sel.sum(1), torch.full((6,), 2))


def test_attribute_from_grad_bad_inputs():
    X, seg = torch.rand(2, 1, 8, 8), quadrants(2)
    g = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="grad must have the shape"):
        attribute_from_grad(X, g[:1], seg, 0)
    with pytest.raises(ValueError, match="segments must"):
        attribute_from_grad(X, g, seg.float(), 0)
    with pytest.raises(ValueError, match="segments must hold labels >= 0"):
        attribute_from_grad(X, g, seg - 1, 0)
    with pytest.raises(ValueError, match="fill"):
        attribute_from_grad(X, g, seg, 0, fill="blur")
    with pytest.raises(ValueError, match="target"):
        attribute_from_grad(X, g, seg, [0, 1, 2])
    with pytest.raises(ValueError, match="value"):
        attribute_from_grad(X, g, seg, 0, value=torch.zeros(3))
    with pytest.raises(ValueError, match="X must be"):
        attribute_from_grad(X[0], g, seg, 0)


# --------------------------------------------------------------------------- with the masker
def test_masker_criteria_run_on_gradient_explanations():
    seg = quadrants(2)
    W = torch.zeros(2, 64)
    W[0] = 2.0 * (seg[0] == 1).flatten().float()
    model = LinearImageModel(W)
    X, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 0])
    explainer = GradientExplainer(segmenter=GridSegmenter(cell=4), fill=0.0)
    res = LimeMasker(criterion="dominant", top_k=1).find_spurious(model, X, y, explainer)
    assert res.selected.tolist() == [[False, True, False, False]] * 2
    assert torch.allclose(res.scores[:, 1], torch.ones(2))
    res = LimeMasker(criterion="irrelevant", top_k=1).find_spurious(model, X, y, explainer)
    assert res.selected.shape == (2, 4) and model.weight.grad is None


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"segmenter": object()}, "segmenter"),
        ({"fill": "zeros"}, "fill"),
        ({"fill": float("nan")}, "fill"),
        ({"fill": True}, "fill"),
        ({"output": "logit"}, "output"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"n_steps": 0}, "n_steps"),
        ({"n_steps": 2.0}, "n_steps"),
        ({"channels_last": 1}, "channels_last"),
        ({"autocast": "int8"}, "autocast"),
        ({"autocast": True}, "autocast"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    explainer = GradientExplainer(**kwargs)  # __init__ does not validate

    class Boom(torch.nn.Module):
        def forward(self, x):  # pragma: no cover - must not run
            raise AssertionError("validation must come before any work")

    with pytest.raises(ValueError, match=match):
        explainer.explain(Boom(), torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("output", ["proba", "log_proba"])
def test_integrated_gradients_add_up_to_the_change_from_the_fill(output):
    """n_steps=k averages the gradient over the path from the fill to x: with many steps the
    weights sum to out(x) - out(fill) (completeness), and the intercept is out(fill)."""
    model, X = tiny_cnn().eval(), torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seg = quadrants(3)
    attr = GradientExplainer(n_steps=64, output=output).explain(model, X, segments=seg)
    fill = segment_means(X, seg)
    with torch.no_grad():
        out = torch.log_softmax(model(fill).double(), 1).gather(1, attr.target[:, None])[:, 0]
    out = out.exp() if output == "proba" else out
    torch.testing.assert_close(attr.intercept.double(), out, rtol=0, atol=2e-3)
    at_x = GradientExplainer(output=output).explain(model, X, segments=seg)
    assert float((at_x.intercept.double() - out).abs().max()) > 5 * float((attr.intercept.double() - out).abs().max())


def test_one_step_is_the_gradient_at_the_half_way_blend():
    model, X = tiny_cnn().eval(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    seg = quadrants(2)
    fill = segment_means(X, seg)
    mid = ((X + fill) / 2).requires_grad_(True)
    t = model(X).argmax(1)
    p = torch.softmax(model(mid).double(), 1).gather(1, t[:, None]).sum()
    (g,) = torch.autograd.grad(p, mid)
    expected = attribute_from_grad(X, g, seg, t).weights
    torch.testing.assert_close(GradientExplainer(n_steps=1).explain(model, X, segments=seg).weights, expected)


def test_bad_inputs_raise():
    model = LinearImageModel(torch.randn(3, 64))
    X = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="samples"):
        GradientExplainer().explain(model, X, samples=torch.ones(1, 4, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="target"):
        GradientExplainer().explain(model, X, 3)
    with pytest.raises(ValueError, match="target"):
        GradientExplainer().explain(model, X, [0, 1, 2])
    with pytest.raises(ValueError, match="segments must have shape"):
        GradientExplainer().explain(model, X, segments=torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GradientExplainer().explain(model, X + 2)
    with pytest.raises(ValueError, match="module rejected"):
        GradientExplainer().explain(model, torch.rand(2, 3, 8, 8))


def test_protocol_clone_pickle_and_doctests():
    explainer = GradientExplainer(segmenter=GridSegmenter(cell=4), fill=0.2, output="log_proba", batch_size=8)
    assert isinstance(explainer, Explainer)
    assert clone(explainer).get_params()["fill"] == 0.2
    restored = pickle.loads(pickle.dumps(explainer))
    X = torch.rand(2, 1, 8, 8)
    model = LinearImageModel(torch.randn(3, 64))
    assert torch.equal(restored.explain(model, X).weights, explainer.explain(model, X).weights)
    res = doctest.testmod(gradient_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


# --------------------------------------------------------------------------- path="cube"
class SegmentProduct(torch.nn.Module):
    """Two classes with ``p_0 = 0.1 + 0.8 * s_0 * s_1 * s_2``, ``s_j`` the mean pixel of
    quadrant ``j`` of an 8x8 one-channel image: on blends of an all-ones image with a 0
    fill, ``s_j`` is quadrant ``j``'s keep fraction."""

    def forward(self, x):
        s = torch.nn.functional.avg_pool2d(x[:, 0:1], 4).flatten(1)  # quadrants 0, 1 / 2, 3
        p = 0.1 + 0.8 * s[:, 0] * s[:, 1] * s[:, 2]
        return torch.stack([torch.log(p), torch.log1p(-p)], 1)


def test_cube_path_estimates_the_effect_of_removing_a_segment_among_random_blends():
    """Mean gradient over uniform per-segment blends = E[out(m_j=1) - out(m_j=0)] over the
    others' blends: 0.8 * E[m_a m_b] = 0.2 for quadrants 0-2, 0 for quadrant 3.  The straight
    path (integrated gradients) gives 0.8 * int t^2 dt = 0.267 instead: the two differ."""
    X, seg = torch.ones(6, 1, 8, 8), quadrants(6)
    cube = GradientExplainer(fill=0.0, n_steps=256, path="cube", random_state=0).explain(SegmentProduct(), X, 0,
                                                                                          segments=seg)
    est = cube.weights.double()
    assert float((est[:, :3].mean() - 0.2).abs()) < 0.01 and float((est[:, :3] - 0.2).abs().max()) < 0.04
    assert float(est[:, 3].abs().max()) < 1e-9
    straight = GradientExplainer(fill=0.0, n_steps=256).explain(SegmentProduct(), X, 0, segments=seg)
    torch.testing.assert_close(straight.weights[:, :3].double(), torch.full((6, 3), 0.8 / 3, dtype=torch.float64),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("fill", ["mean", 0.3])
def test_cube_path_is_exact_for_a_linear_probability(fill):
    """Where the gradient is constant, every blend gives the same weights as x itself."""
    g = torch.Generator().manual_seed(5)
    model = LinearProba((torch.rand(64, generator=g) - 0.5) * 0.01)
    X = torch.rand(3, 1, 8, 8, generator=g)
    at_x = GradientExplainer(fill=fill).explain(model, X, 0)
    cube = GradientExplainer(fill=fill, n_steps=3, path="cube", random_state=1).explain(model, X, 0)
    torch.testing.assert_close(cube.weights, at_x.weights, rtol=0, atol=1e-6)


def test_cube_path_seeded_batch_independent_and_random():
    model, X = tiny_cnn().eval(), torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(n_steps=4, path="cube")
    seeded = GradientExplainer(random_state=7, batch_size=2, **kw)
    a = seeded.explain(model, X)
    torch.testing.assert_close(seeded.explain(model, X).weights, a.weights, rtol=0, atol=0)  # same every call
    b = GradientExplainer(random_state=7, batch_size=256, **kw).explain(model, X)
    c = GradientExplainer(random_state=8, **kw).explain(model, X)
    torch.testing.assert_close(a.weights, b.weights, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a.weights, c.weights)
    # padding columns stay 0 and invalid with uneven segment counts
    seg = torch.stack([quadrants()[0], torch.zeros(8, 8, dtype=torch.long), quadrants()[0] % 2,
                       quadrants()[0], quadrants()[0]])
    attr = GradientExplainer(random_state=0, **kw).explain(model, X, segments=seg)
    assert attr.valid[1].tolist() == [True, False, False, False] and float(attr.weights[1, 1:].abs().max()) == 0


@given(k=st.integers(1, 9), n=st.integers(1, 3), s=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
@FAST
def test_latin_hypercube_puts_one_point_in_every_stratum(k, n, s, seed):
    pts = gradient_module.latin_hypercube(k, n, s, torch.Generator().manual_seed(seed))
    assert pts.shape == (k, n, s) and bool((pts >= 0).all()) and bool((pts < 1).all())
    strata = (pts * k).floor().long().sort(0).values
    assert bool((strata == torch.arange(k)[:, None, None]).all())


@pytest.mark.parametrize("kwargs, match", [({"path": "diagonal", "n_steps": 2}, "path"),
                                           ({"path": "cube"}, "n_steps"),
                                           ({"path": "cube", "n_steps": 2, "random_state": "x"}, "random_state")])
def test_cube_path_bad_hyperparameters_raise_before_work(kwargs, match):
    class Boom(torch.nn.Module):
        def forward(self, x):  # pragma: no cover - must not run
            raise AssertionError("validation must come before any work")

    with pytest.raises(ValueError, match=match):
        GradientExplainer(**kwargs).explain(Boom(), torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("n_steps, path", [(None, "straight"), (2, "straight"), (6, "cube")])
def test_channels_last_and_bf16_passes_agree_with_fp32(n_steps, path):
    """The fast passes (channels_last + bf16 autocast) give the fp32 weights up to bf16
    rounding, in every mode; the module, its flags and parameter gradients are untouched."""
    model, X = tiny_cnn().eval(), torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    kw = dict(n_steps=n_steps, path=path, random_state=2)
    ref = GradientExplainer(**kw).explain(model, X)
    fast = GradientExplainer(channels_last=True, autocast="bf16", **kw).explain(model, X)
    assert fast.weights.dtype == torch.float32 and not torch.equal(fast.weights, ref.weights)  # bf16 ran
    scale = ref.weights.abs().amax(1, keepdim=True)
    assert float(((fast.weights - ref.weights).abs() / scale).max()) < 0.03
    assert torch.equal(fast.target, ref.target)
    other = GradientExplainer(**{**kw, "random_state": 3}).explain(model, X) if path == "cube" else None
    if other is not None:  # the tolerance is tighter than the blends' own noise
        assert float(((other.weights - ref.weights).abs() / scale).max()) > 0.03
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert model[0].weight.is_contiguous()  # the module's layout is not changed
