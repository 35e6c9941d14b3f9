"""Loaders for the torch path: batches of uint8 images [B, C, H, W] and int64 labels.

Three kinds, one contract (``len()``, ``set_epoch()``, ``num_samples``, and which samples each
batch holds, all from their base ``ShardedLoader``):
- ``ArrayLoader`` for datasets that fit in memory (Fashion-MNIST, CIFAR, synthetic). The whole
  split is one uint8 tensor; batches are gathered by index and augmented *as a batch* (pad,
  random crop, flip) with a generator seeded by (seed, epoch). No worker processes: on a
  2-core box the vectorised crop is faster than per-image PIL work, and it is bitwise
  reproducible, which resume equivalence relies on.
- ``DeviceArrayLoader``: the same datasets held in device memory (``data.on_device``); the
  same batches as ``ArrayLoader``, bit for bit, gathered and augmented on the device.
- ``FileLoader`` for image folders (Tiny ImageNet, ImageNet): a torch DataLoader decoding
  with PIL in persistent workers, torchvision transforms seeded per (epoch, sample).

Normalisation, channels_last and dtype happen on the device (``DevicePreprocess``), as in
ffcv-imagenet: the loader ships compact uint8. When CUDA is present every loader ships pinned
host memory, so the host-to-device copy is truly asynchronous (from pageable memory a
``non_blocking`` copy still makes the host wait for the GPU), and ``DevicePreprocess.batches``
copies on a side stream that overlaps compute.

Sharding (``RankSharding``): training takes each *global* batch of ``batch_size * world``
samples from one seeded permutation and gives rank r the r-th slice, so G ranks together see
exactly the batch one process would (the basis of the global-SI equivalence). Evaluation splits
the index list into contiguous chunks, one per rank, with no padding and no repeats, so
dataset-level numbers gathered across ranks equal the single-process ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from seltrain.data.sources import ArraySplit, DatasetInfo, FileSplit, open_image


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    g = torch.Generator()
    # Distinct, reproducible streams per (seed, epoch, purpose).
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2 ** 63))
    return g


@dataclass
class RankSharding:
    rank: int = 0
    world: int = 1

    def train_batches(self, indices: np.ndarray, batch_size: int, gen: torch.Generator,
                      drop_last: bool = True) -> list[np.ndarray]:
        """This rank's slices of the global batches of one shuffled epoch."""
        order = indices[torch.randperm(len(indices), generator=gen).numpy()]
        gb = batch_size * self.world
        n_full = len(order) // gb
        out = []
        for i in range(n_full):
            g = order[i * gb:(i + 1) * gb]
            out.append(g[self.rank * batch_size:(self.rank + 1) * batch_size])
        # A last partial global batch is kept only if every rank gets part of it: DDP needs
        # the same number of steps on every rank or its gradient all-reduce hangs.
        if not drop_last and len(order) - n_full * gb >= self.world:
            out.append(np.array_split(order[n_full * gb:], self.world)[self.rank])
        return out

    def eval_indices(self, indices: np.ndarray) -> np.ndarray:
        """A contiguous, non-overlapping chunk per rank; together they cover every index once."""
        return np.array_split(indices, self.world)[self.rank]


