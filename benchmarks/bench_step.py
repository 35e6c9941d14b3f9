"""Training-step cost of seltrain against a plain PyTorch loop, side by side in one run.

Forms (same model, same data, same optimizer, same batches):
  plain    a hand-written loop: forward, CE, backward, SGD step; no probes
  alpha0   seltrain's Trainer.train_epoch with alpha = 0 (probes detached)
  alpha-1  seltrain's Trainer.train_epoch with alpha = -1 (probes + SI regularizer)

Rounds interleave the three forms so drifting machine load hits all of them alike; the
median seconds per step over rounds is reported. Targets (issue 2): the regularizer costs at
most 5% of the step (alpha-1 / alpha0 <= 1.05) and seltrain at alpha = 0 keeps at least 95%
of the plain loop's throughput (plain / alpha0 >= 0.95).

    python benchmarks/bench_step.py                      # resnet20, batch 128, CPU
    python benchmarks/bench_step.py --arch resnet50 --image-size 224 --bf16 \
        --channels-last --device cuda                    # the GPU figure in the README
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seltrain.config import load_config  # noqa: E402
from seltrain.metrics import NullSink  # noqa: E402
from seltrain.trainer import Trainer  # noqa: E402


def make_trainer(args, alpha: float) -> Trainer:
    n = args.batch * (args.steps + 1)
    ov = ["data.dataset=synthetic", "data.val_size=0", f"data.synthetic.train_size={n}",
          "data.synthetic.test_size=64", f"data.synthetic.image_size={args.image_size}",
          f"data.synthetic.num_classes={args.classes}", f"model.arch={args.arch}",
          f"train.batch_size={args.batch}", f"train.max_steps_per_epoch={args.steps}",
          f"train.epochs={args.rounds + 2}", f"train.bf16={args.bf16}",
          f"train.channels_last={args.channels_last}", "train.schedule=constant",
          f"selectivity.alpha={alpha}", "run.progress=false", "run.tensorboard=false",
          "train.deterministic=false"]
    cfg = load_config(None, ov)
    ctx = None
    if args.device == "cuda":
        from seltrain.distributed import DistContext

        ctx = DistContext(device=torch.device("cuda", 0))
    return Trainer(cfg, ctx, run_dir=os.path.join(args.out, f"alpha{alpha}"))


def plain_epoch(tr: Trainer, model, opt, epoch: int, steps: int) -> float:
    """The hand-written loop, fed the very same batches as seltrain's loader."""
    tr.data.train.set_epoch(epoch)
    model.train()
    sync(tr)
    t0 = time.perf_counter()
    for i, (xb, yb) in enumerate(tr.data.train):
        if i >= steps:
            break
        x, y = tr.preprocess(xb, yb)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=tr.cfg.train.bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    sync(tr)
    return (time.perf_counter() - t0) / steps


def seltrain_epoch(tr: Trainer, epoch: int, steps: int) -> float:
    sync(tr)
    t0 = time.perf_counter()
    tr.train_epoch(epoch, NullSink(), global_step=1)  # step 1: no periodic batch-SI reading
    sync(tr)
    return (time.perf_counter() - t0) / steps


def sync(tr):
    if tr.ctx.device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", default="/tmp/seltrain-bench")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "bench_step.json"))
    args = p.parse_args()

    trainers = {"alpha0": make_trainer(args, 0.0), "alpha-1": make_trainer(args, -1.0)}
    ref = trainers["alpha0"]
    from seltrain.models import build_model

    # Same architecture, its own weights and optimizer.

    model = build_model(args.arch, ref.info.num_classes, ref.info.channels, ref.data.image_size)
    model = model.to(ref.ctx.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    times = {"plain": [], "alpha0": [], "alpha-1": []}
    # Round 0 warms up every form (allocator, oneDNN/cuDNN kernels) and is discarded.
    for rnd in range(args.rounds + 1):
        t = {"plain": plain_epoch(ref, model, opt, rnd, args.steps),
             "alpha0": seltrain_epoch(trainers["alpha0"], rnd, args.steps),
             "alpha-1": seltrain_epoch(trainers["alpha-1"], rnd, args.steps)}
        if rnd:
            for k, v in t.items():
                times[k].append(v)
        print(f"round {rnd}: " + "  ".join(f"{k} {v * 1000:.1f} ms/step" for k, v in t.items()),
              flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    result = {
        "arch": args.arch, "image_size": args.image_size, "batch": args.batch,
        "device": str(ref.ctx.device), "bf16": args.bf16, "channels_last": args.channels_last,
        "steps_per_round": args.steps, "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "median_s_per_step": med, "images_per_s": ips,
        "regularizer_overhead": med["alpha-1"] / med["alpha0"] - 1,
        "alpha0_vs_plain_throughput": ips["alpha0"] / ips["plain"],
        "targets": {"regularizer_overhead_max": 0.05, "alpha0_vs_plain_min": 0.95},
    }
    result["targets_met"] = (result["regularizer_overhead"] <= 0.05 and
                             result["alpha0_vs_plain_throughput"] >= 0.95)
    print(f"\nimages/s: plain {ips['plain']:.1f}  seltrain alpha=0 {ips['alpha0']:.1f}  "
          f"seltrain alpha=-1 {ips['alpha-1']:.1f}")
    print(f"regularizer overhead (alpha=-1 vs alpha=0 step time): "
          f"{result['regularizer_overhead'] * 100:+.1f}%  (target <= +5%)")
    print(f"seltrain alpha=0 throughput / plain loop: "
          f"{result['alpha0_vs_plain_throughput']:.3f}  (target >= 0.95)")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
