"""The GPU check: every figure a GPU should give, in one command, as JSON.

    python benchmarks/gpu_check.py              # on a CUDA machine: the full check, < 10 min
    python benchmarks/gpu_check.py --reduced    # the CPU-sized version (tests run it)

Without CUDA the reduced version runs (resnet20, 16 px, batch 8, a few steps), so the script
is tested where no GPU is; its timings mean nothing there. Results go to
benchmarks/results/gpu_check.json (full) or gpu_check_reduced.json.

Sections of the JSON, each with its settings beside its numbers:
1. ``step``: bench_step.py's forms for ResNet50 at 224 px, bf16, channels_last, 1000 classes,
   batch 128: ms per step of a plain PyTorch loop, seltrain at alpha = 0 and at alpha = -1;
   regularizer overhead (target <= 5%) and alpha = 0 against the plain loop (>= 0.95).
2. ``step_settings``: the same under train.deterministic=true (no cuDNN benchmarking), and
   deterministic off with cuDNN benchmarking off and on (on is the GPU recipes' default).
3. ``host_syncs``: synchronizing CUDA calls per training step, counted as the warnings of
   torch.cuda.set_sync_debug_mode("warn") (on the CPU: tensor reads, as the test counts).
4. ``profile``: kernels per step at alpha = -1 and alpha = 0 (their difference: the SI
   kernels), and the GPU's idle time between the last kernel of the model's forward pass and
   the first convolution-backward kernel (the window the SI graph sits in).
5. ``eval`` and ``memory``: ms per evaluation batch with selectivity.eval_si on and off; peak
   GPU memory of a training epoch at alpha = 0 and alpha = -1.
6. ``ffcv_eval``: Trainer.evaluate on real .beton files through the trainer's (borrowing)
   path against a loader that copies every batch: accuracy and SI compared bitwise; and, as a
   control, an evaluation loop without the wait (a non_blocking copy of each borrowed,
   pinned buffer, and the next batch drawn at once), the race the trainer's path closes.
7. ``ablation``: time and peak memory of a fast single-unit ablation of layer1.0
   (seltrain.analysis.ablation.single_unit_ablation, fast=True).
8. ``deepspeed_bf16`` (CUDA only): two DeepSpeed bf16 steps in this process (ZeRO-1 from
   configs/deepspeed/zero1_bf16.json, overlap_comm on): the group it makes is NCCL, and the
   BatchNorm running statistics stay float32 next to the bf16 weights, and move.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from types import SimpleNamespace

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import bench_step  # noqa: E402
from seltrain.data import sources  # noqa: E402
from seltrain.metrics import NullSink  # noqa: E402
from seltrain.trainer import LOG_EVERY  # noqa: E402

FULL = dict(arch="resnet50", image_size=224, classes=1000, batch=128, steps=10, rounds=5,
            bf16=True, channels_last=True, sync_steps=2 * LOG_EVERY + 5, profile_steps=6,
            eval_images=2048, eval_batch=256, ffcv_images=1024, ablation_images=128)
REDUCED = dict(arch="resnet20", image_size=16, classes=10, batch=8, steps=2, rounds=1,
               bf16=False, channels_last=False, sync_steps=LOG_EVERY + 5, profile_steps=2,
               eval_images=64, eval_batch=32, ffcv_images=96, ablation_images=32)


def _cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def peak_memory_reset() -> None:
    if _cuda():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if _cuda() else None


@contextlib.contextmanager
def cached_synthetic():
    """Every trainer here draws the same synthetic splits: make them once (ImageNet-sized
    templates take seconds to draw)."""
    original = sources._synthetic_split
    sources._synthetic_split = functools.lru_cache(maxsize=8)(original)
    try:
        yield
    finally:
        sources._synthetic_split = original


def bench_args(p: dict, out: str, *, deterministic=False, benchmark="auto") -> SimpleNamespace:
    return SimpleNamespace(arch=p["arch"], image_size=p["image_size"], classes=p["classes"],
                           batch=p["batch"], steps=p["steps"], rounds=p["rounds"],
                           device="cuda" if _cuda() else "cpu", bf16=p["bf16"],
                           channels_last=p["channels_last"], deterministic=deterministic,
                           cudnn_benchmark=benchmark, compare_per_layer=False, out=out,
                           quiet=True)


def _step_summary(r: dict) -> dict:
    med = r["median_s_per_step"]
    return {"ms_per_step": {k: v * 1e3 for k, v in med.items()},
            "regularizer_overhead": r["regularizer_overhead"],
            "alpha0_vs_plain_throughput": r["alpha0_vs_plain_throughput"],
            "cudnn_benchmark": r["cudnn_benchmark"], "deterministic": r["deterministic"],
            "targets_met": r["targets_met"]}


# --------------------------------------------------------------------------- 1 and 2

def check_steps(p: dict, out: str) -> tuple[dict, dict]:
    settings = {"deterministic": dict(deterministic=True, benchmark="false"),
                "nondeterministic_no_benchmark": dict(deterministic=False, benchmark="false"),
                "nondeterministic_benchmark": dict(deterministic=False, benchmark="true")}
    results = {}
    for name, kw in settings.items():
        r = bench_step.run(bench_args(p, os.path.join(out, name), **kw))
        results[name] = _step_summary(r)
        print(f"  step [{name}]: " + ", ".join(f"{k} {v:.1f} ms" for k, v in
                                                 results[name]["ms_per_step"].items()),
              flush=True)
    step = dict(results["nondeterministic_benchmark"], arch=p["arch"],
                image_size=p["image_size"], classes=p["classes"], batch=p["batch"],
                bf16=p["bf16"], channels_last=p["channels_last"], steps=p["steps"],
                rounds=p["rounds"])
    det, fast = (results[k]["ms_per_step"]["alpha-1"] for k in
                 ("deterministic", "nondeterministic_benchmark"))
    return step, dict(results, benchmark_speedup_over_deterministic=det / fast)


# --------------------------------------------------------------------------- 3

def count_host_syncs(trainer, steps_done: int) -> dict:
    """Synchronizing calls during one training epoch (and per step)."""
    if _cuda():
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_epoch(0, NullSink(), global_step=0)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        where = [f"{os.path.relpath(w.filename, REPO)}:{w.lineno}" for w in syncs]
        method = 'torch.cuda.set_sync_debug_mode("warn") warnings'
    else:
        where = []
        originals = {n: getattr(torch.Tensor, n) for n in
                     ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")}

        def wrap(name, fn):
            def wrapped(self, *a, **kw):
                code = sys._getframe(1).f_code
                where.append(f"{os.path.relpath(code.co_filename, REPO)}:{code.co_name}")
                return fn(self, *a, **kw)
            return wrapped

        for n, fn in originals.items():
            setattr(torch.Tensor, n, wrap(n, fn))
        try:
            trainer.train_epoch(0, NullSink(), global_step=0)
        finally:
            for n, fn in originals.items():
                setattr(torch.Tensor, n, fn)
        method = "tensor reads (item, float, int, bool, tolist, cpu, numpy)"
    counts: dict[str, int] = {}
    for w in where:
        counts[w] = counts.get(w, 0) + 1
    return {"method": method, "steps": steps_done, "log_every": LOG_EVERY,
            "total": len(where), "per_step": len(where) / steps_done, "by_site": counts}


# --------------------------------------------------------------------------- 4

class _Annotated(torch.nn.Module):
    """The trainer's forward model inside a profiler range, so the trace marks its end."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.profiler.record_function("gpu_check.model_forward"):
            return self.inner(x)


