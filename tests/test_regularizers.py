"""Tests of attribshield.regularizers: the masked gradient and finite-difference penalties."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from attribshield.regularizers import SpuriousGradientPenalty, SpuriousSensitivityPenalty

FAST = settings(deadline=None, max_examples=10)
PENALTIES = [
    lambda w=1.0: SpuriousGradientPenalty(weight=w),
    lambda w=1.0: SpuriousSensitivityPenalty(weight=w, random_state=0),
]
IDS = ["gradient", "sensitivity"]


def linear(c=1, k=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * 64, k))


def mlp(c=1, k=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(c * 64, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
        torch.nn.Linear(16, k),
    )


class Constant(torch.nn.Module):
    """Logits that do not depend on the input (a learnable bias)."""

    def __init__(self, k=3):
        super().__init__()
        self.b = torch.nn.Parameter(torch.randn(k))

    def forward(self, x):
        return self.b.expand(x.shape[0], -1)


def batch(n=4, c=1, seed=0, density=0.5):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, c, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    mask = (torch.rand(n, 1, 8, 8, generator=g) < density).float()
    return X, y, mask


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
@FAST
@given(seed=st.integers(0, 10_000), c=st.sampled_from([1, 3]), density=st.floats(0.05, 1.0), weight=st.floats(0, 5))
def test_penalty_nonnegative_scalar(make, seed, c, density, weight):
    X, y, mask = batch(c=c, seed=seed, density=density)
    pen = make(weight).penalty(mlp(c=c, seed=seed), X, y, mask)
    assert pen.ndim == 0 and torch.isfinite(pen) and pen.item() >= 0


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
def test_penalty_zero_for_constant_models(make):
    X, y, mask = batch()
    for model in (Constant(), linear()):
        if not isinstance(model, Constant):
            with torch.no_grad():
                model[1].weight.zero_()  # output = bias only
        pen = make().penalty(model, X, y, mask)
        assert pen.item() == 0.0
        pen.backward()  # still a valid loss term


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
@FAST
@given(seed=st.integers(0, 10_000), weight=st.floats(0.01, 10))
def test_penalty_linear_in_weight(make, seed, weight):
    X, y, mask = batch(seed=seed)
    model = linear(seed=seed)
    base = make(1.0).penalty(model, X, y, mask)
    scaled = make(weight).penalty(model, X, y, mask)
    assert base.item() > 0
    assert torch.allclose(scaled, weight * base, rtol=1e-5, atol=1e-12)
    assert make(0.0).penalty(model, X, y, mask).item() == 0.0


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
def test_gradients_reach_parameters(make):
    X, y, mask = batch()
    model = linear()
    make().penalty(model, X, y, mask).backward()
    for p in model.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
def test_empty_mask_or_zero_weight_gives_backpropagatable_zero(make):
    X, y, mask = batch()
    model = linear()
    for pen in (make().penalty(model, X, y, torch.zeros_like(mask)), make(0.0).penalty(model, X, y, mask)):
        assert pen.item() == 0.0
        (pen + model(X).sum()).backward()
        pen.backward()


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
def test_only_masked_pixels_count(make):
    X, y, mask = batch(density=0.5)
    model = linear()
    with torch.no_grad():  # the model ignores every masked pixel but not the others
        model[1].weight.mul_(1 - mask[0].reshape(1, -1))
        mask = mask[:1].expand_as(mask)
    assert make().penalty(model, X, y, mask).item() == pytest.approx(0.0, abs=1e-10)
    assert make().penalty(model, X, y, 1 - mask).item() > 0


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
def test_mode_is_left_alone(make):
    X, y, mask = batch()
    model = mlp()
    for train in (True, False):
        model.train(train)
        make().penalty(model, X, y, mask)
        assert all(m.training == train for m in model.modules())


def test_gradient_penalty_matches_closed_form_and_is_batch_size_free():
    X, y, mask = batch(n=5, c=3)
    model = linear(c=3)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(X.flatten(1) @ W.T + b, 1)
    g = ((p - F.one_hot(y, 3).float()) @ W).reshape(X.shape)
    expect = 0.7 * (mask * g).pow(2).flatten(1).sum(1).mean()
    pen = SpuriousGradientPenalty(weight=0.7).penalty(model, X, y, mask)
    assert torch.allclose(pen, expect, rtol=1e-5)
    singles = torch.stack([SpuriousGradientPenalty(0.7).penalty(model, X[i : i + 1], y[i : i + 1], mask[i : i + 1])
                           for i in range(5)])
    assert torch.allclose(pen, singles.mean(), rtol=1e-5)


def test_fractional_and_per_channel_masks():
    X, y, mask = batch(c=3)
    model = linear(c=3)
    half = SpuriousGradientPenalty().penalty(model, X, y, 0.5 * mask)
    full = SpuriousGradientPenalty().penalty(model, X, y, mask)
    assert torch.allclose(half, 0.25 * full, rtol=1e-5)
    per_channel = SpuriousGradientPenalty().penalty(model, X, y, mask.expand(-1, 3, -1, -1))
    assert torch.allclose(per_channel, full, rtol=1e-6)


def test_sensitivity_penalty_estimates_gradient_penalty():
    """Averaged over many random sign directions, the finite difference equals the gradient penalty."""
    X, y, mask = batch(n=1, seed=3)
    model = mlp(seed=3).eval()
    reps = 4000
    Xr, yr, mr = X.expand(reps, -1, -1, -1), y.expand(reps), mask.expand(reps, -1, -1, -1)
    fd = SpuriousSensitivityPenalty(h=1e-3, random_state=0).penalty(model, Xr, yr, mr)
    gp = SpuriousGradientPenalty().penalty(model, X, y, mask)
    # relative standard error of the mean of 4000 draws is about sqrt(2 / 4000) ~ 2.2%
    assert fd.item() == pytest.approx(gp.item(), rel=0.1)
    assert gp.item() > 0


def test_sensitivity_penalty_fresh_directions_but_reproducible():
    X, y, mask = batch()
    model = mlp().eval()
    a, b = SpuriousSensitivityPenalty(random_state=1), SpuriousSensitivityPenalty(random_state=1)
    a1, a2 = a.penalty(model, X, y, mask), a.penalty(model, X, y, mask)
    assert a1.item() != a2.item()
    assert a1.item() == b.penalty(model, X, y, mask).item() and a2.item() == b.penalty(model, X, y, mask).item()
    c = pickle.loads(pickle.dumps(a))
    assert "_generators" not in c.__dict__ and c.penalty(model, X, y, mask).item() == a1.item()
    assert clone(a).get_params() == a.get_params()


def test_sensitivity_penalty_declares_autocast_safety_by_its_parameter():
    """Only an explicit ``autocast=True`` lets the estimator cast the probes (capability ``autocast_safe``)."""
    from attribshield.base import capability

    assert not capability(SpuriousSensitivityPenalty(), "autocast_safe")
    assert capability(SpuriousSensitivityPenalty(autocast=True), "autocast_safe")
    assert not capability(SpuriousGradientPenalty(), "autocast_safe")
    assert clone(SpuriousSensitivityPenalty(autocast=True)).autocast is True


@pytest.mark.parametrize(
    "pen, match",
    [
        (SpuriousGradientPenalty(weight=-1.0), "weight"),
        (SpuriousGradientPenalty(weight=float("inf")), "weight"),
        (SpuriousGradientPenalty(weight="1"), "weight"),
        (SpuriousSensitivityPenalty(h=0.0), "h must be"),
        (SpuriousSensitivityPenalty(weight=-0.5), "weight"),
        (SpuriousSensitivityPenalty(autocast="bf16"), "autocast"),
    ],
)
def test_bad_hyperparameters_raise(pen, match):
    X, y, mask = batch()
    with pytest.raises(ValueError, match=match):
        pen.penalty(linear(), X, y, mask)


@pytest.mark.parametrize("make", PENALTIES, ids=IDS)
def test_bad_inputs_raise(make):
    X, y, mask = batch()
    model = linear()
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        make().penalty(model, X, y, 2 * mask)
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        make().penalty(model, X, y, mask * float("nan"))
    with pytest.raises(ValueError, match="mask must have shape"):
        make().penalty(model, X, y, mask[:, :, :4])
    with pytest.raises(ValueError, match="y must be integer labels"):
        make().penalty(model, X, y[:2], mask)
    with pytest.raises(ValueError, match="X must be a float tensor"):
        make().penalty(model, X[0], y, mask)
