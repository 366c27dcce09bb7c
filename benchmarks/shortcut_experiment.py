"""The planted-shortcut campaign: does attribution-guided masking find, and unlearn, a known shortcut?

Every training image gets a class-coloured square in a corner (Decoy-MNIST style,
``attribshield.data.plant_shortcut``): with probability ``--rho`` the colour names the image's
class, so the square is a shortcut a model can read instead of the object.  The arms are the
presets of ``attribshield.presets`` (the same model, epochs, seed and data), plus the upper
bound ``oracle``: the ``full_gradient`` recipe whose masker hides the segments that hold the
square (``attribshield.maskers.OracleMasker``, told where the square is, not explaining):

=============================  ===================================================================
``clean``, ``fgsm_rs``         no masking (references)
``full_gradient-dominant``     online first-order LIME masks, criterion ``dominant`` (or
``full_gradient-combined``     ``combined``); ``full_amortized-<criterion>`` likewise with the
                               amortized explainer; a bare preset name uses ``--set criterion=...``
``random_mask``                as many segments masked at random (the dose control)
``oracle``                     ``full_gradient`` with ``OracleMasker`` + ``OracleExplainer``
=============================  ===================================================================

For each arm and seed the script trains into the run folder ``<out>/<arm>-s<seed>/``
(:mod:`attribshield.runs`: a checkpoint after every epoch; an interrupted campaign resumes where
it stopped, as ``attribshield train`` does), then measures

* the **gate**: on the first ``--gate-n`` planted training images, the share whose selected
  segments (the trained model explained by the arm's own explainer and masker; for arms
  without a masker, first-order LIME with the ``dominant`` criterion) include a segment of
  the square (``shortcut_segment_mask``), with the precision of the selection;
* on the first ``--n-test`` test images in four variants (the squares of the planted variants
  are drawn with a fixed seed, so every arm and seed sees the same images): ``unpatched``,
  ``rho1`` (planted as in training), ``rho0`` (the square always names a wrong class) and
  ``shift1`` (it names class ``y + 1``): clean accuracy, the share of ``shift1`` predictions
  that follow the square, and PGD-``--pgd-steps`` accuracy on ``rho0`` (Linf, the training
  ``eps``, step ``2.5 eps / steps``, one random start, seed 0);
* exact McNemar tests of every arm against ``--baseline``, the discordant pairs pooled over
  the seeds both have (``attribshield.evaluation.stats``); per-image records are kept in each
  run folder (``eval_n<N>_pgd<steps>.npz``).

Prints a table and the pre-registered verdict of every method arm against ``fgsm_rs`` (with
three seeds or more; ``verdict``), and writes ``<out>/summary.json`` and ``<out>/shortcut.png``
(bars per arm, a dot per seed; ``--plot SUMMARY`` redraws it from a summary).

    .venv/bin/python benchmarks/shortcut_experiment.py --data-root .cache/cifar10 --train 10000 \\
        --epochs 15 --seeds 0 1 2 --device cuda --set bf16=true channels_last=true
    .venv/bin/python benchmarks/shortcut_experiment.py --smoke --out /tmp/shortcut-smoke   # digits, seconds

Note: the maskers' default ``fill="mean"`` replaces a segment by its mean colour.  A square that
fills its whole segment (e.g. 2x2 on 8x8 digits, whose grid cells are 2x2) keeps its colour
under that fill; on CIFAR-10 (4x4 square, 8x8 cells) the cell becomes a uniform tint.  Use
``--fill constant`` (or ``blur``, ``noise``) to remove the colour altogether.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from attribshield.attacks import PGD  # noqa: E402
from attribshield.data import plant_shortcut, shortcut_segment_mask  # noqa: E402
from attribshield.evaluation import clean_accuracy, robust_accuracy  # noqa: E402
from attribshield.evaluation.stats import pooled_mcnemar_exact  # noqa: E402
from attribshield.explainers import GradientExplainer  # noqa: E402
from attribshield.maskers import CRITERIA, FILLS, LimeMasker, OracleMasker  # noqa: E402
from attribshield.presets import METHODS, TrainConfig, load_dataset  # noqa: E402
from attribshield.runs import run_checkpoint, train_run  # noqa: E402

DEFAULT_ARMS = ["clean", "fgsm_rs", "full_gradient-dominant", "full_gradient-combined", "random_mask", "oracle"]
TEST_SEED = 2024  # the planted test variants: the same squares for every arm and seed (paired tests)
VARIANTS = ("unpatched", "rho1", "rho0", "shift1")
METRICS = ("unpatched_clean", "rho1_clean", "rho0_clean", "shift1_clean", "shift1_follows", "rho0_pgd")


def parse_arm(name):
    """``(method, criterion or None, is_oracle)`` of an arm name (``oracle``, ``<method>``,
    ``<method>-<criterion>``)."""
    if name == "oracle":
        return "full_gradient", None, True
    method, _, criterion = name.partition("-")
    if method not in METHODS:
        raise SystemExit(f"error: unknown arm {name!r}: use 'oracle', a preset of {METHODS} or <preset>-<criterion>")
    if criterion and criterion not in CRITERIA:
        raise SystemExit(f"error: unknown criterion in arm {name!r}; criteria: {CRITERIA}")
    return method, criterion or None, False


def parse_sets(items):
    """``key=value`` TrainConfig overrides, typed by the field's default."""
    fields = TrainConfig.__dataclass_fields__
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in fields or key == "extra":
            raise SystemExit(f"error: --set takes key=value with a TrainConfig field, got {item!r}")
        default = fields[key].default
        if isinstance(default, bool):
            val = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            val = int(raw)
        elif isinstance(default, float):
            val = float(raw)
        else:
            val = raw
        out[key] = val
    return out