def forward_backward_gaps(events: list[dict]) -> list[dict]:
    """Per training step, from a chrome trace of the profiler: the GPU window between the end
    of the last kernel launched inside ``gpu_check.model_forward`` and the start of the first
    kernel launched inside a convolution-backward op, its busy and idle time, and the kernels
    in it. Kernels are tied to their launches by the trace's correlation ids."""
    kernels = [e for e in events if e.get("cat") == "kernel"]
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver")
                and "correlation" in e.get("args", {})}
    forwards = sorted((e for e in events if e.get("cat") == "user_annotation"
                       and e.get("name") == "gpu_check.model_forward"), key=lambda e: e["ts"])
    conv_bwd = [e for e in events if e.get("cat") == "cpu_op"
                and "ConvolutionBackward" in e.get("name", "")]

    def inside(launch, op):
        return (launch["tid"] == op["tid"] and launch.get("pid") == op.get("pid")
                and op["ts"] <= launch["ts"] <= op["ts"] + op["dur"])

    tied = []  # (kernel, launch)
    for k in kernels:
        launch = launches.get(k.get("args", {}).get("correlation"))
        if launch is not None:
            tied.append((k, launch))
    out = []
    for i, fwd in enumerate(forwards):
        end = forwards[i + 1]["ts"] if i + 1 < len(forwards) else float("inf")
        fwd_kernels = [k for k, launch in tied if inside(launch, fwd)]
        bwd_kernels = [k for k, launch in tied if fwd["ts"] <= launch["ts"] < end
                       and any(inside(launch, op) for op in conv_bwd)]
        if not fwd_kernels or not bwd_kernels:
            continue
        w0 = max(k["ts"] + k["dur"] for k in fwd_kernels)
        w1 = min(k["ts"] for k in bwd_kernels)
        between = sorted((k["ts"], k["ts"] + k["dur"]) for k, _ in tied
                         if k["ts"] < w1 and k["ts"] + k["dur"] > w0)
        busy, cursor = 0.0, w0
        for a, b in between:
            a, b = max(a, cursor), min(b, w1)
            if b > a:
                busy += b - a
                cursor = b
        window = max(0.0, w1 - w0)
        out.append({"window_us": window, "busy_us": busy, "idle_us": window - busy,
                    "kernels_in_window": len(between)})
    return out


