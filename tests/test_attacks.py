"""Property tests of the attacks (FGSM, PGD, GuidedPGD) on tiny models."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attribshield.attacks import FGSM, PGD, GuidedPGD, distance, project

NORMS = ["Linf", "L2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread.  With 2 threads on a loaded 2-core machine, OpenMP's
    barriers make each tiny op ~30x slower (measured); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(seed=0, n_in=64, n_classes=3, dropout=True):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.2))
    layers.append(nn.Linear(16, n_classes))
    return nn.Sequential(*layers)


def _linear(seed=0, n_in=64, n_classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes))


def _data(seed, n=6, shape=(1, 8, 8), n_classes=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand((n, *shape), generator=g, dtype=dtype)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return X, y


MLP = _mlp()  # shared read-only model for the property tests (attacks must not change it)


def _make(kind, eps, norm, seed):
    if kind == "fgsm":
        return FGSM(eps=eps, norm=norm, random_start=True, random_state=seed)
    if kind == "pgd":
        return PGD(eps=eps, norm=norm, steps=3, restarts=2, random_state=seed)
    return GuidedPGD(eps=eps, norm=norm, steps=3, random_state=seed, spurious_scale=1.0, relevant_scale=0.5)


attack_kinds = st.sampled_from(["fgsm", "pgd", "guided"])
eps_values = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)


@settings(deadline=None, max_examples=15)
@given(kind=attack_kinds, norm=st.sampled_from(NORMS), eps=eps_values, seed=st.integers(0, 10_000))
def test_inside_ball_and_box_and_same_shape_dtype_device(kind, norm, eps, seed):
    model = MLP
    X, y = _data(seed)
    X_adv = _make(kind, eps, norm, seed).perturb(model, X, y)
    assert X_adv.shape == X.shape and X_adv.dtype == X.dtype and X_adv.device == X.device
    assert float(X_adv.min()) >= 0.0 and float(X_adv.max()) <= 1.0
    assert bool((distance(X_adv, X, norm) <= eps + 1e-5).all())


@settings(deadline=None, max_examples=10)
@given(kind=attack_kinds, norm=st.sampled_from(NORMS), seed=st.integers(0, 10_000))
def test_eps_zero_is_identity(kind, norm, seed):
    X, y = _data(seed)
    X_adv = _make(kind, 0.0, norm, seed).perturb(MLP, X, y)
    assert torch.equal(X_adv, X)
    assert X_adv.data_ptr() != X.data_ptr()  # a copy, not the input itself


@settings(deadline=None, max_examples=10)
@given(kind=attack_kinds, norm=st.sampled_from(NORMS), seed=st.integers(0, 10_000), train=st.booleans())
def test_input_params_and_flags_untouched(kind, norm, seed, train):
    model = copy.deepcopy(MLP)
    model.train(train)
    model[2].eval()  # a mixed state: eval_mode must restore each submodule's own flag
    flags = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.125)
    state = copy.deepcopy(model.state_dict())
    X, y = _data(seed)
    X0, y0 = X.clone(), y.clone()
    _make(kind, 0.1, norm, seed).perturb(model, X, y)
    assert torch.equal(X, X0) and torch.equal(y, y0)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(p.grad, torch.full_like(p, 0.125)) for p in model.parameters())
    for k, v in model.state_dict().items():  # BatchNorm running stats not updated
        assert torch.equal(v, state[k]), k


def test_float64_inputs_keep_dtype():
    model = _linear().double()
    X, y = _data(0, dtype=torch.float64)
    for atk in (FGSM(eps=0.1), PGD(eps=0.1, steps=2, norm="L2")):
        assert atk.perturb(model, X, y).dtype == torch.float64


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.001, 0.5), norm=st.sampled_from(NORMS))
def test_fgsm_on_linear_model_matches_closed_form(seed, eps, norm):
    model = _linear(seed % 7)
    W = model[1].weight.detach()
    X, y = _data(seed)
    # d CE / dx = W^T (softmax(Wx + b) - onehot(y))
    p = F.softmax(model(X), dim=1).detach()
    grad = ((p - F.one_hot(y, 3).float()) @ W).view_as(X)
    if norm == "Linf":
        expected = (X + eps * grad.sign()).clamp(0, 1)
    else:
        g = grad.flatten(1)
        expected = (X + eps * (g / g.norm(dim=1, keepdim=True)).view_as(X)).clamp(0, 1)
    X_adv = FGSM(eps=eps, norm=norm).perturb(model, X, y)
    torch.testing.assert_close(X_adv, expected, atol=1e-5, rtol=0)


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(NORMS))
def test_pgd_restarts_never_worse_than_one_run(seed, norm):
    model = _mlp(seed % 5, dropout=False)
    X, y = _data(seed, n=12)
    eps = 0.05 if norm == "Linf" else 0.4
    one = PGD(eps=eps, norm=norm, steps=3, restarts=1, random_state=seed).perturb(model, X, y)
    many = PGD(eps=eps, norm=norm, steps=3, restarts=4, random_state=seed).perturb(model, X, y)
    with torch.no_grad():
        fooled_one = model.eval()(one).argmax(1) != y
        fooled_many = model(many).argmax(1) != y
    assert bool((fooled_many | ~fooled_one).all()), "a point fooled by one run survived the restarts"
    assert int(fooled_many.sum()) >= int(fooled_one.sum())


def test_pgd_restarts_help_on_some_seed():
    """Restarts must be able to add successes (the previous test alone cannot fail on a no-op)."""
    model = _mlp(1, dropout=False).eval()
    X, _ = _data(3, n=64)
    with torch.no_grad():
        y = model(X).argmax(1)
    one = PGD(eps=0.02, steps=3, step_size=0.005, restarts=1, random_state=0).perturb(model, X, y)
    many = PGD(eps=0.02, steps=3, step_size=0.005, restarts=8, random_state=0).perturb(model, X, y)
    with torch.no_grad():
        assert int((model(many).argmax(1) != y).sum()) > int((model(one).argmax(1) != y).sum())


@pytest.mark.parametrize("norm", NORMS)
def test_targeted_pgd_reaches_target_on_easy_model(norm):
    model = _linear(0)
    X, y = _data(1, n=10)
    target = (y + 1) % 3
    eps = 1.0 if norm == "Linf" else 8.0
    X_adv = PGD(eps=eps, norm=norm, steps=20, random_state=0).perturb(model, X, y, target=target)
    with torch.no_grad():
        assert torch.equal(model(X_adv).argmax(1), target)
    # the untargeted attack is not enough to pin the class: the target must matter
    X_unt = PGD(eps=eps, norm=norm, steps=20, random_state=0).perturb(model, X, y)
    with torch.no_grad():
        assert not torch.equal(model(X_unt).argmax(1), target) or not torch.equal(X_unt, X_adv)


def test_pgd_lowers_accuracy_and_is_seeded():
    model = _mlp(0, dropout=False).eval()
    X, y = _data(2, n=32)
    with torch.no_grad():
        y = model(X).argmax(1)  # all correct
    a = PGD(eps=0.1, steps=5, random_state=3).perturb(model, X, y)
    b = PGD(eps=0.1, steps=5, random_state=3).perturb(model, X, y)
    assert torch.equal(a, b)
    with torch.no_grad():
        assert float((model(a).argmax(1) == y).float().mean()) < 0.5


def test_guided_pgd_budget_follows_mask():
    model = _linear(0)
    X, y = _data(0, n=4)
    mask = torch.zeros(4, 1, 8, 8)
    mask[:, :, :, :4] = 1
    eps = 0.05
    X_adv = GuidedPGD(eps=eps, steps=5, spurious_scale=2.0, relevant_scale=0.0, random_state=0).perturb(
        model, X, y, mask=mask)
    d = (X_adv - X).abs()
    assert float(d[..., 4:].max()) == 0.0
    assert float(d[..., :4].max()) <= 2 * eps + 1e-6
    assert float(d[..., :4].max()) > eps  # the larger budget is actually used


@pytest.mark.parametrize(
    "make",
    [
        lambda: PGD(eps=-0.1),
        lambda: PGD(eps=float("nan")),
        lambda: PGD(norm="L1"),
        lambda: PGD(steps=0),
        lambda: PGD(steps=2.5),
        lambda: PGD(step_size=0.0),
        lambda: PGD(step_size=-1.0),
        lambda: PGD(restarts=0),
        lambda: FGSM(eps=-1.0),
        lambda: FGSM(norm="linf"),
        lambda: FGSM(step_size=0),
        lambda: GuidedPGD(spurious_scale=-1.0),
    ],
)
def test_invalid_settings_raise_value_error(make):
    X, y = _data(0)
    with pytest.raises(ValueError):
        make().perturb(_linear(), X, y)


def test_bad_inputs_raise_value_error():
    atk, model = PGD(eps=0.1, steps=1), _linear()
    X, y = _data(0)
    with pytest.raises(ValueError, match="4 dimensions"):
        atk.perturb(model, X[0], y)
    with pytest.raises(ValueError, match="y must have shape"):
        atk.perturb(model, X, y[:2])
    with pytest.raises(ValueError, match="target"):
        atk.perturb(model, X, y, target=y[:2])


def test_project_is_idempotent_and_inside():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(5, 3, 4, 4, generator=g)
    for norm in NORMS:
        p = project(d, 0.3, norm)
        assert bool((distance(p, torch.zeros_like(p), norm) <= 0.3 + 1e-6).all())
        torch.testing.assert_close(project(p, 0.3, norm), p)
    assert np.isclose(float(distance(d, d, "L2").max()), 0.0)
