"""Command line: ``attribshield demo | train | evaluate | explain``.

    attribshield demo                                  # digits, no data needed
    attribshield train --config run.toml --out runs/full       # resumable; checkpoints per epoch
    attribshield evaluate --model runs/full --cifar10c --autoattack --out runs/full/eval
    attribshield explain cat.png --model runs/full --out overlay.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

import numpy as np
import torch
from PIL import Image
from skorch.callbacks import ProgressBar

from ._runtime import cpu_has_native_bf16, tune_allocator
from .demo import run_demo
from .evaluation import evaluate_model
from .explainers import GradientExplainer, LimeExplainer
from .presets import TrainConfig, load_dataset
from .runs import load_run, train_run


def _config_from_args(args):
    cfg = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in vars(args).items()
                 if k in TrainConfig.__dataclass_fields__ and v is not None}
    return TrainConfig.from_dict({**cfg.to_dict(), **overrides})


def _cmd_demo(args):
    run_demo(out_dir=args.out, eps=args.eps, random_state=args.seed)
    return 0


def _cmd_train(args):
    cfg = _config_from_args(args)
    if cfg.bf16 and cfg.device == "cpu" and cpu_has_native_bf16() is False:
        print("warning: this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16): bf16 autocast is "
              "emulated and much slower than fp32 here; drop --bf16", file=sys.stderr)
    X, y, n_classes = load_dataset(cfg, train=True)
    callbacks = []
    if args.progress or (args.progress is None and sys.stdout.isatty()):
        callbacks.append(ProgressBar())
    clf = train_run(args.out, cfg, X, y, n_classes, restart=args.restart, callbacks=callbacks, verbose=1,
                    log=lambda msg: print(f"{args.out}: {msg}", flush=True))
    print(f"{cfg.method}: {len(clf.history)} epochs in {args.out}")
    return 0


def _cmd_evaluate(args):
    clf, cfg, n_classes = load_run(args.model)
    if args.dataset:
        cfg.dataset = args.dataset
    if args.data_root:
        cfg.data_root = args.data_root
    X, y, _ = load_dataset(cfg, train=False)
    X, y = X[: args.n_test], y[: args.n_test]
    X = X.astype("float32") / 255.0 if X.dtype.kind == "u" else X
    eps = args.eps if args.eps is not None else cfg.eps
    out = args.out or os.path.join(args.model, "eval")
    res = evaluate_model(clf.module_, X, y, eps=eps, norm=args.norm, autoattack=args.autoattack,
                         cifar10c=True if args.cifar10c else None, out_dir=out, n_classes=n_classes,
                         bounds=args.bounds, steps=args.steps, restarts=args.restarts, step_size=args.step_size,
                         n_queries=args.square_queries, stability=args.stability, occlusion=args.occlusion,
                         occlusion_samples=args.occlusion_samples, channels_last=args.channels_last,
                         progress=True)
    summary = {}
    for name, section in res.items():
        if isinstance(section, dict) and name != "occlusion":
            summary.update({k: v for k, v in section.items() if isinstance(v, (int, float, str)) and v is not None})
    occ = res.get("occlusion")
    if occ:  # e.g. "occlusion_attributed_k1": 0.61
        summary.update({f"occlusion_{m}_k{k}": a for m in ("random", "attributed") for k, a in zip(occ["k"], occ[m])})
    print(json.dumps(summary, indent=2))
    print(f"report: {out}/report.md")
    return 0


def _cmd_explain(args):
    if args.explainer == "cube" and args.points < 1:
        raise ValueError(f"--points must be >= 1, got {args.points}")
    clf, cfg, _ = load_run(args.model)
    in_ch = getattr(clf.module_, "in_channels", 3)
    size = 8 if cfg.dataset == "digits" else 32
    images = []
    for path in args.images:
        img = Image.open(path).convert("L" if in_ch == 1 else "RGB").resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    X = torch.as_tensor(np.stack(images))
    target = None if args.label is None else torch.full((len(X),), args.label)
    if args.explainer == "cube":
        explainer = GradientExplainer(n_steps=args.points, path="cube", random_state=0)
    else:
        explainer = LimeExplainer(n_samples=args.samples, random_state=0)
    att = explainer.explain(clf.module_, X, target)
    fig = att.plot(X, k=args.top_k)
    fig.savefig(args.out, dpi=150, bbox_inches="tight")
    pred = clf.module_(X).argmax(1).tolist()
    print(f"predicted classes {pred}; explanation written to {args.out}")
    return 0


def _add_config_flags(parser):
    """One flag per :class:`~attribshield.presets.TrainConfig` field (its type, choices and help)."""
    for f in fields(TrainConfig):
        help_ = f.metadata.get("help")
        if help_ is None:  # not a command-line setting (e.g. ``extra``)
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        text = f"{help_} (default: {default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, dest=f.name, type=typ, choices=f.metadata.get("choices"), default=None,
                                help=text)


def build_parser():
    parser = argparse.ArgumentParser(prog="attribshield", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="clean vs FGSM-RS vs the full method on digits (no data needed)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--eps", type=float, default=0.1, help="Linf radius (default: 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train one method; resumable (checkpoints after every epoch)")
    p.add_argument("--config", help="TOML file with a [train] table (keys: see attribshield.presets.TrainConfig)")
    p.add_argument("--out", required=True, help="run folder: config.json and a checkpoint per epoch (epoch_NNNN/)")
    _add_config_flags(p)
    p.add_argument("--restart", action="store_true", help="delete the checkpoints in --out and start over")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="per-batch progress bar (default: when stdout is a terminal)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="clean, PGD, Square (+AutoAttack, CIFAR-10-C, bounds) report")
    p.add_argument("--model", required=True, help="a 'train' output folder")
    p.add_argument("--dataset", choices=["digits", "cifar10", "cifar100"])
    p.add_argument("--data-root", dest="data_root")
    p.add_argument("--n-test", dest="n_test", type=int, default=1000)
    p.add_argument("--eps", type=float, default=None, help="default: the training eps")
    p.add_argument("--norm", choices=["Linf", "L2"], default="Linf")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--step-size", dest="step_size", type=float, default=None,
                   help="PGD step (default: 2.5 * eps / steps), e.g. 0.00784 for 2/255")
    p.add_argument("--square-queries", dest="square_queries", type=int, default=1000,
                   help="queries of the black-box Square attack (default 1000; 0 skips it)")
    p.add_argument("--cifar10c", action="store_true", help="also the 15 corruptions x 5 severities")
    p.add_argument("--autoattack", action="store_true", help="also torchattacks' AutoAttack (slow)")
    p.add_argument("--bounds", action="store_true", help="also the lower bound and its violation rate")
    p.add_argument("--stability", type=int, default=0, metavar="N",
                   help="also LIME attribution stability under PGD on the first N images (default: off)")
    p.add_argument("--occlusion", type=int, nargs="+", default=[1, 2, 3, 4], metavar="K",
                   help="accuracy with K of the 4x4 grid segments filled (mean colour), random and top-K by LIME "
                        "(default: 1 2 3 4)")
    p.add_argument("--no-occlusion", dest="occlusion", action="store_const", const=None,
                   help="skip the occlusion stage")
    p.add_argument("--occlusion-samples", dest="occlusion_samples", type=int, default=200,
                   help="LIME samples per image for the attributed occlusion (default 200)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true",
                   help="evaluate a channels_last copy of the model (faster convolutions; accuracies equal up to "
                        "float rounding)")
    p.add_argument("--out", default=None, help="report folder (default: MODEL/eval)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("explain", help="LIME overlay of image files under a trained model")
    p.add_argument("images", nargs="+", help="image files (resized to the model's input size)")
    p.add_argument("--model", required=True, help="a 'train' output folder")
    p.add_argument("--out", default="overlay.png")
    p.add_argument("--explainer", choices=("lime", "cube"), default="lime",
                   help="exact LIME, or input gradients at random per-segment blends "
                        "(GradientExplainer(path='cube'); 8 points ranked segments like LIME at 64 samples "
                        "on CIFAR-10, docs/performance.md) (default lime)")
    p.add_argument("--samples", type=int, default=1000, help="LIME samples per image (default 1000)")
    p.add_argument("--points", type=int, default=8, help="--explainer cube: gradient points per image (default 8)")
    p.add_argument("--top-k", dest="top_k", type=int, default=3)
    p.add_argument("--label", type=int, default=None, help="class to explain (default: the prediction)")
    p.set_defaults(func=_cmd_explain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return args.func(args)
    except ValueError as exc:  # bad configuration or data: a clear message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
