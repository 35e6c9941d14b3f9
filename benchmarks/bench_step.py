"""Training-step cost of seltrain against a plain PyTorch loop, side by side in one run.

Forms (same model, same data, same optimizer, same batches):
  plain    a hand-written loop: forward, CE, backward, SGD step; no probes; its loss summed
           on the device and read every LOG_EVERY steps, as seltrain's loop reads its own
  alpha0   seltrain's Trainer.train_epoch with alpha = 0 (probes detached)
  alpha-1  seltrain's Trainer.train_epoch with alpha = -1 (probes + SI regularizer)
  alpha-1_per_layer  (with --compare-per-layer) the unfused reference step:
           Trainer.train_epoch with the per-layer penalty
           (selectivity_penalty_per_layer_reference) and three host reads per step
           (loss.item(), ce.item() and float(mu_si)), the kernel launches and host syncs
           the fused step avoids, measured in the same run as the fused one.

The data is synthetic, held in the device's memory and not augmented (data.on_device,
data.augment=false), so no form does host work per step besides its own. Each form also
records the host's milliseconds per step (the pace at which the host issues steps, before the
closing sync). Rounds interleave the forms so drifting machine load hits all of them alike; the median
seconds per step over rounds is reported, by wall clock and by this process's CPU time
(``--clock cpu`` makes the CPU time the headline: on a CPU shared with other jobs it is far
steadier than wall time; on a GPU only wall time means anything). Targets: the
regularizer costs at most 5% of the step (alpha-1 / alpha0 <= 1.05) and seltrain at alpha = 0
keeps at least 95% of the plain loop's throughput (plain / alpha0 >= 0.95).

    python benchmarks/bench_step.py                      # resnet20, batch 128, CPU
    python benchmarks/bench_step.py --arch resnet50 --image-size 64 --classes 1000 \
        --compare-per-layer --json benchmarks/results/bench_step_resnet50.json
    python benchmarks/bench_step.py --arch resnet50 --image-size 224 --classes 1000 --bf16 \
        --channels-last --device cuda                    # the GPU figure (gpu_check.py runs it)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seltrain import trainer as trainer_module  # noqa: E402
from seltrain.config import load_config  # noqa: E402
from seltrain.metrics import NullSink  # noqa: E402
from seltrain.selectivity import selectivity_penalty_per_layer_reference  # noqa: E402
from seltrain.trainer import Trainer  # noqa: E402

PER_LAYER = "alpha-1_per_layer"


def make_trainer(args, alpha: float, extra: tuple[str, ...] = ()) -> Trainer:
    n = args.batch * (args.steps + 1)
    ov = ["data.dataset=synthetic", "data.val_size=0", f"data.synthetic.train_size={n}",
          "data.synthetic.test_size=64", f"data.synthetic.image_size={args.image_size}",
          f"data.synthetic.num_classes={args.classes}", f"model.arch={args.arch}",
          f"train.batch_size={args.batch}", f"train.max_steps_per_epoch={args.steps}",
          f"train.epochs={args.rounds + 2}", f"train.bf16={args.bf16}",
          f"train.channels_last={args.channels_last}", "train.schedule=constant",
          f"selectivity.alpha={alpha}", "run.progress=false", "run.tensorboard=false",
          f"train.deterministic={args.deterministic}",
          f"train.cudnn_benchmark={args.cudnn_benchmark}",
          # No host work per step in any form: the synthetic set sits in the device's memory
          # and is not augmented, so the forms differ in their step alone.
          "data.augment=false", "data.on_device=true", *extra]
    cfg = load_config(None, ov)
    ctx = None
    if args.device == "cuda":
        from seltrain.distributed import DistContext

        ctx = DistContext(device=torch.device("cuda", 0))
    return Trainer(cfg, ctx, run_dir=os.path.join(args.out, f"alpha{alpha}"))


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _per_step(t0: tuple[float, float], steps: int, stamps: list[float]
              ) -> tuple[float, float, float]:
    """(wall, CPU, host) seconds per step. Host: the time between the ends of the first and
    the last step on the host, before the closing sync: how long the host takes to issue a
    step. On a GPU a host time well below the wall time means the GPU, not Python, sets the
    pace."""
    wall, cpu = _clocks()
    host = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return (wall - t0[0]) / steps, (cpu - t0[1]) / steps, host


def plain_epoch(tr: Trainer, model, opt, epoch: int, steps: int) -> tuple[float, float, float]:
    """The hand-written loop, fed the very same batches as seltrain's loader, reading its loss
    as seltrain does: summed on the device and read every LOG_EVERY steps (a loss.item() per
    step would make the host wait for the GPU every step, which seltrain's loop never does)."""
    tr.data.train.set_epoch(epoch)
    model.train()
    sync(tr)
    t0 = _clocks()
    stamps: list[float] = []
    total = torch.zeros((), dtype=torch.float64, device=tr.ctx.device)
    for i, (x, y) in enumerate(tr.preprocess.batches(tr.data.train, limit=steps)):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=tr.cfg.train.bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        total += loss.detach()
        if (i + 1) % trainer_module.LOG_EVERY == 0:
            total.item()
        stamps.append(time.perf_counter())
    total.item()
    sync(tr)
    return _per_step(t0, steps, stamps)


@contextlib.contextmanager
def before_the_fusion(tr: Trainer):
    """The step as it was: the per-layer penalty, and three host reads per step."""
    backward = tr.engine.backward

    def backward_and_read(loss):
        backward(loss)
        for _ in range(3):  # loss.item(), ce.item(), float(mu_si)
            loss.item()

    saved = trainer_module.selectivity_penalty
    trainer_module.selectivity_penalty = selectivity_penalty_per_layer_reference
    tr.engine.backward = backward_and_read
    try:
        yield
    finally:
        trainer_module.selectivity_penalty = saved
        tr.engine.backward = backward


def seltrain_epoch(tr: Trainer, epoch: int, steps: int,
                   per_layer: bool = False) -> tuple[float, float, float]:
    stamps: list[float] = []

    def stamp(_global_step: int) -> None:
        stamps.append(time.perf_counter())

    tr.step_hooks.append(stamp)
    try:
        with before_the_fusion(tr) if per_layer else contextlib.nullcontext():
            sync(tr)
            t0 = _clocks()
            tr.train_epoch(epoch, NullSink(), global_step=1)  # step 1: no batch-SI read
            sync(tr)
    finally:
        tr.step_hooks.remove(stamp)
    return _per_step(t0, steps, stamps)


def penalty_ops(widths: list[int], batch: int, classes: int) -> dict:
    """ATen ops (kernel launches on a GPU; views excluded) of one regularizer forward plus
    backward, fused and per layer, at these layer widths: counted, not timed."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from seltrain import selectivity

    class CountOps(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            is_view = not func._schema.is_mutable and any(r.alias_info
                                                          for r in func._schema.returns)
            self.n += not is_view
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (batch,), generator=gen)
    acts = [torch.rand(batch, w, generator=gen).requires_grad_() * 1 for w in widths]
    out = {}
    cpu_form, selectivity.CPU_FORM = selectivity.CPU_FORM, False  # the form a GPU runs
    try:
        for name, fn in (("fused", selectivity.selectivity_penalty),
                         ("per_layer", selectivity_penalty_per_layer_reference)):
            fn(acts, y, classes)
            with CountOps() as c:
                mu, _ = fn(acts, y, classes)
                torch.autograd.grad(mu, acts)
            out[name] = c.n
    finally:
        selectivity.CPU_FORM = cpu_form
    return out


def penalty_times(widths: list[int], batch: int, classes: int, device: str,
                  reps: int = 20) -> dict:
    """Median ms of one regularizer forward plus backward alone: fused (as trained), fused in
    the form a GPU runs (on a CPU: without selectivity.CPU_FORM), and per layer. CPU time on a
    CPU (steadier on a shared machine), wall time with a sync on a GPU."""
    from seltrain import selectivity

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    base = [torch.rand(batch, w, generator=gen).to(device) for w in widths]
    cpu_form = selectivity.CPU_FORM
    forms = {"fused": (selectivity.selectivity_penalty, cpu_form),
             "fused_gpu_form": (selectivity.selectivity_penalty, False),
             "per_layer": (selectivity_penalty_per_layer_reference, cpu_form)}
    times = {k: [] for k in forms}
    clock = time.perf_counter if device == "cuda" else time.process_time
    try:
        for rep in range(reps + 2):  # two warm-up rounds
            for name, (fn, form) in forms.items():
                selectivity.CPU_FORM = form
                acts = [a.clone().requires_grad_() for a in base]
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = clock()
                mu, _ = fn([a * 1 for a in acts], y, classes)
                mu.backward()
                if device == "cuda":
                    torch.cuda.synchronize()
                if rep >= 2:
                    times[name].append((clock() - t0) * 1e3)
    finally:
        selectivity.CPU_FORM = cpu_form
    return {k: statistics.median(v) for k, v in times.items()}


def sync(tr):
    if tr.ctx.device.type == "cuda":
        torch.cuda.synchronize()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--deterministic", action="store_true",
                   help="train.deterministic=true (default false, as the GPU recipes)")
    p.add_argument("--cudnn-benchmark", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--compare-per-layer", action="store_true",
                   help="also time the step before the SI fusion and the host-sync change")
    p.add_argument("--out", default="/tmp/seltrain-bench")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "bench_step.json"))
    p.add_argument("--no-plain", action="store_true",
                   help="skip the plain loop (when only the regularizer's cost is wanted)")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="the headline clock (both are saved)")
    p.add_argument("--quiet", action="store_true", help="no per-round lines")
    return p


def run(args) -> dict:
    """Time the forms; return the result dict (what main() prints and saves)."""
    load_start = os.getloadavg()
    trainers = {"alpha0": make_trainer(args, 0.0), "alpha-1": make_trainer(args, -1.0)}
    ref = trainers["alpha0"]
    from seltrain.models import build_model

    # Same architecture, its own weights and optimizer.
    model = build_model(args.arch, ref.info.num_classes, ref.info.channels, ref.data.image_size)
    model = model.to(ref.ctx.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    plain = not getattr(args, "no_plain", False)
    forms = ["plain"] * plain + ["alpha0", "alpha-1"] + [PER_LAYER] * args.compare_per_layer
    times = {k: [] for k in forms}
    cpu_times = {k: [] for k in forms}
    host_times = {k: [] for k in forms}
    # Round 0 warms up every form (allocator, oneDNN/cuDNN kernels) and is discarded.
    for rnd in range(args.rounds + 1):
        t = {}
        for form in forms:
            if form == "plain":
                t[form] = plain_epoch(ref, model, opt, rnd, args.steps)
            elif form == PER_LAYER:
                t[form] = seltrain_epoch(trainers["alpha-1"], rnd, args.steps, per_layer=True)
            else:
                t[form] = seltrain_epoch(trainers[form], rnd, args.steps)
        if rnd:
            for k, (wall, cpu, host) in t.items():
                times[k].append(wall)
                cpu_times[k].append(cpu)
                host_times[k].append(host)
        if not args.quiet:
            print(f"round {rnd}: " + "  ".join(f"{k} {w * 1000:.1f} ms/step (cpu {c * 1000:.1f}, "
                                              f"host {h * 1000:.1f})"
                                              for k, (w, c, h) in t.items()), flush=True)

    clock = getattr(args, "clock", "wall")
    med_wall = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
    med = med_cpu if clock == "cpu" else med_wall
    ips = {k: args.batch / v for k, v in med.items()}
    result = {
        "arch": args.arch, "image_size": args.image_size, "classes": args.classes,
        "batch": args.batch, "device": str(ref.ctx.device), "bf16": args.bf16,
        "channels_last": args.channels_last, "deterministic": args.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "probed_layers": len(ref.layer_names),
        "probed_units": sum(ref.layer_units.values()),
        "steps_per_round": args.steps, "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_average_1_5_15": {"start": load_start, "end": os.getloadavg()},
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "clock": clock, "median_s_per_step": med, "median_wall_s_per_step": med_wall,
        "median_cpu_s_per_step": med_cpu,
        "median_host_ms_per_step": {k: statistics.median(v) * 1e3
                                    for k, v in host_times.items()},
        "data": "synthetic, held in device memory (data.on_device), not augmented",
        "loss_read_every": trainer_module.LOG_EVERY, "wall_s_per_step_all_rounds": times,
        "cpu_s_per_step_all_rounds": cpu_times, "images_per_s": ips,
        "regularizer_overhead": med["alpha-1"] / med["alpha0"] - 1,
        "alpha0_vs_plain_throughput": ips["alpha0"] / ips["plain"] if plain else None,
        "targets": {"regularizer_overhead_max": 0.05, "alpha0_vs_plain_min": 0.95},
    }
    if args.compare_per_layer:
        result["regularizer_overhead_per_layer_before"] = med[PER_LAYER] / med["alpha0"] - 1
        result["fused_vs_per_layer_step_time"] = med["alpha-1"] / med[PER_LAYER]
        widths = list(ref.layer_units.values())
        result["penalty_ops_fwd_bwd"] = penalty_ops(widths, args.batch, args.classes)
        result["penalty_ms_fwd_bwd"] = penalty_times(widths, args.batch, args.classes,
                                                     args.device)
    result["targets_met"] = (result["regularizer_overhead"] <= 0.05 and
                             (not plain or result["alpha0_vs_plain_throughput"] >= 0.95))
    return result


def main():
    args = parser().parse_args()
    result = run(args)
    ips = result["images_per_s"]
    print(f"\nimages/s: plain {ips.get('plain', float('nan')):.1f}  seltrain alpha=0 "
          f"{ips['alpha0']:.1f}  seltrain alpha=-1 {ips['alpha-1']:.1f}")
    print(f"regularizer overhead (alpha=-1 vs alpha=0 step time): "
          f"{result['regularizer_overhead'] * 100:+.1f}%  (target <= +5%)")
    if args.compare_per_layer:
        print(f"  before the fusion (per-layer penalty, 3 host reads per step): "
              f"{result['regularizer_overhead_per_layer_before'] * 100:+.1f}%; fused step / "
              f"per-layer step {result['fused_vs_per_layer_step_time']:.3f}")
        ops, ms = result["penalty_ops_fwd_bwd"], result["penalty_ms_fwd_bwd"]
        print(f"  regularizer ops (GPU kernel launches) per step, forward + backward: fused "
              f"{ops['fused']}, per layer {ops['per_layer']}")
        print(f"  regularizer alone, forward + backward: fused {ms['fused']:.1f} ms, fused "
              f"in the GPU's form {ms['fused_gpu_form']:.1f} ms, per layer "
              f"{ms['per_layer']:.1f} ms")
    if result["alpha0_vs_plain_throughput"] is not None:
        print(f"seltrain alpha=0 throughput / plain loop: "
              f"{result['alpha0_vs_plain_throughput']:.3f}  (target >= 0.95)")
    print(f"load average (1/5/15 min) at the end: {result['load_average_1_5_15']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