def profile_steps(trainer, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if _cuda() else [])
    inner = trainer.forward_model
    trainer.forward_model = _Annotated(inner)
    try:
        sync()
        with profile(activities=activities) as prof:
            # global step 1: no periodic batch-SI read at alpha = 0
            trainer.train_epoch(0, NullSink(), global_step=1)
            sync()
    finally:
        trainer.forward_model = inner
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    if _cuda():
        kernels = sum(1 for e in events if e.get("cat") == "kernel")
    else:  # no kernels on the CPU: count the ATen ops the step runs instead
        kernels = sum(1 for e in events if e.get("cat") == "cpu_op"
                      and e.get("name", "").startswith("aten::"))
    res = {"unit": "CUDA kernels" if _cuda() else "ATen ops (CPU, nested ones included)",
           "steps": steps, "per_step": kernels / steps}
    if _cuda():
        gaps = forward_backward_gaps(events)
        res["forward_to_backward"] = {
            "steps_found": len(gaps),
            **{k: statistics.median(g[k] for g in gaps) for k in
               ("window_us", "busy_us", "idle_us", "kernels_in_window")}} if gaps else None
    return res


# --------------------------------------------------------------------------- 5

def time_eval(trainer, reps: int = 3) -> dict:
    loader = trainer.data.test
    out = {}
    for eval_si in (True, False):
        trainer.cfg.selectivity.eval_si = eval_si
        trainer.evaluate(loader)  # warm-up
        ts = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            trainer.evaluate(loader)
            sync()
            ts.append(time.perf_counter() - t0)
        out[f"ms_per_batch_eval_si_{'on' if eval_si else 'off'}"] = \
            statistics.median(ts) / len(loader) * 1e3
    trainer.cfg.selectivity.eval_si = True
    out.update(batches=len(loader), batch_size=trainer.cfg.train.eval_batch_size)
    return out


