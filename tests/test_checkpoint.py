"""Safe checkpoints: no code runs when loading, atomic writes, resume after SIGKILL."""
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback, LoadInitState

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM
from attribshield.augment import RandomCropFlip
from attribshield.checkpoint import (
    SafeCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from attribshield.explainers import LimeExplainer
from attribshield.maskers import LimeMasker, RandomMasker
from attribshield.refinement import MaskCache
from attribshield.testing import TinyMLP, make_images

ROOT = Path(__file__).resolve().parents[1]
X, y = make_images(n=24)


def method(**kw):
    params = dict(attacker=FGSM(eps=0.05, random_start=True, random_state=0),
                  masker=LimeMasker(top_k=2, random_state=0), explainer=LimeExplainer(n_samples=16, random_state=0),
                  refine_every=1, refine_fraction=1.0, max_epochs=2, lr=0.1, batch_size=12, verbose=0,
                  random_state=0)
    params.update(kw)
    return RobustAttributionClassifier(TinyMLP, **params)


@pytest.fixture(scope="module")
def fitted():
    return method().fit(X, y)


class Evil:
    """Unpickling this runs ``exec``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_roundtrip_restores_everything(fitted, tmp_path):
    path = save_checkpoint(fitted, tmp_path)
    assert sorted(os.listdir(path)) == ["history.json", "mask_cache.pt", "meta.json", "optimizer.pt", "params.pt",
                                        "rng.pt"]
    fresh = load_checkpoint(method(), tmp_path)
    np.testing.assert_allclose(fresh.predict_proba(X), fitted.predict_proba(X), rtol=1e-6)
    assert len(fresh.history) == len(fitted.history) == 2
    torch.testing.assert_close(fresh.mask_cache_.selected, fitted.mask_cache_.selected)
    assert fresh.mask_cache_.rounds == fitted.mask_cache_.rounds
    np.testing.assert_array_equal(fresh.classes_, fitted.classes_)
    for a, b in zip(fresh.optimizer_.state_dict()["param_groups"], fitted.optimizer_.state_dict()["param_groups"]):
        assert a["lr"] == b["lr"]
    fresh.partial_fit(X, y, epochs=1)  # training continues from the restored state
    assert len(fresh.history) == 3


def test_safetensors_parameters(fitted, tmp_path):
    pytest.importorskip("safetensors")
    path = save_checkpoint(fitted, tmp_path, use_safetensors=True)
    assert os.path.isfile(os.path.join(path, "params.safetensors"))
    fresh = load_checkpoint(method(), tmp_path)
    np.testing.assert_allclose(fresh.predict_proba(X), fitted.predict_proba(X), rtol=1e-6)


def test_keep_and_latest(fitted, tmp_path):
    clf = method(max_epochs=4, masker=None, callbacks=[SafeCheckpoint(tmp_path, keep=2)]).fit(X, y)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("epoch")) == ["epoch_0003", "epoch_0004"]
    assert latest_checkpoint(tmp_path).endswith("epoch_0004")
    assert all(row["event_cp"] for row in clf.history)
    # a stale or missing pointer falls back to the newest complete folder
    (tmp_path / "latest").unlink()
    os.makedirs(tmp_path / ".tmp-epoch_0005-1")  # a half-written save of a killed process
    assert latest_checkpoint(tmp_path).endswith("epoch_0004")


@pytest.mark.parametrize("victim", ["params.pt", "optimizer.pt", "mask_cache.pt"])
def test_malicious_pickle_is_refused(fitted, tmp_path, victim):
    path = Path(save_checkpoint(fitted, tmp_path / "cp"))
    marker = tmp_path / "pwned"
    torch.save(Evil(marker), path / victim)
    # the exploit is real: an unrestricted load would run it
    torch.load(path / victim, weights_only=False)
    assert marker.exists()
    marker.unlink()
    victim_net = method(torch_load_kwargs={"weights_only": False})  # even a net configured unsafely
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(victim_net, tmp_path / "cp")
    assert not marker.exists()


def test_load_init_state_refuses_malicious_and_unsafe_settings(fitted, tmp_path):
    save_checkpoint(fitted, tmp_path)
    marker = tmp_path / "pwned"
    torch.save(Evil(marker), Path(latest_checkpoint(tmp_path)) / "params.pt")
    cp = SafeCheckpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        method(callbacks=[cp, LoadInitState(cp)]).fit(X, y)
    assert not marker.exists()
    cp = SafeCheckpoint(tmp_path)
    with pytest.raises(ValueError, match="weights_only=False"):
        method(callbacks=[cp, LoadInitState(cp)], torch_load_kwargs={"weights_only": False}).fit(X, y)
    assert not marker.exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="uninitialised"):
        save_checkpoint(method(), tmp_path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(method(), tmp_path)
    (tmp_path / "epoch_0001").mkdir()
    (tmp_path / "epoch_0001" / "meta.json").write_text(json.dumps({"format": 1, "params": "../../etc/passwd"}))
    with pytest.raises(ValueError, match="unexpected parameter file"):
        load_checkpoint(method(), tmp_path)


SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_checkpoint import method, X, y
    from attribshield.checkpoint import SafeCheckpoint
    method(max_epochs=10_000, callbacks=[SafeCheckpoint({dirname!r})]).fit(X, y)
""")


