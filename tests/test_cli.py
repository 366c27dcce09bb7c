"""The command line: train (resumable), evaluate, explain, and clear errors."""
import json

import numpy as np
import pytest
from PIL import Image

from attribshield.cli import main
from attribshield.presets import METHODS, TrainConfig, build_estimator, load_dataset
from attribshield.runs import load_run, read_history


@pytest.mark.parametrize("cmd", ["demo", "train", "evaluate", "explain"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: attribshield " + cmd in capsys.readouterr().out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = out / "run.toml"
    cfg.write_text('[train]\ndataset = "digits"\nmethod = "full"\nepochs = 1\ntrain_subset = 120\n'
                   'lime_samples = 8\nrefine_every = 1\nrefine_fraction = 0.5\neps = 0.1\nbatch_size = 32\n')
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_resumable_run(run_dir, capsys):
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["method"] == "full" and saved["n_classes"] == 10
    checkpoint = run_dir / "epoch_0001"
    for name in ["params.safetensors", "optimizer.pt", "history.json", "mask_cache.pt", "meta.json"]:
        assert (checkpoint / name).exists(), name
    assert (run_dir / "latest").read_text() == "epoch_0001"
    # resume: one more epoch on top of the finished one
    assert main(["train", "--config", str(run_dir / "run.toml"), "--epochs", "2", "--out", str(run_dir),
                 "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert len(read_history(run_dir)) == 2
    # nothing left to do
    assert main(["train", "--config", str(run_dir / "run.toml"), "--epochs", "2", "--out", str(run_dir),
                 "--no-progress"]) == 0
    assert "all 2 epochs are done" in capsys.readouterr().out
    # another configuration in the same folder is refused, before any training
    assert main(["train", "--config", str(run_dir / "run.toml"), "--epochs", "3", "--eps", "0.2",
                 "--out", str(run_dir), "--no-progress"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert len(read_history(run_dir)) == 2


def test_a_run_from_before_a_new_config_field_resumes(run_dir, tmp_path, capsys):
    """A field added to TrainConfig since the run started reads as its default, not as another configuration."""
    import shutil

    run = shutil.copytree(run_dir, tmp_path / "run")
    done = len(read_history(run))
    record = json.loads((run / "config.json").read_text())
    del record["config"]["penalty_h"], record["config"]["penalty_bf16"]  # as an older version stored it
    (run / "config.json").write_text(json.dumps(record))
    args = ["train", "--config", str(run / "run.toml"), "--out", str(run), "--no-progress"]
    assert main([*args, "--epochs", str(done + 1)]) == 0
    assert "resuming" in capsys.readouterr().out and len(read_history(run)) == done + 1
    record["config"]["penalty_h"] = 0.04  # a stored non-default value still counts
    (run / "config.json").write_text(json.dumps(record))
    assert main([*args, "--epochs", str(done + 2)]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_train_restart_starts_over(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--method", "fgsm_rs", "--train-subset", "64", "--eps", "0.1",
            "--batch-size", "32", "--out", str(tmp_path), "--no-progress"]
    assert main([*args, "--epochs", "2"]) == 0
    assert main([*args, "--epochs", "1", "--restart"]) == 0
    assert len(read_history(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_0001"]


def test_flat_skorch_checkpoint_folder_still_resumes(tmp_path, capsys):
    """A run folder in skorch's flat Checkpoint layout (params.pt, optimizer.pt, history.json)."""
    cfg = TrainConfig(dataset="digits", method="fgsm_rs", epochs=1, train_subset=64, eps=0.1, batch_size=32)
    X, y, n = load_dataset(cfg)
    clf = build_estimator(cfg, n_classes=n, verbose=0).fit(X, y)
    clf.save_params(f_params=tmp_path / "params.pt", f_optimizer=tmp_path / "optimizer.pt",
                    f_history=tmp_path / "history.json")
    (tmp_path / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "n_classes": n}))
    loaded, _, _ = load_run(tmp_path)
    np.testing.assert_array_equal(loaded.predict(X[:20]), clf.predict(X[:20]))
    assert main(["train", "--dataset", "digits", "--method", "fgsm_rs", "--train-subset", "64", "--eps", "0.1",
                 "--batch-size", "32", "--epochs", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out and len(read_history(tmp_path)) == 2


def test_evaluate_writes_report(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run_dir), "--n-test", "20", "--steps", "2", "--restarts", "1",
                 "--step-size", "0.05", "--square-queries", "20", "--stability", "4", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["robustness"]["settings"]["pgd_step_size"] == pytest.approx(0.05)
    acc = report["robustness"]["clean_accuracy"]
    assert len(report["stability"]["spearman"]) == 4
    assert 0.0 <= report["robustness"]["pgd_accuracy"] <= acc <= 1.0
    assert (out / "report.md").exists()
    assert '"clean_accuracy"' in capsys.readouterr().out


def test_explain_writes_overlay(run_dir, tmp_path, capsys):
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "overlay.png"
    assert main(["explain", str(img), "--model", str(run_dir), "--samples", "16", "--out", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 1000
    assert "predicted classes" in capsys.readouterr().out


def test_explain_with_the_cube_path(run_dir, tmp_path, capsys, monkeypatch):
    from attribshield.explainers import GradientExplainer, LimeExplainer

    def boom(*a, **k):
        raise AssertionError("--explainer cube must not run LIME")

    used = []
    orig = GradientExplainer.explain

    def spy(self, *a, **k):
        used.append((self.path, self.n_steps))
        return orig(self, *a, **k)

    monkeypatch.setattr(LimeExplainer, "explain", boom)
    monkeypatch.setattr(GradientExplainer, "explain", spy)
    img = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(1).random((16, 16)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "cube.png"
    assert main(["explain", str(img), "--model", str(run_dir), "--explainer", "cube", "--points", "4",
                 "--out", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 1000 and used == [("cube", 4)]
    assert main(["explain", str(img), "--model", str(run_dir), "--explainer", "cube", "--points", "0",
                 "--out", str(out)]) == 2
    assert "--points must be >= 1" in capsys.readouterr().err


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[train]\nmethod = "magic"\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "method must be one of" in capsys.readouterr().err
    cfg.write_text('[train]\nlearning_rate = 0.1\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "unknown config keys" in capsys.readouterr().err


def test_criterion_flag_reaches_the_masker_and_bad_values_fail_early(tmp_path, capsys):
    from attribshield.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--criterion", "unstable",
                                      "--top-k", "6"])
    cfg = _config_from_args(args)
    clf = build_estimator(cfg)
    assert (clf.masker.criterion, clf.masker.top_k) == ("unstable", 6)
    pen = build_estimator(TrainConfig(method="full_gradient", penalty_h=0.04, penalty_bf16=True,
                                     bf16=True)).regularizer
    assert (pen.h, pen.autocast) == (0.04, True)  # the flags reach the full-dose penalty
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", str(tmp_path), "--criterion", "spurious"])
    assert "invalid choice" in capsys.readouterr().err
    cfg = tmp_path / "bad.toml"
    for text, msg in [('criterion = "spurious"', "criterion must be one of"), ("top_k = 0", "top_k must be >= 1"),
                      ("penalty_h = 0.0", "penalty_h must be > 0"),
                      ("penalty_bf16 = true", "needs bf16=True")]:
        cfg.write_text("[train]\n" + text + "\n")
        assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
        assert msg in capsys.readouterr().err


def test_evaluate_rejects_a_folder_without_run(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["clean", "fgsm_rs", "pgd", "trades", "full", "no_mask", "no_reg", "no_loop"])
def test_presets_build_the_right_components(method):
    clf = build_estimator(TrainConfig(method=method))
    assert (clf.attacker is None) == (method == "clean")
    assert (clf.masker is None) == (method in ("clean", "fgsm_rs", "pgd", "trades"))
    assert hasattr(clf.attacker, "objective") == (method == "trades")
    if clf.masker is not None:  # explaining uses a conv-BN-folded copy of the model (1.10x)
        assert clf.explainer.fuse_bn
    if method == "no_mask":
        assert clf.mask_weight == 0
    if method == "no_reg":
        assert clf.regularizer is None
    if method in ("pgd", "trades"):
        assert clf.attacker.steps == 7
    if method == "trades":
        assert clf.attacker.beta == 6.0


def test_cifar100_pipeline_on_written_files(tmp_path, capsys):
    from attribshield.testing import write_cifar100

    write_cifar100(tmp_path / "data", n_train=24, n_test=8)
    out = tmp_path / "run100"
    assert main(["train", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"), "--model", "smallcnn",
                 "--method", "fgsm_rs", "--epochs", "1", "--batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["n_classes"] == 100  # a subset without every class still gets a 100-way head
    assert main(["evaluate", "--model", str(out), "--n-test", "8", "--steps", "1", "--restarts", "1",
                 "--square-queries", "0", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["robustness"]["n_samples"] == 8
    assert report["robustness"]["square_accuracy"] is None  # --square-queries 0 skips the Square attack


def test_the_config_example_in_the_cli_docs_is_valid(tmp_path):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "run.toml").write_text(block)
    cfg = TrainConfig.from_toml(str(tmp_path / "run.toml")).validate()
    import tomllib

    written = tomllib.loads(block)["train"]
    assert written and all(getattr(cfg, k) == v for k, v in written.items())
    assert cfg.method in METHODS


def test_campaign_script_runs_on_written_cifar100(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from attribshield.testing import write_cifar100

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar_experiments.py"
    cmd = [sys.executable, str(script), "--dataset", "cifar100", "--data-root", str(tmp_path / "data"),
           "--out", str(tmp_path / "runs"), "--methods", "fgsm_rs", "--epochs", "1", "--n-test", "4",
           "--square-queries", "2", "--threads", "1", "--train-flags", "--batch-size 8 --train-subset 16"]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "no CIFAR-100 in" in missing.stderr  # before any training
    write_cifar100(tmp_path / "data", n_train=16, n_test=4)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert [(r["run"], r["config"]["dataset"], r["epochs"]) for r in summary] == [("fgsm_rs", "cifar100", 1)]
    assert "| corruptions mean |" in (tmp_path / "runs" / "summary.md").read_text()


def test_the_flag_table_in_cli_md_states_the_config_defaults():
    """docs/cli.md lists each flag with its default: every plain numeric default there equals
    TrainConfig's (the table is written by hand, so a changed default must change it too)."""
    import dataclasses
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    checked = 0
    for flag, value in re.findall(r"^\| `--([a-z0-9-]+)[^|]*\| ([0-9.e-]+) \|", text, flags=re.M):
        name = flag.replace("-", "_")
        if name in defaults and isinstance(defaults[name], (int, float)) and not isinstance(defaults[name], bool):
            assert float(value) == pytest.approx(float(defaults[name])), (flag, value, defaults[name])
            checked += 1
    assert checked >= 15  # the table's numeric rows were found
