"""Unit ablation (seltrain/analysis/ablation.py) on hand-built networks with known answers,
and the fast method against the naive one on a conv chain and on ResNets."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fixtures_models import (K, OneClassNet, TinyCifarResNet,
                            chain_net, one_class_data, randomise_bn_02)
from seltrain.analysis.ablation import (UnsupportedModelError, ablate, cumulative_ablation,
                                        single_unit_ablation, split_at)
from seltrain.models import build_model


@pytest.mark.parametrize("fast", [True, False])
def test_ablating_a_one_class_unit_kills_that_class_only(fast):
    model, (x, y) = OneClassNet(), one_class_data()
    r = single_unit_ablation(model, "hidden", x, y, K, fast=fast, batch_size=16)
    assert r["baseline_acc"] == 1.0
    np.testing.assert_array_equal(r["baseline_class_acc"], np.ones(K))
    expected = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    np.testing.assert_array_equal(r["class_drops"], expected)
    np.testing.assert_array_equal(r["ablated_class_acc"][0], [0, 1, 1, 1])  # class 0: 0 < chance
    np.testing.assert_array_equal(r["overall_drop"], [0.25, 0, 0.25, 0.25])
    np.testing.assert_array_equal(r["max_class_drop"], [1, 0, 1, 1])
    np.testing.assert_allclose(r["class_drop_std"], [np.sqrt(3) / 4, 0, np.sqrt(3) / 4,
                                                     np.sqrt(3) / 4])
    assert r["n_images"] == 40 and r["class_counts"].tolist() == [10] * K
    # dissect's per-class score, binary balanced accuracy: ablating unit 0 costs class 0 half
    # (recall 1 -> 0, no false positives) and class 1 a sixth (10 of its 30 negatives now
    # predicted as 1: (1 + 20/30) / 2), which per-class accuracy cannot see
    np.testing.assert_array_equal(r["baseline_class_balanced_acc"], np.ones(K))
    s = 1 / 6
    np.testing.assert_allclose(r["class_balanced_drops"], [[0.5, s, 0, 0], [0, 0, 0, 0],
                                                           [0, s, 0.5, 0], [0, s, 0, 0.5]],
                               atol=1e-12)


def test_ablate_zeroes_whole_channels_and_cleans_up():
    conv = nn.Conv2d(2, 5, 3, padding=1)
    x = torch.randn(3, 2, 6, 6)
    with ablate(conv, [1, 3]):
        out = conv(x)
    assert out[:, [1, 3]].abs().sum() == 0
    ref = conv(x)  # hook removed
    torch.testing.assert_close(out[:, [0, 2, 4]], ref[:, [0, 2, 4]], rtol=0, atol=0)
    assert ref[:, [1, 3]].abs().sum() > 0


def test_cumulative_ablation_orders_by_si():
    model, (x, y) = OneClassNet(), one_class_data()
    si = np.array([0.9, 0.1, 0.5, 0.7])  # high first: 0, 3, 2, 1; low first: 1, 2, 3, 0
    r = cumulative_ablation(model, "hidden", x, y, si, fractions=[0, 0.25, 0.5, 0.75, 1],
                            n_random=3, batch_size=16)
    np.testing.assert_array_equal(r["n_ablated"], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(r["si_high_first"], [1, 0.75, 0.5, 0.25, 0.25])
    np.testing.assert_array_equal(r["si_low_first"], [1, 1, 0.75, 0.5, 0.25])
    assert r["random"].shape == (3, 5)
    assert r["random_mean"][0] == 1 and r["random_mean"][-1] == 0.25 and r["random_std"][-1] == 0
    naive = cumulative_ablation(model, "hidden", x, y, si, fractions=[0, 0.25, 0.5, 0.75, 1],
                                n_random=3, batch_size=16, fast=False)
    for k in ("si_high_first", "si_low_first", "random"):
        np.testing.assert_array_equal(r[k], naive[k])


# --- fast == naive ---------------------------------------------------------------------------


def labelled_data(model: nn.Module, n: int, size: int = 8, seed: int = 0):
    """Random images labelled mostly by the model itself (70%) and partly at random (30%).
    The classifier's bias is first shifted so that the mean logit of every class is 0 on
    these images: a randomly initialised net otherwise calls nearly everything one class, by
    margins no single ablation can change."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        fc.bias -= model(x).mean(0)
        y = model(x).argmax(1)
    noise = torch.rand(n, generator=g) < 0.3
    return x, torch.where(noise, torch.randint(0, 10, (n,), generator=g), y)


