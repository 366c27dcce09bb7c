"""Where the amortized explainer's time goes in a training step, against the step itself.

On an untrained SmallCNN and random 32x32 images (timings do not depend on the weights), the
CPU time of each part of ``AmortizedLimeExplainer.explain`` for the ``--rows`` rows a step
explains (the classifier's clean pass, the input gradient at the half-way blend, the
explainer network), one ``explain`` call of twice as many rows against two calls (the ``x``
and ``x_adv`` explanations of the ``'combined'`` criterion), and an FGSM-RS training step
(the attack, then a forward and backward pass in train mode) of a batch of ``2 * rows``
images. Process CPU time on one intra-op thread (``--threads``), medians over ``--repeats``;
prints a table and writes JSON.

    python benchmarks/amortized_passes.py [--rows 64] [--repeats 10] [--out runs/benchmarks/amortized_passes.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu(fn, repeats):
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return statistics.median(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64, help="rows explained per call (half of a batch of 128)")
    p.add_argument("--size", type=int, default=32, help="image side (CIFAR-10: 32)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join("runs", "benchmarks", "amortized_passes.json"))
    args = p.parse_args(argv)
    if args.rows < 1 or args.repeats < 1 or args.threads < 1 or args.size < 4:
        p.error("--rows, --repeats and --threads must be >= 1 and --size >= 4")

    import torch

    from attribshield.attacks import FGSM
    from attribshield.explainers import AmortizedLimeExplainer
    from attribshield.explainers._lime_math import segment_means
    from attribshield.models import SmallCNN

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.rows
    model = SmallCNN(num_classes=10).eval()
    X = torch.rand(2 * n, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 10, (2 * n,), generator=g)
    expl = AmortizedLimeExplainer(random_state=0).partial_fit(model, X[:8], y[:8])
    Xa, ya = X[:n], y[:n]
    seg = expl._segments(Xa, None)
    fimg = segment_means(Xa, seg)
    probs, _ = expl._clean_pass(model, Xa, ya)
    grad, _ = expl._blend_gradient(model, Xa, fimg, ya)
    valid = torch.ones(n, int(seg.amax()) + 1, dtype=torch.bool)

    def network():
        with torch.no_grad():
            expl._surrogate(Xa, seg, valid, fimg, probs, ya, grad)

    attack = FGSM(eps=8 / 255, step_size=10 / 255, random_start=True, random_state=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def fgsm_rs_step():
        model.train()
        X_adv = attack.perturb(model, X, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X_adv), y).backward()
        model.eval()

    rows = {
        f"explain {n} rows": _cpu(lambda: expl.explain(model, Xa, ya), args.repeats),
        "  classifier clean pass": _cpu(lambda: expl._clean_pass(model, Xa, ya), args.repeats),
        "  half-way input gradient": _cpu(lambda: expl._blend_gradient(model, Xa, fimg, ya), args.repeats),
        "  explainer network": _cpu(network, args.repeats),
        f"explain {n} rows, twice": _cpu(lambda: (expl.explain(model, Xa, ya), expl.explain(model, X[n:], y[n:])),
                                         args.repeats),
        f"explain {2 * n} rows at once": _cpu(lambda: expl.explain(model, X, y), args.repeats),
        f"FGSM-RS training step, batch {2 * n}": _cpu(fgsm_rs_step, args.repeats),
    }
    step = rows[f"FGSM-RS training step, batch {2 * n}"]
    w = max(len(k) for k in rows) + 2
    print(f"{'part':<{w}}{'CPU s':>9}{'vs step':>9}")
    for k, v in rows.items():
        print(f"{k:<{w}}{v:>9.3f}{v / step:>9.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "cpu_s": {k.strip(): v for k, v in rows.items()}}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
