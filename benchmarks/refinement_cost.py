"""What each method costs per epoch, against FGSM-RS (its base) and PGD-7.

Same SmallCNN, same CIFAR-10 subset, same precision settings (channels_last + bf16 by
default), two epochs each, run one after another in one process; the table reports the
second epoch (steady state: ``full`` then trains with masks from the first round and runs one
refinement round; the full-dose methods compute fresh masks for every batch and the amortized
explainer keeps training online).  Prints wall time per epoch, the split between the training
loop, the exact-LIME refinement round (``full``) and the fidelity audit (full-dose methods), and
the ratio to FGSM-RS of the process CPU time of the measured epoch (one intra-op thread by
default, so the ratio measures compute, not the other jobs on a shared machine) next to the
wall-time ratio.  ``--rounds R`` repeats the side-by-side comparison R times; medians.

    python benchmarks/refinement_cost.py [--train 5000] [--methods fgsm_rs full_gradient ...]

A method may carry a masker criterion, ``<method>-<criterion>`` (``full_amortized-dominant``:
the amortized method with the criterion that needs only the clean images' explanations), and
TrainConfig overrides after a colon, ``<method>[-<criterion>]:key=value[,key=value]``
(``full_amortized:explainer_update_fraction=0.0625``), so that settings of one method can be
compared side by side in the same run.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


FIXED = ("method", "criterion", "dataset", "epochs", "train_subset", "audit_size")


def parse_arm(name):
    """``<preset>[-<criterion>][:key=value[,key=value]]`` -> TrainConfig keyword arguments.

    Raises ValueError for an unknown preset or criterion, a malformed override, or an
    override of a field the benchmark sets itself.
    """
    from attribshield.maskers import CRITERIA
    from attribshield.presets import METHODS
    from shortcut_experiment import parse_sets

    spec, _, overrides = name.partition(":")
    method, _, criterion = spec.partition("-")
    if method not in METHODS or (criterion and criterion not in CRITERIA):
        raise ValueError(f"unknown method {name!r}: a preset of {METHODS}, or <preset>-<criterion> with a "
                         f"criterion of {CRITERIA}")
    try:
        sets = parse_sets(overrides.split(",") if overrides else [])
    except SystemExit as exc:
        raise ValueError(f"bad overrides in {name!r}: {str(exc).removeprefix('error: --set takes ')}") from None
    clash = sorted(set(FIXED) & set(sets))
    if clash:
        raise ValueError(f"{name!r}: {clash} are set by the benchmark itself")
    return {"method": method, **({"criterion": criterion} if criterion else {}), **sets}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-root", default=os.path.join(ROOT, ".cache", "cifar10"))
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--refine-fraction", type=float, default=0.02)
    p.add_argument("--lime-samples", type=int, default=64)
    p.add_argument("--fp32", action="store_true", help="fp32, contiguous (default: channels_last + bf16)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: process CPU time is then robust to other load)")
    p.add_argument("--methods", nargs="+",
                   default=["fgsm_rs", "pgd", "full", "full_amortized", "full_gradient", "random_mask"],
                   help="presets, <preset>-<criterion> (e.g. full_amortized-dominant), either with "
                        "TrainConfig overrides after a colon (full_amortized:explainer_coalitions=4)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the comparison; median ratios")
    p.add_argument("--audit-size", type=int, default=0,
                   help="exact-LIME audit images per epoch (a fixed per-epoch cost, default off)")
    p.add_argument("--profile", action="store_true",
                   help="print a cProfile (CPU time) of each method's measured epoch, attribshield's functions")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "benchmarks", "refinement_cost.json"))
    args = p.parse_args()

    from attribshield._runtime import tune_allocator

    tune_allocator()
    import torch

    from attribshield.presets import TrainConfig, build_estimator, load_dataset

    arms = {}
    for name in args.methods:
        try:
            arms[name] = parse_arm(name)
        except ValueError as exc:
            p.error(str(exc))
    torch.set_num_threads(args.threads)
    if not os.path.exists(os.path.join(args.cifar_root, "cifar-10-batches-py")):
        subprocess.run([sys.executable, os.path.join(ROOT, "..", "shared", "data", "materialize.py"),
                        args.cifar_root], check=True)
    runs = []
    for r in range(args.rounds):
        for method in args.methods:
            cfg = TrainConfig(**{"dataset": "cifar10", "data_root": args.cifar_root, "model": "smallcnn",
                                 "refine_every": 1, "refine_fraction": args.refine_fraction,
                                 "lime_samples": args.lime_samples, "channels_last": not args.fp32,
                                 "bf16": not args.fp32, **arms[method], "epochs": 2,
                                 "train_subset": args.train, "audit_size": args.audit_size})
            X, y, n_classes = load_dataset(cfg)
            clf = build_estimator(cfg, n_classes=n_classes, verbose=0, max_epochs=1,
                                  callbacks__refinement__progress=False)
            clf.fit(X, y)  # first epoch: warm-up (and the first refinement round of ``full``)
            prof = cProfile.Profile(timer=time.process_time) if args.profile else None
            c0, t0 = time.process_time(), time.perf_counter()
            if prof is not None:
                prof.enable()
            clf.partial_fit(X, y)  # the measured epoch
            if prof is not None:
                prof.disable()
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            if prof is not None:
                print(f"--- {method}, round {r}: CPU time by function (cumulative)")
                pstats.Stats(prof).sort_stats("cumulative").print_stats(r"attribshield[/\\]", 25)
            last = clf.history[-1]
            refine = float(last["refine_dur"]) if "refine_dur" in last else 0.0
            audit = float(last["audit_dur"]) if "audit_dur" in last else 0.0
            runs.append({"round": r, "method": method, "cpu_s": cpu, "epoch_s": wall, "refine_s": refine,
                         "audit_s": audit, "train_s": wall - refine - audit,
                         "images_explained": int(last["refine_n"]) if "refine_n" in last else 0,
                         "audit_spearman": last.get("audit_spearman")})
    rows = []
    base_name = args.methods[0]
    for method in args.methods:
        mine = [x for x in runs if x["method"] == method]
        ratio, ratio_wall = [], []
        for x in mine:
            base = next(b for b in runs if b["round"] == x["round"] and b["method"] == base_name)
            ratio.append(x["cpu_s"] / base["cpu_s"])
            ratio_wall.append(x["epoch_s"] / base["epoch_s"])
        row = {k: float(np.median([x[k] for x in mine]))
               for k in ("cpu_s", "epoch_s", "train_s", "refine_s", "audit_s")}
        row.update(method=method, images_explained=mine[-1]["images_explained"],
                   audit_spearman=mine[-1]["audit_spearman"], ratio_cpu=float(np.median(ratio)),
                   ratio_wall=float(np.median(ratio_wall)), ratios_cpu=ratio)
        rows.append(row)
    w = max(16, 2 + max(len(m) for m in args.methods))
    print(f"{'method':<{w}}{'CPU s':>8}{'wall s':>8}{'refine s':>10}{'audit s':>9}{'explained':>11}"
          f"{'CPU vs ' + base_name:>16}{'wall vs':>9}")
    for r in rows:
        print(f"{r['method']:<{w}}{r['cpu_s']:>8.1f}{r['epoch_s']:>8.1f}{r['refine_s']:>10.1f}{r['audit_s']:>9.1f}"
              f"{r['images_explained']:>11d}{r['ratio_cpu']:>16.2f}{r['ratio_wall']:>9.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
