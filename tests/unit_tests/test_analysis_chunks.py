"""The fan-out's chunks of orientation (runs of layers) and gradients (runs of unit blocks),
in process: ``merge`` of the ``compute_chunk`` parts gives ``compute``'s result, number for
number (the Ray side, one task per chunk, is tests/integration_tests/test_analyze_fanout.py's).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import randomise_bn

from seltrain.analysis import gradients, orientation
from seltrain.analysis.target import Target
from seltrain.models import build_model


def _target(arch: str, layers: list[str], n_images: int = 24, size: int = 32,
            batch: int = 10) -> Target:
    """A randomly initialised network (random BatchNorm statistics) on random images in
    batches of ``batch``: a last batch shorter than the others, as a split's usually is."""
    torch.manual_seed(0)
    model = randomise_bn(build_model(arch, 10, image_size=size)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n_images, 3, size, size, generator=g), torch.arange(n_images) % 10
    data = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n_images, batch)]
    info = SimpleNamespace(num_classes=10, channels=3, mean=(0.5, 0.4, 0.3),
                           std=(0.25, 0.2, 0.3))
    return Target(run_dir="run", ckpt_path="run/best.pt", model=model, ckpt={}, cfg=None,
                  info=info, data=data, device=torch.device("cpu"), image_size=size,
                  layers=layers, split="test")


def assert_same(a, b, where: str = "result") -> int:
    """``a`` equals ``b`` exactly, NaN for NaN, dict keys in the same order (the JSON's);
    returns how many numbers were compared."""
    if isinstance(a, dict):
        assert list(a) == list(b), where
        return sum(assert_same(a[k], b[k], f"{where}.{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        return sum(assert_same(u, v, f"{where}[{i}]") for i, (u, v) in enumerate(zip(a, b)))
    if isinstance(a, (np.ndarray, torch.Tensor)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
        return a.size
    if isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
        return 1
    assert a == b and type(a) is type(b), (where, a, b)
    return 1


def _chunked(module, target, opts, chunks):
    return module.merge(target, opts, [module.compute_chunk(target, opts, c) for c in chunks])


# --------------------------------------------------------------------------- orientation

CNN7_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1"]


def test_orientation_chunks_are_runs_of_the_layers():
    opts = orientation.OrientationOptions()
    chunks = orientation.chunks(opts)
    assert chunks == [("layers", j, 4) for j in range(4)]
    assert orientation.chunk_label(opts, chunks[1]) == "layers part 2 of 4"
    from seltrain.analysis.orientation_parts import chunk_layers
    assert [chunk_layers(CNN7_LAYERS, c) for c in chunks] == [
        ["conv1"], ["conv2", "conv3"], ["conv4", "conv5"], ["conv6", "fc1"]]
    # more runs than layers: the empty ones compute nothing
    assert [len(chunk_layers(CNN7_LAYERS[:2], ("layers", j, 4))) for j in range(4)] == \
        [0, 1, 0, 1]


def test_orientation_merged_chunks_equal_the_single_process_run():
    """Every number, exactly: the gratings' responses, the null distributions (the shared
    permutations), the gOSI-split ablations, the shift invariance of the layers above an
    ablated one (which may lie in another chunk) and the summary over layers."""
    target = _target("cnn7", CNN7_LAYERS[2:], n_images=12, batch=5)
    opts = orientation.OrientationOptions(permutations=2, seed=3)
    whole = orientation.compute(target, opts)
    merged = _chunked(orientation, target, opts, orientation.chunks(opts))
    n = assert_same(whole, merged)
    assert n > 10_000  # 432 gratings' tuning curves, nulls, ablations: not a vacuous match
    res = merged["orientation"]
    assert list(res["layers"]) == CNN7_LAYERS[2:]
    assert res["permutations"].shape == (2, 432)
    # conv3's part holds no other layer, yet its ablation reads the four layers above it
    assert list(res["shift_invariance"]["after_ablation"]["conv3"]["top"]) == CNN7_LAYERS[3:]
    assert res["shift_invariance"]["after_ablation"]["fc1"] == {}
    assert merged["summary"]["mean_gosi"] == pytest.approx(
        np.mean([res["layers"][n]["mean_gosi"] for n in CNN7_LAYERS[2:]]), rel=1e-15)


def test_orientation_chunks_without_ablation_and_more_chunks_than_layers():
    target = _target("cnn7", CNN7_LAYERS[4:], n_images=4)
    opts = orientation.OrientationOptions(no_ablation=True)
    whole = orientation.compute(target, opts)
    assert whole["orientation"]["gosi_split_ablation"] == {}
    assert_same(whole, _chunked(orientation, target, opts, orientation.chunks(opts)))
    # five runs of three layers: two are empty; parts in any order join in the layers' order
    parts = [orientation.compute_chunk(target, opts, ("layers", j, 5)) for j in range(5)]
    assert sum(not p["layers"] for p in parts) == 2
    assert_same(whole, orientation.merge(target, opts, parts[::-1]))
