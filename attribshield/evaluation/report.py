"""Evaluation reports: one results dict -> JSON + Markdown + PNG figures.

:func:`evaluate_model` runs the suite the CLI's ``attribshield evaluate`` exposes and
:func:`write_report` writes what it returns (or any dict with the same keys).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .._params import Integral, check_param
from .._utils import channels_last_copy, check_flag, to_bits
from .._validation import check_images, check_labels
from ..attacks import PGD
from ..base import get_module
from ..bounds import attribution_lower_bound, bound_violation_rate, minimal_adversarial_distortion
from ..explainers import LimeExplainer
from ..explainers.segmentation import default_segmenter
from .corruptions import corruption_accuracy
from .occlusion import _check_ks, occlusion_accuracy
from .robust import clean_accuracy, robustness_report
from .stability import attribution_stability

__all__ = ["evaluate_model", "write_report", "DEFAULT_OCCLUSION"]

#: occlusion sizes of ``evaluate_model(occlusion=True)`` and of ``attribshield evaluate``
DEFAULT_OCCLUSION = (1, 2, 3, 4)


def _jsonable(obj):
    """Convert numpy/torch values and tuple keys so that ``json.dumps`` accepts the result."""
    if isinstance(obj, dict):
        return {(str(k) if not isinstance(k, str) else k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return repr(obj)


def _fmt(v, digits=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


def _fill_words(fill) -> str:
    return "each with its own mean colour" if fill == "mean" else f"with the constant {fill}"


def _markdown(results: dict) -> str:
    lines = ["# attribshield evaluation report", ""]
    rob = results.get("robustness")
    if rob:
        lines += [f"Threat model: {rob['norm']}, eps = {rob['eps']:.6g}; {rob['n_samples']} test points.", "",
                  "| metric | accuracy |", "|---|---|"]
        for key, label in (("clean_accuracy", "clean"), ("pgd_accuracy", "PGD (restarts)"),
                           ("autoattack_accuracy", "AutoAttack (torchattacks)"),
                           ("square_accuracy", "Square (black-box)"),
                           ("robust_accuracy", "worst case over attacks")):
            if rob.get(key) is not None:
                lines.append(f"| {label} | {_fmt(rob[key])} |")
        s = rob.get("settings", {})
        lines += ["", f"PGD: {s.get('pgd_steps')} steps, {s.get('pgd_restarts')} restarts, "
                      f"step {_fmt(s.get('pgd_step_size'), 6)}; "
                      + (f"Square: {s['square_queries']} queries." if s.get("square_queries") else "Square: not run."),
                  ""]
        curve = rob.get("eps_curve")
        if curve:
            lines += ["| eps | " + " | ".join(f"{e:.4g}" for e in curve["eps"]) + " |",
                      "|---|" + "---|" * len(curve["eps"]),
                      "| PGD accuracy | " + " | ".join(_fmt(a) for a in curve["accuracy"]) + " |", ""]
        gm = rob.get("gradient_masking", {})
        if gm.get("suspected"):
            lines += ["**Suspected gradient masking:**", ""] + [f"- {r}" for r in gm["reasons"]] + [""]
        else:
            lines += ["No sign of gradient masking in the checks run (black-box vs white-box, "
                      "monotonicity in eps, accuracy at a very large eps).", ""]
    occ = results.get("occlusion")
    if occ:
        modes = [m for m in ("random", "attributed") if occ.get(m) is not None]
        lines += ["## Occlusion", "",
                  f"Accuracy when k of each image's {occ.get('segments', '?')} segments are filled "
                  f"({_fill_words(occ.get('fill', 'mean'))}): chosen at random per image, or the model's own "
                  f"top-k segments by {occ.get('explainer', 'attribution')} for its clean prediction. "
                  f"Clean accuracy: {_fmt(occ.get('clean_accuracy'))}.", "",
                  "| k | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
        for i, k in enumerate(occ["k"]):
            lines.append(f"| {k} | " + " | ".join(_fmt(occ[m][i]) for m in modes) + " |")
        lines.append("")
    cor = results.get("corruptions")
    if cor:
        sevs = cor["severities"]
        lines += ["## Common corruptions", "", f"Mean corruption accuracy: {_fmt(cor['mean'])}", "",
                  "| corruption | " + " | ".join(f"s{s}" for s in sevs) + " | mean |",
                  "|---|" + "---|" * (len(sevs) + 1)]
        for c in cor["corruptions"]:
            row = cor["table"][c]
            lines.append(f"| {c} | " + " | ".join(_fmt(row[s]) for s in sevs)
                         + f" | {_fmt(cor['per_corruption'][c])} |")
        lines.append("")
    st = results.get("stability")
    if st:
        lines += ["## Attribution stability", "",
                  f"Top-{st['k']} segment intersection: {_fmt(st['mean_topk_intersection'])}; "
                  f"Spearman of segment weights: {_fmt(st['mean_spearman'])}.", ""]
    bd = results.get("bounds")
    if bd:
        b, d = np.asarray(bd["bound"], float), np.asarray(bd["distortion"], float)
        # misclassified points have bound and distortion 0: the medians describe the others
        ok = np.asarray(bd["margin"], float) > 0 if "margin" in bd else np.ones(len(b), bool)
        fin = np.isfinite(d) & ok
        lines += ["## Attribution-aware lower bound", "",
                  f"Norm {bd['norm']}, radius {bd['radius']:.4g}; {len(b)} points, {int(ok.sum())} "
                  "correctly classified (the medians are over those).", "",
                  f"- median bound: {_fmt(float(np.median(b[ok])) if ok.any() else float('nan'), 5)}",
                  f"- median distortion found: {_fmt(float(np.median(d[fin])) if fin.any() else float('nan'), 5)} "
                  f"({int((~np.isfinite(d) & ok).sum())} points without an adversarial example up to eps_max)",
                  f"- violation rate (bound above the distortion found): {_fmt(bd['violation_rate'])}",
                  "", "The bound uses sampled Lipschitz constants: it is an estimate, not a certificate.", ""]
    return "\n".join(lines)


def _accuracy_axis(ax) -> None:
    """The y axis of an accuracy in [0, 1] (a little margin), with a light grid."""
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def _save_figure(fig, ax, path) -> None:
    """Add the legend, lay out, write ``path`` at 120 dpi and close ``fig``."""
    import matplotlib.pyplot as plt

    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curve(results, path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rob = results["robustness"]
    curve = rob["eps_curve"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(curve["eps"], curve["accuracy"], "o-", label="PGD")
    for key, mk, label in (("autoattack_accuracy", "s", "AutoAttack"), ("square_accuracy", "^", "Square")):
        if rob.get(key) is not None:
            ax.plot([rob["eps"]], [rob[key]], mk, label=label)
    ax.set_xlabel(f"eps ({rob['norm']})")
    _accuracy_axis(ax)
    _save_figure(fig, ax, path)


def _plot_corruptions(results, path):
    import matplotlib.pyplot as plt

    cor = results["corruptions"]
    names = cor["corruptions"]
    vals = [cor["per_corruption"][c] for c in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.4))
    ax.bar(range(len(names)), vals)
    ax.axhline(cor["mean"], color="k", lw=1, ls="--", label=f"mean {cor['mean']:.3f}")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (mean over severities)")
    ax.set_ylim(0, 1)
    _save_figure(fig, ax, path)


def _plot_occlusion(results, path):
    import matplotlib.pyplot as plt

    occ = results["occlusion"]
    ks = list(occ["k"])
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for mode, mk in (("random", "o-"), ("attributed", "s-")):
        if occ.get(mode) is None:
            continue
        xs, ys = ks, list(occ[mode])
        if 0 not in ks and occ.get("clean_accuracy") is not None:  # the curves start at the clean accuracy
            xs, ys = [0] + xs, [occ["clean_accuracy"]] + ys
        ax.plot(xs, ys, mk, label=mode)
    ax.set_xlabel(f"occluded segments k (of {occ.get('segments', '?')})")
    ax.set_xticks(sorted(set([0] + ks)))
    _accuracy_axis(ax)
    _save_figure(fig, ax, path)


def _plot_bounds(results, path):
    import matplotlib.pyplot as plt

    bd = results["bounds"]
    b, d = np.asarray(bd["bound"], float), np.asarray(bd["distortion"], float)
    keep = np.isfinite(d) & (b > 0)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(d[keep], b[keep], s=10)
    hi = max(float(d[keep].max()) if keep.any() else 1.0, float(b.max()) if b.size else 1.0)
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="bound = distortion")
    ax.set_xlabel(f"smallest distortion found ({bd['norm']})")
    ax.set_ylabel("lower bound")
    ax.set_title(f"violation rate {bd['violation_rate']:.3f}" if bd.get("violation_rate") is not None else "")
    _save_figure(fig, ax, path)


def write_report(results: dict, out_dir) -> dict:
    """Write ``results`` as ``report.json``, ``report.md`` and PNG figures into ``out_dir``.

    Parameters
    ----------
    results : dict
        Any of the keys ``robustness`` (a :func:`robustness_report` dict), ``occlusion``
        (``k``, ``random`` and/or ``attributed``: one accuracy per ``k``, optionally
        ``clean_accuracy``, ``segments``, ``fill``, ``explainer``; what
        :func:`evaluate_model` stores), ``corruptions`` (a :func:`corruption_accuracy` dict),
        ``stability`` (an :func:`attribution_stability` dict) and ``bounds`` (``bound``,
        ``distortion``, ``norm``, ``radius``, ``violation_rate``); other keys are copied
        into the JSON.
    out_dir : str or path-like
        Created if needed.

    Returns
    -------
    paths : dict
        ``{"json": Path, "markdown": Path, "figures": list of Path}``.  Figures:
        ``accuracy_vs_eps.png`` (with ``robustness``), ``occlusion.png`` (accuracy vs
        ``k``, one line per mode, with ``occlusion``), ``corruptions.png`` (with
        ``corruptions``), ``bound_vs_distortion.png`` (with ``bounds``).
    """
    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = dict(results)
    if isinstance(clean.get("stability"), dict):  # Attribution objects are not JSON
        clean["stability"] = {k: v for k, v in clean["stability"].items() if k not in ("clean", "adversarial")}
    json_path = out / "report.json"
    json_path.write_text(json.dumps(_jsonable(clean), indent=2))
    md_path = out / "report.md"
    md_path.write_text(_markdown(clean))
    figures = []
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("Agg")
    try:
        for key, fn, name in (("robustness", _plot_curve, "accuracy_vs_eps.png"),
                              ("occlusion", _plot_occlusion, "occlusion.png"),
                              ("corruptions", _plot_corruptions, "corruptions.png"),
                              ("bounds", _plot_bounds, "bound_vs_distortion.png")):
            if clean.get(key):
                fn(clean, out / name)
                figures.append(out / name)
    finally:
        try:
            matplotlib.use(backend)
        except Exception:  # pragma: no cover - interactive backends may be unavailable
            pass
    return {"json": json_path, "markdown": md_path, "figures": figures}


def _occlusion_section(module, X, y, ks, n_samples, random_state, batch_size, say, progress):
    """Both occlusion modes for every ``k`` (one LIME explanation per image for all ``k``)."""
    n_seg = int(default_segmenter(*X.shape[2:]).segment(X[:1]).max()) + 1
    explainer = LimeExplainer(n_samples=n_samples, sampling="foldover", random_state=random_state)
    say(f"occlusion of k = {', '.join(map(str, ks))} of {n_seg} segments (mean colour fill): random, and "
        f"top-k by LIME ({n_samples} foldover samples) for the clean prediction")
    out = {"k": list(ks), "segments": n_seg, "fill": "mean",
           "explainer": f"LIME ({n_samples} foldover samples)", "random_state": random_state, "per_sample": {}}
    out["clean_accuracy"] = clean_accuracy(module, X, y, batch_size=batch_size)
    for mode in ("random", "attributed"):
        start = time.perf_counter()
        per = occlusion_accuracy(module, X, y, ks, mode=mode, explainer=explainer if mode == "attributed" else None,
                                 random_state=random_state, batch_size=batch_size, return_per_sample=True)
        out[mode] = [float(per[k].mean()) for k in ks]
        out["per_sample"][mode] = [to_bits(per[k]) for k in ks]
        if progress:
            accs = " / ".join(f"{a:.4f}" for a in out[mode])
            print(f"  occlusion ({mode}), k = {'/'.join(map(str, ks))}: {accs} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    return out


def evaluate_model(model, X, y, *, eps, norm="Linf", autoattack=False, cifar10c=None, out_dir=None,
                   n_classes=10, steps=50, restarts=5, step_size=None, n_queries=1000, bounds=False,
                   spurious_mask=None,
                   bound_radius=None, n_bound=64, stability=0, occlusion=None, occlusion_samples=200,
                   random_state=0, batch_size=256, progress=False, channels_last=False):
    """Run the evaluation suite on ``model`` and optionally write the report.

    Parameters
    ----------
    model : torch.nn.Module or fitted RobustAttributionClassifier
    X : array-like of shape (N, C, H, W)
        Test images in [0, 1].
    y : array-like of shape (N,)
    eps : float
        Radius of the threat model.
    norm : {"Linf", "L2"}, default="Linf"
    autoattack : bool, default=False
        Include torchattacks' AutoAttack (slow).
    cifar10c : None, True, or mapping, default=None
        ``True``: corrupt ``X`` on the fly with the 15 CIFAR-10-C corruptions x 5 severities;
        a mapping ``{(name, severity): array}`` (from
        :func:`attribshield.data.cifar10c.load_cifar10c`, labels ``y``): use it as is.
    out_dir : str or path-like, optional
        Write ``report.json``, ``report.md`` and figures there (:func:`write_report`).
    n_classes : int, default=10
    steps, restarts, n_queries
        PGD steps and restarts, Square queries (``n_queries=0`` skips the Square attack, for
        example when a stronger suite such as AutoAttack, which ends with Square, is run).
    step_size : float or None, default=None
        PGD step; ``None``: ``2.5 * eps / steps`` (Madry et al.'s rule).
    bounds : bool, default=False
        Also estimate the attribution-aware lower bound and the smallest distortion found on
        the first ``n_bound`` points.  Without ``spurious_mask``, the spurious pixels are the
        segments whose LIME weight for the true class is <= 0 (DESIGN.md's "irrelevant"
        criterion), from a 200-sample :class:`~attribshield.explainers.LimeExplainer`.
    spurious_mask : bool array-like of shape (N, 1, H, W), optional
    bound_radius : float, optional
        Ball radius for the bound; default ``4 * eps``.
    n_bound : int, default=64
    stability : int, default=0
        Also compare LIME explanations (500 foldover samples, true class) of the first
        ``stability`` images with those of their PGD adversarial examples
        (:func:`attribution_stability`: top-3 overlap and Spearman); 0 skips it.
    occlusion : sequence of int, bool or None, default=None
        Also the accuracy when ``k`` of each image's segments (a 4x4 grid) are filled with
        their mean colour, for each ``k`` in the sequence (e.g. ``(1, 2, 3, 4)``; ``True``
        means that one), in both modes of :func:`occlusion_accuracy`: random segments, and
        the model's own top-k segments by LIME for its clean prediction.  ``None`` or
        ``False`` skips it.
    occlusion_samples : int, default=200
        LIME samples per image (foldover design) for the attributed occlusion: one
        explanation per image serves every ``k``.
    random_state : int, default=0
    batch_size : int, default=256
    progress : bool, default=False
        Report the stages on stderr (each with its result and duration, the occlusion
        stages with one accuracy per ``k``) and show a progress bar over the corruption
        blocks.
    channels_last : bool, default=False
        Evaluate a copy of the module stored in ``torch.channels_last`` format (faster
        convolutions; the same accuracies up to float rounding, see
        :func:`robustness_report`).  The caller's module is not modified.

    Returns
    -------
    results : dict
        ``robustness`` (see :func:`robustness_report`), and ``occlusion`` /
        ``corruptions`` / ``bounds`` / ``stability`` when requested; ``paths`` (from
        :func:`write_report`) when ``out_dir`` is given.  ``occlusion`` holds ``k``,
        ``random`` and ``attributed`` (one accuracy per ``k``), ``clean_accuracy``,
        ``segments``, ``fill``, ``explainer``, ``random_state`` and ``per_sample``
        (``{mode: one "0"/"1" string per k}``, as in :func:`robustness_report`).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    >>> X = torch.rand(4, 1, 8, 8)
    >>> y = model(X).argmax(1)
    >>> res = evaluate_model(model, X, y, eps=0.01, steps=2, restarts=1, n_queries=5,
    ...                      occlusion=(1, 2), occlusion_samples=20)
    >>> res["occlusion"]["k"], len(res["occlusion"]["attributed"])
    ([1, 2], 2)
    """
    check_param("evaluate_model", "stability", stability, [Integral(0, None)])
    check_param("evaluate_model", "n_queries", n_queries, [Integral(0, None)])
    channels_last = check_flag(channels_last, "channels_last")
    Xt = check_images(X)
    yt = check_labels(y, Xt.shape[0])
    occ_k = None
    if occlusion is True:
        occlusion = DEFAULT_OCCLUSION
    if occlusion is not None and occlusion is not False:
        occ_k, _ = _check_ks(occlusion if isinstance(occlusion, (list, tuple, range, np.ndarray)) else [occlusion],
                             "evaluate_model")
        check_param("evaluate_model", "occlusion_samples", occlusion_samples, [Integral(2, None)])
        n_seg = int(default_segmenter(*Xt.shape[2:]).segment(Xt[:1]).max()) + 1
        if max(occ_k) > n_seg:
            raise ValueError(f"occlusion k={max(occ_k)} is larger than the number of segments ({n_seg})")
    module = get_module(model)
    if channels_last:
        module = channels_last_copy(module)  # once, shared by every stage
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    say(f"evaluating {len(Xt)} images: clean, PGD ({steps} steps x {restarts} restarts), "
        f"{f'Square ({n_queries} queries), ' if n_queries else ''}accuracy vs eps{', AutoAttack' if autoattack else ''}"
        f"{' (channels_last)' if channels_last else ''}")
    results = {"robustness": robustness_report(module, Xt, yt, eps, norm, steps=steps, restarts=restarts,
                                               step_size=step_size, autoattack=autoattack, n_classes=n_classes,
                                               square=n_queries > 0, n_queries=max(int(n_queries), 1),
                                               random_state=random_state, batch_size=batch_size,
                                               progress=progress)}
    results["robustness"]["settings"]["channels_last"] = channels_last
    if occ_k is not None:
        results["occlusion"] = _occlusion_section(module, Xt, yt, occ_k, int(occlusion_samples), random_state,
                                                  batch_size, say, progress)
    if cifar10c is not None and cifar10c is not False:
        if cifar10c is True:
            cor = corruption_accuracy(module, Xt.cpu().numpy(), yt, random_state=random_state,
                                      batch_size=batch_size, progress=progress, return_per_sample=True)
        else:
            cor = corruption_accuracy(module, cifar10c, y, batch_size=batch_size, progress=progress,
                                      return_per_sample=True)
        # per-image records (0/1 strings) for paired tests: corruption_records reads them back
        cor["per_sample"] = {c: {s: to_bits(ok) for s, ok in v.items()} for c, v in cor["per_sample"].items()}
        results["corruptions"] = cor
    if bounds:
        say(f"lower bound and minimal distortion on {min(n_bound, len(Xt))} images")
        Xb, yb = Xt[:n_bound], yt[:n_bound]
        if spurious_mask is None:
            attr = LimeExplainer(n_samples=200, random_state=random_state).explain(module, Xb, yb)
            spurious_seg = (attr.weights <= 0) & attr.valid
            spurious_mask = torch.gather(spurious_seg, 1, attr.segments.flatten(1)).view(
                Xb.shape[0], 1, *Xb.shape[2:]).cpu()
        else:
            spurious_mask = spurious_mask[:n_bound]
        radius = float(bound_radius) if bound_radius is not None else 4 * float(eps)
        lb = attribution_lower_bound(module, Xb, yb, spurious_mask, norm=norm, radius=radius,
                                                  random_state=random_state, batch_size=batch_size)
        md = minimal_adversarial_distortion(module, Xb, yb, norm=norm, eps_max=radius,
                                                         random_state=random_state, batch_size=batch_size)
        lb["distortion"] = md["distortion"]
        lb["violation_rate"] = bound_violation_rate(lb["bound"], md["distortion"])
        results["bounds"] = lb
    if stability:
        m = min(int(stability), len(Xt))
        say(f"attribution stability on {m} images (LIME 500 foldover samples, PGD-{steps})")
        results["stability"] = attribution_stability(
            module, Xt[:m], yt[:m], PGD(eps=eps, norm=norm, steps=steps, random_state=random_state),
            LimeExplainer(n_samples=500, sampling="foldover", random_state=random_state), batch_size=batch_size)
    if out_dir is not None:
        results["paths"] = {k: (str(v) if not isinstance(v, list) else [str(p) for p in v])
                            for k, v in write_report(results, out_dir).items()}
    return results
