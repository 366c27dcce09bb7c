"""Property tests of the N-FGSM attack (noise of noise_scale*eps, one step, no projection)."""
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

import attribshield.attacks.nfgsm as nfgsm_module
from attribshield.attacks import FGSM, NFGSM, distance

FAST = settings(deadline=None, max_examples=12)


def _mlp(seed=0, n_in=64, n_classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, n_classes))


def _linear(seed=0, n_in=64, n_classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes))


def _data(seed, n=6, shape=(1, 8, 8), n_classes=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand((n, *shape), generator=g, dtype=dtype)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return X, y


MLP = _mlp()  # shared read-only model (the attack must not change it)


def test_docstring_examples():
    res = doctest.testmod(nfgsm_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


@FAST
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.5), noise_scale=st.floats(0.0, 4.0),
       step_scale=st.floats(0.01, 3.0))
def test_in_box_within_the_enlarged_ball_same_shape_dtype_device(seed, eps, noise_scale, step_scale):
    X, y = _data(seed)
    X_adv = NFGSM(eps=eps, noise_scale=noise_scale, step_scale=step_scale, random_state=seed).perturb(MLP, X, y)
    assert X_adv.shape == X.shape and X_adv.dtype == X.dtype and X_adv.device == X.device
    assert not X_adv.requires_grad
    assert float(X_adv.min()) >= 0.0 and float(X_adv.max()) <= 1.0
    assert bool((distance(X_adv, X, "Linf") <= (noise_scale + step_scale) * eps + 1e-6).all())


def test_leaves_the_eps_ball_without_projection():
    X, y = _data(0, n=32)
    X = 0.25 + 0.5 * X  # away from the [0, 1] walls
    eps = 0.05
    d = distance(NFGSM(eps=eps, random_state=0).perturb(MLP, X, y), X, "Linf")
    assert float(d.max()) > 2 * eps  # FGSM-RS would stop at eps
    assert bool((d <= 3 * eps + 1e-6).all())


@FAST
@given(seed=st.integers(0, 10_000), noise_scale=st.floats(0.0, 3.0))
def test_eps_zero_is_identity(seed, noise_scale):
    X, y = _data(seed)
    X_adv = NFGSM(eps=0.0, noise_scale=noise_scale, random_state=seed).perturb(MLP, X, y)
    assert torch.equal(X_adv, X) and X_adv.data_ptr() != X.data_ptr()


@FAST
@given(seed=st.integers(0, 10_000), train=st.booleans())
def test_input_params_and_flags_untouched(seed, train):
    model = copy.deepcopy(MLP)
    model.train(train)
    model[2].eval()  # mixed state: every submodule's own flag must come back
    flags = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.125)
    state = copy.deepcopy(model.state_dict())
    X, y = _data(seed)
    X0, y0 = X.clone(), y.clone()
    NFGSM(eps=0.1, random_state=seed).perturb(model, X, y)
    assert torch.equal(X, X0) and torch.equal(y, y0)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(p.grad, torch.full_like(p, 0.125)) for p in model.parameters())
    for k, v in model.state_dict().items():  # BatchNorm running statistics not updated
        assert torch.equal(v, state[k]), k


@FAST
@given(seed=st.integers(0, 10_000))
def test_deterministic_for_a_seed_fresh_noise_per_call(seed):
    X, y = _data(seed)
    a = NFGSM(eps=0.1, random_state=seed).perturb(MLP, X, y)
    b = NFGSM(eps=0.1, random_state=seed).perturb(MLP, X, y)
    assert torch.equal(a, b)
    atk = NFGSM(eps=0.1, random_state=seed)
    first, second = atk.perturb(MLP, X, y), atk.perturb(MLP, X, y)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator is kept
    assert torch.equal(clone(atk).perturb(MLP, X, y), a)  # clone restarts from the seed


@FAST
@given(seed=st.integers(0, 10_000), eps=st.floats(0.001, 0.5), step_scale=st.sampled_from([1.0, 0.5, 2.0]))
def test_noise_scale_zero_is_a_plain_fgsm_step(seed, eps, step_scale):
    X, y = _data(seed)
    model = _mlp(seed % 5)
    expected = FGSM(eps=step_scale * eps, random_start=False).perturb(model, X, y)
    got = NFGSM(eps=eps, noise_scale=0.0, step_scale=step_scale).perturb(model, X, y)
    assert torch.equal(got, expected)
    target = (y + 1) % 3  # the targeted variant too
    expected = FGSM(eps=eps, random_start=False).perturb(model, X, y, target=target)
    assert torch.equal(NFGSM(eps=eps, noise_scale=0.0).perturb(model, X, y, target=target), expected)


