"""The FFCV pipeline: stream ``.beton`` files (``seltrain data write``) into training.

``FFCVSource(cfg)`` is the recipe's checked files, from which ``seltrain.data.build_data`` and
``build_eval_loader`` make loaders as from the torch path's splits. Its loaders keep the torch
loaders' contract: ``len()``, ``set_epoch()``, ``num_samples``, and batches of (uint8
[B, C, H, W], int64 [B]) that the caller owns. Normalisation, channels_last
and bf16 happen on the device, in ``DevicePreprocess`` and autocast, as for the torch path.

Pipelines (decode, then augment, on CPU threads compiled by numba):
- train, ImageNet family: random-resized-crop (scale as the torch path) + flip;
- train, CIFAR / MNIST family: pad-and-random-crop (``RandomTranslate``, 4 px / 2 px) + flip;
- eval: centre crop (ImageNet family, 0.875 above 96 px, whole image below) or the image as is.

Sharding follows ``RankSharding``, exactly as the torch path:
- training with ``order: random`` draws each epoch's permutation from the same seeded generator
  as the torch loaders and gives rank r the r-th slice of every global batch, so G ranks
  together see the global batch one process would (the global-SI equivalence), and FFCV and
  torch visit the same samples in the same batches. FFCV's own ``distributed=True`` is not
  used: it pads ranks with repeated samples and needs a process group to build a loader.
- training with ``order: quasi_random`` (page-local shuffling for datasets bigger than RAM,
  ``os_cache: false``): each rank shuffles its own fixed, equal-sized strided share.
- evaluation reads a contiguous chunk per rank through the Loader's ``indices``, sequentially,
  with no padding and no drop: every sample is seen exactly once across ranks.

FFCV reuses its batch buffers: a batch's buffer is rewritten once the consumer draws the next
batch. By default every batch is copied (one memcpy) before it is handed out, so callers may
keep batches. ``borrow=True`` hands out FFCV's buffers themselves (``reuses_buffers``), valid
until the next batch is drawn; the trainer asks for that and draws through
``DevicePreprocess.batches``, which finishes with each batch before drawing the next (the
float conversion on the CPU; on a GPU a host-to-device copy that has *completed*, see below),
because the copy on the consuming thread cost ~25% of the loader's throughput at 64 px on 2
cores. Batches are uint8 [B, C, H, W] in channels_last memory (FFCV decodes NHWC);
``DevicePreprocess`` lays them out as the recipe asks on the device.

Why "completed" (read in ffcv 1.0.2's source): when CUDA is present FFCV's buffers are pinned.
``Graph.allocate_memory`` (ffcv/pipeline/graph.py:356-373) allocates every buffer through
``allocate_query`` (ffcv/pipeline/allocation_query.py:17-42), which calls ``pin_memory()`` on it
(lines 29 and 38) and swallows the failure only when there is no CUDA. So
``.to(device, non_blocking=True)`` returns before the copy has read the buffer. The decode
thread fills ``batches_ahead + 2`` = 5 slots in turn (ffcv/loader/epoch_iterator.py:62-68, 81-84)
through a queue of ``batches_ahead`` = 3 (line 43; ffcv/loader/loader.py:102), so it writes
batch c+4 into batch c-1's slot as soon as batch c is drawn, and the CUDA event it waits on
before reusing a slot (epoch_iterator.py:96-108, 127-129) orders GPU work only, not its own CPU
writes. A consumer that never syncs per batch (evaluation; training once ``loss.item()`` left
the step) would copy pixels of a later batch. FFCV's own ``ToDevice`` in the pipeline would
overlap the copy too, but it copies on the slot's stream behind that same event and the decode
thread's later CPU writes into the slot are not ordered after that copy either; so the copy
stays in ``DevicePreprocess``, on its own stream, with the host waiting for it (for the copy
alone, not for compute) before the next batch is drawn.
"""
from __future__ import annotations

import json
import os

import numpy as np

from seltrain.data.loaders import ARRAY_AUGMENT, RankSharding, val_count
from seltrain.data.sources import DatasetInfo
from seltrain.errors import ConfigError, DataError

SIDECAR_FORMAT = "seltrain-beton/1"
BETON_FIELDS = ("image", "label")
FFCV_INSTALL = ("pip install 'seltrain[ffcv]' (it builds against system packages: sudo apt-get "
                "install pkg-config libopencv-dev libturbojpeg0-dev)")
