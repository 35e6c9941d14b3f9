"""train.compile=true with the forward hooks that come and go: the regularizer's probe (on
for alpha != 0, detached at alpha = 0) and the orientation tracking, whose end-of-epoch pass
pauses the probe (removing its hooks), attaches its own and re-attaches the probe's.

What is compared. Inductor's CPU kernels give gradients that differ from eager ones by up to a
few percent of a parameter's largest gradient on some steps (resnet20, no seltrain code
involved: torch.compile of the bare model), so two trainings part ways after their first
update and are not compared step by step. Instead: the first step's loss equals eager's (the
compiled forward with the probe's hooks); with one step per epoch an epoch's train_loss -
train_ce is exactly -alpha times its batch SI, in the epoch after the hooks were re-created
too (the compiled forward still feeds the probe); and each epoch's OSI record is what an eager
pass over the gratings gives on that epoch's checkpointed weights."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY
from seltrain.config import load_config
from seltrain.trainer import Trainer

pytestmark = pytest.mark.slow


def _fit(tmp_path, alpha: float, compile_: bool) -> tuple[list[dict], str]:
    name = f"a{alpha}_c{compile_}"
    cfg = load_config(None, TINY + [
        f"selectivity.alpha={alpha}", f"train.compile={compile_}", "run.track_orientation=true",
        "train.max_steps_per_epoch=1", "train.epochs=2", "run.tensorboard=false",
        f"run.out_dir={tmp_path}", f"run.name={name}"])
    Trainer(cfg).fit()
    with open(tmp_path / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f], str(tmp_path / name)


@pytest.mark.parametrize("alpha", [-1.0, 0.0])
def test_compiled_training_with_probe_and_tracking_hooks(tmp_path, alpha):
    from seltrain.analysis.orientation import mean_osi_per_layer, stimuli
    from seltrain.checkpoint import load_trained_model

    eager, _ = _fit(tmp_path, alpha, False)
    compiled, run = _fit(tmp_path, alpha, True)
    assert [r["epoch"] for r in compiled] == [0, 1]
    for key in ("train_loss", "train_ce"):  # the first step: before any update
        assert abs(compiled[0][key] - eager[0][key]) <= 1e-5 * abs(eager[0][key]), key
    for r in compiled:
        if alpha:
            assert r["train_batch_si"] > 0
            assert abs(r["train_loss"] - r["train_ce"] + alpha * r["train_batch_si"]) < 1e-6
        else:  # bare training: the step reads no SI when compiled
            assert r["train_batch_si"] is None and r["train_loss"] == r["train_ce"]
    # The last epoch's OSI, measured by the tracking hook, from the weights in last.pt.
    model, ckpt, cfg = load_trained_model(run + "/checkpoints/last.pt")
    assert ckpt["epoch"] == 1
    from seltrain.data import load_dataset

    info, _ = load_dataset(cfg, "test")
    with torch.no_grad():
        osi = mean_osi_per_layer(model, list(ckpt["layer_names"]),
                                 stimuli(ckpt["image_size"], info.channels, info.mean, info.std))
    assert osi.keys() == compiled[1]["osi_per_layer"].keys()
    for layer, value in osi.items():
        assert abs(compiled[1]["osi_per_layer"][layer] - value) <= 1e-6, layer
