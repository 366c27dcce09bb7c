"""Full-dose (online) refinement, the explicit component protocol, and loss terms through get_loss."""
import numpy as np
import pytest
import torch

from attribshield import RobustAttributionClassifier
from attribshield.attacks import FGSM, PGD, TRADES, GuidedPGD
from attribshield.base import capability, check_component
from attribshield.explainers import AmortizedLimeExplainer, GradientExplainer, LimeExplainer
from attribshield.maskers import LimeMasker, RandomMasker
from attribshield.regularizers import GradAlign, SpuriousGradientPenalty
from attribshield.testing import TinyMLP, make_images


@pytest.fixture(scope="module")
def data():
    X, y = make_images(n=48, c=1, h=8, w=8, n_classes=3, seed=0)
    return np.asarray(X, dtype=np.float32), np.asarray(y)


def _online(**kw):
    params = dict(module=TinyMLP, module__num_classes=3, max_epochs=2, batch_size=16, lr=0.05, verbose=0,
                  random_state=0, attacker=FGSM(eps=0.05, random_start=True, random_state=0),
                  masker=LimeMasker(top_k=2), explainer=GradientExplainer(),
                  regularizer=SpuriousGradientPenalty(weight=0.1), refine_mode="online", mask_fraction=0.5,
                  penalty_fraction=0.25, audit_size=8, audit_samples=16)
    params.update(kw)
    return RobustAttributionClassifier(**params)


@pytest.mark.parametrize("slot, wrong", [
    ("attacker", LimeMasker()), ("masker", LimeExplainer()), ("explainer", FGSM()),
    ("regularizer", RandomMasker()), ("augment", 3)])
def test_a_component_in_the_wrong_slot_fails_before_training(data, slot, wrong):
    components = {"masker": LimeMasker()} if slot == "regularizer" else {}
    components[slot] = wrong
    clf = RobustAttributionClassifier(TinyMLP, module__num_classes=3, max_epochs=1, verbose=0, **components)
    with pytest.raises(ValueError, match=slot):
        clf.fit(*data)
    assert not clf.initialized_ and not clf.history  # nothing trained


def test_a_class_instead_of_an_instance_is_named():
    with pytest.raises(ValueError, match="instance.*FGSM"):
        check_component("attacker", FGSM)


def test_a_bad_component_hyperparameter_fails_at_initialize():
    clf = RobustAttributionClassifier(TinyMLP, attacker=FGSM(eps=-1.0), verbose=0)
    with pytest.raises(ValueError, match="eps"):
        clf.initialize()


def test_declared_capabilities():
    assert capability(TRADES(), "provides_objective") and not capability(FGSM(), "provides_objective")
    assert capability(GuidedPGD(), "accepts_mask") and not capability(PGD(), "accepts_mask")
    assert capability(FGSM(), "provides_input_grad") and not capability(PGD(), "provides_input_grad")
    assert capability(SpuriousGradientPenalty(), "requires_mask") and not capability(GradAlign(), "requires_mask")
    assert capability(GradientExplainer(), "uses_input_grad") and not capability(LimeExplainer(), "uses_input_grad")
    # gradients taken away from x cannot come from the loop's gradient at x
    assert not capability(GradientExplainer(n_steps=2), "uses_input_grad")
    assert not capability(GradientExplainer(n_steps=2, path="cube"), "uses_input_grad")
    with pytest.raises(ValueError, match="unknown capability"):
        capability(FGSM(), "flies")


def test_fgsm_returns_the_gradient_it_stepped_along():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    X, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    X_adv, grad = FGSM(eps=0.1).perturb(model, X, y, return_grad=True)
    Xg = X.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(Xg), y, reduction="sum"), Xg)
    torch.testing.assert_close(grad, ref)
    torch.testing.assert_close(X_adv, (X + 0.1 * ref.sign()).clamp(0, 1))
    with pytest.raises(ValueError, match="input gradient"):
        PGD(eps=0.1).perturb(model, X, y, return_grad=True)


def test_regularizer_without_masker_only_when_it_needs_no_mask(data):
    with pytest.raises(ValueError, match="needs a masker"):
        RobustAttributionClassifier(TinyMLP, regularizer=SpuriousGradientPenalty(), verbose=0).initialize()
    clf = RobustAttributionClassifier(TinyMLP, module__num_classes=3, regularizer=GradAlign(weight=0.5, eps=0.05),
                                      attacker=FGSM(eps=0.05, random_start=True), max_epochs=1, verbose=0,
                                      random_state=0).fit(*data)
    assert clf.history[-1, "penalty_loss"] >= 0 and "penalty_loss" in clf.history[-1, "batches", 0]


