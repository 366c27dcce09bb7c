"""Tests of the amortized LIME explainer (a network trained on LIME's objective)."""
from __future__ import annotations

import itertools
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import ParameterGrid

from attribshield.base import make_generator
from attribshield.evaluation import segment_spearman
from attribshield.explainers import (
    AmortizedLimeExplainer,
    Attribution,
    GradientExplainer,
    GridSegmenter,
    draw_masks,
    fill_segments,
    lime_kernel,
    segment_means,
    weighted_ridge,
)
from attribshield.explainers.amortized import _coalition_law, _draw_coalitions
from attribshield.explainers.gradient import attribute_from_grad
from attribshield.testing import LinearImageModel


# --------------------------------------------------------------------------- tiny models
def linear_model(seed=0, scale=3.0, n_classes=2, c=1):
    """Logits ``W x``: filling a segment with its mean moves each logit linearly in the mask,
    so the class probabilities are a softmax of an affine function of the kept segments."""
    g = torch.Generator().manual_seed(seed)
    return LinearImageModel(torch.randn(n_classes, c * 64, generator=g) * scale / 8).eval()


def tiny_cnn(c=1, n_classes=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(c, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16, n_classes),
    ).eval()


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its forward calls and the images it is run on."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0
        self.rows = 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)


def images(n=16, c=1, seed=0):
    return torch.rand(n, c, 8, 8, generator=torch.Generator().manual_seed(seed))


def small(**kw):
    """A cheap explainer for 8x8 images."""
    params = dict(hidden=8, n_coalitions=8, batch_size=8, max_epochs=2, random_state=0)
    params.update(kw)
    return AmortizedLimeExplainer(**params)


@pytest.fixture(scope="module")
def fitted():
    model = tiny_cnn()
    X = images(24)
    return model, X, small(max_epochs=3).fit(model, X)


# --------------------------------------------------------------------------- the objective
def population_lime(model, X, target, segments, *, n_samples=1000, alpha=1.0, kernel_width=0.25):
    """LIME's population solution by enumerating all ``2^S`` masks (S small).

    LIME's ``P = n_samples`` samples are the all-ones mask plus ``P - 1`` i.i.d. Bernoulli(1/2)
    masks; its expected objective divided by ``P`` is a weighted least squares over all masks
    with weights ``(P - 1) / P * 2^-S * pi(z)`` (plus ``pi(1) / P`` on the all-ones mask) and
    ridge ``alpha / P``.
    """
    n = X.shape[0]
    s = int(segments.max()) + 1
    Z = torch.tensor(list(itertools.product([False, True], repeat=s)))  # (2^S, S)
    keep = Z[None].expand(n, -1, -1)
    valid = torch.ones(n, s, dtype=torch.bool)
    with torch.no_grad():
        imgs = fill_segments(X, segments, keep)
        probs = torch.softmax(model(imgs.reshape(-1, *X.shape[1:])).double(), 1).reshape(n, len(Z), -1)
    f = probs[..., target]
    pi = lime_kernel(keep, valid, kernel_width)
    P = float(n_samples)
    sw = (P - 1) / P * pi / 2**s
    sw[:, -1] += pi[:, -1] / P  # the all-ones mask is the last row of the product
    coef, icpt, _ = weighted_ridge(keep, f, sw, valid, alpha / P)
    return coef, icpt


def test_coalition_law_matches_enumeration():
    """The number kept under the kernel-tilted law equals the enumerated kernel mass."""
    valid = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    q, z_pi = _coalition_law(valid, 0.25)
    for i, s_n in enumerate([4, 6]):
        Z = torch.tensor(list(itertools.product([False, True], repeat=s_n)))
        pi = lime_kernel(Z[None], torch.ones(1, s_n, dtype=torch.bool), 0.25)[0] / 2**s_n
        assert float(z_pi[i]) == pytest.approx(float(pi.sum()), rel=1e-12)
        for k in range(s_n + 1):
            assert float(q[i, k]) == pytest.approx(float(pi[Z.sum(1) == k].sum() / pi.sum()), rel=1e-10)
        assert float(q[i, s_n + 1:].sum()) == 0.0
    keep = _draw_coalitions(valid, 4000, q, torch.Generator().manual_seed(0))
    assert keep.shape == (2, 4000, 6)
    assert bool(keep[0, :, 4:].all())  # padding is kept
    freq = torch.bincount(keep[1].sum(1), minlength=7).double() / 4000
    assert torch.allclose(freq, q[1], atol=0.03)


