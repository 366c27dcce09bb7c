"""The embedded demo: clean training, FGSM-RS adversarial training and the full method on digits.

The rows are the presets' methods (:mod:`attribshield.presets`): ``clean``, ``fgsm_rs``,
``full`` (exact LIME, a quarter of the images re-explained every 5 epochs) and
``full_gradient`` (full dose: fresh first-order masks for half of every batch).

Runs with no data download (scikit-learn's bundled 8x8 digits), in about two minutes on two
CPU cores, and writes ``report.md``, ``results.json`` and ``explanations.png`` to ``out_dir``.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from .attacks import PGD
from .bounds import attribution_lower_bound
from .evaluation import attribution_stability, clean_accuracy, robust_accuracy
from .explainers import LimeExplainer
from .maskers import LimeMasker
from .presets import TrainConfig, build_estimator, load_dataset

__all__ = ["run_demo", "demo_configs", "demo_config"]

EPS = 0.1  # Linf radius on [0, 1] 8x8 digits (about 26/255)


DEMO_METHODS = {"clean": "clean", "fgsm_rs": "fgsm_rs", "full_method": "full", "full_gradient": "full_gradient"}


def demo_config(method: str, eps=EPS, random_state=0) -> TrainConfig:
    """The demo's :class:`~attribshield.presets.TrainConfig` of one method (digits, DigitsNet)."""
    return TrainConfig(dataset="digits", model="digitsnet", method=method, epochs=15, lr=0.05, batch_size=64,
                       eps=eps, seed=random_state, refine_every=5, refine_fraction=0.25, lime_samples=64)


def demo_configs(eps=EPS, random_state=0):
    """The estimators compared by the demo, built by :func:`attribshield.presets.build_estimator`
    (same model, epochs and seed; the rows differ only in their components)."""
    return {name: build_estimator(demo_config(method, eps, random_state), n_classes=10, verbose=0)
            for name, method in DEMO_METHODS.items()}


def _explanation_figure(images, rows, path):
    import matplotlib  # optional plotting backend, loaded only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.6 * n, 1.7 * (1 + len(rows))), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j, 0], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("image", fontsize=8)
    for i, (label, maps) in enumerate(rows, start=1):
        for j in range(n):
            m = maps[j, 0]
            lim = float(np.abs(m).max()) or 1.0
            axes[i, j].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[i, 0].set_ylabel(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("LIME weights for the true class (red: for, blue: against)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(out_dir="runs/demo", eps=EPS, n_eval=100, random_state=0, verbose=True) -> dict:
    """Train the demo models on digits, evaluate them and write the report.

    Returns the results dict (also written to ``out_dir/results.json``).
    """
    say = print if verbose else (lambda *a, **k: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 8x8 images: one thread is fastest (no OpenMP barriers per tiny op)
    os.makedirs(out_dir, exist_ok=True)
    X_tr, y_tr, _ = load_dataset(demo_config("clean", eps, random_state), train=True)
    X_te, y_te, _ = load_dataset(demo_config("clean", eps, random_state), train=False)
    X_ev, y_ev = torch.as_tensor(X_te[:n_eval]), torch.as_tensor(y_te[:n_eval])
    pgd = PGD(eps=eps, steps=20, restarts=2, random_state=random_state)
    explainer = LimeExplainer(n_samples=100, sampling="foldover", random_state=random_state)
    spurious = LimeMasker(criterion="irrelevant", top_k=3)

    results, fitted = {}, {}
    say(f"attribshield demo: digits ({len(X_tr)} train / {len(X_te)} test, 1x8x8), Linf eps={eps}")
    for name, clf in demo_configs(eps, random_state).items():
        t0 = time.perf_counter()
        clf.fit(X_tr, y_tr)
        wall = time.perf_counter() - t0
        refine = float(np.nansum([row.get("refine_dur", 0.0) for row in clf.history]))
        module = clf.module_
        sel = spurious.find_spurious(module, X_ev, y_ev, explainer)
        bound = attribution_lower_bound(module, X_ev, y_ev, sel.pixel_mask(), norm="Linf", radius=eps,
                                        n_samples=8, random_state=random_state)
        stab = attribution_stability(module, X_ev, y_ev, pgd, explainer, k=3)
        results[name] = {
            "clean_accuracy": clean_accuracy(module, X_te, y_te),
            "pgd_accuracy": robust_accuracy(module, X_te, y_te, pgd),
            "topk_stability": stab["mean_topk_intersection"],
            "spearman_stability": stab["mean_spearman"],
            "mean_lower_bound": float(np.mean(bound["bound"])),
            "train_seconds": wall,
            "refine_seconds": refine,
        }
        fitted[name] = clf
        r = results[name]
        say(f"  {name:<12} clean {r['clean_accuracy']:.3f}  PGD-20 {r['pgd_accuracy']:.3f}  "
            f"top-3 stability {r['topk_stability']:.2f}  bound {r['mean_lower_bound']:.4f}  {wall:.1f} s")

    # explanations of the same test images: clean model vs refined model
    idx = np.arange(8)
    Xs, ys = X_ev[idx], y_ev[idx]
    rows = []
    for name, label in [("clean", "clean model"), ("fgsm_rs", "FGSM-RS"), ("full_method", "refined"),
                        ("full_gradient", "refined (full dose)")]:
        att = explainer.explain(fitted[name].module_, Xs, ys)
        rows.append((label, att.to_pixels().cpu().numpy()))
    png = os.path.join(out_dir, "explanations.png")
    _explanation_figure(Xs.numpy(), rows, png)

    header = ("| run | clean acc | PGD-20 acc (eps=%g) | top-3 stability | Spearman stability | "
              "mean lower bound | train time (s) | of which refinement (s) |" % eps)
    lines = [header, "|" + "---|" * 8]
    for name, r in results.items():
        lines.append(f"| {name} | {r['clean_accuracy']:.3f} | {r['pgd_accuracy']:.3f} | {r['topk_stability']:.2f} | "
                     f"{r['spearman_stability']:.2f} | {r['mean_lower_bound']:.4f} | {r['train_seconds']:.1f} | "
                     f"{r['refine_seconds']:.1f} |")
    table = "\n".join(lines)
    md = [
        "# attribshield demo (digits)",
        "",
        f"Same DigitsNet, 15 epochs, seed {random_state}; Linf eps = {eps}. PGD: 20 steps, 2 restarts. "
        f"Stability: top-3 LIME segment overlap and Spearman between x and its PGD twin ({n_eval} test "
        "images). Lower bound: attribution-aware estimate (docs/theory.md), spurious = LIME-irrelevant segments.",
        "",
        table,
        "",
        "![explanations](explanations.png)",
        "",
    ]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    say("")
    say(table)
    say(f"\nreport: {os.path.join(out_dir, 'report.md')}  figure: {png}")
    torch.set_num_threads(threads)
    return results
