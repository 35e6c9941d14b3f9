"""The training loop: CE minus alpha times mean class selectivity, evaluated exactly each epoch.

``Trainer(cfg).fit()`` is the whole job of ``seltrain train``: it is also what every Ray Tune
trial and every rank under torchrun or the deepspeed launcher runs. Methods are named for the
steps of the work (after ffcv-imagenet's trainer): create_data, create_model, create_engine,
train_epoch, evaluate, fit.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from seltrain import distributed
from seltrain import checkpoint
from seltrain.checkpoint import rng_state, set_rng_state
from seltrain.config import Config
from seltrain.data import DevicePreprocess, RankSharding, build_data
from seltrain.engine import build_engine
from seltrain.errors import (CheckpointError, ConfigError, SeltrainError, TrainingError,
                             excerpt, file_in_the_way, is_disk_full)
from seltrain.fault_injection import step_hooks_from_env
from seltrain.metrics import NullSink, RunSink, read_records
from seltrain.models import build_model
from seltrain.probes import Probe, resolve_layers
from seltrain.selectivity import SelectivityAccumulator, selectivity_penalty

# Steps between progress-bar / TensorBoard step scalars (and batch-SI readings at alpha = 0).
LOG_EVERY = 20
# Recipe keys every run lists in TensorBoard's HParams tab (a search adds its searched keys),
# and the metric tags listed against them (written every epoch by Trainer._hparam_metrics).
HPARAM_KEYS = ("selectivity.alpha", "train.seed", "model.arch", "data.dataset", "train.lr",
               "train.batch_size", "train.epochs")
HPARAM_METRICS = ("hparam/val_acc", "hparam/test_acc", "hparam/test_si", "hparam/epochs")
# Keys that may change between an interrupted run and its resumption.
_RESUME_FREE_KEYS = ("run.progress", "run.tensorboard", "data.num_workers", "run.out_dir",
                     "data.root", "data.on_device")


def seed_everything(seed: int, deterministic: bool,
                    cudnn_benchmark: bool | str = "auto") -> None:
    """Seed every RNG, and choose between bitwise reproducibility and cuDNN's fastest kernels.

    ``deterministic``: deterministic algorithms only and no cuDNN benchmarking, so a run (and
    its resumption) is bitwise reproducible. ``cudnn_benchmark``: ``"auto"`` benchmarks conv
    algorithms when CUDA is present and determinism is off (the first steps at each new input
    shape pay for the search; ResNet50 commonly gains 5-20% after that); benchmarking picks
    kernels by timing, so two runs may differ in the last bits (config.validate refuses it
    together with ``deterministic``).
    """
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if cudnn_benchmark == "auto":
        cudnn_benchmark = torch.cuda.is_available() and not deterministic
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: an earlier Trainer in this process (a Ray worker, a test) may have set it.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "deepspeed_inline":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Trainer:
    def __init__(self, cfg: Config, ctx: distributed.DistContext | None = None, *,
                 resume: bool = False, run_dir: str | None = None,
                 report: Callable[[dict, str], None] | None = None,
                 hparam_keys: list[str] | None = None):
        """``ctx``: the process group to train in, from ``distributed.setup()``; its caller
        tears it down (the CLI, a Ray Tune trial). Without one the trainer calls
        ``distributed.setup()`` itself and owns what that made: ``fit()`` ends with
        ``close()``, which tears it down (so does a failure here), as ``seltrain train`` does
        for its own context. ``hparam_keys``: recipe keys to list in TensorBoard's HParams tab
        besides HPARAM_KEYS (a search passes the keys it searches)."""
        self.cfg = cfg
        self.hparam_keys = list(dict.fromkeys([*HPARAM_KEYS, *(hparam_keys or [])]))
        self._owns_ctx = ctx is None
        self.ctx = ctx or distributed.setup()
        # Called after every optimizer step with that step's global step number. Empty in a
        # normal run; the tests' fault injection registers itself here when asked to.
        self.step_hooks: list[Callable[[int], None]] = step_hooks_from_env(self.ctx)
        # Measured after every epoch's evaluation: hook(trainer, epoch) -> {name: value}, kept
        # in the epoch record under hook.record_key and in TensorBoard as <hook.tag>/<name>.
        self.epoch_hooks: list[Callable[[Trainer, int], dict[str, float]]] = []
        if cfg.run.track_orientation:
            from seltrain.analysis.orientation import OrientationTracking

            self.epoch_hooks.append(OrientationTracking())
        self.run_dir = run_dir or cfg.run_dir()
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        self.resume = resume
        self.report = report
        self.alpha = cfg.selectivity.alpha
        t = cfg.train
        try:
            if t.batch_size % self.ctx.world_size:
                raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by the "
                                  f"world size {self.ctx.world_size}; pick a multiple of it")
            self.local_batch = t.batch_size // self.ctx.world_size
            seed_everything(t.seed, t.deterministic, t.cudnn_benchmark)
            self.create_data()
            self.create_model()
            self.create_engine()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Tear down the process group this trainer set up itself (nothing when it was given
        a ``ctx``: that one is its caller's). ``fit()`` calls it; call it yourself after
        driving ``train_epoch``/``evaluate`` directly on a trainer made without a ``ctx``."""
        if self._owns_ctx:
            distributed.teardown(self.ctx)

    # ------------------------------------------------------------------ setup
    def create_data(self) -> None:
        # borrow: every batch goes through self.preprocess (a new tensor) before the next is
        # drawn, and none is kept, so FFCV's buffers need no copy.
        self.data = build_data(self.cfg, RankSharding(self.ctx.rank, self.ctx.world_size),
                               batch_size=self.local_batch, borrow=True, device=self.ctx.device)
        self.info = self.data.info
        self.preprocess = DevicePreprocess(self.info, self.ctx.device, self.cfg.train.channels_last)
        self.steps_per_epoch = len(self.data.train)
        if self.cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, self.cfg.train.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training split ({self.data.train.num_samples} samples) is "
                              f"smaller than one global batch ({self.cfg.train.batch_size}); "
                              "lower train.batch_size")

    def create_model(self) -> None:
        cfg = self.cfg
        try:
            model = build_model(cfg.model.arch, self.info.num_classes, self.info.channels,
                                self.data.image_size)
        except ValueError as e:
            raise ConfigError(f"model.arch={cfg.model.arch}: {e}") from None
        self.layer_names = resolve_layers(model, cfg.selectivity.layers)
        model = model.to(self.ctx.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.probe = Probe(model, self.layer_names)
        example = torch.zeros(2, self.info.channels, self.data.image_size, self.data.image_size,
                              device=self.ctx.device)
        self.layer_units = self.probe.unit_counts(example)

    def create_engine(self) -> None:
        self.engine = build_engine(self.model, self.cfg, self.ctx, self.steps_per_epoch)
        self.forward_model = self.engine.forward_model()
        if self.cfg.train.compile:
            self.forward_model = torch.compile(self.forward_model)
        s = self.cfg.selectivity
        self.reduce = None
        if self.ctx.distributed and s.sync == "global":
            # The global batch bounds the classes one step can hold: with that bound the
            # present-only payload has a static size and needs no host sync (distributed.py);
            # the dense payload ignores it.
            self.reduce = partial(distributed.all_reduce_stats, present_only=s.sync_present_only,
                                  bf16=s.sync_bf16, max_rows=self.cfg.train.batch_size)
        # Probes stay attached only when the regularizer needs them: alpha = 0 is bare training.
        if self.alpha != 0:
            self.probe.attach()

    def autocast(self):
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.train.bf16)

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, sink, global_step: int) -> tuple[dict, int]:
        cfg, t = self.cfg, self.cfg.train
        k = self.info.num_classes
        eps = cfg.selectivity.eps
        self.forward_model.train()
        self.data.train.set_epoch(epoch)
        # The step never reads the device: loss and CE sums stay there and are read, in one
        # transfer, every LOG_EVERY steps and at the end of the epoch, where the NaN check
        # runs too (a non-finite step makes the running sum non-finite for good), so a GPU's
        # host can run ahead. float64 sums of the float32 losses are the same additions, in
        # the same order, as the Python-float sums they replace.
        sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)  # loss, CE
        last_si = None  # the last batch SI read, still on the device
        unchecked = (0, global_step)  # first (step, global step) not yet checked for NaN
        n_steps = n_images = 0
        show = self.ctx.is_main and cfg.run.progress
        from tqdm import tqdm

        def read(last: tuple[int, int], *scalars) -> list[float]:
            """The running sums and ``scalars`` as Python floats (one host transfer). Raises if
            the loss went non-finite, naming the steps from the last check to ``last``, the
            (step, global step) just taken."""
            nonlocal unchecked
            vals = torch.cat([sums, *(s.detach().double().reshape(1) for s in scalars)])
            vals = vals.tolist()
            if not math.isfinite(vals[0]):
                (s0, g0), (s1, g1) = unchecked, last
                raise TrainingError(
                    f"loss became {vals[0]} in epoch {epoch + 1}, steps {s0}-{s1} (global steps "
                    f"{g0}-{g1}); the last good checkpoint is kept in {self.ckpt_dir}; lower "
                    "train.lr or |selectivity.alpha|, or set train.grad_clip")
            unchecked = (last[0] + 1, last[1] + 1)
            return vals

        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}",
                   disable=None if show else True, leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        batches = self.preprocess.batches(self.data.train, limit=self.steps_per_epoch)
        step = -1
        try:
            for step, (x, y) in enumerate(batches):
                read_si = self.alpha != 0 or (global_step % LOG_EVERY == 0 and not t.compile)
                if read_si and self.alpha == 0:
                    self.probe.attach()
                with self.autocast():
                    logits = self.forward_model(x)
                    ce = F.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
                loss = ce
                if read_si:
                    acts = self.probe.pop()
                    # SI in float32 outside autocast: max-minus-mean-of-rest is too lossy in bf16.
                    with torch.autocast(self.ctx.device.type, enabled=False), \
                            (torch.no_grad() if self.alpha == 0 else contextlib.nullcontext()):
                        mu_si, _ = selectivity_penalty(acts, y, k, eps=eps, reduce=self.reduce)
                    if self.alpha != 0:
                        loss = ce - self.alpha * mu_si
                    else:
                        self.probe.detach()
                    last_si = mu_si.detach()
                self.engine.backward(loss)
                self.engine.step()
                for hook in self.step_hooks:
                    hook(global_step)
                sums += torch.stack([loss.detach(), ce.detach()])  # float32 into float64: exact
                n_steps += 1
                n_images += x.shape[0] * self.ctx.world_size
                if global_step % LOG_EVERY == 0:
                    _, _, loss_val, ce_val, *si = read((step, global_step), loss, ce,
                                                       *([mu_si] if read_si else []))
                    ips = n_images / max(1e-9, time.perf_counter() - t0)
                    sink.scalars({"train/loss": loss_val, "train/ce": ce_val,
                                  "train/reg": loss_val - ce_val, "train/lr": self.engine.lr(),
                                  "train/images_per_s": ips}, global_step)
                    if si:
                        sink.scalar("train/batch_si", si[0], global_step)
                    bar.set_postfix(loss=f"{loss_val:.3f}",
                                    si=f"{si[0] if si else math.nan:.3f}", img_s=f"{ips:.0f}")
                global_step += 1
                bar.update(1)
        finally:
            batches.close()
            bar.close()
        loss_sum, ce_sum, *si = read((step, global_step - 1),
                                     *([last_si] if last_si is not None else []))
        elapsed = time.perf_counter() - t0  # after the read: the device has caught up
        return {"train_loss": loss_sum / max(1, n_steps), "train_ce": ce_sum / max(1, n_steps),
                "train_batch_si": si[0] if si else float("nan"), "lr": self.engine.lr(),
                "images_per_s": n_images / max(1e-9, elapsed),
                "train_time_s": elapsed}, global_step

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        """Accuracy and exact dataset-level SI per probed layer, gathered over all ranks.

        Batches come through ``DevicePreprocess.batches``, which hands each batch to the
        device completely before the next is drawn: FFCV's borrowed buffers are rewritten as
        soon as the next batch is drawn, and nothing in this loop syncs the host per batch.
        The numbers are read from the device once, at the end.
        """
        model = self.engine.module  # unwrapped: uneven eval shards must not meet DDP collectives
        # Every rank scores its shard with rank 0's BatchNorm statistics: the network that
        # rank 0 checkpoints (seltrain/engine.py, "Buffers").
        self.engine.sync_buffers()
        was_training = model.training
        model.eval()
        dev = self.ctx.device
        want_si = self.cfg.selectivity.eval_si
        acc = SelectivityAccumulator(self.layer_units, self.info.num_classes, dev) if want_si \
            else None
        correct = torch.zeros(2, dtype=torch.float64, device=dev)  # [correct, total]
        attached = self.probe.attached
        if want_si:
            self.probe.attach()
        for x, y in self.preprocess.batches(loader):
            with self.autocast():
                logits = model(x)
            correct[0] += (logits.argmax(1) == y).sum()
            correct[1] += y.numel()
            if want_si:
                acc.update(dict(zip(self.layer_names, self.probe.pop())), y)
        if want_si and not attached:
            self.probe.detach()
        model.train(was_training)
        if acc is None:
            distributed.all_reduce_sum(correct)
            c = correct.tolist()
            return {"acc": c[0] / max(c[1], 1.0), "n": int(c[1])}
        distributed.all_reduce_sum(correct, acc.flat, acc.counts)
        si = acc.si(self.cfg.selectivity.eps)
        means = torch.stack([v.mean() for v in si.values()])
        host = torch.cat([correct, means, *si.values()]).cpu().numpy()  # one transfer
        c, per_layer = host[:2], host[2:2 + len(si)]
        units = np.split(host[2 + len(si):], np.cumsum(acc.widths)[:-1])
        out = {"acc": float(c[0] / max(c[1], 1.0)), "n": int(c[1])}
        out["si_per_layer"] = {n: float(v) for n, v in zip(si, per_layer)}
        out["si"] = float(np.mean(list(out["si_per_layer"].values())))
        out["si_units"] = dict(zip(si, units))
        return out

    # ------------------------------------------------------------------ checkpoints
    def _ckpt(self, name: str) -> str:
        return os.path.join(self.ckpt_dir, f"{name}.pt")

    def _check_resumable(self, saved: dict) -> None:
        """Every recipe key that differs from the checkpoint's, named in one line; run before
        the weights are loaded, so a changed arch or class count is this error, not a
        state-dict mismatch."""
        now, then = _flatten(self.cfg.to_dict()), _flatten(saved)
        # A key that a later seltrain added is missing from an older checkpoint: it did not
        # exist then, so its default is what that run trained with.
        defaults = _flatten(Config().to_dict())
        differ = []
        for key in sorted(set(now) | set(then)):
            if key in _RESUME_FREE_KEYS or (key not in then and now.get(key) == defaults.get(key)):
                continue
            if now.get(key) != then.get(key):
                differ.append(f"{key} was {excerpt(then.get(key))}, now {excerpt(now.get(key))}")
        if differ:
            raise CheckpointError(
                f"cannot resume {self.run_dir}: the recipe differs from the checkpoint's in "
                f"{len(differ)} key(s): {'; '.join(differ)}; use the original settings or a "
                "new run.name")

    def _maybe_resume(self) -> tuple[int, int, dict, list]:
        # Whether resuming is allowed at all was settled by _refuse_to_overwrite (rank 0, for
        # every rank) before this runs.
        last = self._ckpt("last")
        if not os.path.exists(last):
            return 0, 0, {}, []
        saved = checkpoint.saved_config(last)
        if saved is not None:
            self._check_resumable(saved)
        ckpt = self.engine.load(last)
        set_rng_state(ckpt["rng"], self.ctx.device)
        # Every epoch's record up to the checkpoint (older checkpoints: none), from which
        # RunSink rebuilds a missing, torn or short metrics.jsonl.
        self._resume_history = json.loads(ckpt["history"]) if "history" in ckpt else None
        best = json.loads(ckpt["best"])
        if self.ctx.is_main:
            print(f"resuming {self.run_dir} after epoch {ckpt['epoch'] + 1}", flush=True)
            if best.get("epoch") == ckpt["epoch"]:
                self._repair_best(last, ckpt["epoch"])
        return (ckpt["epoch"] + 1, ckpt["global_step"], best, json.loads(ckpt["throughput"]))

    def _repair_best(self, last: str, epoch: int) -> None:
        """The last epoch was a new best, so best.pt must equal last.pt; a crash (or a full
        disk) between writing last.pt and copying it to best.pt leaves an older best.pt."""
        path = self._ckpt("best")
        try:
            ok = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"] \
                == epoch
        except Exception:  # noqa: BLE001 - missing or unreadable: rewrite it from last.pt
            ok = False
        if not ok:
            checkpoint.atomic_copy(last, path)
            print(f"seltrain: restored {path} from last.pt (epoch {epoch + 1} was the best; "
                  "the copy had not been made)", file=sys.stderr, flush=True)

    def _save(self, name: str, epoch: int, global_step: int, best: dict,
              throughput: list) -> str:
        path = self._ckpt(name)
        records = getattr(getattr(self, "sink", None), "records", None)
        extra = {"epoch": epoch, "global_step": global_step,
                 "best": json.dumps(best), "throughput": json.dumps(throughput),
                 "config": self.cfg.to_dict(), "rng": rng_state(self.ctx.device),
                 "layer_names": list(self.layer_names),
                 "arch": self.cfg.model.arch,
                 "num_classes": self.info.num_classes,
                 "in_channels": self.info.channels,
                 "image_size": self.data.image_size}
        if records is not None:  # rank 0: a copy of metrics.jsonl (strict JSON text)
            extra["history"] = json.dumps(records, allow_nan=False)
        try:
            self.engine.save(path, extra)
        except CheckpointError:
            raise
        except Exception as e:
            if not is_disk_full(e, self.ckpt_dir):
                raise
            raise CheckpointError(f"no space left on {self.ckpt_dir} while writing {name}.pt; "
                                  "the previous checkpoints are kept: free space there and "
                                  "continue with --resume") from None
        return path

    def _checkpoint(self, epoch: int, global_step: int, best: dict, throughput: list,
                    new_best: bool) -> str:
        """last.pt, then best.pt as a byte copy of it when this epoch is a new best.

        In this order a crash or a full disk can never leave a best.pt newer than last.pt or
        without one; a best.pt left older than last.pt's best record is restored on resume
        (``_repair_best``). Rank 0 tells every rank whether it worked (a broadcast, which
        also serves as the barrier), so a failed write ends all ranks with its one line."""
        err, path = None, None
        try:
            path = self._save("last", epoch, global_step, best, throughput)
            if new_best and self.ctx.is_main:
                checkpoint.atomic_copy(path, self._ckpt("best"))
        except SeltrainError as e:
            if not self.ctx.distributed:
                raise
            err = e
        err = distributed.broadcast_object(err)
        if err is not None:
            raise err
        return path

    # ------------------------------------------------------------------ the run folder
    def _claim_run_folder(self):
        """Rank 0 creates and locks the run folder (``seltrain.runlock``), refuses to
        overwrite an earlier run's files, and removes temporaries of dead writers. Every rank
        learns the outcome (one broadcast), so a refusal ends all ranks with the same line
        instead of leaving the others waiting. Returns the lock (None on other ranks)."""
        lock, err, own = None, None, None
        if self.ctx.is_main:
            try:
                lock = self._lock_and_check()
            except Exception as e:
                if not self.ctx.distributed:
                    raise
                # Never leave the other ranks waiting: they get a one-line error (a bug
                # keeps its traceback on rank 0).
                own = e
                err = e if isinstance(e, SeltrainError) else CheckpointError(
                    f"rank 0 could not prepare the run folder {self.run_dir} "
                    f"({type(e).__name__}: {e})")
        err = distributed.broadcast_object(err)
        if own is not None:
            raise own
        if err is not None:
            raise err
        return lock

    def _lock_and_check(self):
        from seltrain.runlock import LOCK_NAME, RunLock

        try:
            os.makedirs(self.run_dir, exist_ok=True)
        except OSError as e:
            blocker = file_in_the_way(self.run_dir)
            why = f"{blocker} is a file, not a folder" if blocker else e.strerror
            raise ConfigError(f"cannot create the run folder {self.run_dir}: {why}; set "
                              "run.out_dir to a folder you can write") from None
        try:
            lock = RunLock(os.path.join(self.run_dir, LOCK_NAME),
                           what=f"run folder {self.run_dir}",
                           fix="wait for that run to end, or set another run.name").acquire()
        except OSError as e:
            if is_disk_full(e):
                raise CheckpointError(f"no space left on {self.run_dir}; free space there and "
                                      "run again") from None
            raise ConfigError(f"cannot lock the run folder {self.run_dir} ({e.strerror}); "
                              "set run.out_dir to a folder you can write") from None
        try:
            self._refuse_to_overwrite()
            for folder, patterns, what in (
                    (self.ckpt_dir, (".tmp-*.pt",), "checkpoint"),
                    (self.run_dir, ("metrics.jsonl.tmp-*", ".summary.json.tmp",
                                    ".config.yaml.tmp-*"), "metrics")):
                removed = checkpoint.remove_stale_temporaries(folder, patterns)
                if removed:
                    print(f"seltrain: removed {len(removed)} temporary file(s) left in "
                          f"{folder} by an interrupted {what} write: {', '.join(removed)}",
                          file=sys.stderr, flush=True)
        except BaseException:
            lock.release()
            raise
        return lock

    def _earlier_run_files(self) -> list[str]:
        """What an earlier run left here that a new run would overwrite."""
        found = [os.path.join("checkpoints", f) for f in sorted(os.listdir(self.ckpt_dir))
                 if f.endswith(".pt") and not f.startswith(".")] \
            if os.path.isdir(self.ckpt_dir) else []
        ds = os.path.join(self.ckpt_dir, "deepspeed")
        if os.path.isdir(ds) and os.listdir(ds):
            found.append("checkpoints/deepspeed/ (ZeRO shards)")
        found += [f for f in ("metrics.jsonl", "summary.json")
                  if os.path.exists(os.path.join(self.run_dir, f))]
        return found

    def _refuse_to_overwrite(self) -> None:
        restarted = self.ctx.restart_count > 0
        found = self._earlier_run_files()
        has_last = os.path.exists(self._ckpt("last"))
        if not (self.resume or restarted):
            if has_last:
                raise ConfigError(f"{self.run_dir} already holds {self._ckpt('last')}; pass "
                                  "--resume to continue that run, or set run.name to start a "
                                  "new one")
            if found:
                raise ConfigError(f"{self.run_dir} already holds {', '.join(found)} from an "
                                  "earlier run, which a new run would overwrite; set run.name "
                                  "to start a new run, or move those files away")
            return
        if has_last:
            return
        # Resuming without last.pt starts from scratch, which is right only where no epoch
        # was ever checkpointed: a crash before the first last.pt leaves at most epoch 1's
        # metrics line (and DeepSpeed shards without the .pt that commits them).
        records = read_records(os.path.join(self.run_dir, "metrics.jsonl"))[0]
        later = [f for f in found if f in ("checkpoints/best.pt", "summary.json")]
        if later or any(r.get("epoch", 0) > 0 for r in records):
            raise CheckpointError(
                f"cannot resume {self.run_dir}: it holds {', '.join(found)} but no "
                "checkpoints/last.pt to continue from (deleted, or lost); restore last.pt, or "
                "set run.name to start a new run")

    # ------------------------------------------------------------------ the job
    def fit(self) -> dict:
        """The whole run, with the run folder locked for its life (see _claim_run_folder);
        ends with ``close()``."""
        try:
            lock = self._claim_run_folder()
            try:
                return self._fit()
            finally:
                if lock is not None:
                    lock.release()
        finally:
            self.close()

    def _fit(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self._resume_history = None
        start_epoch, global_step, best, throughput = self._maybe_resume()
        if ctx.is_main:
            tmp = os.path.join(self.run_dir, f".config.yaml.tmp-{os.getpid()}")
            with open(tmp, "w") as f:  # atomic: `seltrain report` reads it at any time
                f.write(cfg.to_yaml())
            os.replace(tmp, os.path.join(self.run_dir, "config.yaml"))
            sink = RunSink(self.run_dir, tensorboard=cfg.run.tensorboard,
                           resume_epoch=start_epoch - 1 if start_epoch else None,
                           resume_step=global_step if start_epoch else None,
                           history=self._resume_history)
        else:
            sink = NullSink()
        self.sink = sink
        if ctx.is_main:
            flat = _flatten(cfg.to_dict())
            sink.hparams({k: flat.get(k) for k in self.hparam_keys}, list(HPARAM_METRICS))
        try:
            for epoch in range(start_epoch, cfg.train.epochs):
                train_stats, global_step = self.train_epoch(epoch, sink, global_step)
                record = self._end_of_epoch(epoch, train_stats, sink, best)
                throughput.append(train_stats["images_per_s"])
                new_best = self._is_new_best(record, best)
                if new_best:
                    best = {k: record[k] for k in ("epoch", "val_acc", "test_acc", "test_si",
                                                   "test_si_per_layer") if k in record}
                self._hparam_metrics(sink, best, epoch)
                ckpt_path = self._checkpoint(epoch, global_step, best, throughput, new_best)
                if self.report is not None:
                    self.report(record, ckpt_path)
            summary = self._summary(best, throughput)
            if ctx.is_main:
                sink.summary(summary)
            return summary
        finally:
            sink.close()

    @staticmethod
    def _hparam_metrics(sink, best: dict, epoch: int) -> None:
        """The HParams tab's metrics after every epoch: the best epoch's numbers so far (what
        summary.json will hold) and the epochs run, flushed at once, so a run that ASHA stops
        or that fails later is listed with them."""
        values = {"hparam/val_acc": best.get("val_acc"), "hparam/test_acc": best.get("test_acc"),
                  "hparam/test_si": best.get("test_si"), "hparam/epochs": epoch + 1}
        sink.scalars({k: v for k, v in values.items() if v is not None}, epoch)
        sink.flush()

    def _is_new_best(self, record: dict, best: dict) -> bool:
        """Whether ``record`` beats ``best`` on the selection metric: val accuracy, or test
        accuracy for a run without a validation split."""
        key = "val_acc" if self.data.val is not None else "test_acc"
        return not best or record[key] > best[key]

    def _end_of_epoch(self, epoch: int, train_stats: dict, sink, best: dict) -> dict:
        record = {"epoch": epoch, **train_stats}
        for split, loader in (("val", self.data.val), ("test", self.data.test)):
            if split == "test" and self.cfg.train.eval_test == "at_best" \
                    and self.data.val is not None and not self._is_new_best(record, best):
                loader = None  # not a new best: its test numbers could never be reported
            if loader is None:
                record[f"{split}_acc"] = None
                continue
            ev = self.evaluate(loader)
            record[f"{split}_acc"] = ev["acc"]
            sink.scalar(f"{split}/acc", ev["acc"], epoch)
            if "si" in ev:
                record[f"{split}_si"] = ev["si"]
                record[f"{split}_si_per_layer"] = ev["si_per_layer"]
                sink.scalar(f"{split}/si_mean", ev["si"], epoch)
                for layer, v in ev["si_per_layer"].items():
                    sink.scalar(f"{split}/si/{layer}", v, epoch)
                if split == "test":
                    for layer, units in ev["si_units"].items():
                        sink.histogram(f"test/si_hist/{layer}", units, epoch)
        for hook in self.epoch_hooks:
            record[hook.record_key] = values = hook(self, epoch)
            for name, v in values.items():
                sink.scalar(f"{hook.tag}/{name}", v, epoch)
        sink.scalar("epoch/images_per_s", train_stats["images_per_s"], epoch)
        sink.epoch(record)
        sink.flush()
        if self.ctx.is_main:
            val, test = ("-" if record[k] is None else f"{record[k]:.4f}"
                         for k in ("val_acc", "test_acc"))
            print(f"epoch {epoch + 1}/{self.cfg.train.epochs} loss {record['train_loss']:.4f} "
                  f"val_acc {val} test_acc {test} "
                  f"test_si {record.get('test_si', float('nan')):.4f} "
                  f"{record['images_per_s']:.0f} img/s", flush=True)
        return record

    def _summary(self, best: dict, throughput: list) -> dict:
        cfg = self.cfg
        # The first epoch carries one-off costs (JIT, caches); report the rest when there is one.
        steady = throughput[1:] or throughput
        return {"alpha": self.alpha, "seed": cfg.train.seed, "arch": cfg.model.arch,
                "dataset": cfg.data.dataset, "epochs": cfg.train.epochs,
                "best_epoch": best.get("epoch"), "val_acc": best.get("val_acc"),
                "test_acc": best.get("test_acc"), "test_si": best.get("test_si"),
                "test_si_per_layer": best.get("test_si_per_layer"),
                "images_per_s": float(np.mean(steady)) if steady else None,
                "world_size": self.ctx.world_size, "engine": cfg.train.engine,
                "run_dir": os.path.abspath(self.run_dir)}