# Classes fixed by the dataset itself; file datasets (tinyimagenet, imagefolder) count theirs.
FIXED_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def require_ffcv() -> None:
    try:
        import importlib

        importlib.import_module("ffcv.loader")  # pulls numba and cv2, the usual missing pieces
    except ImportError as e:
        raise DataError(f"FFCV is not installed ({e}); install it with {FFCV_INSTALL}, or set "
                        f"data.loader=torch") from None


def sidecar_path(beton: str) -> str:
    return beton + ".json"


# --------------------------------------------------------------------------- checking files

def _structure_error(path: str) -> str | None:
    """Why the file is not a complete .beton (None when it is), without trusting its header."""
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType

    size = os.path.getsize(path)
    if size < HeaderType.itemsize:
        return f"is {size} bytes, shorter than an FFCV header"
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if int(header["version"]) != CURRENT_VERSION:
        return f"is not an FFCV v{CURRENT_VERSION} .beton (header version {header['version']})"
    n, nf, ptr = int(header["num_samples"]), int(header["num_fields"]), \
        int(header["alloc_table_ptr"])
    fields_end = HeaderType.itemsize + nf * FieldDescType.itemsize
    if ptr == 0:
        return "was never finalised (the write was interrupted)"
    if ptr > size or fields_end > size:
        return f"is truncated ({size} bytes; its allocation table starts at byte {ptr})"
    if (size - ptr) % ALLOC_TABLE_TYPE.itemsize:
        return f"is truncated inside its allocation table ({size} bytes)"
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=ptr)
    if len(np.unique(table["sample_id"])) != n:
        return (f"is truncated or corrupt: its allocation table covers "
                f"{len(np.unique(table['sample_id']))} of {n} samples")
    if len(table) and int((table["ptr"] + table["size"]).max()) > ptr:
        return "is corrupt: a sample's data runs past the allocation table"
    return None


def read_sidecar(path: str, role: str) -> dict:
    """Check ``path`` is a complete .beton with its sidecar; return the sidecar."""
    if not os.path.isfile(path):
        raise DataError(f"{path} does not exist ({role}); write it with `seltrain data write "
                        f"--split ... --out {path}`")
    why = _structure_error(path)
    if why:
        raise DataError(f"{path} {why}; write it again with `seltrain data write`")
    side = sidecar_path(path)
    if not os.path.isfile(side):
        raise DataError(f"{path} has no sidecar {os.path.basename(side)} (written last by "
                        f"`seltrain data write`): the write was interrupted or the file was "
                        f"made elsewhere; write it again with `seltrain data write`")
    try:
        with open(side) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{side} is unreadable ({type(e).__name__}: {e}); write {path} "
                        f"again") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise DataError(f"{side} is not a {SIDECAR_FORMAT} sidecar; write {path} again")
    size = os.path.getsize(path)
    if size != meta.get("bytes"):
        raise DataError(f"{path} is {size} bytes but was written as {meta.get('bytes')}: it "
                        f"is truncated or was replaced; write it again")
    return meta


def _check_against_recipe(cfg, path: str, meta: dict, split: str, first: dict | None) -> None:
    d = cfg.data
    if meta["dataset"] != d.dataset:
        raise DataError(f"{path} holds {meta['dataset']} but the recipe's data.dataset is "
                        f"{d.dataset}; point data.ffcv.{split} at a {d.dataset} file")
    want = FIXED_CLASSES.get(d.dataset)
    if d.dataset == "synthetic":
        want = d.synthetic.num_classes
    k = meta["num_classes"]
    if want is not None and k != want:
        raise DataError(f"{path} has {k} classes but the recipe's dataset ({d.dataset}) has "
                        f"{want}; write the file again from this recipe")
    if first is not None and k != first["meta"]["num_classes"]:
        raise DataError(f"{path} has {k} classes but {first['path']} has "
                        f"{first['meta']['num_classes']}; write all splits from one dataset")
    if meta["split"] != split:
        raise DataError(f"{path} holds the {meta['split']} split but is set as "
                        f"data.ffcv.{split}; point data.ffcv.{split} at the {split} file")
    if split in ("train", "val"):
        n = meta["source_n"]
        carve = (val_count(d.val_size, n), d.split_seed)
        if (meta["val_count"], meta["split_seed"]) != carve:
            raise DataError(f"{path} was carved with val_size={meta['val_count']}, "
                            f"split_seed={meta['split_seed']} but the recipe carves "
                            f"val_size={carve[0]}, split_seed={carve[1]} from {n} train "
                            f"samples; write it again from this recipe")


