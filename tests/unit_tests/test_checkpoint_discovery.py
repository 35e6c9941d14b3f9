"""Finding and loading trained checkpoints (seltrain/checkpoint.py): one best-else-last lookup
for a checkpoint file, a run folder and an experiment folder."""
from __future__ import annotations

import os

import pytest
import torch

from seltrain.checkpoint import atomic_save, find_checkpoints, load_trained_model, run_checkpoint
from seltrain.config import load_config
from seltrain.errors import CheckpointError
from seltrain.models import build_model


def _touch(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return os.path.abspath(path)


def test_best_else_last_in_a_run_and_in_every_trial(tmp_path):
    run = tmp_path / "run"
    last = _touch(run / "checkpoints" / "last.pt")
    assert run_checkpoint(str(run)) == last
    best = _touch(run / "checkpoints" / "best.pt")
    assert run_checkpoint(str(run)) == best
    assert run_checkpoint(str(run), ("last.pt",)) == last
    assert find_checkpoints(str(run)) == [(str(run), best)]
    assert find_checkpoints(last) == [(str(run), last)]  # a file: its run folder

    exp = tmp_path / "exp"
    b = _touch(exp / "trials" / "b" / "checkpoints" / "last.pt")
    a = _touch(exp / "trials" / "a" / "checkpoints" / "best.pt")
    os.makedirs(exp / "trials" / "c")  # a trial that wrote no checkpoint yet: skipped
    assert find_checkpoints(str(exp)) == [(str(exp / "trials" / "a"), a),
                                          (str(exp / "trials" / "b"), b)]
    with pytest.raises(CheckpointError, match="no checkpoint, run folder or experiment"):
        find_checkpoints(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.pt"):
        find_checkpoints(str(exp / "trials" / "c"))


def test_load_trained_model_builds_the_recipe_model_or_says_it_does_not_fit(tmp_path):
    cfg = load_config(None, ["model.arch=resnet20", "data.dataset=synthetic"])
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, 16)
    ckpt = {"config": cfg.to_dict(), "arch": "resnet20", "num_classes": 10, "in_channels": 3,
            "image_size": 16, "model": model.state_dict()}
    atomic_save(ckpt, str(tmp_path / "run" / "checkpoints" / "best.pt"))
    loaded, got, got_cfg = load_trained_model(str(tmp_path / "run"))
    assert not loaded.training and got_cfg.model.arch == "resnet20" and got["image_size"] == 16
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    atomic_save(dict(ckpt, num_classes=100), str(tmp_path / "bad.pt"))
    with pytest.raises(CheckpointError, match="does not match a seltrain model") as e:
        load_trained_model(str(tmp_path / "bad.pt"))
    assert "\n" not in str(e.value)
