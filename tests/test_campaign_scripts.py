"""The campaign scripts run end to end in --smoke mode (digits, seconds) and write their JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attribshield.runs import read_history

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_script(name, out, *extra, timeout=300):
    cmd = [sys.executable, str(BENCH / name), "--smoke", "--threads", "1", "--out", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                         env={**os.environ, **ENV})
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    with open(out / "summary.json") as f:
        return json.load(f), res.stdout


@pytest.mark.slow
def test_shortcut_experiment_smoke(tmp_path):
    out = tmp_path / "shortcut"
    summary, stdout = run_script("shortcut_experiment.py", out, "--explain", "3")
    assert {"experiment", "dataset", "rho", "patch_size", "arms", "baseline", "runs", "summary",
            "comparisons", "test_seed", "pgd_steps"} <= set(summary)
    assert summary["experiment"] == "shortcut" and summary["dataset"] == "digits" and summary["smoke"]
    arms = summary["arms"]
    assert {"clean", "fgsm_rs", "random_mask", "oracle"} <= set(arms)
    assert len(summary["runs"]) == len(arms)
    metrics = {"unpatched_clean", "rho1_clean", "rho0_clean", "shift1_clean", "shift1_follows", "rho0_pgd"}
    for run in summary["runs"]:
        assert {"arm", "seed", "epochs", "gate", "gate_precision", "gate_masker", "acc", "per_sample_file",
                "run_dir"} <= set(run)
        assert run["epochs"] == 2 and 0 <= run["gate"] <= 1
        assert set(run["acc"]) == metrics and all(0 <= v <= 1 for v in run["acc"].values())
        assert (out / run["per_sample_file"]).is_file()
        assert (out / run["run_dir"] / "latest").read_text() == "epoch_0002"
    oracle = next(r for r in summary["runs"] if r["arm"] == "oracle")
    assert oracle["gate"] == 1.0 and oracle["gate_precision"] == 1.0  # the oracle masks exactly the square
    assert {"arm", "baseline", "metric", "n10", "n01", "pvalue"} <= set(summary["comparisons"][0])
    assert "exact McNemar" in stdout
    # one seed: the rule's quantities but no verdict; the figure is written and can be redrawn
    v = {x["arm"]: x for x in summary["verdicts"]}
    assert v and all(x["verdict"] is None and "1 seed(s)" in x["reason"] for x in v.values())
    assert "no verdict" in stdout and (out / "shortcut.png").stat().st_size > 0
    assert (out / "explanations_s0.png").stat().st_size > 0 and "explanations_s0.png" in stdout
    res = subprocess.run([sys.executable, str(BENCH / "shortcut_experiment.py"), "--plot", str(out / "summary.json"),
                          "--out", str(tmp_path / "again.png")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and (tmp_path / "again.png").stat().st_size > 0, res.stderr[-2000:]
    # a second call resumes from the checkpoint (one more epoch), and keeps the other runs' results
    again, stdout2 = run_script("shortcut_experiment.py", out, "--methods", "oracle", "--epochs", "3")
    assert "oracle-s0: resuming after epoch 2" in stdout2
    assert again["runs"][0]["arm"] == "oracle" and again["runs"][0]["epochs"] == 3 and again["runs"][0]["gate"] == 1.0


@pytest.mark.slow
def test_overfitting_experiment_smoke(tmp_path):
    out = tmp_path / "co"
    summary, stdout = run_script("overfitting_experiment.py", out, "--settings", "8:2")
    assert {"experiment", "settings", "arms", "baseline", "runs", "comparisons", "monitor", "pgd_steps"} <= set(summary)
    assert summary["experiment"] == "catastrophic_overfitting"
    assert summary["settings"] == [{"name": "eps8-r2", "eps": 8 / 255, "step_ratio": 2.0, "gradalign_weight": 0.2}]
    assert {"fgsm_rs", "nfgsm", "gradalign", "full_gradient", "random_mask"} == set(summary["arms"])
    for run in summary["runs"]:
        assert {"setting", "arm", "seed", "curves", "collapse", "test_clean", "test_pgd", "per_sample_file"} <= set(run)
        assert set(run["curves"]) == {"clean", "fgsm", "pgd"}
        assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in run["curves"].values())
        assert {"collapsed", "epoch", "pgd_best", "pgd_final", "fgsm_final"} <= set(run["collapse"])
        assert 0 <= run["test_pgd"] <= run["test_clean"] <= 1
        assert "monitor_pgd_acc" in read_history(out / run["run_dir"])[-1]  # checkpointed with the epoch
    assert "COLLAPSED" in stdout or "no collapse" in stdout
    assert (out / "curves.png").stat().st_size > 0
    replotted = tmp_path / "again.png"
    res = subprocess.run([sys.executable, str(BENCH / "overfitting_experiment.py"), "--plot", str(out / "summary.json"),
                          "--out", str(replotted)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert replotted.stat().st_size > 0


def test_refinement_cost_rejects_unknown_arms_before_work(tmp_path):
    # "<preset>-<criterion>" arms: a bad preset or criterion stops at parsing, before any data or model
    import os

    res = subprocess.run([sys.executable, str(BENCH / "refinement_cost.py"), "--methods", "fgsm_rs",
                          "full_amortized-sometimes",
                          "--cifar-root", str(tmp_path / "absent"), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **ENV})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "unknown method 'full_amortized-sometimes'" in res.stderr and "dominant" in res.stderr
    assert not (tmp_path / "absent").exists() and not (tmp_path / "r.json").exists()


def test_refinement_cost_rejects_bad_overrides_before_work(tmp_path):
    # "<preset>[-<criterion>]:key=value" arms compare settings of one method side by side
    import os

    arm, message = "full_amortized:no_such_field=1", "no_such_field"
    res = subprocess.run([sys.executable, str(BENCH / "refinement_cost.py"), "--methods", "fgsm_rs", arm,
                          "--cifar-root", str(tmp_path / "absent"), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **ENV})
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and repr(arm) in res.stderr
    assert not (tmp_path / "absent").exists() and not (tmp_path / "r.json").exists()


def test_refinement_cost_parses_arms_with_overrides():
    import importlib.util

    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("refinement_cost", BENCH / "refinement_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_arm("fgsm_rs") == {"method": "fgsm_rs"}
    arm = mod.parse_arm("full_amortized-dominant:explainer_update_fraction=0.0625,explainer_coalitions=4")
    assert arm == {"method": "full_amortized", "criterion": "dominant",
                   "explainer_update_fraction": 0.0625, "explainer_coalitions": 4}
    assert isinstance(arm["explainer_coalitions"], int)
    with pytest.raises(ValueError, match="set by the benchmark itself"):
        mod.parse_arm("full_gradient-dominant:epochs=5")
    with pytest.raises(ValueError, match="key=value with a TrainConfig field"):
        mod.parse_arm("full_amortized:explainer_update_fraction")
    with pytest.raises(ValueError, match="unknown method"):
        mod.parse_arm("full_amortized-often:lr=0.1")


def _shortcut_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("shortcut_experiment", BENCH / "shortcut_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _records(rho0, unpatched, n=1000):
    """Per-image records with the first ``k`` images correct (the same images for every arm)."""
    import numpy as np

    def bits(acc):
        return np.arange(n) < round(acc * n)

    return {"rho0_clean": bits(rho0), "unpatched_clean": bits(unpatched)}


@pytest.mark.parametrize("method, control, seeds, expected", [
    ([(0.30, 0.70)] * 3, 0.15, 3, "WINS"),
    ([(0.30, 0.70)] * 3, 0.30, 3, "REFUTED"),            # random masking does as well
    ([(0.07, 0.70)] * 3, 0.05, 3, "REFUTED"),            # 2 points above FGSM-RS: under the 3-point floor
    ([(0.17, 0.70), (0.17, 0.70), (0.13, 0.70)], 0.05, 3, "INCONCLUSIVE"),  # one seed 8 points above
    ([(0.30, 0.67)] * 3, 0.15, 3, "INCONCLUSIVE"),      # 3 points of clean accuracy lost
    ([(0.30, 0.70)] * 3, 0.27, 3, "INCONCLUSIVE"),      # only 3 points above random masking
    ([(0.30, 0.70)], 0.15, 1, None),                    # a pilot: no verdict
])
def test_shortcut_verdict_follows_the_registered_rule(method, control, seeds, expected):
    mod = _shortcut_module()
    per = {}
    for s in range(seeds):
        per[("fgsm_rs", s)] = _records(0.05, 0.70)
        per[("random_mask", s)] = _records(control, 0.70)
        per[("full_gradient-dominant", s)] = _records(*method[s])
    v = mod.verdict(per, "full_gradient-dominant", list(range(seeds)))
    assert v["verdict"] == expected, v
    assert v["margins"] == pytest.approx([100 * (m[0] - 0.05) for m in method[:seeds]])
    assert v["over_control"] == pytest.approx(100 * (sum(m[0] for m in method[:seeds]) / seeds - control))
    assert v["clean_cost"] == pytest.approx(100 * (0.70 - sum(m[1] for m in method[:seeds]) / seeds))


def test_shortcut_verdict_needs_the_control_and_judges_only_method_arms():
    mod = _shortcut_module()
    per = {("fgsm_rs", s): _records(0.05, 0.7) for s in range(3)}
    per.update({("full_gradient-dominant", s): _records(0.4, 0.7) for s in range(3)})
    v = mod.verdict(per, "full_gradient-dominant", [0, 1, 2])
    assert v["verdict"] is None and "random_mask" in v["reason"] and v["over_control"] is None
    assert mod.verdict(per, "full_gradient-combined", [0, 1, 2])["seeds"] == []
    assert [a for a in ("clean", "fgsm_rs", "random_mask", "oracle", "full_gradient-dominant",
                        "full_amortized-combined") if mod.is_method_arm(a)] == ["full_gradient-dominant",
                                                                               "full_amortized-combined"]


def _write_report(path, acc, n=100):
    """A report.json as ``attribshield evaluate --autoattack --cifar10c`` writes it, first images correct."""
    import numpy as np

    from attribshield._utils import to_bits

    bits = lambda a: to_bits(np.arange(n) < round(a * n))  # noqa: E731
    report = {"robustness": {"clean_accuracy": acc["clean"],
                             "per_sample": {"clean": bits(acc["clean"]), "autoattack": bits(acc["aa"])}},
              "corruptions": {"corruptions": ["fog", "snow"], "severities": [1, 5],
                              "per_sample": {c: {str(s): bits(acc["c"]) for s in (1, 5)} for c in ("fog", "snow")}},
              "occlusion": {"k": [1, 2], "per_sample": {"random": [bits(acc["occ"])] * 2,
                                                        "attributed": [bits(acc["occ"])] * 2}}}
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps(report))


def test_recipe_verdict_reads_reports_and_applies_the_rule(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_verdict", BENCH / "recipe_verdict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arms = {"fgsm_rs_eqtime": dict(clean=0.70, aa=0.40, c=0.60, occ=0.50),
            "random_mask": dict(clean=0.70, aa=0.45, c=0.60, occ=0.70),
            # ahead everywhere on AutoAttack; behind on CIFAR-10-C; ahead of FGSM-RS on occlusion
            # but not of random masking
            "full_gradient": dict(clean=0.69, aa=0.50, c=0.50, occ=0.60)}
    for arm, acc in arms.items():
        for seed in (0, 1, 2):
            _write_report(tmp_path / f"{arm}-s{seed}" / "eval", acc)
    rows = mod.campaign_verdict(str(tmp_path), ["full_gradient", "full_amortized"], "fgsm_rs_eqtime",
                                "random_mask", [0, 1, 2])
    fg, fa = rows
    verdicts = {col: c["verdict"] for col, c in fg["columns"].items()}
    assert verdicts == {"autoattack": "WINS", "cifar10c": "LOSES", "occlusion_random": "LEVEL",
                        "occlusion_attributed": "LEVEL"}
    assert fg["columns"]["autoattack"]["differences"] == pytest.approx([0.10] * 3)
    assert fg["columns"]["cifar10c"]["n_seeds"] == 3 and fg["columns"]["autoattack"]["missing"] == []
    assert fg["clean"] == {"full_gradient": pytest.approx(0.69), "fgsm_rs_eqtime": pytest.approx(0.70)}
    assert all(c["verdict"] is None for c in fa["columns"].values())
    assert "full_amortized-s0" in fa["columns"]["autoattack"]["missing"]
    table = mod.render(rows, [0, 1, 2])
    assert "**WINS** (+10.0 pts" in table and "**LOSES**" in table and "| `full_amortized` | not run" in table
    # a seed without a baseline run: computed on the others, but the table gives no verdict
    import shutil

    shutil.rmtree(tmp_path / "fgsm_rs_eqtime-s2")
    again = mod.campaign_verdict(str(tmp_path), ["full_gradient"], "fgsm_rs_eqtime", "random_mask", [0, 1, 2])
    assert again[0]["columns"]["autoattack"]["seeds"] == [0, 1]
    partial = mod.render(again, [0, 1, 2])
    assert "no verdict; wins on seeds [0, 1] only (+10.0 pts" in partial and "**" not in partial


def test_cube_sampling_designs():
    """The sampling designs benchmarks/cube_sampling.py compares (docs/performance.md)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cube_sampling", BENCH / "cube_sampling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    k, n, s = 6, 3, 5
    draws = {d: mod.blends(d, k, n, s, torch.Generator().manual_seed(0)) for d in mod.DESIGNS}
    for d, m in draws.items():
        assert m.shape == (k, n, s) and bool((m >= 0).all()) and bool((m <= 1).all()), d
    strata = (draws["latin hypercube"] * k).floor().sort(0).values
    assert bool((strata == torch.arange(k, dtype=strata.dtype)[:, None, None]).all())
    assert set(draws["binary"].unique().tolist()) <= {0.0, 1.0}
    anti = draws["antithetic"]
    torch.testing.assert_close(anti[:3] + anti[3:], torch.ones(3, n, s))
    torch.testing.assert_close(draws["straight"][:, 0, 0], (torch.arange(k) + 0.5) / k)
    assert not torch.equal(draws["iid uniform"], draws["latin hypercube"])
    with pytest.raises(ValueError, match="design"):
        mod.blends("sobol", k, n, s, torch.Generator())
    # one blend with every segment kept is the gradient of p_target at x itself
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16, 4)).double()
    X = torch.rand(n, 3, 4, 4, dtype=torch.float64)
    seg = torch.arange(4).repeat_interleave(4).reshape(4, 4).expand(n, 4, 4).clone()
    target = torch.tensor([0, 2, 3])
    got = mod.mean_gradient(model, X, torch.zeros_like(X), seg, target, torch.ones(1, n, 4, dtype=torch.float64))
    Xg = X.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(torch.softmax(model(Xg), 1).gather(1, target[:, None]).sum(), Xg)
    torch.testing.assert_close(got, want)


