"""Command line: ``attribshield demo | train | evaluate | explain``."""
from __future__ import annotations

import argparse
import sys

from ._runtime import tune_allocator


def _cmd_demo(args):
    from .demo import run_demo

    run_demo(out_dir=args.out, eps=args.eps, random_state=args.seed)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="attribshield", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="clean vs FGSM-RS vs the full method on digits (no data needed)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--eps", type=float, default=0.1, help="Linf radius (default: 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    tune_allocator()
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 16)))
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
