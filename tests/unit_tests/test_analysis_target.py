"""What an analysis reads (seltrain/analysis/target.py): the split through the data layer's
``build_eval_loader``, normalised by ``DevicePreprocess.batches``, cut after --max-images,
with the labels on the host."""
from __future__ import annotations

import torch

from helpers import TINY
from seltrain.analysis.target import NormalisedBatches
from seltrain.config import load_config
from seltrain.data import DevicePreprocess, build_eval_loader, open_source


def test_batches_are_the_trainers_normalised_ones_cut_after_max_images():
    cfg = load_config(None, TINY + ["train.eval_batch_size=100"])
    source = open_source(cfg, ("val",))
    loader = build_eval_loader(cfg, "val", source=source)
    pre = DevicePreprocess(source.info, torch.device("cpu"))
    whole = NormalisedBatches(loader, pre, None)
    assert (whole.num_images, len(whole)) == (128, 2)
    cut = NormalisedBatches(loader, pre, 130)  # more than the split: the split
    assert (cut.num_images, len(cut)) == (128, 2)
    cut = NormalisedBatches(loader, pre, 101)
    assert (cut.num_images, len(cut)) == (101, 2)
    for _ in range(2):  # re-iterable
        got = list(cut)
        assert [len(y) for _, y in got] == [100, 1]
    xs, ys = zip(*got)
    assert all(y.device.type == "cpu" and y.dtype == torch.int64 for y in ys)
    raw_x, raw_y = map(torch.cat, zip(*loader))
    mean = torch.tensor(source.info.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(source.info.std).view(1, -1, 1, 1) * 255
    assert torch.equal(torch.cat(xs), (raw_x[:101].float() - mean) / std)
    assert torch.equal(torch.cat(ys), raw_y[:101])
