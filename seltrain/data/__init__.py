"""Data: sources (on-disk formats), loaders (torch path), and the FFCV pipeline.

``build_data(cfg, sharding)`` is the one entry point the trainer uses: it reads the dataset,
carves the validation split from train with a fixed seed (``split_indices``; the FFCV writer
carves the same way), and returns loaders for train, val and test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seltrain.data.sources import ArraySplit, DatasetInfo, load_split, split_indices
from seltrain.data.loaders import (ArrayLoader, DeviceArrayLoader, DevicePreprocess,
                                   FileLoader, RankSharding, on_device_wanted, val_count)

__all__ = ["DataBundle", "build_data", "DevicePreprocess", "RankSharding", "train_val_indices",
           "load_split", "split_indices"]


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


def build_data(cfg, sharding: RankSharding | None = None, *, batch_size: int | None = None,
               borrow: bool = False, device=None) -> DataBundle:
    """Loaders for one rank. ``batch_size`` is the per-rank training batch. ``borrow``: the
    caller uses each batch before drawing the next and keeps none, so the FFCV loader may hand
    out its own buffers uncopied (the torch loaders always make new tensors). ``device``: where
    the model runs; datasets held in memory live there too when ``data.on_device`` says so
    (``DeviceArrayLoader``)."""
    sharding = sharding or RankSharding()
    if cfg.data.loader == "ffcv":
        from seltrain.data.ffcv_pipeline import build_ffcv_data

        return build_ffcv_data(cfg, sharding, batch_size=batch_size, borrow=borrow)
    info, train_split = load_dataset(cfg, "train")
    _, test_split = load_dataset(cfg, "test")
    train_idx, val_idx = train_val_indices(cfg, len(train_split.labels))
    bs = batch_size or cfg.train.batch_size
    ebs = cfg.train.eval_batch_size
    common = dict(info=info, sharding=sharding, seed=cfg.train.seed)
    device = torch.device(device or "cpu")
    if isinstance(train_split, ArraySplit) and on_device_wanted(
            cfg.data.on_device, device, train_split.images.nbytes + test_split.images.nbytes):
        size = train_split.images.shape[1]
        held = {id(s): _to_device(s, device) for s in (train_split, test_split)}

        def make(split, idx, train, b):
            return DeviceArrayLoader(*held[id(split)], idx, b, train=train,
                                     augment=cfg.data.augment, **common)
    elif isinstance(train_split, ArraySplit):
        size = train_split.images.shape[1]

        def make(split, idx, train, b):
            return ArrayLoader(split, idx, b, train=train, augment=cfg.data.augment, **common)
    else:
        size = cfg.data.image_size or info.image_size

        def make(split, idx, train, b):
            return FileLoader(split, idx, b, train=train, size=size, augment=cfg.data.augment,
                              num_workers=cfg.data.num_workers, **common)
    test_idx = np.arange(len(test_split.labels))
    return DataBundle(
        info=info,
        train=make(train_split, train_idx, True, bs),
        val=make(train_split, val_idx, False, ebs) if len(val_idx) else None,
        test=make(test_split, test_idx, False, ebs),
        image_size=size,
    )


def _to_device(split: ArraySplit, device: torch.device):
    """A split's uint8 images as [N, C, H, W] and labels as int64, in ``device``'s memory."""
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
    return images.contiguous().to(device), labels.to(device)
