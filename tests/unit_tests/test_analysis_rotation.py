"""Random rotation of a layer's basis (seltrain/analysis/rotation.py): the rotated network is
the original function, a rotation by the identity gives exactly the unit axes' drops, a
rotated direction's ablation is the projection of that direction out of the layer, and a
layer whose next layer is not linear in it is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fixtures_models import TinyCifarResNet, chain_net, randomise_bn_02
from seltrain.analysis.ablation import single_unit_ablation
from seltrain.analysis.rotation import RotationError, random_orthogonal, rotate_layer
from seltrain.errors import ConfigError
from seltrain.models import build_model

# float32 networks with float64-orthogonal Q rounded to float32: the rotated logits match
# the original to this fraction of the logits' largest magnitude
REL_TOL = 1e-5


def labelled(model: nn.Module, n: int = 48, size: int = 8, seed: int = 0):
    """Random images and labels mostly the model's own (so drops are not all zero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        fc.bias -= model(x).mean(0)
        y = model(x).argmax(1)
    noise = torch.rand(n, generator=g) < 0.3
    return x, torch.where(noise, torch.randint(0, 10, (n,), generator=g), y)


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_random_orthogonal_is_orthogonal_and_seeded():
    q = random_orthogonal(16, 3)
    assert q.dtype == torch.float64
    torch.testing.assert_close(q.T @ q, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-13)
    assert torch.equal(q, random_orthogonal(16, 3)) and not torch.equal(q, random_orthogonal(16, 4))
    # Haar: the sign fix leaves no bias to a positive diagonal (a plain QR's R>0 convention
    # would); over 400 draws of 2x2 the mean of q[0, 0] is near 0
    g = torch.Generator().manual_seed(0)
    mean = float(torch.stack([random_orthogonal(2, g)[0, 0] for _ in range(400)]).mean())
    assert abs(mean) < 0.1


@pytest.mark.parametrize("make,layer,size", [
    (chain_net, "2", 8),            # post-ReLU -> conv
    (chain_net, "11", 8),           # post-ReLU -> linear
    (lambda: randomise_bn_02(TinyCifarResNet()), "layer2.1", 8),  # last block -> pool -> fc
    (lambda: randomise_bn_02(build_model("cnn7", 10, 3, 32)), "conv3", 32),  # BN -> conv
    (lambda: randomise_bn_02(build_model("cnn7", 10, 3, 32)), "conv6", 32),  # BN -> flat -> fc
])
def test_the_rotated_network_computes_the_original_logits(make, layer, size):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(20, 3, size, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rotated = rotate_layer(model, layer, x, seed=5)
    with torch.no_grad():
        ref, got = model(x), rotated(x)
    assert _rel_diff(got, ref) < REL_TOL
    # the original network is untouched (the fold rewrote a copy)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # and the rotation is not the identity: the rotated layer's coordinates differ
    q = rotated.rotation.q
    assert (q - torch.eye(len(q))).abs().max() > 0.1


def test_identity_rotation_gives_exactly_the_unit_axes_drops():
    model = chain_net().eval()
    x, y = labelled(model, seed=1)
    for layer in ("2", "5"):
        axes = single_unit_ablation(model, layer, x, y, batch_size=16)
        units = axes["class_drops"].shape[0]
        same = rotate_layer(model, layer, x, q=torch.eye(units, dtype=torch.float64))
        rot = single_unit_ablation(same, "rotation", x, y, batch_size=16)
        assert rot["method"] == axes["method"] == "fast"
        for key in ("ablated_acc", "class_drops", "max_class_drop", "overall_drop"):
            np.testing.assert_array_equal(rot[key], axes[key])
        assert rot["baseline_acc"] == axes["baseline_acc"]
        assert np.nanmax(axes["max_class_drop"]) > 0  # the comparison is not of zeros


def test_ablating_a_rotated_direction_projects_it_out():
    # zeroing z_j of z = Q^T h, then W Q z = W (h - q_j q_j^T h): the original network with
    # the direction q_j removed from the layer's output at every position
    model = chain_net().eval()
    x = torch.randn(12, 3, 8, 8)
    rotated = rotate_layer(model, "5", x, seed=2)
    q = rotated.rotation.q
    j = 3

    def project_out(_m, _i, out):
        qj = q[:, j].view(1, -1, 1, 1)
        return out - qj * (out * qj).sum(1, keepdim=True)

    zero_j = rotated.rotation.register_forward_hook(
        lambda _m, _i, z: z.index_fill(1, torch.tensor([j]), 0.0))
    handle = model[5].register_forward_hook(project_out)
    with torch.no_grad():
        got, ref = rotated(x), model(x)
    zero_j.remove(), handle.remove()
    assert _rel_diff(got, ref) < REL_TOL
    with torch.no_grad():
        assert _rel_diff(model(x), ref) > 1e-3  # the projection changed the logits


@pytest.mark.parametrize("make,layer,message", [
    (chain_net, "7", r"cannot rotate '7': the next layer is not linear in its units: '8' "
                     r"\(MaxPool2d\) comes first"),
    (chain_net, "0", r"'1' \(BatchNorm2d\) comes first"),
    (chain_net, "3", r"'4' \(BatchNorm2d\) comes first"),
    (lambda: TinyCifarResNet(), "layer1.0",
     r"cannot rotate 'layer1.0': its output feeds 2 operations \(.*a residual addition\?\)"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 6 * 6, 10)), "1",
     r"cannot rotate into 'Linear' with 144 inputs: the layer has 4 units"),
])
def test_a_layer_whose_next_layer_is_not_linear_in_it_is_refused(make, layer, message):
    model = make().eval()
    with pytest.raises(RotationError, match=message) as e:
        rotate_layer(model, layer, torch.randn(2, 3, 8, 8))
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
    assert "rotate a layer whose output goes straight into one conv or linear layer" \
        in str(e.value)


def test_torchvision_resnet_last_stage():
    from torchvision.models.resnet import BasicBlock as TvBlock, ResNet

    torch.manual_seed(2)
    model = randomise_bn_02(ResNet(TvBlock, [1, 1, 1, 1], num_classes=10), seed=2).eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert _rel_diff(rotate_layer(model, "layer4", x, seed=0)(x), model(x)) < REL_TOL
    with pytest.raises(RotationError, match="feeds 2 operations"):
        rotate_layer(model, "layer3", x)  # layer4.0 reads it twice (conv1 and downsample)


@pytest.mark.parametrize("make,layer", [(chain_net, "7"), (lambda: TinyCifarResNet(), "layer1.0")])
def test_an_inverse_module_rotates_any_layer(make, layer):
    # max pooling next, or a residual block: refused by the fold, undone by h = Q z instead
    model = randomise_bn_02(make()).eval()
    x, y = labelled(model, n=32, seed=3)
    with torch.no_grad():
        ref = model(x)
        assert _rel_diff(rotate_layer(model, layer, x, seed=1, undo="inverse")(x), ref) < REL_TOL
    axes = single_unit_ablation(model, layer, x, y, batch_size=16)
    units = axes["class_drops"].shape[0]
    same = rotate_layer(model, layer, x, q=torch.eye(units, dtype=torch.float64), undo="inverse")
    rot = single_unit_ablation(same, "rotation", x, y, batch_size=16)
    np.testing.assert_array_equal(rot["class_drops"], axes["class_drops"])
