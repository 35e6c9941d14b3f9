"""One metrics sink for a run: TensorBoard, metrics.jsonl and summary.json, rank 0 only.

Other ranks get a sink whose methods do nothing, so the loop never branches on rank.
``LossSums`` holds what the training loop sums on the device between its reads.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from seltrain.atomic import atomic_write
from seltrain.errors import CheckpointError, TrainingError, is_disk_full, no_space


# The metric tags a run lists in TensorBoard's HParams tab (written every epoch,
# ``hparam_metrics``).
HPARAM_METRICS = ("hparam/val_acc", "hparam/test_acc", "hparam/test_si", "hparam/epochs")


def strict_json(value):
    """``value`` as plain JSON types: numpy and torch scalars and arrays as Python numbers and
    lists, NaN/inf as None (bare NaN, which Python's json writes by default, breaks most other
    JSON readers). Epoch records here; every analysis result (analysis/serialize.py) too."""
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return strict_json(value.tolist())
    if isinstance(value, (list, tuple, range)):
        return [strict_json(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def read_records(path: str) -> tuple[list[dict], bool]:
    """The records of a metrics.jsonl and whether its last line was torn.

    A crash mid-append leaves a last line that is not valid JSON: it is dropped (the epoch it
    belonged to is not in the checkpoint either). A bad line anywhere else is corruption.
    Used by ``--resume`` (which rewrites the file) and ``seltrain report`` (which only reads).
    """
    if not os.path.exists(path):
        return [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records, torn = [], False
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    for k, (n, ln) in enumerate(numbered):
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict) or "epoch" not in rec:
                raise ValueError("not an epoch record")
        except ValueError:
            if k == len(numbered) - 1:
                torn = True
                break
            raise CheckpointError(f"{path}:{n} is not an epoch record (corrupt file); restore "
                                  "it, or delete that line") from None
        records.append(rec)
    return records, torn


def _write_records(path: str, records: list[dict]) -> None:
    with atomic_write(path) as f:
        f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in records)


class LossSums:
    """An epoch's loss and CE, summed on the device and read to the host only by ``read``,
    which also runs the NaN check.

    The step never reads the device: the trainer reads every ``LOG_EVERY`` steps and at the end
    of the epoch, in one transfer, so a GPU's host can run ahead. A non-finite step makes the
    running sum non-finite for good, so checking at each read finds every one, and the error
    names the steps since the previous read. float64 sums of the float32 losses are the same
    additions, in the same order, as Python-float sums."""

    def __init__(self, device: torch.device, epoch: int, global_step: int, kept_in: str):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, CE
        self.epoch, self.kept_in = epoch, kept_in
        self.unchecked = (0, global_step)  # first (step, global step) not yet checked
        self.steps = 0

    def add(self, loss: torch.Tensor, ce: torch.Tensor) -> None:
        """One step's (detached) loss and CE."""
        self.sums += torch.stack([loss, ce])  # float32 into float64: exact
        self.steps += 1

    def read(self, last: tuple[int, int], *scalars: torch.Tensor) -> list[float]:
        """[loss sum, CE sum, *scalars] as Python floats. Raises if the loss went non-finite,
        naming the steps from the previous read to ``last``, the (step, global step) just
        taken."""
        vals = torch.cat([self.sums, *(s.detach().double().reshape(1) for s in scalars)])
        vals = vals.tolist()
        if not math.isfinite(vals[0]):
            (s0, g0), (s1, g1) = self.unchecked, last
            raise TrainingError(
                f"loss became {vals[0]} in epoch {self.epoch + 1}, steps {s0}-{s1} (global "
                f"steps {g0}-{g1}); the last good checkpoint is kept in {self.kept_in}; lower "
                "train.lr or |selectivity.alpha|, or set train.grad_clip")
        self.unchecked = (last[0] + 1, last[1] + 1)
        return vals


