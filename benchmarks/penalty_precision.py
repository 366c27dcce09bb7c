"""How accurate is the finite-difference penalty under bf16 autocast, for each step ``h``?

``SpuriousSensitivityPenalty`` estimates the directional derivative ``<grad_x CE, M u>`` of
each image by the central difference ``(CE(x + h M u) - CE(x - h M u)) / (2 h)`` (random signs
``u``, spurious mask ``M``).  Under bf16 autocast the two passes are rounded to 8 bits of
mantissa, and at a small ``h`` their difference drowns in that rounding; that is why the
estimator runs the penalty's passes in fp32 (``docs/performance.md``, "In channels_last +
bf16"), which costs time.  This benchmark measures, per image and for each ``h``:

- the bf16 estimate against the fp32 estimate of the same probes (Pearson correlation, median
  relative error, and the ratio of the penalties ``mean(d^2)``: rounding noise inflates it);
- each estimate against the exact directional derivative (fp32 autograd): a larger ``h``
  adds curvature to the estimate, a smaller one rounding error.

The model runs in eval mode (each image independent of its batch), on the first ``--n`` test
images; the mask is 3 random cells of the 4x4 grid per image, the dose of the full-dose presets.
Prints a table and writes JSON.

    python benchmarks/penalty_precision.py --model runs/recipe/fgsm_rs-s0 --data-root .cache/cifar10 \\
        [--n 512] [--h 0.0025 0.005 0.01 0.02 0.04] [--out runs/benchmarks/penalty_precision.json]

Without ``--model`` it uses an untrained SmallCNN on random images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HS = (0.0025, 0.005, 0.01, 0.02, 0.04)


def grid_mask(n, size, *, cells=3, grid=4, random_state=None, channels=3):
    """``(n, channels, size, size)`` float masks: ``cells`` random cells of a ``grid x grid`` grid per image.

    The library's own pieces, as the full-dose presets use them: :class:`GridSegmenter` cuts the
    grid, :class:`RandomMasker` picks the cells uniformly per image (``random_state`` seeds it),
    :func:`pixel_mask` spreads the choice over the pixels.
    """
    from attribshield.explainers import GridSegmenter
    from attribshield.maskers import RandomMasker, pixel_mask

    if not 1 <= cells <= grid * grid or size % grid:
        raise ValueError(f"cells must be in [1, {grid * grid}] and size a multiple of grid, got {cells}, {size}")
    segments = GridSegmenter(cell=size // grid).segment(torch.zeros(n, 1, size, size))
    masker = RandomMasker(top_k=cells, random_state=random_state)
    selected = masker.select(masker.segment_scores(segments=segments))
    return pixel_mask(segments, selected).expand(n, channels, size, size).contiguous()


def _central_difference(module, X, y, direction, h, dtype):
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = module(torch.cat([X + h * direction, X - h * direction])).float()
    ce = F.cross_entropy(logits, torch.cat([y, y]), reduction="none")
    n = X.shape[0]
    return ((ce[:n] - ce[n:]) / (2.0 * h)).double()


def _exact(module, X, y, direction):
    X = X.clone().requires_grad_(True)
    loss = F.cross_entropy(module(X).float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, X)
    return (grad * direction).flatten(1).sum(1).double()


def _compare(est, ref):
    est, ref = est.numpy(), ref.numpy()
    scale = float(np.median(np.abs(ref)))
    return {"pearson": float(np.corrcoef(est, ref)[0, 1]),
            "median_rel_error": float(np.median(np.abs(est - ref)) / scale) if scale > 0 else float("nan"),
            "penalty_ratio": float(np.mean(est ** 2) / np.mean(ref ** 2))}


def penalty_precision(module, X, y, mask, hs=HS, *, seed=0, batch=128):
    """Per ``h``: the bf16 and fp32 central differences against each other and against the exact value.

    Returns ``{h: {"bf16_vs_fp32": stats, "fp32_vs_exact": stats, "bf16_vs_exact": stats}}``,
    each ``stats`` a dict of ``pearson``, ``median_rel_error`` (the median absolute error over
    the reference's median absolute value) and ``penalty_ratio`` (``mean(est^2) / mean(ref^2)``,
    the penalty's value relative to the reference's).  The same random signs serve every ``h``.
    """
    if not hs or any(h <= 0 for h in hs):
        raise ValueError(f"every h must be > 0, got {list(hs)}")
    if not (X.shape[0] == y.shape[0] == mask.shape[0]) or X.shape[0] < 2:
        raise ValueError(f"X, y and mask need the same length >= 2, got {X.shape[0]}, {y.shape[0]}, {mask.shape[0]}")
    module = module.eval()
    g = torch.Generator().manual_seed(seed)
    direction = mask * torch.randint(0, 2, X.shape, generator=g).float().mul_(2).sub_(1)
    parts = {"exact": [], **{(h, d): [] for h in hs for d in ("fp32", "bf16")}}
    for s in range(0, X.shape[0], batch):
        xb, yb, db = X[s:s + batch], y[s:s + batch], direction[s:s + batch]
        parts["exact"].append(_exact(module, xb, yb, db))
        for h in hs:
            parts[(h, "fp32")].append(_central_difference(module, xb, yb, db, h, None))
            parts[(h, "bf16")].append(_central_difference(module, xb, yb, db, h, torch.bfloat16))
    exact = torch.cat(parts["exact"])
    out = {}
    for h in hs:
        fp32, bf16 = torch.cat(parts[(h, "fp32")]), torch.cat(parts[(h, "bf16")])
        out[h] = {"bf16_vs_fp32": _compare(bf16, fp32), "fp32_vs_exact": _compare(fp32, exact),
                  "bf16_vs_exact": _compare(bf16, exact)}
    return out


def render(results):
    lines = ["| h | bf16 vs fp32: r | rel. error | penalty ratio | fp32 vs exact: r | bf16 vs exact: r "
             "| penalty ratio |", "|---|---|---|---|---|---|---|"]
    for h, r in results.items():
        a, b, c = r["bf16_vs_fp32"], r["fp32_vs_exact"], r["bf16_vs_exact"]
        lines.append(f"| {h:g} | {a['pearson']:.3f} | {a['median_rel_error']:.2f} | {a['penalty_ratio']:.2f} "
                     f"| {b['pearson']:.3f} | {c['pearson']:.3f} | {c['penalty_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a run folder of 'attribshield train' (default: an untrained SmallCNN)")
    p.add_argument("--data-root", help="CIFAR-10 in torchvision's layout (with --model)")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--h", type=float, nargs="+", default=list(HS))
    p.add_argument("--channels-last", action="store_true", help="run the model in channels_last, as training does")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("runs", "benchmarks", "penalty_precision.json"))
    args = p.parse_args(argv)
    if args.n < 2 or any(h <= 0 for h in args.h):
        p.error("--n must be >= 2 and every --h > 0")
    if args.model and not args.data_root:
        p.error("--model needs --data-root")
    torch.set_num_threads(args.threads)
    if args.model:
        from attribshield.data import load_cifar10
        from attribshield.runs import load_run

        clf, _, _ = load_run(args.model)
        module = clf.module_.float()
        X, y = load_cifar10(args.data_root, train=False, verify=False)
        X, y = torch.as_tensor(X[:args.n]), torch.as_tensor(y[:args.n]).long()
    else:
        from attribshield.models import SmallCNN

        module = SmallCNN(num_classes=10)
        g = torch.Generator().manual_seed(args.seed)
        X, y = torch.rand(args.n, 3, 32, 32, generator=g), torch.randint(0, 10, (args.n,), generator=g)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
        X = X.contiguous(memory_format=torch.channels_last)
    mask = grid_mask(X.shape[0], X.shape[-1], random_state=args.seed + 1, channels=X.shape[1])
    results = penalty_precision(module, X, y, mask, args.h, seed=args.seed)
    print(render(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": {str(h): r for h, r in results.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