def atomic_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


def train_resumable(run_dir, cfg, n_classes, X, y, meta, *, restart=False, verbose=0, fill=None, callbacks=(),
                    **overrides):
    """:func:`attribshield.runs.train_run` with the campaign's log line and masker fill."""
    def set_fill(clf):
        if fill is not None and clf.masker is not None:
            clf.set_params(masker__fill=fill)

    name = os.path.basename(run_dir)
    return train_run(run_dir, cfg, X, y, n_classes, meta=meta, restart=restart, callbacks=callbacks,
                     verbose=verbose, configure=set_fill,
                     log=lambda msg: print(f"  {name}: {msg}", flush=True), **overrides)


def as_float(X):
    X = np.asarray(X)
    return torch.as_tensor(X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32))


def gate(clf, cfg, X, y, info, batch=256):
    """Share of images whose selected segments include a segment of the planted square."""
    module = clf.module_
    masker, explainer = clf.masker_, clf.explainer_
    if masker is None:  # no masker of its own: first-order LIME, 'dominant' (where would it mask?)
        masker = LimeMasker(criterion="dominant", top_k=cfg.top_k, random_state=cfg.seed)
        explainer = GradientExplainer()
        label = "LimeMasker(dominant)+GradientExplainer"
    else:
        crit = getattr(masker, "criterion", None)
        label = f"{type(masker).__name__}{'(' + crit + ')' if crit else ''}+{type(explainer).__name__}"
    hits, n_sel, n_true = [], 0, 0
    for a in range(0, len(X), batch):
        sel = masker.find_spurious(module, X[a:a + batch], y[a:a + batch], explainer, attacker=clf.attacker_)
        part = {**info, "corner": info["corner"][a:a + batch]}
        truth = shortcut_segment_mask(part, segments=sel.segments.cpu())
        chosen = sel.selected.cpu()
        s = max(truth.shape[1], chosen.shape[1])
        truth = torch.nn.functional.pad(truth, (0, s - truth.shape[1]))
        chosen = torch.nn.functional.pad(chosen, (0, s - chosen.shape[1]))
        both = truth & chosen
        hits.append(both.any(1))
        n_sel += int(chosen.sum())
        n_true += int(both.sum())
    hits = torch.cat(hits)
    return {"gate": float(hits.float().mean()), "gate_precision": n_true / n_sel if n_sel else None,
            "gate_selected_per_image": n_sel / len(X), "gate_masker": label, "gate_n": len(X)}


