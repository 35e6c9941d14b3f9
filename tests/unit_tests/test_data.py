"""seltrain.data's entry points: ``build_eval_loader`` is the one maker of evaluation loaders
(val carved as training carves it, test whole; array, on-device and file datasets), the very
loaders ``build_data`` hands the trainer; ``DevicePreprocess.batches`` stops at ``limit``
batches or ``max_images`` samples without drawing more."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_data import write_imagefolder
from helpers import TINY
from seltrain.config import load_config
from seltrain.data import (DevicePreprocess, RankSharding, build_data, build_eval_loader,
                           open_source, train_val_indices)
from seltrain.data.loaders import ArrayLoader, DeviceArrayLoader, FileLoader


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) > 0 and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                        for (xa, ya), (xb, yb) in zip(a, b))


def _labels(loader) -> np.ndarray:
    return torch.cat([y for _, y in loader]).numpy()


@pytest.mark.parametrize("on_device,kind", [(False, ArrayLoader), (True, DeviceArrayLoader)])
def test_eval_loaders_are_the_bundles_carved_as_training_carves(on_device, kind):
    cfg = load_config(None, TINY + [f"data.on_device={on_device}", "train.eval_batch_size=50"])
    bundle = build_data(cfg, device="cpu")
    train_labels = open_source(cfg, ("train",)).splits["train"].labels
    test_labels = open_source(cfg, ("test",)).splits["test"].labels
    val_idx = train_val_indices(cfg, 512)[1]
    for split, n, want in (("val", 128, train_labels[val_idx]), ("test", 256, test_labels)):
        alone = build_eval_loader(cfg, split, device="cpu")
        assert isinstance(alone, kind) and isinstance(getattr(bundle, split), kind)
        assert alone.num_samples == n and len(alone) == -(-n // 50)
        assert _same(_batches(alone), _batches(getattr(bundle, split)))
        # val: the carve's samples in order; test: the whole split
        np.testing.assert_array_equal(_labels(alone), want)


def test_eval_shards_cover_the_split_once_and_no_val_is_none():
    cfg = load_config(None, TINY + ["train.eval_batch_size=40"])
    whole = _labels(build_eval_loader(cfg, "test"))
    ranks = [build_eval_loader(cfg, "test", RankSharding(r, 3)) for r in range(3)]
    assert [r.num_samples for r in ranks] == [256] * 3  # the split; each draws its chunk
    np.testing.assert_array_equal(np.concatenate([_labels(r) for r in ranks]), whole)
    assert len(whole) == 256
    cfg = load_config(None, TINY + ["data.val_size=0"])
    assert build_eval_loader(cfg, "val") is None and build_data(cfg).val is None
    with pytest.raises(ValueError, match="'train'"):
        build_eval_loader(cfg, "train")


def test_a_file_dataset_gets_file_loaders_at_the_recipes_size(tmp_path):
    root = write_imagefolder(tmp_path, n_classes=3, n_train_per_class=8, n_val_per_class=2,
                             size=40)
    cfg = load_config(None, ["data.dataset=imagefolder", f"data.root={root}",
                             "data.image_size=32", "data.val_size=6", "data.num_workers=0",
                             "train.eval_batch_size=4"])
    bundle = build_data(cfg)
    for split, n in (("val", 6), ("test", 6)):
        alone = build_eval_loader(cfg, split)
        assert isinstance(alone, FileLoader) and alone.num_samples == n
        got = _batches(alone)
        assert got[0][0].shape == (4, 3, 32, 32)
        assert _same(got, _batches(getattr(bundle, split)))
    assert open_source(cfg, ("test",)).image_size == bundle.image_size == 32


class _Counting:
    """A loader that counts the batches drawn from it."""

    def __init__(self, loader):
        self.loader, self.drawn = loader, 0

    def __iter__(self):
        for batch in self.loader:
            self.drawn += 1
            yield batch


def test_batches_stop_at_max_images_without_drawing_more():
    cfg = load_config(None, TINY + ["train.eval_batch_size=100"])
    bundle = build_data(cfg)
    pre = DevicePreprocess(bundle.info, torch.device("cpu"))
    every = list(pre.batches(bundle.test))
    assert [len(y) for _, y in every] == [100, 100, 56]
    for max_images, sizes, drawn in ((150, [100, 50], 2), (200, [100, 100], 2),
                                     (1000, [100, 100, 56], 3), (0, [], 0)):
        counting = _Counting(bundle.test)
        got = list(pre.batches(counting, max_images=max_images))
        assert [len(y) for _, y in got] == sizes and counting.drawn == drawn
        for (x, y), (xe, ye) in zip(got, every):
            assert torch.equal(x, xe[:len(y)]) and torch.equal(y, ye[:len(y)])
    counting = _Counting(bundle.test)
    assert [len(y) for _, y in pre.batches(counting, limit=1, max_images=150)] == [100]
    assert counting.drawn == 1
