"""Tests of attribshield.evaluation on tiny models (8x8 inputs, a few samples)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from attribshield.attacks import FGSM, PGD
from attribshield.evaluation import (
    accuracy_vs_eps,
    attribution_stability,
    autoattack_accuracy,
    clean_accuracy,
    corruption_accuracy,
    evaluate_model,
    make_robust_scorer,
    occlusion_accuracy,
    robust_accuracy,
    robustness_report,
    segment_spearman,
    square_accuracy,
    topk_intersection,
    write_report,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread.  With 2 threads on a loaded 2-core machine, OpenMP's
    barriers make each tiny op ~30x slower (measured); restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- tiny models
def _linear(n_classes=4, n_in=64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_classes))


def _bn_mlp(n_classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, n_classes))


class _NoParams(nn.Module):
    """A linear model whose weights are plain attributes: no parameters, no buffers."""

    def __init__(self, n_classes=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(n_classes, 64, generator=g) * 0.3

    def forward(self, x):
        return x.flatten(1) @ self.W.T


class _Quantized(nn.Module):
    """Gradient masking by construction: inputs are rounded, so input gradients are 0."""

    def __init__(self, n_classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.lin(torch.round(x * 4).flatten(1) / 4)


class _Fitted:
    """Stand-in for a fitted estimator: only ``module_`` matters."""

    def __init__(self, module):
        self.module_ = module


def _data(n=8, seed=0, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g)


def _labels_from(model, X, flip=()):
    with torch.no_grad():
        y = model.eval()(X).argmax(1)
    for i in flip:
        y[i] = (y[i] + 1) % 4
    return y


class _Recorder:
    """An attacker that records how many points it is asked to attack."""

    def __init__(self, inner):
        self.inner, self.seen = inner, 0

    def perturb(self, model, X, y, **kw):
        self.seen += X.shape[0]
        return self.inner.perturb(model, X, y, **kw)


# --------------------------------------------------------------------------- clean / robust
def test_clean_accuracy_matches_manual_and_accepts_estimator_and_numpy():
    model = _linear()
    X = _data(10)
    y = _labels_from(model, X, flip=[0, 3, 7])
    assert clean_accuracy(model, X, y) == pytest.approx(0.7)
    per = clean_accuracy(_Fitted(model), X.numpy(), y.numpy(), return_per_sample=True, batch_size=3)
    assert per.dtype == bool and per.shape == (10,)
    assert per.tolist() == [i not in (0, 3, 7) for i in range(10)]


def test_eval_mode_used_and_flags_restored():
    model = _bn_mlp()
    X = _data(16)
    with torch.no_grad():
        expected = model.eval()(X).argmax(1)
    model.train()
    model[2].eval()
    flags = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    per = clean_accuracy(model, X, expected, batch_size=5, return_per_sample=True)
    assert per.all()  # eval-mode predictions (train-mode BatchNorm would use batch statistics)
    robust_accuracy(model, X, expected, PGD(eps=0.05, steps=2))
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_robust_accuracy_only_attacks_correct_points_and_is_bounded_by_clean():
    model = _linear()
    X = _data(12)
    y = _labels_from(model, X, flip=[1, 2, 5])
    rec = _Recorder(PGD(eps=0.1, steps=5, random_state=0))
    per = robust_accuracy(model, X, y, rec, return_per_sample=True, batch_size=4)
    clean = clean_accuracy(model, X, y, return_per_sample=True)
    assert rec.seen == 9
    assert not per[[1, 2, 5]].any()
    assert (per <= clean).all()
    assert per.mean() < clean.mean()  # the attack does something at this radius


def test_robust_accuracy_eps_zero_equals_clean_and_batch_invariant():
    model = _linear()
    X = _data(9)
    y = _labels_from(model, X, flip=[4])
    assert robust_accuracy(model, X, y, PGD(eps=0.0)) == clean_accuracy(model, X, y)
    atk = FGSM(eps=0.05)
    a = robust_accuracy(model, X, y, atk, batch_size=2, return_per_sample=True)
    b = robust_accuracy(model, X, y, atk, batch_size=64, return_per_sample=True)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, X, y: clean_accuracy(m, X[0], y), "dimensions"),
        (lambda m, X, y: clean_accuracy(m, X, y[:3]), "different lengths"),
        (lambda m, X, y: clean_accuracy(m, X * 3, y), r"\[0, 1\]"),
        (lambda m, X, y: clean_accuracy(m, X, y, batch_size=0), "batch_size"),
        (lambda m, X, y: robust_accuracy(m, X, y, object()), "perturb"),
        (lambda m, X, y: autoattack_accuracy(m, X, y, eps=-1.0, n_classes=4), "eps"),
        (lambda m, X, y: autoattack_accuracy(m, X, y, eps=0.1, norm="L1", n_classes=4), "norm"),
        (lambda m, X, y: autoattack_accuracy(m, X, y, eps=0.1, n_classes=5), "n_classes"),
        (lambda m, X, y: autoattack_accuracy(m, X, y, eps=0.1, version="fast", n_classes=4), "version"),
        (lambda m, X, y: square_accuracy(m, X, y, eps=0.1, n_queries=0), "n_queries"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    model = _linear()
    X = _data(4)
    y = _labels_from(model, X)
    with pytest.raises(ValueError, match=match):
        call(model, X, y)


def test_autoattack_needs_four_classes_for_standard():
    model = _linear(n_classes=3)
    X = _data(4)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=">= 4"):
        autoattack_accuracy(model, X, y, eps=0.1, n_classes=3)


# --------------------------------------------------------------------------- torchattacks
def test_autoattack_attacks_only_correct_points_keeps_modes_and_rng(monkeypatch):
    import torchattacks

    seen = []
    original = torchattacks.AutoAttack.forward

    def spy(self, images, labels):
        seen.append(images.shape[0])
        return original(self, images, labels)

    monkeypatch.setattr(torchattacks.AutoAttack, "forward", spy)
    model = _bn_mlp()
    X = _data(8)
    y = _labels_from(model, X, flip=[0, 6])
    model.train()
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    per = autoattack_accuracy(model, X, y, eps=0.5, n_classes=4, return_per_sample=True)
    assert torch.equal(torch.rand(3), expected_next), "the caller's global RNG stream was changed"
    assert sum(seen) == 6
    assert per.shape == (8,) and not per[[0, 6]].any()
    assert per.mean() == 0.0  # eps=0.5 in Linf breaks everything on this model
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_autoattack_eps_zero_and_module_without_parameters():
    model = _NoParams()
    X = _data(6)
    y = _labels_from(model, X, flip=[2])
    assert autoattack_accuracy(model, X, y, eps=0.0, n_classes=4) == clean_accuracy(model, X, y)
    assert autoattack_accuracy(model, X, y, eps=0.5, n_classes=4) == 0.0


def test_square_accuracy_bounded_by_clean_and_seeded():
    model = _linear()
    X = _data(8)
    y = _labels_from(model, X, flip=[3])
    a = square_accuracy(model, X, y, eps=0.05, n_queries=30, return_per_sample=True)
    b = square_accuracy(model, X, y, eps=0.05, n_queries=30, return_per_sample=True)
    assert np.array_equal(a, b)
    assert not a[3] and (a <= clean_accuracy(model, X, y, return_per_sample=True)).all()
    assert square_accuracy(model, X, y, eps=0.5, n_queries=30) < 7 / 8
    assert square_accuracy(model, X, y, eps=1.0, norm="L2", n_queries=30) <= 7 / 8


def test_square_beats_pgd_on_a_gradient_masking_model():
    model = _Quantized()
    X = _data(8)
    y = _labels_from(model, X)
    pgd = robust_accuracy(model, X, y, PGD(eps=0.3, steps=5, random_start=False))
    sq = square_accuracy(model, X, y, eps=0.3, n_queries=50)
    assert pgd == 1.0  # zero gradients: PGD cannot move
    assert sq < pgd


# --------------------------------------------------------------------------- report
def test_robustness_report_flags_gradient_masking():
    model = _Quantized()
    X = _data(8)
    y = _labels_from(model, X)
    rep = robustness_report(model, X, y, eps=0.3, steps=3, restarts=1, n_queries=50)
    gm = rep["gradient_masking"]
    assert gm["suspected"] and gm["black_box_beats_white_box"] and gm["large_eps_not_zero"]
    assert gm["reasons"]
    assert rep["robust_accuracy"] <= min(rep["pgd_accuracy"], rep["square_accuracy"])


def test_robustness_report_clean_on_linear_model():
    model = _linear()
    X = _data(8)
    y = _labels_from(model, X)
    rep = robustness_report(model, X, y, eps=0.05, steps=5, restarts=2, n_queries=30)
    assert rep["clean_accuracy"] == 1.0
    assert not rep["gradient_masking"]["suspected"], rep["gradient_masking"]["reasons"]
    curve = rep["eps_curve"]
    assert curve["eps"][0] == 0.0 and curve["accuracy"][0] == 1.0
    assert curve["accuracy"][-1] < curve["accuracy"][0]
    assert rep["large_eps"]["accuracy"] == 0.0
    assert rep["autoattack_accuracy"] is None
    json.dumps(rep)  # plain types only


def test_robustness_report_per_sample_record_and_stage_messages(capsys):
    model = _bn_mlp()
    X = _data(8)
    y = _labels_from(model, X, flip=[1, 5])
    rep = robustness_report(model, X, y, eps=0.5, steps=3, restarts=1, n_queries=20, autoattack=True,
                            n_classes=4, progress=True)
    per = rep["per_sample"]
    assert set(per) == {"clean", "pgd", "autoattack", "square", "robust"}
    for key, acc in [("clean", "clean_accuracy"), ("pgd", "pgd_accuracy"), ("autoattack", "autoattack_accuracy"),
                     ("square", "square_accuracy"), ("robust", "robust_accuracy")]:
        assert len(per[key]) == 8 and set(per[key]) <= {"0", "1"}
        assert per[key].count("1") / 8 == rep[acc], key
    assert per["clean"][1] == per["clean"][5] == "0"
    assert all(r <= c for r, c in zip(per["robust"], per["clean"]))
    err = capsys.readouterr().err
    for stage in ("clean: 0.7500", "PGD-3 x 1 restarts", "AutoAttack (standard):", "Square (20 queries)",
                  "accuracy vs eps"):
        assert stage in err, stage
    rep = robustness_report(model, X, y, eps=0.5, steps=3, restarts=1, square=False)
    assert set(rep["per_sample"]) == {"clean", "pgd", "robust"}
    assert capsys.readouterr().err == ""  # quiet unless asked


def test_accuracy_vs_eps_monotone_on_linear_model():
    model = _linear()
    X = _data(16)
    y = _labels_from(model, X)
    res = accuracy_vs_eps(model, X, y, [0.0, 0.02, 0.05, 0.2], steps=5)
    assert res["eps"] == [0.0, 0.02, 0.05, 0.2]
    assert all(a >= b for a, b in zip(res["accuracy"], res["accuracy"][1:]))
    with pytest.raises(ValueError):
        accuracy_vs_eps(model, X, y, [])


def test_write_report_writes_json_markdown_and_figures(tmp_path):
    results = {
        "robustness": {"n_samples": 4, "eps": 0.03, "norm": "Linf", "clean_accuracy": 1.0, "pgd_accuracy": 0.5,
                       "autoattack_accuracy": None, "square_accuracy": 0.75, "robust_accuracy": 0.5,
                       "eps_curve": {"eps": [0.0, 0.03], "accuracy": [1.0, 0.5]},
                       "large_eps": {"eps": 1.0, "accuracy": 0.0}, "settings": {},
                       "gradient_masking": {"suspected": True, "reasons": ["test reason"]}},
        "corruptions": {"table": {"fog": {1: 0.9, 2: 0.8}}, "mean": 0.85, "per_corruption": {"fog": 0.85},
                        "per_severity": {1: 0.9, 2: 0.8}, "corruptions": ["fog"], "severities": [1, 2]},
        "bounds": {"bound": np.array([0.01, 0.0]), "distortion": np.array([0.02, np.inf]), "norm": "L2",
                   "radius": 0.5, "violation_rate": 0.0},
    }
    paths = write_report(results, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["corruptions"]["table"]["fog"]["1"] == 0.9
    assert data["bounds"]["distortion"][1] == "inf"
    md = paths["markdown"].read_text()
    assert "test reason" in md and "| fog |" in md and "violation rate" in md
    names = sorted(p.name for p in paths["figures"])
    assert names == ["accuracy_vs_eps.png", "bound_vs_distortion.png", "corruptions.png"]
    assert all(p.stat().st_size > 1000 for p in paths["figures"])
    with pytest.raises(ValueError):
        write_report([1, 2], tmp_path)


def test_evaluate_model_end_to_end(tmp_path):
    model = _linear()
    X = _data(6)
    y = _labels_from(model, X)
    res = evaluate_model(model, X, y, eps=0.05, norm="L2", out_dir=tmp_path, steps=3, restarts=1, n_queries=20,
                         bounds=True, n_bound=4, bound_radius=0.5, stability=3)
    assert set(res) >= {"robustness", "bounds", "stability", "paths"}
    assert res["stability"]["topk_intersection"].shape == (3,)
    assert 0 <= res["stability"]["mean_topk_intersection"] <= 1
    assert "Attribution stability" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="stability"):
        evaluate_model(model, X, y, eps=0.05, stability=-1)
    assert res["bounds"]["bound"].shape == (4,)
    assert res["bounds"]["violation_rate"] == 0.0  # linear model: the bound holds
    assert (tmp_path / "report.json").exists() and (tmp_path / "bound_vs_distortion.png").exists()


def test_evaluate_model_without_square(tmp_path, monkeypatch):
    from attribshield.evaluation import robust

    def boom(*a, **k):
        raise AssertionError("Square ran with n_queries=0")

    monkeypatch.setattr(robust, "square_accuracy", boom)
    model = _linear()
    X = _data(6)
    y = _labels_from(model, X)
    res = evaluate_model(model, X, y, eps=0.05, out_dir=tmp_path, steps=2, restarts=1, n_queries=0)["robustness"]
    assert res["square_accuracy"] is None and "square" not in res["per_sample"]
    assert res["settings"]["square_queries"] is None and not res["gradient_masking"]["black_box_beats_white_box"]
    assert res["robust_accuracy"] == res["pgd_accuracy"]  # the worst case is over the attacks that ran
    assert "Square: not run." in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="n_queries"):
        evaluate_model(model, X, y, eps=0.05, n_queries=-1)


# --------------------------------------------------------------------------- corruptions
def _rgb_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))


def test_corruption_accuracy_table_and_precomputed_agree():
    pytest.importorskip("attribshield.data.cifar10c")
    from attribshield.data.cifar10c import corrupt

    model = _rgb_linear()
    X = _data(4, shape=(3, 32, 32)).numpy()
    y = _labels_from(model, torch.from_numpy(X)).numpy()
    names, sevs = ["gaussian_noise", "contrast"], [1, 5]
    res = corruption_accuracy(model, X, y, corruptions=names, severities=sevs)
    assert res["corruptions"] == names and res["severities"] == sevs
    assert set(res["table"]) == set(names) and all(set(res["table"][c]) == set(sevs) for c in names)
    vals = [res["table"][c][s] for c in names for s in sevs]
    assert res["mean"] == pytest.approx(np.mean(vals))
    assert res["per_corruption"]["contrast"] == pytest.approx(np.mean([res["table"]["contrast"][s] for s in sevs]))
    # seeded: same result twice (with or without a progress bar); precomputed arrays agree
    assert corruption_accuracy(model, X, y, corruptions=names, severities=sevs)["table"] == res["table"]
    assert corruption_accuracy(model, X, y, corruptions=names, severities=sevs, progress=True)["table"] == res["table"]
    pre = {(c, s): corrupt(X, c, s, random_state=s) for c in names for s in sevs}
    res_pre = corruption_accuracy(model, pre, y, severities=sevs)
    manual = {c: {s: clean_accuracy(model, pre[c, s], y) for s in sevs} for c in names}
    assert res_pre["table"] == manual and res_pre["corruptions"] == names
    # a different seed gives different noise, so the table is computed from corrupted images
    assert not np.array_equal(corrupt(X, "gaussian_noise", 5, random_state=1), X)


def test_corruption_accuracy_validation():
    model = _rgb_linear()
    X = _data(2, shape=(3, 32, 32)).numpy()
    y = np.zeros(2, dtype=int)
    with pytest.raises(ValueError, match="severities"):
        corruption_accuracy(model, X, y, corruptions=["fog"], severities=[6])
    with pytest.raises(ValueError, match="lacks"):
        corruption_accuracy(model, {("fog", 1): X}, y, corruptions=["fog"], severities=[1, 2])
    with pytest.raises(ValueError, match="sequence"):
        corruption_accuracy(model, X, y, corruptions="fog")
    pytest.importorskip("attribshield.data.cifar10c")
    with pytest.raises(ValueError, match="unknown corruptions"):
        corruption_accuracy(model, X, y, corruptions=["not_a_corruption"], severities=[1])


def test_corruption_records_pair_up_for_mcnemar(tmp_path):
    """evaluate_model keeps CIFAR-10-C per-image records; corruption_records reads them back from
    the JSON report, so two models' records pair up for the registered exact McNemar test."""
    pytest.importorskip("attribshield.data.cifar10c")
    from attribshield.evaluation import corruption_records
    from attribshield.evaluation.stats import mcnemar_exact

    g = np.random.default_rng(0)
    X = g.random((6, 3, 32, 32)).astype("float32")
    y = np.arange(6) % 3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    direct = corruption_accuracy(model, X, y, corruptions=["fog", "gaussian_noise"], severities=[1, 3],
                                 return_per_sample=True)
    rec = corruption_records(direct)
    assert rec.dtype == bool and rec.shape == (2 * 2 * 6,) and rec.mean() == pytest.approx(direct["mean"])
    res = evaluate_model(model, X, y, eps=0.01, steps=1, restarts=1, n_queries=2, occlusion=None,
                         cifar10c=True, out_dir=tmp_path, n_classes=3)
    back = json.loads((tmp_path / "report.json").read_text())["corruptions"]
    from_json = corruption_records(back)
    assert from_json.shape == (15 * 5 * 6,) and from_json.mean() == pytest.approx(res["corruptions"]["mean"])
    assert mcnemar_exact(from_json, from_json)["pvalue"] == 1.0
    with pytest.raises(ValueError, match="per_sample"):
        corruption_records({k: v for k, v in direct.items() if k != "per_sample"})


