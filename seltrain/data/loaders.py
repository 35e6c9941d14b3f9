"""Loaders for the torch path: batches of uint8 images [B, C, H, W] and int64 labels.

Two kinds, one contract:
- ``ArrayLoader`` for datasets that fit in memory (Fashion-MNIST, CIFAR, synthetic). The whole
  split is one uint8 tensor; batches are gathered by index and augmented *as a batch* (pad,
  random crop, flip) with a generator seeded by (seed, epoch). No worker processes: on a
  2-core box the vectorised crop is faster than per-image PIL work, and it is bitwise
  reproducible, which resume equivalence relies on.
- ``FileLoader`` for image folders (Tiny ImageNet, ImageNet): a torch DataLoader decoding
  with PIL in workers, torchvision transforms, seeded per epoch.

Normalisation, channels_last and dtype happen on the device (``DevicePreprocess``), as in
ffcv-imagenet: the loader ships compact uint8.

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

from seltrain.data.sources import ArraySplit, DatasetInfo, FileSplit


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


def _pad_crop_flip(x: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """Per-sample random crop after zero padding, and horizontal flip, for a uint8 batch."""
    b, c, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w + 2 * pad)
        x = xp.gather(2, rows)
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
        x = x.gather(3, cols)
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


# Standard augmentations per family: CIFAR-style pad-4 crop + flip (He et al. 2016); the
# 28 px Fashion-MNIST images get a 2 px pad (same 1/7 relative shift as 4 px at 32).
ARRAY_AUGMENT = {"cifar": (4, True), "mnist": (2, True)}


class ArrayLoader:
    def __init__(self, split: ArraySplit, indices: np.ndarray, batch_size: int, *,
                 train: bool, info: DatasetInfo, sharding: RankSharding, seed: int = 0,
                 augment: bool = True, drop_last: bool | None = None):
        # NHWC uint8 -> NCHW once; contiguous so gathers stay cheap.
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2)\
            .contiguous()
        self.labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
        self.indices = np.asarray(indices)
        self.batch_size = batch_size
        self.train = train
        self.sharding = sharding
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.augment = ARRAY_AUGMENT.get(info.family, (0, False)) if (train and augment) \
            else (0, False)
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

    def __iter__(self):
        gen = epoch_generator(self.seed, self.epoch, salt=1)
        pad, flip = self.augment
        for idx in self._batches():
            t = torch.from_numpy(idx)
            x = self.images.index_select(0, t)
            if pad or flip:
                x = _pad_crop_flip(x, pad, flip, gen)
            yield x, self.labels.index_select(0, t)


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, split: FileSplit, transform, channels: int):
        self.paths, self.labels = split.paths, np.asarray(split.labels, dtype=np.int64)
        self.transform = transform
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            img = im.convert(self.mode)
        return self.transform(img), int(self.labels[i])


def file_transforms(size: int, train: bool, augment: bool):
    """ImageNet-family transforms, producing uint8 CHW tensors."""
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
        ops = [v2.Resize(round(size / ratio), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.PILToTensor(), *ops])


class FileLoader:
    def __init__(self, split: FileSplit, indices: np.ndarray, batch_size: int, *, train: bool,
                 info: DatasetInfo, sharding: RankSharding, size: int, seed: int = 0,
                 augment: bool = True, num_workers: int = 2, drop_last: bool | None = None):
        self.dataset = _FileDataset(split, file_transforms(size, train, augment), info.channels)
        self.indices = np.asarray(indices)
        self.batch_size, self.train, self.sharding, self.seed = batch_size, train, sharding, seed
        self.drop_last = train if drop_last is None else drop_last
        self.num_workers = num_workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self):
        if self.train:
            gen = epoch_generator(self.seed, self.epoch)
            return self.sharding.train_batches(self.indices, self.batch_size, gen,
                                               self.drop_last)
        return _batched(self.sharding.eval_indices(self.indices), self.batch_size)

    def __len__(self):
        return len(self._batches())

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def __iter__(self):
        batches = [b.tolist() for b in self._batches()]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers,
            generator=epoch_generator(self.seed, self.epoch, salt=2),
            persistent_workers=False, pin_memory=torch.cuda.is_available())
        yield from loader


class DevicePreprocess:
    """uint8 batch -> normalised float on the device (optionally channels_last)."""

    def __init__(self, info: DatasetInfo, device: torch.device, channels_last: bool = False):
        self.device = device
        self.mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(info.std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = (x.float() - self.mean) / self.std
        x = x.contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)


def val_count(val_size: int | float, n: int) -> int:
    return int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
