"""Readers for the released corrupted sets (seltrain/analysis/corrupted_sets.py), on small
files written in the exact layouts: CIFAR-10-C (<corruption>.npy, 5 x N stacked, labels.npy)
and Tiny-ImageNet-C / ImageNet-C (<corruption>/<severity>/<wnid>/*.JPEG)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from seltrain.analysis.corrupted_sets import open_corrupted_set
from seltrain.analysis.robustness import accuracy_on_released
from seltrain.errors import DataError

N, SIZE, K = 12, 8, 3


def cifar_c(root, names=("gaussian_noise", "fog"), n=N, labels_per_severity=True):
    """Severity s holds images of value 10 * s + label (so every pixel says which block and
    label it came from); labels cycle 0..K-1."""
    os.makedirs(root, exist_ok=True)
    labels = np.arange(n) % K
    for name in names:
        blocks = [np.broadcast_to((10 * s + labels)[:, None, None, None],
                                  (n, SIZE, SIZE, 3)).astype(np.uint8) for s in range(1, 6)]
        np.save(os.path.join(root, f"{name}.npy"), np.concatenate(blocks))
    np.save(os.path.join(root, "labels.npy"),
            np.tile(labels, 5 if labels_per_severity else 1).astype(np.uint8))
    return str(root)


def folder_c(root, wnids=("n01443537", "n01629819", "n01641577"), per_class=4,
             names=("gaussian_noise",), severities=(1, 2, 3, 4, 5), size=SIZE):
    """Image (severity s, class k, file j) has every pixel 40 * k + 8 * j + s (JPEG q100
    keeps flat patches within a level)."""
    for name in names:
        for s in severities:
            for k, w in enumerate(wnids):
                d = os.path.join(root, name, str(s), w)
                os.makedirs(d, exist_ok=True)
                for j in range(per_class):
                    v = 40 * k + 8 * j + s
                    Image.fromarray(np.full((size, size, 3), v, np.uint8)).save(
                        os.path.join(d, f"val_{k}_{j}.JPEG"), quality=100)
    return str(root)


def test_npy_layout_streams_each_severity_block(tmp_path):
    root = cifar_c(tmp_path / "CIFAR-10-C")
    cs = open_corrupted_set(root, channels=3, size=SIZE, num_classes=K)
    assert (cs.layout, cs.corruptions) == ("npy", ["gaussian_noise", "fog"])
    for s in (1, 3, 5):
        batches = list(cs.batches("fog", s, batch_size=5))
        assert [len(y) for _, y in batches] == [5, 5, 2]
        x = torch.cat([b for b, _ in batches])
        y = torch.cat([lab for _, lab in batches])
        assert x.shape == (N, 3, SIZE, SIZE) and x.dtype == torch.uint8
        np.testing.assert_array_equal(y.numpy(), np.arange(N) % K)
        np.testing.assert_array_equal(x[:, 0, 0, 0].numpy(), 10 * s + np.arange(N) % K)
    # --max-images: the first N of the block (the first N of the CIFAR test split)
    (x, y), = cs.batches("gaussian_noise", 2, batch_size=64, max_images=4)
    np.testing.assert_array_equal(x[:, 1, 3, 3].numpy(), 20 + np.arange(4) % K)
    # labels.npy holding N labels (one copy) is accepted too
    root2 = cifar_c(tmp_path / "once", labels_per_severity=False)
    cs2 = open_corrupted_set(root2, channels=3, size=SIZE)
    (x, y), = cs2.batches("fog", 4, batch_size=64)
    np.testing.assert_array_equal(y.numpy(), np.arange(N) % K)


@pytest.mark.parametrize("breakage,message", [
    ("no_labels", "no labels.npy"),
    ("not_5", "not a multiple of 5"),
    ("unknown", "unknown corruption file blurry.npy"),
    ("label_range", "has label 2 but the model has 2 classes"),
    ("size", "holds 8x8x3 images but the model takes 16x16x3"),
    ("label_count", "has 7 labels"),
])
def test_npy_layout_errors_are_one_line(tmp_path, breakage, message):
    root = cifar_c(tmp_path / "c")
    size, classes = SIZE, K
    if breakage == "no_labels":
        os.remove(os.path.join(root, "labels.npy"))
    elif breakage == "not_5":
        np.save(os.path.join(root, "fog.npy"), np.zeros((7, SIZE, SIZE, 3), np.uint8))
    elif breakage == "unknown":
        np.save(os.path.join(root, "blurry.npy"), np.zeros((5, SIZE, SIZE, 3), np.uint8))
    elif breakage == "label_range":
        classes = 2
    elif breakage == "size":
        size = 16
    elif breakage == "label_count":
        np.save(os.path.join(root, "labels.npy"), np.zeros(7, np.uint8))
    with pytest.raises(DataError) as e:
        cs = open_corrupted_set(root, channels=3, size=size, num_classes=classes)
        list(cs.batches("fog", 1))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_folder_layout_maps_wnids_to_the_training_classes(tmp_path):
    wnids = ("n01443537", "n01629819", "n01641577")
    root = folder_c(tmp_path / "Tiny-ImageNet-C", wnids)
    # the training set has two more classes, sorted: indices come from it, not the folder
    train_keys = sorted(wnids + ("n00000001", "n09999999"))
    cs = open_corrupted_set(root, channels=3, size=SIZE, class_keys=train_keys)
    assert (cs.layout, cs.corruptions) == ("folders", ["gaussian_noise"])
    x, y = map(torch.cat, zip(*cs.batches("gaussian_noise", 3, batch_size=5)))
    assert x.shape == (12, 3, SIZE, SIZE)
    want_labels = np.repeat([train_keys.index(w) for w in wnids], 4)
    np.testing.assert_array_equal(y.numpy(), want_labels)
    want_pixels = 40 * np.repeat([0, 1, 2], 4) + 8 * np.tile(np.arange(4), 3) + 3
    assert np.abs(x[:, :, 4, 4].numpy().astype(int) - want_pixels[:, None]).max() <= 1
    # --max-images spreads over the classes (first N would all be class 0)
    x, y = next(cs.batches("gaussian_noise", 1, batch_size=64, max_images=3))
    np.testing.assert_array_equal(y.numpy(), [train_keys.index(w) for w in wnids])
    # the class keys are asked for lazily, only by the folder layout
    calls = []
    open_corrupted_set(root, channels=3, size=SIZE,
                       class_keys=lambda: calls.append(1) or train_keys)
    assert calls == [1]
    # images of another size are resized (shorter side) and centre-cropped
    big = folder_c(tmp_path / "big", wnids, per_class=1, severities=(1,), size=12)
    (xb, _), = open_corrupted_set(big, channels=3, size=SIZE, class_keys=train_keys).batches(
        "gaussian_noise", 1)
    assert xb.shape == (3, 3, SIZE, SIZE)
    # grayscale models read the JPEGs as L
    (xg, _), = open_corrupted_set(big, channels=1, size=SIZE, class_keys=train_keys).batches(
        "gaussian_noise", 1)
    assert xg.shape == (3, 1, SIZE, SIZE)


@pytest.mark.parametrize("breakage,message", [
    ("wnid", "class 'n01443537' is not one of the model's training classes"),
    ("unknown", "unknown corruption folder 'blurry'"),
    ("nested", "is the set one level down"),
    ("severity", "severity folders are 1 to 5"),
    ("missing_severity", "has no severity 4"),
    ("missing_corruption", "has no fog"),
    ("no_keys", "needs a model trained on tinyimagenet or imagefolder"),
    ("not_a_folder", "is not a folder"),
    ("empty", "holds neither"),
    ("damaged", "cannot decode"),
])
def test_folder_layout_errors_are_one_line(tmp_path, breakage, message):
    wnids = ("n01443537", "n01629819")
    root = tmp_path / "ImageNet-C"
    keys = list(wnids)
    severities = (1, 2, 3, 5) if breakage == "missing_severity" else (1, 2, 3, 4, 5)
    folder_c(root, wnids, per_class=1, severities=severities)
    want = (["gaussian_noise"], [1, 2, 3, 4, 5])
    if breakage == "missing_corruption":
        want = (["gaussian_noise", "fog"], [1])
    elif breakage == "wnid":
        keys = ["n01629819", "n02000000"]
    elif breakage == "unknown":
        os.makedirs(root / "blurry" / "1")
    elif breakage == "nested":
        root = tmp_path
    elif breakage == "severity":
        os.makedirs(root / "gaussian_noise" / "6")
    elif breakage == "missing_severity":
        want = (["gaussian_noise"], [4])
    elif breakage == "no_keys":
        keys = None
    elif breakage == "not_a_folder":
        root = tmp_path / "nowhere"
    elif breakage == "empty":
        root = tmp_path / "empty"
        os.makedirs(root)
    elif breakage == "damaged":
        with open(root / "gaussian_noise" / "1" / wnids[0] / "val_0_0.JPEG", "wb") as f:
            f.write(b"not a jpeg")
        want = (["gaussian_noise"], [1])
    with pytest.raises(DataError) as e:
        cs = open_corrupted_set(str(root), channels=3, size=SIZE, class_keys=keys,
                                num_workers=1 if breakage == "damaged" else 0)
        cs.require(*want)
        for c in want[0]:
            for s in want[1]:
                list(cs.batches(c, s))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


class BrightnessClassifier(nn.Module):
    """Predicts class round(mean pixel / 10) mod K from uint8-normalised input: on the npy
    set above (pixel 10 * s + label), severity s shifts every prediction by s classes."""

    def forward(self, x):
        v = (x.mean((1, 2, 3)) * 255).round().long()
        return nn.functional.one_hot(v % K, K).float()


def test_accuracy_on_released_files_counts_every_image(tmp_path):
    root = cifar_c(tmp_path / "c", n=30)
    cs = open_corrupted_set(root, channels=3, size=SIZE, num_classes=K)
    clean_x = torch.tensor(np.arange(30) % K, dtype=torch.float32)[:, None, None, None]
    clean = [(clean_x.expand(30, 3, SIZE, SIZE) / 255, torch.arange(30) % K)]

    def preprocess(x, y):
        return x.float() / 255, y

    r = accuracy_on_released(BrightnessClassifier(), cs, clean, corruptions=["fog"],
                             severities=[1, 2, 3, 4, 5], preprocess=preprocess, batch_size=7)
    # prediction (10 s + label) mod 3 = (s + label) mod 3: right exactly when s = 0 mod 3
    np.testing.assert_array_equal(r["accuracy"]["fog"], [0, 0, 1, 0, 0])
    assert r["clean_acc"] == 1.0 and r["n_images_per_condition"]["fog"] == [30] * 5
    assert r["source"] == "released files" and r["root"] == os.path.abspath(root)
    assert r["mean_corruption_accuracy"] == pytest.approx(0.2)
    r = accuracy_on_released(BrightnessClassifier(), cs, clean, corruptions=["fog"],
                             severities=[3], preprocess=preprocess, max_images=4)
    assert r["n_images_per_condition"]["fog"] == [4] and r["accuracy"]["fog"][0] == 1.0