# --------------------------------------------------------------------------- stability
def test_topk_intersection_and_spearman_by_hand():
    a = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    b = np.array([[4.0, 1.0, 3.0, 2.0], [4.0, 3.0, 2.0, 1.0]])
    assert topk_intersection(a, b, 2).tolist() == [0.5, 0.0]
    assert topk_intersection(a, a, 3).tolist() == [1.0, 1.0]
    rho = segment_spearman(a, b)
    assert rho[1] == pytest.approx(-1.0) and rho[0] == pytest.approx(0.4)
    valid = np.array([[True, True, False, False], [True, True, True, True]])
    assert topk_intersection(a, b, 3, valid).tolist() == [1.0, pytest.approx(2 / 3)]
    assert np.isnan(segment_spearman(np.ones((1, 3)), np.arange(3.0)[None]))[0]
    with pytest.raises(ValueError):
        topk_intersection(a, b[:1], 2)
    with pytest.raises(ValueError):
        topk_intersection(a, b, 0)


def test_attribution_stability_identity_attack_is_perfectly_stable():
    from attribshield.explainers import LimeExplainer

    model = _linear()
    X = _data(3)
    y = _labels_from(model, X)
    res = attribution_stability(model, X, y, PGD(eps=0.0), LimeExplainer(n_samples=40, random_state=0), k=3)
    assert res["topk_intersection"].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(res["spearman"], 1.0)
    assert res["mean_topk_intersection"] == 1.0 and not res["attack_success"].any()