class NullSink:
    # The epoch records written so far (RunSink: rank 0's metrics.jsonl); None: not kept.
    records: list[dict] | None = None

    def scalar(self, tag, value, step): ...
    def scalars(self, values: dict, step): ...
    def histogram(self, tag, values, step): ...
    def epoch(self, record: dict): ...
    def hparams(self, hparams: dict, metric_tags: list[str]): ...
    def layout(self, layout: dict): ...
    def summary(self, summary: dict): ...
    def image(self, tag, png_path, step): ...
    def flush(self): ...
    def close(self): ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def evaluation(self, split: str, ev: dict, epoch: int) -> None:
        """An evaluation's numbers (``Trainer.evaluate``): ``<split>/acc``; with SI
        ``<split>/si_mean``, ``<split>/si/<layer>`` and the fraction of dead units
        ``<split>/dead/<layer>``, and for test the per-unit SI
        histograms ``test/si_hist/<layer>``."""
        self.scalar(f"{split}/acc", ev["acc"], epoch)
        if "si" not in ev:
            return
        self.scalar(f"{split}/si_mean", ev["si"], epoch)
        for layer, v in ev["si_per_layer"].items():
            self.scalar(f"{split}/si/{layer}", v, epoch)
        for layer, v in ev.get("dead_per_layer", {}).items():
            self.scalar(f"{split}/dead/{layer}", v, epoch)
        if split == "test":
            for layer, units in ev["si_units"].items():
                self.histogram(f"test/si_hist/{layer}", units, epoch)

    def hparam_metrics(self, best: dict, epoch: int) -> None:
        """The HParams tab's metrics after every epoch: the best epoch's numbers so far (what
        summary.json will hold) and the epochs run, flushed at once, so a run that ASHA stops
        or that fails later is listed with them."""
        values = {"hparam/val_acc": best.get("val_acc"), "hparam/test_acc": best.get("test_acc"),
                  "hparam/test_si": best.get("test_si"), "hparam/epochs": epoch + 1}
        self.scalars({k: v for k, v in values.items() if v is not None}, epoch)
        self.flush()


def wait_to_sort_last(logdir: str) -> None:
    """Return once an event file created now in ``logdir`` sorts after every one there.

    TensorBoard reads a folder's event files in name order, and the newer of two points at
    one step wins (a resumed run's purge_step, an analysis rerun's headline). The names are
    ``events.out.tfevents.<seconds>.<host>.<pid>.<writer count>...``: within one second, in
    one process, the count decides, and 10 sorts before 9. So wait, at most a second, until
    the clock passes the newest file's second."""
    try:
        names = os.listdir(logdir)
    except OSError:  # no folder yet: nothing to sort after
        return
    parts = [n.split(".", 4) for n in names if n.startswith("events.out.tfevents.")]
    stamps = [int(p[3]) for p in parts if len(p) > 4 and p[3].isdigit()]
    if stamps:
        while int(time.time()) <= max(stamps):
            time.sleep(0.05)


