"""Tests of attribshield.regularizers.GradAlign (gradient alignment, double backprop)."""
from __future__ import annotations

import copy
import doctest
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from torch import nn

import attribshield.regularizers.gradalign as gradalign_module
from attribshield.regularizers import GradAlign, SpuriousGradientPenalty
from attribshield.testing import ConstantModel

FAST = settings(deadline=None, max_examples=10)


def linear(seed=0, c=1, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * 64, k))


def relu_mlp(seed=0, c=1, k=3, hidden=64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * 64, hidden), nn.ReLU(), nn.Linear(hidden, k))


def bn_dropout_mlp(seed=0, c=1, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * 64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(16, k))


def tanh_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def batch(n=8, c=1, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def test_docstring_examples():
    res = doctest.testmod(gradalign_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


def test_declares_that_it_needs_no_mask():
    assert GradAlign.requires_mask is False and GradAlign().requires_mask is False
    assert "requires_mask" not in GradAlign().get_params()


@FAST
@given(seed=st.integers(0, 10_000), weight=st.floats(0, 5), eps=st.floats(0, 1), c=st.sampled_from([1, 3]),
       kind=st.sampled_from(["linear", "relu", "bn_dropout"]), train=st.booleans())
def test_penalty_is_a_finite_scalar_in_zero_two_weight(seed, weight, eps, c, kind, train):
    make = {"linear": linear, "relu": relu_mlp, "bn_dropout": bn_dropout_mlp}[kind]
    model = make(seed, c=c).train(train)
    X, y = batch(c=c, seed=seed)
    pen = GradAlign(weight=weight, eps=eps, random_state=seed).penalty(model, X, y)
    assert pen.ndim == 0 and pen.dtype == torch.float32 and torch.isfinite(pen)
    assert 0.0 <= pen.item() <= 2 * weight + 1e-6


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"weight": 0.0}])
def test_exactly_zero_at_eps_zero_or_weight_zero_and_backpropagatable(kwargs):
    model = relu_mlp()
    X, y = batch()
    pen = GradAlign(**kwargs).penalty(model, X, y)
    assert pen.item() == 0.0 and pen.requires_grad
    (pen + model(X).sum()).backward()
    pen.backward()


@FAST
@given(seed=st.integers(0, 10_000), weight=st.floats(0.01, 10))
def test_penalty_linear_in_weight(seed, weight):
    model = relu_mlp(seed)
    X, y = batch(seed=seed)
    base = GradAlign(weight=1.0, eps=0.2, random_state=seed).penalty(model, X, y)
    scaled = GradAlign(weight=weight, eps=0.2, random_state=seed).penalty(model, X, y)
    assert base.item() > 0
    assert torch.allclose(scaled, weight * base, rtol=1e-5, atol=1e-12)


