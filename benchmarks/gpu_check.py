"""The GPU check: every figure a GPU should give, in one command, as JSON and a table.

    python benchmarks/gpu_check.py --out DIR             # on a CUDA machine: the full check
    python benchmarks/gpu_check.py --smoke --out DIR     # the same code at toy size (any CPU)
    bash benchmarks/device/run.sh DIR                    # on a GPU machine without a network

The full check is sized for one H100/H200 within ``--budget-s`` (default 420 s); a section
that would start after the budget is spent is "not run" (out of time). It writes
``DIR/gpu_check.json`` and ``DIR/gpu_check.txt`` (the short table). Without CUDA only
``--smoke`` runs; its timings mean nothing, it proves the code path (the tests run it).

Every section reports ``status``: ``ok`` (ran, and every check in it held), ``failed`` (an
error, or a check that did not hold) or ``not run`` (a dependency is missing, or no time was
left), with ``why``. Nothing is reported ok that did not run.

Sections, in the order they run (the most wanted first):
1. ``step``: ResNet50, 224 px, bf16, channels_last, 1000 classes, batch 128 (bench_step.py):
   ms per step of a fair plain loop (its loss read every LOG_EVERY steps, as seltrain reads
   its own; data in device memory, not augmented) and of seltrain at alpha = 0 and -1, host ms
   per step, images/s per GPU beside the anchor (about 3,000 img/s per A100 for ResNet50 with
   FFCV, ffcv-imagenet), the regularizer's overhead; under determinism, and with cuDNN
   benchmarking off and on.
2. ``deepspeed_bf16``: DeepSpeed bf16 (torch autocast, ZeRO-1) against DDP bf16, ResNet50 at
   224 px, channels-first and channels-last: both train, float32 BatchNorm statistics that
   move, and ms per step of each.
3. ``trials_per_gpu``: the alpha sweep's trial (configs/cifar10_resnet20.yaml, its data
   sizes, synthetic 32-px images in device memory) with 1, 2 and 4 trials sharing the GPU:
   seconds per epoch (training plus validation and test), images/s, peak memory per trial.
   ``benchmarks/estimate_alpha_sweep.py`` turns it into the wall time of tune/alpha.yaml.
4. ``end_to_end``: training throughput through the real loaders: ResNet50 on 224-px JPEG
   class folders decoded by the torch loader's workers (data.num_workers), and through FFCV
   when it is installed.
5. ``payload``: packing the SI payload for the all-reduce at 1,000 classes x 15,104 units
   (ResNet50's blocks), dense against present-only (static rows), ms each.
6. ``reuse_race``: evaluation through a loader that reuses pinned buffers exactly as FFCV does
   (``PinnedRingLoader``: batches_ahead + 2 slots written by a thread that runs ahead) against
   a copying loader, bitwise; and the unsafe pattern (a non_blocking copy and no wait) for the
   record. Runs without FFCV.
7. ``ffcv_eval``: the same on real .beton files (FFCV only).
8. ``host_syncs``, ``profile``, ``eval``, ``memory``: synchronizing CUDA calls per step,
   kernels per step and the idle window between forward and backward, evaluation ms per batch
   with eval_si on and off, peak memory of an epoch.
9. ``ablation``: a fast single-unit ablation of layer1.0.
10. ``compile``: train.compile=true, alpha = -1 (the probe's hooks in the compiled forward):
    seconds to the first step and ms per step against eager.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
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
from seltrain.atomic import atomic_write  # noqa: E402
from seltrain.data import sources  # noqa: E402
from seltrain.metrics import NullSink  # noqa: E402
from seltrain.trainer import LOG_EVERY  # noqa: E402

# ResNet50 with FFCV on one A100 (ffcv-imagenet's rn50 configs and its published table):
# the anchor beside which the step's images/s is read. Not measured here.
ANCHOR_IMG_S = {"value": 3000, "what": "ResNet50 training images/s per A100 with FFCV "
                                        "(ffcv-imagenet)"}

FULL = dict(arch="resnet50", image_size=224, classes=1000, batch=128, steps=10, rounds=3,
            bf16=True, channels_last=True, sync_steps=2 * LOG_EVERY + 5, profile_steps=6,
            eval_images=2048, eval_batch=256, ffcv_images=1024, ablation_images=128,
            ds_batch=64, ds_steps=8, trials=(1, 2, 4), trial_train=45000, trial_val=5000,
            trial_test=10000, trial_image=32, jpeg_images=2048, jpeg_steps=12,
            num_workers=12, race_images=2048, race_batch=256, payload_units=15104,
            payload_batch=256, compile_steps=10)
SMOKE = dict(arch="resnet20", image_size=16, classes=10, batch=8, steps=2, rounds=1,
             bf16=False, channels_last=False, sync_steps=LOG_EVERY + 5, profile_steps=2,
             eval_images=64, eval_batch=32, ffcv_images=96, ablation_images=32,
             ds_batch=8, ds_steps=2, trials=(1, 2), trial_train=512, trial_val=64,
             trial_test=128, trial_image=8, jpeg_images=48, jpeg_steps=2, num_workers=2,
             race_images=96, race_batch=32, payload_units=600, payload_batch=16,
             compile_steps=2)


class NotRun(Exception):
    """A section that cannot run here (a missing dependency, a CPU): reported "not run"."""


def _cuda() -> bool:
    return torch.cuda.is_available()


def _device() -> torch.device:
    return torch.device("cuda", 0) if _cuda() else torch.device("cpu")


def sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


def peak_memory_reset() -> None:
    if _cuda():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if _cuda() else None


WITHOUT: set[str] = set()  # --without: packages treated as missing (the tests' switch)


def require(module: str, section: str):
    """Import ``module`` or raise NotRun naming it."""
    if module in WITHOUT:
        raise NotRun(f"{module} is not installed (--without {module}); {section} needs it")
    try:
        return __import__(module)
    except Exception as e:  # noqa: BLE001 - any import failure means the section cannot run
        raise NotRun(f"{module} cannot be imported ({type(e).__name__}: {e}); {section} "
                     "needs it") from None


@contextlib.contextmanager
def cached_synthetic():
    """Every trainer here draws the same synthetic splits: make them once."""
    original = sources._synthetic_split
    sources._synthetic_split = functools.lru_cache(maxsize=8)(original)
    try:
        yield
    finally:
        sources._synthetic_split = original


def _ctx():
    from seltrain.distributed import DistContext

    return DistContext(device=_device())


def bench_args(p: dict, out: str, *, deterministic=False, benchmark="auto") -> SimpleNamespace:
    return SimpleNamespace(arch=p["arch"], image_size=p["image_size"], classes=p["classes"],
                           batch=p["batch"], steps=p["steps"], rounds=p["rounds"],
                           device="cuda" if _cuda() else "cpu", bf16=p["bf16"],
                           channels_last=p["channels_last"], deterministic=deterministic,
                           cudnn_benchmark=benchmark, compare_per_layer=False, out=out,
                           quiet=True)


# --------------------------------------------------------------------------- 1

def check_step(p: dict, out: str) -> dict:
    settings = {"deterministic": dict(deterministic=True, benchmark="false"),
                "nondeterministic_no_benchmark": dict(deterministic=False, benchmark="false"),
                "nondeterministic_benchmark": dict(deterministic=False, benchmark="true")}
    res: dict = {}
    for name, kw in settings.items():
        r = bench_step.run(bench_args(p, os.path.join(out, name), **kw))
        med = r["median_s_per_step"]
        res[name] = {"ms_per_step": {k: v * 1e3 for k, v in med.items()},
                     "host_ms_per_step": r["median_host_ms_per_step"],
                     "images_per_s": r["images_per_s"],
                     "regularizer_overhead": r["regularizer_overhead"],
                     "alpha0_vs_plain_throughput": r["alpha0_vs_plain_throughput"],
                     "cudnn_benchmark": r["cudnn_benchmark"],
                     "deterministic": r["deterministic"]}
    fast = res["nondeterministic_benchmark"]
    return {"status": "ok", "arch": p["arch"], "image_size": p["image_size"],
            "classes": p["classes"], "batch": p["batch"], "bf16": p["bf16"],
            "channels_last": p["channels_last"], "data": "synthetic in device memory, "
            "not augmented; loss read every LOG_EVERY steps in every form",
            "images_per_s_per_gpu": fast["images_per_s"], "anchor": ANCHOR_IMG_S,
            "regularizer_overhead": fast["regularizer_overhead"],
            "alpha0_vs_plain_throughput": fast["alpha0_vs_plain_throughput"],
            "benchmark_speedup_over_deterministic":
                res["deterministic"]["ms_per_step"]["alpha-1"]
                / fast["ms_per_step"]["alpha-1"],
            "settings": res}


# --------------------------------------------------------------------------- 2

def _trainer(p: dict, work: str, name: str, *extra: str, arch=None, image=None, batch=None,
             steps=None, train_size=None):
    from seltrain.config import load_config
    from seltrain.trainer import Trainer

    image = image or p["image_size"]
    batch = batch or p["batch"]
    steps = steps or p["steps"]
    cfg = load_config(None, [
        "data.dataset=synthetic", "data.val_size=0",
        f"data.synthetic.train_size={train_size or batch * (steps + 1)}",
        f"data.synthetic.test_size={p['eval_images']}", f"data.synthetic.image_size={image}",
        f"data.synthetic.num_classes={p['classes']}", f"model.arch={arch or p['arch']}",
        f"train.batch_size={batch}", f"train.max_steps_per_epoch={steps}",
        f"train.eval_batch_size={p['eval_batch']}", "train.schedule=constant",
        "train.deterministic=false", "data.augment=false", "data.on_device=true",
        "run.progress=false", "run.tensorboard=false", f"run.out_dir={work}",
        f"run.name={name}", *extra])
    return Trainer(cfg, _ctx())


def _timed_epochs(tr, epochs: int = 2) -> float:
    """Median ms per step of ``epochs`` epochs after one warm-up epoch."""
    tr.train_epoch(0, NullSink(), 1)
    ts = []
    for e in range(1, epochs + 1):
        sync()
        t0 = time.perf_counter()
        tr.train_epoch(e, NullSink(), 1)
        sync()
        ts.append((time.perf_counter() - t0) / tr.steps_per_epoch * 1e3)
    return statistics.median(ts)


def check_deepspeed(p: dict, work: str) -> dict:
    require("deepspeed", "the DeepSpeed section")
    out: dict = {"status": "ok", "arch": p["arch"], "image_size": p["image_size"],
                 "batch": p["ds_batch"], "bf16": True, "checks": {}}
    for layout in ("channels_first", "channels_last"):
        row = {}
        for engine in ("ddp", "deepspeed"):
            extra = ["train.bf16=true", f"train.channels_last={layout == 'channels_last'}",
                     f"train.engine={engine}", "selectivity.alpha=-1"]
            if engine == "deepspeed":
                extra.append("train.deepspeed_config="
                             + os.path.join(REPO, "configs/deepspeed/zero1_bf16.json"))
            tr = _trainer(p, work, f"{engine}_{layout}", *extra, batch=p["ds_batch"],
                          steps=p["ds_steps"])
            bn = next(m for m in tr.engine.network.modules()
                      if isinstance(m, torch.nn.BatchNorm2d))
            before = bn.running_mean.detach().clone()
            ms = _timed_epochs(tr)
            row[engine] = {"ms_per_step": ms, "weight_dtype": str(bn.weight.dtype),
                           "running_mean_dtype": str(bn.running_mean.dtype),
                           "running_mean_moved": bool((bn.running_mean != before).any())}
            if engine == "deepspeed":
                import torch.distributed as dist

                row[engine]["backend"] = dist.get_backend()
            del tr
        ds = row["deepspeed"]
        out["checks"][f"{layout}_float32_statistics_that_move"] = (
            ds["running_mean_dtype"] == ds["weight_dtype"] == "torch.float32"
            and ds["running_mean_moved"])
        row["deepspeed_vs_ddp_step_time"] = ds["ms_per_step"] / row["ddp"]["ms_per_step"]
        out[layout] = row
    if _cuda():
        out["checks"]["nccl_group"] = out["channels_first"]["deepspeed"]["backend"] == "nccl"
    return out


# --------------------------------------------------------------------------- 3

def trial_worker(spec_path: str) -> None:
    """One trial of the alpha sweep (``--trial-worker SPEC``): the recipe's trial on
    synthetic data of the recipe's sizes, held in device memory; one warm-up epoch, then, once
    every trial sharing the GPU is warm (a file barrier), one timed epoch with its
    evaluations. Writes its figures to SPEC's ``out``."""
    from seltrain.config import load_config
    from seltrain.trainer import Trainer

    with open(spec_path) as f:
        spec = json.load(f)
    n = spec["train"] + spec["val"]
    cfg = load_config(os.path.join(REPO, "configs", "cifar10_resnet20.yaml"), [
        "data.dataset=synthetic", f"data.val_size={spec['val']}",
        f"data.synthetic.train_size={n}", f"data.synthetic.test_size={spec['test']}",
        f"data.synthetic.image_size={spec['image']}", "data.on_device=true",
        "selectivity.alpha=-1", "run.progress=false", "run.tensorboard=false",
        f"run.out_dir={spec['work']}", f"run.name=trial{spec['index']}"])
    tr = Trainer(cfg, _ctx())

    def epoch(e: int) -> dict:
        sync()
        t0 = time.perf_counter()
        tr.train_epoch(e, NullSink(), 1)
        sync()
        t1 = time.perf_counter()
        tr.evaluate(tr.data.val)
        tr.evaluate(tr.data.test)
        sync()
        t2 = time.perf_counter()
        return {"train_s": t1 - t0, "eval_s": t2 - t1, "epoch_s": t2 - t0}

    epoch(0)
    open(os.path.join(spec["barrier"], f"ready{spec['index']}"), "w").close()
    while len(os.listdir(spec["barrier"])) < spec["trials"]:
        time.sleep(0.05)
    peak_memory_reset()
    r = epoch(1)
    r.update(train_images=tr.steps_per_epoch * cfg.train.batch_size,
             eval_images=spec["val"] + spec["test"], peak_memory_mb=peak_memory_mb(),
             data_mb=sum(t.nbytes for t in (tr.data.train.images, tr.data.test.images))
             / 2 ** 20 if hasattr(tr.data.train, "images") else None)
    with open(spec["out"], "w") as f:
        json.dump(r, f)


