"""Orientation selectivity (seltrain/analysis/orientation.py): gratings, OSI/gOSI of
hand-made filters, the gOSI split ablation and shift-invariance, with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seltrain.analysis.orientation import (fraction_selective, gosi, gosi_split_ablation,
                                           grating_parameters, gratings, orientation_tuning,
                                           osi, preferred_orientation, shift_images,
                                           shift_invariance, stimuli)


def _coords(size: int):
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return t[None, :], -t[:, None]  # x right, y up: the convention of gratings()


def gabor(theta_deg: float, period: float, sigma: float, size: int = 17) -> torch.Tensor:
    """A Gabor whose carrier varies along theta, minus its mean (blind to uniform light)."""
    x, y = _coords(size)
    th = math.radians(theta_deg)
    k = torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2)) \
        * torch.cos(2 * math.pi * (x * math.cos(th) + y * math.sin(th)) / period)
    return (k - k.mean()).float()


def centre_surround(size: int = 15, s1: float = 1.0, s2: float = 2.0) -> torch.Tensor:
    x, y = _coords(size)
    r2 = x ** 2 + y ** 2
    k = torch.exp(-r2 / (2 * s1 ** 2)) / s1 ** 2 - torch.exp(-r2 / (2 * s2 ** 2)) / s2 ** 2
    return (k - k.mean()).float()


class OneFilter(nn.Module):
    """One conv unit with a given kernel, then ReLU (the probed layer)."""

    def __init__(self, kernel: torch.Tensor):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel.shape[-1], bias=False)
        self.conv.weight.data[0, 0] = kernel
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


def test_gratings_shape_range_and_orientation_convention():
    g = gratings(32)
    assert g.shape == (12, 4, 9, 1, 32, 32) and g.dtype == torch.float32
    assert g.min() >= 0 and g.max() <= 1
    p = grating_parameters(32)
    np.testing.assert_allclose(p["orientations_deg"], np.arange(12) * 15)
    np.testing.assert_allclose(p["phases_deg"], [0, 90, 180, 270])
    assert p["periods_px"][0] == pytest.approx(40) and p["periods_px"][-1] == pytest.approx(4.4)
    assert grating_parameters(64)["periods_px"][0] == pytest.approx(80)  # scales with size
    # theta = 0: vertical stripes (constant down each column); 90: horizontal stripes
    assert torch.allclose(g[0, :, :, 0], g[0, :, :, 0, :1, :].expand_as(g[0, :, :, 0]))
    assert torch.allclose(g[6, :, :, 0], g[6, :, :, 0, :, :1].expand_as(g[6, :, :, 0]))
    # phases 0 and 180 are contrast-reversed
    torch.testing.assert_close(g[:, 0] + g[:, 2], torch.ones_like(g[:, 0]))


def test_stimuli_are_copied_to_channels_and_normalised():
    s = stimuli(16, 3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    g = gratings(16)[..., 0, :, :]
    assert s.shape == (12, 4, 9, 3, 16, 16)
    torch.testing.assert_close(s[..., 1, :, :], (g - 0.5) / 0.25)
    torch.testing.assert_close(s[..., 2, :, :], (g - 0.6) / 0.3)


@pytest.mark.parametrize("theta", [45.0, 120.0])
def test_oriented_filter_is_selective_at_its_orientation(theta):
    period = grating_parameters(32)["periods_px"][6]  # about 7.6 px
    model = OneFilter(gabor(theta, period, sigma=4.0))
    R = orientation_tuning(model, "relu", stimuli(32, 1, [0.5], [0.25]))
    assert R.shape == (1, 12)
    assert gosi(R)[0] > 0.7
    assert osi(R)[0] > 0.9
    pref = preferred_orientation(R)[0]
    assert abs((pref - theta + 90) % 180 - 90) <= 15


def test_isotropic_filter_is_not_selective():
    R = orientation_tuning(OneFilter(centre_surround()), "relu", stimuli(32, 1, [0.5], [0.25]))
    assert R[0].min() > 0  # it does respond
    assert gosi(R)[0] < 0.1


def test_osi_and_gosi_known_values():
    theta = np.deg2rad(np.arange(12) * 15)
    R = np.stack([np.eye(12)[3],  # one orientation only
                  np.ones(12),  # flat
                  np.zeros(12),  # silent
                  1 + np.cos(2 * theta)])  # smooth, orthogonal response 0
    np.testing.assert_allclose(gosi(R), [1, 0, 0, 0.5], atol=1e-12)
    np.testing.assert_allclose(osi(R), [1, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(preferred_orientation(R)[[0, 3]], [45, 0])
    assert fraction_selective(np.array([0.1, 0.34, 0.5, 0.33])) == 0.5


class CodeNet(nn.Module):
    """Unit u = relu(x_u) drives logit u; the output bias favours class 1 when all are silent.
    Ablating units is then the same as zeroing their input coordinates."""

    def __init__(self, k: int = 4):
        super().__init__()
        self.hidden = nn.Linear(k, k, bias=False)
        self.relu = nn.ReLU()
        self.out = nn.Linear(k, k)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(k))
            self.out.weight.copy_(2 * torch.eye(k))
            self.out.bias.copy_(torch.tensor([0.0, 0.1, 0.0, 0.0]))

    def forward(self, x):
        return self.out(self.relu(self.hidden(x)))


def test_gosi_split_ablation_matches_zeroed_inputs():
    model = CodeNet()
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(8)
    x = F.one_hot(y, 4).float() * (0.5 + torch.rand(32, 1, generator=g))
    gosi_values = np.array([0.2, 0.9, 0.1, 0.8])  # top half: units 1, 3; bottom: 2, 0
    r = gosi_split_ablation(model, "relu", x, y, gosi_values, batch_size=32)
    assert sorted(r["top"]["units"].tolist()) == [1, 3]
    assert sorted(r["bottom"]["units"].tolist()) == [0, 2]
    with torch.no_grad():
        base = F.cross_entropy(model(x), y, reduction="none")
        for key, units in (("top", [1, 3]), ("bottom", [0, 2])):
            xz = x.clone()
            xz[:, units] = 0
            inc = (F.cross_entropy(model(xz), y, reduction="none") - base).double()
            acc = (model(xz).argmax(1) == y).float().mean().item()
            assert r[key]["ce_increase_mean"] == pytest.approx(inc.mean().item(), rel=1e-6)
            assert r[key]["ce_increase_sem"] == pytest.approx(
                inc.std().item() / math.sqrt(32), rel=1e-6)
            assert r[key]["accuracy"] == pytest.approx(acc)
    assert r["baseline_acc"] == 1.0
    assert r["top"]["acc_change"] == -0.25  # class 3 is lost; class 1 survives via the bias
    assert r["bottom"]["acc_change"] == -0.5  # classes 0 and 2 are lost


def test_shift_images():
    x = torch.arange(10.0).reshape(1, 1, 1, 10)
    assert shift_images(x, 2)[0, 0, 0].tolist() == [8, 9, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shift_images(x, 2, mode="edge")[0, 0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]


def test_shift_invariance_known_answers():
    torch.manual_seed(0)
    x = torch.randn(20, 3, 12, 12)
    # Circular conv + global average pool: exactly invariant to circular shifts.
    pooled = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1))
    r = shift_invariance(pooled, "2", x, shift=2)
    assert r["n"] == 20 and r["mean"] > 1 - 1e-6
    # The raw pixels of white noise: a shifted copy is uncorrelated.
    raw = nn.Sequential(nn.Identity(), nn.Conv2d(3, 2, 1))
    r = shift_invariance(raw, "0", x, shift=2)
    assert abs(r["mean"]) < 0.1 and r["sem"] < 0.05
    # Ablating every unit of the first layer leaves a constant representation downstream.
    r = shift_invariance(pooled, "2", x, shift=2, ablation=("1", list(range(6))))
    assert r["n"] == 0 and r["n_constant"] == 20