def test_attribution_stability_under_attack_shapes_and_ranges():
    from attribshield.explainers import LimeExplainer

    model = _linear()
    X = _data(4)
    y = _labels_from(model, X)
    res = attribution_stability(model, X, y, PGD(eps=0.5, steps=10, random_state=0),
                                LimeExplainer(n_samples=40, random_state=0), k=4)
    assert res["topk_intersection"].shape == (4,) and res["spearman"].shape == (4,)
    assert ((0 <= res["topk_intersection"]) & (res["topk_intersection"] <= 1)).all()
    assert res["attack_success"].all()
    assert torch.equal(res["clean"].segments, res["adversarial"].segments)
    # a large attack changes the explanation of the true class
    assert res["mean_spearman"] < 0.99
    with pytest.raises(ValueError, match="k must"):
        attribution_stability(model, X, y, PGD(eps=0.1), LimeExplainer(n_samples=10), k=0)


# --------------------------------------------------------------------------- scorer
def test_robust_scorer_in_grid_search():
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import GridSearchCV

    class TinyNet(BaseEstimator, ClassifierMixin):
        def __init__(self, lr=0.1):
            self.lr = lr

        def fit(self, X, y):
            torch.manual_seed(0)
            self.module_ = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
            opt = torch.optim.SGD(self.module_.parameters(), lr=self.lr)
            Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
            for _ in range(30):
                opt.zero_grad()
                nn.functional.cross_entropy(self.module_(Xt), yt).backward()
                opt.step()
            self.classes_ = np.array([0, 1])
            return self

    g = np.random.default_rng(0)
    X = g.random((40, 1, 8, 8)).astype("float32")
    y = (X[:, 0, :4].mean((1, 2)) > X[:, 0, 4:].mean((1, 2))).astype(np.int64)
    scorer = make_robust_scorer(PGD(eps=0.02, steps=3, random_state=0))
    gs = GridSearchCV(TinyNet(), {"lr": [0.0, 1.0]}, scoring=scorer, cv=2).fit(X, y)
    scores = gs.cv_results_["mean_test_score"]
    assert np.all((0 <= scores) & (scores <= 1))
    assert gs.best_params_ == {"lr": 1.0}  # an untrained net is worse under attack too
    with pytest.raises(ValueError):
        make_robust_scorer(object())


