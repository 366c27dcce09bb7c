"""Render the CIFAR-10 campaign's tables (Markdown) from the run folders under runs/cifar10/.

    python benchmarks/results_page.py [--runs runs/cifar10] > /tmp/tables.md

Reads each run folder's history (its newest checkpoint) and ``<run>/eval/report.json``; prints the main table
(accuracy under each attack, CIFAR-10-C mean, median epoch time), the mean and spread over
seeds of each run name (``<name>-s<seed>``), each run name's seed-matched difference from a
reference run (``--reference``, default ``fgsm_rs``), what the refinement's loss terms weigh
in the last epoch, the AutoAttack / lower-bound table of the runs that
have an ``eval_aa1000/report.json`` (``attribshield evaluate --autoattack --bounds --n-test 1000``)
and the per-corruption table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attribshield.evaluation.stats import mcnemar_exact, seed_matched_differences  # noqa: E402
from attribshield.runs import read_history  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "cifar10"))
    p.add_argument("--plots", default=None, help="folder for the comparison PNGs (accuracy vs eps, corruptions)")
    p.add_argument("--explain", nargs="*", default=[], help="runs whose explanations of 8 test images to plot")
    p.add_argument("--reference", default="fgsm_rs",
                   help="run name the seed-matched difference table compares against (default: fgsm_rs)")
    args = p.parse_args()
    rows, cor, curves = [], {}, {}
    for name in sorted(os.listdir(args.runs)):
        rep_path = os.path.join(args.runs, name, "eval", "report.json")
        if not os.path.exists(rep_path):
            continue
        with open(rep_path) as f:
            rep = json.load(f)
        hist = read_history(os.path.join(args.runs, name))
        epoch_s = [h["dur"] + h.get("refine_dur", 0.0) for h in hist]
        rob = rep["robustness"]
        rows.append((name, len(hist), rob["clean_accuracy"], rob["pgd_accuracy"], rob["square_accuracy"],
                     rob["robust_accuracy"], (rep.get("corruptions") or {}).get("mean"),
                     statistics.median(epoch_s), sum(h.get("refine_dur", 0.0) for h in hist) / len(hist),
                     rob["gradient_masking"].get("suspected")))
        if rep.get("corruptions"):
            cor[name] = rep["corruptions"]["per_corruption"]
        curves[name] = rob["eps_curve"]
    print("| run | epochs | clean | PGD-20 (2 restarts) | Square (300 q) | worst case | CIFAR-10-C mean | "
          "median epoch (s) | of which explaining (s) | masking suspected |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = "-" if r[6] is None else f"{r[6]:.3f}"
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {c} | {r[7]:.0f} | "
              f"{r[8]:.0f} | {'yes' if r[9] else 'no'} |")
    seeds_table(rows)
    matched_table(rows, args.reference)
    strong_attacks_table(args.runs, reference=args.reference)
    stability_table(args.runs)
    loss_terms_table(args.runs)
    if cor:
        names = list(next(iter(cor.values())).keys())
        print()
        print("| corruption | " + " | ".join(cor) + " |")
        print("|---|" + "---|" * len(cor))
        for n in names:
            print(f"| {n} | " + " | ".join(f"{cor[r][n]:.3f}" for r in cor) + " |")
    if args.plots:
        plot(curves, cor, args.plots)
        if args.explain:
            explanations(args.runs, args.explain, args.plots)


MAIN_COLUMNS = ((2, "clean"), (3, "PGD-20"), (6, "CIFAR-10-C mean"))


def seeds_table(rows, columns=MAIN_COLUMNS):
    """Mean and spread (min-max) over the seeds of each run name with more than one seed;
    ``columns`` are ``(index in a row, header)`` pairs."""
    groups = {}
    for r in rows:
        base, seed = _split(r[0])
        if seed is not None:
            groups.setdefault(base, []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return
    print()
    print("| run | seeds | " + " | ".join(h for _, h in columns) + " |")
    print("|---|---|" + "---|" * len(columns))

    def cell(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        return f"{statistics.mean(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"

    for base, rs in sorted(groups.items()):
        print(f"| {base} | {len(rs)} | " + " | ".join(cell([r[i] for r in rs]) for i, _ in columns) + " |")


def _split(name):
    """``("full-rw5", 1)`` for ``full-rw5-s1``; ``(name, None)`` without a seed suffix."""
    base, _, seed = name.rpartition("-s")
    return (base, int(seed)) if base and seed.isdigit() else (name, None)


def matched_table(rows, reference, columns=MAIN_COLUMNS):
    """Each run name minus ``reference`` on the same training seeds: mean (min to max) of the
    per-seed differences in each of ``columns`` (``(index in a row, header)``), in points. The
    runs of one folder share their test images, so the differences are paired in the images too."""
    by = {}
    for r in rows:
        base, seed = _split(r[0])
        if seed is not None:
            by.setdefault(base, {})[seed] = r
    ref = by.get(reference)
    if not ref:
        return
    print()
    print(f"| run | seeds matched with {reference} | " + " | ".join(h for _, h in columns) + " |")
    print("|---|---|" + "---|" * len(columns))

    def cell(seeds, i):
        d = seed_matched_differences({s: r[i] for s, r in seeds.items()}, {s: r[i] for s, r in ref.items()},
                                     scale=100)
        if len(d["differences"]) < 2:
            return f"{d['mean']:+.1f}" if d["differences"] else "-"
        return f"{d['mean']:+.1f} ({d['min']:+.1f} to {d['max']:+.1f})"

    for base, seeds in sorted(by.items()):
        common = sorted(set(seeds) & set(ref))
        if base == reference or not common:
            continue
        print(f"| {base} | {','.join(map(str, common))} | " + " | ".join(cell(seeds, i) for i, _ in columns) + " |")


def _table(headers, lines):
    """Print a Markdown table (after a blank line) of pre-formatted ``lines``; nothing without lines."""
    if lines:
        print()
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        print("\n".join(lines))


def _reports(runs_dir, folder):
    """``(run name, report dict)`` for every run with ``<run>/<folder>/report.json``, sorted."""
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, folder, "report.json")
        if os.path.exists(path):
            with open(path) as f:
                yield name, json.load(f)


def loss_terms_table(runs_dir):
    """What the refinement terms weigh in the last epoch's training loss, for the runs that log them.

    A batch's loss is ``adv + share * (mask_weight * masked + penalty)``, the masked-input loss
    and the penalty being averaged over the batch's explained rows (``train_step``), so the
    explained share of each batch is recovered from the logged terms; it counts every mask the
    run trains on (stale ones too, for ``no_loop`` and kept masks)."""
    rows = []
    for name in sorted(os.listdir(runs_dir)):
        cfg_path = os.path.join(runs_dir, name, "config.json")
        hist = read_history(os.path.join(runs_dir, name)) if os.path.exists(cfg_path) else []
        if not hist:
            continue
        batches = hist[-1]["batches"]
        with open(cfg_path) as f:
            cfg = json.load(f)["config"]
        if not any("penalty_loss" in b or "masked_loss" in b for b in batches):
            continue
        mask_weight = 0.0 if cfg["method"] == "no_mask" else cfg["mask_weight"]
        share, part = [], []
        for b in batches:
            extra = b["train_loss"] - b["adv_loss"]
            per_row = mask_weight * b.get("masked_loss", 0.0) + b.get("penalty_loss", 0.0)
            share.append(extra / per_row if per_row > 0 else 0.0)
            part.append(100 * extra / b["train_loss"])

        def mean(key):
            vals = [b[key] for b in batches if key in b]
            return statistics.mean(vals) if vals else None

        rows.append((name, cfg.get("criterion", "-"), cfg.get("top_k"), cfg["reg_weight"], mask_weight,
                     mean("adv_loss"), mean("masked_loss"), mean("penalty_loss"),
                     statistics.mean(share), statistics.mean(part)))
    if not rows:
        return
    print()
    print("| run | criterion | top_k | reg_weight | mask_weight | adversarial CE | masked CE | penalty | "
          "explained share of a batch | refinement terms, % of loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:g} | {r[4]:g} | {f(r[5])} | {f(r[6])} | {f(r[7])} | "
              f"{r[8]:.3f} | {r[9]:.2f} |")


STRONG_COLUMNS = ((1, "clean"), (2, "PGD-20"), (3, "AutoAttack"))


def strong_attacks_table(runs_dir, folder="eval_aa1000", reference="fgsm_rs"):
    """AutoAttack and the attribution-aware lower bound, for runs evaluated on 1,000 images;
    then, where a run name has several seeds, their mean and spread and the seed-matched
    differences from ``reference`` (the same 1,000 images for every run)."""
    out, rows = [], []
    for name, rep in _reports(runs_dir, folder):
        rob, bd = rep["robustness"], rep.get("bounds") or {}
        aa, vr = rob.get("autoattack_accuracy"), bd.get("violation_rate")
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        out.append(f"| {name} | {rob['n_samples']} | {rob['clean_accuracy']:.3f} | {rob['pgd_accuracy']:.3f} | "
                   f"{fmt(aa)} | {fmt(vr)} | {len(bd.get('bound', []))} |")
        rows.append((name, rob["clean_accuracy"], rob["pgd_accuracy"], aa))
    if out:
        _table(["run", "images", "clean", "PGD-20", "AutoAttack (standard)", "bound violation rate",
                "bound points"], out)
        seeds_table(rows, STRONG_COLUMNS)
        matched_table(rows, reference, STRONG_COLUMNS)
        paired_autoattack_table(runs_dir, reference, folder)


def paired_autoattack_table(runs_dir, reference="fgsm_rs", folder="eval_aa1000"):
    """AutoAttack run against its seed-matched ``reference`` point by point, where both reports
    carry the per-point record (``per_sample``, written since session 5): the difference in
    points and an exact McNemar p-value on the images where the two disagree
    (:func:`attribshield.evaluation.stats.mcnemar_exact`)."""
    per = {}
    for name, rep in _reports(runs_dir, folder):
        bits = (rep["robustness"].get("per_sample") or {}).get("autoattack")
        if bits:
            per[name] = bits
    out = []
    for name, bits in per.items():
        base, seed = _split(name)
        ref = per.get(f"{reference}-s{seed}")
        if base == reference or seed is None or ref is None or len(ref) != len(bits):
            continue
        test = mcnemar_exact(_bits(bits), _bits(ref))
        a_only, b_only = test["n10"], test["n01"]
        out.append(f"| {name} | {reference}-s{seed} | {len(bits)} | {100 * (a_only - b_only) / len(bits):+.1f} | "
                   f"{a_only} / {b_only} | {test['pvalue']:.3f} |")
    _table(["run", "against", "images", "AutoAttack diff (points)",
            "only this run / only the reference robust", "McNemar p"], out)


def _bits(record):
    """A report's per-point record (``"1"``: robust, ``"0"``: not, one character a point) as bools."""
    if not set(record) <= {"0", "1"}:
        raise ValueError(f"a per-point record holds only '0' and '1', got {sorted(set(record) - {'0', '1'})}")
    return np.array([c == "1" for c in record], dtype=bool)


