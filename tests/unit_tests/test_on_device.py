"""data.on_device: the uint8 splits held in the device's memory (DeviceArrayLoader), cropped,
flipped and normalised there, give the host path's batches bit for bit, and so the same
training. Here the device is the CPU: the same code, the same tensor ops."""
from __future__ import annotations

import pytest
import torch

from helpers import TINY
from seltrain.config import load_config
from seltrain.data import DevicePreprocess, RankSharding, build_data
from seltrain.data.loaders import (ON_DEVICE_SHARE, ArrayLoader, DeviceArrayLoader,
                                   on_device_wanted)
from seltrain.errors import ConfigError
from seltrain.metrics import NullSink


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
