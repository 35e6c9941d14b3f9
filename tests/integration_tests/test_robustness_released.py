"""`seltrain analyze robustness --corrupted-root` through the real CLI, on a trained tiny
checkpoint and a CIFAR-10-C-layout set written from its own test split."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from helpers import TINY, run_cli


@pytest.mark.slow  # a real training run and three CLI runs
def test_cli_reads_a_released_set_and_says_so(tmp_path):
    r = run_cli("train", "configs/synthetic.yaml", *TINY, "train.epochs=1",
                f"run.out_dir={tmp_path}", "run.name=run")
    assert r.returncode == 0, r.stderr[-2000:]
    run = os.path.join(tmp_path, "run")

    from seltrain.data import load_dataset
    from seltrain.checkpoint import load_trained_model

    _, _, cfg = load_trained_model(run)
    _, split = load_dataset(cfg, "test")
    n = 64
    # A "released" set whose 5 severities are the clean test images themselves: every
    # severity's accuracy must then equal the clean accuracy on the same 64 images.
    root = tmp_path / "CIFAR-10-C"
    root.mkdir()
    for name in ("gaussian_noise", "contrast"):
        np.save(root / f"{name}.npy", np.concatenate([split.images[:n]] * 5))
    np.save(root / "labels.npy", np.tile(split.labels[:n], 5).astype(np.uint8))

    out = tmp_path / "out"
    r = run_cli("analyze", "robustness", run, "--corrupted-root", root, "--corruptions",
                "gaussian_noise,contrast", "--max-images", n, "--eps", "0", "--attack", "fgsm",
                "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"corruptions: released files {root}" in r.stdout
    res = json.load(open(out / "robustness.json"))
    corr = res["corruptions"]
    assert corr["source"] == "released files" and corr["n_images"] == n
    assert corr["n_images_per_condition"]["contrast"] == [n] * 5
    for name in ("gaussian_noise", "contrast"):
        assert corr["accuracy"][name] == [corr["clean_acc"]] * 5
    table = pd.read_csv(out / "corruptions.csv")
    assert len(table) == 10 and set(table["source"]) == {"released files"}
    assert json.load(open(out / "summary.json"))["corruption_source"] == "released files"

    # on the fly: the dataset's table (synthetic -> CIFAR-10-C's), named in the output
    fly = tmp_path / "fly"
    r = run_cli("analyze", "robustness", run, "--corruptions", "extra", "--severities", "1",
                "--max-images", "16", "--eps", "0", "--attack", "fgsm", "--device", "cpu",
                "--out", fly)
    assert r.returncode == 0, r.stderr[-2000:]
    corr = json.load(open(fly / "robustness.json"))["corruptions"]
    assert (corr["source"], corr["table"], corr["image_size"]) == ("on-the-fly", "cifar", 16)
    assert corr["corruptions"] == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert corr["release_format"] == "uint8 (truncated)" and corr["frost"] is None
    assert "on the fly, CIFAR-10-C table (hendrycks/robustness" in r.stdout

    os.remove(root / "labels.npy")
    r = run_cli("analyze", "robustness", run, "--corrupted-root", root, "--eps", "0",
                "--attack", "fgsm", "--device", "cpu", "--out", out)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "no labels.npy" in r.stderr
