"""Probe and ablation points found from a network's graph (seltrain/models/graph_points.py).

- seltrain's own architectures: the graph gives the points of their tables, for every probe
  of every architecture (at the small and the ImageNet head where they differ);
- torchvision networks: where conv -> BN -> ReLU, blocks, pools and a ReLU that a block calls
  twice put the points, and an ablated unit reaches the next layer as exactly 0;
- a folded ReLU changes neither the network's outputs nor its input gradients;
- ``as_probed`` keeps every module's name and weights and reorders the outputs of a class map.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from seltrain.analysis.ablation import ablate, single_unit_ablation
from seltrain.models import ARCHS, build_model
from seltrain.models.graph_points import as_probed, find_layers, fold_activations
from seltrain.probes import ablation_layer, resolve_layers

SIZES = {"resnet18": (32, 224), "vgg16": (32, 128), "vgg16_bn": (32, 128)}


@pytest.mark.parametrize("arch,px", [(a, px) for a in ARCHS for px in SIZES.get(a, (32,))])
def test_seltrain_architectures_give_their_tables(arch, px):
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, px).eval()
    layers, outputs = find_layers(model, torch.zeros(1, 3, px, px))
    assert outputs == 10
    path = {m: n for n, m in model.named_modules()}
    graph = {(p.probe, p.ablation) for p in layers}
    for name, module in model.probe_points().items():
        want = (path[module], path[model.ablation_points()[name]])
        assert want in graph, (name, want)
    # every graph layer whose probe is a table's probe point has the table's ablation point
    table = {path[m]: path[model.ablation_points()[n]] for n, m in model.probe_points().items()}
    for p in layers:
        if p.probe in table:
            assert p.ablation == table[p.probe], p
    if arch == "cnn7":  # ReLU before BN: read at the ReLU, zeroed at the BN
        conv1 = next(p for p in layers if p.layer == "conv1")
        assert (conv1.probe, conv1.ablation, conv1.read) == ("relu1", "bn1", "post-relu")


def _points(model, px=32):
    layers, _ = find_layers(model.eval(), torch.zeros(1, 3, px, px))
    return {p.layer: p for p in layers}, layers


def test_torchvision_resnet18_points():
    torch.manual_seed(0)
    points, layers = _points(torchvision.models.resnet18(num_classes=5))
    assert (points["conv1"].probe, points["conv1"].ablation) == ("relu", "relu")
    assert (points["layer4.1"].probe, points["layer4.1"].ablation) == ("layer4.1", "layer4.1")
    # BasicBlock calls one in-place ReLU twice: it is folded into bn1, the module before it
    inner = points["layer1.0.conv1"]
    assert (inner.probe, inner.ablation, inner.depth) == ("layer1.0.bn1", "layer1.0.bn1", 1)
    assert inner.read.startswith("post-relu (folded")
    # conv2 -> bn2 -> (+ skip): no activation of its own, read and zeroed at bn2
    assert (points["layer1.0.conv2"].probe, points["layer1.0.conv2"].read) == \
        ("layer1.0.bn2", "output")
    assert "fc" not in points  # the logits are the network's output, not a layer
    assert [p.layer for p in layers if p.depth == 0] == [
        "conv1", "maxpool", *(f"layer{s}.{i}" for s in range(1, 5) for i in (0, 1)), "avgpool"]
    assert points["layer3.0"].units == 256 and points["layer2.0.downsample.0"].units == 128


def test_torchvision_vgg16_and_alexnet_points():
    torch.manual_seed(0)
    points, _ = _points(torchvision.models.vgg16(num_classes=4))
    assert (points["features.28"].probe, points["features.28"].ablation,
            points["features.28"].units) == ("features.29", "features.29", 512)
    assert points["features.30"].probe == "features.30"  # the last pool
    assert points["classifier.3"].probe == "classifier.4"  # fc2 -> ReLU (-> dropout)
    points, _ = _points(torchvision.models.alexnet(num_classes=4), px=64)
    assert list(points) == ["features.0", "features.2", "features.3", "features.5",
                            "features.6", "features.8", "features.10", "features.12",
                            "avgpool", "classifier.1", "classifier.4"]
    assert points["features.10"].ablation == "features.11"


def _next_input(model, module_path):
    seen = []
    h = model.get_submodule(module_path).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().clone()))
    return seen, h


def test_a_zeroed_unit_reaches_the_next_layer_as_zero():
    """At the folded point inside a torchvision block too; a block through the naive hook and
    the fast (torch.fx) method alike."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    layers, _ = find_layers(model, torch.zeros(1, 3, 32, 32))
    fold_activations(model, layers)
    model = as_probed(model, layers)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 3
    for layer, nxt in (("layer1.0.conv1", "layer1.0.conv2"), ("conv1", "maxpool")):
        _, module = ablation_layer(model, layer)
        seen, h = _next_input(model, nxt)
        with ablate(module, [3, 7]), torch.no_grad():
            model(x)
        h.remove()
        assert seen[0][:, [3, 7]].abs().max() == 0
        assert (seen[0].abs().amax((0, 2, 3)) > 0).sum() > 40  # the other units are alive
    # a top-level layer: the fast method (torch.fx split) equals the naive one
    fast = single_unit_ablation(model, "layer1.1", x, y, num_classes=3, fast=True)
    naive = single_unit_ablation(model, "layer1.1", x, y, num_classes=3, fast=False)
    assert (fast["method"], naive["method"]) == ("fast", "naive")
    assert (fast["overall_drop"] == naive["overall_drop"]).all()


