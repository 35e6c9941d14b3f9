"""The torch-path loaders as a GPU run uses them: FileLoader's worker processes persist across
epochs, and every epoch's augmentations stay reproducible (resumption, any num_workers)."""
from __future__ import annotations

import multiprocessing

import numpy as np
import torch

from fixtures_data import write_imagefolder
from seltrain.data import RankSharding, load_split
from seltrain.data.loaders import ArrayLoader, FileLoader


def _file_loader(root, workers, seed=3):
    info, split = load_split("imagefolder", root, "train")
    return FileLoader(split, np.arange(len(split.labels)), 6, train=True, info=info,
                      sharding=RankSharding(), size=32, seed=seed, num_workers=workers)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_file_loader_workers_persist_and_epochs_replay_exactly(tmp_path):
    """The same worker processes serve epochs 0 and 1 (no respawn per epoch), and each
    epoch's random-resized crops and flips are reproduced bitwise by a fresh loader without
    workers set to that epoch (what a resumed run does), while epochs differ."""
    root = write_imagefolder(tmp_path, n_classes=3, n_train_per_class=8, n_val_per_class=1,
                             size=48)
    persistent = _file_loader(root, workers=2)
    before = {p.pid for p in multiprocessing.active_children()}
    e0 = _epoch(persistent, 0)
    workers = {p.pid for p in multiprocessing.active_children()} - before
    e1 = _epoch(persistent, 1)
    assert len(workers) == 2
    assert workers <= {p.pid for p in multiprocessing.active_children()}  # still the same two

    rng_before = torch.get_rng_state()
    fresh = _file_loader(root, workers=0)
    r1, r0 = _epoch(fresh, 1), _epoch(fresh, 0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    for got, want in ((e0, r0), (e1, r1)):
        assert len(got) == len(want) == 4  # 24 images, batch 6
        for (gx, gy), (wx, wy) in zip(got, want):
            assert torch.equal(gx, wx) and torch.equal(gy, wy)
    x0, x1 = (torch.cat([x for x, _ in e]) for e in (e0, e1))
    assert x0.shape == (24, 3, 32, 32) and not torch.equal(x0, x1)
    assert not torch.equal(x0, torch.cat([x for x, _ in _epoch(_file_loader(root, 0, 4), 0)]))
    del persistent


def test_array_loader_pins_only_with_cuda():
    """Batches are gathered into pinned memory when CUDA is present (an asynchronous copy
    needs it), and are the same batches either way."""
    info, split = load_split("synthetic", None, "train")
    loader = ArrayLoader(split, np.arange(64), 16, train=True, info=info,
                         sharding=RankSharding(), seed=1)
    assert loader.pin_memory == torch.cuda.is_available()
    batches = list(loader)
    assert len(batches) == 4 and all(x.is_pinned() == loader.pin_memory for x, _ in batches)
    plain = ArrayLoader(split, np.arange(64), 16, train=True, info=info,
                        sharding=RankSharding(), seed=1, pin_memory=False)
    for (a, ya), (b, yb) in zip(batches, plain):
        assert torch.equal(a, b) and torch.equal(ya, yb)
