"""The fan-out's chunks of orientation (runs of layers) and gradients (runs of unit blocks),
in process: ``merge`` of the ``compute_chunk`` parts gives ``compute``'s result, number for
number (the Ray side, one task per chunk, is tests/integration_tests/test_analyze_fanout.py's).
"""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import randomise_bn

from seltrain.analysis import ablation, gradients, orientation
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


# --------------------------------------------------------------------------- gradients

def test_unit_parts_are_runs_of_whole_blocks():
    from seltrain.analysis.gradients import unit_parts
    assert gradients.chunks(gradients.GradientsOptions()) == [("units", j, 4) for j in range(4)]
    assert gradients.chunk_label(None, ("units", 0, 4)) == "units part 1 of 4"
    # 64 units in blocks of 5: 13 blocks, parts of 3, 3, 3 and 4 blocks (the last one short)
    assert unit_parts(64, 5) == [slice(0, 15), slice(15, 30), slice(30, 45), slice(45, 64)]
    # 20 units in blocks of 16: two blocks, two empty parts; a part never cuts a block
    assert unit_parts(20, 16) == [slice(0, 0), slice(0, 16), slice(16, 16), slice(16, 20)]
    assert unit_parts(7, 2, 1) == [slice(0, 7)]


@pytest.mark.parametrize("unit_block, max_units, dtype",
                         [(3, None, torch.float64), (16, 20, torch.float32)])
def test_gradients_merged_chunks_equal_the_single_process_run(unit_block, max_units, dtype):
    """Every number, exactly: the per-unit statistics are the chunks' rows; the per-image
    ones add the chunks' per-image sums in the order one process adds its parts' sums.
    (3, None, float64): 16 and 32 units in blocks of 3, each chunk cutting a layer's blocks;
    in float64 the order of the per-image sums shows (added block by block instead of part
    by part, this network's numbers move by 1e-16; float32 gradients summed in float64 are
    mostly exact in any order). (16, 20, float32): a random 20 of each layer's units, in 1 or
    2 blocks, so some chunks hold none of a layer. Images in pieces of 5 from batches of 10."""
    target = _target("resnet20", ["stem", "layer1.1", "layer2.0"], n_images=12, size=8)
    target = dataclasses.replace(target, model=target.model.to(dtype),
                                 data=[(x.to(dtype), y) for x, y in target.data])
    opts = gradients.GradientsOptions(batch_size=5, unit_block=unit_block,
                                      max_units=max_units, seed=2)
    whole = gradients.compute(target, opts)
    parts = [gradients.compute_chunk(target, opts, c) for c in gradients.chunks(opts)]
    n = assert_same(whole, gradients.merge(target, opts, parts))
    layer = whole["layers"]["layer2.0"]
    assert len(layer["units"]) == (max_units or 32) and layer["n_samples"] == 12
    assert n > 400  # units, 4 statistics each per unit and per image, labels, means
    sizes = [len(p["layers"]["layer2.0"]["units"]) for p in parts]
    assert sizes == ([6, 9, 9, 8] if unit_block == 3 else [0, 16, 0, 4])
    # the per-image direction needs every unit: a part's alone is another number
    one = gradients.merge(target, opts, [parts[-1]])["layers"]["layer2.0"]
    assert not np.allclose(one["across_units"]["direction"],
                           layer["across_units"]["direction"])
    if max_units:
        return
    # one process's numbers, summed part by part, are the definition's (to rounding: the
    # gradients batched otherwise)
    from seltrain.analysis.gradients import unit_input_gradients
    x = torch.cat([b[0] for b in target.data])
    g = unit_input_gradients(target.model, "layer2.0", x, std=target.info.std)
    u = g.double().flatten(2)  # [U, N, P]
    norm = u.norm(dim=2, keepdim=True)
    u = u / torch.where(norm > 0, norm, 1)  # a silent unit's zero gradient stays out
    c = (norm[..., 0] > 0).sum(0).double()  # per image: its units with a gradient
    assert c.min() < u.shape[0]  # some are silent on some images
    direction = (c * c - u.sum(0).pow(2).sum(1)) / (c * (c - 1))
    np.testing.assert_allclose(layer["across_units"]["direction"], direction.numpy(),
                               rtol=1e-12)


# --------------------------------------------------------------------------- ablation

def test_ablation_chunks_with_cumulative_curves_are_one_per_order():
    opts = ablation.AblationOptions(cumulative=True, n_random=2)
    chunks = ablation.chunks(opts)
    assert chunks == [("units", j, 4) for j in range(4)] + [
        ("cumulative", o) for o in ("si_high_first", "si_low_first", "random_0", "random_1")]
    assert [ablation.chunk_label(opts, c) for c in chunks[3:]] == [
        "units part 4 of 4", "cumulative, SI high first", "cumulative, SI low first",
        "cumulative, random order 1 of 2", "cumulative, random order 2 of 2"]
    assert len(ablation.chunks(ablation.AblationOptions())) == 4


@pytest.mark.parametrize("n_random", [3, 0])
def test_ablation_merged_chunks_with_cumulative_curves_equal_the_single_process_run(n_random):
    """Every number, exactly: the single-unit drops (units parts), the attributes and
    correlations (the merge), and the cumulative curves, each order counted in its own part
    from the SI it computes itself; the random orders are the single process' (seed 0)."""
    target = _target("resnet20", ["layer1.1", "layer2.0"], n_images=24, size=16)
    # Labelled with the network's own predictions: accuracy 1 intact, so the curves fall.
    with torch.no_grad():
        data = [(x, target.model(x).argmax(1)) for x, _ in target.data]
    target = dataclasses.replace(target, data=data, cfg=SimpleNamespace(
        selectivity=SimpleNamespace(eps=1e-7)))
    opts = ablation.AblationOptions(cumulative=True, n_random=n_random)
    whole = ablation.compute(target, opts)
    parts = [ablation.compute_chunk(target, opts, c) for c in ablation.chunks(opts)]
    merged = ablation.merge(target, opts, parts)
    n = assert_same(whole, merged)
    cum = merged["layers"]["layer2.0"]["cumulative"]
    assert cum["random"].shape == (n_random, 11) and list(cum["n_ablated"][:3]) == [0, 3, 6]
    assert n > 3_000  # 48 units' drops per class, attributes, 11-point curves
    # not a vacuous match: the curves fall as units go, and the random orders differ
    assert cum["baseline_acc"] == cum["si_high_first"][0] == 1.0
    assert cum["si_high_first"][3] * 24 == 19 and cum["si_low_first"][1] * 24 == 19
    if n_random:
        assert not np.array_equal(cum["random"][0], cum["random"][1])
        assert np.isfinite(cum["random_std"]).all()
    else:
        assert np.isnan(cum["random_mean"]).all()
    # a part whose order another SI ranked is refused, not merged into the curve
    order = parts[4]["layer1.1"]["orders"]["si_high_first"]
    parts[4]["layer1.1"]["orders"]["si_high_first"] = order[::-1]
    with pytest.raises(ValueError, match="the part of the order si_high_first ranked the "
                                         "units by another SI than the merge's"):
        ablation.merge(target, opts, parts)