def test_folding_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    before = model(x)
    (g_before,) = torch.autograd.grad(before[:, 1].sum(), x)
    layers, _ = find_layers(model, torch.zeros(1, 3, 32, 32))
    handles = fold_activations(model, layers)
    assert len(handles) == 8  # one bn1 per BasicBlock
    after = model(x)
    (g_after,) = torch.autograd.grad(after[:, 1].sum(), x)
    assert torch.equal(before, after)
    assert torch.allclose(g_before, g_after, rtol=0, atol=1e-6)


class SharedGelu(nn.Module):
    """A GELU called twice (not idempotent: it cannot be folded)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.relu(self.c1(x))
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = h * 1
        return self.fc(h.mean((2, 3)))


def test_a_shared_gelu_is_read_before_it_and_untraceable_networks_keep_their_outputs():
    points, _ = _points(SharedGelu(), px=12)
    assert (points["c1"].probe, points["c1"].ablation) == ("c1", "c1")
    assert points["c1"].read.startswith("pre-gelu") and not points["c1"].fold
    with pytest.warns(UserWarning, match="torch.fx cannot trace Untraceable"):
        points, _ = _points(Untraceable(), px=12)
    assert (points["c1"].probe, points["c1"].ablation) == ("c1", "c1")


def test_as_probed_keeps_names_and_weights_and_reorders_outputs():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=6).eval()
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    names = [n for n, _ in model.named_modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers, _ = find_layers(model, torch.zeros(1, 3, 32, 32))
    order = torch.tensor([4, 1, 0, 2, 3, 5])
    probed = as_probed(model, layers, order)
    assert probed is model and type(model).__name__ == "ResNet"
    assert isinstance(model, torchvision.models.ResNet)
    assert [n for n, _ in model.named_modules()] == names
    assert model.state_dict().keys() == state.keys()  # the order buffer is not saved
    assert torch.equal(model(x), logits[:, order])
    assert resolve_layers(model, ["blocks"]) == [p.layer for p in layers if p.depth == 0]
    assert resolve_layers(model, "layer4.1", any_module=True) == ["layer4.1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast method splits the reordering network too
        r = single_unit_ablation(model, "layer4.1", x, torch.tensor([0, 1]), num_classes=6)
    assert r["method"] == "fast"


class FlattensByBatchSize(nn.Module):
    """Reads the input's batch size to flatten, as EfficientNet's forward does."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 6, 3), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(24, 3)

    def forward(self, x):
        bs = x.size(0)
        return self.fc(self.pool(self.relu(self.conv(x))).view(bs, -1))


def test_the_fast_ablation_takes_the_batch_size_from_the_layer_output():
    torch.manual_seed(0)
    model = FlattensByBatchSize().eval()
    x, y = torch.randn(20, 3, 10, 10), torch.arange(20) % 3
    stacked = single_unit_ablation(model, "relu", x, y, num_classes=3, units_per_pass=3)
    naive = single_unit_ablation(model, "relu", x, y, num_classes=3, fast=False)
    assert (stacked["method"], stacked["units_per_pass"]) == ("fast", 3)
    assert np.array_equal(stacked["overall_drop"], naive["overall_drop"])
    assert np.array_equal(stacked["class_drops"], naive["class_drops"])
