"""The CIFAR-10 campaign: the same model, seed and epochs under every method, then evaluation.

Each run is ``attribshield train`` into ``runs/<dataset>/<method>-s<seed>/`` (checkpoint after
every epoch, so an interrupted campaign resumes where it stopped) followed by
``attribshield evaluate`` into ``.../eval``. A summary table is printed and written to
``runs/<dataset>/summary.json`` and ``summary.md``.

    python benchmarks/cifar_experiments.py --methods clean fgsm_rs full --epochs 5
    python benchmarks/cifar_experiments.py --methods pgd no_mask no_reg no_loop --epochs 5 --seeds 0 1 2
    # a grid point on a 10k-image subset: runs/cifar10_sub10k/full-rw5-s0
    python benchmarks/cifar_experiments.py --out runs/cifar10_sub10k --methods full --tag rw5 \
        --train-flags "--train-subset 10000 --reg-weight 5" --threads 1
    # CIFAR-100, once a copy is in .cache/cifar100/cifar-100-python (no copy exists on the
    # project's machine; attribshield.data.load_cifar100(root, download=True) fetches one)
    python benchmarks/cifar_experiments.py --dataset cifar100 --methods clean fgsm_rs full --epochs 5

Defaults: SmallCNN, channels_last + bf16 autocast (docs/performance.md), eps = 8/255,
1,000 test images for PGD-20 (2 restarts) and Square, CIFAR-10-C on the same 1,000 images.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from attribshield.runs import read_history  # noqa: E402

ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "17179869184",
       "MALLOC_TOP_PAD_": "268435456", "PYTHONUNBUFFERED": "1"}


def run(cmd, log):
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        t0 = time.time()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV}).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}; see {log}")
    return time.time() - t0


def summarize(run_dir):
    """One summary row from a run folder's history and evaluation report."""
    with open(os.path.join(run_dir, "eval", "report.json")) as f:
        rep = json.load(f)
    hist = read_history(run_dir)
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)["config"]
    rob = rep["robustness"]
    return {
        "run": os.path.basename(run_dir).rsplit("-s", 1)[0], "method": cfg["method"], "seed": cfg["seed"],
        "epochs": len(hist), "config": cfg,
        "train_seconds": sum(h.get("dur", 0.0) + h.get("refine_dur", 0.0) for h in hist),
        "refine_seconds": sum(h.get("refine_dur", 0.0) for h in hist),
        "clean": rob["clean_accuracy"], "pgd20": rob["pgd_accuracy"], "square": rob["square_accuracy"],
        "autoattack": rob.get("autoattack_accuracy"),
        "cifar10c_mean": (rep.get("corruptions") or {}).get("mean"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["clean", "fgsm_rs", "pgd", "full", "no_mask", "no_reg", "no_loop"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar10")
    p.add_argument("--data-root", default=None, help="default: .cache/<dataset>")
    p.add_argument("--out", default=None, help="default: runs/<dataset>")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--cifar10c", action="store_true",
                   help="also the 15 x 5 corruptions regenerated on the n-test images (CIFAR-10-C for cifar10)")
    p.add_argument("--autoattack", action="store_true")
    p.add_argument("--train-flags", default="", help="extra 'attribshield train' flags, one string")
    p.add_argument("--tag", default="", help="run folder suffix: <method>-<tag>-s<seed>")
    p.add_argument("--threads", type=int, default=0, help="OMP/torch threads per process (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        ENV["OMP_NUM_THREADS"] = str(args.threads)
    args.data_root = args.data_root or os.path.join(ROOT, ".cache", args.dataset)
    args.out = args.out or os.path.join(ROOT, "runs", args.dataset)
    if args.dataset == "cifar10" and not os.path.exists(os.path.join(args.data_root, "cifar-10-batches-py")):
        subprocess.run([sys.executable, os.path.join(ROOT, "..", "shared", "data", "materialize.py"), args.data_root],
                       check=True)
    if args.dataset == "cifar100" and not os.path.exists(os.path.join(args.data_root, "cifar-100-python")):
        raise SystemExit(f"no CIFAR-100 in {args.data_root} (expected {args.data_root}/cifar-100-python/); fetch it "
                         f"with: python -c \"from attribshield.data import load_cifar100; "
                         f"load_cifar100('{args.data_root}', download=True)\"")
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "campaign.log")
    for seed in args.seeds:
        for method in args.methods:
            name = f"{method}-{args.tag}" if args.tag else method
            run_dir = os.path.join(args.out, f"{name}-s{seed}")
            train = [sys.executable, "-m", "attribshield", "train", "--dataset", args.dataset, "--data-root",
                     args.data_root, "--model", args.model, "--method", method, "--epochs", str(args.epochs),
                     "--seed", str(seed), "--channels-last", "--bf16", "--no-progress", "--out", run_dir,
                     *shlex.split(args.train_flags)]
            run(train, log)
            ev = [sys.executable, "-m", "attribshield", "evaluate", "--model", run_dir, "--n-test", str(args.n_test),
                  "--steps", "20", "--restarts", "2", "--square-queries", str(args.square_queries),
                  "--dataset", args.dataset, "--out", os.path.join(run_dir, "eval")]
            if args.cifar10c:
                ev.append("--cifar10c")
            if args.autoattack:
                ev.append("--autoattack")
            if not os.path.exists(os.path.join(run_dir, "eval", "report.json")):
                run(ev, log)
            print(json.dumps(summarize(run_dir)), flush=True)
    # the summary covers every evaluated run in the folder, not only this invocation's
    rows = [summarize(os.path.dirname(os.path.dirname(r)))
            for r in sorted(glob.glob(os.path.join(args.out, "*", "eval", "report.json")))]
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(rows, f, indent=2)
    corrupted = "CIFAR-10-C" if args.dataset == "cifar10" else "corruptions"
    lines = [f"| run | seed | epochs | clean | PGD-20 | Square | AutoAttack | {corrupted} mean | train s | refine s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['run']} | {r['seed']} | {r['epochs']} | {fmt(r['clean'])} | {fmt(r['pgd20'])} | "
                     f"{fmt(r['square'])} | {fmt(r['autoattack'])} | {fmt(r['cifar10c_mean'])} | "
                     f"{r['train_seconds']:.0f} | {r['refine_seconds']:.0f} |")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
