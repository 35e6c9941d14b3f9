"""docs/REPRODUCE.md's ImageNet rows at tiny scale: the papers' pretrained torchvision
networks named by their weights (``--weights IMAGENET1K_V1``) on an ImageNet validation folder.

Neither ImageNet nor the weights can be downloaded here, so each test makes both in their
real layouts: the weights file torchvision would download, under the name it would give it,
in torch's hub cache (``$TORCH_HOME/hub/checkpoints/``; a randomly initialised network of the
same architecture, so 1000 outputs and every key in place), and a validation folder of 1000
class folders named like WordNet ids (``val/n00000000/ILSVRC2012_val_00000001.JPEG``), one
JPEG each, sorted in the order of the network's outputs as ImageNet's are. Each row's command
runs word for word with the small options of ``TINY``, and its output file's numbers are held
against the same network evaluated in this process with plain torchvision code.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
import torchvision

from seltrain.analysis.ablation import single_unit_ablation
from seltrain.analysis.orientation import grating_parameters, orientation_tuning, osi, stimuli
from seltrain.cli import main
from seltrain.data.sources import IMAGENET_MEAN, IMAGENET_STD
from seltrain.models.zoo import sha256
from test_any_model import plain_loader, plain_predictions
from test_reproduce import DOC

pytestmark = pytest.mark.slow

CLASSES, IMAGES = 1000, 64
# The rows' commands (DIR: the validation folder) and the small options each gets here.
ABLATION = "seltrain analyze ablation --model torchvision:resnet18 --weights IMAGENET1K_V1 " \
           "--data imagefolder:DIR"
ORIENTATION = "seltrain analyze orientation --model torchvision:vgg16 --weights " \
              "IMAGENET1K_V1 --data imagefolder:DIR"
TINY = {ABLATION: f"--image-size 32 --max-images {IMAGES} --layers layer4.1",
        ORIENTATION: f"--image-size 32 --max-images {IMAGES} --layers features.0"}


def val_folder(root) -> str:
    """ImageNet's validation layout: 1000 class folders, one small JPEG of noise each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        d = os.path.join(root, f"n{c:08d}")
        os.makedirs(d)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            os.path.join(d, f"ILSVRC2012_val_{c + 1:08d}.JPEG"), quality=90)
    return str(root)


def planted(monkeypatch, tmp_path, arch: str) -> tuple[torch.nn.Module, str]:
    """A random ``arch`` saved where torchvision keeps IMAGENET1K_V1's download."""
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, num_classes=CLASSES).eval()
    torch.save(net.state_dict(), path)
    return net, path


def run(command: str, data: str, capsys) -> None:
    argv = command.replace("DIR", data).split()[1:] + TINY[command].split()
    code = main(argv)
    assert code == 0, capsys.readouterr().err[-3000:]


def first_images(data: str, size: int):
    loader = plain_loader(data, size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    subset = torch.utils.data.Subset(loader.dataset, range(IMAGES))
    return torch.utils.data.DataLoader(subset, batch_size=IMAGES, shuffle=False)


def test_the_rows_commands_are_the_documents():
    doc = open(DOC).read()
    for command in (ABLATION, ORIENTATION):
        assert f"`{command}`" in doc, command


def test_ablation_of_a_pretrained_network_named_by_its_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    net, path = planted(monkeypatch, tmp_path, "resnet18")
    data = val_folder(tmp_path / "val")
    run(ABLATION, data, capsys)
    target = tmp_path / "runs" / "targets" / "resnet18-IMAGENET1K_V1"
    with open(target / "target.json") as f:
        spec = json.load(f)
    assert spec["weights"] == "IMAGENET1K_V1" and spec["weights_sha256"] == sha256(path)
    with open(target / "analysis" / "ablation" / "ablation_layer4.1.json") as f:
        cli = json.load(f)["single_unit"]
    loader = first_images(data, 32)
    logits, labels = plain_predictions(net, loader)
    assert labels.tolist() == list(range(IMAGES))  # folder order is the outputs' order
    assert cli["baseline_acc"] == float((logits.argmax(1) == labels).double().mean())
    ours = single_unit_ablation(net, cli["ablated_module"], loader, num_classes=CLASSES)
    assert len(cli["overall_drop"]) == 512
    assert np.array_equal(np.asarray(cli["overall_drop"]), ours["overall_drop"])


def test_orientation_of_a_pretrained_network_named_by_its_weights(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    net, path = planted(monkeypatch, tmp_path, "vgg16")
    data = val_folder(tmp_path / "val")
    run(ORIENTATION, data, capsys)
    out = tmp_path / "runs" / "targets" / "vgg16-IMAGENET1K_V1" / "analysis" / "orientation"
    with open(out / "units_features.0.csv") as f:
        rows = list(csv.DictReader(f))
    # in process: the same gratings through conv1_1 and its ReLU (the layers above it do
    # not change what the probe reads), Ukita's OSI
    stim = stimuli(32, 3, IMAGENET_MEAN, IMAGENET_STD)
    R = orientation_tuning(net.features[:2], net.features[1], stim)
    ours = osi(R, grating_parameters(32)["orientations_deg"])
    assert len(rows) == 64
    assert np.allclose([float(r["osi"]) for r in rows], ours, rtol=0, atol=1e-6)