def _population_fit(use_gradient, **kw):
    model = linear_model(seed=1)
    X = images(12, seed=1)
    seg = GridSegmenter(cell=4).segment(X)  # 2x2 grid: 4 segments
    coef, icpt = population_lime(model, X, 1, seg)
    params = dict(segmenter=GridSegmenter(cell=4), hidden=8, n_coalitions=32, batch_size=12, max_epochs=400,
                  lr=5e-3, augment=False, use_gradient=use_gradient, random_state=0)
    expl = AmortizedLimeExplainer(**{**params, **kw}).fit(model, X, target=1)
    return expl.explain(model, X, target=1), coef, icpt


@pytest.mark.parametrize("use_gradient", [False, True])
def test_fit_converges_to_population_lime_solution(use_gradient):
    """On a model whose probability is a softmax of an affine function of the mask, the
    trained network reproduces the exact (enumerated) LIME solution of every image, with or
    without the gradient inputs."""
    attr, coef, icpt = _population_fit(use_gradient)
    w = attr.weights.double()
    err = (w - coef).abs().max()
    assert float(err) < 0.1 * float(coef.abs().max()), (w[:3], coef[:3])
    corr = np.corrcoef(w.flatten().numpy(), coef.flatten().numpy())[0, 1]
    assert corr > 0.98
    # the intercept (probability with every segment hidden) rests on low-kernel-weight masks
    assert float((attr.intercept.double() - icpt).abs().max()) < 0.05



def test_partial_fit_lowers_the_lime_objective():
    model = tiny_cnn()
    X = images(16)
    gen = torch.Generator().manual_seed(1)
    samples = draw_masks(16, 200, 16, generator=gen)
    expl = small(lr=3e-3)
    expl.partial_fit(model, X)
    before = expl.objective(model, X, samples=samples)
    for _ in range(60):
        expl.partial_fit(model, X)
    after = expl.objective(model, X, samples=samples)
    assert expl.n_iter_ == 61
    assert float(after.mean()) < 0.7 * float(before.mean())
    # the audit on the same masks: LIME's weighted R^2 of the surrogate
    score = expl.explain(model, X, samples=samples).score
    assert bool(torch.isfinite(score).all()) and bool((score <= 1).all())


# --------------------------------------------------------------------------- explanations
def test_shapes_padding_and_protocol(fitted):
    model, X, expl = fitted
    attr = expl.explain(model, X[:3])
    assert isinstance(attr, Attribution)
    assert attr.weights.shape == (3, 16) and attr.valid.all()
    assert attr.segments.shape == (3, 8, 8) and attr.intercept.shape == (3,)
    assert attr.to_pixels().shape == (3, 1, 8, 8)
    assert attr.weights.dtype == torch.float32
    assert bool(attr.score.isnan().all())
    with torch.no_grad():
        assert torch.equal(attr.target, model(X[:3]).argmax(1))
    # images with fewer segments get padding columns: weight exactly 0, valid False
    seg = torch.stack([GridSegmenter(cell=4).segment(X[:1])[0], GridSegmenter(cell=2).segment(X[:1])[0]])
    attr = expl.explain(model, X[:2], segments=seg)
    assert attr.weights.shape == (2, 16)
    assert attr.valid[0].sum() == 4 and not attr.valid[0, 4:].any()
    assert bool((attr.weights[0, 4:] == 0).all())
    assert bool((attr.weights[1] != 0).all())
    # a fixed target
    attr = expl.explain(model, X[:2], target=[2, 0])
    assert attr.target.tolist() == [2, 0]


