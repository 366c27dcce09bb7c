"""benchmarks/results_page.py: the seed-matched differences and the loss-term shares it reports."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def page():
    spec = importlib.util.spec_from_file_location("results_page", REPO / "benchmarks" / "results_page.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_names(page):
    assert page._split("full-rw5-s12") == ("full-rw5", 12)
    assert page._split("full-rw5-sx") == ("full-rw5-sx", None)
    assert page._split("summary") == ("summary", None)


def _row(name, clean, pgd, cor):
    return (name, 5, clean, pgd, 0.0, 0.0, cor, 1.0, 0.0, False)


def test_matched_table_pairs_by_seed(page, capsys):
    rows = [_row("fgsm_rs-s0", 0.50, 0.20, 0.40), _row("fgsm_rs-s1", 0.60, 0.30, 0.50),
            _row("full-s0", 0.52, 0.25, 0.40), _row("full-s1", 0.59, 0.28, None), _row("full-s2", 0.9, 0.9, 0.9)]
    page.matched_table(rows, "fgsm_rs")
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| full |"))
    # seed 2 has no partner; clean diffs +2, -1; PGD +5, -2; corruption only on seed 0
    assert line == "| full | 0,1 | +0.5 (-1.0 to +2.0) | +1.5 (-2.0 to +5.0) | +0.0 |"


def test_loss_terms_table_recovers_the_explained_share(page, tmp_path, capsys):
    run = tmp_path / "full-s0"
    run.mkdir()
    cfg = {"method": "full", "criterion": "unstable", "top_k": 3, "reg_weight": 5.0, "mask_weight": 0.5}
    (run / "config.json").write_text(json.dumps({"config": cfg}))
    batches = []
    for share, adv, masked, pen in [(0.25, 2.0, 1.5, 0.2), (0.0, 1.8, None, None), (0.5, 1.6, 1.0, 0.4)]:
        b = {"adv_loss": adv, "train_batch_size": 128}
        extra = 0.0
        if masked is not None:
            b.update(masked_loss=masked, penalty_loss=pen)
            extra = share * (0.5 * masked + pen)
        b["train_loss"] = adv + extra
        batches.append(b)
    checkpoint = run / "epoch_0001"  # a run folder's newest checkpoint holds the history
    checkpoint.mkdir()
    (checkpoint / "meta.json").write_text(json.dumps({"format": 1}))
    (checkpoint / "history.json").write_text(json.dumps([{"batches": batches}]))
    page.loss_terms_table(str(tmp_path))
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| full-s0 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:5] == ["unstable", "3", "5", "0.5"]
    assert float(cells[8]) == pytest.approx(0.25, abs=1e-3)  # mean of 0.25, 0, 0.5
    part = [100 * 0.25 * 0.95 / 2.2375, 0.0, 100 * 0.5 * 0.9 / 2.05]
    assert float(cells[9]) == pytest.approx(sum(part) / 3, abs=0.01)


def test_strong_attacks_table_summarises_autoattack_over_seeds(page, tmp_path, capsys):
    for name, clean, pgd, aa in [("fgsm_rs-s0", 0.60, 0.32, 0.28), ("fgsm_rs-s1", 0.58, 0.33, 0.30),
                                 ("full-s0", 0.61, 0.35, 0.31), ("full-s1", 0.60, 0.32, 0.29),
                                 ("pgd-s0", 0.61, 0.34, None)]:
        (tmp_path / name / "eval_aa1000").mkdir(parents=True)
        rep = {"robustness": {"n_samples": 1000, "clean_accuracy": clean, "pgd_accuracy": pgd,
                              "autoattack_accuracy": aa},
               "bounds": {"violation_rate": 0.125, "bound": [0.0] * 8}}
        (tmp_path / name / "eval_aa1000" / "report.json").write_text(json.dumps(rep))
    page.strong_attacks_table(str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert "| pgd-s0 | 1000 | 0.610 | 0.340 | - | 0.125 | 8 |" in lines
    # mean (range) over the two seeds, then full minus fgsm_rs per seed: AA +3, -1
    assert "| full | 2 | 0.605 (0.600-0.610) | 0.335 (0.320-0.350) | 0.300 (0.290-0.310) |" in lines
    assert "| full | 0,1 | +1.5 (+1.0 to +2.0) | +1.0 (-1.0 to +3.0) | +1.0 (-1.0 to +3.0) |" in lines


def test_paired_autoattack_table_counts_discordant_points(page, tmp_path, capsys):
    records = {"fgsm_rs-s2": "1100110000", "full-s2": "1011111000", "full-s1": "1111111111",
               "pgd-s2": None}
    for name, bits in records.items():
        (tmp_path / name / "eval_aa1000").mkdir(parents=True)
        rob = {"n_samples": 10, "clean_accuracy": 1.0, "pgd_accuracy": 0.5, "autoattack_accuracy": 0.5}
        if bits:
            rob["per_sample"] = {"autoattack": bits}
        (tmp_path / name / "eval_aa1000" / "report.json").write_text(json.dumps({"robustness": rob}))
    page.paired_autoattack_table(str(tmp_path))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| full")]
    # full-s1 has no seed-1 reference and pgd-s2 no record: only full-s2 is paired
    # full-s2 only: points 2, 3, 6 (3); fgsm_rs-s2 only: point 1 (1); exact McNemar p = 2 * 5/16
    assert lines == ["| full-s2 | fgsm_rs-s2 | 10 | +20.0 | 3 / 1 | 0.625 |"]


def test_per_point_records_must_be_bits(page):
    assert page._bits("1001").tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="only '0' and '1'"):
        page._bits("10x1")