def evaluate(clf, cfg, variants, n_classes, steps):
    """Per-image correctness on every variant, and under PGD on ``rho0``."""
    module = clf.module_
    out = {}
    for name, (X, y) in variants.items():
        out[f"{name}_clean"] = clean_accuracy(module, X, y, return_per_sample=True)
    X, y = variants["shift1"]
    out["shift1_follows"] = clean_accuracy(module, X, (y + 1) % n_classes, return_per_sample=True)
    X, y = variants["rho0"]
    out["rho0_pgd"] = robust_accuracy(module, X, y, PGD(eps=cfg.eps, steps=steps, random_state=0),
                                      return_per_sample=True)
    return {k: np.asarray(v, dtype=bool) for k, v in out.items()}


#: the pre-registered rule (docs/results.md, "A planted shortcut"), in points of accuracy
RULE = {"min_seeds": 3, "win_margin": 10.0, "win_p": 1e-3, "control_margin": 5.0, "max_clean_cost": 2.0,
        "refute_margin": 3.0}


def loss_rises(history, key="adv_loss", threshold=0.2):
    """``[(epoch, rise), ...]``: epochs whose ``key`` (the adversarial training loss, or
    ``train_loss`` where a run has none) exceeds the previous epoch's by more than
    ``threshold`` (the descriptive criterion registered for the learning-rate setting)."""
    vals = [(h["epoch"], h.get(key, h.get("train_loss"))) for h in history]
    return [(e, float(v - p)) for (_, p), (e, v) in zip(vals, vals[1:])
            if p is not None and v is not None and v - p > threshold]


def is_method_arm(arm):
    """Arms the verdict judges: attribution-guided masking (not the references, control or oracle)."""
    return arm.partition("-")[0] in ("full", "full_gradient", "full_amortized")


def verdict(per_sample, arm, seeds, baseline="fgsm_rs", control="random_mask", rule=RULE):
    """The pre-registered verdict of one method ``arm`` from per-image records.

    ``per_sample[(arm, seed)]`` maps ``"rho0_clean"`` and ``"unpatched_clean"`` to boolean
    arrays over the same test images for every arm.  Returns the quantities of the rule (in
    points) and ``verdict``: ``"WINS"``, ``"REFUTED"``, ``"INCONCLUSIVE"``, or ``None`` with
    fewer than ``rule["min_seeds"]`` seeds or without the baseline's / control's runs of the
    same seeds.
    """
    seeds = [s for s in seeds if (arm, s) in per_sample and (baseline, s) in per_sample]
    if not seeds:
        return {"arm": arm, "seeds": [], "verdict": None, "reason": f"no seed with both {arm} and {baseline}"}

    def mean(a, key, ss=seeds):
        return 100.0 * float(np.mean([per_sample[(a, s)][key].mean() for s in ss]))

    margins = [100.0 * float(per_sample[(arm, s)]["rho0_clean"].mean() - per_sample[(baseline, s)]["rho0_clean"].mean())
               for s in seeds]
    test = pooled_mcnemar_exact([(per_sample[(arm, s)]["rho0_clean"], per_sample[(baseline, s)]["rho0_clean"])
                                 for s in seeds])
    has_control = all((control, s) in per_sample for s in seeds)
    over_control = mean(arm, "rho0_clean") - mean(control, "rho0_clean") if has_control else None
    clean_cost = mean(baseline, "unpatched_clean") - mean(arm, "unpatched_clean")
    out = {"arm": arm, "baseline": baseline, "control": control, "seeds": seeds, "margins": margins,
           "mean_margin": float(np.mean(margins)), "pvalue": test["pvalue"], "over_control": over_control,
           "clean_cost": clean_cost}
    if len(seeds) < rule["min_seeds"] or not has_control:
        why = (f"{len(seeds)} seed(s), the rule needs {rule['min_seeds']}" if len(seeds) < rule["min_seeds"]
               else f"no {control} run for every seed")
        return {**out, "verdict": None, "reason": why}
    if out["mean_margin"] < rule["refute_margin"] or over_control <= 0:
        v = "REFUTED"
    elif (min(margins) >= rule["win_margin"] and test["pvalue"] < rule["win_p"]
          and over_control >= rule["control_margin"] and clean_cost <= rule["max_clean_cost"]):
        v = "WINS"
    else:
        v = "INCONCLUSIVE"
    return {**out, "verdict": v, "reason": None}


