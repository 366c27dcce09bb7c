"""TRADES: the KL attack, the objective, and training through the estimator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attribshield import RobustAttributionClassifier
from attribshield.attacks import TRADES
from attribshield.testing import TinyMLP, make_images


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, 3))


def _kl(model, X, X_adv):
    with torch.no_grad():
        return F.kl_div(F.log_softmax(model(X_adv), 1), F.softmax(model(X), 1), reduction="sum").item()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_trades_attack_stays_in_the_ball_and_increases_the_kl(norm):
    model = _model()
    X = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    eps = 0.1 if norm == "Linf" else 0.5
    X_adv = TRADES(eps=eps, steps=10, norm=norm, random_state=0).perturb(model, X, torch.zeros(16))
    d = (X_adv - X).flatten(1)
    dist = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (dist <= eps + 1e-5).all()
    assert X_adv.min() >= 0 and X_adv.max() <= 1
    # the ascent beats its own Gaussian start by a wide margin
    X_start = (X + 0.001 * torch.randn(X.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert _kl(model, X, X_adv) > 10 * _kl(model, X, X_start)


def test_trades_attack_ignores_the_labels_and_is_seeded():
    model = _model()
    X = torch.rand(8, 3, 4, 4)
    a = TRADES(eps=0.1, steps=3, random_state=5).perturb(model, X, torch.zeros(8))
    b = TRADES(eps=0.1, steps=3, random_state=5).perturb(model, X, torch.full((8,), 2))
    torch.testing.assert_close(a, b)


def test_trades_objective_is_ce_plus_beta_kl():
    g = torch.Generator().manual_seed(0)
    lc, la = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = F.cross_entropy(lc, y)
    p = F.softmax(lc, 1)
    kl = (p * (p.log() - F.log_softmax(la, 1))).sum(1).mean()
    torch.testing.assert_close(TRADES(beta=6.0).objective(lc, la, y), ce + 6.0 * kl)
    torch.testing.assert_close(TRADES(beta=0.0).objective(lc, la, y), ce)
    # identical logits: no KL, whatever beta
    torch.testing.assert_close(TRADES(beta=6.0).objective(lc, lc, y), ce)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), True, "6"])
def test_trades_rejects_a_bad_beta(bad):
    with pytest.raises(ValueError, match="beta"):
        TRADES(beta=bad).objective(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_trades_rejects_a_target():
    with pytest.raises(ValueError, match="target"):
        TRADES(steps=1).perturb(_model(), torch.rand(2, 3, 4, 4), torch.zeros(2), target=torch.zeros(2))


def test_estimator_trains_with_the_trades_objective():
    """The estimator uses the attacker's objective: the recorded loss is CE + beta * KL, and
    with beta=0 TRADES training is clean training on the same batches."""
    X, y = make_images(n=48, c=3, h=4, w=4, n_classes=3, seed=0)
    common = dict(module=TinyMLP, module__num_classes=3, max_epochs=2, batch_size=16, lr=0.1,
                  random_state=0)
    trades = RobustAttributionClassifier(attacker=TRADES(eps=0.1, steps=2, beta=0.0, random_state=0), **common)
    clean = RobustAttributionClassifier(**common)
    trades.fit(X, y)
    clean.fit(X, y)
    np.testing.assert_allclose(trades.history[:, "train_loss"], clean.history[:, "train_loss"], rtol=1e-5)
    strong = RobustAttributionClassifier(attacker=TRADES(eps=0.3, steps=2, beta=6.0, random_state=0), **common)
    strong.fit(X, y)
    assert not np.allclose(strong.history[:, "train_loss"], clean.history[:, "train_loss"])
