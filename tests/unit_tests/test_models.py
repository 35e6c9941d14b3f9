"""Models: shapes, parameter counts, probe points and groups, and the errors users see.

Real forward and backward passes on CPU at batch 2; the ImageNet-sized variants are built on
the meta device, which runs shape inference without allocating or computing anything.
"""
import contextlib
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import randomise_bn

from seltrain.analysis.ablation import ablate, split_at
from seltrain.probes import ablation_layer
from seltrain.errors import ConfigError
from seltrain.models import ARCHS, build_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def probe_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per probe point, the output shape without the batch dimension."""
    shapes = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, k=k: shapes.__setitem__(k, out.shape[1:]))
               for k, m in model.probe_points().items()]
    model(x)
    for h in handles:
        h.remove()
    return {k: tuple(v) for k, v in shapes.items()}


SHAPES = [(a, 3, 32) for a in ARCHS] + [(a, 1, 28) for a in ARCHS if a != "cnn7"]


@pytest.mark.parametrize("arch,channels,px", SHAPES)
def test_forward_backward_and_probes_are_post_relu(arch, channels, px):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, in_channels=channels, image_size=px)
    saved = {}

    def keep(name):
        def hook(_m, _i, out):
            saved[name] = (out, out.detach().clone(), out._version)
        return hook

    points = model.probe_points()
    for name, m in points.items():
        # An in-place probed ReLU would let later ops overwrite what the probe read.
        assert not getattr(m, "inplace", False), name
        m.register_forward_hook(keep(name))
    logits = model(torch.randn(2, channels, px, px))
    assert logits.shape == (2, 7)
    # pow saves its input for backward, so autograd itself would object if any probed output
    # had been modified in place after the hook saw it.
    reg = sum(out.pow(2).mean() for out, _, _ in saved.values())
    (F.cross_entropy(logits, torch.tensor([0, 1])) + reg).backward()
    assert list(saved) == list(points)
    for name, (out, copy, version) in saved.items():
        assert out._version == version and torch.equal(out, copy), name
        assert out.min().item() >= 0, name
    first = next(p for p in model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("arch,px,expected", [
    # Option-B shortcuts add 2,752 parameters to the paper's option-A counts (269,722 and
    # 853,018, "0.27M" and "0.85M" in He et al. 2016 table 6).
    ("resnet20", 32, 272_474),
    ("resnet56", 32, 855_770),
    # 3x3 stem instead of 7x7: 3*64*(49-9) = 7,680 fewer than torchvision's.
    ("resnet18", 32, 11_173_962),
    ("resnet50", 32, 23_520_842),
    ("cnn7", 32, 360_106),
    ("vgg16_bn", 32, 15_253_578),
    # vgg16_bn without its 4,224 BatchNorms' gamma and beta (2 x 4,224 = 8,448)
    ("vgg16", 32, 15_245_130),
    # ImageNet-sized: torchvision's counts with a 10-class head, e.g. vgg16_bn's 138,365,992
    # at 1000 classes minus 990 * 4097.
    ("resnet18", 224, 11_181_642),
    ("resnet50", 224, 23_528_522),
    ("vgg16_bn", 224, 134_309_962),
    ("vgg16", 224, 134_301_514),
])
def test_parameter_counts(arch, px, expected):
    with torch.device("meta"):
        assert n_params(build_model(arch, 10, image_size=px)) == expected


def test_paper_sized_resnets():
    with torch.device("meta"):
        assert 0.26e6 < n_params(build_model("resnet20", 10)) < 0.28e6
        assert 0.84e6 < n_params(build_model("resnet56", 10)) < 0.87e6


def test_vgg16_is_torchvision_vgg16_at_imagenet_size():
    with torch.device("meta"):
        ours = build_model("vgg16", 10, image_size=224)
        ref = torchvision.models.vgg16(num_classes=10)
        assert n_params(ours) == n_params(ref)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_resnets_match_torchvision_at_imagenet_size(arch):
    with torch.device("meta"):
        ours = build_model(arch, 10, image_size=224)
        ref = getattr(torchvision.models, arch)(num_classes=10)
        assert n_params(ours) == n_params(ref)
        assert ours.conv1.kernel_size == (7, 7) and isinstance(ours.maxpool, nn.MaxPool2d)
        small = build_model(arch, 10, in_channels=1, image_size=64)
        assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
        assert small.conv1.in_channels == 1 and isinstance(small.maxpool, nn.Identity)


@pytest.mark.parametrize("arch,blocks,all_", [
    ("resnet20", 9, 10), ("resnet56", 27, 28), ("resnet18", 8, 9), ("resnet50", 16, 17),
    ("cnn7", 6, 7), ("vgg16_bn", 13, 15), ("vgg16", 13, 20)])
def test_probe_groups(arch, blocks, all_):
    with torch.device("meta"):
        model = build_model(arch, 10)
    groups = model.probe_groups()
    assert set(groups) == {"all", "blocks"}
    assert len(groups["blocks"]) == blocks and len(groups["all"]) == all_
    assert groups["all"] == list(model.probe_points())
    # "blocks" keeps forward order and is a subset of "all".
    assert groups["blocks"] == [n for n in groups["all"] if n in groups["blocks"]]
    modules = list(model.modules())
    assert all(m in modules for m in model.probe_points().values())


def test_resnet20_probe_shapes():
    model = build_model("resnet20", 10)
    shapes = probe_shapes(model, torch.randn(2, 3, 32, 32))
    assert shapes["stem"] == (16, 32, 32)
    assert all(shapes[f"layer1.{i}"] == (16, 32, 32) for i in range(3))
    assert all(shapes[f"layer2.{i}"] == (32, 16, 16) for i in range(3))
    assert all(shapes[f"layer3.{i}"] == (64, 8, 8) for i in range(3))
    # Block names are real module paths, so ablation hooks can find them.
    assert model.probe_points()["layer2.0"] is model.get_submodule("layer2.0")


def test_resnet_block_units_at_tiny_imagenet_and_imagenet_sizes():
    with torch.device("meta"):
        r50 = build_model("resnet50", 200, image_size=64)
        shapes = probe_shapes(r50, torch.empty(2, 3, 64, 64))
        blocks = r50.probe_groups()["blocks"]
        assert blocks[0] == "layer1.0" and blocks[-1] == "layer4.2"
        assert sum(shapes[b][0] for b in blocks) == 256 * 3 + 512 * 4 + 1024 * 6 + 2048 * 3 == 15_104
        assert shapes["stem"] == (64, 64, 64) and shapes["layer4.2"] == (2048, 8, 8)

        r18 = build_model("resnet18", 1000, image_size=224)
        shapes = probe_shapes(r18, torch.empty(2, 3, 224, 224))
        assert shapes["stem"] == (64, 112, 112) and shapes["layer1.0"] == (64, 56, 56)
        assert shapes["layer4.1"] == (512, 7, 7)


def test_cnn7_probe_shapes_follow_the_keras_model():
    shapes = probe_shapes(build_model("cnn7", 10), torch.randn(2, 3, 32, 32))
    # Unpadded 3x3 convs: 32 -> 30 -> 14 -> 12 -> 5 -> 3 -> 1.
    assert shapes == {"conv1": (32, 30, 30), "conv2": (32, 14, 14), "conv3": (64, 12, 12),
                      "conv4": (64, 5, 5), "conv5": (128, 3, 3), "conv6": (128, 1, 1),
                      "fc1": (512,)}


def test_cnn7_reads_units_before_batchnorm():
    model = build_model("cnn7", 10)
    order = [n for n, _ in model.named_children()]
    # Keras Conv2D(activation='relu') then BatchNormalization: the ReLU (probe) precedes BN.
    assert order[:3] == ["conv1", "relu1", "bn1"]
    assert model.probe_points()["conv1"] is model.relu1
    assert model.probe_points()["fc1"] is model.relu_fc1


def test_vgg16_bn_probe_shapes():
    shapes = probe_shapes(build_model("vgg16_bn", 10, in_channels=1, image_size=28),
                          torch.randn(2, 1, 28, 28))
    # ceil-mode pools: 28 -> 14 -> 7 -> 4 -> 2 -> 1.
    assert shapes["conv1_1"] == (64, 28, 28) and shapes["conv3_3"] == (256, 7, 7)
    assert shapes["conv5_3"] == (512, 2, 2)
    assert shapes["fc1"] == (512,) and shapes["fc2"] == (512,)
    with torch.device("meta"):
        big = build_model("vgg16_bn", 1000, image_size=224)
        shapes = probe_shapes(big, torch.empty(2, 3, 224, 224))
    assert shapes["conv5_3"] == (512, 14, 14) and shapes["fc1"] == (4096,)


def test_vgg16_probes_ukitas_layer_set():
    model = build_model("vgg16", 10, image_size=32)
    # grating_analysis.py, 'imagenet': block{s}_conv{i}, block{s}_pool, fc1, fc2, in order
    assert list(model.probe_points()) == [
        "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2",
        "conv3_1", "conv3_2", "conv3_3", "pool3", "conv4_1", "conv4_2", "conv4_3", "pool4",
        "conv5_1", "conv5_2", "conv5_3", "pool5", "fc1", "fc2"]
    shapes = probe_shapes(model, torch.randn(2, 3, 32, 32))
    assert shapes["conv1_2"] == (64, 32, 32) and shapes["pool1"] == (64, 16, 16)
    assert shapes["pool5"] == (512, 1, 1) and shapes["fc2"] == (512,)
    assert model.probe_points()["pool3"] is model.features.pool3
    assert model.ablation_points() == model.probe_points()


# --- where a unit is zeroed: what the next layer receives ---------------------------------

# Modules and functions that keep a unit in its own channel (or, for flatten, in its own block
# of features) on the way to the next conv/linear. BatchNorm is one of them: it keeps the
# channel but not a zero, which is exactly what the test must catch.
_CHANNELWISE = (nn.ReLU, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
                nn.AvgPool2d, nn.Identity, nn.Dropout, nn.Flatten)
_CHANNELWISE_CALLS = {"flatten", "view", "reshape", "relu", torch.flatten, F.relu}


class _Leaf(fx.Tracer):
    def __init__(self, leaf):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m, qualname):
        return m is self.leaf or super().is_leaf_module(m, qualname)


def next_layers(model: nn.Module, module: nn.Module) -> list[nn.Module]:
    """The conv/linear modules whose input carries ``module``'s output channels unmixed:
    reached from it through channel-wise ops only (a skip addition ends the walk)."""
    graph = _Leaf(module).trace(model)
    path = next(n for n, m in model.named_modules() if m is module)
    start = next(n for n in graph.nodes if n.op == "call_module" and n.target == path)
    found, todo = [], list(start.users)
    while todo:
        node = todo.pop()
        if node.op == "call_module":
            m = model.get_submodule(node.target)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                found.append(m)
                continue
            if not isinstance(m, _CHANNELWISE):
                continue
        elif node.op in ("call_method", "call_function"):
            if node.target in (operator.add, operator.iadd, torch.add):
                continue
            if node.target not in _CHANNELWISE_CALLS and getattr(node.target, "__name__", "") \
                    not in _CHANNELWISE_CALLS:
                raise AssertionError(f"unexpected op {node.target} after {path}")
        else:
            continue
        todo.extend(node.users)
    return found


def _assert_channels_zero(inp: torch.Tensor, out_shape, units, where: str):
    """``inp`` (a next layer's input) holds ``units`` of a tensor of ``out_shape`` [N, C, ...]
    exactly zero, and some other channel non-zero (else the check proves nothing)."""
    per_unit = inp.reshape(inp.shape[0], out_shape[1], -1) if inp.dim() == 2 else inp
    keep = [c for c in range(out_shape[1]) if c not in units]
    assert per_unit[:, units].abs().max().item() == 0, where
    assert per_unit[:, keep].abs().max().item() > 0, where


ZERO_CASES = [("resnet20", 8), ("resnet56", 8), ("resnet18", 8), ("resnet50", 8),
              ("resnet18", 224), ("cnn7", 32), ("vgg16_bn", 8), ("vgg16", 8)]


@pytest.mark.parametrize("arch,px", ZERO_CASES)
def test_an_ablated_unit_reaches_the_next_layer_as_exactly_zero(arch, px):
    """For every probed layer of every architecture: zero units 0 and C-1 where the analyses
    ablate them (``probes.ablation_layer``), and read the input of each next conv/linear
    with a forward pre-hook, through the ablation hook (the naive method) and through the
    split network (the fast method, at the first and the last layer). Layers are ablated
    in two passes, even- then odd-numbered, so that no ablated layer (a VGG pool) sits
    between another one and its next layer."""
    torch.manual_seed(0)
    model = randomise_bn(build_model(arch, 10, image_size=px))
    x = torch.randn(1, 3, px, px)
    names = list(model.probe_points())
    if px == 224:
        names = names[:2]  # the stem (through the max-pool) and one block: that is what differs
    points = {n: ablation_layer(model, n) for n in names}
    shapes = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, o.shape))
             for n, (_, m) in points.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    units = {n: [0, shapes[n][1] - 1] for n in names}
    receivers = {n: next_layers(model, m) for n, (_, m) in points.items()}
    assert all(receivers.values()), f"{arch}: a layer without a next layer"
    seen: list[str] = []

    def checker(n):
        def check(_m, inp):
            seen.append(n)
            _assert_channels_zero(inp[0], shapes[n], units[n], f"{arch} {n} -> {points[n][0]}")
        return check

    for parity in (0, 1):
        group = names[parity::2]
        hooks = [r.register_forward_pre_hook(checker(n)) for n in group for r in receivers[n]]
        try:
            with contextlib.ExitStack() as stack, torch.no_grad():
                for n in group:
                    stack.enter_context(ablate(points[n][1], units[n]))
                model(x)
        finally:
            for h in hooks:
                h.remove()
    assert sorted(seen) == sorted(n for n in names for _ in receivers[n])

    seen.clear()
    for n in (names[0], names[-1]):
        head, tail = split_at(model, points[n][0])
        hooks = [r.register_forward_pre_hook(checker(n)) for r in receivers[n]]
        try:
            with torch.no_grad():
                h = head(x)
                h[:, units[n]] = 0
                tail(h)
        finally:
            for hk in hooks:
                hk.remove()
    assert sorted(seen) == sorted(n for n in (names[0], names[-1]) for _ in receivers[n])


def test_cnn7_ablates_batchnorm_outputs_as_ukita():
    model = randomise_bn(build_model("cnn7", 10))
    assert {n: p for n, p in model._ablation_paths.items()} == {
        **{f"conv{i}": f"bn{i}" for i in range(1, 7)}, "fc1": "bn_fc1"}
    assert ablation_layer(model, "conv3") == ("bn3", model.bn3)
    assert ablation_layer(model, "relu3") == ("bn3", model.bn3)  # the probe's module path too
    assert ablation_layer(model, "bn3") == ("bn3", model.bn3)
    # What zeroing at the ReLU would send on: BN's constant beta - gamma mu / sigma.
    seen = {}
    model.conv2.register_forward_pre_hook(lambda _m, inp: seen.__setitem__("x", inp[0]))
    with ablate(model.relu1, [0]), torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    bn = model.bn1
    const = (bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps))[0]
    torch.testing.assert_close(seen["x"][:, 0], const.expand_as(seen["x"][:, 0]))
    assert abs(const.item()) > 0.1


def test_unknown_arch_suggests_the_close_name():
    with pytest.raises(ValueError, match=r"unknown model 'resnet2' \(did you mean 'resnet20'\?\)"):
        build_model("resnet2", 10)
    with pytest.raises(ConfigError, match="choose one of: resnet20, resnet56"):
        build_model("transformer", 10)


def test_cnn7_refuses_fashion_mnist_size():
    # 28 -> 26 -> 12 -> 10 -> 4 -> 2, and a 3x3 conv cannot run on 2x2.
    with pytest.raises(ValueError, match="at least 29 px.*32 px"):
        build_model("cnn7", 10, in_channels=1, image_size=28)
    assert build_model("cnn7", 10, image_size=29)(torch.randn(2, 3, 29, 29)).shape == (2, 10)


def _dropouts(model):
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


@pytest.mark.parametrize("arch,px,own,places", [
    ("vgg16", 32, 0, ["classifier.drop1", "classifier.drop2"]),
    ("vgg16_bn", 32, 0, ["classifier.drop1", "classifier.drop2"]),
    ("cnn7", 32, 0, ["drop_fc1"]),
])
def test_dropout_goes_after_the_hidden_fc_layers_and_is_off_in_eval(arch, px, own, places):
    assert len(_dropouts(build_model(arch, 10, image_size=px))) == own  # the small heads: none
    model = build_model(arch, 10, image_size=px, dropout=0.5)
    found = [n for n, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert found == places and {m.p for m in _dropouts(model)} == {0.5}
    assert len(_dropouts(build_model(arch, 10, image_size=px, dropout=0.0))) == 0
    # Train: dropout on (two passes differ; a zeroed fraction near p of fc1's output);
    # eval: off (two passes equal bit for bit).
    x = torch.randn(8, 3, px, px)
    torch.manual_seed(0)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)
    drop = model.get_submodule(places[0])
    seen = {}
    h = drop.register_forward_hook(lambda m, i, o: seen.update(i=i[0], o=o))
    model(x)
    h.remove()
    live = seen["i"] != 0
    zeroed = ((seen["o"] == 0) & live).sum().item() / live.sum().item()
    assert 0.4 < zeroed < 0.6, zeroed
    model.eval()
    assert torch.equal(model(x), model(x))


def test_dropout_keeps_the_large_vgg_head_as_torchvision_unless_set():
    assert [m.p for m in _dropouts(build_model("vgg16_bn", 10, image_size=224))] == [0.5, 0.5]
    assert [m.p for m in _dropouts(build_model("vgg16_bn", 10, image_size=224,
                                               dropout=0.2))] == [0.2, 0.2]
    assert _dropouts(build_model("vgg16_bn", 10, image_size=224, dropout=0.0)) == []
    with pytest.raises(ConfigError, match="dropout applies to vgg16, vgg16_bn, cnn7, not resnet20"):
        build_model("resnet20", 10, dropout=0.5)


def test_the_bn_dropout_search_is_the_2x2_comparison():
    import os

    from helpers import REPO
    from seltrain.tuning.recipe import enumerate_trials, load_search, trial_config

    recipe, base = load_search(os.path.join(REPO, "tune/bn_dropout.yaml"))
    points = {(t["model.arch"], t["model.dropout"]) for t in enumerate_trials(recipe)}
    assert points == {("vgg16", 0.0), ("vgg16", 0.5), ("vgg16_bn", 0.0), ("vgg16_bn", 0.5)}
    for arch, p in sorted(points):
        cfg = trial_config(base, {"model.arch": arch, "model.dropout": p, "train.seed": 0})
        model = build_model(cfg.model.arch, 10, image_size=32, dropout=cfg.model.dropout)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert (n_bn, len(_dropouts(model))) == (13 if arch == "vgg16_bn" else 0,
                                                 2 if p else 0)
        assert cfg.selectivity.alpha == 0.0


# Side of each stage's maps at Tiny ImageNet's 64 px: stem (its ReLU), layer1 ... layer4.
STEM_SIDES = {"cifar": (64, 64, 32, 16, 8), "nomaxpool": (32, 32, 16, 8, 4),
              "imagenet": (32, 16, 8, 4, 2)}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stem", list(STEM_SIDES) + ["auto"])
def test_each_stem_gives_its_spatial_size_per_stage(arch, stem):
    with torch.device("meta"):
        model = build_model(arch, 200, image_size=64, stem=stem)
        shapes = probe_shapes(model, torch.empty(2, 3, 64, 64))
    last = {"resnet18": ("layer1.1", "layer2.1", "layer3.1", "layer4.1"),
            "resnet50": ("layer1.2", "layer2.3", "layer3.5", "layer4.2")}[arch]
    sides = tuple(shapes[k][1] for k in ("stem", *last))
    assert sides == STEM_SIDES["cifar" if stem == "auto" else stem]  # auto at 64 px: cifar
    assert all(shapes[k][1] == shapes[k][2] for k in shapes)
    conv = model.conv1
    assert (conv.kernel_size, conv.stride) == (((3, 3), (1, 1)) if stem in ("cifar", "auto")
                                               else ((7, 7), (2, 2)))
    assert isinstance(model.maxpool, nn.MaxPool2d) == (stem == "imagenet")


def test_the_imagenet_stem_is_torchvisions_and_auto_picks_it_above_96_px():
    ours = build_model("resnet18", 1000, image_size=64, stem="imagenet")
    ref = torchvision.models.resnet18()
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    assert isinstance(build_model("resnet50", 10, image_size=97).maxpool, nn.MaxPool2d)
    assert isinstance(build_model("resnet50", 10, image_size=96).maxpool, nn.Identity)
    with pytest.raises(ConfigError, match="the stem applies to resnet18, resnet50, not cnn7"):
        build_model("cnn7", 10, stem="cifar")


def test_the_tiny_imagenet_recipes_keep_the_7x7_conv_and_drop_the_max_pool():
    import os

    from helpers import REPO
    from seltrain.config import load_config

    for arch in ("resnet18", "resnet50"):
        cfg = load_config(os.path.join(REPO, f"configs/tinyimagenet_{arch}.yaml"))
        assert (cfg.model.arch, cfg.model.stem) == (arch, "nomaxpool")
    assert load_config(None).model.stem == "auto"
