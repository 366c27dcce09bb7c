"""Tests of attribshield.callbacks.RobustnessMonitor and catastrophic_overfitting."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM
from attribshield.callbacks import RobustnessMonitor, catastrophic_overfitting
from attribshield.testing import TinyMLP, make_images

KEYS = ("monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc")


@pytest.fixture(scope="module")
def data():
    return make_images(n=24, n_classes=3, seed=0)


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    torch.manual_seed(0)
    monitor = RobustnessMonitor(X, y, eps=0.1, pgd_steps=2, n=16)
    return RobustAttributionClassifier(TinyMLP, attacker=FGSM(eps=0.1, random_start=True, random_state=0),
                                       callbacks=[("monitor", monitor)], max_epochs=3, lr=0.1, verbose=0,
                                       random_state=0).fit(X, y)


def test_values_recorded_every_epoch_in_unit_interval(fitted):
    assert len(fitted.history) == 3
    for row in fitted.history:
        for k in KEYS:
            assert 0.0 <= row[k] <= 1.0
        assert row["monitor_pgd_acc"] <= row["monitor_clean_acc"]
        assert row["monitor_fgsm_acc"] <= row["monitor_clean_acc"]
        assert row["monitor_dur"] >= 0.0


def test_eps_zero_gives_clean_accuracy(fitted, data):
    X, y = data
    mon = RobustnessMonitor(X, y, eps=0.0, pgd_steps=2, n=8).initialize()
    res = mon.evaluate(fitted.module_)
    assert res["fgsm_acc"] == res["pgd_acc"] == res["clean_acc"]
    assert res["clean_acc"] == pytest.approx(float(fitted.score(X[mon.indices_], y[mon.indices_])))


def test_module_mode_and_grads_untouched(fitted, data):
    X, y = data
    mon = RobustnessMonitor(X, y, eps=0.1, pgd_steps=2, n=8).initialize()
    module = fitted.module_
    module.train()
    module.net[0].eval()  # a submodule's own flag is restored too
    grads = [torch.full_like(p, 0.5) for p in module.parameters()]
    for p, g in zip(module.parameters(), grads):
        p.grad = g.clone()
    n_rows = len(fitted.history)
    fitted.history.new_epoch()
    try:
        mon.on_epoch_end(fitted)
        row = fitted.history[-1]
        assert all(k in row for k in KEYS)
    finally:
        fitted.history.pop()
    assert len(fitted.history) == n_rows
    assert module.training and not module.net[0].training and module.net[1].training
    assert all(torch.equal(p.grad, g) for p, g in zip(module.parameters(), grads))
    module.eval()


def test_subset_is_fixed_and_seeded(data):
    X, y = data
    a = RobustnessMonitor(X, y, eps=0.1, n=10, random_state=3).initialize()
    b = RobustnessMonitor(X, y, eps=0.1, n=10, random_state=3).initialize()
    c = RobustnessMonitor(X, y, eps=0.1, n=10, random_state=None).initialize()
    assert np.array_equal(a.indices_, b.indices_) and len(np.unique(a.indices_)) == 10
    assert np.all(np.diff(a.indices_) > 0)
    assert c.indices_.tolist() == list(range(10))
    full = RobustnessMonitor(X, y, eps=0.1, n=100).initialize()
    assert full.X_.shape == (24, 1, 8, 8) and torch.equal(full.y_, torch.as_tensor(y))


def test_uint8_images_are_scaled(data):
    X, y = data
    Xu = np.round(X * 255).astype(np.uint8)
    mon = RobustnessMonitor(Xu, y, eps=0.1, n=4, random_state=None).initialize()
    assert mon.X_.dtype == torch.float32 and float(mon.X_.max()) <= 1.0
    assert torch.allclose(mon.X_, torch.as_tensor(Xu[:4]).float() / 255)


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": -0.1}, "eps"),
    ({"eps": float("nan")}, "eps"),
    ({"pgd_steps": 0}, "pgd_steps"),
    ({"n": 0}, "n must"),
    ({"n": 2.5}, "n must"),
    ({"batch_size": 0}, "batch_size"),
    ({"name_prefix": ""}, "name_prefix"),
    ({"random_state": -1}, "random_state"),
])
def test_bad_parameters_raise_before_training(data, kwargs, match):
    X, y = data
    params = {"eps": 0.1, **kwargs}
    net = RobustAttributionClassifier(TinyMLP, callbacks=[("monitor", RobustnessMonitor(X, y, **params))],
                                      max_epochs=1, verbose=0)
    with pytest.raises(ValueError, match=match):
        net.initialize()


@pytest.mark.parametrize("bad", ["range", "length", "ndim", "empty", "nan"])
def test_bad_data_raises_at_initialize(data, bad):
    X, y = data
    if bad == "range":
        X = X * 3
    elif bad == "length":
        y = y[:-1]
    elif bad == "ndim":
        X = X[:, 0]
    elif bad == "empty":
        X, y = X[:0], y[:0]
    else:
        X = X.copy()
        X[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        RobustnessMonitor(X, y, eps=0.1).initialize()


def test_clone_pickle_and_prefix(data):
    X, y = data
    mon = RobustnessMonitor(X, y, eps=0.1, pgd_steps=2, n=4, name_prefix="train")
    assert clone(mon).get_params()["name_prefix"] == "train"
    assert mon.keys() == ("train_clean_acc", "train_fgsm_acc", "train_pgd_acc", "train_dur")
    mon.initialize()
    back = pickle.loads(pickle.dumps(mon))
    res = back.evaluate(TinyMLP(num_classes=3))
    assert set(res) == {"clean_acc", "fgsm_acc", "pgd_acc"}


# ----------------------------------------------------------------- catastrophic_overfitting
def rows(pgd, fgsm, prefix="monitor"):
    return [{"epoch": i + 1, f"{prefix}_pgd_acc": p, f"{prefix}_fgsm_acc": f}
            for i, (p, f) in enumerate(zip(pgd, fgsm))]


def test_collapse_detected_at_the_right_epoch():
    res = catastrophic_overfitting(rows([0.2, 0.3, 0.35, 0.04, 0.0], [0.3, 0.4, 0.45, 0.8, 0.9]))
    assert res["collapsed"] and res["epoch"] == 4
    assert res["pgd_best"] == 0.35 and res["pgd_best_epoch"] == 3
    assert res["pgd_at_collapse"] == 0.04 and res["fgsm_at_collapse"] == 0.8
    assert res["pgd_final"] == 0.0 and res["fgsm_final"] == 0.9 and res["n_epochs"] == 5


def test_no_collapse_when_stable_or_when_both_fall():
    assert not catastrophic_overfitting(rows([0.2, 0.3, 0.33, 0.35], [0.3, 0.4, 0.42, 0.45]))["collapsed"]
    both = catastrophic_overfitting(rows([0.4, 0.05], [0.5, 0.1]))  # a plain loss of robustness
    assert not both["collapsed"] and both["epoch"] is None and both["pgd_at_collapse"] is None
    # the same fall counts with a smaller required FGSM lead
    assert catastrophic_overfitting(rows([0.4, 0.05], [0.5, 0.1]), gap=0.0)["collapsed"]
    # a fall smaller than drop is not a collapse
    assert not catastrophic_overfitting(rows([0.4, 0.2], [0.5, 0.9]), drop=0.3)["collapsed"]
    assert catastrophic_overfitting(rows([0.4, 0.2], [0.5, 0.9]), drop=0.2)["collapsed"]


def test_rows_without_the_keys_are_skipped_and_json_history_works(fitted):
    hist = [{"epoch": 1, "train_loss": 1.0}] + rows([0.3, 0.0], [0.4, 0.9])
    for r, e in zip(hist[1:], (2, 3)):
        r["epoch"] = e
    res = catastrophic_overfitting(json.loads(json.dumps(hist)))
    assert res["collapsed"] and res["epoch"] == 3 and res["n_epochs"] == 2
    live = catastrophic_overfitting(fitted.history)  # a skorch History
    assert live["n_epochs"] == 3 and isinstance(live["collapsed"], bool)
    assert catastrophic_overfitting(rows([0.5, 0.0], [0.6, 0.9], prefix="m2"), prefix="m2")["collapsed"]


@pytest.mark.parametrize("kwargs", [{"drop": 0}, {"drop": 1.5}, {"gap": -0.1}, {"prefix": ""}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        catastrophic_overfitting(rows([0.3], [0.4]), **kwargs)


def test_history_without_monitor_raises():
    with pytest.raises(ValueError, match="RobustnessMonitor"):
        catastrophic_overfitting([{"epoch": 1, "train_loss": 1.0}])
    with pytest.raises(ValueError):
        catastrophic_overfitting(5)
    with pytest.raises(ValueError):
        catastrophic_overfitting([1, 2])