def check_trials(p: dict, work: str, deadline: float) -> dict:
    out = {"status": "ok", "recipe": "configs/cifar10_resnet20.yaml", "alpha": -1,
           "train_images": p["trial_train"], "val_images": p["trial_val"],
           "test_images": p["trial_test"], "image_size": p["trial_image"], "runs": {}}
    for n in p["trials"]:
        if time.perf_counter() > deadline:
            out["runs"][str(n)] = {"status": "not run", "why": "out of time"}
            continue
        d = os.path.join(work, f"trials{n}")
        barrier = os.path.join(d, "barrier")
        os.makedirs(barrier)
        procs, outs = [], []
        for i in range(n):
            spec = {"index": i, "trials": n, "barrier": barrier, "work": d,
                    "out": os.path.join(d, f"trial{i}.json"), "train": p["trial_train"],
                    "val": p["trial_val"], "test": p["trial_test"], "image": p["trial_image"]}
            path = os.path.join(d, f"spec{i}.json")
            with open(path, "w") as f:
                json.dump(spec, f)
            outs.append(spec["out"])
            with open(os.path.join(d, f"trial{i}.log"), "w") as log:  # files: no pipe fills
                procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                               "--trial-worker", path], stdout=log,
                                              stderr=subprocess.STDOUT))
        try:
            for pr in procs:
                pr.wait(timeout=max(60.0, deadline - time.perf_counter() + 120))
        finally:
            for pr in procs:  # none outlives its section
                if pr.poll() is None:
                    pr.kill()
                    pr.wait()
        if any(pr.returncode for pr in procs):
            bad = next(i for i, pr in enumerate(procs) if pr.returncode)
            with open(os.path.join(d, f"trial{bad}.log")) as f:
                raise RuntimeError(f"trial {bad} of {n} failed: {f.read()[-800:]}")
        rs = []
        for o in outs:
            with open(o) as f:
                rs.append(json.load(f))
        epoch_s = max(r["epoch_s"] for r in rs)
        out["runs"][str(n)] = {
            "trials": rs, "epoch_s_slowest": epoch_s,
            "train_images_per_s_per_gpu": sum(r["train_images"] / r["train_s"] for r in rs),
            "trial_epochs_per_hour_per_gpu": n * 3600 / epoch_s,
            "peak_memory_mb_per_trial": max((r["peak_memory_mb"] or 0) for r in rs) or None,
            "data_mb_per_trial": rs[0]["data_mb"]}
    return out