def stability_table(runs_dir, folder="eval_stab"):
    """Attribution stability under PGD and, where measured, the lower bound's violation rate
    (``attribshield evaluate --n-test 100 --stability 100 [--bounds]``)."""
    out = []
    for name, rep in _reports(runs_dir, folder):
        stab, bd = rep.get("stability") or {}, rep.get("bounds") or {}
        if not stab:
            continue
        if bd.get("bound"):
            # medians over the correctly classified points (margin > 0), as the violation rate is;
            # distortions are "inf" where no adversarial example was found within the radius
            ok = [i for i, m in enumerate(bd["margin"]) if float(m) > 0]
            bnd = [float(bd["bound"][i]) for i in ok]
            dist = [float(bd["distortion"][i]) for i in ok]
            bcells = (f"{bd['violation_rate']:.3f} | {len(ok)} | {statistics.median(bnd):.4f} | "
                      f"{statistics.median(dist):.4f}")
        else:
            bcells = "- | - | - | -"
        out.append(f"| {name} | {stab['mean_topk_intersection']:.3f} | {stab['mean_spearman']:.3f} | {bcells} |")
    _table(["run", "top-3 overlap", "Spearman", "bound violation rate", "correct points (of 64)", "median bound",
            "median distortion found"], out)


def explanations(runs_dir, names, out, n=8, filename="cifar10_explanations.png"):
    """LIME (1,000 foldover samples, SLIC-25) of the same test images under each run's model; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from attribshield.explainers import LimeExplainer, SlicSegmenter
    from attribshield.presets import load_dataset
    from attribshield.runs import load_run

    models = {name: load_run(os.path.join(runs_dir, name)) for name in names}
    cfg = next(iter(models.values()))[1]
    X, y, _ = load_dataset(cfg, train=False)
    X = torch.as_tensor(X[:n].astype(np.float32) / 255.0)
    y = torch.as_tensor(y[:n])
    explainer = LimeExplainer(n_samples=1000, sampling="foldover", segmenter=SlicSegmenter(n_segments=25),
                              random_state=0)
    fig, axes = plt.subplots(1 + len(names), n, figsize=(1.5 * n, 1.6 * (1 + len(names))), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(X[j].permute(1, 2, 0).numpy())
    axes[0, 0].set_ylabel("image", fontsize=8)
    segments = None
    for i, name in enumerate(names, start=1):
        module = models[name][0].module_.float().to(memory_format=torch.contiguous_format)
        att = explainer.explain(module, X, y, segments=segments)
        segments = att.segments  # the same superpixels for every model
        maps = att.to_pixels().numpy()
        for j in range(n):
            lim = float(np.abs(maps[j, 0]).max()) or 1.0
            axes[i, j].imshow(maps[j, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[i, 0].set_ylabel(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("LIME weights for the true class (red: for, blue: against), same superpixels", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, filename)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _by_method(per_run):
    """Average the runs of one method over its training seeds (``<method>-s<seed>``)."""
    groups = {}
    for run, v in per_run.items():
        groups.setdefault(_split(run)[0], []).append(v)
    return groups


def plot(curves, cor, out):
    """Accuracy vs eps and per-corruption bars, one series per method (seeds averaged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(out, exist_ok=True)
    colors = plt.get_cmap("tab10").colors
    label = lambda m, n: f"{m} ({n} seeds)" if n > 1 else m  # noqa: E731
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, (m, cs) in enumerate(sorted(_by_method(curves).items())):
        acc = np.mean([c["accuracy"] for c in cs], axis=0)
        ax.plot(np.array(cs[0]["eps"]) * 255, acc, marker="o", color=colors[k % 10], label=label(m, len(cs)))
    ax.set_xlabel("Linf eps (x 1/255)")
    ax.set_ylabel("PGD-20 accuracy")
    ax.set_title("CIFAR-10, SmallCNN, 5 epochs (500 test images)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cifar10_accuracy_vs_eps.png"), dpi=120)
    plt.close(fig)
    if cor:
        groups = sorted(_by_method(cor).items())
        names = list(groups[0][1][0].keys())
        fig, ax = plt.subplots(figsize=(11, 4.2))
        w = 0.8 / len(groups)
        for k, (m, vals) in enumerate(groups):
            ax.bar(np.arange(len(names)) + k * w, [np.mean([v[n] for v in vals]) for n in names], w,
                   color=colors[k % 10], label=label(m, len(vals)))
        ax.set_xticks(np.arange(len(names)) + 0.4 - w / 2)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (mean over 5 severities)")
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, 1.22))
        fig.tight_layout()
        fig.savefig(os.path.join(out, "cifar10c_per_corruption.png"), dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    main()