def epoch_peak_memory(trainer) -> float | None:
    sync()
    peak_memory_reset()
    trainer.train_epoch(0, NullSink(), global_step=1)
    sync()
    return peak_memory_mb()


# --------------------------------------------------------------------------- 6

@torch.no_grad()
def prefix_evaluate(trainer, loader) -> dict:
    """A control: an evaluation loop that races FFCV. Each borrowed (pinned, on a GPU) buffer
    is copied with .to(device, non_blocking=True) on the compute stream, labels first, and
    nothing waits for the copy before the next batch is drawn, so a copy may read a later
    batch's pixels. It shows whether the race is visible on this GPU."""
    from seltrain.selectivity import SelectivityAccumulator

    model = trainer.engine.network
    model.eval()
    dev, pre = trainer.ctx.device, trainer.preprocess
    acc = SelectivityAccumulator(trainer.layer_units, trainer.info.num_classes, dev)
    correct = torch.zeros(2, dtype=torch.float64, device=dev)
    trainer.probe.attach()
    for xb, yb in loader:
        x = xb.to(dev, non_blocking=True)
        y = yb.clone().to(dev, non_blocking=True)
        x = ((x.float() - pre.mean) / pre.std).contiguous(memory_format=pre.memory_format)
        with trainer.autocast():
            logits = model(x)
        correct[0] += (logits.argmax(1) == y).sum()
        correct[1] += y.numel()
        acc.update(dict(zip(trainer.layer_names, trainer.probe.pop())), y)
    trainer.probe.detach()
    si = acc.si(trainer.cfg.selectivity.eps)
    c = correct.tolist()
    return {"acc": c[0] / max(c[1], 1.0), "si_units": {n: v.cpu().numpy() for n, v in si.items()}}


def check_ffcv(p: dict, work: str) -> dict:
    try:
        from seltrain.data.ffcv_pipeline import require_ffcv

        require_ffcv()
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"skipped": f"FFCV unavailable: {e}"}
    from seltrain.config import load_config
    from seltrain.data.writer import WriteOptions, write_beton
    from seltrain.distributed import DistContext
    from seltrain.trainer import Trainer

    data = ["data.dataset=synthetic", "data.val_size=0",
            f"data.synthetic.train_size={p['batch'] * 2}",
            f"data.synthetic.test_size={p['ffcv_images']}",
            f"data.synthetic.image_size={p['image_size']}",
            f"data.synthetic.num_classes={p['classes']}"]
    files = {}
    t0 = time.perf_counter()
    for split in ("train", "test"):
        files[split] = os.path.join(work, f"{split}.beton")
        write_beton(load_config(None, data), split, files[split],
                    WriteOptions(num_workers=min(8, os.cpu_count() or 1), progress=False))
    write_s = time.perf_counter() - t0
    cfg = load_config(None, data + [
        "data.loader=ffcv", f"data.ffcv.train={files['train']}",
        f"data.ffcv.test={files['test']}", f"model.arch={p['arch']}",
        f"train.batch_size={p['batch']}", f"train.eval_batch_size={p['eval_batch']}",
        f"train.bf16={p['bf16']}", f"train.channels_last={p['channels_last']}",
        "train.deterministic=false", "run.progress=false", "run.tensorboard=false",
        f"run.out_dir={work}"])
    ctx = DistContext(device=torch.device("cuda", 0)) if _cuda() else None
    trainer = Trainer(cfg, ctx)
    lent = trainer.data.test
    fixed = trainer.evaluate(lent)
    before = prefix_evaluate(trainer, lent)
    lent.borrow = False  # the same loader, copying every batch out of FFCV's buffers
    copied = trainer.evaluate(lent)
    lent.borrow = True
    with contextlib.closing(iter(lent)) as batches:  # closing: stops FFCV's decode thread
        pinned = bool(next(batches)[0].is_pinned()) if _cuda() else False

    def same_units(a, b):
        return all(np.array_equal(a[n], b[n]) for n in b)

    return {"images": copied["n"], "image_size": p["image_size"], "write_s": write_s,
            "acc_fixed": fixed["acc"], "acc_copying": copied["acc"],
            "si_fixed": fixed["si"], "si_copying": copied["si"],
            "fixed_equals_copying_bitwise": bool(
                fixed["acc"] == copied["acc"] and fixed["si"] == copied["si"]
                and same_units(fixed["si_units"], copied["si_units"])),
            "prefix_path_equals_copying_bitwise": bool(
                before["acc"] == copied["acc"]
                and same_units(before["si_units"], copied["si_units"])),
            "ffcv_buffers_pinned": pinned}