# --------------------------------------------------------------------------- 4

def _write_jpeg_folder(root: str, n: int, size: int, classes: int) -> None:
    """``n`` synthetic images as JPEGs in ImageNet-style class folders (train/ and val/)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    spec = sources.SyntheticConfig(num_classes=classes, image_size=size, train_size=n,
                                   test_size=max(classes, 8))
    for split, sub in (("train", "train"), ("test", "val")):
        s = sources.load_split("synthetic", None, split, synthetic=spec)[1]
        for k in range(classes):
            os.makedirs(os.path.join(root, sub, f"c{k:04d}"), exist_ok=True)

        def save(i, s=s, sub=sub):
            Image.fromarray(s.images[i]).save(
                os.path.join(root, sub, f"c{int(s.labels[i]):04d}", f"{i}.jpg"), quality=90)

        with ThreadPoolExecutor(os.cpu_count() or 2) as ex:
            list(ex.map(save, range(len(s.labels))))


def check_end_to_end(p: dict, work: str) -> dict:
    from seltrain.config import load_config
    from seltrain.trainer import Trainer

    root = os.path.join(work, "jpeg")
    t0 = time.perf_counter()
    _write_jpeg_folder(root, p["jpeg_images"], p["image_size"], p["classes"])
    out: dict = {"status": "ok", "write_s": time.perf_counter() - t0}
    cfg = load_config(None, [
        "data.dataset=imagefolder", f"data.root={root}", "data.val_size=0",
        f"data.image_size={p['image_size']}", f"data.num_workers={p['num_workers']}",
        f"model.arch={p['arch']}", f"train.batch_size={p['batch']}",
        f"train.max_steps_per_epoch={p['jpeg_steps']}", f"train.bf16={p['bf16']}",
        f"train.channels_last={p['channels_last']}", "train.deterministic=false",
        "selectivity.alpha=-1", "run.progress=false", "run.tensorboard=false",
        f"run.out_dir={work}", "run.name=e2e"])
    tr = Trainer(cfg, _ctx())
    tr.train_epoch(0, NullSink(), 1)  # workers started, cuDNN warmed
    sync()
    s, _ = tr.train_epoch(1, NullSink(), 1)
    out["torch_loader"] = {"images_per_s": s["images_per_s"], "steps": tr.steps_per_epoch,
                           "num_workers": p["num_workers"], "cpus": os.cpu_count(),
                           "decode": "PIL in DataLoader workers, 224-px JPEGs"
                           if p["image_size"] == 224 else "PIL in DataLoader workers"}
    try:
        out["ffcv"] = _end_to_end_ffcv(p, work)
    except NotRun as e:
        out["ffcv"] = {"status": "not run", "why": str(e)}
    return out


def _end_to_end_ffcv(p: dict, work: str) -> dict:
    require("ffcv", "the FFCV loader")
    from seltrain.config import load_config
    from seltrain.data.writer import WriteOptions, write_beton
    from seltrain.trainer import Trainer

    data = ["data.dataset=synthetic", "data.val_size=0",
            f"data.synthetic.train_size={p['batch'] * (p['jpeg_steps'] + 1)}",
            f"data.synthetic.test_size={p['eval_images']}",
            f"data.synthetic.image_size={p['image_size']}",
            f"data.synthetic.num_classes={p['classes']}"]
    files = {}
    for split in ("train", "test"):
        files[split] = os.path.join(work, f"e2e_{split}.beton")
        write_beton(load_config(None, data), split, files[split],
                    WriteOptions(write_mode="jpg", num_workers=os.cpu_count() or 1,
                                 progress=False))
    cfg = load_config(None, data + [
        "data.loader=ffcv", f"data.ffcv.train={files['train']}",
        f"data.ffcv.test={files['test']}", f"data.num_workers={p['num_workers']}",
        f"model.arch={p['arch']}", f"train.batch_size={p['batch']}",
        f"train.max_steps_per_epoch={p['jpeg_steps']}", f"train.bf16={p['bf16']}",
        f"train.channels_last={p['channels_last']}", "train.deterministic=false",
        "selectivity.alpha=-1", "run.progress=false", "run.tensorboard=false",
        f"run.out_dir={work}", "run.name=e2e_ffcv"])
    tr = Trainer(cfg, _ctx())
    tr.train_epoch(0, NullSink(), 1)
    s, _ = tr.train_epoch(1, NullSink(), 1)
    return {"status": "ok", "images_per_s": s["images_per_s"], "steps": tr.steps_per_epoch,
            "num_workers": p["num_workers"]}


# --------------------------------------------------------------------------- 5

def check_payload(p: dict) -> dict:
    """The all-reduce's payload packing and unpacking alone (``distributed.pack_stats`` /
    ``unpack_stats``: what runs on either side of the collective), 1,000 classes."""
    from seltrain.distributed import pack_stats, unpack_stats

    dev = _device()
    k, u, b = 1000, p["payload_units"], p["payload_batch"]
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(k)
    counts[torch.randint(0, k, (b,), generator=g)] += 1
    sums = torch.rand(k, u, generator=g) * (counts > 0).unsqueeze(1)
    sums, counts = sums.to(dev), counts.to(dev)
    out = {"status": "ok", "classes": k, "units": u, "global_batch": b,
           "classes_present": int((counts > 0).sum())}
    for name, kw in (("dense", {}), ("present_only", {"present_only": True, "max_rows": b}),
                     ("dense_bf16", {"bf16": True})):
        ts = []
        for rep in range(12):
            sync()
            t0 = time.perf_counter()
            flat, layout = pack_stats([sums], counts, **kw)
            (got,), got_counts = unpack_stats(flat, layout)
            sync()
            if rep >= 2:
                ts.append((time.perf_counter() - t0) * 1e3)
        exact = bool(torch.equal(got, sums) and torch.equal(got_counts, counts))
        out[name] = {"ms": statistics.median(ts), "payload_mb": flat.numel()
                     * flat.element_size() / 1e6, "round_trip_exact": exact}
    out["checks"] = {"dense_round_trip_exact": out["dense"]["round_trip_exact"],
                     "present_only_round_trip_exact": out["present_only"]["round_trip_exact"]}
    return out


# --------------------------------------------------------------------------- 6

class PinnedRingLoader:
    """A loader that lends its batches in reused buffers exactly as FFCV does (see
    seltrain/data/ffcv_pipeline.py): ``batches_ahead + 2`` slots, pinned when CUDA is present,
    filled in turn by a thread that runs ahead through a queue of ``batches_ahead``, writing
    batch c + batches_ahead + 1 into batch c - 1's slot as soon as batch c is drawn. With
    ``borrow`` the slots themselves are handed out (valid until the next draw); without, a
    copy."""

    def __init__(self, inner, batches_ahead: int = 3, borrow: bool = True):
        self.inner, self.batches_ahead, self.borrow = inner, batches_ahead, borrow
        self.batch_size = inner.batch_size

    @property
    def reuses_buffers(self) -> bool:
        return self.borrow

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def num_samples(self) -> int:
        return self.inner.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        batches = list(self.inner)  # the source: fresh tensors, in order
        if not batches:
            return
        n_slots = self.batches_ahead + 2
        pin = _cuda()
        x0, y0 = batches[0]
        slots = [(torch.empty_like(x0, pin_memory=pin), torch.empty_like(y0, pin_memory=pin))
                 for _ in range(n_slots)]
        free = threading.Semaphore(n_slots)
        ready: queue.Queue = queue.Queue(self.batches_ahead)
        stop = threading.Event()

        def fill():
            for j, (x, y) in enumerate(batches):
                while not free.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                sx, sy = slots[j % n_slots]
                sx[:len(x)].copy_(x)
                sy[:len(y)].copy_(y)
                ready.put((sx[:len(x)], sy[:len(y)]))
            ready.put(None)

        worker = threading.Thread(target=fill, daemon=True)
        worker.start()
        try:
            first = True
            while (item := ready.get()) is not None:
                if not first:
                    free.release()  # drawing this batch frees the previous one's slot
                first = False
                x, y = item
                yield (x, y) if self.borrow else (x.clone(), y.clone())
        finally:
            stop.set()
            worker.join()


@torch.no_grad()
def unsafe_evaluate(trainer, loader) -> dict:
    """Evaluation with the unsafe pattern: each borrowed (pinned) buffer copied with
    .to(device, non_blocking=True) on the compute stream and nothing waiting for the copy
    before the next batch is drawn. For the record: on a GPU it may read later pixels."""
    from seltrain.selectivity import SelectivityAccumulator

    model = trainer.engine.network
    model.eval()
    dev, pre = trainer.ctx.device, trainer.preprocess
    acc = SelectivityAccumulator(trainer.layer_units, trainer.info.num_classes, dev)
    correct = torch.zeros(2, dtype=torch.float64, device=dev)
    trainer.probe.attach()
    for xb, yb in loader:
        x = xb.to(dev, non_blocking=True)
        y = yb.to(dev, non_blocking=True)
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


def _same(a: dict, b: dict) -> bool:
    return a["acc"] == b["acc"] and all(np.array_equal(a["si_units"][n], b["si_units"][n])
                                        for n in b["si_units"])


def check_reuse_race(p: dict, work: str) -> dict:
    from seltrain.config import load_config
    from seltrain.data import build_data
    from seltrain.trainer import Trainer

    data = ["data.dataset=synthetic", "data.val_size=0", "data.synthetic.train_size=64",
            f"data.synthetic.test_size={p['race_images']}",
            f"data.synthetic.image_size={p['image_size']}",
            f"data.synthetic.num_classes={p['classes']}", "data.on_device=false"]
    cfg = load_config(None, data + [
        f"model.arch={p['arch']}", f"train.eval_batch_size={p['race_batch']}",
        "train.batch_size=16", f"train.bf16={p['bf16']}",
        f"train.channels_last={p['channels_last']}", "train.deterministic=false",
        "run.progress=false", "run.tensorboard=false", f"run.out_dir={work}"])
    tr = Trainer(cfg, _ctx())
    host = build_data(cfg, batch_size=16).test  # host-memory uint8 batches
    lent = PinnedRingLoader(host, borrow=True)
    borrowed = tr.evaluate(lent)
    copying = tr.evaluate(PinnedRingLoader(host, borrow=False))
    unsafe = unsafe_evaluate(tr, PinnedRingLoader(host, borrow=True))
    ok = _same(borrowed, copying)
    return {"status": "ok" if ok else "failed", "images": borrowed["n"],
            "batch": p["race_batch"], "slots": lent.batches_ahead + 2,
            "pinned": _cuda(), "acc": borrowed["acc"], "si": borrowed["si"],
            "checks": {"trainer_path_equals_copying_bitwise": ok},
            "unsafe_pattern_equals_copying_bitwise": _same(unsafe, copying)}


# --------------------------------------------------------------------------- 7

def check_ffcv(p: dict, work: str) -> dict:
    require("ffcv", "the FFCV evaluation check")
    from seltrain.config import load_config
    from seltrain.data.writer import WriteOptions, write_beton
    from seltrain.trainer import Trainer

    data = ["data.dataset=synthetic", "data.val_size=0",
            f"data.synthetic.train_size={p['batch'] * 2}",
            f"data.synthetic.test_size={p['ffcv_images']}",
            f"data.synthetic.image_size={p['image_size']}",
            f"data.synthetic.num_classes={p['classes']}"]
    files = {}
    for split in ("train", "test"):
        files[split] = os.path.join(work, f"{split}.beton")
        write_beton(load_config(None, data), split, files[split],
                    WriteOptions(num_workers=min(8, os.cpu_count() or 1), progress=False))
    cfg = load_config(None, data + [
        "data.loader=ffcv", f"data.ffcv.train={files['train']}",
        f"data.ffcv.test={files['test']}", f"model.arch={p['arch']}",
        f"train.batch_size={p['batch']}", f"train.eval_batch_size={p['eval_batch']}",
        f"train.bf16={p['bf16']}", f"train.channels_last={p['channels_last']}",
        "train.deterministic=false", "run.progress=false", "run.tensorboard=false",
        f"run.out_dir={work}"])
    tr = Trainer(cfg, _ctx())
    lent = tr.data.test
    borrowed = tr.evaluate(lent)
    unsafe = unsafe_evaluate(tr, lent)
    lent.borrow = False
    copied = tr.evaluate(lent)
    lent.borrow = True
    ok = _same(borrowed, copied)
    return {"status": "ok" if ok else "failed", "images": copied["n"], "acc": borrowed["acc"],
            "si": borrowed["si"], "checks": {"trainer_path_equals_copying_bitwise": ok},
            "unsafe_pattern_equals_copying_bitwise": _same(unsafe, copied)}


# --------------------------------------------------------------------------- 8

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
            trainer.train_epoch(0, NullSink(), global_step=1)  # no periodic SI read
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


def check_diagnostics(p: dict, work: str) -> dict:
    sync_p = dict(p, steps=p["sync_steps"])
    trainers = {a: _trainer(sync_p, work, f"diag{a:g}", f"selectivity.alpha={a}",
                            f"train.bf16={p['bf16']}",
                            f"train.channels_last={p['channels_last']}")
                for a in (0.0, -1.0)}
    out: dict = {"status": "ok"}
    out["host_syncs"] = {f"alpha{a:g}": count_host_syncs(t, p["sync_steps"])
                         for a, t in trainers.items()}
    for t in trainers.values():  # the profile runs fewer steps
        t.steps_per_epoch = p["profile_steps"]
    prof = {f"alpha{a:g}": profile_steps(t, p["profile_steps"]) for a, t in trainers.items()}
    prof["si_kernels_per_step"] = prof["alpha-1"]["per_step"] - prof["alpha0"]["per_step"]
    out["profile"] = prof
    out["eval"] = time_eval(trainers[-1.0])
    out["memory"] = {"peak_mb_train_epoch": {f"alpha{a:g}": epoch_peak_memory(t)
                                             for a, t in trainers.items()}}
    return out


# --------------------------------------------------------------------------- 9

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
    dev = _device()
    torch.manual_seed(0)
    model = build_model(p["arch"], p["classes"], 3, p["image_size"]).to(dev).eval()
    sync()
    peak_memory_reset()
    t0 = time.perf_counter()
    r = single_unit_ablation(model, "layer1.0", x, y, fast=True, batch_size=p["ablation_images"],
                             device=dev)
    sync()
    return {"status": "ok", "layer": r["layer"], "units": int(len(r["overall_drop"])),
            "images": r["n_images"], "method": r["method"],
            "units_per_pass": r["units_per_pass"], "seconds": time.perf_counter() - t0,
            "peak_memory_mb": peak_memory_mb()}


# --------------------------------------------------------------------------- 10

def check_compile(p: dict, work: str, smoke: bool) -> dict:
    if smoke:
        raise NotRun("smoke mode: compiling takes minutes on a CPU "
                     "(tests/integration_tests/test_compile.py covers it there)")
    out: dict = {"status": "ok", "alpha": -1, "arch": p["arch"]}
    for name, compiled in (("eager", False), ("compiled", True)):
        tr = _trainer(p, work, f"compile_{name}", "selectivity.alpha=-1",
                      f"train.bf16={p['bf16']}", f"train.channels_last={p['channels_last']}",
                      f"train.compile={compiled}", steps=p["compile_steps"])
        sync()
        t0 = time.perf_counter()
        stats, _ = tr.train_epoch(0, NullSink(), 1)
        sync()
        first = time.perf_counter() - t0
        s2, _ = tr.train_epoch(1, NullSink(), 1)
        out[name] = {"first_epoch_s": first, "ms_per_step": s2["train_time_s"]
                     / tr.steps_per_epoch * 1e3, "batch_si": s2["train_batch_si"]}
        del tr
    out["compiled_vs_eager_step_time"] = out["compiled"]["ms_per_step"] / \
        out["eager"]["ms_per_step"]
    out["checks"] = {"compiled_reads_batch_si": out["compiled"]["batch_si"] > 0}
    return out


# --------------------------------------------------------------------------- main

def _section(result: dict, key: str, deadline: float, fn, *a) -> dict:
    t0 = time.perf_counter()
    print(f"[gpu_check] {key} ...", flush=True)
    if t0 > deadline:
        value = {"status": "not run", "why": "out of time (--budget-s)"}
    else:
        try:
            value = fn(*a)
            if any(v is False for v in value.get("checks", {}).values()):
                value["status"] = "failed"
        except NotRun as e:
            value = {"status": "not run", "why": str(e)}
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            value = {"status": "failed", "why": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()}
        if _cuda():
            torch.cuda.empty_cache()
    value["seconds"] = time.perf_counter() - t0
    result["sections"][key] = value
    save(result)  # after every section: a run stopped from outside keeps what it measured
    print(f"[gpu_check] {key}: {value['status']}"
          + (f" ({value['why']})" if value.get("why") else "")
          + f" in {value['seconds']:.0f} s", flush=True)
    return value


def save(result: dict) -> None:
    """gpu_check.json and gpu_check.txt in the result's folder, each replaced atomically."""
    out_dir = result["out_dir"]
    for name, text in (("gpu_check.json", json.dumps(result, indent=2, default=str)),
                       ("gpu_check.txt", table(result))):
        with atomic_write(os.path.join(out_dir, name)) as f:
            f.write(text)


