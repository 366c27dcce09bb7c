"""The campaign scripts run end to end in --smoke mode (digits, seconds) and write their JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attribshield.runs import read_history

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_script(name, out, *extra, timeout=300):
    import os

    cmd = [sys.executable, str(BENCH / name), "--smoke", "--threads", "1", "--out", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                         env={**os.environ, **ENV})
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    with open(out / "summary.json") as f:
        return json.load(f), res.stdout


@pytest.mark.slow
def test_shortcut_experiment_smoke(tmp_path):
    out = tmp_path / "shortcut"
    summary, stdout = run_script("shortcut_experiment.py", out)
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
