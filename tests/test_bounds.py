"""Tests of the attribution-aware lower bound and the minimal-distortion search."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from attribshield.attacks import distance
from attribshield.bounds import (
    attribution_lower_bound,
    bound_violation_rate,
    margin,
    minimal_adversarial_distortion,
)

NORMS = ["Linf", "L2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread.  With 2 threads on a loaded 2-core machine, OpenMP's
    barriers make each tiny op ~30x slower (measured); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _two_class_linear(seed=0, spurious_scale=1.0):
    """f(x) = W x + b with 2 classes; the left half of the 8x8 image is 'spurious'."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        w = model[1].weight.view(2, 8, 8)
        w[:, :, :4] *= spurious_scale
    return model


def _mask(n):
    m = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
    m[..., :4] = True
    return m


def _inner_data(n=6, seed=0):
    """Images in [0.3, 0.7]: small distortions never reach the [0, 1] box."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=g)


def _pred(model, X):
    with torch.no_grad():
        return model(X).argmax(1)


def test_margin_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    torch.testing.assert_close(margin(logits, torch.tensor([0, 0])), torch.tensor([1.0, -3.0]))


@pytest.mark.parametrize("norm", NORMS)
def test_linear_model_bound_equals_minimal_distortion(norm):
    model = _two_class_linear()
    X = _inner_data()
    y = _pred(model, X)
    lb = attribution_lower_bound(model, X, y, _mask(6), norm=norm, radius=5.0, n_samples=3)
    md = minimal_adversarial_distortion(model, X, y, norm=norm, eps_max=1.0, n_search=20, steps=10)
    w = (model[1].weight[0] - model[1].weight[1]).detach().double()
    dual = w.abs().sum() if norm == "Linf" else w.norm()
    exact = lb["margin"] / dual.item()
    # the optimal perturbation (against sign(w) for Linf, along w for L2) stays inside [0, 1]
    largest_coord = exact * (1.0 if norm == "Linf" else float(w.abs().max() / w.norm()))
    assert np.all(largest_coord < 0.3), "test data must keep the minimal distortion inside the box"
    np.testing.assert_allclose(lb["bound"], exact, rtol=1e-4)
    np.testing.assert_allclose(md["distortion"], exact, rtol=1e-3)
    assert bound_violation_rate(lb["bound"], md["distortion"]) == 0.0
    # the gradient is constant: L_R and L_S are the dual norms of the two halves of w
    q = 1 if norm == "Linf" else 2
    wv = w.view(8, 8)
    np.testing.assert_allclose(lb["L_S"], float(wv[:, :4].norm(p=q)), rtol=1e-5)
    np.testing.assert_allclose(lb["L_R"], float(wv[:, 4:].norm(p=q)), rtol=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_bound_grows_as_spurious_sensitivity_shrinks(norm):
    """Shrinking the weights on the spurious half lowers L_S and raises bound / margin = 1 / L;
    at L_S = 0 the bound is margin / L_R."""
    X = _inner_data(16)
    y = _pred(_two_class_linear(), X)
    res = [attribution_lower_bound(_two_class_linear(spurious_scale=s), X, y, _mask(16), norm=norm,
                                   radius=10.0, n_samples=2) for s in (1.0, 0.5, 0.1, 0.0)]
    L_S = np.array([r["L_S"] for r in res])
    assert np.all(np.diff(L_S, axis=0) < 0) and np.all(L_S[-1] == 0)
    ok = np.all([r["margin"] > 0 for r in res], axis=0)  # correct under every scale
    assert ok.sum() >= 3
    ratio = np.array([r["bound"][ok] / r["margin"][ok] for r in res])
    assert np.all(np.diff(ratio, axis=0) > 0)
    np.testing.assert_allclose(res[-1]["bound"][ok], res[-1]["margin"][ok] / res[-1]["L_R"][ok], rtol=1e-6)


def test_misclassified_points_get_zero_bound_and_zero_distortion():
    model = _two_class_linear()
    X = _inner_data()
    y = _pred(model, X)
    y[[0, 4]] = 1 - y[[0, 4]]
    lb = attribution_lower_bound(model, X, y, _mask(6), norm="Linf", radius=0.5, n_samples=2)
    md = minimal_adversarial_distortion(model, X, y, norm="Linf", eps_max=0.5, n_search=5)
    assert lb["bound"][[0, 4]].tolist() == [0.0, 0.0] and (lb["margin"][[0, 4]] < 0).all()
    assert md["distortion"][[0, 4]].tolist() == [0.0, 0.0]
    assert (lb["bound"][[1, 2, 3, 5]] > 0).all() and (md["distortion"][[1, 2, 3, 5]] > 0).all()


def test_bound_capped_by_radius_and_shapes_for_every_mask_layout():
    model = _two_class_linear()
    X = _inner_data(5)
    y = _pred(model, X)
    for mask in (_mask(5), _mask(5)[:, 0], _mask(5).expand(5, 1, 8, 8).float(), _mask(1)):
        lb = attribution_lower_bound(model, X, y, mask, norm="L2", radius=1e-3, n_samples=1)
        for key in ("margin", "L_R", "L_S", "bound"):
            assert lb[key].shape == (5,) and lb[key].dtype == np.float64
        assert np.all(lb["bound"] <= 1e-3 + 1e-12) and np.all(lb["bound"] == 1e-3)


def test_rgb_mask_broadcast_and_nonlinear_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    state = copy.deepcopy(model.state_dict())
    X = torch.rand(4, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 0])
    mask = torch.zeros(4, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True
    lb = attribution_lower_bound(model, X, y, mask, norm="Linf", radius=0.1, n_samples=4)
    assert np.all(lb["L_R"] > 0) and np.all(lb["L_S"] > 0)
    assert np.all((0 <= lb["bound"]) & (lb["bound"] <= 0.1))
    assert model.training and all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_more_samples_never_lower_the_lipschitz_estimate():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    X = torch.rand(6, 1, 8, 8)
    y = _pred(model, X)
    few = attribution_lower_bound(model, X, y, _mask(6), norm="L2", radius=0.5, n_samples=2, random_state=0)
    many = attribution_lower_bound(model, X, y, _mask(6), norm="L2", radius=0.5, n_samples=12, random_state=0)
    assert np.all(many["L_R"] >= few["L_R"]) and np.all(many["L_S"] >= few["L_S"])
    assert np.all(many["bound"] <= few["bound"] + 1e-12)
    assert np.any(many["L_R"] + many["L_S"] > few["L_R"] + few["L_S"])


@pytest.mark.parametrize("norm", NORMS)
def test_minimal_distortion_examples_are_adversarial_and_inf_when_out_of_reach(norm):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    X = torch.rand(6, 1, 8, 8)
    y = _pred(model, X)
    md = minimal_adversarial_distortion(model, X, y, norm=norm, eps_max=2.0 if norm == "L2" else 0.5,
                                        n_search=6, steps=10, return_adversarial=True)
    d = md["distortion"]
    found = np.isfinite(d)
    assert found.any()
    X_adv = md["X_adv"]
    assert bool((_pred(model, X_adv[found]) != y[found]).all())
    np.testing.assert_allclose(distance(X_adv, X, norm).numpy()[found], d[found], rtol=1e-5, atol=1e-6)
    assert float(X_adv.min()) >= 0 and float(X_adv.max()) <= 1
    tiny = minimal_adversarial_distortion(model, X, y, norm=norm, eps_max=1e-6, n_search=2)
    assert np.all(np.isinf(tiny["distortion"]))


def test_bound_violation_rate_by_hand():
    b = np.array([0.1, 0.2, 0.0, 0.3, 0.05])
    d = np.array([0.2, 0.1, 0.0, np.inf, 0.05])
    assert bound_violation_rate(b, d) == pytest.approx(1 / 4)  # only the 2nd; the 3rd claims nothing
    assert np.isnan(bound_violation_rate(np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError):
        bound_violation_rate(b, d[:3])
    with pytest.raises(ValueError):
        bound_violation_rate(b, np.full(5, np.nan))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"norm": "L1"}, "norm"),
        ({"radius": 0.0}, "radius"),
        ({"radius": float("inf")}, "radius"),
        ({"n_samples": -1}, "n_samples"),
        ({"spurious_mask": torch.zeros(6, 1, 4, 4, dtype=torch.bool)}, "spurious_mask"),
        ({"spurious_mask": torch.full((6, 1, 8, 8), 0.5)}, "0 and 1"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    model = _two_class_linear()
    X = _inner_data()
    args = {"spurious_mask": _mask(6), **kwargs}
    with pytest.raises(ValueError, match=match):
        attribution_lower_bound(model, X, _pred(model, X), **args)


def test_minimal_distortion_invalid_arguments():
    model = _two_class_linear()
    X = _inner_data()
    y = _pred(model, X)
    for kwargs in ({"norm": "L0"}, {"eps_max": -1.0}, {"n_search": -1}, {"steps": 0}, {"restarts": 0}):
        with pytest.raises(ValueError):
            minimal_adversarial_distortion(model, X, y, **kwargs)