def _check_labels(path: str, meta: dict) -> None:
    """Every label in [0, num_classes), as the other sources check theirs when they open:
    one out of range would stop training mid-epoch inside the loss. FFCV keeps an IntField's
    values in the file's metadata table, so this reads no image."""
    from ffcv.reader import Reader

    reader = Reader(path)
    labels = reader.metadata[reader.metadata.dtype.names[reader.field_names.index("label")]]
    k = meta["num_classes"]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise DataError(f"{path} has label {bad} but its dataset has {k} classes (labels "
                        f"0-{k - 1}); write it again with `seltrain data write`")


def _info(meta: dict) -> DatasetInfo:
    return DatasetInfo(meta["dataset"], meta["num_classes"], meta["channels"],
                       meta["image_size"], meta["family"], tuple(meta["mean"]),
                       tuple(meta["std"]), tuple(meta["class_names"]))


# --------------------------------------------------------------------------- pipelines

def image_pipeline(family: str, size: int, train: bool, augment: bool) -> list:
    """Decoder and CPU augmentations for the image field, ending in a uint8 NCHW tensor view."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToTensor, ToTorchImage

    from seltrain.data.ffcv_extensions import RandomResizedCropFlipDecoder

    aug = train and augment
    if family == "imagenet":
        if aug:
            # Same scale ranges as the torch path (loaders.file_transforms).
            scale = (0.08, 1.0) if size > 96 else (0.25, 1.0)
            ops = [RandomResizedCropFlipDecoder((size, size), scale)]
        else:
            ops = [CenterCropRGBImageDecoder((size, size), ratio=0.875 if size > 96 else 1.0)]
    else:
        pad, flip = ARRAY_AUGMENT.get(family, (0, False)) if aug else (0, False)
        ops = [SimpleRGBImageDecoder()]
        if pad:
            ops.append(RandomTranslate(padding=pad))  # zero fill, as the torch path pads
        if flip:
            ops.append(RandomHorizontalFlip())
    # channels_last=True: a free view of FFCV's NHWC buffer; the copy out of the buffer
    # (FFCVLoader.__iter__) keeps that layout; DevicePreprocess sets the model's on the device.
    return ops + [ToTensor(), ToTorchImage(channels_last=True)]


def label_pipeline() -> list:
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import Squeeze, ToTensor

    return [IntDecoder(), ToTensor(), Squeeze(1)]


class FFCVLoader:
    """One split of a .beton for one rank, with the torch loaders' interface."""

    def __init__(self, path: str, rows: np.ndarray, batch_size: int, *, train: bool,
                 pipeline: list, sharding: RankSharding, seed: int, order: str, os_cache: bool,
                 drop_last: bool, num_workers: int, channels: int, borrow: bool = False):
        from ffcv.loader import Loader, OrderOption

        from seltrain.data.ffcv_extensions import RankBatchOrder

        self.path = path
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size, self.train, self.drop_last = batch_size, train, drop_last
        self.channels, self.borrow = channels, borrow
        self.epoch = 0
        indices = self.rows
        if not train:
            indices, ffcv_order = sharding.eval_indices(self.rows), OrderOption.SEQUENTIAL
        elif order == "random":
            ffcv_order = RankBatchOrder(sharding, seed, batch_size, drop_last)
        else:  # quasi_random: FFCV's page-aware order within this rank's equal share
            usable = self.rows[:len(self.rows) - len(self.rows) % sharding.world]
            indices, ffcv_order = usable[sharding.rank::sharding.world], OrderOption.QUASI_RANDOM
        self.loader = None
        if len(indices):  # an eval shard can be empty when ranks outnumber samples
            self.loader = Loader(path, batch_size=batch_size, num_workers=num_workers,
                                 os_cache=os_cache, order=ffcv_order, distributed=False,
                                 seed=seed, indices=indices, drop_last=drop_last,
                                 pipelines={"image": pipeline, "label": label_pipeline()})

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.loader is not None:
            self.loader.next_epoch = epoch  # FFCV draws the order of epoch ``next_epoch``

    @property
    def reuses_buffers(self) -> bool:
        """Batches are FFCV's own buffers, rewritten once the next batch is drawn."""
        return self.borrow

    def __len__(self) -> int:
        return len(self.loader) if self.loader is not None else 0

    @property
    def num_samples(self) -> int:
        return len(self.rows)

    def __iter__(self):
        if self.loader is None:
            return
        epoch = self.epoch
        self.set_epoch(epoch)  # iterating twice without set_epoch replays the same epoch
        it = iter(self.loader)
        try:
            for x, y in it:
                if self.channels == 1:  # stored RGB-replicated; see seltrain/data/writer.py
                    x = x[:, :1]
                # The copy keeps FFCV's NHWC layout (channels_last strides): a memcpy. Making it
                # NCHW-contiguous here would be a strided permute-copy on the CPU, which cost
                # 2/3 of the loader's throughput at 64 px on 2 cores; DevicePreprocess lays the
                # batch out as the model wants on the device instead.
                yield (x, y) if self.borrow else (x.clone(), y.clone())
        finally:
            it.close()  # stop FFCV's worker thread when the consumer breaks early


