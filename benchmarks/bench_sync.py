"""What global selectivity statistics cost: a 2-rank training step with sync global vs local.

    .venv/bin/python benchmarks/bench_sync.py            # ~2-4 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_sync.py --steps 20 --skip-payload

Part 1 (the figure in docs/performance.md): ResNet20, CIFAR-sized input (32x32), batch 128
per rank, 2 gloo ranks on CPU, the full training step (forward, CE - alpha * mean SI over the
9 residual blocks, DDP backward, SGD step). ``global`` adds one all-reduce of the per-class
sums and counts in the forward pass (the fused regularizer's one buffer; its backward needs
no collective, see distributed._AllReduceSum); ``local`` adds none. Steps of the two modes are
interleaved in blocks so machine load drifts hit both alike; the median step time is
reported. Target: global at most 5% over local.

Part 2: the payload at ImageNet scale, 1000 classes x 15104 probed units (ResNet50's block
outputs: 3x256 + 4x512 + 6x1024 + 3x2048), local batch 128: dense fp32 (with an all-reduced
backward, ``replicated=False``, beside it), present-only rows (exact, with a host sync; and
static, sync-free), bf16, forward plus backward of ``all_reduce_stats`` alone, with bytes per
step.

Results go to benchmarks/results/bench_sync.json.

Measured 2026-11-30 on 2 shared CPU cores, gloo, torch 2.14.1, 1 thread per rank, with
``--payload-reps 10 --blocks 10`` on a quiet machine (load average 1-2): step median global
403 ms vs local 392 ms, ratio 1.029 (target <= 1.05; other runs 0.967 and 1.023 at load 2-6,
1.198 and 0.918 with fewer blocks at load 10-30: wall time here is that noisy); 13,480 B of SI
statistics all-reduced per step, forward only (DDP's gradients: 1,089,896 B). Payload K=1000,
U=15104, 128/rank (218 classes present in the 256-sample global batch), bytes per step and
fwd+bwd time: dense 60.4 MB 190 ms (120.8 MB 250 ms with the backward all-reduced too);
present-only exact 13.2 MB 169 ms (a host sync), static 256 rows 15.5 MB 164 ms (none); bf16
30.2 MB 207 ms; static present-only + bf16 7.7 MB 165 ms. Over loopback the times are mostly
local copies of 60 MB buffers; the bytes are what a real network charges for.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

RESNET50_UNITS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3  # 15104 block-output units


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payload_bytes(widths, k, rows=None, bf16=False) -> int:
    """Bytes of the forward statistics all-reduce: every row (and the counts packed in), or
    ``rows`` rows after a separate counts all-reduce of K floats."""
    if rows is None:
        return (k * sum(widths) + k) * (2 if bf16 else 4)
    return rows * sum(widths) * (2 if bf16 else 4) + 4 * k


def _step_bench(rank: int, args, port: int, out: dict) -> None:
    from functools import partial

    from torch.nn import functional as F

    from seltrain import distributed
    from seltrain.models import build_model
    from seltrain.probes import Probe, resolve_layers
    from seltrain.selectivity import selectivity_penalty

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    ctx = distributed.setup()
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, 32)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    probe = Probe(model, resolve_layers(model, "blocks")).attach()
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    reducers = {"global": partial(distributed.all_reduce_stats), "local": None}

    def step(mode):
        t0 = time.perf_counter()
        ce = F.cross_entropy(ddp(x), y)
        mu_si, _ = selectivity_penalty(probe.pop(), y, 10, reduce=reducers[mode])
        (ce - args.alpha * mu_si).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times = {"global": [], "local": []}
    for mode in ("global", "local"):
        for _ in range(args.warmup):
            step(mode)
    for block in range(args.blocks):
        order = ("global", "local") if block % 2 == 0 else ("local", "global")
        for mode in order:
            for _ in range(args.steps):
                # Both ranks time the same step; the slower rank's time is the step's.
                t = torch.tensor([step(mode)], dtype=torch.float64)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                times[mode].append(float(t))
    widths = [16] * 3 + [32] * 3 + [64] * 3
    if rank == 0:
        out["step"] = {
            "median_s": {m: statistics.median(v) for m, v in times.items()},
            "mean_s": {m: statistics.fmean(v) for m, v in times.items()},
            "n_steps": {m: len(v) for m, v in times.items()},
            "si_payload_bytes": _payload_bytes(widths, 10),
            "ddp_grad_bytes": 4 * sum(p.numel() for p in model.parameters()),
        }
    distributed.teardown(ctx)


def _payload_bench(rank: int, args, port: int, out: dict) -> None:
    from seltrain import distributed
    from seltrain.selectivity import class_stats

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    ctx = distributed.setup()
    k = 1000
    gen = torch.Generator().manual_seed(rank)
    # The fused regularizer's one [N, sum U] matrix, hence one [K, sum U] buffer.
    acts = torch.rand(args.batch, sum(RESNET50_UNITS), generator=gen)
    labels = torch.randint(0, k, (args.batch,), generator=gen)
    present = int((torch.bincount(labels, minlength=k) > 0).sum())
    counts_all = torch.bincount(labels, minlength=k).double()
    torch.distributed.all_reduce(counts_all)
    present_global = int((counts_all > 0).sum())
    global_batch = 2 * args.batch
    sums, counts = class_stats(acts, labels, k)
    modes = {  # name: (all_reduce_stats keywords, rows shipped, backward collective)
        "dense_fp32": ({}, None, False),
        "dense_fp32_allreduce_backward": ({"replicated": False}, None, True),
        "present_only_exact": ({"present_only": True}, present_global, False),
        "present_only_static": ({"present_only": True, "max_rows": global_batch},
                                min(k, global_batch), False),
        "bf16": ({"bf16": True}, None, False),
        "present_only_static_bf16": ({"present_only": True, "max_rows": global_batch,
                                      "bf16": True}, min(k, global_batch), False)}
    res = {}
    for name, (kw, rows, backward_collective) in modes.items():
        ts = []
        for i in range(args.payload_reps + 1):
            leaf = sums.detach().requires_grad_()
            torch.distributed.barrier()
            t0 = time.perf_counter()
            (red,), _ = distributed.all_reduce_stats([leaf * 1], counts, **kw)
            red.sum().backward()
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            if i:  # the first is warm-up
                ts.append(float(t))
        fwd = _payload_bytes(RESNET50_UNITS, k, rows, kw.get("bf16", False))
        res[name] = {"median_s": statistics.median(ts), "rows": rows or k,
                     "bytes_forward": fwd,
                     "bytes_per_step": fwd + (fwd if backward_collective else 0),
                     "host_sync": name == "present_only_exact"}
    if rank == 0:
        out["payload"] = {"classes": k, "units": sum(RESNET50_UNITS), "local_batch": args.batch,
                          "global_batch": global_batch,
                          "present_classes_global": present_global,
                          "present_classes_rank0": present, "modes": res,
                          "note": "forward and backward of all_reduce_stats alone on one "
                                  "fused [K, sum U] buffer; the backward needs a collective "
                                  "only with replicated=False"}
    distributed.teardown(ctx)


def _run(fn, args) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(fn, args=(args, _free_port(), out), nprocs=2, join=True)
        return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="per rank")
    p.add_argument("--alpha", type=float, default=-1.0)
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--blocks", type=int, default=4, help="interleaved global/local blocks")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (2 cores)")
    p.add_argument("--payload-reps", type=int, default=5)
    p.add_argument("--skip-payload", action="store_true")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                 "bench_sync.json"))
    args = p.parse_args()

    result = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "backend": "gloo", "world_size": 2, "args": vars(args)}
    result.update(_run(_step_bench, args))
    s = result["step"]
    ratio = s["median_s"]["global"] / s["median_s"]["local"]
    s["global_over_local"] = ratio
    print(f"resnet20, batch {args.batch}/rank, 2 gloo ranks: step median global "
          f"{s['median_s']['global'] * 1e3:.1f} ms, local {s['median_s']['local'] * 1e3:.1f} ms, "
          f"ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f}%; target <= +5%)")
    print(f"  all-reduced per step: SI stats {s['si_payload_bytes']} B, forward only (the "
          f"backward needs no collective; DDP gradients: {s['ddp_grad_bytes']} B)")
    if not args.skip_payload:
        result.update(_run(_payload_bench, args))
        pl = result["payload"]
        print(f"payload K={pl['classes']} U={pl['units']} batch {pl['local_batch']}/rank "
              f"({pl['present_classes_global']} classes present globally):")
        for name, m in pl["modes"].items():
            print(f"  {name:30s} {m['bytes_per_step'] / 1e6:8.2f} MB/step  "
                  f"{m['median_s'] * 1e3:8.1f} ms (fwd+bwd)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
