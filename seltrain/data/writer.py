"""Write one split of a dataset to an FFCV ``.beton`` file (``seltrain data write``).

A ``.beton`` holds two fields, ``image`` (FFCV ``RGBImageField``) and ``label`` (``IntField``).
Row r of the file is sample ``rows[r]`` of the source split, where ``rows`` is:
- ``train``: the train part of the torch path's carve (``train_val_indices``), in source order;
- ``val``: the held-out part of that same carve, so FFCV and torch validate on the same samples;
- ``test``: every sample of the source test split.
``data.limit_train`` is *not* baked in: the train file holds the whole train carve and the
reader takes the subset, so one file serves every ``limit_train``.

Grayscale (Fashion-MNIST) is stored RGB-replicated: every FFCV decoder and augmentation works on
3 channels, raw storage of a 28 px image costs only 2.3 kB, and the reader hands the model
channel 0, bit-identical to the torch path's single channel.

Beside ``FILE.beton`` goes ``FILE.beton.json``, the sidecar: dataset, split, number of samples
and classes, the DatasetInfo the trainer needs (channels, family, mean/std, class names), the
carve (val count, split seed) and the byte size of the .beton. The reader checks all of it.
Both files are written under a temporary name and renamed, the sidecar last, and a stale
sidecar is removed first: a .beton without a matching sidecar is never mistaken for complete.
"""
from __future__ import annotations

import copy
import ctypes
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from seltrain.errors import DataError

# Kept light at import time (numpy only): the CLI imports this module to build its parser.

WRITE_SPLITS = ("train", "val", "test")
# raw: uint8 pixels; jpg: every image JPEG; smart: JPEG only the images bigger than
# smart_threshold bytes raw; proportion: JPEG a random compress_probability of the images
# (ffcv-imagenet's recipe for ImageNet: max_resolution 256-512, proportion 0.5, quality 90).
WRITE_MODES = ("raw", "jpg", "smart", "proportion")
# smart: images above 96x96x3 bytes raw are JPEG-compressed. CIFAR/Tiny ImageNet-sized images
# stay raw (decoding them costs more than reading them); ImageNet-sized ones are compressed.
DEFAULT_SMART_THRESHOLD = 96 * 96 * 3


@dataclass
class WriteOptions:
    write_mode: str = "raw"
    max_resolution: int | None = None
    jpeg_quality: int = 90
    compress_probability: float = 0.5
    smart_threshold: int = DEFAULT_SMART_THRESHOLD
    num_workers: int = 0            # 0: every core
    chunksize: int = 100            # samples per work item handed to a worker
    progress: bool = True

    def check(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise DataError(f"unknown write mode {self.write_mode!r}; choose one of "
                            f"{', '.join(WRITE_MODES)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise DataError(f"--jpeg-quality must be in [1, 100], got {self.jpeg_quality}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise DataError(f"--compress-probability must be in [0, 1], got "
                            f"{self.compress_probability}")
        if self.max_resolution is not None and self.max_resolution < 1:
            raise DataError(f"--max-resolution must be >= 1, got {self.max_resolution}")


class SplitSource:
    """Indexable (image HWC uint8 RGB, label) view of ``rows`` of a source split.

    FFCV's writer forks its workers, so in-memory arrays are shared copy-on-write, not pickled.
    Files are decoded with PIL, as the torch path decodes them, so raw-mode pixels are equal.
    """

    def __init__(self, split, rows: np.ndarray):
        self.split, self.rows = split, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        j = int(self.rows[i])
        label = int(self.split.labels[j])
        if hasattr(self.split, "images"):  # ArraySplit
            image = self.split.images[j]
            if image.shape[2] == 1:
                image = np.repeat(image, 3, axis=2)
            return np.ascontiguousarray(image), label
        from PIL import Image

        path = self.split.paths[j]
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB")), label
        except Exception as e:  # any decoder failure means the same fix
            raise DataError(f"cannot decode {path} ({type(e).__name__}: {e}); replace or "
                            f"remove the file") from e


def split_rows(cfg, split: str):
    """(DatasetInfo, source split, rows of it that go into the .beton, source train size)."""
    from seltrain.data import load_dataset, train_val_indices

    if split not in WRITE_SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(WRITE_SPLITS)}")
    info, source = load_dataset(cfg, "test" if split == "test" else "train")
    n = len(source.labels)
    if split == "test":
        return info, source, np.arange(n), n
    full = copy.deepcopy(cfg)
    full.data.limit_train = None  # the reader applies limit_train; see the module docstring
    train_idx, val_idx = train_val_indices(full, n)
    rows = train_idx if split == "train" else val_idx
    if not len(rows):
        raise DataError(f"the {split} split of {cfg.data.dataset} is empty (data.val_size="
                        f"{cfg.data.val_size}); set data.val_size > 0 to write a val split")
    return info, source, rows, n


def _worker(errors, job, *args):
    """FFCV's worker loop, reporting a failure as one line instead of dying silently."""
    try:
        job(*args)
    except BaseException as e:  # noqa: BLE001 - anything that kills the worker is reported
        errors.put(str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}")
        sys.exit(1)


def _make_writer(path: str, fields: dict, num_workers: int, progress: bool, label: str):
    """FFCV's DatasetWriter, with a worker-failure check and an images/s progress bar.

    Stock FFCV 1.0.2 polls a shared counter until every sample is done, so one worker dying
    (an unreadable image) hangs the write forever; this one stops and names the error.
    """
    from multiprocessing import Process, Queue, Value

    from ffcv.writer import DatasetWriter
    from ffcv.memory_allocator import MemoryAllocator
    from tqdm import tqdm

    class Writer(DatasetWriter):
        elapsed_s = 0.0

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            self.num_samples = num_samples
            self.prepare()
            work: Queue = Queue()
            for todo in queue_content:
                work.put(todo)
            for _ in range(self.num_workers):
                work.put(None)
            allocations: Queue = Queue()
            errors: Queue = Queue()
            done = Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                    allocations, *extra_worker_args)
            procs = [Process(target=_worker, args=(errors, work_fn, *args))
                     for _ in range(self.num_workers)]
            t0 = time.perf_counter()
            try:
                for p in procs:
                    p.start()
                bar = tqdm(total=num_samples, desc=f"writing {label}", unit="img",
                           disable=None if progress else True, dynamic_ncols=True)
                seen = 0
                while seen < num_samples:
                    now = done.value
                    bar.update(now - seen)
                    seen = now
                    failed = [p for p in procs if p.exitcode not in (None, 0)]
                    if failed:
                        msg = errors.get(timeout=5) if not errors.empty() else \
                            f"a writer process exited with code {failed[0].exitcode}"
                        raise DataError(f"writing {label} failed: {msg}")
                    time.sleep(0.05)
                bar.close()
                allocation_list = []
                for _ in procs:
                    allocation_list.extend(allocations.get())
                for p in procs:
                    p.join()
                self.elapsed_s = time.perf_counter() - t0
                self.finalize(allocation_list)
            finally:
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return Writer(path, fields, num_workers=num_workers)


