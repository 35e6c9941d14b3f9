"""Unit ablation (seltrain/analysis/ablation.py) on hand-built networks with known answers,
and the fast method against the naive one on a conv chain and on ResNets."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import randomise_bn

from seltrain.analysis.ablation import (UnsupportedModelError, ablate, cumulative_ablation,
                                        single_unit_ablation, split_at)
from seltrain.analysis.attributes import correlations, folding_batchnorm, unit_attributes
from seltrain.models import build_model

K = 4


class OneClassNet(nn.Module):
    """Input: class code e_k times a scale. Hidden unit u = relu(x_u) fires for class u only and
    drives logit u; the output bias (0.1 on class 1) decides when every unit is silent. So
    ablating unit u sends class u to class 1: classes 0, 2 and 3 lose all their accuracy,
    class 1 none, and no other class is touched."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(K, K, bias=False)
        self.relu = nn.ReLU()
        self.out = nn.Linear(K, K)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(K))
            self.out.weight.copy_(torch.eye(K))
            self.out.bias.copy_(torch.tensor([0.0, 0.1, 0.0, 0.0]))

    def probe_points(self):
        return {"hidden": self.relu}

    def forward(self, x):
        return self.out(self.relu(self.hidden(x)))


def one_class_data(per_class: int = 10):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(K).repeat_interleave(per_class)
    x = F.one_hot(y, K).float() * (0.5 + torch.rand(len(y), 1, generator=g))
    return x, y


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


def test_one_class_unit_has_si_one_and_its_class_preferred():
    model, (x, y) = OneClassNet(), one_class_data()
    attrs = unit_attributes(model, "hidden", x, y, num_classes=K)
    means = attrs["class_means"]  # [U, K]
    np.testing.assert_array_equal(means[0, 1:], 0)
    mu_max = means.max(1)
    mu_rest = (means.sum(1) - mu_max) / (K - 1)
    si = (mu_max - mu_rest) / (mu_max + mu_rest + 1e-7)  # docs/METHODS.md sec. 1, by hand
    np.testing.assert_allclose(si, 1.0, atol=1e-6)
    np.testing.assert_array_equal(attrs["preferred_class"], np.arange(K))
    assert attrs["weight_module"] == "hidden"
    np.testing.assert_array_equal(attrs["l1_norm"], np.ones(K))
    np.testing.assert_allclose(attrs["mean_activation"], x.mean(0).numpy(), rtol=1e-6)


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


def test_correlations_known_ranks():
    drops = {"overall_drop": np.array([0.0, 0.1, 0.2, 0.3]),
             "max_class_drop": np.array([0.4, 0.3, 0.2, 0.1]),
             "class_drop_std": np.array([0.1, 0.1, 0.1, 0.1]),
             "class_drops": np.array([[0.5, 0.0], [0.0, 0.6], [0.7, 0.0], [0.0, 0.8]])}
    attrs = {"si": np.array([1.0, 2.0, 3.0, 4.0]), "l1_norm": np.array([4.0, 3.0, 2.0, 1.0])}
    c = correlations(drops, attrs, preferred_class=np.array([0, 1, 0, 1]))
    assert c["overall_drop"]["si"]["rho"] == pytest.approx(1.0)
    assert c["overall_drop"]["l1_norm"]["rho"] == pytest.approx(-1.0)
    assert c["max_class_drop"]["si"]["rho"] == pytest.approx(-1.0)
    assert np.isnan(c["class_drop_std"]["si"]["rho"])  # a constant variable
    assert c["preferred_class_drop"]["si"]["rho"] == pytest.approx(1.0)  # 0.5, 0.6, 0.7, 0.8
    assert c["overall_drop"]["si"]["n"] == 4 and 0 <= c["overall_drop"]["si"]["p"] < 0.01


# --- fast == naive ---------------------------------------------------------------------------


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    # Running means drawn with std 0.2 here (the others use 0.5): these tests' models and
    # tolerances were set with it.
    return randomise_bn(model, seed, mean_std=0.2)


