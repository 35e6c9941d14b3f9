"""Input gradients of unit activations and their variability (seltrain/analysis/gradients.py):
known answers on linear, ReLU and conv layers, and the batched computation against the
naive per-image, per-unit loop on real seltrain models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seltrain.probes import LayerError
from seltrain.analysis.gradients import (gradient_variability, unit_input_gradients,
                                         unit_input_gradients_naive)
from seltrain.models import build_model


def pairwise_direction(vectors: np.ndarray) -> float:
    """1 - mean cosine over ordered pairs i != j of the non-zero rows, the slow way."""
    v = vectors[np.linalg.norm(vectors, axis=1) > 0]
    if len(v) < 2:
        return float("nan")
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = [v[i] @ v[j] for i in range(len(v)) for j in range(len(v)) if i != j]
    return 1 - float(np.mean(cos))


def cv(x: np.ndarray) -> float:
    return float(x.std() / x.mean()) if x.mean() > 0 else float("nan")


def test_linear_layer_input_gradients_are_its_weight_rows():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(6, 5)).double()
    x = torch.randn(12, 6, dtype=torch.float64)
    w = lin[0].weight.detach().numpy()
    g = unit_input_gradients(lin, "0", x, unit_block=2)
    assert g.shape == (5, 12, 6)
    np.testing.assert_array_equal(g.numpy(), np.broadcast_to(w[:, None, :], (5, 12, 6)))

    r = gradient_variability(lin, ["0"], x, batch_size=5, unit_block=3)["0"]
    a, b = r["across_samples"], r["across_units"]
    # every image has the same gradient for a unit: no variability across images at all
    np.testing.assert_allclose(a["direction"], 0, atol=1e-12)
    np.testing.assert_allclose(a["norm_cv"], 0, atol=1e-15)
    np.testing.assert_array_equal(a["zero_fraction"], 0)
    np.testing.assert_allclose(a["mean_norm"], np.linalg.norm(w, axis=1), rtol=1e-12)
    # across units, every image sees the weight rows: 1 - their mean pairwise cosine
    want = pairwise_direction(w)
    assert 0.5 < want < 1.5
    np.testing.assert_allclose(b["direction"], want, rtol=1e-10)
    np.testing.assert_allclose(b["norm_cv"], cv(np.linalg.norm(w, axis=1)), rtol=1e-12)
    assert r["n_samples"] == 12 and list(r["units"]) == [0, 1, 2, 3, 4]
    assert r["means"]["across_units_direction"] == pytest.approx(want, rel=1e-10)

    # orthogonal rows of equal norm: direction exactly 1 across units, CV 0
    with torch.no_grad():
        lin[0].weight.copy_(3 * torch.eye(6, dtype=torch.float64)[:5])
    r = gradient_variability(lin, "0", x)["0"]
    np.testing.assert_allclose(r["across_units"]["direction"], 1.0, atol=1e-12)
    np.testing.assert_allclose(r["across_units"]["norm_cv"], 0.0, atol=1e-12)
    np.testing.assert_allclose(r["across_samples"]["mean_norm"], 3.0, rtol=1e-12)


def test_relu_units_silent_on_a_known_share_of_images():
    # relu(w_u . x + b_u): the gradient is w_u where the unit is on and exactly 0 where it is
    # off, so across images the direction never varies and the norm CV is sqrt((1 - p) / p)
    # for a unit on a share p of the images.
    w = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU()).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(w))
        model[0].bias.copy_(torch.tensor([0.0, -1.0, 0.0]))
    x = torch.tensor([[1.0, 1.0], [2.0, 0.2], [0.5, 3.0], [-1.0, 2.0], [-2.0, 0.1],
                      [-1.5, -2.0], [-0.5, 0.9], [-0.3, -0.1]], dtype=torch.float64)
    on = (x.numpy() @ w.T + [0.0, -1.0, 0.0]) > 0
    assert on.sum(0).tolist() == [3, 4, 5]  # units on for 3/8, 4/8 and 5/8 of the images
    r = gradient_variability(model, "1", x, batch_size=3, unit_block=2)["1"]
    a, b = r["across_samples"], r["across_units"]
    np.testing.assert_allclose(a["direction"], 0, atol=1e-12)
    np.testing.assert_allclose(a["norm_cv"], [np.sqrt(5 / 3), 1.0, np.sqrt(3 / 5)], rtol=1e-12)
    np.testing.assert_array_equal(a["zero_fraction"], [5 / 8, 4 / 8, 3 / 8])
    norms = on * np.linalg.norm(w, axis=1)  # [N, U]
    for n in range(len(x)):
        want = pairwise_direction(on[n][:, None] * w)
        if np.isnan(want):  # fewer than two units on: undefined
            assert np.isnan(b["direction"][n])
        else:
            assert b["direction"][n] == pytest.approx(want, rel=1e-10, abs=1e-12)
        assert b["zero_fraction"][n] == pytest.approx(1 - on[n].mean())
    np.testing.assert_allclose(b["norm_cv"], [cv(v) for v in norms], rtol=1e-12)
    # image 0 has all three on: w rows at 90, 45 and 45 degrees -> mean cosine (0+2c+2c)/6
    c = np.cos(np.pi / 4)
    assert b["direction"][0] == pytest.approx(1 - 4 * c / 6, rel=1e-12)
    assert np.isnan(b["direction"][5])  # image 5: every unit off
    assert np.isnan(b["norm_cv"][5])


def test_conv_spatial_mean_gradient_in_pixel_units():
    # a unit's activation is the spatial mean of its map, so for a 1x1 conv its gradient is
    # the kernel weight of each input channel divided by H * W, at every pixel; in pixel
    # units (the net sees (pixel - mean) / std) it is divided by the channel's std too.
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 3, 1)).double()
    x = torch.randn(4, 2, 4, 5, dtype=torch.float64)
    w = conv[0].weight.detach()[:, :, 0, 0]  # [3, 2]
    std = (0.5, 0.25)
    g = unit_input_gradients(conv, "0", x, std=std)
    want = (w / 20 / torch.tensor(std, dtype=torch.float64))[:, None, :, None, None]
    torch.testing.assert_close(g, want.expand(3, 4, 2, 4, 5), rtol=0, atol=1e-15)
    torch.testing.assert_close(unit_input_gradients(conv, "0", x, units=[2]),
                               (w[2] / 20)[None, None, :, None, None].expand(1, 4, 2, 4, 5),
                               rtol=0, atol=1e-15)
    r = gradient_variability(conv, "0", x, std=std)["0"]
    np.testing.assert_allclose(r["across_samples"]["mean_norm"],
                               (want[:, 0].flatten(1).norm(dim=1) * np.sqrt(20)).numpy(),
                               rtol=1e-12)


def _random_bn(model: nn.Module) -> nn.Module:
    # trained-looking BatchNorm statistics, so eval mode is not the identity
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("arch,px,layer,units", [("resnet20", 12, "layer1.0", None),
                                                 ("resnet20", 12, "layer2.1", [0, 5, 17, 31]),
                                                 ("cnn7", 32, "conv2", [1, 2, 30])])
def test_batched_gradients_equal_the_naive_loop(arch, px, layer, units):
    torch.manual_seed(0)
    model = _random_bn(build_model(arch, 10, 3, px)).double()
    x = torch.randn(5, 3, px, px, dtype=torch.float64)
    fast = unit_input_gradients(model, layer, x, units, unit_block=3, std=(0.2, 0.3, 0.4))
    slow = unit_input_gradients_naive(model, layer, x, units, std=(0.2, 0.3, 0.4))
    assert fast.shape == slow.shape and slow.abs().max() > 0
    assert (fast - slow).abs().max() <= 1e-12 * slow.abs().max()
    # and in float32, as the CLI runs: each (unit, image) gradient within 1e-6 of the largest
    # entry, but for the rare pair where a pre-activation within rounding of 0 flips a ReLU
    # between the batched and the one-image convolution (then a whole receptive field differs)
    m32, x32 = model.float(), x.float()
    fast32 = unit_input_gradients(m32, layer, x32, units, unit_block=4)
    slow32 = unit_input_gradients_naive(m32, layer, x32, units)
    pair_diff = ((fast32 - slow32).abs() / slow32.abs().max()).flatten(2).amax(2)
    assert (pair_diff > 1e-6).sum() <= 1, pair_diff.max()


def test_streamed_statistics_equal_the_definitions_on_a_resnet():
    # batches of 2 images and blocks of 3 units, a random subset of units: the running sums
    # must give what the definitions give on the full gradient tensor
    torch.manual_seed(0)
    model = _random_bn(build_model("resnet20", 10, 3, 12)).double()
    x, y = torch.randn(7, 3, 12, 12, dtype=torch.float64), torch.arange(7) % 3
    r = gradient_variability(model, ["layer2.0"], x, y, batch_size=2, unit_block=3,
                             max_units=10, seed=3)["layer2.0"]
    units = r["units"]
    assert len(units) == 10 and np.all(np.diff(units) > 0) and units.max() < 32
    assert r["labels"].tolist() == y.tolist()
    g = unit_input_gradients_naive(model, "layer2.0", x, units).flatten(2).numpy()  # [U, N, P]
    norms = np.linalg.norm(g, axis=2)
    a, b = r["across_samples"], r["across_units"]
    np.testing.assert_allclose(a["direction"], [pairwise_direction(gu) for gu in g], rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(b["direction"], [pairwise_direction(g[:, n])
                                                for n in range(7)], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a["norm_cv"], [cv(v) for v in norms], rtol=1e-9)
    np.testing.assert_allclose(b["norm_cv"], [cv(v) for v in norms.T], rtol=1e-9)
    np.testing.assert_array_equal(a["zero_fraction"], (norms == 0).mean(1))
    assert r["means"]["across_samples_direction"] == pytest.approx(np.nanmean(a["direction"]))
    # max_samples cuts the stream
    assert gradient_variability(model, "layer2.0", x, max_samples=3,
                                batch_size=2)["layer2.0"]["n_samples"] == 3


def test_layer_that_runs_twice_is_refused():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    with pytest.raises(LayerError, match="runs 2 times"):
        gradient_variability(model, "1", torch.randn(4, 3))
