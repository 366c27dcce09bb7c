"""The standard-recipe campaign's pre-registered verdict, from the runs' evaluation reports.

For every method (default ``full_amortized`` and ``full_gradient``) and column, the rule of
docs/results.md ("Pre-registered verdict"), computed by
:func:`attribshield.evaluation.stats.paired_verdict`: against the equal-wall-time FGSM-RS row
(``fgsm_rs_eqtime``), the method WINS a column if it is ahead on every seed with a pooled exact
McNemar p < 0.05 and ahead of ``random_mask`` too; it LOSES if it is behind on every seed with
p < 0.05; otherwise it is LEVEL. Clean accuracy is reported beside each, not judged.

The columns and the per-image records they pair (each run's ``<run>/<eval>/report.json``, as
``attribshield evaluate --autoattack --cifar10c`` writes it):

* ``autoattack``: the AutoAttack record (``robustness.per_sample.autoattack``);
* ``cifar10c``: every (corruption, severity, image) outcome in one record
  (:func:`attribshield.evaluation.corruption_records`);
* ``occlusion_random`` / ``occlusion_attributed``: the records of every ``k`` the report has
  (k = 1..4 by default), one after the other: one column per mode, every k judged together.

A run, section or record that is missing leaves its column ``not run`` and names what is
missing; a column is judged only on seeds that every arm has.

    python benchmarks/recipe_verdict.py --runs runs/recipe [--seeds 0 1 2] [--out verdict.json]
    python benchmarks/recipe_verdict.py --runs runs/recipe --eval-dir eval eval-aa \
        --table fgsm_rs fgsm_rs_eqtime full_amortized full_gradient random_mask   # + the main table
    python benchmarks/recipe_verdict.py --runs runs/recipe --equal-time-epochs 1   # E for seed 1's equal-time row
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attribshield._utils import from_bits  # noqa: E402
from attribshield.evaluation import corruption_records  # noqa: E402
from attribshield.evaluation.stats import paired_verdict  # noqa: E402
from attribshield.runs import read_history  # noqa: E402

COLUMNS = ("autoattack", "cifar10c", "occlusion_random", "occlusion_attributed")


def records(report: dict) -> dict:
    """``{column: bool array}`` of the columns a report has, plus ``clean``."""
    out = {}
    rob = report.get("robustness") or {}
    per = rob.get("per_sample") or {}
    if "clean" in per:
        out["clean"] = from_bits(per["clean"])
    if "autoattack" in per:
        out["autoattack"] = from_bits(per["autoattack"])
    if report.get("corruptions") and report["corruptions"].get("per_sample"):
        out["cifar10c"] = corruption_records(report["corruptions"])
    occ = report.get("occlusion") or {}
    for mode in ("random", "attributed"):
        recs = (occ.get("per_sample") or {}).get(mode)
        if recs:
            out[f"occlusion_{mode}"] = np.concatenate([from_bits(r) for r in recs])
    return out


def _eval_dirs(eval_dir) -> list:
    return [eval_dir] if isinstance(eval_dir, str) else list(eval_dir)


def load_reports(runs: str, arm: str, seed: int, eval_dir) -> list:
    """The evaluation reports of one run, from each folder of ``eval_dir`` (a name or a list) that has one."""
    out = []
    for d in _eval_dirs(eval_dir):
        path = os.path.join(runs, f"{arm}-s{seed}", d, "report.json")
        if os.path.exists(path):
            with open(path) as f:
                out.append(json.load(f))
    return out


def load_records(runs: str, arm: str, seed: int, eval_dir) -> dict | None:
    """The run's records merged over its evaluation folders (the first folder that has a column wins)."""
    reports = load_reports(runs, arm, seed, eval_dir)
    if not reports:
        return None
    merged = {}
    for rep in reports:
        for col, rec in records(rep).items():
            merged.setdefault(col, rec)
    return merged


