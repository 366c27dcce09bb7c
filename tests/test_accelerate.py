"""AcceleratedRobustAttributionClassifier: the full method through accelerate, on the CPU."""
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

accelerate = pytest.importorskip("accelerate")  # optional dependency (the `accelerate` extra)
from accelerate import Accelerator  # noqa: E402
from skorch.hf import AccelerateMixin  # noqa: E402

from attribshield import RobustAttributionClassifier  # noqa: E402
from attribshield.accelerate import AcceleratedRobustAttributionClassifier  # noqa: E402
from attribshield.attacks import FGSM  # noqa: E402
from attribshield.explainers import LimeExplainer  # noqa: E402
from attribshield.maskers import LimeMasker  # noqa: E402
from attribshield.refinement import MaskCache  # noqa: E402
from attribshield.regularizers import SpuriousGradientPenalty  # noqa: E402
from attribshield.testing import TinyMLP, make_images  # noqa: E402

X, y = make_images(n=32)


def method_kwargs(**kw):
    params = dict(attacker=FGSM(eps=0.05, random_start=True, random_state=0),
                  masker=LimeMasker(top_k=2, random_state=0), regularizer=SpuriousGradientPenalty(weight=0.1),
                  explainer=LimeExplainer(n_samples=16, random_state=0), refine_every=1, refine_fraction=1.0,
                  max_epochs=2, lr=0.1,
                  batch_size=16, verbose=0, random_state=0)
    params.update(kw)
    return params


def accelerated(**kw):
    return AcceleratedRobustAttributionClassifier(TinyMLP, accelerator=Accelerator(cpu=True), **method_kwargs(**kw))


@pytest.fixture(scope="module")
def fitted():
    return accelerated().fit(X, y)


def test_full_method_runs_through_accelerate(fitted):
    assert isinstance(fitted.attacker_, FGSM) and isinstance(fitted.masker_, LimeMasker)
    assert isinstance(fitted.mask_cache_, MaskCache) and fitted.mask_cache_.rounds == 2
    last = fitted.history[-1]
    # the estimator's loss terms (not the mixin's plain step) ran in the second epoch
    assert all({"adv_loss", "masked_loss", "penalty_loss"} <= set(b) for b in last["batches"])
    assert last["refine_n"] == len(X)
    proba = fitted.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    assert set(fitted.predict(X)) <= set(fitted.classes_)


def test_naive_mixin_drops_the_method():
    """Documents why the subclass exists: the bare mixin silently trains a plain net."""

    class Naive(AccelerateMixin, RobustAttributionClassifier):
        pass

    net = Naive(TinyMLP, accelerator=Accelerator(cpu=True), callbacks__print_log__sink=print,
                **method_kwargs(max_epochs=1))
    net.fit(X, y)
    assert not hasattr(net, "attacker_")
    assert "adv_loss" not in net.history[-1]["batches"][0]


def test_same_weights_as_the_plain_estimator():
    """On one CPU process accelerate changes nothing: identical weights to the plain estimator."""
    ours = accelerated(iterator_train__shuffle=False).fit(X, y)
    plain = RobustAttributionClassifier(TinyMLP, **method_kwargs(iterator_train__shuffle=False)).fit(X, y)
    for a, b in zip(ours.module_.parameters(), plain.module_.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings("ignore::skorch.exceptions.DeviceWarning")  # device=None: skorch notes it unpickles on cpu
def test_pickle_and_clone(fitted):
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(restored.predict_proba(X), fitted.predict_proba(X), rtol=1e-6)
    torch.testing.assert_close(restored.mask_cache_.selected, fitted.mask_cache_.selected)
    c = clone(fitted)
    assert not c.initialized_ and c.masker.top_k == 2
    c.set_params(masker__top_k=1, max_epochs=1)
    c.fit(X, y)
    assert (c.mask_cache_.selected.sum(1) == 1).all()


def test_refit_prepares_the_new_module_again():
    net = accelerated(max_epochs=1, unwrap_after_train=False)
    net.fit(X, y)
    first = net.optimizer_
    net.fit(X, y)  # re-initialises: the new optimizer must be prepared again
    assert net.optimizer_ is not first
    assert type(net.optimizer_).__name__ == "AcceleratedOptimizer"


def test_verbose_zero_is_silent(capsys):
    accelerated(max_epochs=1, masker=None, regularizer=None).fit(X, y)
    assert "train_loss" not in capsys.readouterr().out


def test_bad_device_is_a_value_error():
    with pytest.raises(ValueError, match="differs from the accelerator"):
        accelerated(device="meta").fit(X, y)


def test_two_phase_backward_only_in_a_single_process(monkeypatch):
    from attribshield.explainers import GradientExplainer

    clf = accelerated(masker=LimeMasker(criterion="combined", top_k=2), explainer=GradientExplainer(),
                      refine_mode="online", audit_size=0)
    clf.fit(X, y)  # one process: online masks, x_adv's gradient from the step's first backward
    assert clf._two_phase() and "masked_loss" in clf.history[-1]
    monkeypatch.setattr(type(clf.accelerator), "num_processes", property(lambda self: 2))
    assert not clf._two_phase()  # DDP: one backward per step