# --------------------------------------------------------------------------- 7

def check_ablation(p: dict) -> dict:
    from seltrain.analysis.ablation import single_unit_ablation
    from seltrain.models import build_model

    spec = sources.SyntheticConfig(num_classes=p["classes"], image_size=p["image_size"],
                                   train_size=8, test_size=p["ablation_images"])
    info, split = sources.load_split("synthetic", None, "test", synthetic=spec)
    x = torch.from_numpy(split.images).permute(0, 3, 1, 2).float()
    x = (x / 255 - torch.tensor(info.mean).view(1, -1, 1, 1)) / \
        torch.tensor(info.std).view(1, -1, 1, 1)
    y = torch.from_numpy(np.asarray(split.labels)).long()
    dev = torch.device("cuda", 0) if _cuda() else torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(p["arch"], p["classes"], 3, p["image_size"]).to(dev).eval()
    sync()
    peak_memory_reset()
    t0 = time.perf_counter()
    r = single_unit_ablation(model, "layer1.0", x, y, fast=True, batch_size=p["ablation_images"],
                             device=dev)
    sync()
    return {"layer": r["layer"], "units": int(len(r["overall_drop"])), "images": r["n_images"],
            "method": r["method"], "units_per_pass": r["units_per_pass"],
            "seconds": time.perf_counter() - t0,
            "peak_memory_mb": peak_memory_mb()}


# --------------------------------------------------------------------------- 8

def check_deepspeed(work: str) -> dict:
    if not _cuda():
        return {"skipped": "CUDA only; on the CPU tests/integration_tests/"
                           "test_deepspeed_launcher.py runs DeepSpeed bf16"}
    import torch.distributed as dist

    from seltrain.config import load_config
    from seltrain.distributed import DistContext
    from seltrain.trainer import Trainer

    cfg = load_config(None, [
        "data.dataset=synthetic", "data.val_size=0", "data.synthetic.train_size=64",
        "data.synthetic.test_size=16", "data.synthetic.image_size=32", "model.arch=resnet20",
        "train.batch_size=16", "train.max_steps_per_epoch=2", "train.engine=deepspeed",
        f"train.deepspeed_config={os.path.join(REPO, 'configs/deepspeed/zero1_bf16.json')}",
        "train.bf16=true", "selectivity.alpha=-1", "train.deterministic=false",
        "run.progress=false", "run.tensorboard=false", f"run.out_dir={work}"])
    trainer = Trainer(cfg, DistContext(device=torch.device("cuda", 0)))
    try:
        bn = next(m for m in trainer.engine.network.modules()
                  if isinstance(m, torch.nn.BatchNorm2d))
        before = bn.running_mean.detach().clone()
        stats, _ = trainer.train_epoch(0, NullSink(), 1)
        return {"backend": dist.get_backend(), "weight_dtype": str(bn.weight.dtype),
                "running_mean_dtype": str(bn.running_mean.dtype),
                "running_mean_moved": bool((bn.running_mean != before).any()),
                "train_loss": stats["train_loss"]}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------- main

def _section(result: dict, key: str, fn, *a):
    t0 = time.perf_counter()
    print(f"[gpu_check] {key} ...", flush=True)
    try:
        value = fn(*a)
    except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
        value = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(f"[gpu_check] {key} failed: {type(e).__name__}: {e}", flush=True)
    result["seconds"][key] = time.perf_counter() - t0
    return value