def test_robust_scorer_maps_labels_through_the_estimator():
    from attribshield import RobustAttributionClassifier
    from attribshield.testing import TinyMLP, make_images

    X, y01 = make_images(n=32)
    y = np.where(np.asarray(y01) == 0, 3, 7)  # labels that are not output indices
    clf = RobustAttributionClassifier(TinyMLP, max_epochs=3, lr=0.1, verbose=0, random_state=0).fit(X, y)
    scorer = make_robust_scorer(PGD(eps=0.0, steps=1, random_state=0))
    assert scorer(clf, X, y) == pytest.approx(clf.score(X, y))  # eps=0: robust accuracy is accuracy
    with pytest.raises(ValueError, match="not seen in fit"):
        scorer(clf, X, np.where(y == 3, 5, 7))


# --------------------------------------------------------------------------- slow cross-check
@pytest.fixture(scope="module")
def _trained_smallcnn(cifar10_root):
    """A SmallCNN trained for 2 epochs on 5,000 CIFAR-10 training images, and 300 test images."""
    from attribshield.data import load_cifar10
    from attribshield.models import SmallCNN

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Xtr, ytr = load_cifar10(cifar10_root, train=True, verify=False)
        Xte, yte = load_cifar10(cifar10_root, train=False, verify=False)
        Xtr, ytr = torch.from_numpy(Xtr[:5000]), torch.from_numpy(ytr[:5000])
        torch.manual_seed(0)
        model = SmallCNN(width=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        for _ in range(2):
            perm = torch.randperm(len(Xtr))
            for i in range(0, len(Xtr), 128):
                idx = perm[i:i + 128]
                opt.zero_grad()
                nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
                opt.step()
        model.eval()
        yield model, torch.from_numpy(Xte[:300]), torch.from_numpy(yte[:300])
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1 / 255, 2 / 255])
def test_our_pgd_matches_torchattacks_pgd_on_cifar10(_trained_smallcnn, eps):
    """Same settings, no random start: robust accuracies within 0.5 points (<= 1 of 300 images)."""
    import torchattacks

    model, X, y = _trained_smallcnn
    torch.set_num_threads(2)
    alpha, steps = eps / 4, 10
    ours = robust_accuracy(model, X, y, PGD(eps=eps, step_size=alpha, steps=steps, random_start=False),
                           return_per_sample=True)
    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    with torch.no_grad():
        correct = model(X).argmax(1) == y
    X_adv = atk(X, y)
    with torch.no_grad():
        theirs = (correct & (model(X_adv).argmax(1) == y)).numpy()
    clean = float(correct.float().mean())
    print(f"eps={eps:.5f}: clean {clean:.4f}, ours {ours.mean():.4f}, torchattacks {theirs.mean():.4f}, "
          f"{int((ours != theirs).sum())} points differ")
    assert clean > 0.35, f"the briefly trained model should beat chance clearly (clean accuracy {clean:.3f})"
    assert 0.02 < ours.mean() < clean, "the radius should make the comparison non-trivial"
    assert abs(ours.mean() - theirs.mean()) <= 0.005 + 1e-9, (ours.mean(), theirs.mean())
    assert (ours != theirs).sum() <= 2


