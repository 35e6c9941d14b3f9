"""Checkpoints carry a SHA-256 of their weights; ``load`` checks it and refuses NaN/inf."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from seltrain import checkpoint
from seltrain.errors import CheckpointError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_digest_written_and_checked(tmp_path):
    path = str(tmp_path / "last.pt")
    weights = _model().state_dict()
    checkpoint.atomic_save({"model": weights, "epoch": 3}, path)
    ckpt = checkpoint.load(path)
    assert ckpt["model_sha256"] == checkpoint.weights_digest(weights)
    assert len(ckpt["model_sha256"]) == 64


def test_digest_sees_one_changed_value_and_dtype():
    weights = _model().state_dict()
    base = checkpoint.weights_digest(weights)
    changed = {k: v.clone() for k, v in weights.items()}
    changed["0.weight"][0, 0, 0, 0] += 1e-6
    assert checkpoint.weights_digest(changed) != base
    assert checkpoint.weights_digest({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                      for k, v in weights.items()}) != base


def test_a_tampered_value_is_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "last.pt")
    weights = _model().state_dict()
    digest = checkpoint.weights_digest(weights)
    weights["0.bias"][0] = 7.0  # written with the digest of the original weights
    torch.save({"model": weights, "model_sha256": digest}, path)
    with pytest.raises(CheckpointError, match=r"last.pt is damaged \(its weights do not match "
                                              r"the checksum .*use checkpoints/best.pt"):
        checkpoint.load(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_or_without_digest(tmp_path, value):
    weights = _model().state_dict()
    weights["1.weight"][2] = value
    path = str(tmp_path / "best.pt")
    torch.save({"model": weights}, path)  # an older checkpoint: no digest
    with pytest.raises(CheckpointError, match=r"best.pt is damaged \(non-finite values in "
                                              r"1.weight\); analyse checkpoints/last.pt"):
        checkpoint.load(path)


def test_checkpoints_without_a_digest_still_load(tmp_path):
    path = str(tmp_path / "old.pt")
    torch.save({"model": _model().state_dict(), "epoch": 1}, path)
    assert checkpoint.load(path)["epoch"] == 1