def test_float64_inputs_keep_float64(fitted):
    model, X, expl = fitted
    attr = expl.explain(model.double(), X[:2].double())
    model.float()
    assert attr.weights.dtype == torch.float64


def test_explains_other_segmentations(fitted):
    """Trained on a 4x4 grid; explains SLIC and arbitrary label maps."""
    from attribshield.explainers import SlicSegmenter

    model, X, expl = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SLIC may give an 8x8 image few segments
        seg = SlicSegmenter(n_segments=6, compactness=1.0).segment(X[:4])
    attr = expl.explain(model, X[:4], segments=seg)
    s_n = seg.flatten(1).amax(1) + 1
    assert attr.weights.shape == (4, int(s_n.max()))
    assert torch.equal(attr.valid.sum(1), s_n)
    assert bool(torch.isfinite(attr.weights).all())
    # segments=None and the segmenter's own labels give the same explanation
    same = expl.explain(model, X[:4], segments=GridSegmenter().segment(X[:4]))
    assert torch.allclose(same.weights, expl.explain(model, X[:4]).weights)


@settings(max_examples=10, deadline=None)
@given(n_labels=st.integers(2, 9), seed=st.integers(0, 2**16), idx=st.lists(st.integers(0, 23), min_size=1, max_size=5))
def test_relabelling_and_batching(fitted, n_labels, seed, idx):
    """Permuting segment labels permutes the weights; a sub-batch explains like the batch."""
    model, X, expl = fitted
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, n_labels, (24, 8, 8), generator=g)
    seg.flatten(1)[:, :n_labels] = torch.arange(n_labels)  # every label present
    full = expl.explain(model, X, segments=seg)
    perm = torch.randperm(n_labels, generator=g)
    permuted = expl.explain(model, X, segments=perm[seg])
    assert torch.allclose(permuted.weights[:, perm], full.weights, atol=1e-6)
    part = expl.explain(model, X[idx], segments=seg[idx])
    assert torch.allclose(part.weights, full.weights[idx], atol=1e-6)
    assert torch.allclose(part.intercept, full.intercept[idx], atol=1e-6)


def test_deterministic_for_a_fixed_seed():
    model = tiny_cnn()
    X = images(16)
    a = small().fit(model, X).explain(model, X)
    b_expl = small().fit(model, X)
    b = b_expl.explain(model, X)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.intercept, b.intercept)
    # refitting the same object starts again from random_state
    assert torch.equal(b_expl.fit(model, X).explain(model, X).weights, a.weights)
    c = small(random_state=1).fit(model, X).explain(model, X)
    assert not torch.equal(a.weights, c.weights)


def test_use_gradient_and_autocast_paths():
    model = tiny_cnn()
    X = images(16)
    expl = small(use_gradient=True, channels_last=True, autocast="bf16").fit(model, X)
    attr = expl.explain(model, X)
    assert attr.weights.shape == (16, 16) and bool(torch.isfinite(attr.weights).all())
    assert expl.net_.stem.in_channels == 4  # x, x - fill, gradient, first-order attribution
    # the model's training flags and parameter gradients are untouched
    model.train()
    expl.partial_fit(model, X)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_gradient_points_feed_the_cube_path_gradient():
    """gradient_points=k >= 2 gives the network the mean gradient over k Latin-hypercube blends:
    the same draws and the same first-order attribution as GradientExplainer(path="cube")."""
    model, X = tiny_cnn(), images(6)
    seg = GridSegmenter(cell=2).segment(X)
    fimg = segment_means(X, seg)
    target = model(X).argmax(1)
    expl = small(gradient_points=4)
    grad, _ = expl._blend_gradient(model, X, fimg, target, seg, make_generator(3, "cpu"))
    ours = attribute_from_grad(X, grad, seg, target).weights
    cube = GradientExplainer(n_steps=4, path="cube", random_state=3).explain(model, X, target, segments=seg)
    torch.testing.assert_close(ours, cube.weights, rtol=1e-4, atol=1e-6)
    half = attribute_from_grad(X, small()._blend_gradient(model, X, fimg, target)[0], seg, target).weights
    assert not torch.allclose(ours, half, atol=1e-4)
    # fit, partial_fit and explain run with it; a seeded explainer explains the same way twice
    fitted = expl.fit(model, X)
    a, b = fitted.explain(model, X), fitted.explain(model, X)
    assert torch.equal(a.weights, b.weights) and bool(torch.isfinite(a.weights).all())
    fitted.partial_fit(model, X)
    assert fitted.n_iter_ == 2 * 1 + 1  # 6 images, batch 8: one step per epoch, 2 epochs, + 1