def test_gradients_reach_every_parameter():
    model = relu_mlp()
    X, y = batch()
    GradAlign(weight=1.0, eps=0.2, random_state=0).penalty(model, X, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_parameter_gradient_is_exact_finite_differences():
    """Both input gradients are differentiated (create_graph=True on each): the autograd
    gradient equals central finite differences of the returned value (float64, smooth model)."""
    model = tanh_mlp()
    X, y = batch(dtype=torch.float64)

    def value():
        return GradAlign(weight=1.0, eps=0.3, random_state=0).penalty(model, X, y)

    value().backward()
    W = model[1].weight
    h = 1e-6
    for idx in [(0, 0), (3, 17), (7, 63)]:
        with torch.no_grad():
            W[idx] += h
            up = value().item()
            W[idx] -= 2 * h
            down = value().item()
            W[idx] += h
        fd = (up - down) / (2 * h)
        assert fd == pytest.approx(W.grad[idx].item(), rel=1e-3, abs=1e-9)


@FAST
@given(seed=st.integers(0, 10_000), eps=st.floats(0.01, 0.5), c=st.sampled_from([1, 3]))
def test_linear_model_matches_the_closed_form(seed, eps, c):
    model = linear(seed % 7, c=c)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    X, y = batch(c=c, seed=seed)
    u = torch.rand(X.shape, generator=torch.Generator().manual_seed(seed))  # the penalty's own draw
    X_noisy = (X + (2 * u - 1) * eps).clamp(0, 1)

    def grad(Z):  # d CE / dx = W^T (softmax(Wx + b) - onehot(y))
        return (torch.softmax(Z.flatten(1) @ W.T + b, 1) - F.one_hot(y, 3).float()) @ W

    expected = 0.7 * (1 - F.cosine_similarity(grad(X), grad(X_noisy), dim=1)).mean()
    pen = GradAlign(weight=0.7, eps=eps, random_state=seed).penalty(model, X, y)
    assert pen.item() == pytest.approx(expected.item(), rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_linear_model_is_far_more_aligned_than_a_relu_network(seed):
    """On a model linear in its input only the softmax turns the loss gradient, so the penalty
    is tiny next to a ReLU network of similar size (measured ratio 0.001-0.01 at these sizes)."""
    X, y = batch(n=32, seed=seed)
    for eps in (8 / 255, 0.3):
        lin = GradAlign(weight=1.0, eps=eps, random_state=seed).penalty(linear(seed), X, y).item()
        rel = GradAlign(weight=1.0, eps=eps, random_state=seed).penalty(relu_mlp(seed), X, y).item()
        assert rel > 1e-3 and lin < 0.1 * rel, (eps, lin, rel)


def test_zero_for_models_that_ignore_their_input():
    X, y = batch()
    zeroed = linear()
    with torch.no_grad():
        zeroed[1].weight.zero_()  # output = bias: input gradients exactly 0 at both points
    for model in (ConstantModel(), zeroed):
        pen = GradAlign(weight=1.0, eps=0.3, random_state=0).penalty(model, X, y)
        assert pen.item() == 0.0
        pen.backward()

    class Bias(nn.Module):  # no dependence on X at all (autograd returns None)
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.b.expand(x.shape[0], -1)

    assert GradAlign(eps=0.3).penalty(Bias(), X, y).item() == 0.0


@pytest.mark.parametrize("margin", [30.0, 80.0])
def test_no_underflow_for_saturated_losses(margin):
    """A confidently correct model has input gradients of 1e-17 (margin 30) down to subnormal
    1e-39 (margin 80); their directions still count.  ``F.cosine_similarity`` (eps=1e-8) would
    read them as orthogonal: penalty ~1 instead of ~0."""
    model = linear()
    X, y = batch(n=1)
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # nearly constant in X, so the gradients are nearly aligned
        model[1].bias[:] = -margin / 2
        model[1].bias[y[0]] = margin / 2
    Z = X.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(model(Z), y, reduction="sum"), Z)[0].flatten(1)
    assert 0 < float(g.abs().max()) < 1e-16
    assert 1 - F.cosine_similarity(g, g).item() > 0.99  # the naive formula fails even at x itself
    pen = GradAlign(weight=1.0, eps=0.2, random_state=0).penalty(model, X, y)
    assert 0.0 <= pen.item() < 1e-3


@FAST
@given(seed=st.integers(0, 10_000), train=st.booleans())
def test_mode_flags_and_existing_grads_are_left_alone(seed, train):
    model = bn_dropout_mlp(seed).train(train)
    model[2].eval()  # a mixed state
    flags = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    X, y = batch(seed=seed)
    X0 = X.clone()
    GradAlign(eps=0.1, random_state=seed).penalty(model, X, y)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    assert torch.equal(X, X0)


def test_dropout_masks_are_shared_by_both_passes():
    """In train mode, the two passes see the same dropout masks: at a tiny eps the penalty is
    tiny, while independent masks would make it large."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)).train()
    X, y = batch(n=16)
    pen = GradAlign(weight=1.0, eps=1e-5, random_state=0).penalty(model, X, y).item()
    assert pen < 1e-4
    # the reference: different masks in the two passes misalign the gradients
    g = [torch.autograd.grad(F.cross_entropy(model(Z), y, reduction="sum"), Z)[0].flatten(1)
         for Z in (X.clone().requires_grad_(True), X.clone().requires_grad_(True))]
    assert (1 - F.cosine_similarity(*g, dim=1)).mean().item() > 100 * pen


def test_mask_is_accepted_and_ignored_and_results_are_seeded():
    model = relu_mlp()
    X, y = batch()
    mask = (torch.rand(8, 1, 8, 8) < 0.5).float()
    a = GradAlign(eps=0.2, random_state=1).penalty(model, X, y)
    b = GradAlign(eps=0.2, random_state=1).penalty(model, X, y, mask)
    c = GradAlign(eps=0.2, random_state=1).penalty(model, X, y, mask=None)
    assert a.item() == b.item() == c.item()
    reg = GradAlign(eps=0.2, random_state=1)
    first, second = reg.penalty(model, X, y).item(), reg.penalty(model, X, y).item()
    assert first == a.item() and second != first  # fresh noise per call, reproducible sequence


def test_works_with_a_fitted_estimator_like_object():
    class Fitted:
        module_ = relu_mlp()

    X, y = batch()
    assert GradAlign(eps=0.2, random_state=0).penalty(Fitted(), X, y).item() > 0


@pytest.mark.cuda
def test_cuda():
    model = bn_dropout_mlp().cuda().train()
    X, y = batch()
    pen = GradAlign(eps=0.1, random_state=0).penalty(model, X.cuda(), y.cuda())
    assert pen.is_cuda and 0 <= pen.item() <= 0.4
    pen.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kwargs, name", [
    ({"weight": -1.0}, "weight"), ({"weight": float("nan")}, "weight"), ({"weight": float("inf")}, "weight"),
    ({"weight": True}, "weight"), ({"weight": "0.2"}, "weight"),
    ({"eps": -0.1}, "eps"), ({"eps": float("inf")}, "eps"), ({"eps": None}, "eps"), ({"eps": False}, "eps"),
])
def test_bad_parameters_raise_before_any_work(kwargs, name):
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the model was called before the parameters were checked")

    X, y = batch()
    with pytest.raises(ValueError, match=name):
        GradAlign(**kwargs).penalty(Exploding(), X, y)


def test_bad_inputs():
    model = relu_mlp()
    X, y = batch()
    with pytest.raises(ValueError, match="X must be a float tensor"):
        GradAlign().penalty(model, X[0], y)
    with pytest.raises(ValueError, match="X must be a float tensor"):
        GradAlign().penalty(model, X.numpy(), y)
    with pytest.raises(ValueError, match="y must be integer labels"):
        GradAlign().penalty(model, X, y[:3])
    with pytest.raises(ValueError, match="y must be integer labels"):
        GradAlign().penalty(model, X, y.float())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        GradAlign().penalty(object(), X, y)


def test_sklearn_params_clone_pickle_and_protocol_parity():
    reg = GradAlign(weight=0.5, eps=0.1, random_state=2)
    assert reg.get_params() == {"weight": 0.5, "eps": 0.1, "random_state": 2}
    c = clone(reg).set_params(weight=1.0)
    assert c.weight == 1.0 and reg.weight == 0.5
    model = copy.deepcopy(relu_mlp())
    X, y = batch()
    first = reg.penalty(model, X, y).item()
    assert pickle.loads(pickle.dumps(reg)).penalty(model, X, y).item() == first
    # the same call shape as the masked penalties: penalty(model, X, y, mask)
    mask = torch.ones(8, 1, 8, 8)
    for r in (GradAlign(), SpuriousGradientPenalty()):
        assert r.penalty(model, X, y, mask).ndim == 0
