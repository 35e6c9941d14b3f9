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
Both files are written with ``seltrain.atomic`` (a temporary beside the file, renamed over it),
the sidecar last, and the old sidecar is removed just before the new .beton takes the name: a
.beton without a matching sidecar is never mistaken for complete, and an interrupted write
leaves an existing pair untouched. An existing file is replaced only with ``--force``. Ctrl-C,
a failed worker or a full disk stop the write within seconds and remove its temporary file;
temporaries of writers that died (SIGKILL) are removed, with a note, by the next write of the
same file, with the shared memory they held.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass

import numpy as np

from seltrain.atomic import atomic_path, atomic_write, remove_stale_temporaries
from seltrain.data.sources import open_image
from seltrain.errors import ConfigError, DataError, file_in_the_way, is_disk_full

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
        """Option values are command-line mistakes: ConfigError, exit 2."""
        if self.write_mode not in WRITE_MODES:
            raise ConfigError(f"unknown write mode {self.write_mode!r}; choose one of "
                              f"{', '.join(WRITE_MODES)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality must be in [1, 100], got {self.jpeg_quality}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ConfigError(f"--compress-probability must be in [0, 1], got "
                              f"{self.compress_probability}")
        if self.max_resolution is not None and self.max_resolution < 1:
            raise ConfigError(f"--max-resolution must be >= 1, got {self.max_resolution}")
        if self.smart_threshold < 0:
            raise ConfigError(f"--smart-threshold must be >= 0 (raw bytes of an image), got "
                              f"{self.smart_threshold}")


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
        return np.asarray(open_image(self.split.paths[j], "RGB")), label


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


def _prepare_out(out: str) -> None:
    """``out``'s folder exists (made if need be) and ``out`` is not a folder."""
    if os.path.isdir(out):
        raise DataError(f"--out {out} is a folder; give a file name, e.g. "
                        f"{os.path.join(out, 'train.beton')}")
    folder = os.path.dirname(out)
    blocker = file_in_the_way(folder)
    if blocker:
        raise DataError(f"cannot write --out {out}: {blocker} is a file, not a folder; choose "
                        "another --out")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {folder} for --out ({e.strerror}); choose another "
                        "--out") from None


def _free_shared_memory(tmp: str) -> None:
    """Before a dead writer's ``.shm`` note is removed: free the shared memory it names (see
    ``CheckedDatasetWriter``), which outlives the process in /dev/shm."""
    if not tmp.endswith(".shm"):
        return
    with open(tmp) as f:
        name = f.read().strip().lstrip("/")
    if name and "/" not in name and os.path.exists(f"/dev/shm/{name}"):
        os.remove(f"/dev/shm/{name}")


def write_beton(cfg, split: str, out: str, opts: WriteOptions | None = None, *,
                force: bool = False) -> dict:
    """Write ``split`` of the recipe's dataset to ``out``; returns the sidecar it wrote.

    An existing ``out`` is kept unless ``force``; even then it is replaced only when the new
    file is complete (an interrupted or failed write leaves it and its sidecar as they were).
    A lock beside it (``.OUT.lock``, ``seltrain.runlock``) keeps two writers of one file apart.
    """
    from seltrain.data.ffcv_pipeline import require_ffcv, sidecar_path
    from seltrain.runlock import RunLock

    opts = opts or WriteOptions()
    opts.check()
    require_ffcv()
    out = os.path.abspath(out)
    _prepare_out(out)
    lock = RunLock(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.lock"),
                   what=f"--out {out}", fix="wait for that write to end, or choose another "
                   "--out").acquire()
    try:
        if os.path.exists(out) and not force:
            raise DataError(f"{out} already exists; pass --force to replace it, or choose "
                            "another --out")
        for target in (out, sidecar_path(out)):
            remove_stale_temporaries(os.path.dirname(out), of=target,
                                     before_remove=_free_shared_memory)
        try:
            return _write(cfg, split, out, opts)
        except DataError as e:
            if "No space left on device" not in str(e):
                raise
            raise DataError(_no_space(out)) from None
        except OSError as e:
            if not is_disk_full(e):
                raise
            raise DataError(_no_space(out)) from None
    finally:
        lock.release()


def _no_space(out: str) -> str:
    return (f"no space left on {os.path.dirname(out)} while writing {os.path.basename(out)}; "
            "the partial file was removed and nothing else changed: free space there (or "
            "choose an --out with room) and run again")


def _write(cfg, split: str, out: str, opts: WriteOptions) -> dict:
    from seltrain.data.ffcv_extensions import CheckedDatasetWriter
    from seltrain.data.ffcv_pipeline import SIDECAR_FORMAT, sidecar_path
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import worker_job_indexed_dataset

    info, source, rows, source_n = split_rows(cfg, split)
    side = sidecar_path(out)
    workers = opts.num_workers or os.cpu_count() or 1
    fields = {
        "image": RGBImageField(write_mode=opts.write_mode, max_resolution=opts.max_resolution,
                               smart_threshold=opts.smart_threshold,
                               jpeg_quality=opts.jpeg_quality,
                               compress_probability=opts.compress_probability),
        "label": IntField(),
    }
    with atomic_path(out) as tmp:
        writer = CheckedDatasetWriter(tmp, fields, workers, progress=opts.progress,
                                      label=os.path.basename(out))
        indices = list(enumerate(range(len(rows))))
        chunks = [indices[i:i + opts.chunksize] for i in range(0, len(indices), opts.chunksize)]
        writer._write_common(len(rows), chunks, worker_job_indexed_dataset,
                             (SplitSource(source, rows),))
        if os.path.exists(side):  # a stale sidecar must never vouch for the new .beton
            os.remove(side)
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
    with atomic_write(side) as f:
        json.dump(sidecar, f, indent=1)
    return sidecar
