"""The prepared GPU check: CUDA tests, throughput on the device and two short CIFAR-10 runs.

Run it in one call when a GPU machine is lent (``make gpu-check``); it finishes in a few
minutes and writes one JSON summary (``runs/gpu_check.json`` by default):

1. ``pytest -m cuda`` (the tests that need a CUDA device);
2. training throughput on ``device="cuda"``: images/s of an epoch of FGSM-RS and of each
   full-dose method (``full_gradient``, ``full_amortized``, ``random_mask``) on the same data,
   and their ratios to FGSM-RS;
3. explanation throughput: exact LIME (64 and 1,000 samples), the amortized and the gradient
   explainer, images/s on the device;
4. attack throughput: PGD-20 images/s;
5. two-epoch CIFAR-10 runs of FGSM-RS and ``full_gradient`` with the standard recipe, with
   clean and PGD-20 accuracy on the first 1,000 test images.

    python benchmarks/gpu_check.py [--cifar-root .cache/cifar10] [--train 10000] [--out runs/gpu_check.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _timed(fn):
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-root", default=os.path.join(ROOT, ".cache", "cifar10"))
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu_check.json"))
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; the GPU check needs one")
    from attribshield.attacks import PGD
    from attribshield.evaluation import clean_accuracy, robust_accuracy
    from attribshield.explainers import AmortizedLimeExplainer, GradientExplainer, LimeExplainer
    from attribshield.presets import TrainConfig, build_estimator, load_dataset

    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if not os.path.exists(os.path.join(args.cifar_root, "cifar-10-batches-py")):
        shared = os.path.join(ROOT, "..", "shared", "data", "materialize.py")
        subprocess.run([sys.executable, shared, args.cifar_root], check=True)
    if not args.skip_tests:
        res = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"],
                             cwd=ROOT, capture_output=True, text=True)
        summary["cuda_tests"] = {"returncode": res.returncode, "tail": res.stdout[-1500:]}
        print(res.stdout[-600:], flush=True)

    base = dict(dataset="cifar10", data_root=args.cifar_root, model="smallcnn", device="cuda", epochs=1,
                train_subset=args.train, audit_size=128)
    X, y, n = load_dataset(TrainConfig(**base))
    rows = {}
    for method in ("fgsm_rs", "full_gradient", "full_amortized", "random_mask"):
        clf = build_estimator(TrainConfig(method=method, **base), n_classes=n, verbose=0)
        clf.fit(X[:512], y[:512])  # warm-up (kernels, the amortized explainer's network)
        _, dur = _timed(lambda clf=clf: clf.partial_fit(X, y))
        rows[method] = {"epoch_s": dur, "images_per_s": len(X) / dur,
                        "audit_s": float(clf.history[-1].get("audit_dur", 0.0))}
    for r in rows.values():
        r["ratio_to_fgsm_rs"] = r["epoch_s"] / rows["fgsm_rs"]["epoch_s"]
    summary["train_epoch"] = rows
    print(json.dumps(rows, indent=1), flush=True)

    Xte, yte, _ = load_dataset(TrainConfig(**base), train=False)
    Xt = torch.as_tensor(Xte[:1000]).float().div(255).cuda()
    yt = torch.as_tensor(yte[:1000]).cuda()
    model = build_estimator(TrainConfig(method="fgsm_rs", **base), n_classes=n, verbose=0).fit(X, y).module_
    model.eval()
    expl = {"lime_64": LimeExplainer(n_samples=64, random_state=0),
            "lime_1000": LimeExplainer(n_samples=1000, random_state=0),
            "gradient": GradientExplainer(),
            "cube_8": GradientExplainer(n_steps=8, path="cube", random_state=0)}
    amortized = AmortizedLimeExplainer(random_state=0)
    (_, fit_s) = _timed(lambda: amortized.fit(model, torch.as_tensor(X[:2000]).float().div(255).cuda()))
    expl["amortized"] = amortized
    summary["amortized_fit_2000_s"] = fit_s
    summary["explain_images_per_s"] = {}
    for name, e in expl.items():
        m = 64 if name == "lime_1000" else 256
        _, dur = _timed(lambda e=e, m=m: e.explain(model, Xt[:m]))
        summary["explain_images_per_s"][name] = m / dur
    _, dur = _timed(lambda: PGD(eps=8 / 255, steps=20, random_state=0).perturb(model, Xt, yt))
    summary["pgd20_images_per_s"] = len(Xt) / dur
    print(json.dumps(summary["explain_images_per_s"], indent=1), flush=True)

    runs = {}
    for method in ("fgsm_rs", "full_gradient"):
        cfg = TrainConfig(**{**base, "train_subset": 0, "epochs": 2}, method=method, lr=0.2, lr_schedule="onecycle",
                          augment=True)
        Xa, ya, _ = load_dataset(cfg)
        clf = build_estimator(cfg, n_classes=n, verbose=0)
        _, dur = _timed(lambda clf=clf: clf.fit(Xa, ya))
        runs[method] = {"wall_s": dur, "clean": clean_accuracy(clf.module_, Xt, yt),
                        "pgd20": robust_accuracy(clf.module_, Xt, yt, PGD(eps=8 / 255, steps=20, random_state=0))}
    summary["two_epoch_runs"] = runs
    print(json.dumps(runs, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"summary: {args.out}")


if __name__ == "__main__":
    main()
