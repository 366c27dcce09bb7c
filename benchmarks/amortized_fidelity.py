"""Amortized LIME against exact LIME: fidelity and explanation throughput.

Protocol
--------
* Model: ``SmallCNN`` trained ``--epochs`` epochs (default 3) on the first ``--n-train``
  (20,000) real CIFAR-10 training images (SGD, one-cycle learning rate, flips,
  channels_last, fp32); the weights are cached under ``runs/benchmarks/``.
* Explainer: :class:`~attribshield.explainers.AmortizedLimeExplainer` with its defaults (plus
  ``random_state``), ``fit`` on the first ``--n-fit`` (2,000) training images, target = the
  model's predicted class; the fit's wall time is reported.
* Reference: exact LIME, ``LimeExplainer(n_samples=2000)`` (fp32, i.i.d. masks), on the first
  ``--n-test`` (200) test images, 4x4 grid, target = predicted class (cached).
* Rows: the amortized explainer (and other variants with ``--variants``; the ``*_bf16`` ones
  run the classifier's passes in channels_last + bf16), exact LIME at 64 / 128 / 256 samples
  (calibration; ``--calibration-seeds n`` repeats each with ``n`` sampling seeds), first-order
  attributions (the input gradient at ``x``, at the half-way blend ``(x + fill) / 2`` that the
  amortized explainer takes as an input by default, integrated gradients with 8 points, and the
  mean gradient over 4 / 8 / 16 random per-segment blends, ``GradientExplainer(path="cube")``;
  ``--cube-fast k ...`` adds it with ``k`` points in fp32 and in channels_last + bf16),
  all scored against the reference by the median Spearman of the 16 segment weights
  (:func:`attribshield.evaluation.segment_spearman`) and the mean top-3 overlap
  (:func:`attribshield.evaluation.topk_intersection`), and by their fit to the model itself on
  ``--heldout-masks`` fresh LIME masks per test image, the same masks for every row
  (:func:`attribshield.evaluation.surrogate_r2`: LIME's weighted R^2 with the intercept
  refitted, and with the scale refitted too: the direction of the weights only).
* Throughput: images/s of the amortized explainer's ``explain`` (best of two calls on the
  test images) against the ``lime`` package with its defaults (1,000 samples,
  ``batch_size=10``, via :class:`~attribshield.explainers.LimeReferenceExplainer`) on
  ``--lime-images`` images.

Usage::

    .venv/bin/python benchmarks/amortized_fidelity.py [--threads 2] [--variants default cube4]

Prints a table and writes ``runs/benchmarks/amortized_fidelity.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attribshield.data import load_cifar10  # noqa: E402
from attribshield.evaluation import segment_spearman, surrogate_r2, topk_intersection  # noqa: E402
from attribshield.explainers import (  # noqa: E402
    AmortizedLimeExplainer,
    Attribution,
    GradientExplainer,
    GridSegmenter,
    LimeExplainer,
    LimeReferenceExplainer,
)
from attribshield.models import SmallCNN  # noqa: E402

OUT = REPO / "runs" / "benchmarks"
CIFAR_ROOT = Path(os.environ.get("ATTRIBSHIELD_CIFAR10", "/work/cache/cifar10"))
SHARED = REPO.parent / "shared" / "data"


def tune_allocator() -> None:
    try:
        from attribshield._runtime import tune_allocator as tune

        tune()
    except Exception:  # pragma: no cover - optional
        pass


def load(train: bool, n: int):
    """First ``n`` real CIFAR-10 images ``(n, 3, 32, 32)`` in [0, 1] and their labels."""
    if not (CIFAR_ROOT / "cifar-10-batches-py" / "test_batch").exists():
        CIFAR_ROOT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(SHARED / "materialize.py"), str(CIFAR_ROOT)], check=True)
    X, y = load_cifar10(CIFAR_ROOT, train=train, verify=False, dtype="uint8")
    return torch.from_numpy(X[:n]).float() / 255, torch.from_numpy(y[:n]).long()


def trained_model(n_train: int, epochs: int, log=print):
    """``SmallCNN`` trained on real CIFAR-10 (cached); returns ``(model, test accuracy)``."""
    path = OUT / f"amortized_smallcnn_{n_train}x{epochs}.pt"
    model = SmallCNN()
    if path.exists():
        model.load_state_dict(torch.load(path))
    else:
        X, y = load(True, n_train)
        torch.manual_seed(0)
        model = model.to(memory_format=torch.channels_last).train()
        bs = 128
        steps = epochs * (n_train // bs)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.25)
        t0 = time.perf_counter()
        for ep in range(epochs):
            perm = torch.randperm(n_train)
            for i in range(0, n_train - bs + 1, bs):
                idx = perm[i:i + bs]
                xb = X[idx]
                flip = torch.rand(bs) < 0.5
                xb[flip] = xb[flip].flip(3)
                out = model(xb.contiguous(memory_format=torch.channels_last))
                loss = torch.nn.functional.cross_entropy(out, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            log(f"  model epoch {ep + 1}/{epochs}: loss {float(loss.detach()):.3f} ({time.perf_counter() - t0:.0f} s)")
        model = model.to(memory_format=torch.contiguous_format)
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    Xte, yte = load(False, 2000)
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
    return model, acc


def reference(model, X, n_samples: int, tag: str, log=print):
    """Exact LIME (fp32, i.i.d. masks, seed 0) on ``X``, cached under ``runs/benchmarks/``."""
    path = OUT / f"amortized_reference_{tag}_{len(X)}x{n_samples}.pt"
    if path.exists():
        return torch.load(path)
    t0 = time.perf_counter()
    attr = LimeExplainer(n_samples=n_samples, channels_last=True, random_state=0).explain(model, X)
    w = attr.weights.cpu()
    log(f"  reference LIME-{n_samples} on {len(X)} images: {time.perf_counter() - t0:.0f} s")
    torch.save(w, path)
    return w


def scores(weights, ref) -> dict:
    rho = segment_spearman(weights, ref)
    top3 = topk_intersection(weights, ref, 3)
    return {
        "median_spearman": float(np.nanmedian(rho)),
        "mean_spearman": float(np.nanmean(rho)),
        "q10_spearman": float(np.nanquantile(rho, 0.1)),
        "top3_overlap": float(np.mean(top3)),
    }


def timed(fn, repeats=2):
    """Best wall time of ``repeats`` calls (the first also pays one-off costs)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


