"""BatchNorm running statistics kept in bf16 against float32: how far they end from the truth.

DeepSpeed's bf16 mode casts the parameters to bf16 and leaves the buffers alone; one way to
satisfy CUDA's channels-first BatchNorm backward would be to cast the running statistics to
bf16 as well. This measures what that costs, on the CPU (the update is the same arithmetic on
any device: ``running = (1 - momentum) * running + momentum * batch``, rounded to the buffer's
dtype). A BatchNorm2d (momentum 0.1, as every seltrain model) sees ``--steps`` batches drawn
from a fixed distribution whose per-channel mean and variance are known; the running
statistics start at their defaults (mean 0, var 1). Reported: the worst relative error of the
running mean and variance against the true values at the end, for float32 and bf16 buffers,
beside the spread of the batch statistics themselves (the noise floor a running average
reaches).

    python benchmarks/bench_bn_stats.py        # writes benchmarks/results/bench_bn_stats.json
"""
from __future__ import annotations

import argparse
import json
import os

import torch


def run(steps: int, batch: int, channels: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    # Channel means 1..8 and standard deviations 0.5..2: the scale of post-conv activations.
    mean = torch.linspace(1.0, 8.0, channels)
    std = torch.linspace(0.5, 2.0, channels)
    bns = {}
    for dtype in (torch.float32, torch.bfloat16):
        bn = torch.nn.BatchNorm2d(channels, momentum=0.1)
        bn.running_mean.data = bn.running_mean.data.to(dtype)
        bn.running_var.data = bn.running_var.data.to(dtype)
        bns[str(dtype).split(".")[-1]] = bn
    batch_err_mean = []
    with torch.no_grad():
        for _ in range(steps):
            x = mean.view(1, -1, 1, 1) + std.view(1, -1, 1, 1) * torch.randn(
                batch, channels, 8, 8, generator=g)
            batch_err_mean.append(float(((x.mean((0, 2, 3)) - mean) / mean).abs().max()))
            for bn in bns.values():
                # the running update as torch computes it (in float32), stored in the buffer's dtype
                m, v = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
                rm, rv = bn.running_mean, bn.running_var
                rm.copy_((rm.float() * 0.9 + 0.1 * m).to(rm.dtype))
                rv.copy_((rv.float() * 0.9 + 0.1 * v).to(rv.dtype))
    out = {"steps": steps, "batch": batch, "channels": channels, "momentum": 0.1,
           "batch_mean_rel_error_median": sorted(batch_err_mean)[len(batch_err_mean) // 2]}
    for name, bn in bns.items():
        out[name] = {
            "running_mean_rel_error_max": float(((bn.running_mean.float() - mean) / mean).abs().max()),
            "running_var_rel_error_max": float(((bn.running_var.float() - std ** 2)
                                                / std ** 2).abs().max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "bench_bn_stats.json"))
    a = ap.parse_args()
    r = run(a.steps, a.batch, a.channels, a.seed)
    for name in ("float32", "bfloat16"):
        print(f"{name:9s} running mean: worst rel. error {r[name]['running_mean_rel_error_max']:.4f}"
              f"   running var: {r[name]['running_var_rel_error_max']:.4f}")
    print(f"batch means' own spread (median worst rel. error): "
          f"{r['batch_mean_rel_error_median']:.4f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(r, f, indent=2)
    print(f"saved {a.json}")


if __name__ == "__main__":
    main()