def test_report_bound_medians_skip_misclassified_points():
    from attribshield.evaluation.report import _markdown

    bounds = {"norm": "Linf", "radius": 0.1, "violation_rate": 0.0,
              "margin": [1.0, 2.0, -1.0, -0.5], "bound": [0.02, 0.04, 0.0, 0.0],
              "distortion": [0.03, float("inf"), 0.0, 0.0]}
    text = _markdown({"bounds": bounds})
    assert "4 points, 2 correctly classified" in text
    assert "median bound: 0.03" in text  # over the two correct points, not 0.01 over all four
    assert "median distortion found: 0.03" in text
    assert "(1 points without an adversarial example" in text


# --------------------------------------------------------------------------- occlusion in the report
def test_evaluate_model_occlusion_section_report_and_progress(tmp_path, capsys):
    model = _linear()
    X = _data(8)
    y = _labels_from(model, X, flip=[2])
    res = evaluate_model(model, X, y, eps=0.05, steps=2, restarts=1, n_queries=10, occlusion=(1, 2, 3, 4),
                         occlusion_samples=20, out_dir=tmp_path, progress=True)
    occ = res["occlusion"]
    assert occ["k"] == [1, 2, 3, 4] and occ["segments"] == 16 and occ["fill"] == "mean"
    assert occ["clean_accuracy"] == res["robustness"]["clean_accuracy"] == 7 / 8
    for mode in ("random", "attributed"):
        assert len(occ[mode]) == 4 and all(0 <= a <= 1 for a in occ[mode])
        assert [s.count("1") / 8 for s in occ["per_sample"][mode]] == occ[mode]
    # the same numbers as the function called directly
    direct = occlusion_accuracy(model, X, y, [1, 2, 3, 4], random_state=0)
    assert occ["random"] == [direct[k] for k in (1, 2, 3, 4)]
    md = (tmp_path / "report.md").read_text()
    assert "## Occlusion" in md and "| k | random | attributed |" in md
    assert f"| 3 | {occ['random'][2]:.4f} | {occ['attributed'][2]:.4f} |" in md
    assert (tmp_path / "occlusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report.json").read_text())["occlusion"]["k"] == [1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "occlusion of k = 1, 2, 3, 4 of 16 segments" in err
    assert "  occlusion (random), k = 1/2/3/4: " in err and "  occlusion (attributed), k = 1/2/3/4: " in err
    # off by default; True means (1, 2, 3, 4)
    assert "occlusion" not in evaluate_model(model, X, y, eps=0.05, steps=1, restarts=1, n_queries=5)
    res = evaluate_model(model, X, y, eps=0.05, steps=1, restarts=1, n_queries=5, occlusion=True, occlusion_samples=10)
    assert res["occlusion"]["k"] == [1, 2, 3, 4]


@pytest.mark.parametrize("kwargs, match", [({"occlusion": [17]}, "larger than the number of segments"),
                                           ({"occlusion": [1, -1]}, "k must"),
                                           ({"occlusion": []}, "empty"),
                                           ({"occlusion": [1], "occlusion_samples": 1}, "occlusion_samples"),
                                           ({"channels_last": "yes"}, "channels_last")])
def test_evaluate_model_rejects_bad_occlusion_before_any_attack(kwargs, match, monkeypatch):
    from attribshield.evaluation import report

    def boom(*a, **k):
        raise AssertionError("the attacks ran before the arguments were checked")

    monkeypatch.setattr(report, "robustness_report", boom)
    model = _linear()
    X = _data(4)
    with pytest.raises(ValueError, match=match):
        evaluate_model(model, X, _labels_from(model, X), eps=0.05, **kwargs)


def test_write_report_renders_an_occlusion_table_and_plot(tmp_path):
    results = {"occlusion": {"k": [1, 2], "random": [0.9, 0.8], "attributed": [0.5, 0.25], "clean_accuracy": 1.0,
                             "segments": 16, "fill": "mean", "explainer": "LIME (200 foldover samples)"}}
    paths = write_report(results, tmp_path)
    md = paths["markdown"].read_text()
    assert "| 1 | 0.9000 | 0.5000 |" in md and "| 2 | 0.8000 | 0.2500 |" in md
    assert "k of each image's 16 segments" in md and "Clean accuracy: 1.0000" in md
    assert [p.name for p in paths["figures"]] == ["occlusion.png"]


def test_cli_evaluate_occlusion_and_channels_last_flags():
    from attribshield.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["evaluate", "--model", "run"])
    assert args.occlusion == [1, 2, 3, 4] and args.occlusion_samples == 200 and args.channels_last is False
    args = parse(["evaluate", "--model", "run", "--occlusion", "2", "5", "--occlusion-samples", "50",
                  "--channels-last"])
    assert args.occlusion == [2, 5] and args.occlusion_samples == 50 and args.channels_last is True
    assert parse(["evaluate", "--model", "run", "--no-occlusion"]).occlusion is None


