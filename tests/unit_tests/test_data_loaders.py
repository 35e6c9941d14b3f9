"""seltrain/data/loaders.py: RankSharding, the one definition of which samples each rank sees
(the base of the global-SI equivalence, G ranks together seeing the batch one process would,
and of exact sharded eval); and data.on_device: the uint8 splits held in the device's memory
(DeviceArrayLoader), cropped, flipped and normalised there, give the host path's batches bit
for bit, and so the same training. Here the device is the CPU: the same code, the same tensor
ops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TINY
from seltrain.config import load_config
from seltrain.data import DevicePreprocess, build_data
from seltrain.data.loaders import (ON_DEVICE_SHARE, ArrayLoader, DeviceArrayLoader, RankSharding,
                                   epoch_generator, on_device_wanted)
from seltrain.errors import ConfigError
from seltrain.metrics import NullSink


# ---------------------------------------------------------------------------------- RankSharding

def _epoch(world: int, indices: np.ndarray, batch: int, seed: int = 3, epoch: int = 1,
           drop_last: bool = True) -> list[list[np.ndarray]]:
    """Every rank's batches of one epoch: [rank][step] -> indices."""
    return [RankSharding(r, world).train_batches(indices, batch, epoch_generator(seed, epoch),
                                                 drop_last)
            for r in range(world)]


def test_ranks_together_see_the_single_process_global_batches_in_order():
    indices = np.arange(100, 200)  # 100 samples that are not their own positions
    single = _epoch(1, indices, 24)[0]  # one process, global batch 24
    ranks = _epoch(4, indices, 6)  # four ranks, local batch 6: the same global batch
    assert len(single) == 4 and all(len(r) == 4 for r in ranks)  # 100 // 24 full batches
    for step, batch in enumerate(single):
        # Rank r holds the r-th slice of the global batch, in the same order.
        assert np.array_equal(np.concatenate([ranks[r][step] for r in range(4)]), batch)
        assert all(len(ranks[r][step]) == 6 for r in range(4))
    # The order is the seeded permutation of the epoch: the same generator, the same order.
    perm = indices[torch.randperm(100, generator=epoch_generator(3, 1)).numpy()]
    assert np.array_equal(np.concatenate(single), perm[:96])


def test_shards_of_an_epoch_are_disjoint_and_drop_only_the_last_partial_global_batch():
    indices = np.arange(103)
    ranks = _epoch(3, indices, 5)  # global batch 15: 6 full batches, 13 samples dropped
    seen = np.concatenate([b for r in ranks for b in r])
    assert [len(r) for r in ranks] == [6, 6, 6]
    assert len(seen) == 90 and len(np.unique(seen)) == 90  # no sample twice
    assert set(seen) <= set(indices.tolist())
    # Another epoch is another permutation; the same epoch again is the same one.
    again, other = _epoch(3, indices, 5), _epoch(3, indices, 5, epoch=2)
    assert all(np.array_equal(a, b) for ra, rb in zip(ranks, again) for a, b in zip(ra, rb))
    assert not np.array_equal(ranks[0][0], other[0][0])


def test_without_drop_last_the_partial_global_batch_is_split_over_every_rank():
    indices = np.arange(103)
    ranks = _epoch(3, indices, 5, drop_last=False)
    # 13 left over: 5, 4, 4 (np.array_split), so every rank takes the same 7 steps.
    assert [len(r) for r in ranks] == [7, 7, 7]
    assert [len(r[-1]) for r in ranks] == [5, 4, 4]
    seen = np.concatenate([b for r in ranks for b in r])
    assert np.array_equal(np.sort(seen), indices)  # every sample exactly once
    single = _epoch(1, indices, 15, drop_last=False)[0]
    assert np.array_equal(np.concatenate([r[-1] for r in ranks]), single[-1])


def test_a_leftover_smaller_than_the_world_is_dropped_so_ranks_take_equal_steps():
    # 2 samples left over for 3 ranks: one rank would take a step the others do not, and
    # DDP's gradient all-reduce would hang; so it is dropped even without drop_last.
    ranks = _epoch(3, np.arange(32), 5, drop_last=False)  # 2 full global batches + 2
    assert [len(r) for r in ranks] == [2, 2, 2]
    assert sum(len(b) for r in ranks for b in r) == 30


