"""Dead units end to end: a ResNet20 built with 4 of the 16 units of its stem and of layer1.0
silenced (BatchNorm weight 0, bias -1 before the ReLU) reports exactly 0.25 of them dead in
every epoch's metrics.jsonl record, in TensorBoard and in summary.json."""
import json
import os

import pytest
import torch

from helpers import REPO
from seltrain.config import load_config
from seltrain.trainer import Trainer

# lr 1e-9: the silenced units stay silenced (a step moves a BN weight by ~1e-9, its bias -1).
RUN = ["data.dataset=synthetic", "data.synthetic.train_size=96", "data.val_size=32",
       "data.synthetic.test_size=64", "data.synthetic.image_size=8", "data.num_workers=0",
       "train.batch_size=32", "train.epochs=2", "train.lr=1e-9", "selectivity.layers=all",
       "run.progress=false"]


@pytest.mark.slow
def test_silenced_units_are_counted_dead_every_epoch(tmp_path):
    """~10 s on 2 cores (a whole run: two epochs, both splits, TensorBoard read back); the
    counting itself is held in tests/unit_tests/test_selectivity.py in the fast subset."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(os.path.join(REPO, "configs/synthetic.yaml"),
                      [*RUN, f"run.out_dir={tmp_path}", "run.name=dead"])
    trainer = Trainer(cfg)
    net = trainer.network
    with torch.no_grad():
        # stem = relu(bn1(conv1(x))): channels 0-3 are relu(-1) = 0 on every image.
        net.bn1.weight[:4] = 0.0
        net.bn1.bias[:4] = -1.0
        # layer1.0 = relu(bn2(...) + x): x's channels 0-3 are the dead stem's, so 0 + (-1).
        net.layer1[0].bn2.weight[:4] = 0.0
        net.layer1[0].bn2.bias[:4] = -1.0
    summary = trainer.fit()
    run = tmp_path / "dead"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        for split in ("val", "test"):
            dead = r[f"{split}_dead_per_layer"]
            assert list(dead) == trainer.layer_names  # stem, layer1.0 ... layer3.2
            assert dead["stem"] == dead["layer1.0"] == 0.25, (split, dead)
            assert all(0.0 <= v <= 1.0 for v in dead.values())
    assert summary["test_dead_per_layer"] == records[summary["best_epoch"]]["test_dead_per_layer"]
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("test/dead/stem")] == [0.25, 0.25]
    assert [e.step for e in acc.Scalars("val/dead/layer1.0")] == [0, 1]