#: first-order rows (GradientExplainer): the input gradient at ``x``, at the half-way blend
#: ``(x + fill) / 2`` (what the amortized explainer is given with ``use_gradient``),
#: integrated gradients from the fill with 8 points, and the mean gradient over 4, 8 and 16
#: random per-segment blends (``path="cube"``)
FIRST_ORDER = [("first-order at x (GradientExplainer)", {}),
               ("first-order at the half-way blend (n_steps=1)", {"n_steps": 1}),
               ("integrated gradients (n_steps=8)", {"n_steps": 8}),
               ("cube path, 4 Latin-hypercube blends", {"n_steps": 4, "path": "cube", "random_state": 0}),
               ("cube path, 8 Latin-hypercube blends", {"n_steps": 8, "path": "cube", "random_state": 0}),
               ("cube path, 16 Latin-hypercube blends", {"n_steps": 16, "path": "cube", "random_state": 0})]


VARIANTS = {
    "default": {},
    "cube2": {"gradient_points": 2},
    "cube4": {"gradient_points": 4},
    "cube8": {"gradient_points": 8},
    # the classifier's passes in channels_last + bf16, the training loop's setting
    "cube8_bf16": {"gradient_points": 8, "channels_last": True, "autocast": "bf16"},
    "cube12_bf16": {"gradient_points": 12, "channels_last": True, "autocast": "bf16"},
    "cube16_bf16": {"gradient_points": 16, "channels_last": True, "autocast": "bf16"},
    "no_gradient": {"use_gradient": False},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=20000, help="training images of the SmallCNN")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the SmallCNN")
    ap.add_argument("--n-fit", type=int, default=2000, help="images the amortized explainer is fitted on")
    ap.add_argument("--n-test", type=int, default=200, help="held-out test images scored")
    ap.add_argument("--ref-samples", type=int, default=2000)
    ap.add_argument("--calibration", type=int, nargs="*", default=[64, 128, 256])
    ap.add_argument("--calibration-seeds", type=int, default=1,
                    help="seeds of each exact-LIME calibration row (random_state 1, 2, ...): its sampling noise")
    ap.add_argument("--variants", nargs="*", default=["default"],
                    help=f"named variants {sorted(VARIANTS)} or NAME='{{json params}}'")
    ap.add_argument("--lime-images", type=int, default=3, help="images timed for the lime package")
    ap.add_argument("--cube-fast", type=int, nargs="*", default=[], metavar="K",
                    help="also the cube path with K points in fp32 and in channels_last + bf16 (same blends)")
    ap.add_argument("--heldout-masks", type=int, default=256,
                    help="fresh LIME masks per test image for the held-out R^2 (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="amortized_fidelity.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune_allocator()
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    model, acc = trained_model(args.n_train, args.epochs, log)
    log(f"SmallCNN: {args.n_train} images x {args.epochs} epochs, test accuracy {acc:.3f} (2,000 test images)")
    Xfit, _ = load(True, args.n_fit)
    Xte, _ = load(False, args.n_test)
    tag = f"{args.n_train}x{args.epochs}"
    ref = reference(model, Xte, args.ref_samples, tag, log)
    seg = GridSegmenter().segment(Xte[:1])
    rows, attrs = [], []

    for p in args.calibration:
        for s in range(1, args.calibration_seeds + 1):
            t, attr = timed(lambda: LimeExplainer(n_samples=p, random_state=s).explain(model, Xte), repeats=1)
            label = f"exact LIME, {p} samples" + (f" (seed {s})" if args.calibration_seeds > 1 else "")
            rows.append({"explainer": label, "images_per_s": len(Xte) / t, **scores(attr.weights, ref)})
            attrs.append((rows[-1], attr))
            log(f"  {rows[-1]['explainer']}: {rows[-1]['median_spearman']:.3f}")

    for label, params in FIRST_ORDER:
        t, attr = timed(lambda: GradientExplainer(**params).explain(model, Xte), repeats=1)
        rows.append({"explainer": label, "images_per_s": len(Xte) / t, **scores(attr.weights, ref)})
        attrs.append((rows[-1], attr))
        log(f"  {label}: {rows[-1]['median_spearman']:.3f}")

    for k in args.cube_fast:
        for fast in (False, True):
            params = {"n_steps": k, "path": "cube", "random_state": 0, "channels_last": fast,
                      "autocast": "bf16" if fast else None}
            GradientExplainer(**params).explain(model, Xte[:16])  # warm-up
            t, attr = timed(lambda: GradientExplainer(**params).explain(model, Xte), repeats=1)
            label = f"cube path, {k} Latin-hypercube blends, " + ("channels_last + bf16" if fast else "fp32")
            rows.append({"explainer": label, "images_per_s": len(Xte) / t, **scores(attr.weights, ref)})
            attrs.append((rows[-1], attr))
            log(f"  {label}: {rows[-1]['median_spearman']:.3f}, {rows[-1]['images_per_s']:.0f} images/s")

    lime_rate = None
    if args.lime_images > 0:
        ref_expl = LimeReferenceExplainer(n_samples=1000, batch_size=10, random_state=0)
        ref_expl.explain(model, Xte[:1])  # warm-up (imports, first sklearn fit)
        t, _ = timed(lambda: ref_expl.explain(model, Xte[:args.lime_images]), repeats=1)
        lime_rate = args.lime_images / t
        rows.append({"explainer": "lime package, defaults (1000 samples, batch_size=10)", "images_per_s": lime_rate})
        log(f"  lime package: {lime_rate:.2f} images/s")

    for spec in args.variants:
        name, _, js = spec.partition("=")
        params = json.loads(js) if js else dict(VARIANTS[name])
        params.setdefault("random_state", args.seed)
        expl = AmortizedLimeExplainer(**params)
        c0, t0 = time.process_time(), time.perf_counter()
        expl.fit(model, Xfit)
        fit_wall, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        t, attr = timed(lambda: expl.explain(model, Xte))
        row = {"explainer": f"amortized ({name}{', ' + json.dumps(params) if params else ''})",
               "images_per_s": len(Xte) / t, "fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu,
               "loss_curve": expl.loss_curve_, **scores(attr.weights, ref)}
        if lime_rate:
            row["speedup_vs_lime"] = row["images_per_s"] / lime_rate
        rows.append(row)
        attrs.append((row, attr))
        log(f"  {row['explainer']}: median Spearman {row['median_spearman']:.3f}, top-3 {row['top3_overlap']:.3f}, "
            f"fit {fit_wall:.0f} s wall / {fit_cpu:.0f} s CPU, {row['images_per_s']:.0f} images/s")

    if args.heldout_masks > 0 and attrs:
        a0 = attrs[0][1]
        ref_row = {"explainer": f"exact LIME, {args.ref_samples} samples (the reference)"}
        ref_attr = Attribution(segments=a0.segments, weights=ref.to(a0.weights.dtype), valid=a0.valid,
                               intercept=a0.intercept, score=a0.score, target=a0.target)
        scored = [(ref_row, ref_attr)] + attrs
        t0 = time.perf_counter()
        for key, rescale in (("heldout_r2", False), ("heldout_r2_rescaled", True)):
            r2 = surrogate_r2(model, Xte, [a for _, a in scored], n_samples=args.heldout_masks, rescale=rescale,
                              random_state=12345)
            for (row, _), v in zip(scored, r2):
                row[key] = float(np.median(v))
        rows.insert(0, ref_row)
        log(f"  held-out R^2 on {args.heldout_masks} masks per image: {time.perf_counter() - t0:.0f} s")

    print()
    print(f"Against exact LIME with {args.ref_samples} samples on {len(Xte)} CIFAR-10 test images "
          f"(4x4 grid, {int(seg.max()) + 1} segments, target = predicted class):")
    print("| explainer | median Spearman | mean | 10% quantile | top-3 overlap | held-out R^2 (rescaled) "
          "| images/s | fit (wall / CPU s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sp = (f"{r['median_spearman']:.3f} | {r['mean_spearman']:.3f} | {r['q10_spearman']:.3f} | "
              f"{r['top3_overlap']:.3f}") if "median_spearman" in r else " | | | "
        r2 = f"{r['heldout_r2']:.3f} ({r['heldout_r2_rescaled']:.3f})" if "heldout_r2" in r else ""
        fit = f"{r['fit_wall_s']:.0f} / {r['fit_cpu_s']:.0f}" if "fit_wall_s" in r else ""
        rate = f"{r['images_per_s']:.1f}" if "images_per_s" in r else ""
        print(f"| {r['explainer']} | {sp} | {r2} | {rate} | {fit} |")
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "model_test_accuracy": acc, "torch": torch.__version__,
              "load_average": os.getloadavg(), "rows": rows}
    tmp = OUT / (args.out + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(OUT / args.out)
    print(f"wrote {OUT / args.out}")


if __name__ == "__main__":
    main()
