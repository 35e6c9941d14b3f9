"""Principal-component dimensionality (seltrain/analysis/dimensionality.py), known ranks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seltrain.analysis.dimensionality import (ceiling, early_layers, explained_variance_ratio,
                                              increase, layer_dimensionality, layer_features,
                                              mean_reading, n_components,
                                              perturbation_dimensionality,
                                              perturbed_dimensionality, saturated,
                                              saturation_warning)


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


def _identity_model(d: int) -> nn.Module:
    # layer "0" outputs its input exactly, so the features are the constructed data
    model = nn.Sequential(nn.Linear(d, d, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(d, dtype=torch.float64))
    return model


def test_change_has_the_rank_of_the_perturbation():
    # clean features of rank 12 plus a perturbation of rank 3 (equal variances): the
    # perturbed representation needs many components, the change exactly 3
    d = 40
    clean = torch.as_tensor(equal_variance_data(n=300, d=d, rank=12, noise=0, seed=1))
    delta = torch.as_tensor(equal_variance_data(n=300, d=d, rank=3, noise=0, seed=2) - 5.0)
    model = _identity_model(d)
    feats = layer_features(model, ["0"], clean)
    assert feats["0"].shape == (300, d)
    r = perturbed_dimensionality(model, feats, clean + 0.5 * delta, 0.95, batch_size=64)["0"]
    assert r["change"] == {"n_components": 3, "n_features": d, "n_samples": 300,
                           "threshold": 0.95, "spatial": "flatten"}
    assert r["representation"]["n_components"] == n_components(
        (clean + 0.5 * delta).float().numpy(), 0.95)
    assert r["representation"]["n_components"] >= 12
    # the same images in another order do not pair: the "change" would be meaningless
    shuffled = perturbed_dimensionality(model, feats, (clean + 0.5 * delta).flip(0))["0"]
    assert shuffled["change"]["n_components"] > 3
    with pytest.raises(ValueError, match="do not pair"):
        perturbed_dimensionality(model, {"0": feats["0"][:-1]}, clean + delta)


def test_both_readings_and_the_increase_for_several_perturbations():
    d = 30
    clean = torch.as_tensor(equal_variance_data(n=200, d=d, rank=4, noise=0, seed=3))
    small = clean + torch.as_tensor(equal_variance_data(n=200, d=d, rank=2, noise=0, seed=4))
    large = clean + torch.as_tensor(equal_variance_data(n=200, d=d, rank=9, noise=0, seed=5))
    res = perturbation_dimensionality(_identity_model(d), ["0"], clean,
                                      {"corrupted": small, "adversarial": large},
                                      threshold=0.999999)
    rep, change = res["representation"], res["change"]
    assert set(rep) == {"clean", "corrupted", "adversarial"}
    assert set(change) == {"corrupted", "adversarial"}
    assert rep["clean"]["0"]["n_components"] == 4
    assert change["corrupted"]["0"]["n_components"] == 2
    assert change["adversarial"]["0"]["n_components"] == 9
    # random subspaces: 4 + 2 and 4 + 9 dimensions
    assert rep["corrupted"]["0"]["n_components"] == 6
    assert rep["adversarial"]["0"]["n_components"] == 13
    assert res["increase"] == {"corrupted": {"0": 2}, "adversarial": {"0": 9}}
    assert increase(rep) == res["increase"]
    mean = mean_reading([change["corrupted"], change["adversarial"]])
    assert mean["0"]["n_components"] == 5.5 and mean["0"]["n_samples"] == 200


def test_wide_features_chunked_and_the_threshold_is_checked():
    # D > 4096: the N x N Gram is summed over column chunks
    wide = equal_variance_data(n=30, d=9000, rank=5, noise=0, seed=6)
    ratio = explained_variance_ratio(wide)
    np.testing.assert_allclose(ratio[:5], 0.2, rtol=1e-9)
    assert n_components(wide, 0.95) == 5
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="threshold"):
            n_components(wide, bad)


def test_early_layers():
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert early_layers(blocks) == ["layer1.0", "layer1.1", "layer1.2"]  # resnet20: stage 1
    assert early_layers(blocks, 1) == ["layer1.0"]
    assert early_layers(blocks[:7]) == blocks[:3]
    assert early_layers(["a"]) == ["a"] and early_layers(["a", "b"], 5) == ["a", "b"]


def test_probe_names_key_the_features():
    # cnn7's probe "conv1" is the module relu1: results are keyed as the caller named them
    torch.manual_seed(0)
    from seltrain.models import build_model
    model = build_model("cnn7", 10, 3, 32)
    feats = layer_features(model, ["conv1", "relu2"], torch.randn(6, 3, 32, 32), spatial="mean")
    assert list(feats) == ["conv1", "relu2"] and feats["conv1"].shape == (6, 32)


def test_a_reading_at_its_ceiling_is_flagged():
    # 6 images of 30 features of full rank: 5 centred directions, each 1/5 of the variance, so
    # 95% needs all 5 = N - 1, the ceiling; a rank-2 reading of the same images does not
    d, n = 30, 6
    full = torch.as_tensor(equal_variance_data(n=n, d=d, rank=5, noise=0, seed=7))
    low = torch.as_tensor(equal_variance_data(n=n, d=d, rank=2, noise=0, seed=8))
    res = perturbation_dimensionality(_identity_model(d), ["0"], low, {"adversarial": full},
                                      threshold=0.95)
    rep = res["representation"]
    assert (rep["clean"]["0"]["n_components"], rep["adversarial"]["0"]["n_components"]) == (2, 5)
    assert ceiling(rep["adversarial"]["0"]) == 5 and ceiling(rep["clean"]["0"]) == 5
    sat = saturated({"representation": rep, "change": res["change"]})
    # the change (full - low) spans the full images' 5 directions too
    assert res["change"]["adversarial"]["0"]["n_components"] == 5
    assert sat == [{"reading": r, "condition": "adversarial", "layer": "0", "n_components": 5,
                    "ceiling": 5} for r in ("representation", "change")]
    line = saturation_warning(sat, n)
    assert line == ("warning: 2 reading(s) reached the ceiling of min(N - 1, D) components, "
                    "where the count saturates: representation adversarial 0 (5), change "
                    "adversarial 0 (5); raise --max-images (N = 6) to read them")
    assert saturation_warning([], n) is None
    # D below N - 1 bounds too: 3 features of 50 images, all three used
    narrow = {"n_components": 3, "n_features": 3, "n_samples": 50}
    assert ceiling(narrow) == 3 and len(saturated({"r": {"c": {"l": narrow}}})) == 1
    # constant features (0 components) never count as saturated
    assert saturated({"r": {"c": {"l": {"n_components": 0, "n_features": 3,
                                        "n_samples": 1}}}}) == []
