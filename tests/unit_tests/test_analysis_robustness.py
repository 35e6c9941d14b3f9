"""Accuracy under common corruptions and under gradient attacks (seltrain/analysis/robustness.py):
FGSM and L-inf PGD against closed forms, accuracy under attack and under corruptions, the
normalisation undone and redone around a corruption, the corruption names a command takes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seltrain.analysis.corruptions import CORRUPTIONS, corrupt
from seltrain.analysis.robustness import (accuracy_under_attack, accuracy_under_corruptions,
                                          corrupted_batches, corruption_names, fgsm, pgd_linf)
from seltrain.errors import ConfigError


def linear_model(seed: int = 0, d: int = 3 * 4 * 4, k: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


def _closed_form_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE / d x for logits = x W^T + b: (softmax - onehot) W, per sample (sum reduction)."""
    W, b = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(x.flatten(1) @ W.T + b, 1)
    return ((p - F.one_hot(y, W.shape[0]).float()) @ W).reshape(x.shape)


def test_fgsm_on_a_linear_model_matches_the_closed_form():
    model = linear_model()
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 5, (8,))
    eps = 0.1
    expected = x + eps * _closed_form_grad(model, x, y).sign()
    torch.testing.assert_close(fgsm(model, x, y, eps), expected, rtol=0, atol=1e-6)


def test_fgsm_in_pixel_space_clamps_to_valid_pixels():
    model = linear_model(1)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pixels = torch.rand(8, 3, 4, 4)
    pixels[0] = 1.0  # at the top of the range: cannot brighten further
    x, y = (pixels - m) / s, torch.randint(0, 5, (8,))
    eps = 8 / 255
    # d CE / d pixel = (d CE / d x) / std: same sign
    expected_pix = (pixels + eps * _closed_form_grad(model, x, y).sign()).clamp(0, 1)
    adv = fgsm(model, x, y, eps, mean=mean, std=std)
    torch.testing.assert_close(adv * s + m, expected_pix, rtol=0, atol=1e-5)


def test_pgd_stays_in_the_ball_raises_the_loss_and_is_seeded():
    model = linear_model(2)
    mean, std = (0.5,) * 3, (0.25,) * 3
    pixels, y = torch.rand(16, 3, 4, 4), torch.randint(0, 5, (16,))
    x = (pixels - 0.5) / 0.25
    eps = 4 / 255
    adv = pgd_linf(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(0),
                   mean=mean, std=std)
    adv_pix = adv * 0.25 + 0.5
    assert (adv_pix - pixels).abs().max() <= eps + 1e-6
    assert adv_pix.min() >= 0 and adv_pix.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    again = pgd_linf(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(0),
                     mean=mean, std=std)
    torch.testing.assert_close(adv, again, rtol=0, atol=0)


def test_accuracy_under_attack_and_corruptions():
    model = linear_model(3)
    x = torch.randn(40, 3, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # clean accuracy 1
    r = accuracy_under_attack(model, x, y, [0, 0.05, 0.5], attack="pgd", steps=5, batch_size=16)
    assert r["accuracy"][0] == 1.0 and r["accuracy"][2] < r["accuracy"][0]
    assert np.all(np.diff(r["accuracy"]) <= 0)
    f = accuracy_under_attack(model, x, y, [0, 0.5], attack="fgsm", batch_size=16)
    assert f["accuracy"][0] == 1.0 and f["accuracy"][1] < 1.0

    mean, std = (0.5,) * 3, (0.25,) * 3
    pix = torch.rand(40, 3, 8, 8)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))
    xn = (pix - 0.5) / 0.25
    with torch.no_grad():
        yn = conv(xn).argmax(1)
    res = accuracy_under_corruptions(conv, xn, yn, mean=mean, std=std,
                                     corruptions=["gaussian_noise", "contrast"], batch_size=16)
    assert res["clean_acc"] == 1.0
    assert set(res["accuracy"]) == {"gaussian_noise", "contrast"}
    assert res["accuracy"]["contrast"].shape == (5,)
    again = accuracy_under_corruptions(conv, xn, yn, mean=mean, std=std,
                                       corruptions=["gaussian_noise", "contrast"], batch_size=16)
    np.testing.assert_array_equal(res["accuracy"]["gaussian_noise"],
                                  again["accuracy"]["gaussian_noise"])
    # corrupted_batches undoes and redoes the normalisation
    (cx, cy), *_ = corrupted_batches(xn, yn, "contrast", 5, mean=mean, std=std, batch_size=40)
    torch.testing.assert_close(cx * 0.25 + 0.5, corrupt(pix, "contrast", 5), rtol=0, atol=1e-5)


def test_corruption_names_spell_the_extra_set():
    assert corruption_names("all") == list(CORRUPTIONS)
    assert corruption_names("extra") == ["speckle_noise", "gaussian_blur", "spatter",
                                          "saturate"]
    assert len(corruption_names("all+extra")) == 19
    assert corruption_names("fog,extra,fog") == ["fog", "speckle_noise", "gaussian_blur",
                                                  "spatter", "saturate"]
    with pytest.raises(ConfigError, match="unknown blur"):
        corruption_names("fog,blur")


def test_on_the_fly_results_say_their_source():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        y = conv(x).argmax(1)
    r = accuracy_under_corruptions(conv, x, y, corruptions=["frost", "spatter"],
                                   severities=[1], table="tiny")
    assert (r["source"], r["table"], r["native_size"], r["image_size"]) == (
        "on-the-fly", "tiny", 64, 64)
    assert r["length_scale"] == 1.0 and r["release_format"].endswith("JPEG quality 85")
    assert "photographs" in r["frost"] and r["clean_acc"] == 1.0
