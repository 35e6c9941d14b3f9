"""Networks seltrain did not train (seltrain/models/zoo.py) and their target spec
(seltrain/analysis/target_spec.py): weights from files and torch's hub cache, factories,
the class count that follows the weights, the spec as plain data, class maps."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision

from seltrain.analysis.target_spec import (TargetSpec, claim_folder, output_order, parse_data,
                                           read_class_map)
from seltrain.errors import ConfigError
from seltrain.models.probed import ModelConfigError
from seltrain.models.zoo import build_external, read_state_dict, sha256


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """A resnet18 with 7 classes, randomly initialised, saved as a state_dict."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    path = str(tmp_path_factory.mktemp("w") / "r18.pth")
    torch.save(model.state_dict(), path)
    return model, path


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torchvision_weights_from_a_file_set_the_class_count(r18):
    model, path = r18
    ext = build_external("torchvision:resnet18", path)
    assert same_weights(ext.model, model) and ext.model.fc.out_features == 7
    assert ext.weights_sha256 == sha256(path) and ext.weights_file == path
    assert not ext.model.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(ext.model(x), model(x))


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_checkpoints_holding_a_state_dict(r18, tmp_path, wrap):
    model, _ = r18
    sd = model.state_dict()
    obj = {"module." + k: v for k, v in sd.items()} if wrap == "module." \
        else {wrap: sd, "epoch": torch.tensor(3)}
    path = str(tmp_path / "ckpt.pt")
    torch.save(obj, path)
    assert read_state_dict(path).keys() == sd.keys()
    assert same_weights(build_external("torchvision:resnet18", path).model, model)


def test_weights_that_do_not_fit_name_the_first_key_and_both_shapes(r18, tmp_path):
    model, _ = r18
    sd = dict(model.state_dict())
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = str(tmp_path / "bad.pth")
    torch.save(sd, path)
    with pytest.raises(ModelConfigError, match=r"layer2.0.conv1.weight is \[128, 64, 1, 1\] in "
                       r"the file but \[128, 64, 3, 3\] in the model"):
        build_external("torchvision:resnet18", path)
    del sd["layer2.0.conv1.weight"]
    torch.save(sd, path)
    with pytest.raises(ModelConfigError, match=r"it has no layer2.0.conv1.weight \(the model's "
                       r"is \[128, 64, 3, 3\]\)"):
        build_external("torchvision:resnet18", path)
    torch.save({"a": 1}, path)
    with pytest.raises(ModelConfigError, match="holds no state_dict"):
        build_external("torchvision:resnet18", path)


def test_a_torchvision_weights_name_is_read_from_the_hub_cache_only(r18, tmp_path,
                                                                    monkeypatch):
    model, _ = r18
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = os.path.join(tmp_path, "hub", "checkpoints")
    with pytest.raises(ModelConfigError, match=r"resnet18-f37072fd.pth is not in torch's hub "
                       r"cache; seltrain does not download: put resnet18-f37072fd.pth .* into "
                       + folder):
        build_external("torchvision:resnet18", "IMAGENET1K_V1")
    # a stand-in file where torchvision keeps its ImageNet weights
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18().eval()
    os.makedirs(folder)
    torch.save(imagenet.state_dict(), os.path.join(folder, "resnet18-f37072fd.pth"))
    for name in ("IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"):
        ext = build_external("torchvision:resnet18", name)
        assert same_weights(ext.model, imagenet)
        assert (ext.crop_size, ext.resize_size) == (224, 256)
        assert ext.mean == (0.485, 0.456, 0.406) and ext.categories[652] == "military uniform"
    with pytest.raises(ModelConfigError, match=r"not a file, nor weights of torchvision's "
                       r"resnet18 \(did you mean 'IMAGENET1K_V1'\?\)"):
        build_external("torchvision:resnet18", "IMAGENET1K_V9")


def test_unknown_names(tmp_path):
    with pytest.raises(ModelConfigError, match=r"no classifier 'resnet81' \(did you mean "
                       r"'resnet18'\?\)"):
        build_external("torchvision:resnet81")
    with pytest.raises(ModelConfigError, match="give torchvision:NAME"):
        build_external("resnet18")
    with pytest.raises(ModelConfigError, match=r"cannot import nosuch.nets "
                       r"\(ModuleNotFoundError: No module named 'nosuch'\)"):
        build_external("nosuch.nets:build")