def test_cube_path_gradient_in_bf16_ranks_like_fp32():
    """The fidelity table's fast setting (channels_last + bf16 passes, 12 cube points) rests on
    the bf16 gradient ranking segments like the fp32 one: same blends, per-image Spearman."""
    model, X = tiny_cnn(), images(8)
    seg = GridSegmenter(cell=2).segment(X)
    fimg = segment_means(X, seg)
    target = model(X).argmax(1)
    w = {}
    for cast in (None, "bf16"):
        expl = small(gradient_points=12, channels_last=cast is not None, autocast=cast)
        grad, _ = expl._blend_gradient(model, X, fimg, target, seg, make_generator(5, "cpu"))
        assert grad.dtype == torch.float32
        w[cast] = attribute_from_grad(X, grad, seg, target).weights
    assert not torch.equal(w[None], w["bf16"])  # bf16 really ran
    rho = segment_spearman(w["bf16"], w[None])
    assert float(np.median(rho)) > 0.98, rho
    # within 6 % of each image's largest weight (other blends of the same law differ by ~18 %)
    scale = w[None].abs().amax(1, keepdim=True)
    assert float(((w["bf16"] - w[None]).abs() / scale).max()) < 0.06

def test_partial_fit_initialises_lazily_and_checks_the_model():
    model = tiny_cnn(n_classes=3)
    expl = small()
    assert not hasattr(expl, "net_")
    with pytest.raises(NotFittedError):
        expl.explain(model, images(2))
    expl.partial_fit(model, images(4))
    assert expl.n_classes_ == 3 and expl.n_channels_ == 1 and expl.n_iter_ == 1
    assert np.isfinite(expl.loss_)
    with pytest.raises(ValueError, match="classes"):
        expl.explain(tiny_cnn(n_classes=5), images(2))
    with pytest.raises(ValueError, match="target"):
        expl.partial_fit(model, images(2), target=[0, 3])


@pytest.mark.parametrize("target", [None, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]])
@pytest.mark.parametrize("fresh", [True, False])
def test_partial_fit_explain_equals_a_step_then_an_explanation(target, fresh):
    """The fused call of a training loop: one step on the first rows, then the explanation of
    all, with the classifier passes of the shared rows computed once."""
    model, X = tiny_cnn(), images(10)
    seg = GridSegmenter().segment(X)
    a, b = small(), small()
    if not fresh:  # an explainer that has trained before
        a.fit(model, images(8, seed=1))
        b.fit(model, images(8, seed=1))
    a.partial_fit(model, X[:3], None if target is None else target[:3])
    ref = a.explain(model, X, target, segments=seg)
    counting = CountingModel(model)
    got = b.partial_fit_explain(counting, X, target, n_fit=3, segments=seg)
    torch.testing.assert_close(got.weights, ref.weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.intercept, ref.intercept, rtol=1e-5, atol=1e-7)
    assert torch.equal(got.target, ref.target) and b.n_iter_ == a.n_iter_
    for pa, pb in zip(a.net_.parameters(), b.net_.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)
    # one clean pass, one gradient pass and one batch of coalitions (+ one pass at initialisation)
    assert counting.calls == 3 + fresh


