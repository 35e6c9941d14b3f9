"""docs/REPRODUCE.md's rows whose data cannot be downloaded here (CIFAR-10, Tiny ImageNet),
run at tiny scale on generated files in the datasets' real layouts: CIFAR-10's python
pickles (cifar-10-batches-py/, read through seltrain/pickles.py) and Tiny ImageNet's
tiny-imagenet-200/ folder (tests/fixtures_data.py writes both).

Each command is the row's command word for word (``COMMANDS``, checked against the doc),
then small options: ``--seeds``/``--grid`` to narrow a search, ``--set`` for the tiny data
and epochs. The searches run the repository's recipes (tune/bn_dropout.yaml,
tune/alpha_late.yaml) as they are, except the GPU share of a trial: on a machine without a
GPU a recipe asking for 0.5 GPU is refused, so, as a CPU user would, the test copies the
recipe into the working folder's tune/ (which ``--search NAME`` reads first) with
``gpus_per_worker: 0``.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest
import yaml

from fixtures_data import write_cifar10, write_tinyimagenet
from helpers import REPO, evaluate_checkpoint, run_cli, subprocess_env
from seltrain.analysis import plots
from seltrain.cli import main

pytestmark = pytest.mark.slow

DOC = os.path.join(REPO, "docs", "REPRODUCE.md")
# The rows' commands, as docs/REPRODUCE.md gives them.
COMMANDS = {
    "bn_dropout_tune": "seltrain tune --search bn_dropout",
    "bn_dropout_report": "seltrain report <storage>/bn_dropout --analyses ablation",
    "late_tune": "seltrain tune --search alpha_late",
    "late_report": "seltrain report <storage>/alpha_late",
    "osi": "seltrain train configs/cifar10_cnn7.yaml run.track_orientation=true",
    "tiny_imagenet": "seltrain train configs/tinyimagenet_resnet18.yaml",
}
# Generated CIFAR-10: 5 batches of 16 training images, 32 test images.
CIFAR_TRAIN, CIFAR_TEST, VAL = 80, 32, 16
# One trial a CPU: 1 CPU each, no GPU (see the module's docstring).
CPU_RESOURCES = "resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}"


def tiny(root, epochs=1) -> list[str]:
    """The small options of a CIFAR-10 command: the generated data, epochs, small batches."""
    return [f"data.root={root}", f"data.val_size={VAL}", f"train.epochs={epochs}",
            "train.batch_size=16", "train.eval_batch_size=32", "data.num_workers=0",
            "run.progress=false"]


# A search's trials besides: no TensorBoard, and no OSI per epoch (the base recipe of
# bn_dropout, configs/cifar10_cnn7.yaml, tracks it: gratings through every layer).
QUIET = ["run.tensorboard=false", "run.track_orientation=false"]


def sets(options) -> list[str]:
    return [a for o in options for a in ("--set", o)]


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar10"), n_per_batch=CIFAR_TRAIN // 5,
                         n_test=CIFAR_TEST)


def cpu_recipe(cwd, name) -> None:
    """``cwd``/tune/NAME.yaml: the repository's recipe with one trial's GPU share at 0."""
    text = open(os.path.join(REPO, "tune", f"{name}.yaml")).read()
    text, n = re.subn(r"^resources:.*$", CPU_RESOURCES, text, flags=re.M)
    assert n == 1
    os.makedirs(os.path.join(cwd, "tune"), exist_ok=True)
    with open(os.path.join(cwd, "tune", f"{name}.yaml"), "w") as f:
        f.write(text)


def tune(cwd, key, *extra):
    env = subprocess_env(SELTRAIN_RAY_TMP=f"/tmp/seltrain_ray_test_{os.getpid()}",
                         RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    r = run_cli(*shlex.split(COMMANDS[key])[1:], *extra, "--num-cpus", "2",
                "--storage", os.path.join(cwd, "exp"), env=env, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return os.path.join(cwd, "exp")


def report(key, storage, *extra, figures=None, monkeypatch=None):
    """COMMANDS[key] run in-process (so the figures it draws can be kept as drawn)."""
    if figures is not None:
        save = plots._save
        monkeypatch.setattr(plots, "_save", lambda fig, path, title: figures.setdefault(
            os.path.basename(str(path)), fig) and save(fig, path, title))
    argv = shlex.split(COMMANDS[key].replace("<storage>", storage))[1:]
    assert main([*argv, *extra]) == 0


def trials(exp) -> dict:
    """{trial folder name: (config.yaml, summary.json, metrics.jsonl records)}."""
    out = {}
    root = os.path.join(exp, "trials")
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        with open(os.path.join(d, "config.yaml")) as f:
            cfg = yaml.safe_load(f)
        with open(os.path.join(d, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(d, "metrics.jsonl")) as f:
            records = [json.loads(ln) for ln in f if ln.strip()]
        out[name] = (cfg, summary, records)
    return out


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_commands_are_the_docs_word_for_word():
    text = open(DOC).read()
    for key, cmd in COMMANDS.items():
        assert f"`{cmd}" in text, key


@pytest.mark.ray
def test_bn_dropout_2x2_trains_and_its_ablation_boxes_are_the_units_drops(
        tmp_path, cifar10, monkeypatch):
    """tune/bn_dropout.yaml with seed 0 only, 1 epoch on 80 generated CIFAR-10 images: the 4
    arms train, results_by_group.csv is each arm's summary.json (one seed: n 1, the mean
    its value), and each box of analysis_class_drop_by_group.png is the arm's units'
    max_class_drop (units_fc1.csv)."""
    cpu_recipe(tmp_path, "bn_dropout")
    storage = tune(tmp_path, "bn_dropout_tune", "--seeds", "0",
                   *sets(tiny(cifar10) + QUIET))
    exp = os.path.join(storage, "bn_dropout")
    got = trials(exp)
    arms = {(c["model"]["arch"], c["model"]["dropout"]): (name, s)
            for name, (c, s, _) in got.items()}
    assert sorted(arms) == [("vgg16", 0.0), ("vgg16", 0.5), ("vgg16_bn", 0.0),
                            ("vgg16_bn", 0.5)]
    assert all(c["train"]["seed"] == 0 and c["selectivity"]["alpha"] == 0.0
               and c["data"]["root"] == cifar10 for c, _, _ in got.values())
    rows = read_csv(os.path.join(exp, "results_by_group.csv"))
    assert len(rows) == 4
    for row in rows:
        check_group_row(row, arms[(row["model.arch"], float(row["model.dropout"]))][1])

    figures = {}
    report("bn_dropout_report", storage, "--analysis-args", "--layers fc1 --max-images 16",
           figures=figures, monkeypatch=monkeypatch)
    (ax,) = [a for a in figures["analysis_class_drop_by_group.png"].axes if a.get_visible()]
    assert ax.get_title() == "fc1"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [f"arch={a}, dropout={p}\n(1 trial)" for a in ("vgg16", "vgg16_bn")
                      for p in (0.0, 0.5)]
    units = []
    for a, p in sorted(arms):  # the boxes' order
        name, _ = arms[(a, p)]
        units.append(read_csv(os.path.join(exp, "trials", name, "analysis", "ablation",
                                           "units_fc1.csv")))
        assert len(units[-1]) == 512  # VGG16's first hidden fc layer here
    drops = [[float(u["max_class_drop"]) for u in t] for t in units]
    means = [float(np.mean(ln.get_ydata())) for ln in ax.get_lines()
             if ln.get_linestyle() == "--"]  # meanline: the dashed line per box
    np.testing.assert_allclose(means, [np.mean(d) for d in drops], rtol=1e-6)
    medians = [ln for ln in ax.get_lines() if ln.get_color() in ("C1", "#ff7f0e")]
    np.testing.assert_allclose([float(np.mean(ln.get_ydata())) for ln in medians],
                               [np.median(d) for d in drops], rtol=1e-6)
    # One epoch of VGG16 on 64 images predicts one class, so every drop may be 0 here; the
    # points of the drop-against-SI figure are the same rows and their SI is not: every
    # unit of the 4 trials is one point at (its SI, its max class drop).
    fig = figures["analysis_max_class_drop_vs_unit_si.png"]
    points = np.concatenate([c.get_offsets() for a in fig.axes if a.get_visible()
                             for c in a.collections if len(c.get_offsets())])
    want = np.array([(float(u["si"]), float(u["max_class_drop"])) for t in units for u in t])
    assert len(points) == len(want) == 4 * 512 and np.ptp(want[:, 0]) > 0
    np.testing.assert_allclose(np.asarray(sorted(map(tuple, points))),
                               np.asarray(sorted(map(tuple, want))), rtol=1e-6, atol=1e-9)


def check_group_row(row, summary) -> None:
    """A results_by_group.csv row of one seed against its trial's summary.json."""
    assert int(row["n"]) == 1
    for col, key in (("best_val_acc", "val_acc"), ("test_acc", "test_acc"),
                     ("test_si", "test_si")):
        assert float(row[f"{col}_mean"]) == pytest.approx(summary[key], abs=1e-9), col
        assert row[f"{col}_std"] == ""  # one seed: no spread


