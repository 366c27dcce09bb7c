"""The catastrophic-overfitting campaign: which single-step recipes collapse, and does masking help?

FGSM adversarial training with a random start (FGSM-RS) can *catastrophically overfit*: within an
epoch, accuracy under PGD falls to about 0 while accuracy under FGSM jumps up (Wong, Rice and
Kolter, 2020).  It happens at large radii or long steps, so two settings provoke it:

* ``16:1.25``: eps = 16/255, FGSM step 1.25 eps (the "fast" recipe at twice its radius);
* ``8:2``: eps = 8/255, FGSM step 2 eps.

Arms (the presets of ``attribshield.presets`` with the setting's attacker):

==================  =========================================================================
``fgsm_rs``         FGSM-RS, step ``ratio * eps``
``nfgsm``           N-FGSM (``attacks.NFGSM``: noise 2 eps, step eps, no projection)
``gradalign``       FGSM-RS + ``regularizers.GradAlign`` (weight: the setting's third field)
``full_gradient``   FGSM-RS + online first-order LIME masks + the spurious-gradient penalty
                    (``full_gradient-<criterion>`` picks the masker's criterion)
``random_mask``     FGSM-RS + as many segments masked at random (the dose control)
==================  =========================================================================

Every run uses the one-cycle learning rate (``attribshield.callbacks.one_cycle``; peak
``--set lr=...``, 0.2 by default as in the recipe), trains on the first ``--train`` images
(10,000) for ``--epochs`` epochs (30), into the run folder ``<out>/<setting>/<arm>-s<seed>/``
(:mod:`attribshield.runs`: a checkpoint after every epoch; an interrupted campaign resumes
where it stopped).  ``attribshield.callbacks.RobustnessMonitor`` records clean, FGSM
and PGD-10 accuracy on 512 training images after every epoch (in ``history.json``), and
``catastrophic_overfitting`` reads the collapse from them (PGD accuracy 0.3 below its best
while FGSM accuracy leads it by 0.3; ``--drop``).  At the end: clean and PGD-50 accuracy on the
first ``--n-test`` test images (1,000; Linf, step 2.5 eps / 50, one random start, seed 0),
per-image records in ``eval_n<N>_pgd<steps>.npz`` and exact McNemar tests against ``fgsm_rs``
(discordant pairs pooled over the seeds).

Prints every run's curves and whether it collapsed; writes ``<out>/summary.json``.

    .venv/bin/python benchmarks/overfitting_experiment.py --data-root .cache/cifar10 --seeds 0 1 \\
        --device cuda --set bf16=true channels_last=true
    .venv/bin/python benchmarks/overfitting_experiment.py --smoke --out /tmp/co-smoke   # digits, seconds

The GradAlign weights (0.2 at 8/255, 2.0 at 16/255) follow the authors' practice of growing
the weight with eps; tune them (``--settings 16:1.25:<weight>``) before drawing conclusions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

import torch  # noqa: E402

from attribshield.attacks import FGSM, NFGSM, PGD  # noqa: E402
from attribshield.callbacks import RobustnessMonitor, catastrophic_overfitting  # noqa: E402
from attribshield.evaluation import clean_accuracy, robust_accuracy  # noqa: E402
from attribshield.evaluation.stats import pooled_mcnemar_exact  # noqa: E402
from attribshield.maskers import CRITERIA  # noqa: E402
from attribshield.presets import TrainConfig, load_dataset  # noqa: E402
from attribshield.regularizers import GradAlign  # noqa: E402
from attribshield.runs import run_checkpoint  # noqa: E402
from shortcut_experiment import as_float, atomic_json, parse_sets, train_resumable  # noqa: E402

ARMS = ("fgsm_rs", "nfgsm", "gradalign", "full_gradient", "random_mask")
DEFAULT_SETTINGS = ("16:1.25:2.0", "8:2:0.2")
MONITOR = "monitor"


def parse_setting(text):
    """``"16:1.25[:weight]"`` -> ``(name, eps, step_ratio, gradalign_weight)``."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        eps255, ratio = float(parts[0]), float(parts[1])
        weight = float(parts[2]) if len(parts) == 3 else 0.2 * (eps255 / 8.0) ** 2
    except ValueError:
        raise SystemExit(f"error: a setting is EPS255:STEP_RATIO[:GRADALIGN_WEIGHT], e.g. 16:1.25:2.0; got {text!r}") \
            from None
    if not (eps255 > 0 and ratio > 0 and weight >= 0):
        raise SystemExit(f"error: eps and the step ratio must be > 0 and the weight >= 0, got {text!r}")
    return f"eps{eps255:g}-r{ratio:g}", eps255 / 255.0, ratio, weight