def test_partial_fit_explain_checks_n_fit_and_handles_large_steps(monkeypatch):
    model, X = tiny_cnn(), images(6)
    expl = small()
    for bad in (0, 7, 2.0, True, None):
        with pytest.raises(ValueError, match="n_fit"):
            expl.partial_fit_explain(model, X, n_fit=bad)
    assert not hasattr(expl, "net_")  # nothing ran
    # a step spanning more than one explanation chunk: a separate step, the same result
    import attribshield.explainers.amortized as amortized

    ref = small().partial_fit(model, X[:5]).explain(model, X)
    monkeypatch.setattr(amortized, "_EXPLAIN_CHUNK", 4)
    got = expl.partial_fit_explain(model, X, n_fit=5)
    torch.testing.assert_close(got.weights, ref.weights, rtol=1e-5, atol=1e-7)
    # with gradient_points >= 2 the step trains on the explanation's blends
    cube = small(gradient_points=2)
    attr = cube.partial_fit_explain(model, X, n_fit=2)
    assert cube.n_iter_ == 1 and bool(torch.isfinite(attr.weights).all())
    assert torch.equal(attr.weights, cube.explain(model, X).weights)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "param, value",
    [
        ("kernel_width", 0.0), ("kernel_width", -1.0), ("alpha", -1.0), ("alpha", float("nan")),
        ("n_samples", 1), ("n_samples", 2.5), ("n_coalitions", 0), ("hidden", 0), ("lr", 0.0),
        ("weight_decay", -1e-3), ("batch_size", 0), ("max_epochs", 0), ("use_gradient", 1),
        ("augment", "yes"), ("all_classes", 0), ("channels_last", None), ("autocast", "int8"), ("verbose", 2),
        ("random_state", -1), ("segmenter", "grid"), ("n_coalitions", True),
        ("gradient_points", 0), ("gradient_points", 1.5),
    ],
)
def test_bad_parameters_raise_before_any_work(param, value):
    model = CountingModel(tiny_cnn())
    X = images(4)
    expl = small(**{param: value})
    for call in (expl.fit, expl.partial_fit, expl.explain):
        with pytest.raises(ValueError, match=param):
            call(model, X)
    assert model.calls == 0


def test_bad_inputs_raise(fitted):
    model, X, expl = fitted
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expl.explain(model, X * 2)
    with pytest.raises(ValueError, match="target"):
        expl.explain(model, X[:2], target=[0, 7])
    with pytest.raises(ValueError, match="segments"):
        expl.explain(model, X[:2], segments=torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="samples"):
        expl.explain(model, X[:2], samples=torch.ones(2, 5, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="module rejected"):
        expl.fit(model, images(2, c=3))
    counting = CountingModel(model)
    for bad in ("no", 0, None):
        with pytest.raises(ValueError, match="intercept"):
            expl.explain(counting, X[:2], intercept=bad)
        with pytest.raises(ValueError, match="intercept"):
            expl.partial_fit_explain(counting, X[:2], n_fit=1, intercept=bad)
    assert counting.calls == 0  # before any work


# --------------------------------------------------------------------------- sklearn
def test_clone_pickle_and_params(fitted):
    model, X, expl = fitted
    fresh = clone(expl)
    assert not hasattr(fresh, "net_")
    with pytest.raises(NotFittedError):
        fresh.explain(model, X[:2])
    assert fresh.get_params() == {k: v for k, v in expl.get_params().items() if k != "segmenter"} | {"segmenter": None}
    # pickles, unfitted and fitted: the restored explainer explains identically
    assert pickle.loads(pickle.dumps(fresh)).get_params() == fresh.get_params()
    restored = pickle.loads(pickle.dumps(expl))
    a, b = expl.explain(model, X), restored.explain(model, X)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.intercept, b.intercept)
    # the optimizer travels with it: training can continue
    restored.partial_fit(model, X)
    assert restored.n_iter_ == expl.n_iter_ + 1
    # get/set round trip, nested parameters of the segmenter
    e = small(segmenter=GridSegmenter(cell=2))
    assert e.set_params(hidden=4, segmenter__cell=4) is e
    assert e.get_params()["hidden"] == 4 and e.get_params()["segmenter__cell"] == 4
    e.set_params(**small().get_params())
    assert e.get_params() == small().get_params()