def test_amortized_passes_benchmark_times_every_part(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("amortized_passes", BENCH / "amortized_passes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "p.json"
    rows = mod.main(["--rows", "2", "--size", "8", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())["cpu_s"]
    assert set(saved) == {k.strip() for k in rows} and len(saved) == 7
    assert all(v > 0 for v in saved.values())
    with pytest.raises(SystemExit):
        mod.main(["--rows", "0", "--out", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


def test_shortcut_loss_rises_flag_one_epoch_increases_above_the_threshold():
    mod = _shortcut_module()
    hist = [{"epoch": 1, "adv_loss": 2.1}, {"epoch": 2, "adv_loss": 1.8}, {"epoch": 3, "adv_loss": 2.05},
            {"epoch": 4, "adv_loss": 2.2}, {"epoch": 5, "adv_loss": 1.5}, {"epoch": 6, "adv_loss": 1.9}]
    rises = mod.loss_rises(hist)
    assert [e for e, _ in rises] == [3, 6]  # +0.25 and +0.4; +0.15 at epoch 4 is under 0.2
    assert rises[0][1] == pytest.approx(0.25) and rises[1][1] == pytest.approx(0.4)
    assert mod.loss_rises(hist, threshold=0.1) == [(3, pytest.approx(0.25)), (4, pytest.approx(0.15)),
                                                   (6, pytest.approx(0.4))]
    # runs without an adversarial loss (clean training) fall back on train_loss
    assert mod.loss_rises([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 1.5}]) == [(2, 0.5)]
    assert mod.loss_rises([]) == []


def test_recipe_verdict_merges_evaluation_folders_and_tabulates_runs(tmp_path, capsys):
    """AutoAttack in its own folder (``evaluate --autoattack --out R/eval-aa``) joins the main report."""
    import importlib.util

    import numpy as np

    from attribshield._utils import to_bits

    spec = importlib.util.spec_from_file_location("recipe_verdict", BENCH / "recipe_verdict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = 100
    bits = lambda a: to_bits(np.arange(n) < round(a * n))  # noqa: E731
    for arm, aa in (("fgsm_rs_eqtime", 0.30), ("random_mask", 0.32), ("full_gradient", 0.40)):
        run = tmp_path / f"{arm}-s0"
        main = {"robustness": {"clean_accuracy": 0.7, "pgd_accuracy": 0.4, "autoattack_accuracy": None,
                               "per_sample": {"clean": bits(0.7)}},
                "corruptions": {"mean": 0.65}, "occlusion": {"random": [0.7, 0.6], "attributed": [0.5, 0.4]}}
        extra = {"robustness": {"clean_accuracy": 0.9, "autoattack_accuracy": aa,
                                "per_sample": {"clean": bits(0.9), "autoattack": bits(aa)}}}
        for d, rep in (("eval", main), ("eval-aa", extra)):
            (run / d).mkdir(parents=True)
            (run / d / "report.json").write_text(json.dumps(rep))
        (run / "epoch_0003").mkdir()
        (run / "epoch_0003" / "meta.json").write_text("{}")
        (run / "epoch_0003" / "history.json").write_text(json.dumps([{"dur": 60.0}, {"dur": 90.0}, {"dur": 30.0}]))
        (run / "latest").write_text("epoch_0003")
    rows = mod.campaign_verdict(str(tmp_path), ["full_gradient"], "fgsm_rs_eqtime", "random_mask", [0],
                                eval_dir=["eval", "eval-aa"])
    aa = rows[0]["columns"]["autoattack"]
    assert aa["seeds"] == [0] and aa["difference"] == pytest.approx(0.10)
    assert rows[0]["clean"]["full_gradient"] == pytest.approx(0.7)  # the first folder's record wins
    only_main = mod.campaign_verdict(str(tmp_path), ["full_gradient"], "fgsm_rs_eqtime", "random_mask", [0])
    assert only_main[0]["columns"]["autoattack"]["verdict"] is None
    row = mod.run_summary(str(tmp_path), "full_gradient", 0, ["eval", "eval-aa"])
    assert row["clean"] == 0.7 and row["autoattack"] == 0.4 and row["cifar10c"] == 0.65
    assert row["epochs"] == 3 and row["train_seconds"] == pytest.approx(180.0)
    assert "refine_seconds" not in row  # no exact-LIME refinement between epochs
    assert mod.run_summary(str(tmp_path), "pgd", 0, ["eval"]) is None
    table = mod.render_runs([row], [("pgd", [0, 2])])
    assert "| `full_gradient` | 0 | 0.700 | 0.400 | 0.400 | 0.650 | 0.700, 0.600 | 0.500, 0.400 | 3, 3 min |" in table
    assert table.splitlines()[-1] == "| `pgd` | 0, 2 |" + " not run |" * 7  # requested rows without a run
    # the exact-LIME method refines between epochs, outside ``dur``: its time is shown apart
    hist = tmp_path / "random_mask-s0" / "epoch_0003" / "history.json"
    hist.write_text(json.dumps([{"dur": 60.0, "refine_dur": 120.0}, {"dur": 90.0, "refine_dur": 120.0},
                                {"dur": 30.0, "refine_dur": 0.0}]))
    refined = mod.run_summary(str(tmp_path), "random_mask", 0, ["eval"])
    assert refined["train_seconds"] == pytest.approx(180.0) and refined["refine_seconds"] == pytest.approx(240.0)
    assert mod.render_runs([refined]).endswith("| 3, 3 min + 4 min of refinement |")
    assert mod.main(["--runs", str(tmp_path), "--seeds", "0", "--methods", "full_gradient", "--eval-dir", "eval",
                     "eval-aa", "--table", "full_gradient", "pgd"]) == 0
    out = capsys.readouterr().out
    assert "| `full_gradient` | 0 | 0.700 |" in out and "| `pgd` | 0 | not run |" in out


def test_recipe_equal_time_epochs_follow_the_registered_formula(tmp_path, capsys):
    """E = round(15 x T_full_amortized / T_fgsm_rs) from the runs' summed per-epoch ``dur``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_verdict", BENCH / "recipe_verdict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(name, durs):
        folder = tmp_path / name / f"epoch_{len(durs):04d}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text("{}")  # what marks a checkpoint complete
        (folder / "history.json").write_text(json.dumps([{"epoch": i + 1, "dur": d} for i, d in enumerate(durs)]))
        (tmp_path / name / "latest").write_text(folder.name)

    run("fgsm_rs-s1", [70.0] * 15)            # 1,050 s
    run("full_amortized-s1", [160.0] * 15)    # 2,400 s: 15 x 2400 / 1050 = 34.29
    assert mod.equal_time_epochs(str(tmp_path), 1) == 34
    run("full_amortized-s2", [170.0] * 15)
    with pytest.raises(ValueError, match="no finished epoch"):
        mod.equal_time_epochs(str(tmp_path), 2)   # fgsm_rs-s2 has not run
    assert mod.main(["--runs", str(tmp_path), "--equal-time-epochs", "1"]) == 0
    assert capsys.readouterr().out.strip() == "34"
    run("fgsm_rs-s3", [70.0, 71.0])
    (tmp_path / "fgsm_rs-s3" / "epoch_0002" / "history.json").write_text(json.dumps([{"epoch": 1}]))
    with pytest.raises(ValueError, match="lacks a per-epoch 'dur'"):
        mod.training_seconds(str(tmp_path), "fgsm_rs-s3")


def test_recipe_figures_average_each_arm_over_its_seeds(tmp_path):
    """The figures' data: eps curve, per-corruption accuracy and occlusion (k = 0 is clean) per arm."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_verdict", BENCH / "recipe_verdict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def report(arm, seed, acc, aa_folder=False):
        rep = {"robustness": {"clean_accuracy": acc, "eps_curve": {"eps": [0.0, 8 / 255], "accuracy": [acc, acc / 2]}},
               "corruptions": {"per_corruption": {"fog": acc - 0.2, "jpeg_compression": acc - 0.01}},
               "occlusion": {"k": [1, 2], "clean_accuracy": acc, "random": [acc - 0.01, acc - 0.02],
                             "attributed": [acc - 0.05, acc - 0.1]}}
        folder = tmp_path / f"{arm}-s{seed}" / "eval"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(rep))

    report("fgsm_rs", 0, 0.70)
    report("fgsm_rs", 1, 0.74)
    report("random_mask", 0, 0.60)
    curves = mod.campaign_curves(str(tmp_path), ["fgsm_rs", "random_mask", "pgd"], [0, 1, 2])
    assert set(curves) == {"fgsm_rs", "random_mask"}  # pgd has no report: left out
    fr = curves["fgsm_rs"]
    assert fr["eps_seeds"] == 2 and fr["eps_accuracy"] == pytest.approx([0.72, 0.36])
    assert fr["per_corruption"] == pytest.approx({"fog": 0.52, "jpeg_compression": 0.71})
    assert fr["occlusion_k"] == [0, 1, 2]
    assert fr["occlusion_attributed"] == pytest.approx([0.72, 0.67, 0.62])
    assert curves["random_mask"]["occlusion_seeds"] == 1
    paths = mod.plot_campaign(curves, str(tmp_path / "img"))
    assert [os.path.basename(p) for p in paths] == ["recipe_accuracy_vs_eps.png", "recipe_cifar10c_per_corruption.png",
                                                    "recipe_occlusion.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)
    with pytest.raises(SystemExit):
        mod.main(["--runs", str(tmp_path), "--explain", "fgsm_rs-s0"])  # --explain without --plots


def test_penalty_precision_compares_finite_differences_with_the_exact_derivative(tmp_path):
    """benchmarks/penalty_precision.py: the numbers behind the fp32 probes of the penalty (docs/performance.md)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("penalty_precision", BENCH / "penalty_precision.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mask = mod.grid_mask(5, 8, cells=3, grid=4, random_state=0)
    assert mask.shape == (5, 3, 8, 8) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum(dim=(1, 2, 3)).tolist() == [3 * 4 * 3] * 5  # 3 cells of 2x2 pixels, 3 channels
    with pytest.raises(ValueError, match="cells"):
        mod.grid_mask(2, 8, cells=17)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 4))
    X, y = torch.rand(40, 3, 8, 8), torch.randint(0, 4, (40,))
    mask = mod.grid_mask(40, 8, random_state=1)
    res = mod.penalty_precision(model, X, y, mask, [1e-3, 0.5], batch=16)
    fine, coarse = res[1e-3]["fp32_vs_exact"], res[0.5]["fp32_vs_exact"]
    assert fine["pearson"] > 0.9999 and fine["penalty_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert coarse["median_rel_error"] > fine["median_rel_error"]  # curvature at a large step
    assert set(res[1e-3]) == {"bf16_vs_fp32", "fp32_vs_exact", "bf16_vs_exact"}
    with pytest.raises(ValueError, match="h must be > 0"):
        mod.penalty_precision(model, X, y, mask, [0.01, 0.0])
    with pytest.raises(ValueError, match="same length"):
        mod.penalty_precision(model, X, y[:3], mask)
    out = tmp_path / "pp.json"
    assert mod.main(["--n", "8", "--h", "0.01", "0.04", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["results"]) == {"0.01", "0.04"}
