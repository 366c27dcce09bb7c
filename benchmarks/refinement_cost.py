"""What each method costs per epoch, against FGSM-RS (its base) and PGD-7.

Same SmallCNN, same CIFAR-10 subset, same precision settings (channels_last + bf16 by
default), two epochs each, run one after another in one process; the table reports the
second epoch (steady state: ``full`` then trains with masks from the first round and runs one
refinement round; the full-dose methods compute fresh masks for every batch and the amortized
explainer keeps training online).  Prints wall time per epoch, the split between the training
loop, the exact-LIME refinement round (``full``) and the fidelity audit (full-dose methods),
and the ratios to FGSM-RS with and without the audit.  ``--rounds R`` repeats the whole
side-by-side comparison R times and reports the median ratio (these machines are noisy).

    python benchmarks/refinement_cost.py [--train 5000] [--methods fgsm_rs full_gradient ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-root", default=os.path.join(ROOT, ".cache", "cifar10"))
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--refine-fraction", type=float, default=0.02)
    p.add_argument("--lime-samples", type=int, default=64)
    p.add_argument("--fp32", action="store_true", help="fp32, contiguous (default: channels_last + bf16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+",
                   default=["fgsm_rs", "pgd", "full", "full_amortized", "full_gradient", "random_mask"])
    p.add_argument("--rounds", type=int, default=1, help="repeat the comparison; median ratios")
    p.add_argument("--audit-size", type=int, default=128)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "benchmarks", "refinement_cost.json"))
    args = p.parse_args()

    from attribshield._runtime import tune_allocator

    tune_allocator()
    import torch

    from attribshield.presets import TrainConfig, build_estimator, load_dataset

    torch.set_num_threads(args.threads)
    if not os.path.exists(os.path.join(args.cifar_root, "cifar-10-batches-py")):
        subprocess.run([sys.executable, os.path.join(ROOT, "..", "shared", "data", "materialize.py"),
                        args.cifar_root], check=True)
    runs = []
    for r in range(args.rounds):
        for method in args.methods:
            cfg = TrainConfig(dataset="cifar10", data_root=args.cifar_root, model="smallcnn", method=method,
                              epochs=2, train_subset=args.train, refine_every=1,
                              refine_fraction=args.refine_fraction, lime_samples=args.lime_samples,
                              audit_size=args.audit_size, channels_last=not args.fp32, bf16=not args.fp32)
            X, y, n_classes = load_dataset(cfg)
            clf = build_estimator(cfg, n_classes=n_classes, verbose=0, callbacks__refinement__progress=False)
            clf.fit(X, y)
            last = clf.history[-1]
            refine = float(last["refine_dur"]) if "refine_dur" in last else 0.0
            audit = float(last["audit_dur"]) if "audit_dur" in last else 0.0
            train = float(last["dur"])  # EpochTimer's dur stops before the refinement round and the audit
            runs.append({"round": r, "method": method, "epoch_s": train + refine + audit, "train_s": train,
                         "refine_s": refine, "audit_s": audit,
                         "images_explained": int(last["refine_n"]) if "refine_n" in last else 0,
                         "audit_spearman": last.get("audit_spearman")})
    rows = []
    for method in args.methods:
        mine = [x for x in runs if x["method"] == method]
        ratio, ratio_na = [], []
        for x in mine:
            base = next(b for b in runs if b["round"] == x["round"] and b["method"] == args.methods[0])
            ratio.append(x["epoch_s"] / base["epoch_s"])
            ratio_na.append((x["epoch_s"] - x["audit_s"]) / base["epoch_s"])
        row = {k: float(np.median([x[k] for x in mine])) for k in ("epoch_s", "train_s", "refine_s", "audit_s")}
        row.update(method=method, images_explained=mine[-1]["images_explained"],
                   audit_spearman=mine[-1]["audit_spearman"], ratio=float(np.median(ratio)),
                   ratio_without_audit=float(np.median(ratio_na)), ratios=ratio)
        rows.append(row)
    base_name = args.methods[0]
    print(f"{'method':<16}{'epoch s':>9}{'train s':>9}{'refine s':>10}{'audit s':>9}{'explained':>11}"
          f"{'vs ' + base_name:>12}{'w/o audit':>11}")
    for r in rows:
        print(f"{r['method']:<16}{r['epoch_s']:>9.1f}{r['train_s']:>9.1f}{r['refine_s']:>10.1f}{r['audit_s']:>9.1f}"
              f"{r['images_explained']:>11d}{r['ratio']:>12.2f}{r['ratio_without_audit']:>11.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
