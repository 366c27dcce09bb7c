"""Fidelity of LIME sampling designs: how many samples for a given accuracy?

Fidelity = Spearman correlation of an image's segment weights with a 10,000-sample reference
(exact LIME math, i.i.d. sampling), median over images and seeds, for
``n_samples`` in 50 / 100 / 200 / 500 / 1,000, with

* ``lime``: i.i.d. Bernoulli(1/2) masks (the ``lime`` package's design),
* ``antithetic``, ``foldover``: the variance-reducing designs of ``LimeExplainer(sampling=...)``,
* ``... + logit CV``: ``LimeExplainer(control_variate="logit")`` (model-assisted LIME).

Model: ``SmallCNN`` trained briefly on real CIFAR-10 (cached in ``.cache/``); images: the
first CIFAR-10 test images; segments: the default 4x4 grid (16 segments).

Usage::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456 \\
    .venv/bin/python benchmarks/lime_fidelity.py [--images 16] [--seeds 2] [--threads 2]

Prints a table and writes ``runs/benchmarks/lime_fidelity.json``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attribshield.explainers import GridSegmenter, LimeExplainer  # noqa: E402

CACHE = REPO / ".cache"
SHARED = REPO.parent / "shared" / "data"


def tune_allocator() -> None:
    try:
        from attribshield._runtime import tune_allocator as tune

        tune()
        return
    except Exception:
        pass
    try:  # glibc mallopt: M_TRIM_THRESHOLD=-1, M_TOP_PAD=-2, M_MMAP_THRESHOLD=-3
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)
        libc.mallopt(-1, 1 << 34)
        libc.mallopt(-2, 1 << 28)
    except Exception:
        pass


def load_cifar(split: str = "test", n: int | None = None):
    """Real CIFAR-10 images ``(n, 3, 32, 32)`` in [0, 1] and labels, from the shared copy."""
    root = CACHE / "cifar10"
    if not (root / "cifar-10-batches-py" / "test_batch").exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(SHARED / "materialize.py"), str(root)], check=True, capture_output=True)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for name in names:
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d["labels"]))
        if n is not None and sum(len(x) for x in xs) >= n:
            break
    X = torch.from_numpy(np.concatenate(xs)[:n]).float() / 255
    return X, torch.from_numpy(np.concatenate(ys)[:n]).long()


def small_cnn_factory():
    try:
        from attribshield.models import SmallCNN

        return SmallCNN(num_classes=10)
    except Exception:  # fallback if the models module is missing
        m = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(4),
            torch.nn.Flatten(), torch.nn.Linear(2048, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10),
        )
        return m


def trained_small_cnn(seconds: float = 120.0, n_train: int = 20000):
    """``SmallCNN`` trained on real CIFAR-10 for about ``seconds`` (cached); returns
    ``(model in eval mode, test accuracy on 1,000 images)``."""
    path = CACHE / f"bench_smallcnn_{int(seconds)}s.pt"
    model = small_cnn_factory()
    Xte, yte = load_cifar("test", 1000)
    if path.exists():
        model.load_state_dict(torch.load(path))
    else:
        Xtr, ytr = load_cifar("train", n_train)
        torch.manual_seed(0)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        t0 = time.perf_counter()
        model.train()
        while time.perf_counter() - t0 < seconds:
            perm = torch.randperm(len(Xtr))
            for i in range(0, len(Xtr) - 127, 128):
                idx = perm[i : i + 128]
                xb = Xtr[idx]
                flip = torch.rand(len(idx)) < 0.5
                xb[flip] = xb[flip].flip(3)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(xb.contiguous(memory_format=torch.channels_last))
                    loss = torch.nn.functional.cross_entropy(logits, ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if time.perf_counter() - t0 > seconds:
                    break
        model = model.to(memory_format=torch.contiguous_format)
        CACHE.mkdir(exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
    return model, acc


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman correlation of two ``(N, S)`` tensors (no ties expected)."""
    ra = a.argsort(1).argsort(1).double()
    rb = b.argsort(1).argsort(1).double()
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


METHODS = {
    "lime (iid)": dict(sampling="lime"),
    "antithetic": dict(sampling="antithetic"),
    "foldover": dict(sampling="foldover"),
    "lime + logit CV": dict(sampling="lime", control_variate="logit"),
    "foldover + logit CV": dict(sampling="foldover", control_variate="logit"),
    # the cheaper forward passes of the throughput benchmark, judged by the same reference
    "foldover, channels_last+bf16": dict(sampling="foldover", channels_last=True, autocast="bf16"),
    "foldover, int8": dict(sampling="foldover", quantize="int8"),
    "antithetic, int8": dict(sampling="antithetic", quantize="int8"),
    "foldover + logit CV, int8": dict(sampling="foldover", control_variate="logit", quantize="int8"),
}
SIZES = (50, 100, 200, 500, 1000)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--reference", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                    help="subset of the rows (default: all): " + "; ".join(METHODS))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--out", default="lime_fidelity.json", help="file name under runs/benchmarks/")
    args = ap.parse_args(argv)
    unknown = set(args.methods or ()) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    methods = {k: METHODS[k] for k in (args.methods or METHODS)}
    sizes = tuple(args.sizes)
    torch.set_grad_enabled(False)
    tune_allocator()
    torch.set_num_threads(args.threads)
    model, acc = trained_small_cnn(args.train_seconds)
    X, _ = load_cifar("test", args.images)
    seg = GridSegmenter().segment(X)
    with torch.no_grad():
        target = model(X).argmax(1)
    t0 = time.perf_counter()
    # the reference is the expensive part: cached per (model, images, reference size)
    ref_path = CACHE / f"lime_fidelity_ref_{int(args.train_seconds)}s_{args.images}img_{args.reference}.pt"
    if ref_path.exists():
        ref_weights = torch.load(ref_path)
    else:
        ref_weights = LimeExplainer(n_samples=args.reference, batch_size=500, random_state=12345).explain(
            model, X, target, segments=seg).weights
        torch.save(ref_weights, ref_path)
    t_ref = time.perf_counter() - t0
    results, results_mean = {}, {}
    for name, kw in methods.items():
        results[name], results_mean[name] = {}, {}
        for n in sizes:
            rho = []
            for seed in range(args.seeds):
                explainer = LimeExplainer(n_samples=n, batch_size=500, random_state=seed, **kw)
                a = explainer.explain(model, X, target, segments=seg)
                rho.append(spearman(a.weights, ref_weights))
            results[name][n] = float(torch.cat(rho).median())
            # the mean is less coarse than the median (16-segment Spearman moves in steps of 0.003)
            results_mean[name][n] = float(torch.cat(rho).mean())
    header = "| sampling | " + " | ".join(f"n={n}" for n in sizes) + " |"
    print(f"SmallCNN test accuracy {acc:.3f}; {args.images} CIFAR-10 test images, grid 16; "
          f"reference {args.reference} samples ({t_ref:.0f} s); median Spearman over images x {args.seeds} seeds")
    print(header)
    print("|" + "---|" * (len(sizes) + 1))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[n]:.3f} ({results_mean[name][n]:.4f})" for n in sizes) + " |")
    print("cells: median (mean) Spearman")
    out = REPO / "runs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / args.out).write_text(
        json.dumps(
            dict(model="SmallCNN", test_accuracy=acc, images=args.images, seeds=args.seeds,
                 reference=args.reference, segments="grid16", results=results, results_mean=results_mean,
                 torch=torch.__version__, threads=args.threads),
            indent=2,
        )
    )
    return results


if __name__ == "__main__":
    main()
