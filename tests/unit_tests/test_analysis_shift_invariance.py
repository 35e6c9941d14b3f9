"""Shift invariance (seltrain/analysis/shift_invariance.py): images shifted circularly or with
the edge repeated, and the correlation of a layer's representation with that of the shifted
images, with known answers (an exactly invariant pooled conv, raw white noise, a constant
representation after ablation)."""
from __future__ import annotations

import torch
from torch import nn

from seltrain.analysis.shift_invariance import shift_images, shift_invariance


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