@pytest.mark.ray
def test_late_search_groups_by_start_epoch_and_follows_each_schedule(tmp_path, cifar10):
    """tune/alpha_late.yaml narrowed to alphas 0, -1 x start epochs 0, 1 x seed 0, 2 epochs:
    results_by_group.csv per start epoch and alpha is each trial's summary.json, and each
    trial's alpha per epoch in metrics.jsonl follows its schedule (start 1: 0, then alpha)."""
    cpu_recipe(tmp_path, "alpha_late")
    storage = tune(tmp_path, "late_tune", "--grid", "selectivity.alpha=0,-1",
                   "--grid", "selectivity.alpha_schedule.start_epoch=0,1", "--seeds", "0",
                   *sets(tiny(cifar10, epochs=2) + QUIET))
    exp = os.path.join(storage, "alpha_late")
    report("late_report", storage)
    got = trials(exp)
    by_point = {}
    for name, (c, s, records) in got.items():
        alpha, start = c["selectivity"]["alpha"], c["selectivity"]["alpha_schedule"]["start_epoch"]
        by_point[(start, alpha)] = s
        want = [0.0 if epoch < start else alpha for epoch in (0, 1)]
        assert [r["alpha"] for r in records] == want, name
    assert sorted(by_point) == [(0, -1.0), (0, 0.0), (1, -1.0), (1, 0.0)]
    rows = read_csv(os.path.join(exp, "results_by_group.csv"))
    START = "selectivity.alpha_schedule.start_epoch"
    assert [(int(r[START]), float(r["alpha"])) for r in rows] == \
        [(0, -1.0), (0, 0.0), (1, -1.0), (1, 0.0)]
    for row in rows:
        check_group_row(row, by_point[(int(row[START]), float(row["alpha"]))])


