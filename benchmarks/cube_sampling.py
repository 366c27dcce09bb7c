"""Where to take input gradients so that they rank segments like LIME: sampling designs.

The mean gradient over blends ``x(m) = b + m * (x - b)`` (keep fraction ``m_s`` per segment)
estimates, segment by segment, the effect of removing it among blends of the others
(``docs/method.md``, section 6).  This script compares, at the same number ``k`` of gradient
passes per image, where the ``k`` blends are taken:

* ``latin hypercube``: ``m`` uniform on the cube, one point per stratum per segment (what
  ``GradientExplainer(path="cube")`` draws);
* ``iid uniform``: ``m`` uniform on the cube, independent points;
* ``antithetic``: pairs ``m`` and ``1 - m``;
* ``binary``: on/off masks (``m`` in {0, 1}, as LIME samples them), gradient at the mask;
* ``straight``: every segment at the same blend ``t`` (integrated gradients, midpoint rule).

Model, images and reference as in ``benchmarks/amortized_fidelity.py`` (SmallCNN trained 3
epochs on 20,000 CIFAR-10 images, 200 test images, 4x4 grid, predicted class, exact LIME with
2,000 samples; all cached under ``runs/benchmarks/`` by that script, computed here if absent).
Scores: median and 10 % quantile of the per-image Spearman correlation with the reference, and
the top-3 overlap.

Usage::

    .venv/bin/python benchmarks/cube_sampling.py [--threads 1] [--points 2 4 8 16]

Prints a table and writes ``runs/benchmarks/cube_sampling.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import amortized_fidelity as af  # noqa: E402
from attribshield.explainers import GridSegmenter, segment_means  # noqa: E402
from attribshield.explainers.gradient import attribute_from_grad, blend_segments, latin_hypercube  # noqa: E402


def blends(design: str, k: int, n: int, s: int, gen: torch.Generator) -> torch.Tensor:
    """``(k, n, s)`` keep fractions per segment for one sampling design."""
    if design == "latin hypercube":
        return latin_hypercube(k, n, s, gen)
    if design == "iid uniform":
        return torch.rand(k, n, s, generator=gen)
    if design == "antithetic":
        u = torch.rand((k + 1) // 2, n, s, generator=gen)
        return torch.cat([u, 1 - u])[:k]
    if design == "binary":
        return (torch.rand(k, n, s, generator=gen) < 0.5).float()
    if design == "straight":
        t = (2 * torch.arange(k, dtype=torch.float32) + 1) / (2 * k)
        return t[:, None, None].expand(k, n, s)
    raise ValueError(f"unknown design {design!r}")


DESIGNS = ("latin hypercube", "iid uniform", "antithetic", "binary", "straight")


def mean_gradient(model, X, fimg, seg, target, keep) -> torch.Tensor:
    """Mean input gradient of ``p_target`` over the blends ``keep`` ``(k, n, s)``."""
    total = torch.zeros_like(X)
    for m in keep:
        xb = blend_segments(X, fimg, seg, m).requires_grad_(True)
        p = torch.softmax(model(xb).double(), 1).gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(p, xb)
        total += g
    return total / len(keep)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--points", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="cube_sampling.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, acc = af.trained_model(20000, 3, print)
    X, _ = af.load(False, args.n_test)
    ref = af.reference(model, X, 2000, "20000x3", print)
    seg = GridSegmenter().segment(X).long()
    fimg = segment_means(X, seg)
    with torch.no_grad():
        target = model(X).argmax(1)
    s = int(seg.max()) + 1

    rows = []
    for design in args.designs:
        for k in args.points:
            keep = blends(design, k, len(X), s, torch.Generator().manual_seed(args.seed))
            grad = mean_gradient(model, X, fimg, seg, target, keep)
            w = attribute_from_grad(X, grad, seg, target).weights
            rows.append({"design": design, "points": k, **af.scores(w, ref)})
            print(f"  {design} x {k}: {rows[-1]['median_spearman']:.3f}", flush=True)

    print(f"\nMean input gradient over k blends, against exact LIME with 2000 samples on {len(X)} "
          f"CIFAR-10 test images (SmallCNN, test accuracy {acc:.3f}):")
    print("| design | points | median Spearman | 10 % quantile | top-3 overlap |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['design']} | {r['points']} | {r['median_spearman']:.3f} | {r['q10_spearman']:.3f} "
              f"| {r['top3_overlap']:.3f} |")
    af.OUT.mkdir(parents=True, exist_ok=True)
    path = af.OUT / args.out
    path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