class _ParamsAtStart(Callback):
    def on_epoch_begin(self, net, **kwargs):
        if not hasattr(self, "state"):
            self.state = {k: v.clone() for k, v in net.module_.state_dict().items()}


def test_killed_training_resumes_from_last_epoch(tmp_path):
    dirname = tmp_path / "cp"
    script = SCRIPT.format(tests=str(ROOT / "tests"), dirname=str(dirname))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and proc.poll() is None:
            path = latest_checkpoint(dirname)
            if path is not None and json.loads(Path(path, "meta.json").read_text())["epoch"] >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    saved = Path(latest_checkpoint(dirname))
    meta = json.loads((saved / "meta.json").read_text())
    n = meta["epoch"]
    assert 2 <= n < 10_000
    saved_cache = MaskCache.load(saved / "mask_cache.pt")
    saved_params = torch.load(saved / "params.pt", weights_only=True)

    cp = SafeCheckpoint(dirname)
    spy = _ParamsAtStart()
    # refine_every large: no refinement in the resumed epoch, so the cache must come from disk
    resumed = method(max_epochs=1, refine_every=10_000, callbacks=[cp, LoadInitState(cp), spy])
    resumed.fit(X, y)
    assert len(resumed.history) == n + 1
    assert [row["epoch"] for row in resumed.history] == list(range(1, n + 2))
    for k, v in saved_params.items():
        torch.testing.assert_close(spy.state[k], v)
    assert resumed.mask_cache_ is not None and resumed.mask_cache_.rounds == saved_cache.rounds == n
    torch.testing.assert_close(resumed.mask_cache_.selected, saved_cache.selected)
    assert all("masked_loss" in b for b in resumed.history[-1]["batches"])  # the cache was used
    assert latest_checkpoint(dirname).endswith(f"epoch_{n + 1:04d}")


def test_online_amortized_explainer_resumes_with_its_state(tmp_path):
    from attribshield.explainers import AmortizedLimeExplainer

    online = dict(masker=LimeMasker(criterion="dominant", top_k=2), refine_mode="online", mask_fraction=0.5,
                  explainer=AmortizedLimeExplainer(hidden=4, n_coalitions=4, random_state=0),
                  explainer_update_fraction=0.5, audit_size=0, max_epochs=1)
    first = method(**online, callbacks=[SafeCheckpoint(tmp_path)]).fit(X, y)
    saved = Path(latest_checkpoint(tmp_path)) / "explainer.pt"
    assert saved.is_file()
    state = torch.load(saved, weights_only=True)  # tensors and plain containers only
    assert state["n_iter"] == first.explainer_.n_iter_ > 0
    resumed = load_checkpoint(method(**online), tmp_path)
    for a, b in zip(resumed.explainer_.net_.parameters(), first.explainer_.net_.parameters()):
        torch.testing.assert_close(a, b)
    assert resumed.explainer_.n_iter_ == first.explainer_.n_iter_
    torch.testing.assert_close(resumed.explainer_.explain(resumed.module_, X[:4]).weights,
                               first.explainer_.explain(first.module_, X[:4]).weights)
    resumed.partial_fit(X, y)  # and it keeps training from there
    assert resumed.explainer_.n_iter_ > first.explainer_.n_iter_
    with pytest.raises(ValueError, match="hidden"):
        AmortizedLimeExplainer(hidden=8).load_state_dict(state)


