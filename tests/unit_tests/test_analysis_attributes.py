"""What ablation drops are compared with (seltrain/analysis/attributes.py): the L1 norm of a
unit's incoming weights (the producing conv found past shortcuts; BatchNorm folded in where it
cancels the conv's scale, raw where there is none), its mean activation, and the Spearman
correlations of drops with attributes, with known ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_models import (K, OneClassNet, TinyCifarResNet,
                            chain_net, one_class_data, randomise_bn_02)
from seltrain.analysis.attributes import correlations, folding_batchnorm, unit_attributes
from seltrain.models import build_model


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


def test_l1_norm_of_incoming_weights_picks_the_producing_conv():
    model = randomise_bn_02(TinyCifarResNet())
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
    model = randomise_bn_02(build_model(arch, 10, image_size=32))
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

