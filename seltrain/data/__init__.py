"""Data: sources (on-disk formats), loaders (torch path), and the FFCV pipeline.

Two entry points, both reading the recipe's data through one source (``open_source``):

- ``build_data(cfg, sharding)``: the trainer's loaders for train, val and test
  (``DataBundle``). It carves the validation split from train with a fixed seed
  (``train_val_indices``; the FFCV writer carves the same way).
- ``build_eval_loader(cfg, split)``: the loader of one evaluation split, ``val`` carved exactly
  as training carves it, ``test`` whole. ``build_data``'s val and test loaders are made by it,
  and the analyses read their split through it.

A source is either the torch path's ``TorchSource`` (the splits as ``load_split`` reads them,
and the one choice between ``ArrayLoader``, ``DeviceArrayLoader`` and ``FileLoader``) or the
FFCV path's ``FFCVSource`` (the recipe's checked ``.beton`` files), as ``data.loader`` says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seltrain.data.sources import ArraySplit, DatasetInfo, load_split, split_indices
from seltrain.data.loaders import (ArrayLoader, DeviceArrayLoader, DevicePreprocess,
                                   FileLoader, RankSharding, on_device_wanted, val_count)

__all__ = ["DataBundle", "build_data", "build_eval_loader", "open_source", "DevicePreprocess",
           "RankSharding", "train_val_indices", "load_split", "split_indices"]

EVAL_SPLITS = ("val", "test")


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Any
    val: Any | None
    test: Any
    image_size: int


def train_val_indices(cfg, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """The train/val carve (and ``limit_train`` subset); shared by torch and FFCV paths."""
    train_idx, val_idx = split_indices(n_train, val_count(cfg.data.val_size, n_train),
                                       cfg.data.split_seed)
    if cfg.data.limit_train is not None and cfg.data.limit_train < len(train_idx):
        rng = np.random.default_rng(cfg.data.split_seed + 1)
        train_idx = np.sort(rng.choice(train_idx, cfg.data.limit_train, replace=False))
    return train_idx, val_idx


def load_dataset(cfg, split: str):
    d = cfg.data
    return load_split(d.dataset, d.root, split, download=d.download,
                      synthetic=d.synthetic if d.dataset == "synthetic" else None)


def source_split(split: str) -> str:
    """The split of the dataset on disk that ``split`` comes from: val is carved from train."""
    return "train" if split == "val" else split


class TorchSource:
    """A recipe's dataset on the torch path: the splits ``load_split`` reads, and the one
    place that picks their loader: ``ArrayLoader`` for datasets held in memory (Fashion-MNIST,
    CIFAR, synthetic), ``DeviceArrayLoader`` when ``data.on_device`` holds them in the
    device's memory (decided once, for every split read here together), ``FileLoader`` for
    image folders."""

    def __init__(self, cfg, splits=("train", "test"), device=None):
        self.cfg = cfg
        self.splits: dict[str, Any] = {}
        self.info: DatasetInfo | None = None
        for s in dict.fromkeys(map(source_split, splits)):
            info, self.splits[s] = load_dataset(cfg, s)
            self.info = self.info or info
        first = next(iter(self.splits.values()))
        device = torch.device(device or "cpu")
        self.held: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        if isinstance(first, ArraySplit):
            self.image_size = first.images.shape[1]
            nbytes = sum(s.images.nbytes for s in self.splits.values())
            if on_device_wanted(cfg.data.on_device, device, nbytes):
                self.held = {k: _to_device(s, device) for k, s in self.splits.items()}
        else:
            self.image_size = cfg.data.image_size or self.info.image_size
        # The shorter side of file images before the evaluation centre crop (None: the usual
        # image_size / 0.875); an analysis target sets it for weights trained otherwise.
        self.resize: int | None = None

    def _loader(self, split: str, indices: np.ndarray, batch_size: int, train: bool,
                sharding: RankSharding):
        d = self.cfg.data
        common = dict(train=train, augment=d.augment, info=self.info, sharding=sharding,
                      seed=self.cfg.train.seed)
        if self.held is not None:
            return DeviceArrayLoader(*self.held[split], indices, batch_size, **common)
        data = self.splits[split]
        if isinstance(data, ArraySplit):
            return ArrayLoader(data, indices, batch_size, **common)
        return FileLoader(data, indices, batch_size, size=self.image_size,
                          num_workers=d.num_workers, resize=self.resize, **common)

    def train_loader(self, sharding: RankSharding, batch_size: int, borrow: bool = False):
        idx = train_val_indices(self.cfg, len(self.splits["train"]))[0]
        return self._loader("train", idx, batch_size, True, sharding)

    def eval_loader(self, split: str, sharding: RankSharding, borrow: bool = False):
        """``split``'s loader (val: None when the recipe carves none). The torch loaders
        always make new tensors, so ``borrow`` changes nothing here."""
        data = self.splits[source_split(split)]
        if split == "val":
            idx = train_val_indices(self.cfg, len(data))[1]
            if not len(idx):
                return None
        else:
            idx = np.arange(len(data))
        return self._loader(source_split(split), idx, self.cfg.train.eval_batch_size, False,
                            sharding)


def open_source(cfg, splits=("train", "val", "test"), device=None):
    """The recipe's data as ``data.loader`` reads it, for the splits named (``TorchSource``
    reads only the files those come from; ``FFCVSource`` checks every file of the recipe).
    ``device``: where the model runs, where ``data.on_device`` may hold the splits."""
    if cfg.data.loader == "ffcv":
        from seltrain.data.ffcv_pipeline import FFCVSource

        return FFCVSource(cfg)
    return TorchSource(cfg, splits, device)


def build_eval_loader(cfg, split: str, sharding: RankSharding | None = None, *, device=None,
                      borrow: bool = False, source=None):
    """The loader of evaluation split ``split`` ('val' or 'test') for one rank: val carved
    from train exactly as training carves it (``train_val_indices``; None when
    ``data.val_size`` is 0), test whole; FFCV's ``data.ffcv.val``/``test`` file with
    ``data.loader=ffcv``. Evaluation shards are contiguous chunks, one per rank, together
    covering each sample once (``RankSharding.eval_indices``). ``source``: the recipe's data
    already opened (``open_source``), as ``build_data`` passes it; ``borrow``: see
    ``build_data``."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown evaluation split {split!r}; use 'val' or 'test'")
    source = source or open_source(cfg, (split,), device)
    return source.eval_loader(split, sharding or RankSharding(), borrow=borrow)


def build_data(cfg, sharding: RankSharding | None = None, *, batch_size: int | None = None,
               borrow: bool = False, device=None) -> DataBundle:
    """Loaders for one rank. ``batch_size`` is the per-rank training batch. ``borrow``: the
    caller uses each batch before drawing the next and keeps none, so the FFCV loader may hand
    out its own buffers uncopied (the torch loaders always make new tensors). ``device``: where
    the model runs; datasets held in memory live there too when ``data.on_device`` says so
    (``DeviceArrayLoader``)."""
    sharding = sharding or RankSharding()
    source = open_source(cfg, ("train", "test"), device)
    train = source.train_loader(sharding, batch_size or cfg.train.batch_size, borrow=borrow)
    val, test = (build_eval_loader(cfg, s, sharding, borrow=borrow, source=source)
                 for s in EVAL_SPLITS)
    return DataBundle(info=source.info, train=train, val=val, test=test,
                      image_size=source.image_size)


def _to_device(split: ArraySplit, device: torch.device):
    """A split's uint8 images as [N, C, H, W] and labels as int64, in ``device``'s memory."""
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
    return images.contiguous().to(device), labels.to(device)
