"""Two ideas for fewer LIME samples at equal fidelity that did NOT pay off (kept to reproduce).

1. **Kernel importance sampling.**  LIME weights a mask with ``k`` of ``S`` segments kept by
   ``w(k) = exp(-(1 - sqrt(k/S))^2 / (2 * 0.25^2))`` while i.i.d. sampling draws ``k`` from
   Binomial(S, 1/2).  Drawing ``k`` from ``q(k) ~ p(k) w(k)`` (stratified on q's CDF) and
   weighting each sample by ``p(k) w(k) / q(k)`` (a constant) leaves the weighted regression's
   target unchanged and concentrates samples where the kernel puts weight.  Variants: ``q ~
   p w^0.5``; subsets balanced by cyclic windows over a random permutation.
2. **Per-image early stopping.**  Foldover blocks of 64 samples; an image stops once the
   Spearman correlation of its weights after two consecutive blocks reaches ``tau``.  Compared
   with fixed budgets at the same median / mean fidelity.

Fidelity = Spearman against the 10,000-sample reference of ``benchmarks/lime_fidelity.py``
(same model, images, grid and reference, cached in ``.cache/``: run that script first with the
same ``--images``).  Prints two tables; writes ``runs/benchmarks/lime_negative_ideas.json``.

    .venv/bin/python benchmarks/lime_negative_ideas.py --images 48 --seeds 3
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from attribshield.explainers import GridSegmenter, LimeExplainer, draw_masks, lime_kernel, weighted_ridge  # noqa: E402
from attribshield.explainers.lime import _fill_image  # noqa: E402
from lime_fidelity import CACHE, load_cifar, spearman, trained_small_cnn  # noqa: E402


def kernel_masks(n, n_samples, s, gen, power=1.0, balanced=False, width=0.25):
    """Masks with importance-sampled counts and their regression weights ``p w / q``."""
    k = torch.arange(s + 1, dtype=torch.float64)
    p = torch.exp(torch.lgamma(torch.tensor(s + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(s - k + 1) - s * math.log(2))
    w = torch.exp(-((1 - torch.sqrt(k / s)) ** 2) / width**2 / 2)
    q = p * w**power
    q = q / q.sum()
    rest = n_samples - 1
    u = (torch.arange(rest, dtype=torch.float64)[None] + torch.rand(n, 1, generator=gen, dtype=torch.float64)) / rest
    counts = torch.searchsorted(q.cumsum(0), u.contiguous()).clamp(max=s)
    if balanced:  # consecutive rows with the same count take consecutive cyclic windows
        perm = torch.argsort(torch.rand(n, 1, s, generator=gen), dim=2).expand(n, rest, s)
        pos = (torch.arange(s)[None, None] - torch.arange(rest)[None, :, None]) % s
        keep = torch.zeros(n, rest, s, dtype=torch.bool).scatter_(2, perm, pos < counts[..., None])
    else:
        rank = torch.rand(n, rest, s, generator=gen).argsort(2).argsort(2)
        keep = rank < counts[..., None]
    keep = torch.cat([torch.ones(n, 1, s, dtype=torch.bool), keep], 1)
    sw = torch.cat([torch.ones(n, 1, dtype=torch.float64), (p * w / q)[counts]], 1)
    return keep, sw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model, _ = trained_small_cnn(120.0)
    X, _ = load_cifar("test", args.images)
    seg = GridSegmenter().segment(X)
    target = model(X).argmax(1)
    ref_path = CACHE / f"lime_fidelity_ref_120s_{args.images}img_10000.pt"
    if not ref_path.exists():
        raise SystemExit(f"{ref_path} missing: run benchmarks/lime_fidelity.py --images {args.images} first")
    ref = torch.load(ref_path)
    n, s = X.shape[0], 16
    ex = LimeExplainer(batch_size=500)
    fimg = _fill_image(X, seg, "mean")
    valid = torch.ones(n, s, dtype=torch.bool)

    def outputs(keep):
        return torch.cat([ex._sample_outputs(model, X[a:a + 8], fimg[a:a + 8], seg[a:a + 8], keep[a:a + 8],
                                             target[a:a + 8]) for a in range(0, n, 8)])

    # 1. kernel importance sampling against lime and foldover
    sizes = (100, 200, 500)
    table1 = {}
    for name in ("lime", "foldover", "kernel", "kernel q~p*w^0.5", "kernel balanced"):
        table1[name] = {}
        for size in sizes:
            rho = []
            for seed in range(args.seeds):
                gen = torch.Generator().manual_seed(seed)
                if name in ("lime", "foldover"):
                    keep = draw_masks(n, size, s, method=name, generator=gen)
                    sw = lime_kernel(keep, valid, 0.25)
                else:
                    keep, sw = kernel_masks(n, size, s, gen, power=0.5 if "0.5" in name else 1.0,
                                            balanced="balanced" in name)
                coef, _, _ = weighted_ridge(keep, outputs(keep), sw, valid, 1.0)
                rho.append(spearman(coef, ref))
            table1[name][size] = float(torch.cat(rho).median())
    print("| design | " + " | ".join(f"n={z}" for z in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, row in table1.items():
        print(f"| {name} | " + " | ".join(f"{row[z]:.3f}" for z in sizes) + " |")

    # 2. per-image early stopping on foldover blocks of 64
    rounds, block = 16, 64
    fixed = {r: [] for r in range(rounds)}
    rules = {}
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(seed)
        blocks = [draw_masks(n, block + 1, s, method="foldover", generator=gen)[:, 1:] for _ in range(rounds)]
        keep = torch.cat([torch.ones(n, 1, s, dtype=torch.bool)] + blocks, 1)
        y, sw = outputs(keep), lime_kernel(keep, valid, 0.25)
        W = torch.stack([weighted_ridge(keep[:, :1 + block * r], y[:, :1 + block * r], sw[:, :1 + block * r],
                                        valid, 1.0)[0] for r in range(1, rounds + 1)], 1)
        rho = torch.stack([spearman(W[:, r], ref) for r in range(rounds)], 1)
        for r in range(rounds):
            fixed[r].append(rho[:, r])
        stab = torch.stack([torch.zeros(n, dtype=torch.float64)]
                           + [spearman(W[:, r], W[:, r - 1]) for r in range(1, rounds)], 1)
        for tau in (0.97, 0.98, 0.99, 0.995):
            ok = stab >= tau
            ok[:, -1] = True
            stop = ok.double().argmax(1)
            rules.setdefault(tau, []).append(((1 + block * (stop + 1)).double(), rho[torch.arange(n), stop]))
    table2 = {}
    print("\n| rule | mean samples | median Spearman | mean Spearman |")
    print("|---|---|---|---|")
    for r in range(0, 8):
        v = torch.cat(fixed[r])
        table2[f"fixed {1 + block * (r + 1)}"] = (1 + block * (r + 1), float(v.median()), float(v.mean()))
    for tau, lst in rules.items():
        ns = torch.cat([a for a, _ in lst])
        v = torch.cat([b for _, b in lst])
        table2[f"stop at tau={tau}"] = (float(ns.mean()), float(v.median()), float(v.mean()))
    for name, (m, med, mean) in table2.items():
        print(f"| {name} | {m:.0f} | {med:.4f} | {mean:.4f} |")
    out = REPO / "runs" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lime_negative_ideas.json").write_text(json.dumps(dict(images=args.images, seeds=args.seeds,
                                                                  kernel=table1, early_stopping=table2), indent=2))


if __name__ == "__main__":
    main()
