"""Attack throughput: attribshield's PGD / FGSM against torchattacks', side by side.

Both run on the same SmallCNN, the same batches and the same settings (Linf, eps=8/255,
PGD step 2/255 with a random start); repeats are interleaved so that machine noise hits both
alike, and the table reports medians and the ratio ours / torchattacks (> 1: ours faster).

Usage::

    python benchmarks/attack_throughput.py [--n-images 256] [--batch-size 128] [--steps 10]
        [--repeats 3] [--threads 2] [--device cpu] [--out runs/benchmarks/attack_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attribshield._runtime import tune_allocator  # noqa: E402

tune_allocator()

import torch  # noqa: E402
import torchattacks  # noqa: E402

from attribshield.attacks import FGSM, PGD  # noqa: E402
from attribshield.models import SmallCNN  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, X, y, batch_size, device):
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, X.shape[0], batch_size):
        fn(X[i:i + batch_size], y[i:i + batch_size])
    _sync(device)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/benchmarks/attack_throughput.json")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SmallCNN().to(device).eval()
    X = torch.rand(args.n_images, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(X).argmax(1)
    eps, alpha = 8 / 255, 2 / 255

    ours_pgd = PGD(eps=eps, step_size=alpha, steps=args.steps, random_start=True, random_state=0)
    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
    ours_fgsm = FGSM(eps=eps)
    ta_fgsm = torchattacks.FGSM(model, eps=eps)
    pairs = {
        f"PGD-{args.steps}": (lambda a, b: ours_pgd.perturb(model, a, b), lambda a, b: ta_pgd(a, b)),
        "FGSM": (lambda a, b: ours_fgsm.perturb(model, a, b), lambda a, b: ta_fgsm(a, b)),
    }
    # warm-up (allocator, kernels)
    for ours, theirs in pairs.values():
        _time(ours, X[: args.batch_size], y[: args.batch_size], args.batch_size, device)
        _time(theirs, X[: args.batch_size], y[: args.batch_size], args.batch_size, device)

    rows = []
    for name, (ours, theirs) in pairs.items():
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):  # interleaved
            t_ours.append(_time(ours, X, y, args.batch_size, device))
            t_theirs.append(_time(theirs, X, y, args.batch_size, device))
        ips_ours = args.n_images / statistics.median(t_ours)
        ips_theirs = args.n_images / statistics.median(t_theirs)
        rows.append({"attack": name, "ours_images_per_s": ips_ours, "torchattacks_images_per_s": ips_theirs,
                     "ratio": ips_ours / ips_theirs, "ours_s": t_ours, "torchattacks_s": t_theirs})

    print(f"SmallCNN, batch {args.batch_size}, {args.n_images} images, {args.repeats} interleaved repeats, "
          f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"torchattacks {torchattacks.__version__}")
    print("| attack | attribshield (images/s) | torchattacks (images/s) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['ours_images_per_s']:.0f} | {r['torchattacks_images_per_s']:.0f} "
              f"| {r['ratio']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "attack_throughput", "args": vars(args), "rows": rows,
        "torch": torch.__version__, "torchattacks": torchattacks.__version__,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
    }, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
