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
import time
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from seltrain import distributed
from seltrain.checkpoint import rng_state, set_rng_state
from seltrain.config import Config, config_from_dict
from seltrain.data import DevicePreprocess, RankSharding, build_data
from seltrain.engine import build_engine
from seltrain.errors import CheckpointError, ConfigError, TrainingError
from seltrain.metrics import NullSink, RunSink
from seltrain.models import build_model
from seltrain.probes import Probe, resolve_layers
from seltrain.selectivity import SelectivityAccumulator, selectivity_penalty

# Steps between progress-bar / TensorBoard step scalars (and batch-SI readings at alpha = 0).
LOG_EVERY = 20
# Keys that may change between an interrupted run and its resumption.
_RESUME_FREE_KEYS = ("run.progress", "run.tensorboard", "data.num_workers", "run.out_dir")


# Fault injection for the elastic-restart test only (tests/integration_tests/
# test_distributed_elastic.py): rank 1 SIGKILLs itself at this global step, first attempt only.
_KILL_AT_STEP = os.environ.get("SELTRAIN_TEST_KILL_AT_STEP")


def _test_kill(global_step: int, rank: int) -> None:
    if (rank == 1 and global_step == int(_KILL_AT_STEP)
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


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
                 report: Callable[[dict, str], None] | None = None):
        self.cfg = cfg
        self.ctx = ctx or distributed.setup()
        self.run_dir = run_dir or cfg.run_dir()
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        self.resume = resume
        self.report = report
        self.alpha = cfg.selectivity.alpha
        t = cfg.train
        if t.batch_size % self.ctx.world_size:
            raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by the world "
                              f"size {self.ctx.world_size}; pick a multiple of it")
        self.local_batch = t.batch_size // self.ctx.world_size
        seed_everything(t.seed, t.deterministic)
        self.create_data()
        self.create_model()
        self.create_engine()

    # ------------------------------------------------------------------ setup
    def create_data(self) -> None:
        # borrow: every batch goes through self.preprocess (a new tensor) before the next is
        # drawn, and none is kept, so FFCV's buffers need no copy.
        self.data = build_data(self.cfg, RankSharding(self.ctx.rank, self.ctx.world_size),
                               batch_size=self.local_batch, borrow=True)
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
            self.reduce = partial(distributed.all_reduce_stats, present_only=s.sync_present_only,
                                  bf16=s.sync_bf16)
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
        loss_sum = ce_sum = 0.0
        n_steps = 0
        n_images = 0
        last_si = float("nan")
        show = self.ctx.is_main and cfg.run.progress
        from tqdm import tqdm

        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}",
                   disable=None if show else True, leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        for step, (xb, yb) in enumerate(self.data.train):
            if step >= self.steps_per_epoch:
                break
            x, y = self.preprocess(xb, yb)
            read_si = self.alpha != 0 or (global_step % LOG_EVERY == 0 and not t.compile)
            if read_si and self.alpha == 0:
                self.probe.attach()
            with self.autocast():
                logits = self.forward_model(x)
                ce = F.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
            loss = ce
            if read_si:
                acts = self.probe.pop()
                # SI in float32 outside autocast: the max-minus-mean-of-rest is too lossy in bf16.
                with torch.autocast(self.ctx.device.type, enabled=False), \
                        (torch.no_grad() if self.alpha == 0 else contextlib.nullcontext()):
                    mu_si, _ = selectivity_penalty(acts, y, k, eps=eps, reduce=self.reduce)
                if self.alpha != 0:
                    loss = ce - self.alpha * mu_si
                else:
                    self.probe.detach()
            self.engine.backward(loss)
            self.engine.step()
            if _KILL_AT_STEP is not None:
                _test_kill(global_step, self.ctx.rank)
            loss_val = loss.item()
            if not math.isfinite(loss_val):
                raise TrainingError(
                    f"loss became {loss_val} at epoch {epoch + 1} step {step} (global step "
                    f"{global_step}); the last good checkpoint is kept in {self.ckpt_dir}; lower "
                    "train.lr or |selectivity.alpha|, or set train.grad_clip")
            ce_val = ce.item()
            loss_sum += loss_val
            ce_sum += ce_val
            n_steps += 1
            n_images += x.shape[0] * self.ctx.world_size
            if read_si:
                last_si = float(mu_si.detach())
            if global_step % LOG_EVERY == 0:
                ips = n_images / max(1e-9, time.perf_counter() - t0)
                sink.scalars({"train/loss": loss_val, "train/ce": ce_val,
                              "train/reg": loss_val - ce_val, "train/lr": self.engine.lr(),
                              "train/images_per_s": ips}, global_step)
                if read_si:
                    sink.scalar("train/batch_si", last_si, global_step)
                bar.set_postfix(loss=f"{loss_val:.3f}", si=f"{last_si:.3f}", img_s=f"{ips:.0f}")
            global_step += 1
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - t0
        return {"train_loss": loss_sum / max(1, n_steps), "train_ce": ce_sum / max(1, n_steps),
                "train_batch_si": last_si, "lr": self.engine.lr(),
                "images_per_s": n_images / max(1e-9, elapsed),
                "train_time_s": elapsed}, global_step

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        """Accuracy and exact dataset-level SI per probed layer, gathered over all ranks."""
        model = self.engine.module  # unwrapped: uneven eval shards must not meet DDP collectives
        was_training = model.training
        model.eval()
        dev = self.ctx.device
        want_si = self.cfg.selectivity.eval_si
        acc = SelectivityAccumulator(self.layer_units, self.info.num_classes, dev) if want_si \
            else None
        correct = torch.zeros(2, dtype=torch.float64, device=dev)  # [correct, total]
        attached = bool(self.probe._handles)
        if want_si:
            self.probe.attach()
        for xb, yb in loader:
            x, y = self.preprocess(xb, yb)
            with self.autocast():
                logits = model(x)
            correct[0] += (logits.argmax(1) == y).sum()
            correct[1] += y.numel()
            if want_si:
                acc.update(dict(zip(self.layer_names, self.probe.pop())), y)
        if want_si and not attached:
            self.probe.detach()
        model.train(was_training)
        if acc is not None:
            sums, counts = acc.state()
            distributed.all_reduce_sum(correct, *sums, counts)
        else:
            distributed.all_reduce_sum(correct)
        out = {"acc": float(correct[0] / correct[1].clamp(min=1)), "n": int(correct[1])}
        if acc is not None:
            si = acc.si(self.cfg.selectivity.eps)
            out["si_per_layer"] = {n: float(v.mean()) for n, v in si.items()}
            out["si"] = float(np.mean(list(out["si_per_layer"].values())))
            out["si_units"] = {n: v.cpu().numpy() for n, v in si.items()}
        return out

    # ------------------------------------------------------------------ checkpoints
    def _ckpt(self, name: str) -> str:
        return os.path.join(self.ckpt_dir, f"{name}.pt")

    def _check_resumable(self, saved: dict) -> None:
        now, then = _flatten(self.cfg.to_dict()), _flatten(saved)
        for key in sorted(set(now) | set(then)):
            if key in _RESUME_FREE_KEYS:
                continue
            if now.get(key) != then.get(key):
                raise CheckpointError(
                    f"cannot resume {self.run_dir}: {key} was {then.get(key)!r} in the "
                    f"checkpoint but is {now.get(key)!r} now; use the original settings or a "
                    "new run.name")

    def _maybe_resume(self) -> tuple[int, int, dict, list]:
        last = self._ckpt("last")
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        if not os.path.exists(last):
            return 0, 0, {}, []
        if not (self.resume or restarted):
            raise ConfigError(f"{self.run_dir} already holds {last}; pass --resume to continue "
                              "that run, or set run.name to start a new one")
        ckpt = self.engine.load(last)
        self._check_resumable(ckpt["config"])
        set_rng_state(ckpt["rng"])
        if self.ctx.is_main:
            print(f"resuming {self.run_dir} after epoch {ckpt['epoch'] + 1}", flush=True)
        return (ckpt["epoch"] + 1, ckpt["global_step"], json.loads(ckpt["best"]),
                json.loads(ckpt["throughput"]))

    def _save(self, name: str, epoch: int, global_step: int, best: dict,
              throughput: list) -> str:
        path = self._ckpt(name)
        self.engine.save(path, {"epoch": epoch, "global_step": global_step,
                                "best": json.dumps(best), "throughput": json.dumps(throughput),
                                "config": self.cfg.to_dict(), "rng": rng_state(),
                                "layer_names": list(self.layer_names),
                                "arch": self.cfg.model.arch,
                                "num_classes": self.info.num_classes,
                                "in_channels": self.info.channels,
                                "image_size": self.data.image_size})
        return path

    # ------------------------------------------------------------------ the job
    def fit(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        start_epoch, global_step, best, throughput = self._maybe_resume()
        if ctx.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "config.yaml"), "w") as f:
                f.write(cfg.to_yaml())
            sink = RunSink(self.run_dir, tensorboard=cfg.run.tensorboard,
                           resume_epoch=start_epoch - 1 if start_epoch else None,
                           resume_step=global_step if start_epoch else None)
        else:
            sink = NullSink()
        try:
            for epoch in range(start_epoch, cfg.train.epochs):
                train_stats, global_step = self.train_epoch(epoch, sink, global_step)
                record = self._end_of_epoch(epoch, train_stats, sink, best)
                throughput.append(train_stats["images_per_s"])
                if self._is_new_best(record, best):
                    best = {k: record[k] for k in ("epoch", "val_acc", "test_acc", "test_si",
                                                   "test_si_per_layer") if k in record}
                    self._save("best", epoch, global_step, best, throughput)
                ckpt_path = self._save("last", epoch, global_step, best, throughput)
                distributed.barrier()
                if self.report is not None:
                    self.report(record, ckpt_path)
            summary = self._summary(best, throughput)
            if ctx.is_main:
                sink.summary(summary, {"alpha": self.alpha, "seed": cfg.train.seed,
                                       "arch": cfg.model.arch, "dataset": cfg.data.dataset},
                             {"hparam/val_acc": summary["val_acc"] or 0.0,
                              "hparam/test_acc": summary["test_acc"],
                              "hparam/test_si": summary["test_si"]})
            return summary
        finally:
            sink.close()

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
        if self.cfg.run.track_orientation:
            record["osi_per_layer"] = self.orientation_osi()
            for layer, v in record["osi_per_layer"].items():
                sink.scalar(f"orientation/osi_mean/{layer}", v, epoch)
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

    @torch.no_grad()
    def orientation_osi(self) -> dict:
        """Mean OSI per probed conv layer on 432 gratings (12 orientations x 4 phases x 9
        frequencies at the model's input size, normalised like the data; Ukita), once per
        epoch. Every rank computes the same numbers on its own replica."""
        from seltrain.analysis import orientation

        model = self.engine.module
        attached = bool(self.probe._handles)
        self.probe.detach()  # the grating passes must not leave activations in the probe
        if not hasattr(self, "_gratings"):
            self._gratings = orientation.stimuli(self.data.image_size, self.info.channels,
                                                 self.info.mean, self.info.std)
            # conv layers only: a linear unit has no receptive field to orient
            from seltrain.analysis.capture import layer_outputs

            points = model.probe_points()
            (outs, _, _), = layer_outputs(model, {n: points[n] for n in self.layer_names},
                                          self._gratings[0, 0, :1], device=self.ctx.device)
            self._osi_layers = [n for n in self.layer_names if outs[n].dim() == 4]
        try:
            with torch.autocast(self.ctx.device.type, enabled=False):
                return orientation.mean_osi_per_layer(model, self._osi_layers, self._gratings,
                                                      device=self.ctx.device) \
                    if self._osi_layers else {}
        finally:
            if attached:
                self.probe.attach()

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


def load_trained_model(path: str, device="cpu"):
    """(model, checkpoint dict, Config) from a checkpoint file or a run folder."""
    from seltrain import checkpoint

    if os.path.isdir(path):
        for cand in ("checkpoints/best.pt", "checkpoints/last.pt"):
            if os.path.isfile(os.path.join(path, cand)):
                path = os.path.join(path, cand)
                break
        else:
            raise CheckpointError(f"{path} holds no checkpoints/best.pt or checkpoints/last.pt")
    ckpt = checkpoint.load(path, map_location=device)
    cfg = config_from_dict(ckpt["config"])
    model = build_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"],
                        ckpt["image_size"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt, cfg
