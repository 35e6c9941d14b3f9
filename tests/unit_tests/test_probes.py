"""Reading units (seltrain/probes.py): one Probe for training and analyses, layers named as
given, and captures that keep only what was asked for."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from seltrain.models import build_model
from seltrain.probes import (LayerError, Probe, layer_outputs, resolve_layers,
                             unit_activation)


def _resnet20():
    torch.manual_seed(0)
    return build_model("resnet20", 10, 3, 16).eval()


def test_capturing_one_layer_keeps_no_other_feature_map():
    """Hooks on every probed layer watch each output tensor through a weak reference: once a
    batch is handed over, none of them is alive but what was asked for."""
    model = _resnet20()
    x = torch.randn(32, 3, 16, 16)
    points = model.probe_points()
    watched: dict[str, list] = {n: [] for n in points}
    handles = [m.register_forward_hook(
        lambda _m, _i, out, n=n: watched[n].append(weakref.ref(out))) for n, m in points.items()]
    try:
        for reduce in (unit_activation, None):
            for n in watched:
                watched[n].clear()
            (outs, _, _), = layer_outputs(model, ["layer1.0"], x, reduce=reduce, batch_size=32)
            gc.collect()
            alive = {n for n, refs in watched.items() if any(r() is not None for r in refs)}
            assert len(watched["layer3.2"]) == 1  # every layer ran, once
            assert list(outs) == ["layer1.0"]
            if reduce is unit_activation:
                assert alive == set(), alive  # not even layer1.0's own 16 x 16 x 16 maps
                assert outs["layer1.0"].shape == (32, 16)
                assert outs["layer1.0"].nbytes == 32 * 16 * 4
            else:
                assert alive == {"layer1.0"}, alive
                assert outs["layer1.0"].nbytes == 32 * 16 * 16 * 16 * 4
            del outs
    finally:
        for h in handles:
            h.remove()


def test_the_analyses_read_units_as_training_does():
    """layer_outputs(reduce=unit_activation) and the trainer's Probe give the same numbers."""
    model = _resnet20()
    x = torch.randn(8, 3, 16, 16)
    names = resolve_layers(model, "blocks")
    probe = Probe(model, names)
    with probe.active(), torch.no_grad():
        model(x)
        trained = dict(zip(names, probe.pop()))
    (analysed, _, _), = layer_outputs(model, names, x, reduce=unit_activation)
    assert list(analysed) == names and len(names) == 9
    for n in names:
        assert torch.equal(analysed[n], trained[n]), n


def test_probe_says_whether_it_is_attached_and_pauses():
    model = _resnet20()
    probe = Probe(model, ["layer1.0"])
    assert not probe.attached
    probe.attach()
    assert probe.attached
    with probe.paused():
        assert not probe.attached
        model(torch.zeros(1, 3, 16, 16))
        assert probe.acts == {}  # nothing read while paused
    assert probe.attached
    probe.detach()
    with probe.paused():
        pass
    assert not probe.attached


def test_layer_names_and_groups():
    model = _resnet20()
    assert resolve_layers(model, "blocks")[0] == "layer1.0"
    assert resolve_layers(model, ["stem,layer1.0", "layer1.0"]) == ["stem", "layer1.0"]
    # module paths only where analyses ask for them (--layers)
    assert resolve_layers(model, ["layer3.2.conv1"], any_module=True) == ["layer3.2.conv1"]
    with pytest.raises(LayerError, match="selectivity.layers: no layer 'layer3.2.conv1'"):
        resolve_layers(model, ["layer3.2.conv1"])
    with pytest.raises(LayerError, match=r"no layer 'layer9\.9'.*did you mean"):
        resolve_layers(model, ["layer9.9"], option="--layers", any_module=True)
    with pytest.raises(LayerError, match="runs? exactly once"):
        relu_twice = torch.nn.Sequential(torch.nn.ReLU())
        relu_twice.forward = lambda x: relu_twice[0](relu_twice[0](x))
        list(layer_outputs(relu_twice, ["0"], torch.zeros(2, 3)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_unit_activation_gradient_is_the_autograd_one_cast_before_expanding(dtype):
    """unit_activation's own backward (cast the [N, C] gradient, then expand) gives autograd's
    gradient of the plain float32 sum over H, W divided by H * W (expand, then cast), bit for
    bit, and hands the feature map a view of [N, C] numbers: nothing of [N, C, H, W] is
    written."""
    g = torch.Generator().manual_seed(0)
    fmap = (torch.randn(6, 5, 7, 3, generator=g) * 3).to(dtype)
    upstream = torch.randn(6, 5, generator=g)
    a = fmap.clone().requires_grad_()
    b = fmap.clone().requires_grad_()
    mine = unit_activation(a)
    ref = b.sum(dim=(2, 3), dtype=torch.float32) / 21
    assert mine.dtype == ref.dtype == torch.float32
    assert torch.equal(mine, ref)
    (grad_mine,) = torch.autograd.grad(mine, a, upstream)
    (grad_ref,) = torch.autograd.grad(ref, b, upstream)
    assert grad_mine.dtype == grad_ref.dtype == dtype
    assert torch.equal(grad_mine, grad_ref)
    assert grad_ref.abs().min() > 0
    assert grad_mine.stride()[2:] == (0, 0)  # an expanded view of the [N, C] gradient


def test_unit_activation_gradcheck_in_float64():
    x = torch.rand(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unit_activation, (x,))