# --------------------------------------------------------------------------- the source

class FFCVSource:
    """The recipe's ``data.ffcv.{train,val,test}`` files, checked against the recipe and each
    other when opened, as ``seltrain.data.open_source`` returns them for ``data.loader=ffcv``:
    the dataset's ``info``, the ``image_size`` the pipelines produce, and a loader per split
    (``train_loader``, ``eval_loader``). ``borrow``: image batches are FFCV's buffers, valid
    until the next batch is drawn (see the top)."""

    def __init__(self, cfg):
        from seltrain.data import train_val_indices

        require_ffcv()
        self.cfg = cfg
        f = cfg.data.ffcv
        if not f.train or not f.test:
            missing = "train" if not f.train else "test"
            raise ConfigError(f"data.loader is ffcv but data.ffcv.{missing} is not set; write "
                              f"the splits with `seltrain data write` and set "
                              f"data.ffcv.train/val/test")
        self.files: dict[str, tuple[str, dict]] = {}
        first = None
        for split in ("train", "val", "test"):
            path = getattr(f, split)
            if not path:
                continue
            path = os.path.abspath(os.path.expanduser(path))
            meta = read_sidecar(path, f"data.ffcv.{split}")
            _check_against_recipe(cfg, path, meta, split, first)
            _check_labels(path, meta)
            self.files[split] = (path, meta)
            first = first or {"path": path, "meta": meta}
        _, train_meta = self.files["train"]
        self.info = _info(train_meta)
        if self.info.family == "imagenet":
            self.image_size = cfg.data.image_size or self.info.image_size
        else:  # array datasets are used at their stored resolution
            from ffcv.reader import Reader

            reader = Reader(self.files["train"][0])
            field = reader.metadata.dtype.names[reader.field_names.index("image")]
            heights = reader.metadata[field]["height"]
            self.image_size = int(heights.max())
        # Train rows: the whole train carve, or the recipe's limit_train subset of it.
        self.train_rows = np.arange(train_meta["n"])
        if cfg.data.limit_train is not None:
            full = train_val_indices(_without_limit(cfg), train_meta["source_n"])[0]
            limited = train_val_indices(cfg, train_meta["source_n"])[0]
            self.train_rows = np.searchsorted(full, limited)

    def _loader(self, split: str, rows: np.ndarray, batch_size: int, train: bool,
                sharding: RankSharding, borrow: bool) -> FFCVLoader:
        f = self.cfg.data.ffcv
        return FFCVLoader(self.files[split][0], rows, batch_size, train=train,
                          pipeline=image_pipeline(self.info.family, self.image_size, train,
                                                  self.cfg.data.augment),
                          drop_last=f.drop_last_train if train else f.drop_last_eval,
                          sharding=sharding, seed=self.cfg.train.seed, order=f.order,
                          os_cache=f.os_cache, num_workers=max(1, self.cfg.data.num_workers),
                          channels=self.info.channels, borrow=borrow)

    def train_loader(self, sharding: RankSharding, batch_size: int,
                     borrow: bool = False) -> FFCVLoader:
        return self._loader("train", self.train_rows, batch_size, True, sharding, borrow)

    def eval_loader(self, split: str, sharding: RankSharding,
                    borrow: bool = False) -> FFCVLoader | None:
        """The whole ``data.ffcv.<split>`` file (the writer stored val already carved);
        None for a val the recipe has no file for."""
        if split not in self.files:
            return None
        _, meta = self.files[split]
        return self._loader(split, np.arange(meta["n"]), self.cfg.train.eval_batch_size,
                            False, sharding, borrow)


def _without_limit(cfg):
    import copy

    full = copy.deepcopy(cfg)
    full.data.limit_train = None
    return full