class RunSink(NullSink):
    def __init__(self, run_dir: str, *, tensorboard: bool = True, resume_epoch: int | None = None,
                 resume_step: int | None = None, history: list[dict] | None = None,
                 tb_subdir: str = "tb", epochs: int | None = None):
        """``history``: on resume, the checkpoint's copy of every epoch record up to
        ``resume_epoch``, from which a missing, torn or short metrics.jsonl is rebuilt.
        ``tb_subdir``: where in ``run_dir`` the TensorBoard events go (the sweep report's
        figures use the folder itself). ``epochs``: the run's epoch count; with it, each
        ``epoch`` record is also printed as one console line."""
        self.run_dir = run_dir
        self.epochs = epochs
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = os.path.join(run_dir, "metrics.jsonl")
        self.records: list[dict] = []  # what metrics.jsonl holds, in strict-JSON form
        if resume_epoch is not None:
            self._truncate_jsonl(resume_epoch, history)
        elif os.path.exists(self.jsonl):
            os.unlink(self.jsonl)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events logged after the checkpoint we resume from, so a
            # resumed run's curves do not double back on themselves.
            logdir = os.path.normpath(os.path.join(run_dir, tb_subdir))
            wait_to_sort_last(logdir)
            self.tb = SummaryWriter(logdir, purge_step=resume_step)

    def _truncate_jsonl(self, last_epoch: int, history: list[dict] | None = None) -> None:
        """Keep the records of epochs 0..last_epoch (the checkpoint's), drop later ones.

        A torn last line is dropped; missing records are rebuilt from ``history`` and said
        so; without a history (checkpoints of older versions) a gap is refused, because
        resuming would leave the run with silently missing epochs."""
        records, torn = read_records(self.jsonl)
        keep = [r for r in records if r["epoch"] <= last_epoch]
        want = list(range(last_epoch + 1))
        name = os.path.basename(self.jsonl)
        if history is not None and [r["epoch"] for r in history] == want:
            if [strict_json(r) for r in keep] != history:
                got = {r["epoch"] for r in keep}
                missing = [e + 1 for e in want if e not in got]
                what = f"epochs {_span(missing)} were missing" if missing else \
                    "its records differed"
                # A record that is there but differs from the checkpoint's copy was edited
                # (by hand, or by a tool): keep that file beside the rebuilt one.
                edited = [r for r in keep if strict_json(r) != history[r["epoch"]]]
                kept = ""
                if edited:
                    copy = f"{self.jsonl}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                    shutil.copy2(self.jsonl, copy)
                    kept = f"; the replaced file is kept as {os.path.basename(copy)}"
                print(f"seltrain: rebuilt {self.jsonl} from checkpoints/last.pt ({what}"
                      f"{'; a torn last line was dropped' if torn else ''}{kept})",
                      file=sys.stderr, flush=True)
            keep = history
        else:
            if [r["epoch"] for r in keep] != want:
                got = [r["epoch"] + 1 for r in keep]
                raise CheckpointError(
                    f"{self.jsonl} holds epochs [{_span(got) or 'none'}] but checkpoints/last.pt "
                    f"is after epoch {last_epoch + 1} and carries no copy to rebuild the file "
                    f"from; restore {name}, or move the run folder away and train again")
            if torn:
                print(f"seltrain: dropped a torn last line of {self.jsonl} (a crash mid-write)",
                      file=sys.stderr, flush=True)
            keep = [strict_json(r) for r in keep]
        if keep != records or torn or not os.path.exists(self.jsonl):
            _write_records(self.jsonl, keep)
        self.records = list(keep)

    def scalar(self, tag, value, step):
        if self.tb is not None:
            self.tb.add_scalar(tag, float(value), step)

    def scalars(self, values: dict, step):
        for k, v in values.items():
            self.scalar(k, v, step)

    def histogram(self, tag, values, step):
        if self.tb is not None:
            self.tb.add_histogram(tag, np.asarray(values), step)

    def image(self, tag, png_path, step):
        if self.tb is None:
            return
        from PIL import Image

        img = np.asarray(Image.open(png_path).convert("RGB"))
        self.tb.add_image(tag, img, step, dataformats="HWC")

    def epoch(self, record: dict):
        rec = strict_json(record)
        try:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(rec, allow_nan=False) + "\n")
        except OSError as e:
            if is_disk_full(e):  # a torn line may be left: --resume repairs it
                raise TrainingError(no_space(self.jsonl, "metrics.jsonl") + "; the last "
                                    "checkpoint is kept, continue with --resume") from None
            raise
        self.records.append(rec)
        if self.epochs is not None:
            val, test = ("-" if record[k] is None else f"{record[k]:.4f}"
                         for k in ("val_acc", "test_acc"))
            print(f"epoch {record['epoch'] + 1}/{self.epochs} loss {record['train_loss']:.4f} "
                  f"val_acc {val} test_acc {test} "
                  f"test_si {record.get('test_si', float('nan')):.4f} "
                  f"{record['images_per_s']:.0f} img/s", flush=True)

    def hparams(self, hparams: dict, metric_tags: list[str]):
        """List this run in TensorBoard's HParams tab from its start: ``hparams`` (key ->
        value) and the scalar tags that hold its metrics, which the trainer writes every epoch
        (``scalars``), so a run stopped early (ASHA) or failed shows its last values.

        The experiment and session-start summaries go into the run's own event folder (next
        to its scalars), as ``add_hparams(run_name=".")`` would put them, but without the
        metric values that add_hparams writes only once, at the end. TensorBoard keeps the
        first of each, so a resumed run writing them again changes nothing."""
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                 for k, v in hparams.items()}
        experiment, session_start, _ = hparams_summaries(clean, dict.fromkeys(metric_tags, 0.0))
        writer = self.tb._get_file_writer()  # SummaryWriter's own path for raw Summary protos
        writer.add_summary(experiment)
        writer.add_summary(session_start)
        self._hparams_written = True

    def layout(self, layout: dict):
        """The run's custom-scalars layout ({category: {chart: ["Multiline", [tag regexes]]}},
        ``add_custom_scalars``): the charts TensorBoard's Custom Scalars tab opens on."""
        if self.tb is not None:
            self.tb.add_custom_scalars(layout)

    def summary(self, summary: dict):
        with atomic_write(os.path.join(self.run_dir, "summary.json")) as f:
            json.dump(summary, f, indent=2)
        if self.tb is not None and getattr(self, "_hparams_written", False):
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            # Session end (status: success) marks the run as finished in the HParams tab.
            self.tb._get_file_writer().add_summary(hparams_summaries({}, {})[2])

    def flush(self):
        if self.tb is not None:
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _span(epochs: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    out, i = [], 0
    while i < len(epochs):
        j = i
        while j + 1 < len(epochs) and epochs[j + 1] == epochs[j] + 1:
            j += 1
        out.append(str(epochs[i]) if i == j else f"{epochs[i]}-{epochs[j]}")
        i = j + 1
    return ", ".join(out)


# --------------------------------------------------------------------------- a run's records

def open_run_sink(run_dir: str, cfg, *, resume_epoch: int | None, resume_step: int | None,
                  history: list | None, hparam_keys, metrics: list[str],
                  layout: dict | None) -> RunSink:
    """A run's sink: its resolved recipe written beside it (``config.yaml``, atomic: `seltrain
    report` reads it at any time), its HParams entry (``hparam_keys`` of the recipe against
    ``metrics``) and its TensorBoard custom-scalars ``layout``."""
    from seltrain.config import flat_keys

    with atomic_write(os.path.join(run_dir, "config.yaml")) as f:
        f.write(cfg.to_yaml())
    sink = RunSink(run_dir, tensorboard=cfg.run.tensorboard, resume_epoch=resume_epoch,
                   resume_step=resume_step, history=history, epochs=cfg.train.epochs)
    flat = flat_keys(cfg.to_dict())
    sink.hparams({k: flat.get(k) for k in hparam_keys}, list(metrics))
    sink.layout(layout)
    return sink


def run_summary(cfg, best: dict, throughput: list[float], world_size: int,
                run_dir: str) -> dict:
    """summary.json: the recipe's headline keys, the best epoch's record and the throughput."""
    from seltrain.alpha_schedule import describe

    # The first epoch carries one-off costs (JIT, caches); report the rest when there is one.
    steady = throughput[1:] or throughput
    return {"alpha": cfg.selectivity.alpha,
            "alpha_schedule": describe(cfg.selectivity.alpha_schedule, cfg.selectivity.alpha),
            "seed": cfg.train.seed, "arch": cfg.model.arch,
            "dataset": cfg.data.dataset, "epochs": cfg.train.epochs,
            "best_epoch": best.get("epoch"), "val_acc": best.get("val_acc"),
            "test_acc": best.get("test_acc"), "test_si": best.get("test_si"),
            "test_si_per_layer": best.get("test_si_per_layer"),
            "test_dead_per_layer": best.get("test_dead_per_layer"),
            "images_per_s": float(np.mean(steady)) if steady else None,
            "world_size": world_size, "engine": cfg.train.engine,
            "run_dir": os.path.abspath(run_dir)}