def _max_logit_diff(model, layer, x, units) -> float:
    """Largest |logit| difference between the split network on stacked ablations and the full
    network under the ablation hook, over the given single-unit ablations."""
    head, tail = split_at(model, layer)
    module = model.probe_points()[layer] if hasattr(model, "probe_points") and \
        layer in model.probe_points() else model.get_submodule(layer)
    with torch.no_grad():
        h = head(x)
        stacked = h.repeat(len(units), *[1] * (h.dim() - 1))
        for r, u in enumerate(units):
            stacked[r * len(x):(r + 1) * len(x), u] = 0
        fast = tail(stacked).view(len(units), len(x), -1)
        diff = 0.0
        for r, u in enumerate(units):
            with ablate(module, [u]):
                diff = max(diff, (fast[r] - model(x)).abs().max().item())
    return diff


def _assert_fast_equals_naive(model, layer, x, y, **kw):
    fast = single_unit_ablation(model, layer, x, y, 10, fast=True, **kw)
    naive = single_unit_ablation(model, layer, x, y, 10, fast=False, **kw)
    assert fast["method"] == "fast" and naive["method"] == "naive"
    assert fast["baseline_acc"] == naive["baseline_acc"]
    for key in ("baseline_class_acc", "ablated_acc", "ablated_class_acc", "overall_drop",
                "class_drops", "max_class_drop", "class_drop_std", "class_balanced_drops"):
        np.testing.assert_array_equal(fast[key], naive[key], err_msg=f"{layer}: {key}")
    assert np.any(fast["class_drops"] != 0), "vacuous: no ablation changed any prediction"
    diff = _max_logit_diff(model, layer, x[:16], list(range(min(4, len(fast["overall_drop"])))))
    print(f"{layer}: max |logit fast - naive| = {diff:.3g}")
    assert diff < 1e-5
    return fast


@pytest.mark.parametrize("layer,per_pass", [("2", 5), ("5", 5), ("11", 5), ("5", None)])
def test_fast_equals_naive_on_a_conv_chain(layer, per_pass):
    # per_pass 5: stacked ablations (the GPU default style); None: the device default
    model = chain_net()
    x, y = labelled_data(model, 34)  # batches of 16, 16 and 2 (the last one unstacked)
    _assert_fast_equals_naive(model, layer, x, y, batch_size=16, units_per_pass=per_pass)


@pytest.mark.parametrize("layer", ["stem", "block1_1", "block2_0", "block2_1"])
def test_fast_equals_naive_on_a_cifar_resnet(layer):
    torch.manual_seed(1)
    model = randomise_bn_02(TinyCifarResNet(), seed=1)
    x, y = labelled_data(model, 34, seed=1)
    r = _assert_fast_equals_naive(model, layer, x, y, batch_size=16, units_per_pass=3)
    assert r["layer"] in ("relu", "layer1.1", "layer2.0", "layer2.1")


@pytest.mark.parametrize("layer", ["relu", "layer1.0", "layer3.0"])
def test_split_torchvision_resnet_gives_the_same_logits(layer):
    # torchvision's own blocks: a shared in-place ReLU, downsample projections, maxpool.
    from torchvision.models.resnet import BasicBlock as TvBlock, ResNet

    torch.manual_seed(2)
    model = randomise_bn_02(ResNet(TvBlock, [1, 1, 1, 1], num_classes=10), seed=2)
    x = torch.randn(16, 3, 8, 8)
    head, tail = split_at(model, layer)
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), model(x), rtol=0, atol=0)
    assert _max_logit_diff(model, layer, x, [0, 1, 2, 5]) == 0