FACTORIES = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))

def number():
    return 3

def broken():
    raise RuntimeError("no GPU here")
'''


def test_factories_from_a_module_or_a_file(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)  # the current folder is searched first
    ext = build_external("mynets:build")
    assert isinstance(ext.model, torch.nn.Sequential) and not ext.is_torchvision
    path = str(tmp_path / "w.pth")
    torch.save(ext.model.state_dict(), path)
    by_file = build_external(f"{tmp_path}/mynets.py:build", path)
    assert same_weights(by_file.model, ext.model) and by_file.weights_sha256 == sha256(path)
    with pytest.raises(ModelConfigError, match=r"number\(\) returned a int, not an nn.Module"):
        build_external("mynets:number")
    with pytest.raises(ModelConfigError, match=r"broken\(\) raised RuntimeError: no GPU here"):
        build_external("mynets:broken")
    with pytest.raises(ModelConfigError, match=r"mynets has no callable 'buidl' \(did you mean "
                       r"'build'\?\)"):
        build_external("mynets:buidl")


def test_the_spec_is_plain_data(tmp_path):
    spec = TargetSpec(model="torchvision:resnet18", weights="/w/r18.pth",
                      data="imagefolder:/d", image_size=64, mean=(0.5, 0.5, 0.5),
                      std=(0.25, 0.25, 0.25), weights_sha256="ab" * 32,
                      classes={"cat": 281, "dog": 207})
    text = json.dumps(spec.to_dict())
    assert TargetSpec.from_dict(json.loads(text)) == spec
    assert spec.folder_name() == "resnet18-r18"
    assert TargetSpec("pkg.nets:build").folder_name() == "pkg.nets.build-init"
    assert TargetSpec("torchvision:vgg16", "IMAGENET1K_V1").folder_name() == \
        "vgg16-IMAGENET1K_V1"
    with pytest.raises(ConfigError, match=r"unknown key 'modle' \(did you mean 'model'\?\)"):
        TargetSpec.from_dict({"modle": "x"})
    # a folder holds one target: the same spec again is fine, another one is refused
    folder = str(tmp_path / "t")
    claim_folder(folder, spec)
    claim_folder(folder, spec)
    import dataclasses
    other = dataclasses.replace(spec, data="imagefolder:/elsewhere")
    with pytest.raises(ConfigError, match=r"holds the results of another target \(data "
                       r"'imagefolder:/d', here 'imagefolder:/elsewhere'\); pass --target-dir"):
        claim_folder(folder, other)


def test_data_names():
    assert parse_data("fashion_mnist") == ("fashion_mnist", None)
    assert parse_data("cifar10:/x/y") == ("cifar10", "/x/y")
    with pytest.raises(ConfigError, match=r"unknown dataset 'imagefoldr' \(did you mean "
                       r"'imagefolder'\?\)"):
        parse_data("imagefoldr:/x")
    with pytest.raises(ConfigError, match="imagefolder needs its folder"):
        parse_data("imagefolder")


def test_class_maps(tmp_path):
    names = ("cat", "dog", "owl")
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"owl": 24, "dog": 207, "cat": 281, "fox": 277}))
    table = read_class_map(str(path), names, 1000)
    assert table == {"cat": 281, "dog": 207, "owl": 24}
    order = output_order(table, names, 1000)
    assert order[:3].tolist() == [281, 207, 24] and sorted(order.tolist()) == list(range(1000))
    path.write_text("[5, 1, 0]")
    assert read_class_map(str(path), names, 6) == {"cat": 5, "dog": 1, "owl": 0}
    for text, why in (("[1, 2]", "lists 2 indices for 3 data classes"),
                      ('{"cat": 1, "dog": 2}', "does not map the data class 'owl'"),
                      ('{"cat": 1, "dog": 2, "owl": 6}', r"'owl' maps to 6, not an output "
                       r"index in \[0, 6\)"),
                      ('{"cat": 1, "dog": 1, "owl": 2}', "map to the same output 1"),
                      ("{", "cannot read it as JSON")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=why):
            read_class_map(str(path), names, 6)