def chain_net() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class TinyCifarResNet(nn.Module):
    """The CIFAR ResNet layout (conv1, bn1, relu, layer1, layer2, avgpool, fc), two stages."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def probe_points(self):
        return {"stem": self.relu, **{f"block{s}_{i}": getattr(self, f"layer{s}")[i]
                                      for s in (1, 2) for i in (0, 1)}}

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = self.avgpool(out)
        return self.fc(out.view(out.size(0), -1))


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
    model = _randomise_bn(TinyCifarResNet(), seed=1)
    x, y = labelled_data(model, 34, seed=1)
    r = _assert_fast_equals_naive(model, layer, x, y, batch_size=16, units_per_pass=3)
    assert r["layer"] in ("relu", "layer1.1", "layer2.0", "layer2.1")


@pytest.mark.parametrize("layer", ["relu", "layer1.0", "layer3.0"])
def test_split_torchvision_resnet_gives_the_same_logits(layer):
    # torchvision's own blocks: a shared in-place ReLU, downsample projections, maxpool.
    from torchvision.models.resnet import BasicBlock as TvBlock, ResNet

    torch.manual_seed(2)
    model = _randomise_bn(ResNet(TvBlock, [1, 1, 1, 1], num_classes=10), seed=2)
    x = torch.randn(16, 3, 8, 8)
    head, tail = split_at(model, layer)
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), model(x), rtol=0, atol=0)
    assert _max_logit_diff(model, layer, x, [0, 1, 2, 5]) == 0


def test_l1_norm_of_incoming_weights_picks_the_producing_conv():
    model = _randomise_bn(TinyCifarResNet())
    x = torch.randn(4, 3, 8, 8)
    for probe, conv, bn in (("block2_0", "layer2.0.conv2", "layer2.0.bn2"),
                            ("stem", "conv1", "bn1")):
        a = unit_attributes(model, probe, x)
        assert a["weight_module"] == conv  # layer2.0's shortcut conv is skipped
        assert a["l1_batchnorm"] == bn  # ... and so is its shortcut BN
        w = model.get_submodule(conv).weight.detach().double()
        np.testing.assert_allclose(a["l1_norm_raw"], w.abs().sum((1, 2, 3)).numpy())
        b = model.get_submodule(bn)
        scale = b.weight.detach().double().abs() / torch.sqrt(b.running_var.double() + b.eps)
        np.testing.assert_allclose(a["l1_norm"], (w.abs().sum((1, 2, 3)) * scale).numpy())
    chain = chain_net()
    a = unit_attributes(chain, "5", x)  # ReLU after conv "3" and BN "4"
    assert a["weight_module"] == "3" and a["l1_batchnorm"] == "4"
    with torch.no_grad():
        acts = chain[:6](x).mean((2, 3)).double()
    np.testing.assert_allclose(a["mean_activation"], acts.mean(0).numpy(), rtol=1e-6)
    a = unit_attributes(chain, "7", x)  # conv "6" -> ReLU "7", no BN: the raw L1
    assert a["l1_weights"] == "raw" and a["l1_batchnorm"] is None
    np.testing.assert_array_equal(a["l1_norm"], a["l1_norm_raw"])


def _l1(model, probe, x, **kw):
    return unit_attributes(model, probe, x, **kw)


@pytest.mark.parametrize("arch,probe,conv,bn,bias", [
    ("resnet20", "layer2.0", "layer2.0.conv2", "layer2.0.bn2", False),  # conv -> BN
    ("cnn7", "conv2", "conv2", "bn2", True),  # conv -> ReLU -> BN (Keras)
])
def test_bn_folded_l1_ignores_the_scale_that_batchnorm_cancels(arch, probe, conv, bn, bias):
    """Scale a conv by c and its BN's running statistics (mean by c, variance and eps by c^2):
    the network computes the same function, the raw L1 grows by c, the folded L1 stays."""
    torch.manual_seed(0)
    model = _randomise_bn(build_model(arch, 10, image_size=32))
    x = torch.randn(4, 3, 32, 32)
    before = _l1(model, probe, x)
    assert before["l1_weights"] == "bn_folded"
    assert before["weight_module"] == conv and before["l1_batchnorm"] == bn
    w, b = model.get_submodule(conv), model.get_submodule(bn)
    by_hand = (w.weight.detach().double().abs().sum((1, 2, 3)) * b.weight.detach().double().abs()
               / torch.sqrt(b.running_var.double() + b.eps)).numpy()
    np.testing.assert_allclose(before["l1_norm"], by_hand, rtol=1e-12)
    np.testing.assert_allclose(before["l1_norm_raw"],
                               w.weight.detach().double().abs().sum((1, 2, 3)).numpy())
    with torch.no_grad():
        logits = model(x)
        c = 3.0
        w.weight.mul_(c)
        if bias:
            w.bias.mul_(c)
        b.running_mean.mul_(c)
        b.running_var.mul_(c * c)
        b.eps *= c * c
        torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-5)
    after = _l1(model, probe, x)
    np.testing.assert_allclose(after["l1_norm_raw"], c * before["l1_norm_raw"], rtol=1e-6)
    np.testing.assert_allclose(after["l1_norm"], before["l1_norm"], rtol=1e-6)
    raw = _l1(model, probe, x, l1_weights="raw")
    assert raw["l1_weights"] == "raw" and raw["l1_batchnorm"] is None
    np.testing.assert_array_equal(raw["l1_norm"], after["l1_norm_raw"])


def test_which_batchnorm_is_folded_per_architecture():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    expect = {("resnet18", "layer2.0"): ("layer2.0.conv2", "layer2.0.bn2"),  # not downsample.1
              ("resnet50", "layer2.0"): ("layer2.0.conv3", "layer2.0.bn3"),
              ("resnet20", "stem"): ("conv1", "bn1"),
              ("vgg16_bn", "conv2_1"): ("features.conv2_1", "features.bn2_1"),
              ("cnn7", "fc1"): ("fc1", "bn_fc1"),
              ("vgg16", "conv2_1"): ("features.conv2_1", None),  # no BN: the raw L1
              ("vgg16", "fc1"): ("classifier.fc1", None)}
    for (arch, probe), (conv, bn) in expect.items():
        model = build_model(arch, 10, image_size=32 if arch == "cnn7" else 16).eval()
        a = _l1(model, probe, torch.randn(2, 3, 32, 32) if arch == "cnn7" else x)
        assert (a["weight_module"], a["l1_batchnorm"]) == (conv, bn), (arch, probe)
        assert a["l1_weights"] == ("raw" if bn is None else "bn_folded")
        found = folding_batchnorm(model, model.get_submodule(conv),
                                  torch.randn(1, 3, 32, 32) if arch == "cnn7" else x[:1])
        assert (found[0] if found else None) == bn


def test_cnn7_single_unit_ablation_zeroes_the_batchnorm():
    torch.manual_seed(0)
    model = _randomise_bn(build_model("cnn7", 10))
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