def _batched(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


class ShardedLoader:
    """What both torch-path loaders share: the rank's batches of ``indices`` for the current
    epoch (``RankSharding``'s global-batch slices when training, a contiguous chunk when
    evaluating), ``set_epoch``, ``len()`` and ``num_samples``. Subclasses set ``indices``,
    ``batch_size``, ``train``, ``sharding``, ``seed`` and ``drop_last`` through this
    ``__init__``, and yield the batches in ``__iter__``."""

    def __init__(self, indices: np.ndarray, batch_size: int, train: bool,
                 sharding: RankSharding, seed: int, drop_last: bool | None):
        self.indices = np.asarray(indices)
        self.batch_size, self.train, self.sharding, self.seed = batch_size, train, sharding, seed
        self.drop_last = train if drop_last is None else drop_last  # train: full batches only
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        if self.train:
            gen = epoch_generator(self.seed, self.epoch)
            return self.sharding.train_batches(self.indices, self.batch_size, gen,
                                               self.drop_last)
        return _batched(self.sharding.eval_indices(self.indices), self.batch_size)

    def __len__(self) -> int:
        return len(self._batches())

    @property
    def num_samples(self) -> int:
        return len(self.indices)


def _draw_augment(b: int, pad: int, flip: bool, gen: torch.Generator
                  ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """One batch's crop offsets (rows, columns) and flip mask, drawn from ``gen`` in this
    order; ``DeviceArrayLoader`` draws an epoch's in the same order, hence the same numbers."""
    oy = ox = mask = None
    if pad:
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
    return oy, ox, mask


def _apply_augment(x: Tensor, pad: int, oy: Tensor | None, ox: Tensor | None,
                   mask: Tensor | None) -> Tensor:
    """Per-sample random crop after zero padding, and horizontal flip, of a uint8 batch, as
    gathers on the batch's own device (integer copies: the same bytes on any device)."""
    b, c, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = (oy[:, None] + ar_h)[:, None, :, None].expand(b, c, h, w + 2 * pad)
        x = xp.gather(2, rows)
        cols = (ox[:, None] + ar_w)[:, None, None, :].expand(b, c, h, w)
        x = x.gather(3, cols)
    if mask is not None:
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def _pad_crop_flip(x: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """Per-sample random crop after zero padding, and horizontal flip, for a uint8 batch."""
    return _apply_augment(x, pad, *_draw_augment(x.shape[0], pad, flip, gen))


# Standard augmentations per family: CIFAR-style pad-4 crop + flip (He et al. 2016); the
# 28 px Fashion-MNIST images get a 2 px pad (same 1/7 relative shift as 4 px at 32).
ARRAY_AUGMENT = {"cifar": (4, True), "mnist": (2, True)}


class ArrayLoader(ShardedLoader):
    def __init__(self, split: ArraySplit, indices: np.ndarray, batch_size: int, *,
                 train: bool, info: DatasetInfo, sharding: RankSharding, seed: int = 0,
                 augment: bool = True, drop_last: bool | None = None,
                 pin_memory: bool | None = None):
        # NHWC uint8 -> NCHW once; contiguous so gathers stay cheap.
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2)\
            .contiguous()
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
        super().__init__(indices, batch_size, train, sharding, seed, drop_last)
        self.augment = ARRAY_AUGMENT.get(info.family, (0, False)) if (train and augment) \
            else (0, False)
        # Pinned batches when CUDA is present (module docstring); each batch is a fresh block
        # of torch's pinned-memory cache, which is not reused before its copy has completed.
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    def __iter__(self):
        gen = epoch_generator(self.seed, self.epoch, salt=1)
        pad, flip = self.augment
        pin = self.pin_memory
        for idx in self._batches():
            t = torch.from_numpy(idx)
            if pad or flip:
                x = _pad_crop_flip(self.images.index_select(0, t), pad, flip, gen)
                x = x.pin_memory() if pin else x
            else:  # gathered straight into pinned memory
                x = torch.index_select(self.images, 0, t,
                                       out=_empty_like_batch(self.images, len(t), pin))
            yield x, torch.index_select(self.labels, 0, t,
                                        out=_empty_like_batch(self.labels, len(t), pin))


def _empty_like_batch(src: Tensor, n: int, pin: bool) -> Tensor:
    return torch.empty((n, *src.shape[1:]), dtype=src.dtype, pin_memory=pin)


class DeviceArrayLoader(ShardedLoader):
    """``ArrayLoader``'s batches, bit for bit, from a split held in device memory
    (``data.on_device``): the uint8 images live on the device once, and each step is a
    gather, a crop, a flip and (in ``DevicePreprocess``) a normalisation there, as batched
    tensor ops, with no host work and no host-to-device copy (airbench keeps CIFAR-10 on the
    GPU this way).

    What the host still does, once per epoch: the shuffle (``RankSharding``, the same seeded
    permutation) and the augmentation's random numbers, drawn from the same generator in the
    same order as ``ArrayLoader`` draws them batch by batch, then sent to the device in one
    copy each. Same seed, same batches as the host path.

    ``images``/``labels``: the split already on the device, [N, C, H, W] uint8 and [N] int64,
    shared by the loaders of one split (train and val are carves of one)."""

    def __init__(self, images: Tensor, labels: Tensor, indices: np.ndarray, batch_size: int,
                 *, train: bool, info: DatasetInfo, sharding: RankSharding, seed: int = 0,
                 augment: bool = True, drop_last: bool | None = None):
        self.images, self.labels = images, labels
        self.device = images.device
        super().__init__(indices, batch_size, train, sharding, seed, drop_last)
        self.augment = ARRAY_AUGMENT.get(info.family, (0, False)) if (train and augment) \
            else (0, False)
        self._eval_batches: list[Tensor] | None = None  # fixed: made once

    def _epoch(self) -> list[tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]]:
        """This epoch's (indices, rows, columns, flips) per batch, on the device."""
        batches = self._batches()
        if not batches:
            return []
        if not self.train:
            if self._eval_batches is None:
                self._eval_batches = [torch.from_numpy(b).to(self.device) for b in batches]
            return [(i, None, None, None) for i in self._eval_batches]
        pad, flip = self.augment
        gen = epoch_generator(self.seed, self.epoch, salt=1)
        draws = [_draw_augment(len(b), pad, flip, gen) for b in batches]
        # Training batches are full (drop_last) except a last one shared out over the ranks:
        # one copy per field for the full ones, one more for such a tail.
        idx = [torch.from_numpy(b) for b in batches]
        out: list = []
        full = sum(1 for i in idx if len(i) == len(idx[0]))
        for lo, hi in ((0, full), (full, len(idx))):
            if lo == hi:
                continue
            cols = [torch.stack(idx[lo:hi])] + [
                None if draws[lo][k] is None else torch.stack([d[k] for d in draws[lo:hi]])
                for k in range(3)]
            cols = [None if c is None else c.to(self.device) for c in cols]
            out += [tuple(None if c is None else c[j] for c in cols) for j in range(hi - lo)]
        return out

    def __iter__(self):
        pad = self.augment[0]
        for idx, oy, ox, mask in self._epoch():
            x = self.images.index_select(0, idx)
            if pad or mask is not None:
                x = _apply_augment(x, pad, oy, ox, mask)
            yield x, self.labels.index_select(0, idx)


# Of the device's free memory, the share the uint8 train and test sets may take for
# data.on_device=auto: the rest stays for the model, its activations and other trials
# sharing the GPU (Tune's fractional GPUs).
ON_DEVICE_SHARE = 0.25


def on_device_wanted(setting, device: torch.device, nbytes: int) -> bool:
    """Whether to hold the splits (``nbytes`` together) in ``device``'s memory:
    ``data.on_device`` true or false as given; auto: on a CUDA device whose free memory is at
    least 1 / ON_DEVICE_SHARE times that."""
    if setting != "auto":
        return bool(setting)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= ON_DEVICE_SHARE * free


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch (``FileLoader``)."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2 ** 63)


class _FileDataset(torch.utils.data.Dataset):
    """Decodes and augments one image; keys are (index, epoch) pairs.

    Each sample's augmentation is seeded from (seed, epoch, index) (``sample_seed``), not from
    a worker's RNG stream: with persistent workers a worker's stream would run on across
    epochs, so epoch e's crops would depend on every earlier epoch (a resumed run would see
    other crops) and on which worker got which batch (``data.num_workers``).
    """

    def __init__(self, split: FileSplit, transform, channels: int, seed: int):
        self.paths, self.labels = split.paths, np.asarray(split.labels, dtype=np.int64)
        self.transform = transform
        self.mode = "L" if channels == 1 else "RGB"
        self.seed = seed

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        i, epoch = key
        img = open_image(self.paths[i], self.mode)
        # torchvision's transforms draw from torch's global RNG; fork it so that a loader
        # without workers (num_workers=0, in the training process) leaves the caller's as is.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            x = self.transform(img)
        return x, int(self.labels[i])


class _EpochBatches(torch.utils.data.Sampler):
    """The batch sampler of a persistent DataLoader: each pass yields the loader's current
    epoch's batches as (index, epoch) keys."""

    def __init__(self, loader: "FileLoader"):
        self.loader = loader

    def __iter__(self):
        epoch = self.loader.epoch
        for b in self.loader._batches():
            yield [(int(i), epoch) for i in b]

    def __len__(self):
        return len(self.loader)


def file_transforms(size: int, train: bool, augment: bool, resize: int | None = None):
    """ImageNet-family transforms, producing uint8 CHW tensors. ``resize``: the shorter side
    before the evaluation centre crop (default: ``size`` / 0.875 above 96 px, else ``size``),
    for weights trained with another ratio (torchvision's IMAGENET1K_V2: 232 for 224)."""
    from torchvision.transforms import v2

    if train and augment:
        # Small images lose too much at scale 0.08 (ImageNet's default): 64 px Tiny ImageNet
        # recipes keep at least a quarter of the image.
        scale = (0.08, 1.0) if size > 96 else (0.25, 1.0)
        ops = [v2.RandomResizedCrop(size, scale=scale, antialias=True),
               v2.RandomHorizontalFlip()]
    else:
        # The usual 0.875 centre-crop ratio for ImageNet resolutions; small native-size
        # images (Tiny ImageNet at 64) are used whole.
        ratio = 0.875 if size > 96 else 1.0
        ops = [v2.Resize(resize or round(size / ratio), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.PILToTensor(), *ops])


class FileLoader(ShardedLoader):
    """Image folders through a torch DataLoader whose workers persist across epochs (starting
    ImageNet-sized worker pools every epoch and split costs seconds each time); each sample's
    augmentation is seeded by (seed, epoch, index), so any epoch is reproduced exactly by a
    fresh loader set to it (resumption) and by any ``num_workers``."""

    def __init__(self, split: FileSplit, indices: np.ndarray, batch_size: int, *, train: bool,
                 info: DatasetInfo, sharding: RankSharding, size: int, seed: int = 0,
                 augment: bool = True, num_workers: int = 2, drop_last: bool | None = None,
                 resize: int | None = None):
        self.dataset = _FileDataset(split, file_transforms(size, train, augment, resize),
                                    info.channels, seed)
        super().__init__(indices, batch_size, train, sharding, seed, drop_last)
        self.num_workers = num_workers
        self._loader = None  # made on first use, kept (with its workers) for every epoch

    def __iter__(self):
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=_EpochBatches(self), num_workers=self.num_workers,
                generator=epoch_generator(self.seed, 0, salt=2),
                persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())
        return iter(self._loader)