def run_summary(runs: str, arm: str, seed: int, eval_dir) -> dict | None:
    """One row of the campaign's main table: the accuracies of a run's reports and its training time."""
    reports = load_reports(runs, arm, seed, eval_dir)
    if not reports:
        return None
    row = {"arm": arm, "seed": seed}
    for rep in reports:
        rob = rep.get("robustness") or {}
        for key, name in (("clean_accuracy", "clean"), ("pgd_accuracy", "pgd"), ("autoattack_accuracy", "autoattack"),
                          ("square_accuracy", "square")):
            if rob.get(key) is not None:
                row.setdefault(name, float(rob[key]))
        corr = rep.get("corruptions") or {}
        if corr.get("mean") is not None:
            row.setdefault("cifar10c", float(corr["mean"]))
        occ = rep.get("occlusion") or {}
        for mode in ("random", "attributed"):
            if occ.get(mode):
                row.setdefault(f"occlusion_{mode}", [float(v) for v in occ[mode]])
    epochs = read_history(os.path.join(runs, f"{arm}-s{seed}"))
    if epochs:
        row["epochs"] = len(epochs)
        row["train_seconds"] = float(sum(e.get("dur", 0.0) for e in epochs))
        # exact-LIME refinement runs between epochs, outside ``dur`` (attribshield.refinement)
        refine = float(sum(e.get("refine_dur", 0.0) for e in epochs))
        if refine > 0:
            row["refine_seconds"] = refine
    return row


def training_seconds(runs: str, run: str) -> float:
    """The summed per-epoch ``dur`` of a finished run's last checkpoint (``<runs>/<run>/latest``)."""
    epochs = read_history(os.path.join(runs, run))
    if not epochs:
        raise ValueError(f"{os.path.join(runs, run)} has no finished epoch (no 'latest' checkpoint with a history)")
    if not epochs or any("dur" not in e for e in epochs):
        raise ValueError(f"{os.path.join(runs, run)}'s last history.json lacks a per-epoch 'dur'")
    return float(sum(e["dur"] for e in epochs))


def equal_time_epochs(runs: str, seed: int, method: str = "full_amortized", base: str = "fgsm_rs",
                      epochs: int = 15) -> int:
    """The registered equal-time row's epoch count for one seed: ``round(epochs * T_method / T_base)``.

    ``T`` is a run's summed per-epoch ``dur`` (docs/results.md, "Arms"); both runs trained
    ``epochs`` epochs with the same seed.
    """
    t_method = training_seconds(runs, f"{method}-s{seed}")
    t_base = training_seconds(runs, f"{base}-s{seed}")
    return int(round(epochs * t_method / t_base))


def render_runs(rows, missing=()) -> str:
    """The main table: one line per run, ``-`` where a report lacks a column.

    ``missing`` is a sequence of ``(arm, seeds)`` with no evaluated run: each gets one
    ``not run`` line after the runs, so the table names every requested row.
    """
    head = ("| arm | seed | clean | PGD-20 | AutoAttack | CIFAR-10-C mean | occlusion (random), k = 1..4 "
            "| occlusion (attributed), k = 1..4 | epochs, training time |")
    lines = [head, "|---" * 9 + "|"]
    f = lambda row, k: f"{row[k]:.3f}" if k in row else "-"  # noqa: E731
    fl = lambda row, k: ", ".join(f"{v:.3f}" for v in row[k]) if k in row else "-"  # noqa: E731
    for row in rows:
        t = (f"{row['epochs']}, {row['train_seconds'] / 60:.0f} min" if "train_seconds" in row else "-")
        if "refine_seconds" in row:
            t += f" + {row['refine_seconds'] / 60:.0f} min of refinement"
        occ = f"{fl(row, 'occlusion_random')} | {fl(row, 'occlusion_attributed')}"
        lines.append(f"| `{row['arm']}` | {row['seed']} | {f(row, 'clean')} | {f(row, 'pgd')} | {f(row, 'autoattack')} "
                     f"| {f(row, 'cifar10c')} | {occ} | {t} |")
    for arm, seeds in missing:
        lines.append(f"| `{arm}` | {', '.join(str(sd) for sd in seeds)} |" + " not run |" * 7)
    return "\n".join(lines)