def test_cnn7_single_unit_ablation_zeroes_the_batchnorm():
    torch.manual_seed(0)
    model = randomise_bn_02(build_model("cnn7", 10))
    x = torch.randn(20, 3, 32, 32)
    y = model(x).argmax(1)
    r = single_unit_ablation(model, "conv6", x, y, 10, batch_size=20)
    assert r["layer"] == "relu6" and r["ablated_module"] == "bn6" and r["method"] == "fast"
    for u in (0, 5, 127):
        with ablate(model.bn6, [u]), torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        assert r["ablated_acc"][u] == pytest.approx(acc)
    naive = single_unit_ablation(model, "conv6", x, y, 10, batch_size=20, fast=False)
    np.testing.assert_array_equal(r["ablated_acc"], naive["ablated_acc"])
    cum = cumulative_ablation(model, "conv6", x, y, si=np.arange(128.0), n_random=0,
                              fractions=[0, 1], batch_size=20)
    assert cum["ablated_module"] == "bn6"
    # all of bn6 zeroed: fc1 sees zeros, so every image gets the same logits
    with ablate(model.bn6, list(range(128))), torch.no_grad():
        out = model(x)
    assert cum["si_high_first"][1] == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert torch.allclose(out, out[:1].expand_as(out))


class SkipAround(nn.Module):
    """A skip connection that jumps over the probed layer: not splittable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        h = self.act(self.conv(x)) + x
        return self.fc(h.mean((2, 3)))


def test_unsupported_model_falls_back_to_naive():
    torch.manual_seed(3)
    model = SkipAround().eval()
    x, y = labelled_data(model, 60, seed=3)
    with pytest.raises(UnsupportedModelError, match="computed before"):
        split_at(model, "act")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = single_unit_ablation(model, "act", x, y, 10, fast=True, batch_size=32)
    assert any("naive" in str(w.message) for w in caught)
    assert r["method"] == "naive"
    naive = single_unit_ablation(model, "act", x, y, 10, fast=False, batch_size=32)
    np.testing.assert_array_equal(r["ablated_class_acc"], naive["ablated_class_acc"])


def test_iterable_of_batches_equals_tensors():
    model, (x, y) = OneClassNet(), one_class_data()
    loader = [(x[i:i + 7], y[i:i + 7]) for i in range(0, len(x), 7)]
    a = single_unit_ablation(model, "hidden", loader, None, K)
    b = single_unit_ablation(model, "hidden", x, y, K, batch_size=7)
    np.testing.assert_array_equal(a["class_drops"], b["class_drops"])


def test_units_per_pass_fits_the_memory_budget():
    from seltrain.analysis.ablation import PASS_COST, auto_units_per_pass, units_per_pass

    # resnet50's layer1 at 224 px, 256 images: 256 x 256 x 56 x 56 float32 = 822 MB cached,
    # 3x that per stacked ablation. A fixed 16 per pass would need 16 x 822 MB = 13 GB.
    per_unit = PASS_COST * 256 * 256 * 56 * 56 * 4
    assert per_unit == 2_466_250_752
    assert units_per_pass(per_unit, budget=70 * 10**9, cap=64) == 28  # half an H200's 140 GB
    assert units_per_pass(per_unit, budget=20 * 2**30, cap=64) == 8   # half of 40 GiB free
    assert units_per_pass(per_unit, budget=2 * 10**9, cap=64) == 1    # not even one: one
    assert units_per_pass(1000, budget=10**9, cap=64) == 64           # tiny layers: the cap
    assert units_per_pass(0, budget=0, cap=5) == 1
    # on the CPU: one per pass (stacking does not pay there), whatever the layer
    h = torch.zeros(16, 8, 4, 4)
    assert auto_units_per_pass(h, torch.device("cpu")) == 1


def test_results_do_not_depend_on_the_unit_batch():
    model = chain_net()
    x, y = labelled_data(model, 40)  # batches of 16, 16 and 8 (the last one unstacked)
    runs = {per: single_unit_ablation(model, "5", x, y, 10, batch_size=16, units_per_pass=per)
            for per in (1, 3, None)}
    cums = {per: cumulative_ablation(model, "5", x, y, si=np.linspace(0, 1, 12),
                                     n_random=2, batch_size=16, units_per_pass=per)
            for per in (1, 3, None)}
    for per in (3, None):
        for key in ("ablated_acc", "ablated_class_acc", "class_drops", "class_balanced_drops"):
            np.testing.assert_array_equal(runs[per][key], runs[1][key], err_msg=f"{per} {key}")
        for key in ("si_high_first", "si_low_first", "random"):
            np.testing.assert_array_equal(cums[per][key], cums[1][key], err_msg=f"{per} {key}")
    assert np.any(runs[1]["class_drops"] != 0), "vacuous: no ablation changed a prediction"
    assert len(runs[1]["overall_drop"]) == 12 and runs[1]["n_images"] == 40