def test_parameter_grid():
    model = tiny_cnn()
    X = images(8)
    base = small(max_epochs=1)
    grid = ParameterGrid({"n_coalitions": [2, 4], "hidden": [4, 6], "use_gradient": [False, True],
                          "all_classes": [False, True]})
    seen = set()
    for params in grid:
        est = clone(base).set_params(**params).fit(model, X)
        assert est.explain(model, X[:2]).weights.shape == (2, 16)
        assert est.net_.stem.out_channels == params["hidden"]
        seen.add(tuple(sorted(params.items())))
    assert len(seen) == 16
    assert not hasattr(base, "net_")  # the grid never touched the base estimator


def test_gain_scales_the_first_order_attribution_and_old_states_load():
    """With ``use_gradient`` the network adds ``gain * first-order attribution`` to the target's
    map; a state saved before the gain head existed loads with the gain at zero (its own
    outputs) and fresh Adam moments."""
    model = tiny_cnn()
    X = images(12)
    expl = small(use_gradient=True).fit(model, X)
    net = expl.net_
    with torch.no_grad():
        net.gain.weight.zero_()
        net.gain.bias.fill_(0.0)
    base = expl.explain(model, X)
    with torch.no_grad():
        net.gain.bias.fill_(2.0)
    shifted = expl.explain(model, X)
    first = GradientExplainer(n_steps=1).explain(model, X, target=base.target)
    # the gain of 2 adds twice the first-order attribution at the half-way blend
    assert torch.allclose(shifted.weights - base.weights, 2 * first.weights.float(), atol=1e-5)
    # a state without the gain head: the same outputs as that network (gain 0), training goes on
    with torch.no_grad():
        net.gain.bias.zero_()
    state = expl.state_dict()
    old = {k: v for k, v in state["net"].items() if not k.startswith("gain.")}
    restored = small(use_gradient=True).load_state_dict({**state, "net": old})
    assert torch.equal(restored.explain(model, X).weights, base.weights)
    assert restored.optimizer_.state_dict()["state"] == {}  # the saved moments no longer fit
    restored.partial_fit(model, X)
    # likewise a pickle of such a network
    del expl.net_.gain
    unpickled = pickle.loads(pickle.dumps(expl))
    assert torch.equal(unpickled.explain(model, X).weights, base.weights)
    unpickled.partial_fit(model, X)