def plot_summary(summary, path):
    """Grouped bars per arm (unpatched, rho = 0, PGD on rho = 0, gate), one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    metrics = [("unpatched_clean", "clean, unpatched"), ("rho0_clean", "clean, wrong square (rho = 0)"),
               ("rho0_pgd", f"PGD-{summary['pgd_steps']}, rho = 0"), ("gate", "gate: square selected")]
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(arms) + 2), 3.8))
    for j, (key, label) in enumerate(metrics):
        xs = np.arange(len(arms)) + (j - (len(metrics) - 1) / 2) * width
        vals = [[(r[key] if key == "gate" else r["acc"][key]) for r in summary["runs"] if r["arm"] == a]
                for a in arms]
        ax.bar(xs, [np.mean(v) if v else np.nan for v in vals], width, label=label, alpha=0.8)
        for x, v in zip(xs, vals):
            ax.plot([x] * len(v), v, "k.", ms=4)
    ax.set_xticks(np.arange(len(arms)))
    ax.set_xticklabels(arms, rotation=20, ha="right")
    ax.set_ylim(0, 1.3)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy / share")
    seeds = sorted({r["seed"] for r in summary["runs"]})
    ax.set_title(f"planted shortcut: {summary['dataset']}, {summary['n_train']} training images, rho = "
                 f"{summary['rho']:g}, seeds {seeds} (dots)", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_explanations(modules, X, y, path, *, k=3, n_samples=500):
    """LIME's top-``k`` cells of the true class for the same planted images under each arm's model.

    ``modules``: ``{label: module}``, one row each; ``X``, ``y``: a few planted test images.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    from attribshield.explainers import LimeExplainer

    n = len(X)
    fig, axes = plt.subplots(len(modules), n, figsize=(1.5 * n + 1.6, 1.6 * len(modules)), squeeze=False)
    imgs = X.permute(0, 2, 3, 1).double().numpy()
    imgs = np.repeat(imgs, 3, axis=-1) if imgs.shape[-1] == 1 else imgs
    for r, (label, module) in enumerate(modules.items()):
        att = LimeExplainer(n_samples=n_samples, random_state=0).explain(module, X, y)
        top, seg = att.top_segments(k).cpu(), att.segments.cpu()
        with torch.no_grad():
            pred = module(X).argmax(1)
        for i in range(n):
            keep = torch.isin(seg[i], top[i]).numpy()
            ax = axes[r, i]
            shown = np.clip(imgs[i] * (0.2 + 0.8 * keep[..., None]), 0, 1)
            ax.imshow(mark_boundaries(shown, keep.astype(int), color=(1, 1, 0), mode="inner"),
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"pred {int(pred[i])} (y={int(y[i])})", fontsize=6)
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(f"LIME's top-{k} cells of the true class (outlined; {n_samples} samples), test images whose "
                 "square names the true class", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.path.join(ROOT, ".cache", "cifar10"),
                   help="folder holding cifar-10-batches-py (torchvision's layout)")
    p.add_argument("--dataset", default=None, choices=["cifar10", "cifar100", "digits"],
                   help="default: cifar10 (digits with --smoke)")
    p.add_argument("--model", default=None, help="default: smallcnn (digitsnet with --smoke)")
    p.add_argument("--train", type=int, default=None, help="training subset size (default 10000; 0: all)")
    p.add_argument("--epochs", type=int, default=None, help="default 15 (2 with --smoke)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=DEFAULT_ARMS, metavar="ARM",
                   help=f"arms (default: {' '.join(DEFAULT_ARMS)})")
    p.add_argument("--baseline", default=None, help="arm the McNemar tests compare with (default: fgsm_rs if run)")
    p.add_argument("--rho", type=float, default=1.0, help="probability that the square names the class")
    p.add_argument("--patch-size", type=int, default=None, help="side of the square (default 4; 2 with --smoke)")
    p.add_argument("--fill", choices=FILLS, default=None, help="fill of every masking arm (default: the presets' mean)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default 1000)")
    p.add_argument("--gate-n", type=int, default=None, help="training images for the gate (default 512)")
    p.add_argument("--pgd-steps", type=int, default=None, help="PGD steps of the evaluation (default 20)")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="other TrainConfig fields, e.g. --set lr=0.1 bf16=true lr_schedule=onecycle")
    p.add_argument("--out", default=None, help="default: runs/shortcut/<dataset>-rho<rho>-p<patch> (with --plot: "
                   "the figure's path)")
    p.add_argument("--explain", type=int, default=0, metavar="N",
                   help="also draw LIME's top-3 cells under every arm's model for the first N planted test "
                        "images (rho = 1), per seed: <out>/explanations_s<seed>.png")
    p.add_argument("--plot", default=None, metavar="SUMMARY",
                   help="only draw the figure of a finished campaign's summary.json (to --out, default next to it)")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints and evaluations")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", type=int, default=None, help="skorch's per-epoch log (default 1; 0 with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny end-to-end run on scikit-learn's digits (1 channel): 2 epochs, 160 images")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.plot:
        with open(args.plot) as f:
            summary = json.load(f)
        path = args.out or os.path.join(os.path.dirname(os.path.abspath(args.plot)), "shortcut.png")
        print(f"wrote {plot_summary(summary, path)}")
        return 0
    smoke = args.smoke
    dflt = dict(dataset="digits" if smoke else "cifar10", model="digitsnet" if smoke else "smallcnn",
                train=160 if smoke else 10000, epochs=2 if smoke else 15, patch_size=2 if smoke else 4,
                n_test=80 if smoke else 1000, gate_n=48 if smoke else 512, pgd_steps=3 if smoke else 20,
                verbose=0 if smoke else 1)
    for k, v in dflt.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    arms = list(dict.fromkeys(args.methods))
    parsed = {a: parse_arm(a) for a in arms}
    baseline = args.baseline or ("fgsm_rs" if "fgsm_rs" in arms else arms[0])
    if baseline not in arms:
        raise SystemExit(f"error: --baseline {baseline!r} is not among the arms {arms}")
    sets = parse_sets(args.set)
    out = args.out or os.path.join(ROOT, "runs", "shortcut", f"{args.dataset}-rho{args.rho:g}-p{args.patch_size}")
    os.makedirs(out, exist_ok=True)

    base = dict(dataset=args.dataset, data_root=args.data_root, model=args.model, epochs=args.epochs,
                train_subset=args.train, device=device)
    if smoke:
        base.update(batch_size=32, audit_size=16, audit_samples=16)
    base.update(sets)
    probe = TrainConfig.from_dict({**base, "method": "clean"})
    X_tr, y_tr, n_classes = load_dataset(probe, train=True)
    X_te, y_te, _ = load_dataset(probe, train=False)
    n_channels = int(X_tr.shape[1])
    X_te, y_te = X_te[: args.n_test], np.asarray(y_te[: args.n_test])
    test_sets = {"unpatched": X_te}
    for name, kw in (("rho1", {"rho": 1.0}), ("rho0", {"rho": 0.0}), ("shift1", {"rho": 1.0, "label_shift": 1})):
        test_sets[name] = plant_shortcut(X_te, y_te, patch_size=args.patch_size, n_classes=n_classes,
                                         random_state=TEST_SEED, **kw)
    variants = {k: (as_float(v), torch.as_tensor(y_te)) for k, v in test_sets.items()}
    print(f"shortcut campaign: {args.dataset}, {len(X_tr)} training images, rho={args.rho}, "
          f"{args.patch_size}x{args.patch_size} square, {args.epochs} epochs, arms {arms}, seeds {args.seeds}, "
          f"{device}; out {out}", flush=True)

    rows, per_sample, explained = [], {}, []
    for seed in args.seeds:
        modules = {}
        X_pl, info = plant_shortcut(X_tr, y_tr, rho=args.rho, patch_size=args.patch_size, n_classes=n_classes,
                                    random_state=seed, return_info=True)
        g = min(args.gate_n, len(X_pl))
        X_gate, y_gate = as_float(X_pl[:g]), torch.as_tensor(np.asarray(y_tr[:g]))
        info_gate = {**info, "corner": info["corner"][:g]}
        for arm in arms:
            method, criterion, oracle = parsed[arm]
            cfg = TrainConfig.from_dict({**base, "method": method, "seed": seed,
                                         **({"criterion": criterion} if criterion else {})})
            overrides = {}
            if oracle:
                # random crops move the square out of its corner: then look for it anywhere
                masker = OracleMasker.from_shortcut(patch_size=args.patch_size, n_classes=n_classes,
                                                    n_channels=n_channels, corners_only=not cfg.augment,
                                                    random_state=seed)
                overrides = dict(masker=masker, explainer=masker.explainer(), audit_size=0)
            run_dir = os.path.join(out, f"{arm}-s{seed}")
            meta = {"arm": arm, "rho": args.rho, "patch_size": args.patch_size, "fill": args.fill}
            t0 = time.time()
            clf = train_resumable(run_dir, cfg, n_classes, X_pl, y_tr, meta, restart=args.restart,
                                  verbose=args.verbose, fill=args.fill, **overrides)
            train_wall = time.time() - t0
            params = run_checkpoint(run_dir)
            cache = os.path.join(run_dir, f"eval_n{len(y_te)}_pgd{args.pgd_steps}.npz")
            gate_cache = os.path.join(run_dir, f"gate_n{g}.json")
            fresh = (not args.restart and os.path.exists(cache) and os.path.exists(gate_cache)
                     and os.path.getmtime(cache) >= os.path.getmtime(params))
            if fresh:
                with np.load(cache) as z:
                    res = {k: z[k] for k in z.files}
                with open(gate_cache) as f:
                    gres = json.load(f)
            else:
                res = evaluate(clf, cfg, variants, n_classes, args.pgd_steps)
                np.savez(cache, **res)
                gres = gate(clf, cfg, X_gate, y_gate, info_gate)
                atomic_json(gate_cache, gres)
            per_sample[(arm, seed)] = res
            modules[arm] = clf.module_
            hist = list(clf.history)
            row = {"arm": arm, "method": method, "criterion": cfg.criterion if clf.masker is not None else None,
                   "seed": seed, "run_dir": os.path.relpath(run_dir, out), "epochs": len(hist),
                   "train_seconds": float(sum(h.get("dur", 0.0) for h in hist)), "wall_seconds": train_wall,
                   "loss_rises": loss_rises(hist), **gres, "acc": {k: float(v.mean()) for k, v in res.items()},
                   "per_sample_file": os.path.relpath(cache, out)}
            rows.append(row)
            a = row["acc"]
            print(f"  {arm}-s{seed}: gate {row['gate']:.3f}, unpatched {a['unpatched_clean']:.3f}, "
                  f"rho0 {a['rho0_clean']:.3f}, shift1 {a['shift1_clean']:.3f}, "
                  f"PGD-{args.pgd_steps} rho0 {a['rho0_pgd']:.3f}, loss rises > 0.2 at epochs "
                  f"{[e for e, _ in row['loss_rises']] or 'none'}", flush=True)

        if args.explain > 0:
            Xe, ye = variants["rho1"]
            m = min(args.explain, len(ye))
            explained.append(plot_explanations({a: mod.cpu().eval() for a, mod in modules.items()},
                                               Xe[:m], ye[:m], os.path.join(out, f"explanations_s{seed}.png")))

    summary_arms = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        summary_arms[arm] = {"seeds": [r["seed"] for r in mine], "gate": float(np.mean([r["gate"] for r in mine])),
                             **{m: float(np.mean([r["acc"][m] for r in mine])) for m in METRICS}}
    comparisons = []
    for arm in arms:
        if arm == baseline:
            continue
        for metric in METRICS:
            if metric == "shift1_follows":  # a share of predictions, not a correctness
                continue
            pairs = [(per_sample[(arm, s)][metric], per_sample[(baseline, s)][metric]) for s in args.seeds]
            comparisons.append({"arm": arm, "baseline": baseline, "metric": metric, **pooled_mcnemar_exact(pairs)})

    verdicts = [verdict(per_sample, arm, args.seeds, baseline=baseline)
                for arm in arms if is_method_arm(arm) and baseline == "fgsm_rs"]

    header = f"{'arm':<26}{'gate':>7}{'clean':>8}{'rho1':>8}{'rho0':>8}{'shift1':>8}{'follow':>8}{'PGD rho0':>10}"
    print("\n" + header + "\n" + "-" * len(header))
    for arm, s in summary_arms.items():
        print(f"{arm:<26}{s['gate']:>7.3f}{s['unpatched_clean']:>8.3f}{s['rho1_clean']:>8.3f}{s['rho0_clean']:>8.3f}"
              f"{s['shift1_clean']:>8.3f}{s['shift1_follows']:>8.3f}{s['rho0_pgd']:>10.3f}")
    print(f"\nexact McNemar vs {baseline} (seeds pooled): difference in points, p-value")
    for c in comparisons:
        print(f"  {c['arm']:<26}{c['metric']:<16}{100 * c['difference']:+7.1f}  p={c['pvalue']:.3g}")

    if verdicts:
        print("\npre-registered verdict on rho = 0 (points; docs/results.md, 'A planted shortcut'):")
    for v in verdicts:
        if not v["seeds"]:
            print(f"  {v['arm']:<26}no verdict: {v['reason']}")
            continue
        ctrl = "n/a" if v["over_control"] is None else f"{v['over_control']:+.1f}"
        said = v["verdict"] or f"no verdict: {v['reason']}"
        print(f"  {v['arm']:<26}vs fgsm_rs {', '.join(f'{m:+.1f}' for m in v['margins'])} (p={v['pvalue']:.3g}), "
              f"vs random_mask {ctrl}, clean cost {v['clean_cost']:+.1f}: {said}")

    summary = {
        "experiment": "shortcut", "dataset": args.dataset, "model": args.model, "n_train": int(len(X_tr)),
        "n_test": int(len(y_te)), "rho": args.rho, "patch_size": args.patch_size, "epochs": args.epochs,
        "seeds": args.seeds, "arms": arms, "baseline": baseline, "test_seed": TEST_SEED, "pgd_steps": args.pgd_steps,
        "eps": probe.eps, "fill": args.fill, "device": device, "smoke": smoke, "config_overrides": sets,
        "runs": rows, "summary": summary_arms, "comparisons": comparisons, "rule": RULE, "verdicts": verdicts,
    }
    path = os.path.join(out, "summary.json")
    atomic_json(path, summary)
    fig = plot_summary(summary, os.path.join(out, "shortcut.png"))
    print(f"\nwrote {path} and {fig}" + "".join(f", {e}" for e in explained))
    return 0


if __name__ == "__main__":
    sys.exit(main())
