"""Models: shapes, parameter counts, probe points and groups, and the errors users see.

Real forward and backward passes on CPU at batch 2; the ImageNet-sized variants are built on
the meta device, which runs shape inference without allocating or computing anything.
"""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

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
    # ImageNet-sized: torchvision's counts with a 10-class head, e.g. vgg16_bn's 138,365,992
    # at 1000 classes minus 990 * 4097.
    ("resnet18", 224, 11_181_642),
    ("resnet50", 224, 23_528_522),
    ("vgg16_bn", 224, 134_309_962),
])
def test_parameter_counts(arch, px, expected):
    with torch.device("meta"):
        assert n_params(build_model(arch, 10, image_size=px)) == expected


def test_paper_sized_resnets():
    with torch.device("meta"):
        assert 0.26e6 < n_params(build_model("resnet20", 10)) < 0.28e6
        assert 0.84e6 < n_params(build_model("resnet56", 10)) < 0.87e6


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
    ("cnn7", 6, 7), ("vgg16_bn", 13, 15)])
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