class DevicePreprocess:
    """uint8 batch -> normalised float on the device (optionally channels_last).

    ``batches(loader)`` is how the trainer draws batches: ready for the model, and owned by
    the caller. A loader may lend its own host buffers (``reuses_buffers``: FFCV with
    ``borrow=True``, whose buffers are pinned when CUDA is present and rewritten by its CPU
    threads as soon as the next batch is drawn; FFCV's CUDA events order GPU work only).
    On CUDA each batch is copied on a side stream, which overlaps the copy with compute, and
    before the next batch is drawn the host waits for that copy alone (not for compute), so
    no asynchronous copy can read a buffer being rewritten. On the CPU the normalisation makes
    a new tensor, and a batch that would still alias the loader's buffer is copied.
    """

    def __init__(self, info: DatasetInfo, device: torch.device, channels_last: bool = False):
        self.device = torch.device(device)
        self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Holds this object's batch copies and nothing else: waiting for it waits for them.
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" \
            else None

    def to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._copy_stream is None or x.device.type != "cpu":
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            xd = x.to(self.device, non_blocking=True)
            yd = y.to(self.device, non_blocking=True)
        compute.wait_stream(self._copy_stream)
        # Allocated on the copy stream, used on the compute stream: the caching allocator
        # must not hand the memory out again before the compute stream is done with it.
        xd.record_stream(compute)
        yd.record_stream(compute)
        return xd, yd

    def release(self) -> None:
        """Wait until the last batch's host buffers have been read by its copy."""
        if self._copy_stream is not None:
            self._copy_stream.synchronize()

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x, y = self.to_device(x, y)
        if x.dtype == torch.uint8:
            x = (x.float() - self.mean) / self.std
        x = x.contiguous(memory_format=self.memory_format)
        return x, y

    def batches(self, loader, limit: int | None = None, *, max_images: int | None = None):
        """(x, y) ready for the model from ``loader``: at most ``limit`` batches and at most
        ``max_images`` samples, the last batch cut short (no more are drawn); see the class
        docstring for lent buffers."""
        lends = getattr(loader, "reuses_buffers", False)
        it = iter(loader)
        n = seen = 0
        try:
            while (limit is None or n < limit) and (max_images is None or seen < max_images):
                try:
                    xb, yb = next(it)
                except StopIteration:
                    return
                if max_images is not None and seen + len(yb) > max_images:
                    xb, yb = xb[:max_images - seen], yb[:max_images - seen]
                seen += len(yb)
                x, y = self(xb, yb)
                if lends:
                    if _shares_memory(x, xb):  # e.g. a float batch on the CPU
                        x = x.clone()
                    if _shares_memory(y, yb):
                        y = y.clone()
                del xb, yb
                yield x, y
                n += 1
                if lends:
                    self.release()  # before the loader may rewrite the buffers just used
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # stops FFCV's thread / DataLoader workers' prefetch for this pass


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and \
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def val_count(val_size: int | float, n: int) -> int:
    return int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
