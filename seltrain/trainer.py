"""The training loop: CE minus alpha times mean class selectivity, evaluated exactly each epoch.

``Trainer(cfg).fit()`` is the whole job of ``seltrain train``: it is also what every Ray Tune
trial and every rank under torchrun or the deepspeed launcher runs. Methods are named for the
steps of the work (after ffcv-imagenet's trainer): create_data, create_model, create_engine,
train_step, train_epoch, evaluate, fit. The run folder's rules live in
``runlock.RunFolder``, the checkpoints' in ``checkpoint.Checkpointer``.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from functools import partial
from typing import Callable, NamedTuple

import torch
from torch.nn import functional as F

from seltrain import distributed
from seltrain.alpha_schedule import alpha_at
from seltrain.analysis import tb_views
from seltrain.checkpoint import Checkpointer, TrainState
from seltrain.config import Config
from seltrain.data import DevicePreprocess, RankSharding, build_data
from seltrain.engine import build_engine
from seltrain.errors import ConfigError
from seltrain.fault_injection import step_hooks_from_env
from seltrain.metrics import (HPARAM_METRICS, LossSums, NullSink, open_run_sink,
                              run_summary)
from seltrain.models import build_model
from seltrain.probes import Probe, eval_mode, resolve_layers
from seltrain.rng import seed_everything
from seltrain.runlock import RunFolder
from seltrain.selectivity import SelectivityAccumulator, layer_weights, selectivity_penalty

# Steps between progress-bar / TensorBoard step scalars (and batch-SI readings at alpha = 0).
LOG_EVERY = 20
# Recipe keys every run lists in TensorBoard's HParams tab (a search adds its searched keys),
# against metrics.HPARAM_METRICS.
HPARAM_KEYS = ("selectivity.alpha", "train.seed", "model.arch", "data.dataset", "train.lr",
               "train.batch_size", "train.epochs")
# What the run keeps of its best epoch's record (summary.json, the checkpoints' "best").
BEST_KEYS = ("epoch", "val_acc", "test_acc", "test_si", "test_si_per_layer",
             "test_dead_per_layer")


class StepLosses(NamedTuple):
    """What one training step leaves on the device, detached: the loss it minimised, its
    cross-entropy, and the batch's mean SI (None where the step did not compute it)."""
    loss: torch.Tensor
    ce: torch.Tensor
    si: torch.Tensor | None


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
        self.resume = resume
        self.report = report
        # The alpha of the epoch being trained (selectivity.alpha_schedule); set_alpha(epoch).
        self.alpha = alpha_at(cfg.selectivity.alpha_schedule, cfg.selectivity.alpha, 0)
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
            network = build_model(cfg.model.arch, self.info.num_classes, self.info.channels,
                                  self.data.image_size, dropout=cfg.model.dropout,
                                  stem=cfg.model.stem)
        except ValueError as e:
            raise ConfigError(f"model.arch={cfg.model.arch}: {e}") from None
        self.layer_names = resolve_layers(network, cfg.selectivity.layers)
        network = network.to(self.ctx.device)
        if cfg.train.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.network = network
        self.probe = Probe(network, self.layer_names)
        example = torch.zeros(2, self.info.channels, self.data.image_size, self.data.image_size,
                              device=self.ctx.device)
        self.layer_units = self.probe.unit_counts(example)
        # How mu_SI weighs the layers (selectivity.layer_mean): None is a plain mean.
        self.layer_weights = layer_weights(self.layer_units, cfg.selectivity.layer_mean)

    def create_engine(self) -> None:
        self.engine = build_engine(self.network, self.cfg, self.ctx, self.steps_per_epoch)
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
        self.set_alpha(0)
        self.checkpointer = Checkpointer(
            self.run_dir, self.engine, self.ctx, self.cfg,
            {"layer_names": list(self.layer_names), "arch": self.cfg.model.arch,
             "num_classes": self.info.num_classes, "in_channels": self.info.channels,
             "image_size": self.data.image_size})

    def set_alpha(self, epoch: int) -> float:
        """Make ``epoch``'s alpha (``selectivity.alpha_schedule``) the one ``train_step``
        uses. A function of the epoch number alone, so a resumed run continues the schedule.
        Probes stay attached only while the regularizer needs them: alpha = 0 is bare
        training."""
        self.alpha = alpha_at(self.cfg.selectivity.alpha_schedule, self.cfg.selectivity.alpha,
                              epoch)
        if self.alpha != 0:
            self.probe.attach()
        else:
            self.probe.detach()
        return self.alpha

    def autocast(self):
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16,
                              enabled=self.cfg.train.bf16)

    # ------------------------------------------------------------------ training
    def train_step(self, x: torch.Tensor, y: torch.Tensor, *,
                   measure_si: bool = False) -> StepLosses:
        """One optimizer step on the batch (x, y): loss = CE - alpha * (mean SI of the batch);
        returns it with its parts. ``measure_si``: at alpha = 0, compute the batch SI too (a
        diagnostic, without gradient); at alpha != 0 it is always computed."""
        with_si = self.alpha != 0 or measure_si
        # At alpha = 0 the probes are on for a diagnostic step only.
        with self.probe.active() if with_si else contextlib.nullcontext():
            with self.autocast():
                logits = self.forward_model(x)
                ce = F.cross_entropy(logits, y, label_smoothing=self.cfg.train.label_smoothing)
            acts = self.probe.pop() if with_si else None
        loss, si = ce, None
        if acts is not None:
            # SI in float32 outside autocast: max-minus-mean-of-rest is too lossy in bf16.
            with torch.autocast(self.ctx.device.type, enabled=False), \
                    (torch.no_grad() if self.alpha == 0 else contextlib.nullcontext()):
                si, _ = selectivity_penalty(acts, y, self.info.num_classes,
                                            eps=self.cfg.selectivity.eps, reduce=self.reduce,
                                            weights=self.layer_weights)
            if self.alpha != 0:
                loss = ce - self.alpha * si
        self.engine.backward(loss)
        self.engine.step()
        return StepLosses(loss.detach(), ce.detach(), None if si is None else si.detach())

    def train_epoch(self, epoch: int, sink, global_step: int) -> tuple[dict, int]:
        """One epoch of ``train_step``; returns its numbers and the next global step."""
        from tqdm import tqdm

        t = self.cfg.train
        self.set_alpha(epoch)
        # One point per epoch, at the step the epoch starts (the step axis of train/*).
        sink.scalar("train/alpha", self.alpha, global_step)
        self.forward_model.train()
        self.data.train.set_epoch(epoch)
        sums = LossSums(self.ctx.device, epoch, global_step, self.checkpointer.folder)
        last_si = None  # the last batch SI computed, still on the device
        n_images = 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}",
                   disable=None if self.ctx.is_main and self.cfg.run.progress else True,
                   leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        batches = self.preprocess.batches(self.data.train, limit=self.steps_per_epoch)
        step = -1
        try:
            for step, (x, y) in enumerate(batches):
                log = global_step % LOG_EVERY == 0
                losses = self.train_step(x, y, measure_si=log and not t.compile)
                for hook in self.step_hooks:
                    hook(global_step)
                sums.add(losses.loss, losses.ce)
                n_images += x.shape[0] * self.ctx.world_size
                last_si = losses.si if losses.si is not None else last_si
                if log:
                    self._log_step(sink, bar, sums, (step, global_step), losses, n_images, t0)
                global_step += 1
                bar.update(1)
        finally:
            batches.close()
            bar.close()
        loss_sum, ce_sum, *si = sums.read((step, global_step - 1),
                                          *([last_si] if last_si is not None else []))
        elapsed = time.perf_counter() - t0  # after the read: the device has caught up
        n = max(1, sums.steps)
        return {"alpha": self.alpha, "train_loss": loss_sum / n, "train_ce": ce_sum / n,
                "train_batch_si": si[0] if si else float("nan"), "lr": self.engine.lr(),
                "images_per_s": n_images / max(1e-9, elapsed),
                "train_time_s": elapsed}, global_step

    def _log_step(self, sink, bar, sums: LossSums, at: tuple[int, int], losses: StepLosses,
                  n_images: int, t0: float) -> None:
        """The step's scalars to TensorBoard and the progress bar (one device read)."""
        _, _, loss, ce, *si = sums.read(at, losses.loss, losses.ce,
                                        *([losses.si] if losses.si is not None else []))
        images_per_s = n_images / max(1e-9, time.perf_counter() - t0)  # the device caught up
        sink.scalars({"train/loss": loss, "train/ce": ce, "train/reg": loss - ce,
                      "train/lr": self.engine.lr(), "train/images_per_s": images_per_s}, at[1])
        if si:
            sink.scalar("train/batch_si", si[0], at[1])
        bar.set_postfix(loss=f"{loss:.3f}", si=f"{si[0] if si else math.nan:.3f}",
                        img_s=f"{images_per_s:.0f}")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        """Accuracy and exact dataset-level SI per probed layer, gathered over all ranks.

        Batches come through ``DevicePreprocess.batches``, which hands each batch to the
        device completely before the next is drawn: FFCV's borrowed buffers are rewritten as
        soon as the next batch is drawn, and nothing in this loop syncs the host per batch.
        The numbers are read from the device once, at the end.
        """
        # Every rank scores its shard with rank 0's BatchNorm statistics: the network that
        # rank 0 checkpoints (seltrain/engine.py, "Buffers").
        self.engine.sync_buffers()
        dev = self.ctx.device
        want_si = self.cfg.selectivity.eval_si
        acc = SelectivityAccumulator(self.layer_units, self.info.num_classes, dev) if want_si \
            else None
        correct = torch.zeros(2, dtype=torch.float64, device=dev)  # [correct, total]
        # The raw network: uneven eval shards must not meet DDP's collectives.
        with eval_mode(self.network), \
                self.probe.active() if want_si else contextlib.nullcontext():
            for x, y in self.preprocess.batches(loader):
                with self.autocast():
                    logits = self.network(x)
                correct[0] += (logits.argmax(1) == y).sum()
                correct[1] += y.numel()
                if want_si:
                    acc.update(dict(zip(self.layer_names, self.probe.pop())), y)
        if acc is None:
            distributed.all_reduce_sum(correct)
            c = correct.tolist()
            return {"acc": c[0] / max(c[1], 1.0), "n": int(c[1])}
        distributed.all_reduce_sum(correct, acc.flat, acc.counts)
        si, c = acc.read(self.cfg.selectivity.eps, correct,  # one transfer
                         weights=self.layer_weights)
        return {"acc": float(c[0] / max(c[1], 1.0)), "n": int(c[1]), **si}

    # ------------------------------------------------------------------ the job
    def fit(self) -> dict:
        """The whole run: the run folder claimed for its life (``RunFolder``), the last
        checkpoint resumed, then epoch after epoch trained, evaluated, logged and
        checkpointed; ends with ``close()``."""
        try:
            with RunFolder(self.run_dir, self.ctx, resume=self.resume).claim():
                state, history = self.checkpointer.resume()
                with self._open_sink(state, history) as sink:
                    for epoch in range(state.epoch + 1, self.cfg.train.epochs):
                        stats, state.global_step = self.train_epoch(epoch, sink,
                                                                    state.global_step)
                        record = self._end_of_epoch(epoch, stats, sink, state.best)
                        new_best = self._is_new_best(record, state.best)
                        state.epoch = epoch
                        state.throughput.append(stats["images_per_s"])
                        if new_best:
                            state.best = {k: record[k] for k in BEST_KEYS if k in record}
                        sink.hparam_metrics(state.best, epoch)
                        path = self.checkpointer.save(state, new_best=new_best,
                                                      history=sink.records)
                        if self.report is not None:
                            self.report(record, path)
                    summary = self._summary(state)
                    sink.summary(summary)
                    return summary
        finally:
            self.close()

    def _open_sink(self, state: TrainState, history: list | None):
        """Rank 0's RunSink (metrics.open_run_sink), continuing from ``state``; a NullSink on
        the other ranks. The analyses' headline tags are declared now: TensorBoard's HParams
        table has a column only for a metric a run declared at its start, and `seltrain
        analyze` fills them later."""
        if not self.ctx.is_main:
            return NullSink()
        resumed = state.epoch >= 0
        return open_run_sink(
            self.run_dir, self.cfg, resume_epoch=state.epoch if resumed else None,
            resume_step=state.global_step if resumed else None, history=history,
            hparam_keys=self.hparam_keys, metrics=[*HPARAM_METRICS, *tb_views.headline_tags()],
            layout=tb_views.run_layout(has_val=self.data.val is not None,
                                       eval_si=self.cfg.selectivity.eval_si,
                                       hook_tags=[h.tag for h in self.epoch_hooks]))

    def _is_new_best(self, record: dict, best: dict) -> bool:
        """Whether ``record`` beats ``best`` on the selection metric: val accuracy, or test
        accuracy for a run without a validation split."""
        key = "val_acc" if self.data.val is not None else "test_acc"
        return not best or record[key] > best[key]

    def _end_of_epoch(self, epoch: int, train_stats: dict, sink, best: dict) -> dict:
        """The epoch's record: its training numbers, val and test evaluated, the epoch hooks'
        measurements; logged to the sink (rank 0 prints it too)."""
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
            if "si" in ev:
                record[f"{split}_si"] = ev["si"]
                record[f"{split}_si_per_layer"] = ev["si_per_layer"]
                record[f"{split}_dead_per_layer"] = ev["dead_per_layer"]
            sink.evaluation(split, ev, epoch)
        for hook in self.epoch_hooks:
            record[hook.record_key] = values = hook(self, epoch)
            for name, v in values.items():
                sink.scalar(f"{hook.tag}/{name}", v, epoch)
        sink.scalar("epoch/images_per_s", train_stats["images_per_s"], epoch)
        sink.epoch(record)
        sink.flush()
        return record

    def _summary(self, state: TrainState) -> dict:
        return run_summary(self.cfg, state.best, state.throughput, self.ctx.world_size,
                           self.run_dir)
