"""Does bf16 autocast / channels_last pay on this CPU?  SmallCNN train steps, side by side.

Times one SGD step (forward, backward, update) on a batch of random 32x32 images for fp32,
channels_last, bf16 autocast and both, interleaved over ``--rounds`` so the machine's noise
hits every configuration alike, and reports the median seconds per step and the ratio to fp32.
Also says whether the CPU has native bfloat16 (``attribshield._runtime.cpu_has_native_bf16``):
without it PyTorch emulates bf16 and autocast is far slower than fp32.

    python benchmarks/precision_check.py [--batch 128] [--steps 3] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from attribshield._runtime import cpu_has_native_bf16, tune_allocator
from attribshield.models import SmallCNN

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {"fp32": (False, None), "channels_last": (True, None), "bf16": (False, torch.bfloat16),
           "channels_last+bf16": (True, torch.bfloat16)}


def step_time(channels_last, dtype, batch, steps):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=10)
    x = torch.rand(batch, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "..", "runs", "benchmarks", "precision_check.json"))
    args = p.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    res = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, (cl, dtype) in CONFIGS.items():
            res[name].append(step_time(cl, dtype, args.batch, args.steps))
    native = cpu_has_native_bf16()
    print(f"native bf16 on this CPU: {native}")
    print(f"{'config':<20}{'s/step':>10}{'vs fp32':>10}")
    rows = []
    for name, ts in res.items():
        med = float(np.median(ts))
        rows.append({"config": name, "seconds_per_step": med, "ratio_to_fp32": med / float(np.median(res["fp32"]))})
        print(f"{name:<20}{med:>10.3f}{rows[-1]['ratio_to_fp32']:>10.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "native_bf16": native, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