# -- bit-exact resume: the random generators travel with the checkpoint ---------------------
def _scramble_global_rngs(seed):
    """What a new process would have: other global generator states."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_rng_state_round_trips_through_a_weights_only_load(fitted, tmp_path):
    net = method(augment=RandomCropFlip(padding=1, random_state=3)).fit(X, y)
    torch.save(rng_state(net), tmp_path / "rng.pt")
    state = torch.load(tmp_path / "rng.pt", weights_only=True)  # tensors and plain containers only
    assert "augment_" in state["components"] and "masker_" in state["components"]

    def draws(n):
        return (torch.rand(3), np.random.rand(3), random.random(), n.augment_.draw(4, "cpu")[0],
                torch.rand(3, generator=n.masker_._generator("cpu")))

    expected = draws(net)
    # a fresh net, whose generators have drawn nothing yet, continues where the fitted one was
    _scramble_global_rngs(11)
    other = method(augment=RandomCropFlip(padding=1, random_state=3)).initialize()
    set_rng_state(other, state)
    for a, b in zip(expected, draws(other)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert other.audit_cursor_ == net.__dict__.get("audit_cursor_", 0)


_RESUME_SETUPS = {
    # refinement rounds with exact LIME, an unseeded attacker (torch's global generator),
    # seeded crops and flips, shuffled batches
    "rounds": dict(attacker=FGSM(eps=0.05, random_start=True), augment=RandomCropFlip(padding=1, random_state=0),
                   iterator_train__shuffle=True),
    # online random masks (seeded) with a seeded attacker
    "online": dict(masker=RandomMasker(top_k=2, random_state=1), refine_mode="online", mask_fraction=0.5,
                   audit_size=4, audit_samples=16, iterator_train__shuffle=True),
}


@pytest.mark.parametrize("how", ["load_checkpoint", "LoadInitState"])
@pytest.mark.parametrize("setup", sorted(_RESUME_SETUPS))
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, setup, how):
    kw = _RESUME_SETUPS[setup]
    _scramble_global_rngs(0)
    full = method(**kw, max_epochs=3).fit(X, y)
    _scramble_global_rngs(0)
    method(**kw, max_epochs=2, callbacks=[SafeCheckpoint(tmp_path)]).fit(X, y)
    _scramble_global_rngs(99)  # a new process: nothing of the first one's generators is left
    if how == "load_checkpoint":
        resumed = load_checkpoint(method(**kw, max_epochs=1), tmp_path)
        resumed.partial_fit(X, y)
    else:
        cp = SafeCheckpoint(tmp_path)
        resumed = method(**kw, max_epochs=1, callbacks=[cp, LoadInitState(cp)]).fit(X, y)
    assert len(resumed.history) == len(full.history) == 3
    for (name, a), b in zip(full.module_.state_dict().items(), resumed.module_.state_dict().values()):
        assert torch.equal(a, b), name
    losses = [k for k in full.history[-1] if k.endswith("_loss")]
    assert "train_loss" in losses and any("masked" in k for k in losses)
    for key in losses:
        assert full.history[-1, key] == resumed.history[-1, key], key
    if setup == "online":
        assert full.history[-1, "audit_spearman"] == resumed.history[-1, "audit_spearman"]


def test_resuming_without_generator_states_is_not_bit_exact(tmp_path):
    # the control for the test above: drop rng.pt and the resumed epoch draws other numbers
    kw = _RESUME_SETUPS["rounds"]
    _scramble_global_rngs(0)
    full = method(**kw, max_epochs=3).fit(X, y)
    _scramble_global_rngs(0)
    method(**kw, max_epochs=2, callbacks=[SafeCheckpoint(tmp_path)]).fit(X, y)
    os.remove(Path(latest_checkpoint(tmp_path)) / "rng.pt")
    _scramble_global_rngs(99)
    resumed = load_checkpoint(method(**kw, max_epochs=1), tmp_path)  # still loads: older checkpoints lack rng.pt
    resumed.partial_fit(X, y)
    assert not all(torch.equal(a, b) for a, b in zip(full.module_.parameters(), resumed.module_.parameters()))


class _InterruptAt(Callback):
    """Ctrl-C at the start of an epoch (after the previous epoch's checkpoint is written)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method_name", ["random_mask", "full_amortized"])
def test_interrupted_run_folder_resumes_bit_for_bit(tmp_path, method_name):
    # the path of `attribshield train` and the campaign scripts: a run folder, the one-cycle
    # schedule, crops and flips, random masks or an online amortized explainer and its audit;
    # interrupted, then resumed by the same call
    from attribshield.presets import TrainConfig, load_dataset
    from attribshield.runs import load_run, train_run

    cfg = TrainConfig(dataset="digits", method=method_name, epochs=3, train_subset=96, batch_size=32, eps=0.1,
                      lr=0.1, lr_schedule="onecycle", augment=True, audit_size=8, audit_samples=16)
    Xd, yd = load_dataset(cfg)[:2]
    quiet = dict(verbose=0, log=lambda line: None)
    _scramble_global_rngs(0)
    train_run(tmp_path / "full", cfg, Xd, yd, 10, **quiet)
    _scramble_global_rngs(0)
    part = train_run(tmp_path / "cut", cfg, Xd, yd, 10, callbacks=[_InterruptAt(3)], **quiet)
    assert "train_loss" not in part.history[-1]  # epoch 3 was interrupted before its first batch
    assert latest_checkpoint(tmp_path / "cut").endswith("epoch_0002")
    _scramble_global_rngs(5)
    train_run(tmp_path / "cut", cfg, Xd, yd, 10, **quiet)
    full, cut = load_run(tmp_path / "full")[0], load_run(tmp_path / "cut")[0]
    assert len(cut.history) == 3
    for (name, a), b in zip(full.module_.state_dict().items(), cut.module_.state_dict().values()):
        assert torch.equal(a, b), name
    if method_name == "full_amortized":  # the explainer trained online is the same too
        assert full.history[-1, "audit_spearman"] == cut.history[-1, "audit_spearman"]
        for a, b in zip(full.explainer_.net_.parameters(), cut.explainer_.net_.parameters()):
            assert torch.equal(a, b)


def test_generators_of_nested_components_are_found_and_restored():
    from attribshield.base import Component
    from attribshield.checkpoint import _components

    class Pair(Component):  # a user's composite: components in a list parameter
        def __init__(self, parts=(), random_state=None):
            self.parts = parts
            self.random_state = random_state

        def penalty(self, model, X, y, mask=None):
            return X.sum() * 0.0

    net = method(regularizer=Pair(parts=[RandomMasker(top_k=1, random_state=4), Pair(random_state=5)])).initialize()
    paths = [p for p, _ in _components(net)]
    assert {"regularizer_", "regularizer_.parts[0]", "regularizer_.parts[1]", "masker_", "attacker_"} <= set(paths)
    inner = net.regularizer_.parts[1]
    torch.rand(7, generator=inner._generator("cpu"))  # advance it
    state = rng_state(net)
    expected = torch.rand(3, generator=inner._generator("cpu"))
    fresh = method(regularizer=Pair(parts=[RandomMasker(top_k=1, random_state=4), Pair(random_state=5)])).initialize()
    set_rng_state(fresh, state)
    assert torch.equal(torch.rand(3, generator=fresh.regularizer_.parts[1]._generator("cpu")), expected)


@pytest.mark.parametrize("bad, match", [
    ([1, 2], "dict"),
    ({}, "'torch'"),
    ({"torch": torch.zeros(3)}, "'torch'"),
    ({"torch": torch.get_rng_state(), "components": {"masker_": {"cpu": 3}}}, "'components'"),
])
def test_set_rng_state_rejects_what_rng_state_does_not_return(fitted, bad, match):
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match=match):
        set_rng_state(fitted, bad)
    assert torch.equal(torch.get_rng_state(), before)  # nothing was restored