def test_osi_over_training_of_the_7_layer_cnn_on_cifar10(tmp_path, cifar10):
    """configs/cifar10_cnn7.yaml with orientation tracking, 2 epochs: metrics.jsonl holds
    every epoch's OSI of each of the 7 layers, and TensorBoard's orientation/osi_mean/<layer>
    is the same numbers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = shlex.split(COMMANDS["osi"])[1:]
    assert main([argv[0], os.path.join(REPO, argv[1]), *argv[2:], *tiny(cifar10, epochs=2),
                 f"run.out_dir={tmp_path}", "run.name=cnn7"]) == 0
    run = tmp_path / "cnn7"
    records = [json.loads(ln) for ln in open(run / "metrics.jsonl") if ln.strip()]
    assert [r["epoch"] for r in records] == [0, 1]
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1"]
    for r in records:
        assert list(r["osi_per_layer"]) == layers
        assert all(0.0 <= v <= 1.0 for v in r["osi_per_layer"].values())
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for layer in layers:
        events = acc.Scalars(f"orientation/osi_mean/{layer}")
        assert [e.step for e in events] == [0, 1]  # the epochs of metrics.jsonl
        np.testing.assert_allclose([e.value for e in events],
                                   [r["osi_per_layer"][layer] for r in records], rtol=1e-6)


def test_tiny_imagenet_resnet18_trains_on_the_folder_layout(tmp_path):
    """configs/tinyimagenet_resnet18.yaml, 1 epoch on a generated tiny-imagenet-200/ of 4
    classes (8 training, 4 validation images each): the network has one output per wnid
    and the recipe's stem (7x7 conv kept, no max-pool), metrics.jsonl holds the SI of each
    of ResNet18's 8 blocks, and summary.json's test accuracy and SI are what best.pt gives
    on the 16 validation images (Tiny ImageNet's labelled test split); then the robustness
    analysis reads a Tiny-ImageNet-C folder set (``--corrupted-root``)."""
    root = write_tinyimagenet(tmp_path / "data", n_classes=4, n_train_per_class=8,
                              n_val_per_class=4)
    argv = shlex.split(COMMANDS["tiny_imagenet"])[1:]
    assert main([argv[0], os.path.join(REPO, argv[1]), f"data.root={root}", "data.val_size=8",
                 "train.epochs=1", "train.batch_size=8", "data.num_workers=0",
                 "run.progress=false", "run.tensorboard=false", f"run.out_dir={tmp_path}",
                 "run.name=tin"]) == 0
    run = tmp_path / "tin"
    cfg = yaml.safe_load(open(run / "config.yaml"))
    assert (cfg["model"]["arch"], cfg["model"]["stem"]) == ("resnet18", "nomaxpool")
    blocks = [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    (record,) = [json.loads(ln) for ln in open(run / "metrics.jsonl") if ln.strip()]
    assert list(record["test_si_per_layer"]) == blocks
    summary = json.load(open(run / "summary.json"))
    again = evaluate_checkpoint(str(run))
    assert again["n"] == 16
    assert summary["test_acc"] == pytest.approx(again["acc"], abs=1e-12)
    for layer in blocks:
        assert summary["test_si_per_layer"][layer] == pytest.approx(
            again["si_per_layer"][layer], abs=1e-6), layer

    # The robustness report on Tiny-ImageNet-C (--corrupted-root): a folder set in the
    # released layout, <corruption>/<severity>/<wnid>/*.JPEG, whose every severity holds the
    # validation images' own files, so each severity's accuracy must be the clean accuracy.
    val = os.path.join(root, "tiny-imagenet-200", "val")
    released = tmp_path / "Tiny-ImageNet-C"
    for line in open(os.path.join(val, "val_annotations.txt")):
        name, wnid = line.split("\t")[:2]
        for severity in range(1, 6):
            folder = released / "gaussian_noise" / str(severity) / wnid
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(os.path.join(val, "images", name), folder / name)
    out = tmp_path / "robustness"
    assert main(["analyze", "robustness", str(run), "--corrupted-root", str(released),
                 "--corruptions", "gaussian_noise", "--eps", "0", "--attack", "fgsm",
                 "--device", "cpu", "--out", str(out)]) == 0
    corr = json.load(open(out / "robustness.json"))["corruptions"]
    assert (corr["source"], corr["n_images"]) == ("released files", 16)
    assert corr["clean_acc"] == pytest.approx(again["acc"], abs=1e-12)
    assert corr["accuracy"]["gaussian_noise"] == [corr["clean_acc"]] * 5