def campaign_curves(runs: str, arms, seeds, eval_dir="eval") -> dict:
    """Per arm, its curves averaged over the seeds that have them (the figures' data).

    ``{arm: {"eps": [...], "eps_accuracy": [...], "eps_seeds": n, "per_corruption": {name: acc},
    "corruption_seeds": n, "occlusion_k": [0, 1, ...], "occlusion_random": [...],
    "occlusion_attributed": [...], "occlusion_seeds": n}}``; ``k = 0`` is the clean accuracy
    of the occlusion evaluation. An arm without any of the three is left out.
    """
    out = {}
    for arm in arms:
        eps, eps_acc, cor, occ = None, [], [], {"random": [], "attributed": []}
        occ_k = None
        for seed in seeds:
            reports = load_reports(runs, arm, seed, eval_dir)
            curve = next((r["robustness"]["eps_curve"] for r in reports
                          if (r.get("robustness") or {}).get("eps_curve")), None)
            if curve is not None:
                eps = [float(e) for e in curve["eps"]]
                eps_acc.append([float(a) for a in curve["accuracy"]])
            pc = next((r["corruptions"]["per_corruption"] for r in reports
                       if (r.get("corruptions") or {}).get("per_corruption")), None)
            if pc is not None:
                cor.append(pc)
            o = next((r["occlusion"] for r in reports if (r.get("occlusion") or {}).get("random")), None)
            if o is not None:
                occ_k = [0] + [int(k) for k in o["k"]]
                for mode in occ:
                    occ[mode].append([float(o["clean_accuracy"])] + [float(v) for v in o[mode]])
        row = {}
        if eps_acc:
            row.update(eps=eps, eps_accuracy=np.mean(eps_acc, axis=0).tolist(), eps_seeds=len(eps_acc))
        if cor:
            row.update(per_corruption={n: float(np.mean([c[n] for c in cor])) for n in cor[0]},
                       corruption_seeds=len(cor))
        if occ["random"]:
            row.update(occlusion_k=occ_k, occlusion_seeds=len(occ["random"]),
                       **{f"occlusion_{m}": np.mean(v, axis=0).tolist() for m, v in occ.items()})
        if row:
            out[arm] = row
    return out