def parse_arm(name):
    """``(preset, criterion or None)``."""
    base, _, criterion = name.partition("-")
    if base not in ARMS:
        raise SystemExit(f"error: unknown arm {name!r}; arms: {ARMS} (full_gradient-<criterion> too)")
    if criterion and (base != "full_gradient" or criterion not in CRITERIA):
        raise SystemExit(f"error: {name!r}: only full_gradient takes a criterion, one of {CRITERIA}")
    return base, criterion or None


def arm_overrides(arm, eps, ratio, weight, seed):
    """``(preset method, build_estimator overrides)`` of an arm at one setting."""
    fgsm = FGSM(eps=eps, random_start=True, step_size=ratio * eps, random_state=seed)
    if arm == "nfgsm":
        return "fgsm_rs", {"attacker": NFGSM(eps=eps, random_state=seed)}
    if arm == "gradalign":
        return "fgsm_rs", {"attacker": fgsm, "regularizer": GradAlign(weight=weight, eps=eps, random_state=seed)}
    return arm, {"attacker": fgsm}


def curve(values):
    return " ".join(f"{v:.2f}" for v in values)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.path.join(ROOT, ".cache", "cifar10"))
    p.add_argument("--dataset", default=None, choices=["cifar10", "cifar100", "digits"],
                   help="default: cifar10 (digits with --smoke)")
    p.add_argument("--model", default=None, help="default: preactresnet18 (digitsnet with --smoke)")
    p.add_argument("--train", type=int, default=None, help="training subset size (default 10000; 0: all)")
    p.add_argument("--epochs", type=int, default=None, help="default 30 (2 with --smoke)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=list(ARMS), metavar="ARM", help=f"arms (default: {' '.join(ARMS)})")
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), metavar="EPS:RATIO[:W]",
                   help="eps in 1/255, FGSM step in units of eps, GradAlign weight (default: 16:1.25:2.0 8:2:0.2)")
    p.add_argument("--monitor-n", type=int, default=None, help="training images monitored per epoch (default 512)")
    p.add_argument("--monitor-steps", type=int, default=None, help="PGD steps of the monitor (default 10)")
    p.add_argument("--drop", type=float, default=0.3, help="catastrophic_overfitting's drop (and gap)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default 1000)")
    p.add_argument("--pgd-steps", type=int, default=None, help="PGD steps of the final evaluation (default 50)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other TrainConfig fields, e.g. --set lr=0.1 bf16=true channels_last=true")
    p.add_argument("--out", default=None, help="default: runs/overfitting/<dataset>-<model>-n<train>")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints and evaluations")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", type=int, default=None, help="skorch's per-epoch log (default 1; 0 with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end run on scikit-learn's digits")
    p.add_argument("--plot", nargs="+", metavar="SUMMARY", help="only plot the curves of these summary.json "
                   "files (into --out, a .png path) and exit")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.plot:
        return replot(args.plot, args.out or "curves.png")
    smoke = args.smoke
    dflt = dict(dataset="digits" if smoke else "cifar10", model="digitsnet" if smoke else "preactresnet18",
                train=160 if smoke else 10000, epochs=2 if smoke else 30, monitor_n=32 if smoke else 512,
                monitor_steps=2 if smoke else 10, n_test=80 if smoke else 1000, pgd_steps=3 if smoke else 50,
                verbose=0 if smoke else 1)
    for k, v in dflt.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.drop <= 1:
        raise SystemExit(f"error: --drop must be in (0, 1], got {args.drop}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    arms = list(dict.fromkeys(args.methods))
    parsed = {a: parse_arm(a) for a in arms}
    settings = [parse_setting(s) for s in dict.fromkeys(args.settings)]
    baseline = "fgsm_rs" if "fgsm_rs" in arms else arms[0]
    out = args.out or os.path.join(ROOT, "runs", "overfitting", f"{args.dataset}-{args.model}-n{args.train}")
    os.makedirs(out, exist_ok=True)

    base = dict(dataset=args.dataset, data_root=args.data_root, model=args.model, epochs=args.epochs,
                train_subset=args.train, device=device, lr=0.2, lr_schedule="onecycle")
    if smoke:
        base.update(batch_size=32, audit_size=16, audit_samples=16)
    sets = parse_sets(args.set)
    base.update(sets)
    probe = TrainConfig.from_dict({**base, "method": "clean"})
    X_tr, y_tr, n_classes = load_dataset(probe, train=True)
    X_te, y_te, _ = load_dataset(probe, train=False)
    X_te, y_te = as_float(X_te[: args.n_test]), torch.as_tensor(np.asarray(y_te[: args.n_test]))
    print(f"catastrophic-overfitting campaign: {args.dataset}/{args.model}, {len(X_tr)} training images, "
          f"{args.epochs} epochs, settings {[s[0] for s in settings]}, arms {arms}, seeds {args.seeds}, {device}; "
          f"out {out}", flush=True)

    rows, per_sample = [], {}
    for name, eps, ratio, weight in settings:
        for seed in args.seeds:
            for arm in arms:
                preset, criterion = parsed[arm]
                method, overrides = arm_overrides(preset, eps, ratio, weight, seed)
                cfg = TrainConfig.from_dict({**base, "method": method, "seed": seed, "eps": eps,
                                             **({"criterion": criterion} if criterion else {})})
                monitor = RobustnessMonitor(X_tr, y_tr, eps=eps, pgd_steps=args.monitor_steps, n=args.monitor_n,
                                            name_prefix=MONITOR, random_state=0)
                run_dir = os.path.join(out, name, f"{arm}-s{seed}")
                meta = {"arm": arm, "setting": name, "step_ratio": ratio, "gradalign_weight": weight,
                        "monitor": {"n": args.monitor_n, "pgd_steps": args.monitor_steps}}
                t0 = time.time()
                clf = train_resumable(run_dir, cfg, n_classes, X_tr, y_tr, meta, restart=args.restart,
                                      verbose=args.verbose, callbacks=[(MONITOR, monitor)], **overrides)
                wall = time.time() - t0
                cache = os.path.join(run_dir, f"eval_n{len(y_te)}_pgd{args.pgd_steps}.npz")
                params = run_checkpoint(run_dir)
                if not args.restart and os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(params):
                    with np.load(cache) as z:
                        res = {k: z[k] for k in z.files}
                else:
                    module = clf.module_
                    res = {"test_clean": clean_accuracy(module, X_te, y_te, return_per_sample=True),
                           "test_pgd": robust_accuracy(module, X_te, y_te,
                                                       PGD(eps=eps, steps=args.pgd_steps, random_state=0),
                                                       return_per_sample=True)}
                    res = {k: np.asarray(v, dtype=bool) for k, v in res.items()}
                    np.savez(cache, **res)
                per_sample[(name, arm, seed)] = res
                hist = list(clf.history)
                curves = {k: [h.get(f"{MONITOR}_{k}_acc") for h in hist] for k in ("clean", "fgsm", "pgd")}
                co = catastrophic_overfitting(hist, prefix=MONITOR, drop=args.drop)
                row = {"setting": name, "eps": eps, "step_ratio": ratio, "arm": arm, "method": method,
                       "seed": seed, "run_dir": os.path.relpath(run_dir, out), "epochs": len(hist),
                       "train_seconds": float(sum(h.get("dur", 0.0) for h in hist)), "wall_seconds": wall,
                       "curves": curves, "collapse": co,
                       "test_clean": float(res["test_clean"].mean()), "test_pgd": float(res["test_pgd"].mean()),
                       "per_sample_file": os.path.relpath(cache, out)}
                rows.append(row)
                flag = f"COLLAPSED at epoch {co['epoch']}" if co["collapsed"] else "no collapse"
                print(f"  {name} {arm}-s{seed}: {flag}; test clean {row['test_clean']:.3f}, "
                      f"PGD-{args.pgd_steps} {row['test_pgd']:.3f}\n"
                      f"    PGD-{args.monitor_steps} (train): {curve(curves['pgd'])}\n"
                      f"    FGSM        (train): {curve(curves['fgsm'])}", flush=True)

    comparisons = []
    for name, *_ in settings:
        for arm in arms:
            if arm == baseline:
                continue
            for metric in ("test_clean", "test_pgd"):
                pairs = [(per_sample[(name, arm, s)][metric], per_sample[(name, baseline, s)][metric])
                         for s in args.seeds]
                comparisons.append({"setting": name, "arm": arm, "baseline": baseline, "metric": metric,
                                    **pooled_mcnemar_exact(pairs)})

    header = f"{'setting':<14}{'arm':<24}{'collapsed':>10}{'best PGD':>10}{'final PGD':>10}{'clean':>8}{'PGD test':>10}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, *_ in settings:
        for arm in arms:
            mine = [r for r in rows if r["setting"] == name and r["arm"] == arm]
            n_co = sum(r["collapse"]["collapsed"] for r in mine)
            print(f"{name:<14}{arm:<24}{f'{n_co}/{len(mine)}':>10}"
                  f"{np.mean([r['collapse']['pgd_best'] for r in mine]):>10.3f}"
                  f"{np.mean([r['collapse']['pgd_final'] for r in mine]):>10.3f}"
                  f"{np.mean([r['test_clean'] for r in mine]):>8.3f}{np.mean([r['test_pgd'] for r in mine]):>10.3f}")
    print(f"\nexact McNemar vs {baseline} (seeds pooled): difference in points, p-value")
    for c in comparisons:
        print(f"  {c['setting']:<14}{c['arm']:<24}{c['metric']:<12}{100 * c['difference']:+7.1f}  p={c['pvalue']:.3g}")

    summary = {
        "experiment": "catastrophic_overfitting", "dataset": args.dataset, "model": args.model,
        "n_train": int(len(X_tr)), "n_test": int(len(y_te)), "epochs": args.epochs, "seeds": args.seeds,
        "arms": arms, "baseline": baseline,
        "settings": [{"name": n, "eps": e, "step_ratio": r, "gradalign_weight": w} for n, e, r, w in settings],
        "monitor": {"n": args.monitor_n, "pgd_steps": args.monitor_steps, "drop": args.drop},
        "pgd_steps": args.pgd_steps, "device": device, "smoke": smoke, "config_overrides": sets,
        "runs": rows, "comparisons": comparisons,
    }
    path = os.path.join(out, "summary.json")
    atomic_json(path, summary)
    figure = plot_curves(rows, os.path.join(out, "curves.png"))
    print(f"\nwrote {path} and {figure}")
    return 0


def plot_curves(runs, path):
    """One panel per setting: the monitor's PGD (solid) and FGSM (dashed) accuracy on the
    training images per epoch, a colour per arm, a marker per seed; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in runs))
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    colours = dict(zip(arms, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for r in (r for r in runs if r["setting"] == setting):
            epochs = range(1, len(r["curves"]["pgd"]) + 1)
            label = f"{r['arm']} s{r['seed']}"
            style = dict(color=colours[r["arm"]], marker="osD^v<>"[int(r["seed"]) % 7], ms=4)
            ax.plot(epochs, r["curves"]["pgd"], label=f"{label} PGD", **style)
            ax.plot(epochs, r["curves"]["fgsm"], ls="--", mfc="none", label=f"{label} FGSM", **style)
        ax.set(title=setting, xlabel="epoch", ylabel="accuracy on monitored training images", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def replot(summaries, path):
    """``--plot``: the curves of finished campaigns' summary.json files in one figure."""
    runs = []
    for s in summaries:
        with open(s) as f:
            runs += json.load(f)["runs"]
    print(f"wrote {plot_curves(runs, path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