def write_beton(cfg, split: str, out: str, opts: WriteOptions | None = None) -> dict:
    """Write ``split`` of the recipe's dataset to ``out``; returns the sidecar it wrote."""
    from seltrain.data.ffcv_pipeline import SIDECAR_FORMAT, require_ffcv, sidecar_path

    opts = opts or WriteOptions()
    opts.check()
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import worker_job_indexed_dataset

    info, source, rows, source_n = split_rows(cfg, split)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    side = sidecar_path(out)
    if os.path.exists(side):  # a stale sidecar must never vouch for a new, partial .beton
        os.remove(side)
    workers = opts.num_workers or os.cpu_count() or 1
    fields = {
        "image": RGBImageField(write_mode=opts.write_mode, max_resolution=opts.max_resolution,
                               smart_threshold=opts.smart_threshold,
                               jpeg_quality=opts.jpeg_quality,
                               compress_probability=opts.compress_probability),
        "label": IntField(),
    }
    tmp = f"{out}.tmp-{os.getpid()}"
    writer = _make_writer(tmp, fields, workers, opts.progress, os.path.basename(out))
    try:
        indices = list(enumerate(range(len(rows))))
        chunks = [indices[i:i + opts.chunksize] for i in range(0, len(indices), opts.chunksize)]
        writer._write_common(len(rows), chunks, worker_job_indexed_dataset,
                             (SplitSource(source, rows),))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    labels = np.asarray(source.labels)[rows]
    sidecar = {
        "format": SIDECAR_FORMAT,
        "dataset": info.name,
        "split": split,
        "n": int(len(rows)),
        "num_classes": int(info.num_classes),
        "channels": int(info.channels),
        "stored_channels": 3,
        "image_size": int(info.image_size),
        "family": info.family,
        "mean": list(info.mean),
        "std": list(info.std),
        "class_names": list(info.class_names),
        "label_counts": np.bincount(labels, minlength=info.num_classes).tolist(),
        # The carve: the reader refuses a train/val file carved differently from its recipe.
        "source_split": "test" if split == "test" else "train",
        "source_n": int(source_n),
        "val_count": None if split == "test" else int(source_n - len(rows)) if split == "train"
        else int(len(rows)),
        "split_seed": None if split == "test" else int(cfg.data.split_seed),
        "synthetic": (copy.deepcopy(cfg.to_dict()["data"]["synthetic"])
                      if info.name == "synthetic" else None),
        "write_mode": opts.write_mode,
        "max_resolution": opts.max_resolution,
        "jpeg_quality": opts.jpeg_quality,
        "compress_probability": opts.compress_probability,
        "smart_threshold": opts.smart_threshold,
        "num_workers": workers,
        "write_s": round(writer.elapsed_s, 3),
        "images_per_s": round(len(rows) / max(writer.elapsed_s, 1e-9), 1),
        "bytes": os.path.getsize(out),
    }
    tmp_side = f"{side}.tmp-{os.getpid()}"
    with open(tmp_side, "w") as f:
        json.dump(sidecar, f, indent=1)
    os.replace(tmp_side, side)
    return sidecar