def run(reduced: bool, out_json: str) -> dict:
    p = REDUCED if reduced else FULL
    result: dict = {"reduced": reduced, "settings": p, "seconds": {},
                    "device": torch.cuda.get_device_name(0) if _cuda() else "cpu",
                    "torch": torch.__version__, "cuda": torch.version.cuda,
                    "host": platform.node(), "cpus": os.cpu_count(),
                    "load_average_start": os.getloadavg()}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seltrain-gpu-check-") as work, cached_synthetic():
        steps = _section(result, "step", check_steps, p, os.path.join(work, "step"))
        if isinstance(steps, tuple):
            result["step"], result["step_settings"] = steps
        else:
            result["step"] = result["step_settings"] = steps

        def trainers():
            sync_p = dict(p, steps=p["sync_steps"])
            extra = (f"data.synthetic.test_size={p['eval_images']}",
                     f"train.eval_batch_size={p['eval_batch']}")
            a = bench_args(sync_p, os.path.join(work, "t"))
            return {alpha: bench_step.make_trainer(a, alpha, extra) for alpha in (0.0, -1.0)}

        tr = _section(result, "build_trainers", trainers)
        if "error" not in tr:
            result["host_syncs"] = {
                f"alpha{a:g}": _section(result, f"host_syncs_alpha{a:g}", count_host_syncs,
                                        tr[a], p["sync_steps"]) for a in (0.0, -1.0)}
            for t in tr.values():  # the profile runs fewer steps
                t.steps_per_epoch = p["profile_steps"]
            prof = {f"alpha{a:g}": _section(result, f"profile_alpha{a:g}", profile_steps, tr[a],
                                            p["profile_steps"]) for a in (0.0, -1.0)}
            if all("per_step" in v for v in prof.values()):
                prof["si_kernels_per_step"] = prof["alpha-1"]["per_step"] - \
                    prof["alpha0"]["per_step"]
            result["profile"] = prof
            result["eval"] = _section(result, "eval", time_eval, tr[-1.0])
            result["memory"] = {"peak_mb_train_epoch": {
                f"alpha{a:g}": _section(result, f"memory_alpha{a:g}", epoch_peak_memory, tr[a])
                for a in (0.0, -1.0)}}
            del tr
        else:
            result["host_syncs"] = result["profile"] = result["eval"] = tr
        if _cuda():
            torch.cuda.empty_cache()
        ffcv_dir = os.path.join(work, "ffcv")
        os.makedirs(ffcv_dir)
        result["ffcv_eval"] = _section(result, "ffcv_eval", check_ffcv, p, ffcv_dir)
        result["ablation"] = _section(result, "ablation", check_ablation, p)
        result["deepspeed_bf16"] = _section(result, "deepspeed_bf16", check_deepspeed,
                                            os.path.join(work, "ds"))
    result["seconds"]["total"] = time.perf_counter() - t_start
    result["load_average_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=2, default=str)
    return result


def failed_sections(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            if "error" in v:
                yield prefix + k
            else:
                yield from failed_sections(v, f"{prefix}{k}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true",
                    help="the CPU-sized check (always used when CUDA is absent)")
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/"
                    "gpu_check.json, or gpu_check_reduced.json)")
    args = ap.parse_args()
    reduced = args.reduced or not _cuda()
    out = args.json or os.path.join(HERE, "results", "gpu_check_reduced.json" if reduced
                                    else "gpu_check.json")
    r = run(reduced, out)
    s = r.get("step", {})
    if "ms_per_step" in s:
        ms = s["ms_per_step"]
        print(f"step ms: plain {ms['plain']:.1f}, alpha0 {ms['alpha0']:.1f}, alpha-1 "
              f"{ms['alpha-1']:.1f}; regularizer {s['regularizer_overhead'] * 100:+.1f}%")
    errors = list(failed_sections(r))
    print(f"saved {out} in {r['seconds']['total']:.0f} s" +
          (f"; failed sections: {', '.join(errors)}" if errors else ""))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