def _save(fig, out: str, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_campaign(curves: dict, out: str, title: str = "CIFAR-10, SmallCNN, standard recipe") -> list:
    """The campaign's figures from :func:`campaign_curves`: accuracy vs eps, per-corruption accuracy
    and the occlusion curves; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    colors = plt.get_cmap("tab10").colors
    color = {arm: colors[i % 10] for i, arm in enumerate(curves)}
    label = lambda arm, n: f"{arm} ({n} seeds)" if n > 1 else arm  # noqa: E731
    paths = []
    have = [a for a, c in curves.items() if "eps" in c]
    if have:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for arm in have:
            c = curves[arm]
            ax.plot(np.array(c["eps"]) * 255, c["eps_accuracy"], marker="o", color=color[arm],
                    label=label(arm, c["eps_seeds"]))
        ax.set(xlabel="Linf eps (x 1/255)", ylabel="PGD-20 accuracy")
        ax.set_title(f"{title}: accuracy vs eps (first 1,000 test images)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out, "recipe_accuracy_vs_eps.png"))
    have = [a for a, c in curves.items() if "per_corruption" in c]
    if have:
        names = list(curves[have[0]]["per_corruption"])
        fig, ax = plt.subplots(figsize=(11, 4.2))
        w = 0.8 / len(have)
        for i, arm in enumerate(have):
            c = curves[arm]
            ax.bar(np.arange(len(names)) + i * w, [c["per_corruption"][n] for n in names], w, color=color[arm],
                   label=label(arm, c["corruption_seeds"]))
        ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (mean over 5 severities)")
        ax.set_title(f"{title}: CIFAR-10-C", fontsize=9, pad=28)
        ax.legend(fontsize=7, ncol=len(have), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
        paths.append(_save(fig, out, "recipe_cifar10c_per_corruption.png"))
    have = [a for a, c in curves.items() if "occlusion_k" in c]
    if have:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, mode in zip(axes, ("random", "attributed")):
            for arm in have:
                c = curves[arm]
                ax.plot(c["occlusion_k"], c[f"occlusion_{mode}"], marker="o", color=color[arm],
                        label=label(arm, c["occlusion_seeds"]))
            ax.set(xlabel="k of 16 grid cells filled", title=f"{mode} cells", xticks=c["occlusion_k"])
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy")
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{title}: occlusion (first 1,000 test images)", fontsize=9)
        paths.append(_save(fig, out, "recipe_occlusion.png"))
    return paths


def campaign_verdict(runs, methods, baseline, control, seeds, eval_dir="eval", alpha=0.05):
    """One row per method: for each column the verdict (or why there is none) and clean accuracies.

    ``eval_dir``: each run's evaluation folder, or a list of them whose records are merged.
    """
    arms = [*methods, baseline, control]
    recs = {(a, s): load_records(runs, a, s, eval_dir) for a in arms for s in seeds}
    rows = []
    for method in methods:
        row = {"method": method, "baseline": baseline, "control": control, "columns": {}}
        for col in COLUMNS:
            have = [s for s in seeds if all(recs[(a, s)] is not None and col in recs[(a, s)]
                                            for a in (method, baseline, control))]
            missing = [f"{a}-s{s}" for s in seeds for a in (method, baseline, control)
                       if recs[(a, s)] is None or col not in recs[(a, s)]]
            if not have:
                row["columns"][col] = {"verdict": None, "missing": missing}
                continue
            res = paired_verdict([recs[(method, s)][col] for s in have], [recs[(baseline, s)][col] for s in have],
                                 [recs[(control, s)][col] for s in have], alpha=alpha)
            row["columns"][col] = {**res, "seeds": have, "missing": missing}
        clean = {}
        for a in (method, baseline):
            vals = [float(recs[(a, s)]["clean"].mean()) for s in seeds
                    if recs[(a, s)] is not None and "clean" in recs[(a, s)]]
            clean[a] = float(np.mean(vals)) if vals else None
        row["clean"] = clean
        rows.append(row)
    return rows


def render(rows, seeds) -> str:
    head = "| method vs " + rows[0]["baseline"] + " | " + " | ".join(COLUMNS) + " | clean (method / baseline) |"
    lines = [head, "|---" * (len(COLUMNS) + 2) + "|"]
    for row in rows:
        cells = []
        for col in COLUMNS:
            c = row["columns"][col]
            if c["verdict"] is None:
                cells.append("not run")
                continue
            detail = (f"({100 * c['difference']:+.1f} pts, p={c['pvalue']:.3g}; "
                      f"vs {row['control']} {100 * c['control_difference']:+.1f}")
            if len(c["seeds"]) == len(seeds):
                cells.append(f"**{c['verdict']}** {detail})")
            else:  # the rule judges every registered seed: a partial result is not a verdict
                cells.append(f"no verdict; {c['verdict'].lower()} on seeds {c['seeds']} only {detail})")
        cl = row["clean"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        cells.append(f"{fmt(cl[row['method']])} / {fmt(cl[row['baseline']])}")
        lines.append(f"| `{row['method']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "recipe"), help="folder of <arm>-s<seed> runs")
    p.add_argument("--methods", nargs="+", default=["full_amortized", "full_gradient"])
    p.add_argument("--baseline", default="fgsm_rs_eqtime", help="the equal-wall-time FGSM-RS arm's folder prefix")
    p.add_argument("--control", default="random_mask")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-dir", nargs="+", default=["eval"],
                   help="each run's evaluation folders, merged; the first that has a column wins (default: eval)")
    p.add_argument("--table", nargs="+", default=None, metavar="ARM",
                   help="also print the main table of these arms' runs (clean, PGD-20, AutoAttack, CIFAR-10-C, "
                        "occlusion, training time)")
    p.add_argument("--equal-time-epochs", type=int, default=None, metavar="SEED",
                   help="only print E = round(15 x T_full_amortized / T_fgsm_rs) for this seed's finished runs "
                        "(the equal-time row's epoch count) and exit")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="also draw the --table arms' figures here (accuracy vs eps, per-corruption accuracy, "
                        "occlusion curves; seeds averaged)")
    p.add_argument("--explain", nargs="+", default=None, metavar="RUN",
                   help="with --plots: also plot exact LIME of the same 8 test images under these runs' models "
                        "(for example fgsm_rs-s0 full_amortized-s0: before and after refinement)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.explain and not args.plots:
        p.error("--explain needs --plots DIR (the folder its figure goes to)")
    if args.equal_time_epochs is not None:
        print(equal_time_epochs(args.runs, args.equal_time_epochs))
        return 0
    rows = campaign_verdict(args.runs, args.methods, args.baseline, args.control, args.seeds, args.eval_dir,
                            args.alpha)
    print(render(rows, args.seeds))
    if args.table:
        summaries = [r for a in args.table for sd in args.seeds
                     if (r := run_summary(args.runs, a, sd, args.eval_dir)) is not None]
        have = {(r["arm"], r["seed"]) for r in summaries}
        missing = [(a, gone) for a in args.table if (gone := [sd for sd in args.seeds if (a, sd) not in have])]
        print()
        print(render_runs(summaries, missing))
    if args.plots:
        for path in plot_campaign(campaign_curves(args.runs, args.table or [args.baseline, *args.methods,
                                                                              args.control],
                                                  args.seeds, args.eval_dir), args.plots):
            print(f"wrote {path}")
        if args.explain:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from results_page import explanations

            print(f"wrote {explanations(args.runs, args.explain, args.plots, filename='recipe_explanations.png')}")
    for row in rows:
        gaps = {col: c["missing"] for col, c in row["columns"].items() if c["missing"]}
        if gaps:
            print(f"  {row['method']}: missing runs or records: "
                  + "; ".join(f"{col}: {', '.join(m)}" for col, m in gaps.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