def run(smoke: bool, out_dir: str, budget_s: float) -> dict:
    p = SMOKE if smoke else FULL
    t_start = time.perf_counter()
    deadline = t_start + budget_s
    result: dict = {"smoke": smoke, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in p.items()},
                    "budget_s": budget_s,
                    "device": torch.cuda.get_device_name(0) if _cuda() else "cpu",
                    "torch": torch.__version__, "cuda": torch.version.cuda,
                    "python": platform.python_version(), "host": platform.node(),
                    "cpus": os.cpu_count(), "load_average_start": os.getloadavg(),
                    "out_dir": os.path.abspath(out_dir), "seconds_total": None,
                    "sections": {}}
    with tempfile.TemporaryDirectory(prefix="seltrain-gpu-check-") as work, cached_synthetic():
        def sub(name):
            d = os.path.join(work, name)
            os.makedirs(d, exist_ok=True)
            return d

        _section(result, "step", deadline, check_step, p, sub("step"))
        _section(result, "deepspeed_bf16", deadline, check_deepspeed, p, sub("ds"))
        _section(result, "trials_per_gpu", deadline, check_trials, p, sub("trials"), deadline)
        _section(result, "end_to_end", deadline, check_end_to_end, p, sub("e2e"))
        _section(result, "payload", deadline, check_payload, p)
        _section(result, "reuse_race", deadline, check_reuse_race, p, sub("race"))
        _section(result, "ffcv_eval", deadline, check_ffcv, p, sub("ffcv"))
        _section(result, "diagnostics", deadline, check_diagnostics, p, sub("diag"))
        _section(result, "ablation", deadline, check_ablation, p)
        _section(result, "compile", deadline, check_compile, p, sub("compile"), smoke)
    result["seconds_total"] = time.perf_counter() - t_start
    result["load_average_end"] = os.getloadavg()
    save(result)
    return result


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(r: dict) -> str:
    """The short table: one line per section with its status and headline figures."""
    s = r["sections"]
    total = r.get("seconds_total")
    lines = [f"seltrain GPU check on {r['device']} (torch {r['torch']}, "
             f"{'smoke' if r['smoke'] else 'full'}), "
             + (f"{total:.0f} s" if total is not None else "still running")]

    def line(key, text=""):
        sec = s.get(key, {})
        status = sec.get("status", "missing")
        why = f" ({sec['why']})" if sec.get("why") and status != "ok" else ""
        lines.append(f"{key:15s} {status:8s} {text if status == 'ok' else ''}{why}")

    st = s.get("step", {})
    if st.get("status") == "ok":
        ips = st["images_per_s_per_gpu"]
        host = st["settings"]["nondeterministic_benchmark"]["host_ms_per_step"]
        line("step", f"img/s per GPU: plain {ips['plain']:.0f}, alpha 0 {ips['alpha0']:.0f}, "
                     f"alpha -1 {ips['alpha-1']:.0f} (anchor ~{ANCHOR_IMG_S['value']} on an "
                     f"A100); regularizer {st['regularizer_overhead'] * 100:+.1f}%; alpha 0 / "
                     f"plain {st['alpha0_vs_plain_throughput']:.3f}; host ms/step alpha -1 "
                     f"{host['alpha-1']:.1f}")
    else:
        line("step")
    ds = s.get("deepspeed_bf16", {})
    line("deepspeed_bf16", "" if ds.get("status") != "ok" else
         "DeepSpeed/DDP step time: channels-first "
         f"{ds['channels_first']['deepspeed_vs_ddp_step_time']:.2f}, channels-last "
         f"{ds['channels_last']['deepspeed_vs_ddp_step_time']:.2f}; float32 statistics move")
    tr = s.get("trials_per_gpu", {})
    if tr.get("status") == "ok":
        parts = [f"{n}: {v['epoch_s_slowest']:.1f} s/epoch, "
                 f"{v['trial_epochs_per_hour_per_gpu']:.0f} trial-epochs/h, peak "
                 f"{_fmt(v['peak_memory_mb_per_trial'], '.0f')} MB/trial"
                 for n, v in tr["runs"].items() if "epoch_s_slowest" in v]
        line("trials_per_gpu", "; ".join(parts))
    else:
        line("trials_per_gpu")
    e2e = s.get("end_to_end", {})
    line("end_to_end", "" if e2e.get("status") != "ok" else
         f"torch loader {e2e['torch_loader']['images_per_s']:.0f} img/s "
         f"({e2e['torch_loader']['num_workers']} workers); FFCV "
         + (f"{e2e['ffcv']['images_per_s']:.0f} img/s" if e2e["ffcv"].get("status") == "ok"
            else f"not run ({e2e['ffcv'].get('why', '')})"))
    pl = s.get("payload", {})
    line("payload", "" if pl.get("status") != "ok" else
         f"pack+unpack ms: dense {pl['dense']['ms']:.2f} ({pl['dense']['payload_mb']:.1f} MB), "
         f"present-only {pl['present_only']['ms']:.2f} "
         f"({pl['present_only']['payload_mb']:.1f} MB)")
    rr = s.get("reuse_race", {})
    line("reuse_race", "" if rr.get("status") != "ok" else
         "trainer path == copying loader, bitwise; unsafe pattern equal: "
         f"{rr['unsafe_pattern_equals_copying_bitwise']}")
    line("ffcv_eval", "trainer path == copying loader, bitwise")
    dg = s.get("diagnostics", {})
    line("diagnostics", "" if dg.get("status") != "ok" else
         f"host syncs per step alpha -1 {dg['host_syncs']['alpha-1']['per_step']:.2f}; SI "
         f"kernels per step {dg['profile']['si_kernels_per_step']:.0f}")
    ab = s.get("ablation", {})
    line("ablation", "" if ab.get("status") != "ok" else
         f"{ab['units']} units of {ab['layer']} in {ab['seconds']:.1f} s")
    cp = s.get("compile", {})
    line("compile", "" if cp.get("status") != "ok" else
         f"compiled/eager step time {cp['compiled_vs_eager_step_time']:.2f}, first epoch "
         f"{cp['compiled']['first_epoch_s']:.0f} s")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", "--reduced", action="store_true", dest="smoke",
                    help="the toy-size check (any CPU; the tests run it)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "gpu_check"),
                    help="folder for gpu_check.json and gpu_check.txt")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="sections that would start later than this are not run")
    ap.add_argument("--without", default="", help="comma-separated packages to treat as "
                    "missing (their sections are then 'not run')")
    ap.add_argument("--trial-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial_worker:
        trial_worker(args.trial_worker)
        return
    if not args.smoke and not _cuda():
        print("gpu_check: no CUDA device here; run with --smoke for the toy-size check",
              file=sys.stderr)
        sys.exit(2)
    WITHOUT.update(filter(None, args.without.split(",")))
    for name in WITHOUT:
        sys.modules[name] = None  # an import of it now fails, as if it were not installed
    r = run(args.smoke, args.out, args.budget_s)
    print(table(r), end="")
    failed = [k for k, v in r["sections"].items() if v["status"] == "failed"]
    print(f"saved {os.path.join(args.out, 'gpu_check.json')}"
          + (f"; failed sections: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