def test_online_masks_every_batch_with_the_current_model(data, monkeypatch):
    clf = _online()
    seen = []
    orig = RobustAttributionClassifier._online_selection

    def spy(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(RobustAttributionClassifier, "_online_selection", spy)
    clf.fit(*data)
    assert len(seen) == 6  # 3 batches x 2 epochs: a fresh selection for every batch
    for _segments, selected, has in seen:
        assert int(has.sum()) == 8  # mask_fraction=0.5 of 16 rows
        assert bool((selected[has].sum(1) == 2).all()) and not bool(selected[~has].any())
    row = clf.history[-1]
    assert {"adv_loss", "masked_loss", "penalty_loss", "audit_spearman", "audit_top3", "audit_dur"} <= set(row)
    assert -1 <= row["audit_spearman"] <= 1 and 0 <= row["audit_top3"] <= 1
    assert getattr(clf, "mask_cache_", None) is None  # no rounds, no cache


class _UnfusedAmortized(AmortizedLimeExplainer):
    fused_fit_explain = False  # the same explainer, stepped and asked separately


@pytest.mark.parametrize("criterion", ["combined", "dominant"])
def test_amortized_explainer_trains_inside_the_clean_explanation(data, monkeypatch, criterion):
    """The online step of a trainable explainer shares the clean images' explanation
    (partial_fit_explain): the same training as a separate partial_fit, with fewer passes."""
    def run(explainer_cls, **kw):
        calls = {"partial_fit": 0, "fused": []}
        orig_pf, orig_fused = explainer_cls.partial_fit, explainer_cls.partial_fit_explain

        def pf(self, *a, **k):
            calls["partial_fit"] += 1
            return orig_pf(self, *a, **k)

        def fused(self, *a, **k):
            calls["fused"].append(k["n_fit"])
            return orig_fused(self, *a, **k)

        monkeypatch.setattr(explainer_cls, "partial_fit", pf)
        monkeypatch.setattr(explainer_cls, "partial_fit_explain", fused)
        clf = _online(explainer=explainer_cls(hidden=4, n_coalitions=4, random_state=0), regularizer=None,
                      masker=LimeMasker(top_k=2, criterion=criterion), **{"explainer_update_fraction": 0.25, **kw})
        clf.fit(*data)
        monkeypatch.undo()
        return clf, calls

    fused, c1 = run(AmortizedLimeExplainer)
    assert c1["fused"] == [4] * 6 and c1["partial_fit"] == 0  # 3 batches x 2 epochs, 1/4 of 16 rows
    separate, c2 = run(_UnfusedAmortized)
    assert c2["fused"] == [] and c2["partial_fit"] == 6
    for a, b in zip(fused.module_.parameters(), separate.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(fused.explainer_.net_.parameters(), separate.explainer_.net_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # rows of the step outside the explained ones: a separate step
    _, c3 = run(AmortizedLimeExplainer, mask_fraction=0.25, explainer_update_fraction=0.5)
    assert c3["fused"] == [] and c3["partial_fit"] == 6


def test_online_gradient_explainer_away_from_x_explains_instead_of_reusing(data, monkeypatch):
    """A GradientExplainer with n_steps takes its own gradients (path and points as set): the
    loop must call explain, not turn the attack's gradient at x into attributions."""
    calls = []
    orig = GradientExplainer.explain

    def spy(self, *args, **kwargs):
        calls.append((self.path, self.n_steps))
        return orig(self, *args, **kwargs)

    def boom(*a, **k):
        raise AssertionError("the gradient at x must not stand in for n_steps blends")

    monkeypatch.setattr(GradientExplainer, "explain", spy)
    monkeypatch.setattr(GradientExplainer, "attribute_from_grad", boom)
    explainer = GradientExplainer(n_steps=2, path="cube", random_state=0)
    clf = _online(explainer=explainer, audit_size=0).fit(*data)
    assert "masked_loss" in clf.history[-1] and calls and set(calls) == {("cube", 2)}


def test_online_random_masker_needs_no_explanation(data, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("RandomMasker must not explain")

    monkeypatch.setattr(GradientExplainer, "explain", boom)
    monkeypatch.setattr(GradientExplainer, "attribute_from_grad", boom)
    clf = _online(masker=RandomMasker(top_k=2, random_state=0), audit_size=0).fit(*data)
    assert "masked_loss" in clf.history[-1]


@pytest.fixture
def input_grad_calls(monkeypatch):
    """Records every extra input-gradient pass the training step makes."""
    calls = []
    orig = RobustAttributionClassifier._input_grad

    def counting(self, *a, **k):
        calls.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(RobustAttributionClassifier, "_input_grad", counting)
    return calls


def test_online_gradient_explainer_reuses_the_attack_gradient(data, input_grad_calls):
    calls = input_grad_calls
    _online(masker=LimeMasker(criterion="irrelevant", top_k=2), audit_size=0).fit(*data)
    assert calls == []  # attribution and gradient mass both come from FGSM's gradient


def test_two_phase_step_takes_the_adv_attribution_from_the_training_backward(data, monkeypatch,
                                                                             input_grad_calls):
    """'combined' needs the attribution of x_adv: the step reads it off the adversarial term's
    backward instead of another forward/backward pass, and trains exactly as with that pass
    (TinyMLP has no batch norm or dropout, so train- and eval-mode gradients agree)."""
    kw = dict(masker=LimeMasker(criterion="combined", top_k=2), audit_size=0, max_epochs=1)
    calls = input_grad_calls
    two_phase = _online(**kw).fit(*data)
    assert calls == [] and two_phase._two_phase()
    monkeypatch.setattr(RobustAttributionClassifier, "_two_phase", lambda self: False)
    one_pass = _online(**kw).fit(*data)
    assert len(calls) == 3  # one extra input-gradient pass per batch without it
    for a, b in zip(two_phase.module_.parameters(), one_pass.module_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert two_phase.history[-1]["train_loss"] == pytest.approx(one_pass.history[-1]["train_loss"], rel=1e-5)


def test_two_phase_only_where_the_adversarial_term_is_the_whole_loss(data):
    clf = _online(masker=LimeMasker(criterion="combined", top_k=2)).initialize()
    assert clf._two_phase()
    assert not clf.set_params(clean_weight=0.5)._two_phase()
    assert not clf.set_params(clean_weight=0.0, masker=LimeMasker(criterion="irrelevant"))._two_phase()
    assert not clf.set_params(masker=LimeMasker(criterion="combined"), explainer=LimeExplainer())._two_phase()


def test_online_needs_a_masker_that_scores_pieces():
    class OldMasker(LimeMasker):
        segment_scores = None

    with pytest.raises(ValueError, match="segment_scores"):
        _online(masker=OldMasker()).initialize()


def test_every_cross_entropy_term_goes_through_get_loss(data):
    class Counting(RobustAttributionClassifier):
        def get_loss(self, y_pred, y_true, X=None, training=False):
            if training:
                self.calls_.append(None if X is None else tuple(X.shape))
            return super().get_loss(y_pred, y_true, X=X, training=training)

    clf = Counting(**{**_online().get_params(deep=False), "max_epochs": 1, "regularizer": None,
                      "clean_weight": 0.5, "audit_size": 0})
    clf.calls_ = []
    clf.fit(*data)
    # per batch: adversarial, clean and masked-input terms, each with the images that made them
    assert len(clf.calls_) == 9 and all(c is not None for c in clf.calls_)
    assert clf.calls_[2][0] == 8  # the masked rows only


def test_online_parameters_are_validated():
    for bad in [dict(refine_mode="sometimes"), dict(mask_fraction=0), dict(penalty_fraction=1.5),
                dict(audit_size=-1), dict(audit_samples=1), dict(explainer_update_fraction=True)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            _online(**bad).initialize()


def test_under_bf16_autocast_the_masked_pass_is_cast_and_the_finite_difference_penalty_is_not(data):
    """The masked-input loss runs in the training precision; the finite-difference penalty stays
    fp32, since in bf16 the rounding of its two passes is as large as their difference at h=0.01."""
    from attribshield.regularizers import SpuriousSensitivityPenalty

    seen = {"penalty": [], "forward": []}

    class Recording(SpuriousSensitivityPenalty):
        def penalty(self, model, X, y, mask):
            seen["penalty"].append(torch.is_autocast_enabled("cpu"))
            return super().penalty(model, X, y, mask)

    net = _online(regularizer=Recording(weight=0.1, random_state=0), autocast="bf16", audit_size=0,
                  masker=RandomMasker(top_k=2, random_state=0), max_epochs=1)
    net.initialize()
    net.module_.register_forward_hook(lambda m, i, o: seen["forward"].append(torch.is_autocast_enabled("cpu")))
    net.partial_fit(*data)
    assert seen["penalty"] and not any(seen["penalty"])
    assert any(seen["forward"]) and not all(seen["forward"])  # cast training passes, fp32 penalty passes

    # opting in (autocast=True, the capability 'autocast_safe') runs the probes in the training precision
    fp32_passes, calls = seen["forward"].count(False), len(seen["penalty"])
    seen["penalty"].clear()
    seen["forward"].clear()
    net = _online(regularizer=Recording(weight=0.1, h=0.04, autocast=True, random_state=0), autocast="bf16",
                  audit_size=0, masker=RandomMasker(top_k=2, random_state=0), max_epochs=1)
    net.initialize()
    net.module_.register_forward_hook(lambda m, i, o: seen["forward"].append(torch.is_autocast_enabled("cpu")))
    net.partial_fit(*data)
    assert len(seen["penalty"]) == calls and all(seen["penalty"])
    assert seen["forward"].count(False) == fp32_passes - calls  # exactly the penalty's passes moved to bf16


class _ConvBNNet(torch.nn.Module):
    """A conv-BN network for 1x8x8 images (TinyMLP has no BatchNorm to fold)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


class _PreActNet(_ConvBNNet):
    """BatchNorm before the convolution: nothing to fold."""

    def __init__(self, num_classes=3):
        super().__init__(num_classes)
        self.features = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Conv2d(1, 4, 3, padding=1),
                                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())


def test_online_amortized_explainer_runs_a_folded_copy_of_the_current_model(data, monkeypatch):
    """The explainer's passes of an online step run on an eval-mode copy of the current model
    with Conv-BN pairs folded (the same function, no BatchNorm, parameters untouched), and ask
    for no intercept (``optional_intercept``)."""
    seen, intercepts = [], []
    orig = AmortizedLimeExplainer._explain

    def spy(self, module, X, *a, **k):
        seen.append(module)
        intercepts.append(k.get("intercept"))
        return orig(self, module, X, *a, **k)

    monkeypatch.setattr(AmortizedLimeExplainer, "_explain", spy)
    clf = _online(module=_ConvBNNet, explainer=AmortizedLimeExplainer(hidden=4, n_coalitions=4, random_state=0),
                  max_epochs=1, audit_size=0)
    clf.fit(*data)
    monkeypatch.undo()
    assert len(seen) == 2 * 3  # x and x_adv, 3 batches
    assert intercepts == [False] * 6  # the masker reads weights: no clean pass for the intercept
    live = clf.module_.eval()
    for m in seen:
        assert m is not clf.module_ and not m.training
        assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in m.modules())
        assert not any(p.requires_grad for p in m.parameters())
    # the last step's copy computes what the model computed before that step's update
    X = torch.as_tensor(data[0][:8])
    assert not torch.allclose(seen[-1](X), live(X), atol=1e-6)  # the step changed the model after
    assert any(isinstance(layer, torch.nn.BatchNorm2d) for layer in live.modules())
    # without BatchNorm nothing is copied
    seen.clear()
    monkeypatch.setattr(AmortizedLimeExplainer, "_explain", spy)
    plain = _online(explainer=AmortizedLimeExplainer(hidden=4, n_coalitions=4, random_state=0), max_epochs=1,
                    audit_size=0)
    plain.fit(*data)
    monkeypatch.undo()
    assert all(m is plain.module_ for m in seen)
    # BatchNorm without a Conv -> BN pair to fold (pre-activation): no copy either
    seen.clear()
    monkeypatch.setattr(AmortizedLimeExplainer, "_explain", spy)
    pre = _online(module=_PreActNet, explainer=AmortizedLimeExplainer(hidden=4, n_coalitions=4, random_state=0),
                  max_epochs=1, audit_size=0)
    pre.fit(*data)
    monkeypatch.undo()
    assert len(seen) == 6 and all(m is pre.module_ for m in seen)