# --------------------------------------------------------------------------- channels_last
def _tiny_conv(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_channels_last_gives_identical_accuracies_and_leaves_the_module_alone():
    model = _tiny_conv()
    X = _data(16, shape=(3, 8, 8))
    y = _labels_from(model, X, flip=[0, 5])
    state = copy.deepcopy(model.state_dict())
    kw = dict(eps=0.01, steps=3, restarts=1, n_queries=20)
    a = robustness_report(model, X, y, **kw)
    b = robustness_report(model, X, y, channels_last=True, **kw)
    assert a["settings"]["channels_last"] is False and b["settings"]["channels_last"] is True
    assert 0 < a["pgd_accuracy"] < a["clean_accuracy"]  # non-trivial at this radius
    for key in ("clean_accuracy", "pgd_accuracy", "square_accuracy", "robust_accuracy", "eps_curve", "large_eps",
                "per_sample"):
        assert a[key] == b[key], key
    # torchattacks' AutoAttack copes with the channels_last gradients (a radius that keeps it short)
    kw = dict(eps=0.05, steps=3, restarts=1, square=False, autoattack=True, n_classes=4)
    a, b = robustness_report(model, X, y, **kw), robustness_report(model, X, y, channels_last=True, **kw)
    assert a["per_sample"] == b["per_sample"]
    for k, v in model.state_dict().items():  # the caller's module: same values, same (default) layout
        assert torch.equal(v, state[k]) and v.is_contiguous(), k
    ra = evaluate_model(model, X, y, eps=0.01, steps=2, restarts=1, n_queries=10, occlusion=(1, 3),
                        occlusion_samples=20)
    rb = evaluate_model(model, X, y, eps=0.01, steps=2, restarts=1, n_queries=10, occlusion=(1, 3),
                        occlusion_samples=20, channels_last=True)
    assert ra["occlusion"] == rb["occlusion"] and ra["robustness"]["per_sample"] == rb["robustness"]["per_sample"]
    assert rb["robustness"]["settings"]["channels_last"] is True
    with pytest.raises(ValueError, match="channels_last"):
        robustness_report(model, X, y, eps=0.01, channels_last=1)
