"""`seltrain analyze ...` and `seltrain report --analyses` on real tiny trained checkpoints.

Two runs are trained once for the module (16 px synthetic data, 3 epochs, ~10 s each on 2
cores; they reach ~0.9 test accuracy, so robustness numbers mean something): alpha 0, and
alpha -1 with orientation tracking on. Every analysis runs through the real CLI in a
subprocess on small slices of the test split.
"""
import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import run_cli

# Two trained runs for the module, then one `seltrain analyze` subprocess per test (each > 5 s).
pytestmark = pytest.mark.slow

TRAIN = ["data.dataset=synthetic", "data.val_size=128", "data.synthetic.train_size=1024",
         "data.synthetic.test_size=256", "data.synthetic.image_size=16", "train.batch_size=32",
         "train.eval_batch_size=256", "train.epochs=3", "run.progress=false"]


def _train(root, name, *extra):
    r = run_cli("train", "configs/synthetic.yaml", *TRAIN, f"run.out_dir={root}",
                f"run.name={name}", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return os.path.join(root, name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze_runs")
    return {"a0": _train(root, "a0", "selectivity.alpha=0"),
            "am1": _train(root, "am1", "selectivity.alpha=-1", "run.track_orientation=true")}


def _ok(r):
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return r


def _summary(run):
    return json.load(open(os.path.join(run, "summary.json")))


def test_selectivity_equals_training_si(runs):
    run = runs["a0"]
    r = _ok(run_cli("analyze", "selectivity", run, "--split", "test", "--device", "cpu"))
    assert "mean SI" in r.stdout
    out = os.path.join(run, "analysis", "selectivity")
    res = json.load(open(os.path.join(out, "selectivity.json")))
    s = _summary(run)
    assert res["n_images"] == 256
    assert abs(res["mean_si"] - s["test_si"]) < 1e-9
    for layer, v in s["test_si_per_layer"].items():
        assert abs(res["si_per_layer"][layer] - v) < 1e-9
        si = np.array(res["si"][layer])
        assert np.all((si >= 0) & (si <= 1))
        assert np.all((np.array(res["preferred_class"][layer]) >= 0)
                      & (np.array(res["preferred_class"][layer]) < 10))
        assert os.path.isfile(os.path.join(out, f"units_{layer}.csv"))
    assert os.path.getsize(os.path.join(out, "si_hist.png")) > 1000


def test_ablation_outputs_and_baseline(runs, tmp_path):
    run = runs["a0"]
    out = tmp_path / "abl"
    _ok(run_cli("analyze", "ablation", os.path.join(run, "checkpoints", "best.pt"), "--layers",
                "layer3.2", "--cumulative", "--n-random", "2", "--out", out))
    res = json.load(open(out / "ablation_layer3.2.json"))
    single = res["single_unit"]
    # the intact network on the whole test split is the checkpoint's own test accuracy
    assert single["baseline_acc"] == pytest.approx(_summary(run)["test_acc"], abs=1e-12)
    assert single["method"] == "fast"
    drops = np.array(single["overall_drop"])
    assert drops.shape == (64,) and np.all(np.abs(drops) <= 1)
    table = pd.read_csv(out / "units_layer3.2.csv")
    assert list(table.columns[:4]) == ["unit", "si", "preferred_class", "l1_norm"]
    assert {"max_class_drop", "class_drop_std", "preferred_class_drop"} <= set(table.columns)
    for drop in ("overall_drop", "max_class_drop", "class_drop_std", "preferred_class_drop"):
        for attr in ("si", "l1_norm", "mean_activation"):
            c = res["correlations"][drop][attr]
            assert c["p"] is None or 0 <= c["p"] <= 1
    cum = res["cumulative"]
    assert cum["si_high_first"][0] == pytest.approx(single["baseline_acc"])
    assert len(cum["random"]) == 2
    for f in ("cumulative_layer3.2.png", "si_vs_max_class_drop_layer3.2.png", "summary.json",
              "class_drops_layer3.2.csv"):
        assert (out / f).is_file(), f
    # incoming-weight L1 of the BN-folded conv2 of the block, and said so
    attrs = res["attributes"]
    assert (attrs["weight_module"], attrs["l1_batchnorm"]) == ("layer3.2.conv2", "layer3.2.bn2")
    assert attrs["l1_weights"] == "bn_folded" and single["ablated_module"] == "layer3.2"
    assert not np.allclose(table["l1_norm"], table["l1_norm_raw"])
    assert json.load(open(out / "summary.json"))["layers"]["layer3.2"]["l1_weights"] \
        == "bn_folded"


def test_ablation_ranks_on_val_and_scores_on_test(runs, tmp_path):
    from scipy import stats

    from seltrain.analysis.ablation import AblationOptions
    from seltrain.analysis.target import TargetRef
    from seltrain.analysis.unit_selectivity import unit_selectivity

    run, ckpt = runs["a0"], os.path.join(runs["a0"], "checkpoints", "best.pt")
    out = tmp_path / "held_out"
    r = _ok(run_cli("analyze", "ablation", ckpt, "--layers", "layer3.2", "--rank-split", "val",
                    "--max-images", "128", "--device", "cpu", "--out", out))
    assert "drops on 128 test images, units ranked by SI on val" in r.stdout
    summary = json.load(open(out / "summary.json"))
    assert (summary["rank_split"], summary["score_split"]) == ("val", "test")
    res = json.load(open(out / "ablation_layer3.2.json"))
    # the SI that ranks is the whole val split's (128 images), not the scored test images'
    val = TargetRef(run, ckpt).load(AblationOptions(split="val", layers=("layer3.2",),
                                                    device="cpu"))
    assert val.data.num_images == 128
    si_val = unit_selectivity(val)["si"]["layer3.2"]
    np.testing.assert_allclose(res["si"], si_val, rtol=0, atol=1e-12)
    test = TargetRef(run, ckpt).load(AblationOptions(layers=("layer3.2",), device="cpu",
                                                     max_images=128))
    assert np.abs(unit_selectivity(test)["si"]["layer3.2"] - si_val).max() > 1e-3
    rho = stats.spearmanr(si_val, res["single_unit"]["max_class_drop"])[0]
    assert res["correlations"]["max_class_drop"]["si"]["rho"] == pytest.approx(rho, abs=1e-12)
    # the drops are the test split's: the baseline is the first 128 test images' accuracy
    base = json.load(open(out / "summary.json"))["layers"]["layer3.2"]["baseline_acc"]
    assert base * 128 == pytest.approx(round(base * 128), abs=1e-9)
    # by default the same split ranks and scores, and the output says so
    r = _ok(run_cli("analyze", "ablation", ckpt, "--layers", "layer3.2", "--max-images", "64",
                    "--device", "cpu", "--out", tmp_path / "same"))
    assert "units ranked by SI on test" in r.stdout
    s = json.load(open(tmp_path / "same" / "summary.json"))
    assert (s["rank_split"], s["score_split"]) == ("test", "test")


def test_rotation_of_the_last_block(runs, tmp_path):
    run, out = runs["a0"], tmp_path / "rot"
    r = _ok(run_cli("analyze", "rotation", run, "--layers", "layer3.2", "--max-images", "128",
                    "--device", "cpu", "--seed", "3", "--out", out))
    assert "unit axes vs a random rotation's axes (seed 3), 128 test images" in r.stdout
    s = json.load(open(out / "summary.json"))["layers"]["layer3.2"]
    # the rotated network is the same function: the same predictions, so the same accuracy
    assert s["rotated_baseline_acc"] == s["baseline_acc"] and s["units"] == 64
    table = pd.read_csv(out / "drops_layer3.2.csv")
    assert len(table) == 64
    assert s["mean_max_class_drop_axes"] == pytest.approx(table["max_class_drop_axes"].mean())
    assert s["mean_max_class_drop_rotated"] == pytest.approx(
        table["max_class_drop_rotated"].mean())
    q = np.array(json.load(open(out / "rotation_layer3.2.json"))["rotation"])
    np.testing.assert_allclose(q.T @ q, np.eye(64), atol=1e-6)
    assert 0 <= s["ks_max_class_drop"] <= 1
    assert os.path.getsize(out / "max_class_drop_layer3.2.png") > 1000


def test_pwcca_of_a_regularized_run_against_the_unregularized_one(runs, tmp_path):
    out = tmp_path / "pwcca"
    r = _ok(run_cli("analyze", "pwcca", runs["am1"], "--reference", runs["a0"], "--layers",
                    "layer1.0", "layer3.2", "--device", "cpu", "--out", out))
    s = json.load(open(out / "summary.json"))
    assert s["reference"] == os.path.join(runs["a0"], "checkpoints", "best.pt")
    assert s["n_images"] == 256 and s["warning"] is None  # 256 images, at most 64 units
    for layer, units in (("layer1.0", 16), ("layer3.2", 64)):
        v = s["layers"][layer]
        assert v["directions"] == units and 0 < v["mean_cca"] <= v["pwcca"] + 0.2
        assert 0.2 < v["pwcca"] < 0.999  # other weights: related, not the same
    assert s["mean_pwcca"] == pytest.approx(np.mean([v["pwcca"] for v in s["layers"].values()]))
    table = pd.read_csv(out / "pwcca.csv")
    assert list(table["layer"]) == ["layer1.0", "layer3.2"]
    assert "PWCCA against" in r.stdout
    # a network against itself: 1 in every layer
    _ok(run_cli("analyze", "pwcca", runs["a0"], "--reference", runs["a0"], "--layers",
                "layer3.2", "--device", "cpu", "--out", tmp_path / "self"))
    same = json.load(open(tmp_path / "self" / "summary.json"))
    assert same["layers"]["layer3.2"]["pwcca"] == pytest.approx(1.0, abs=1e-9)


def test_orientation(runs):
    run = runs["a0"]
    _ok(run_cli("analyze", "orientation", run, "--layers", "layer1.0", "layer3.2",
                "--max-images", "96", "--threshold", "0.33", "--shift", "2"))
    out = os.path.join(run, "analysis", "orientation")
    res = json.load(open(os.path.join(out, "orientation.json")))
    for layer in ("layer1.0", "layer3.2"):
        L = res["layers"][layer]
        assert 0 <= L["fraction_selective"] <= 1
        assert np.all((np.array(L["osi"]) >= 0) & (np.array(L["osi"]) <= 1))
        assert np.all((np.array(L["gosi"]) >= 0) & (np.array(L["gosi"]) <= 1))
        ab = res["gosi_split_ablation"][layer]
        # strictly above / below the median gOSI (ties, e.g. dead units at 0, in neither)
        g = np.array(L["gosi"])
        assert ab["n_images"] == 96 and ab["threshold_top"] == pytest.approx(np.median(g))
        assert ab["top"]["units"] == np.flatnonzero(g > np.median(g)).tolist()
        assert ab["bottom"]["units"] == np.flatnonzero(g < np.median(g)).tolist()
        assert ab["ablated_module"] == layer
        assert math.isfinite(ab["top"]["ce_increase_mean"])
        assert -1 <= res["shift_invariance"]["before"][layer]["mean"] <= 1
        # the controls: one shuffle of the 432 gratings, and the orientation range
        null = np.array(L["null_gosi"])
        assert null.shape == (1, len(g)) and np.all((null >= 0) & (null <= 1))
        assert L["mean_null_gosi"] == pytest.approx(null.mean())
        rng = np.array([np.nan if v is None else v for v in L["orientation_range_deg"]])
        ok = np.isfinite(rng)
        assert np.all((rng[ok] >= 0) & (rng[ok] < 180) & (rng[ok] % 15 == 0))
        assert np.array_equal(ok, np.array(L["tuning_curves"]).sum(1) > 0)  # NaN: silent
        table = pd.read_csv(os.path.join(out, f"units_{layer}.csv"))
        assert {"null_osi", "null_gosi", "orientation_range_deg"} <= set(table.columns)
    np.testing.assert_allclose(res["grating_parameters"]["periods_px"], 24 / np.arange(1, 10))
    assert sorted(res["permutations"][0]) == list(range(432))
    after = res["shift_invariance"]["after_ablation"]["layer1.0"]
    assert set(after) == {"top", "bottom"} and "layer3.2" in after["top"]
    for f in ("osi_gosi.png", "osi_gosi_vs_permuted.png", "orientation_range.png",
              "gosi_split_ablation.png"):
        assert os.path.getsize(os.path.join(out, f)) > 1000, f


def test_robustness(runs):
    run = runs["a0"]
    _ok(run_cli("analyze", "robustness", run, "--max-images", "128", "--corruptions",
                "gaussian_noise,contrast", "--severities", "1,5", "--eps", "0,0.03",
                "--attack", "fgsm,pgd", "--steps", "2"))
    out = os.path.join(run, "analysis", "robustness")
    s = json.load(open(os.path.join(out, "summary.json")))
    res = json.load(open(os.path.join(out, "robustness.json")))
    acc = res["corruptions"]["accuracy"]
    for v in [s["clean_acc"], *acc["gaussian_noise"], *acc["contrast"]]:
        assert 0 <= v <= 1
    assert s["corruption_accuracy_by_severity"]["5"] <= s["clean_acc"]
    for a in ("fgsm", "pgd"):
        r = res["attacks"][a]
        assert r["accuracy"][0] == pytest.approx(s["clean_acc"])  # eps 0 is clean
        assert r["accuracy"][1] <= r["accuracy"][0]
    assert len(pd.read_csv(os.path.join(out, "corruptions.csv"))) == 4
    assert os.path.isfile(os.path.join(out, "attacks.png"))


def test_dimensionality(runs):
    run = runs["a0"]
    _ok(run_cli("analyze", "dimensionality", run, "--layers", "layer1.0", "layer3.2",
                "--max-images", "64", "--corruptions", "gaussian_noise,contrast", "--eps",
                "8/255", "--steps", "2", "--threshold", "0.9"))
    out = os.path.join(run, "analysis", "dimensionality")
    res = json.load(open(os.path.join(out, "dimensionality.json")))
    layers = ("layer1.0", "layer3.2")
    assert set(res["readings"]) == {"representation", "change", "increase"}
    assert set(res["representation"]) == {"clean", "corrupted", "adversarial"}
    assert set(res["change"]) == {"corrupted", "adversarial"}
    for reading in ("representation", "change"):
        for cond, per_layer in res[reading].items():
            for layer in layers:
                r = per_layer[layer]
                assert 1 <= r["n_components"] <= 63, (reading, cond, layer, r)
                assert r["threshold"] == 0.9 and r["n_samples"] == 64
                # 16-px inputs: layer1.0 is 16 x 16 x 16, layer3.2 64 x 4 x 4, flattened
                assert r["n_features"] == {"layer1.0": 4096, "layer3.2": 1024}[layer]
        for layer in layers:  # "corrupted" is the mean over the corruptions
            per = [res["per_corruption"][c][reading][layer]["n_components"]
                   for c in ("gaussian_noise", "contrast")]
            assert res[reading]["corrupted"][layer]["n_components"] == pytest.approx(
                np.mean(per), abs=1e-12)
    rep = res["representation"]
    for cond in ("corrupted", "adversarial"):
        for layer in layers:
            assert res["increase"][cond][layer] == pytest.approx(
                rep[cond][layer]["n_components"] - rep["clean"][layer]["n_components"])
    table = pd.read_csv(os.path.join(out, "dimensionality.csv"))
    assert len(table) == 10 and set(table["reading"]) == {"representation", "change"}
    assert table["increase_over_clean"].notna().sum() == 4  # corrupted, adversarial x 2 layers
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["early_layers"] == ["layer1.0"]  # the first third of two layers
    assert summary["early_increase_adversarial"] == res["increase"]["adversarial"]["layer1.0"]
    assert summary["early_change_components_corrupted"] == pytest.approx(
        res["change"]["corrupted"]["layer1.0"]["n_components"])
    assert os.path.isfile(os.path.join(out, "dimensionality.png"))
    # every reading at min(N - 1, D) = 63 components is listed, and only those
    listed = {(s["reading"], s["condition"], s["layer"]) for s in res["saturated"]}
    assert all(s["n_components"] >= s["ceiling"] == 63 for s in res["saturated"])
    for reading in ("representation", "change"):
        for cond in ("adversarial", *(["clean"] if reading == "representation" else [])):
            for layer in layers:
                full = res[reading][cond][layer]["n_components"] == 63
                assert ((reading, cond, layer) in listed) == full
    assert (summary["warning"] is None) == (not listed) and res["warning"] == summary["warning"]

    r = run_cli("analyze", "dimensionality", run, "--threshold", "1.5", "--max-images", "8")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--threshold" in r.stderr, r.stderr


def test_gradients(runs, tmp_path):
    from seltrain.analysis.gradients import gradient_variability
    from seltrain.analysis.gradients import GradientsOptions
    from seltrain.analysis.target import load_target
    from seltrain.checkpoint import find_checkpoints

    run = runs["a0"]
    out = tmp_path / "grad"
    r = _ok(run_cli("analyze", "gradients", run, "--layers", "layer1.0", "layer3.2",
                    "--max-images", "24", "--batch-size", "10", "--unit-block", "5",
                    "--max-units", "20", "--out", out))
    assert "input-gradient variability (24 images" in r.stdout
    res = json.load(open(out / "gradients.json"))
    assert res["wrt"] == "pixels" and "unconfirmed" in res["statistic_status"]
    l1, l3 = res["layers"]["layer1.0"], res["layers"]["layer3.2"]
    assert l1["units"] == list(range(16))  # 16 units: all of them
    assert len(l3["units"]) == 20 and l3["units"] == sorted(set(l3["units"]))
    assert max(l3["units"]) < 64
    for layer in (l1, l3):
        assert layer["n_samples"] == 24 and len(layer["labels"]) == 24
        d = np.array(layer["across_samples"]["direction"], dtype=float)
        assert np.all((d >= 0) & (d <= 24 / 23 + 1e-9))
        assert len(layer["across_units"]["direction"]) == 24
    summary = json.load(open(out / "summary.json"))
    want = np.mean([np.nanmean(np.array(v["across_samples"]["direction"], dtype=float))
                    for v in res["layers"].values()])
    assert summary["grad_across_samples_direction"] == pytest.approx(want, rel=1e-9)
    assert len(pd.read_csv(out / "units_layer3.2.csv")) == 20
    assert len(pd.read_csv(out / "samples_layer1.0.csv")) == 24
    assert (out / "gradient_variability.png").is_file()

    # the same numbers from the library in one batch of 24 and blocks of 64 units
    (run_dir, ckpt), = find_checkpoints(run)
    t = load_target(run_dir, ckpt, GradientsOptions(max_images=24, device="cpu"))
    ref = gradient_variability(t.model, ["layer1.0", "layer3.2"], t.data, batch_size=24,
                               unit_block=64, std=t.info.std)
    for stat in ("direction", "norm_cv"):
        np.testing.assert_allclose(l1["across_samples"][stat],
                                   ref["layer1.0"]["across_samples"][stat], rtol=1e-4)
        np.testing.assert_allclose(l1["across_units"][stat],
                                   ref["layer1.0"]["across_units"][stat], rtol=1e-4)
        np.testing.assert_allclose(l3["across_samples"][stat],
                                   ref["layer3.2"]["across_samples"][stat][l3["units"]],
                                   rtol=1e-4)
    assert l1["labels"] == ref["layer1.0"]["labels"].tolist()

    r = run_cli("analyze", "gradients", run, "--unit-block", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--unit-block" in r.stderr


def test_orientation_tracking(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs["am1"]
    records = [json.loads(ln) for ln in open(os.path.join(run, "metrics.jsonl"))]
    assert len(records) == 3
    for rec in records:
        osi = rec["osi_per_layer"]
        assert len(osi) == 9 and all(0 <= v <= 1 for v in osi.values())
    acc = EventAccumulator(os.path.join(run, "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "orientation/osi_mean/layer1.0" in tags
    assert len(acc.Scalars("orientation/osi_mean/layer1.0")) == 3


def test_report_with_analyses(runs, tmp_path):
    exp = tmp_path / "exp"
    for name, run in runs.items():
        shutil.copytree(run, exp / "trials" / name, ignore=shutil.ignore_patterns("analysis"))
    r = _ok(run_cli("report", exp, "--analyses", "selectivity,robustness",
                    "--analysis-args", "--max-images 64 --corruptions gaussian_noise "
                    "--severities 5 --eps 0,0.03 --attack fgsm"))
    assert "analysis plots" in r.stdout
    table = pd.read_csv(exp / "analysis_results.csv")
    assert sorted(table["alpha"]) == [-1.0, 0.0]
    assert table["mean_si"].between(0, 1).all()
    assert table["mean_corruption_accuracy"].between(0, 1).all()
    for m in ("mean_corruption_accuracy", "mean_fgsm_accuracy", "clean_acc"):
        assert (exp / "plots" / f"analysis_{m}_vs_si.png").is_file()
        assert (exp / "plots" / f"analysis_{m}_vs_alpha.png").is_file()
    assert (exp / "results.csv").is_file()  # the ordinary report is still written
    assert (exp / "trials" / "a0" / "analysis" / "robustness" / "summary.json").is_file()

    # a typo, or --threshold meaning two things, is one line before any analysis runs
    for analysis_args, message in (("--max-imgaes 64", "takes --max-imgaes"),
                                   ("--threshold 0.9", "--gosi-threshold or --variance-share")):
        r = run_cli("report", exp, "--analyses", "orientation,dimensionality",
                    "--analysis-args", analysis_args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert message in r.stderr and "orientation:" not in r.stdout  # nothing analysed


def test_analyze_experiment_folder(runs, tmp_path):
    exp = tmp_path / "exp2"
    for name, run in runs.items():
        shutil.copytree(run, exp / "trials" / name, ignore=shutil.ignore_patterns("analysis"))
    r = _ok(run_cli("analyze", "selectivity", exp, "--max-images", "32", "--out",
                    tmp_path / "o"))
    assert r.stdout.count("mean SI") == 2
    assert (tmp_path / "o" / "a0" / "selectivity.json").is_file()
    assert (tmp_path / "o" / "am1" / "selectivity.json").is_file()


def test_every_figure_in_each_format(runs, tmp_path):
    out = tmp_path / "fmt"
    _ok(run_cli("analyze", "selectivity", runs["a0"], "--max-images", "32", "--format",
                "svg,pdf", "--out", out))
    figures = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".svg", ".pdf"))
    assert figures == ["si_hist.pdf", "si_hist.svg", "si_per_layer.pdf", "si_per_layer.svg"]
    for stem in ("si_hist", "si_per_layer"):
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        svg = (out / f"{stem}.svg").read_text()
        assert svg.startswith("<?xml") and svg.rstrip().endswith("</svg>")


def test_bad_input_is_one_line(runs, tmp_path):
    r = run_cli("analyze", "selectivity", tmp_path / "nope.pt")
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "no checkpoint" in r.stderr and "Traceback" not in r.stderr

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli("analyze", "ablation", bad)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "corrupt" in r.stderr

    r = run_cli("analyze", "ablation", runs["a0"], "--layers", "layer9.9")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "no layer 'layer9.9'" in r.stderr and "layer3.2" in r.stderr


def test_report_with_dimensionality_and_gradients(runs, tmp_path):
    exp = tmp_path / "exp3"
    for name, run in runs.items():
        shutil.copytree(run, exp / "trials" / name, ignore=shutil.ignore_patterns("analysis"))
    r = _ok(run_cli("report", exp, "--analyses", "dimensionality,gradients", "--analysis-args",
                    "--max-images 32 --layers layer1.0 layer3.2 --corruptions gaussian_noise "
                    "--eps 8/255 --steps 1 --batch-size 16 --max-units 8"))
    assert "analysis plots" in r.stdout
    table = pd.read_csv(exp / "analysis_results.csv").set_index("trial")
    assert sorted(table["alpha"]) == [-1.0, 0.0]
    for trial in ("a0", "am1"):
        dim = json.load(open(exp / "trials" / trial / "analysis" / "dimensionality" /
                             "summary.json"))
        grad = json.load(open(exp / "trials" / trial / "analysis" / "gradients" /
                              "summary.json"))
        for key in ("representation_components_clean", "early_increase_corrupted",
                    "early_increase_adversarial", "early_change_components_corrupted",
                    "early_change_components_adversarial"):
            assert table.loc[trial, key] == pytest.approx(dim[key])
        for key in ("grad_across_samples_direction", "grad_across_units_direction",
                    "grad_across_samples_norm_cv", "grad_across_units_norm_cv"):
            assert table.loc[trial, key] == pytest.approx(grad[key])
            assert 0 < table.loc[trial, key] < 5
    plots_dir = exp / "plots"
    for fig in ("dimensionality_increase", "dimensionality_change", "dimensionality_clean",
                "gradients_per_layer", "early_increase_adversarial",
                "grad_across_samples_direction"):
        for x in ("alpha", "si"):
            assert (plots_dir / f"analysis_{fig}_vs_{x}.png").stat().st_size > 1000, (fig, x)
