"""What the full method costs per epoch, against FGSM-RS and PGD-7 adversarial training.

Same SmallCNN, same CIFAR-10 subset, same precision settings (channels_last + bf16 by
default), two epochs each, run one after another in one process; the table reports the
second epoch (steady state: the full method then trains with masks from the first round and
runs one refinement round, ``refine_fraction`` of the subset explained with the current
model). Prints wall time per epoch, the split between training and explaining, and the ratio
to PGD-7 (the method's budget: it should cost no more than PGD-7 adversarial training).

    python benchmarks/refinement_cost.py [--train 5000] [--refine-fraction 0.02] [--lime-samples 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

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
    p.add_argument("--methods", nargs="+", default=["fgsm_rs", "pgd", "full"])
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
    rows = []
    for method in args.methods:
        cfg = TrainConfig(dataset="cifar10", data_root=args.cifar_root, model="smallcnn", method=method, epochs=2,
                          train_subset=args.train, refine_every=1, refine_fraction=args.refine_fraction,
                          lime_samples=args.lime_samples, channels_last=not args.fp32, bf16=not args.fp32)
        X, y, n_classes = load_dataset(cfg)
        clf = build_estimator(cfg, n_classes=n_classes, verbose=0,
                              callbacks__refinement__progress=False)
        clf.fit(X, y)
        last = clf.history[-1]
        refine = float(last["refine_dur"]) if "refine_dur" in last else 0.0
        wall = float(last["dur"]) + refine  # EpochTimer's dur stops before the refinement round
        rows.append({"method": method, "epoch_s": wall, "refine_s": refine, "train_s": wall - refine,
                     "images_explained": int(last["refine_n"]) if "refine_n" in last else 0})
    ref = next((r["epoch_s"] for r in rows if r["method"] == "pgd"), rows[0]["epoch_s"])
    print(f"{'method':<10}{'epoch s':>10}{'train s':>10}{'explain s':>11}{'explained':>11}{'vs PGD-7':>10}")
    for r in rows:
        r["ratio_vs_pgd7"] = r["epoch_s"] / ref
        print(f"{r['method']:<10}{r['epoch_s']:>10.1f}{r['train_s']:>10.1f}{r['refine_s']:>11.1f}"
              f"{r['images_explained']:>11d}{r['ratio_vs_pgd7']:>10.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