@FAST
@given(seed=st.integers(0, 10_000), eps=st.floats(0.001, 0.3), noise_scale=st.floats(0.0, 3.0))
def test_linear_model_matches_the_closed_form(seed, eps, noise_scale):
    model = _linear(seed % 7)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    X, y = _data(seed)
    u = torch.rand(X.shape, generator=torch.Generator().manual_seed(seed))  # the attack's own draw
    X0 = (X + (2 * u - 1) * noise_scale * eps).clamp(0, 1) if noise_scale > 0 else X
    p = F.softmax(X0.flatten(1) @ W.T + b, dim=1)
    grad = ((p - F.one_hot(y, 3).float()) @ W).view_as(X)  # d CE / dx at the noisy point
    expected = (X0 + eps * grad.sign()).clamp(0, 1)
    X_adv = NFGSM(eps=eps, noise_scale=noise_scale, random_state=seed).perturb(model, X, y)
    assert float((X_adv - expected).abs().max()) <= 1e-6  # (torch.testing's first call costs 3 s)


def test_increases_the_loss_on_average():
    model = _mlp(1).eval()
    X, y = _data(2, n=64)
    with torch.no_grad():
        clean = F.cross_entropy(model(X), y)
        adv = F.cross_entropy(model(NFGSM(eps=0.1, random_state=0).perturb(model, X, y)), y)
    assert float(adv) > float(clean)


def test_float64_inputs_keep_dtype():
    model = _linear().double()
    X, y = _data(0, dtype=torch.float64)
    assert NFGSM(eps=0.1, random_state=0).perturb(model, X, y).dtype == torch.float64


@pytest.mark.cuda
def test_cuda_inputs_stay_on_cuda():
    model = _mlp().cuda()
    X, y = _data(0)
    X_adv = NFGSM(eps=0.1, random_state=0).perturb(model, X.cuda(), y.cuda())
    assert X_adv.is_cuda and float((X_adv - X.cuda()).abs().max()) <= 0.3 + 1e-6


@pytest.mark.parametrize("kwargs, name", [
    ({"eps": -0.1}, "eps"), ({"eps": "a"}, "eps"), ({"eps": True}, "eps"),
    ({"noise_scale": -1.0}, "noise_scale"), ({"noise_scale": float("nan")}, "noise_scale"),
    ({"noise_scale": float("inf")}, "noise_scale"), ({"noise_scale": None}, "noise_scale"),
    ({"step_scale": 0.0}, "step_scale"), ({"step_scale": -1.0}, "step_scale"), ({"step_scale": True}, "step_scale"),
])
def test_bad_parameters_raise_before_any_work(kwargs, name):
    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the model was called before the parameters were checked")

    X, y = _data(0)
    with pytest.raises(ValueError, match=name):
        NFGSM(**kwargs).perturb(Exploding(), X, y)


def test_bad_inputs_share_the_base_validation():
    X, y = _data(0)
    with pytest.raises(ValueError, match="y must have shape"):
        NFGSM().perturb(MLP, X, y[:3])
    with pytest.raises(ValueError, match="4 dimensions"):
        NFGSM().perturb(MLP, X[0], y)


def test_sklearn_params_clone_and_pickle():
    atk = NFGSM(eps=0.05, noise_scale=1.5, step_scale=1.25, random_state=3)
    assert atk.get_params() == {"eps": 0.05, "noise_scale": 1.5, "step_scale": 1.25, "random_state": 3}
    assert atk.norm == "Linf"
    c = clone(atk).set_params(noise_scale=2.5)
    assert c.noise_scale == 2.5 and atk.noise_scale == 1.5
    X, y = _data(0)
    first = atk.perturb(MLP, X, y)
    restored = pickle.loads(pickle.dumps(atk))
    assert torch.equal(restored.perturb(MLP, X, y), first)  # the generator restarts from its seed