def test_eval_shards_are_contiguous_uneven_and_cover_every_index_once():
    # 255 samples over 2 ranks: 128 and 127, as in test_distributed_ranks.py
    indices = np.arange(50, 305)
    two = [RankSharding(r, 2).eval_indices(indices) for r in range(2)]
    assert [len(s) for s in two] == [128, 127]
    assert np.array_equal(np.concatenate(two), indices)  # contiguous, in order, no padding
    four = [RankSharding(r, 4).eval_indices(indices) for r in range(4)]
    assert [len(s) for s in four] == [64, 64, 64, 63]
    assert np.array_equal(np.concatenate(four), indices)
    # More ranks than samples: the surplus ranks get empty shards, never repeats.
    few = [RankSharding(r, 4).eval_indices(np.arange(3)) for r in range(4)]
    assert [s.tolist() for s in few] == [[0], [1], [2], []]
    assert np.array_equal(RankSharding().eval_indices(indices), indices)  # one process: all


# -------------------------------------------------------------------------------- data.on_device

def _batches(bundle, split, epoch):
    loader = getattr(bundle, split)
    loader.set_epoch(epoch)
    pre = DevicePreprocess(bundle.info, torch.device("cpu"))
    return list(pre.batches(loader))


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("augment", [True, False])
def test_same_seed_same_batches_as_the_host_path(world, augment):
    cfg = load_config(None, TINY + [f"data.augment={augment}", "train.batch_size=48",
                                    "train.eval_batch_size=100"])
    for rank in range(world):
        sharding = RankSharding(rank, world)
        host = build_data(cfg, sharding, batch_size=24, device="cpu")
        cfg.data.on_device = True
        dev = build_data(cfg, sharding, batch_size=24, device="cpu")
        cfg.data.on_device = "auto"
        assert isinstance(host.train, ArrayLoader) and isinstance(dev.train, DeviceArrayLoader)
        assert dev.train.images is dev.val.images  # val is a carve of the one train tensor
        for split, epochs in (("train", (0, 1, 5)), ("val", (0,)), ("test", (0,))):
            for epoch in epochs:
                a, b = _batches(host, split, epoch), _batches(dev, split, epoch)
                assert len(a) == len(b) > 0, (split, epoch)
                for (xa, ya), (xb, yb) in zip(a, b):
                    assert torch.equal(xa, xb) and torch.equal(ya, yb), (split, epoch)
        if augment:  # the augmentation really ran: epochs differ, crops moved pixels
            t0, t1 = _batches(dev, "train", 0)[0][0], _batches(dev, "train", 1)[0][0]
            assert not torch.equal(t0, t1)


def test_training_on_the_device_equals_training_from_the_host():
    from seltrain.distributed import DistContext
    from seltrain.trainer import Trainer

    seen = {}
    for on_device in (False, True):
        cfg = load_config(None, TINY + ["selectivity.alpha=-1", f"data.on_device={on_device}",
                                        "train.max_steps_per_epoch=4", "run.tensorboard=false",
                                        "run.out_dir=/nonexistent"])
        tr = Trainer(cfg, DistContext())
        assert isinstance(tr.data.train, DeviceArrayLoader if on_device else ArrayLoader)
        stats = [tr.train_epoch(e, NullSink(), e * 4)[0] for e in range(2)]
        ev = tr.evaluate(tr.data.test)
        seen[on_device] = ([{k: s[k] for k in ("train_loss", "train_ce", "train_batch_si")}
                            for s in stats], ev["acc"], ev["si"])
    assert seen[True] == seen[False]
    assert seen[True][0][0]["train_batch_si"] > 0


def test_auto_is_off_on_the_cpu_and_true_is_refused_where_it_cannot_hold():
    cfg = load_config(None, TINY)
    assert cfg.data.on_device == "auto"
    assert isinstance(build_data(cfg, device="cpu").train, ArrayLoader)
    with pytest.raises(ConfigError, match=r"^data.on_device=true holds a dataset in device "
                                          r"memory, .* \(not imagefolder with torch\); set "
                                          r"data.on_device=auto or false$"):
        load_config(None, ["data.dataset=imagefolder", "data.on_device=true"])
    with pytest.raises(ConfigError, match="not synthetic with ffcv"):
        load_config(None, ["data.loader=ffcv", "data.ffcv.train=x.beton",
                           "data.on_device=true"])


def test_auto_takes_the_device_when_the_splits_fit_in_its_share(monkeypatch):
    """auto on CUDA: on when the splits take at most ON_DEVICE_SHARE of the free memory
    (torch.cuda.mem_get_info stands in for a GPU with 8 GB free)."""
    free = 8 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    cuda = torch.device("cuda", 0)
    fits = int(ON_DEVICE_SHARE * free)
    assert on_device_wanted("auto", cuda, fits) is True
    assert on_device_wanted("auto", cuda, fits + 1) is False
    assert on_device_wanted(False, cuda, 1) is False
    assert on_device_wanted(True, torch.device("cpu"), 1 << 40) is True
    assert on_device_wanted("auto", torch.device("cpu"), 1) is False