def test_blend_context_needs_no_clean_pass_for_a_given_target():
    """With the gradient input the network reads the class probabilities at the gradient's
    blend, which its forward pass gives: the weights for a given target need one classifier
    pass per image, not two (``intercept=False``, the training loop's call); the intercept,
    and the predicted class for ``target=None``, still take the clean pass."""
    model = CountingModel(tiny_cnn())
    X = images(12)
    expl = small(use_gradient=True).fit(model, X)
    assert expl.context_ == "blend"
    target = model(X).argmax(1)
    full = expl.explain(model, X, target)
    for tgt, icpt, per_image in ((target, False, 1), (target, True, 2), (None, False, 2), (None, True, 2)):
        model.rows = 0
        attr = expl.explain(model, X, tgt, intercept=icpt)
        assert model.rows == per_image * len(X)
        assert torch.equal(attr.target, target)
        assert torch.equal(attr.weights, full.weights)  # the weights never depend on the clean pass
        assert bool(attr.intercept.isnan().all()) == (not icpt and tgt is not None)
    # the fused online step: a clean pass of its own rows only
    model.rows = 0
    fused = small(use_gradient=True).fit(model, X)
    model.rows = 0
    fused.partial_fit_explain(model, X, target, n_fit=4, intercept=False)
    assert model.rows == len(X) + 4 + 4 * fused.n_coalitions  # blends, the step's clean pass, coalitions
    # the context is p at the half-way blend: the network's context input, checked by
    # replacing the network with one that records it
    seen = {}
    forward = expl.net_.forward

    def spy(feats, probs):
        seen["probs"] = probs
        return forward(feats, probs)

    expl.net_.forward = spy
    expl.explain(model, X, target)
    del expl.net_.forward
    fimg = segment_means(X, GridSegmenter(cell=2).segment(X))
    with torch.no_grad():
        at_blend = torch.softmax(model((X + fimg) / 2), 1)
    torch.testing.assert_close(seen["probs"], at_blend)
    # the training step still fits the all-kept mask to p(x): one clean pass of its rows
    model.rows = 0
    expl.partial_fit(model, X[:4], target[:4])
    assert model.rows == 4 + 4 + 4 * expl.n_coalitions  # clean pass, blend, coalitions
    # the intercept rests on p(x), not on the context: the untrained network gives p_y(x)
    fresh = small(use_gradient=True)
    fresh.partial_fit(model, X[:1], target[:1])
    with torch.no_grad():
        for layer in (fresh.net_.head[-1], fresh.net_.intercept, fresh.net_.gain):
            layer.weight.zero_()
            layer.bias.zero_()
    with torch.no_grad():
        p_x = torch.softmax(model(X), 1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(fresh.explain(model, X, target).intercept, p_x)
    # without the gradient input there is no blend: the clean probabilities are the context
    plain = small(use_gradient=False).fit(model, X)
    assert plain.context_ == "input"
    model.rows = 0
    plain.explain(model, X, target, intercept=False)
    assert model.rows == len(X)


def test_states_saved_before_the_blend_context_keep_the_clean_context():
    """A checkpoint or pickle of a network trained on the clean images' probabilities (saved
    before the context existed) explains with those probabilities, as it was trained."""
    model = tiny_cnn()
    X = images(12)
    expl = small(use_gradient=True).fit(model, X)
    target = model(X).argmax(1)
    state = expl.state_dict()
    assert state["context"] == "blend"
    old = {k: v for k, v in state.items() if k != "context"}
    restored = small(use_gradient=True).load_state_dict(old)
    assert restored.context_ == "input"
    counting = CountingModel(model)
    restored.explain(counting, X, target, intercept=False)
    assert counting.rows == 2 * len(X)  # the clean pass is back: it is the context
    assert not torch.equal(restored.explain(model, X, target).weights, expl.explain(model, X, target).weights)
    pickled = pickle.loads(pickle.dumps(expl))
    assert pickled.context_ == "blend"
    del expl.__dict__["context_"]
    assert pickle.loads(pickle.dumps(expl)).context_ == "input"


def test_the_network_runs_in_the_classifiers_precision():
    """``channels_last`` and ``autocast`` apply to the explainer network too: its convolutions
    run in bf16 under ``autocast="bf16"`` (outputs float32), its weights stay float32, and the
    weights it gives rank segments like the float32 network's."""
    model, X = tiny_cnn(), images(8)
    expl = small(use_gradient=True).fit(model, X)
    seen = []
    hook = expl.net_.stem.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    ref = expl.explain(model, X).weights
    expl.set_params(channels_last=True, autocast="bf16")
    fast = expl.explain(model, X).weights
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert fast.dtype == torch.float32 and next(expl.net_.parameters()).dtype == torch.float32
    assert not torch.equal(ref, fast)
    assert float(np.median(segment_spearman(ref, fast))) > 0.9
    expl.partial_fit(model, X)  # a training step under autocast keeps float32 weights
    assert all(p.dtype == torch.float32 for p in expl.net_.parameters())
