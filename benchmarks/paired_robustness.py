"""Paired comparison of trained runs on the same test images (is a difference real?).

Every run is attacked with the same PGD-20 (Linf 8/255, step 2.5 eps / 20, one random start,
seed 0) on the same first ``--n-test`` CIFAR-10 test images. Because the images are shared,
differences between two runs are judged on the images where they disagree: an exact McNemar
test and a bootstrap 95 % interval of the accuracy difference (10,000 resamples of images), both
from ``attribshield.evaluation.stats``.

    .venv/bin/python benchmarks/paired_robustness.py --runs fgsm_rs-s0 full-s0 pgd-s0 no_loop-s0 \
        --baseline fgsm_rs-s0 --n-test 1000

Prints a table; writes ``runs/cifar10/paired_robustness.json``.  Clean accuracy is compared the
same way.  Per-image results are cached in ``<run>/paired_n<N>_pgd<steps>.npz`` (recomputed when
the run's newest checkpoint is newer), so adding runs costs only the new ones.  When several
training seeds of a method and of the baseline's method are given (``<method>-s<seed>``), a
second table compares them seed by seed: the mean of the per-seed differences and their
range, which includes the training-seed variation the per-image interval leaves out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attribshield.evaluation.stats import (  # noqa: E402
    mcnemar_exact,
    paired_bootstrap_ci,
    pooled_mcnemar_exact,
    seed_matched_differences,
)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run folders under --root")
    p.add_argument("--baseline", required=True)
    p.add_argument("--root", default=os.path.join(ROOT, "runs", "cifar10"))
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    import torch

    from attribshield.attacks import PGD
    from attribshield.evaluation import clean_accuracy, robust_accuracy
    from attribshield.presets import load_dataset
    from attribshield.runs import load_run, run_checkpoint

    runs = list(dict.fromkeys([args.baseline, *args.runs]))
    per = {}
    X = y = None
    for name in runs:
        run_dir = os.path.join(args.root, name)
        cache = os.path.join(run_dir, f"paired_n{args.n_test}_pgd{args.steps}.npz")
        if os.path.exists(cache) and os.path.getmtime(cache) > os.path.getmtime(run_checkpoint(run_dir)):
            with np.load(cache) as z:
                per[name] = {"clean": z["clean"], "pgd": z["pgd"]}
        else:
            clf, cfg, _ = load_run(run_dir)
            if X is None:
                Xu, y, _ = load_dataset(cfg, train=False)
                X = torch.as_tensor(Xu[: args.n_test].astype(np.float32) / 255.0)
                y = torch.as_tensor(y[: args.n_test])
            module = clf.module_.float().to(memory_format=torch.contiguous_format).eval()
            clean = clean_accuracy(module, X, y, return_per_sample=True)
            rob = robust_accuracy(module, X, y, PGD(eps=cfg.eps, steps=args.steps, random_state=0),
                                  return_per_sample=True)
            per[name] = {"clean": np.asarray(clean, dtype=float), "pgd": np.asarray(rob, dtype=float)}
            np.savez(cache, **per[name])
        print(f"{name}: clean {per[name]['clean'].mean():.3f}, PGD-{args.steps} {per[name]['pgd'].mean():.3f}",
              flush=True)
    rows = []
    base = per[args.baseline]
    for name in runs:
        row = {"run": name}
        for key in ("clean", "pgd"):
            a, b = per[name][key], base[key]
            ci = paired_bootstrap_ci(a, b, confidence=0.95, n_resamples=10000, random_state=0)
            row[key] = float(a.mean())
            row[f"{key}_diff"] = float(a.mean() - b.mean())
            row[f"{key}_ci"] = (ci["low"], ci["high"])
            row[f"{key}_p"] = mcnemar_exact(a, b)["pvalue"]
        rows.append(row)
    n_img = len(base["pgd"])
    print(f"\n{n_img} test images, PGD-{args.steps} (1 start), differences against {args.baseline}\n")
    print("| run | clean | diff (95% CI) | McNemar p | PGD | diff (95% CI) | McNemar p |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for key in ("clean", "pgd"):
            lo, hi = r[f"{key}_ci"]
            cells.append(f"{r[key]:.3f} | {100 * r[f'{key}_diff']:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f}) | "
                         f"{r[f'{key}_p']:.3f}")
        print(f"| {r['run']} | " + " | ".join(cells) + " |")
    seeds = seed_matched(per, args.baseline)
    if seeds:
        print(f"\nSeed-matched: <method>-s<k> against {args.baseline.rsplit('-s', 1)[0]}-s<k>, "
              "mean (min..max) of the per-seed differences in points\n")
        print("| method | seeds | clean diff | PGD diff | pooled McNemar p (PGD) |")
        print("|---|---|---|---|---|")
        for r in seeds:
            c, g = r["clean_diffs"], r["pgd_diffs"]
            print(f"| {r['method']} | {','.join(map(str, r['seeds']))} | {100 * np.mean(c):+.1f} "
                  f"({100 * min(c):+.1f}..{100 * max(c):+.1f}) | {100 * np.mean(g):+.1f} "
                  f"({100 * min(g):+.1f}..{100 * max(g):+.1f}) | {r['pgd_pooled_p']:.3f} |")
    with open(os.path.join(args.root, "paired_robustness.json"), "w") as f:
        json.dump({"n_test": n_img, "steps": args.steps, "baseline": args.baseline, "rows": rows,
                   "seed_matched": seeds}, f, indent=2)


def seed_matched(per: dict, baseline: str) -> list:
    """Per-seed differences of every method against the baseline's method on the same seed."""
    def split(name):
        head, _, tail = name.rpartition("-s")
        return (head, int(tail)) if head and tail.isdigit() else (name, None)

    base_method, _ = split(baseline)
    by_method: dict = {}
    for name in per:
        m, k = split(name)
        if k is not None:
            by_method.setdefault(m, {})[k] = per[name]
    base = by_method.get(base_method, {})
    out = []
    for m, runs in by_method.items():
        common = sorted(set(runs) & set(base))
        if m == base_method or len(common) < 2:
            continue
        diffs = {key: seed_matched_differences({k: float(runs[k][key].mean()) for k in common},
                                               {k: float(base[k][key].mean()) for k in common})["differences"]
                 for key in ("clean", "pgd")}
        out.append({
            "method": m, "seeds": common,
            "clean_diffs": diffs["clean"],
            "pgd_diffs": diffs["pgd"],
            # the seeds' image pairs stacked: discordant counts summed over the seeds
            "pgd_pooled_p": pooled_mcnemar_exact((runs[k]["pgd"], base[k]["pgd"]) for k in common)["pvalue"],
        })
    return out


if __name__ == "__main__":
    main()
