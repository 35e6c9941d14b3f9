"""Principal-component dimensionality (seltrain/analysis/dimensionality.py), known ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seltrain.analysis.dimensionality import (explained_variance_ratio, layer_dimensionality,
                                              layer_features, n_components)


def equal_variance_data(n: int = 500, d: int = 50, rank: int = 7, noise: float = 1e-6,
                        seed: int = 0) -> np.ndarray:
    """n points spanning ``rank`` orthogonal directions with exactly equal variance each, plus
    isotropic noise of std ``noise``: k of the rank components explain k / rank of the
    variance, so at 0.95 the answer is ``rank`` (6/7 = 0.857 < 0.95)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, rank))
    z -= z.mean(0)
    q_scores, _ = np.linalg.qr(z)  # centred orthonormal columns
    q_dirs, _ = np.linalg.qr(rng.standard_normal((d, rank)))
    return np.sqrt(n) * q_scores @ q_dirs.T + 5.0 + noise * rng.standard_normal((n, d))


def test_data_of_known_rank_gives_that_many_components():
    x = equal_variance_data()
    ratio = explained_variance_ratio(x)
    np.testing.assert_allclose(ratio[:7], 1 / 7, rtol=1e-6)
    assert ratio[7:].sum() < 1e-10
    assert n_components(x, 0.95) == 7
    assert n_components(x, 0.99) == 7
    assert n_components(x, 0.80) == 6  # 6/7 = 0.857 >= 0.8 > 5/7
    assert n_components(x, 3 / 7) == 3  # an exactly reachable threshold
    assert n_components(equal_variance_data(rank=3), 0.95) == 3
    assert n_components(np.ones((10, 4))) == 0  # no variance at all
    wide = equal_variance_data(n=40, d=300, rank=5)  # D > N: the N x N Gram route
    assert n_components(torch.as_tensor(wide), 0.95) == 5


def test_linear_layer_of_known_rank():
    torch.manual_seed(0)
    rank, d_in, d_out = 4, 20, 30
    u, _ = torch.linalg.qr(torch.randn(d_out, rank))
    v, _ = torch.linalg.qr(torch.randn(d_in, rank))
    model = nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, 3))
    with torch.no_grad():
        model[0].weight.copy_(u @ v.T)  # rank 4, equal singular values
        model[0].bias.normal_()
    x = torch.randn(400, d_in)  # isotropic inputs: the 4 output directions share the variance
    r = layer_dimensionality(model, ["0"], x, threshold=0.95, batch_size=128)
    assert r["0"] == {"n_components": 4, "n_features": 30, "n_samples": 400, "threshold": 0.95,
                      "spatial": "flatten"}
    assert layer_dimensionality(model, "0", x, threshold=0.999999)["0"]["n_components"] == 4


def test_conv_layer_flattened_or_spatially_averaged():
    # A 1x1 conv from 2 input channels to 6: every position's 6 values lie in a 2-D space,
    # and their spatial means too; flattened over 5x5 positions the rank is 2 * 25 = 50.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 1, bias=False), nn.Flatten(), nn.Linear(150, 2))
    x = torch.randn(300, 2, 5, 5)
    flat = layer_dimensionality(model, "0", x, threshold=0.9999999)["0"]
    mean = layer_dimensionality(model, "0", x, threshold=0.9999999, spatial="mean")["0"]
    assert flat["n_features"] == 150 and flat["n_components"] == 50
    assert mean["n_features"] == 6 and mean["n_components"] == 2
    feats = layer_features(model, ["0"], x, max_samples=70, batch_size=32)
    assert feats["0"].shape == (70, 150)
    with pytest.raises(ValueError, match="spatial"):
        layer_features(model, ["0"], x, spatial="max")
