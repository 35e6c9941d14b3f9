"""One metrics sink for a run: TensorBoard, metrics.jsonl and summary.json, rank 0 only.

Other ranks get a sink whose methods do nothing, so the loop never branches on rank.
"""
from __future__ import annotations

import json
import os

import numpy as np


class NullSink:
    def scalar(self, tag, value, step): ...
    def scalars(self, values: dict, step): ...
    def histogram(self, tag, values, step): ...
    def epoch(self, record: dict): ...
    def summary(self, summary: dict, hparams: dict, metrics: dict): ...
    def image(self, tag, png_path, step): ...
    def flush(self): ...
    def close(self): ...


class RunSink(NullSink):
    def __init__(self, run_dir: str, *, tensorboard: bool = True, resume_epoch: int | None = None,
                 resume_step: int | None = None):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = os.path.join(run_dir, "metrics.jsonl")
        if resume_epoch is not None:
            self._truncate_jsonl(resume_epoch)
        elif os.path.exists(self.jsonl):
            os.unlink(self.jsonl)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events logged after the checkpoint we resume from, so a
            # resumed run's curves do not double back on themselves.
            self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=resume_step)

    def _truncate_jsonl(self, last_epoch: int) -> None:
        if not os.path.exists(self.jsonl):
            return
        with open(self.jsonl) as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln)["epoch"] <= last_epoch]
        with open(self.jsonl, "w") as f:
            f.writelines(keep)

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
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")

    def summary(self, summary: dict, hparams: dict, metrics: dict):
        tmp = os.path.join(self.run_dir, ".summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, os.path.join(self.run_dir, "summary.json"))
        if self.tb is not None:
            # run_name="." keeps the hparams in this run's own event folder, so the HParams
            # dashboard lines it up with the run's scalars (and with other runs in a sweep).
            self.tb.add_hparams(hparams, metrics, run_name=".")

    def flush(self):
        if self.tb is not None:
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()
