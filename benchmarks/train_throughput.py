"""Training throughput: RobustAttributionClassifier vs a plain fp32 PyTorch loop.

Each configuration runs in its own subprocess (so the allocator setting is per process) on
the same model (SmallCNN), the same real CIFAR-10 images and the same number of steps:

- ``plain_fp32``           hand-written torch loop, glibc's default malloc
- ``plain_fp32_malloc``    the same loop with the tuned allocator (docs/performance.md)
- ``estimator_fp32``       RobustAttributionClassifier, tuned allocator
- ``estimator_cl_bf16``    RobustAttributionClassifier, channels_last + bf16 autocast

Also trains each to a short budget and reports test accuracy and PGD accuracy (with an fp32
attack on the final model), so speed is never bought with accuracy or attack strength.

    python benchmarks/train_throughput.py [--cifar-root .cache/cifar10] [--train 5000] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = ["plain_fp32", "plain_fp32_malloc", "estimator_fp32", "estimator_cl_bf16"]
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "17179869184",
          "MALLOC_TOP_PAD_": "268435456"}


def load_data(root, n_train, n_test):
    from attribshield.data import load_cifar10

    Xtr, ytr = load_cifar10(root, train=True, verify=False, dtype="uint8")
    Xte, yte = load_cifar10(root, train=False, verify=False, dtype="uint8")
    return Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]


def worker(cfg, args):
    import torch

    from attribshield.attacks import FGSM, PGD
    from attribshield.evaluation import clean_accuracy, robust_accuracy
    from attribshield.models import SmallCNN

    torch.set_num_threads(args.threads)
    Xtr, ytr, Xte, yte = load_data(args.cifar_root, args.train, args.test)
    attacker = FGSM(eps=8 / 255, random_start=True, random_state=0) if args.adversarial else None
    torch.manual_seed(0)
    t_steps = []
    if cfg.startswith("plain"):
        model = SmallCNN()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        X = torch.as_tensor(Xtr)
        y = torch.as_tensor(ytr)
        t0 = time.perf_counter()
        for _epoch in range(args.epochs):
            perm = torch.randperm(len(X))
            for i in range(0, len(X), args.batch_size):
                idx = perm[i:i + args.batch_size]
                xb = X[idx].float() / 255.0
                yb = y[idx]
                model.train()
                if attacker is not None:
                    xb = attacker.perturb(model, xb, yb)
                s = time.perf_counter()
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                t_steps.append(time.perf_counter() - s)
        wall = time.perf_counter() - t0
        module = model
    else:
        from attribshield import RobustAttributionClassifier

        fast = cfg == "estimator_cl_bf16"
        clf = RobustAttributionClassifier(SmallCNN, attacker=attacker, max_epochs=args.epochs, lr=0.05,
                                          optimizer__momentum=0.9, batch_size=args.batch_size, verbose=0,
                                          channels_last=fast, autocast="bf16" if fast else None,
                                          random_state=0, iterator_train__shuffle=True)
        t0 = time.perf_counter()
        clf.fit(Xtr, ytr)
        wall = time.perf_counter() - t0
        module = clf.module_.to(memory_format=torch.contiguous_format)
    n_images = args.epochs * len(Xtr)
    Xte_f = Xte.astype(np.float32) / 255.0
    pgd = PGD(eps=8 / 255, steps=10, random_state=0)
    out = {
        "config": cfg,
        "images_per_s": n_images / wall,
        "wall_s": wall,
        "test_accuracy": clean_accuracy(module.float(), Xte_f, yte),
        "pgd10_accuracy": robust_accuracy(module.float(), Xte_f[: args.test_pgd], yte[: args.test_pgd], pgd),
    }
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-root", default=os.path.join(ROOT, ".cache", "cifar10"))
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--test-pgd", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adversarial", action="store_true", help="FGSM-RS adversarial training instead of clean")
    p.add_argument("--configs", nargs="*", default=CONFIGS)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "benchmarks", "train_throughput.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args)
    if not os.path.exists(os.path.join(args.cifar_root, "cifar-10-batches-py")):
        shared = os.path.join(ROOT, "..", "shared", "data", "materialize.py")
        subprocess.run([sys.executable, shared, args.cifar_root], check=True)
    rows = []
    for cfg in args.configs:
        env = {k: v for k, v in os.environ.items() if k not in MALLOC}
        if cfg != "plain_fp32":
            env.update(MALLOC)
        argv = [sys.executable, __file__, "--worker", cfg] + [a for a in sys.argv[1:] if a != "--worker"]
        res = subprocess.run(argv, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{cfg} failed")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = rows[0]["images_per_s"]
    print(f"{'config':<22}{'images/s':>10}{'ratio':>8}{'test acc':>10}{'PGD-10 acc':>12}")
    for r in rows:
        r["ratio_vs_plain_fp32"] = r["images_per_s"] / base
        print(f"{r['config']:<22}{r['images_per_s']:>10.1f}{r['ratio_vs_plain_fp32']:>8.2f}"
              f"{r['test_accuracy']:>10.3f}{r['pgd10_accuracy']:>12.3f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
