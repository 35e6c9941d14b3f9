"""docs/REPRODUCE.md, row by row, at tiny scale: each row's command runs on one tiny trained
sweep and the test reads its output file's numbers back against the files they come from.

The sweep (``sweep``, once per session): 2 alphas (0, -1) x 2 seeds of ResNet20 on 8 px
synthetic images, 2 epochs each, trained with ``seltrain train`` into ``<exp>/trials/<name>/``,
the layout ``seltrain tune`` leaves (the search itself is checked by its ``--dry-run`` here
and run for real in test_tune.py). Each report command runs once (``ran``), in-process on its
own copy of the sweep, with the row's own ``--analysis-args`` (``$EXP`` the copy, the
other placeholders as ``PLACEHOLDERS`` says) and then the small ones of ``TINY_ARGS``, and
the figures it saves are kept as drawn, so their plotted data can be read back.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from helpers import REPO, subprocess_env
from seltrain import report
from seltrain.analysis import plots
from seltrain.cli import main

pytestmark = pytest.mark.slow

TRAIN = ["data.dataset=synthetic", "data.val_size=64", "data.synthetic.train_size=256",
         "data.synthetic.test_size=128", "data.synthetic.image_size=8", "train.batch_size=32",
         "train.eval_batch_size=128", "train.epochs=2", "run.progress=false",
         "run.tensorboard=false", "data.num_workers=0"]
ALPHAS, SEEDS = (0.0, -1.0), (0, 1)
LAYERS = "--layers layer1.0 layer3.2"
# The report commands of docs/REPRODUCE.md (EXP: the experiment folder), and the small
# options each gets here.
COMMANDS = {
    "report": "seltrain report $EXP --format png,pdf",
    "selectivity": "seltrain report $EXP --analyses selectivity",
    "ablation": "seltrain report $EXP --analyses ablation",
    "orientation": "seltrain report $EXP --analyses orientation",
    "robustness": "seltrain report $EXP --analyses robustness",
    "dimensionality": "seltrain report $EXP --analyses dimensionality,gradients",
    "pwcca": 'seltrain report $EXP --analyses pwcca --analysis-args "--reference '
             '$EXP/trials/<an alpha 0 trial>"',
    "rotation": 'seltrain report $EXP --analyses rotation --analysis-args "--layers layer3.2"',
    "ablation_val": 'seltrain report $EXP --analyses ablation --analysis-args '
                    '"--rank-split val"',
}
TINY_ARGS = {
    "selectivity": LAYERS,
    "ablation": f"{LAYERS} --max-images 64",
    "orientation": f"{LAYERS} --max-images 64 --permutations 1",
    "robustness": "--max-images 64 --corruptions gaussian_noise --severities 5 --eps 0,0.03 "
                  "--attack fgsm",
    "dimensionality": f"{LAYERS} --max-images 32 --corruptions gaussian_noise --eps 8/255 "
                      "--steps 1 --batch-size 16 --max-units 8",
    "pwcca": LAYERS,
    "rotation": "--max-images 32 --seed 3",
    "ablation_val": "--layers layer3.2 --max-images 64",
}
DOC = os.path.join(REPO, "docs", "REPRODUCE.md")


def trial_name(alpha, seed) -> str:
    return f"alpha{alpha:g}_seed{seed}"


# What the placeholders of a command's --analysis-args stand for here ($EXP: the copy run).
PLACEHOLDERS = {"<an alpha 0 trial>": trial_name(0.0, 0)}


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    exp = tmp_path_factory.mktemp("reproduce") / "exp"
    for alpha in ALPHAS:
        for seed in SEEDS:
            assert main(["train", os.path.join(REPO, "configs", "synthetic.yaml"), *TRAIN,
                         f"selectivity.alpha={alpha}", f"train.seed={seed}",
                         f"run.out_dir={exp / 'trials'}",
                         f"run.name={trial_name(alpha, seed)}"]) == 0
    return exp


@pytest.fixture(scope="session")
def ran(sweep, tmp_path_factory):
    """ran(key) -> (experiment copy, {figure file: Figure}): COMMANDS[key] run once."""
    done = {}

    def run(key):
        if key in done:
            return done[key]
        argv = shlex.split(COMMANDS[key])[2:]
        exp = tmp_path_factory.mktemp(key) / "exp"
        shutil.copytree(sweep, exp)
        analyses = argv[argv.index("--analyses") + 1].split(",") if "--analyses" in argv \
            else None
        formats = argv[argv.index("--format") + 1] if "--format" in argv else "png"
        figures = {}
        save = plots._save

        def keep(fig, path, title):
            out = save(fig, path, title)
            figures[os.path.basename(str(path))] = fig
            return out

        # the row's own --analysis-args, then the small ones of this module
        args = argv[argv.index("--analysis-args") + 1] if "--analysis-args" in argv else ""
        for name, value in {"$EXP": str(exp), **PLACEHOLDERS}.items():
            args = args.replace(name, value)
        plots._save = keep
        try:
            report.report_experiment(str(exp), out=io.StringIO(), tensorboard=False,
                                     analyses=analyses, formats=formats,
                                     analysis_args=shlex.split(args) +
                                     shlex.split(TINY_ARGS.get(key, "")))
        finally:
            plots._save = save
        done[key] = (exp, figures)
        return done[key]

    return run


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _bars(ax):
    """(x, mean, half-width) of the one errorbar of ``ax``."""
    (bar,) = ax.containers
    line, _, (cols,) = bar.lines
    segs = np.asarray(cols.get_segments(), float)
    return (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float),
            (segs[:, 1, 1] - segs[:, 0, 1]) / 2)


def _seed_stats(per_trial: dict[str, float]):
    """{alpha: (mean, std ddof 1)} over the seeds, from {trial name: value}."""
    out = {}
    for alpha in sorted(ALPHAS):
        v = [per_trial[trial_name(alpha, s)] for s in SEEDS]
        out[alpha] = (np.mean(v), np.std(v, ddof=1))
    return out


def _check_bars(ax, per_trial):
    x, mean, half = _bars(ax)
    want = _seed_stats(per_trial)
    np.testing.assert_allclose(x, sorted(ALPHAS))
    np.testing.assert_allclose(mean, [want[a][0] for a in sorted(ALPHAS)], atol=1e-12)
    np.testing.assert_allclose(half, [want[a][1] for a in sorted(ALPHAS)], atol=1e-12)
    assert ax.get_xscale() == "symlog"


def _summary(exp, trial, analysis):
    return json.load(open(exp / "trials" / trial / "analysis" / analysis / "summary.json"))


def _open(exp, trial, options):
    """The trial's best checkpoint opened as the analyses open it (``options``: their own)."""
    from seltrain.analysis.target import TargetRef

    run = str(exp / "trials" / trial)
    return TargetRef(run, os.path.join(run, "checkpoints", "best.pt")).load(options)


def _check_headline(exp, figs, analysis, key):
    """analysis_results.csv's ``key`` is each trial's summary.json, and its plot against
    alpha the seeds' mean and std of them."""
    table = pd.read_csv(exp / "analysis_results.csv").set_index("trial")
    per_trial = {t: _summary(exp, t, analysis)[key] for t in table.index}
    assert len(per_trial) == len(ALPHAS) * len(SEEDS)
    assert table[key].to_dict() == pytest.approx(per_trial)
    (ax,) = _panels(figs[f"analysis_{key}_vs_alpha.png"])
    _check_bars(ax, per_trial)


def _valid(path) -> bool:
    head = open(path, "rb").read(8)
    return head == b"\x89PNG\r\n\x1a\n" if str(path).endswith(".png") else head[:5] == b"%PDF-"


# --------------------------------------------------------------------------- the table

def test_every_command_here_is_the_tables(sweep):
    """The commands these tests run are those docs/REPRODUCE.md gives, word for word."""
    doc = open(DOC).read()
    for key, cmd in COMMANDS.items():
        assert f"`{cmd}`" in doc, key
    assert "`seltrain tune --search alpha`" in doc


def test_the_search_recipe_lists_the_papers_grid():
    """Row "the sweep": tune/alpha.yaml's 15 alphas x 5 seeds, -100 to 100 with 0."""
    r = subprocess.run([sys.executable, "-m", "seltrain", "tune", "--search", "alpha",
                        "--dry-run"], cwd=REPO, env=subprocess_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = re.findall(r"^\s*(\d+)\s+(-?[\d.]+)\s+(\d+)\s*$", r.stdout, re.M)
    alphas = sorted({float(a) for _, a, _ in rows})
    assert len(rows) == 75 and len(alphas) == 15 and {s for *_, s in rows} == set("01234")
    assert alphas[0] == -100 and alphas[-1] == 100 and 0.0 in alphas


# --------------------------------------------------------------------------- Leavitt & Morcos 2021

def test_si_and_accuracy_against_alpha(ran):
    exp, figs = ran("report")
    best = {trial_name(a, s): json.load(open(exp / "trials" / trial_name(a, s) /
                                             "summary.json")) for a in ALPHAS for s in SEEDS}
    _check_bars(figs["si_vs_alpha.png"].axes[0], {t: b["test_si"] for t, b in best.items()})
    _check_bars(figs["test_acc_vs_alpha.png"].axes[0],
                {t: b["test_acc"] for t, b in best.items()})
    by_alpha = pd.read_csv(exp / "results_by_alpha.csv").set_index("alpha")
    for a, (m, sd) in _seed_stats({t: b["test_si"] for t, b in best.items()}).items():
        assert by_alpha.loc[a, "test_si_mean"] == pytest.approx(m)
        assert by_alpha.loc[a, "test_si_std"] == pytest.approx(sd)
    for name in ("si_vs_alpha", "test_acc_vs_alpha", "acc_vs_si", "si_over_training"):
        assert all(_valid(exp / "plots" / f"{name}.{x}") for x in ("png", "pdf")), name


def test_si_over_training(ran):
    exp, figs = ran("report")
    panels = _panels(figs["si_over_training.png"])
    assert panels[0].get_title() == "mean over layers"
    for alpha in ALPHAS:
        curves = [[r["test_si"] for r in map(json.loads, open(
            exp / "trials" / trial_name(alpha, s) / "metrics.jsonl"))] for s in SEEDS]
        (line,) = [ln for ln in panels[0].get_lines() if ln.get_label() == f"alpha {alpha:g}"]
        np.testing.assert_allclose(line.get_xdata(), [1, 2])
        np.testing.assert_allclose(line.get_ydata(), np.mean(curves, 0), atol=1e-12)
    assert len(panels) == 1 + 9  # and one panel per probed layer (ResNet20's 9 blocks)


def test_mean_si_per_layer_against_alpha(ran):
    exp, figs = ran("selectivity")
    fig = figs["analysis_mean_si_vs_alpha.png"]
    assert fig._suptitle.get_text() == "Mean SI against alpha, per layer"
    panels = _panels(fig)
    si = {t: json.load(open(exp / "trials" / t / "analysis" / "selectivity" /
                            "selectivity.json")) for t in map(trial_name, *zip(
                                *[(a, s) for a in ALPHAS for s in SEEDS]))}
    _check_bars(panels[0], {t: r["mean_si"] for t, r in si.items()})
    layers = list(next(iter(si.values()))["si_per_layer"])
    assert [ax.get_title() for ax in panels[1:]] == layers
    for ax, layer in zip(panels[1:], layers):
        _check_bars(ax, {t: r["si_per_layer"][layer] for t, r in si.items()})
    assert _valid(exp / "plots" / "analysis_mean_si_vs_alpha.png")


def test_unit_si_distribution_per_alpha(ran):
    exp, figs = ran("selectivity")
    panels = _panels(figs["analysis_si_distributions.png"])
    si = {t: json.load(open(exp / "trials" / t / "analysis" / "selectivity" /
                            "selectivity.json"))["si"]
          for t in (trial_name(a, s) for a in ALPHAS for s in SEEDS)}
    assert [ax.get_title() for ax in panels] == list(si[trial_name(0.0, 0)])
    for ax in panels:
        layer = ax.get_title()
        for alpha in ALPHAS:
            units = np.concatenate([si[trial_name(alpha, s)][layer] for s in SEEDS])
            want = np.histogram(units, bins=np.linspace(0, 1, 21))[0] / len(units)
            (stairs,) = [p for p in ax.patches
                         if p.get_label().startswith(f"alpha {alpha:g} (")]
            np.testing.assert_allclose(stairs.get_data().values, want, atol=1e-12)


def test_pwcca_against_the_unregularized_network_per_alpha(ran):
    """Row "PWCCA ...": every trial against the alpha 0 trial the command names; the reference
    against itself is 1 in every layer, and another trial's number is PWCCA recomputed here
    from the two networks' unit activations."""
    from seltrain.analysis.dimensionality import layer_features
    from seltrain.analysis.pwcca import PwccaOptions, pwcca

    exp, figs = ran("pwcca")
    ref = PLACEHOLDERS["<an alpha 0 trial>"]
    for t in (trial_name(a, s) for a in ALPHAS for s in SEEDS):
        s = _summary(exp, t, "pwcca")
        assert s["reference"] == str(exp / "trials" / ref / "checkpoints" / "best.pt")
        assert s["n_images"] == 128 and s["warning"] is None  # 128 images, at most 64 units
        assert list(s["layers"]) == ["layer1.0", "layer3.2"]
        table = pd.read_csv(exp / "trials" / t / "analysis" / "pwcca" / "pwcca.csv")
        np.testing.assert_allclose(table["pwcca"], [v["pwcca"] for v in s["layers"].values()])
        for v in s["layers"].values():
            if t == ref:
                assert v["pwcca"] == pytest.approx(1.0, abs=1e-9)
            else:  # other weights (another seed, or alpha -1): related, not the same
                assert 0.2 < v["pwcca"] < 0.999
    other = trial_name(-1.0, 1)
    opts = PwccaOptions(layers=("layer3.2",), device="cpu")
    mine, theirs = (_open(exp, t, opts) for t in (other, ref))
    x, y = (layer_features(n.model, ["layer3.2"], n.data, spatial="mean", device="cpu")
            ["layer3.2"] for n in (mine, theirs))
    assert x.shape == (128, 64)
    assert _summary(exp, other, "pwcca")["layers"]["layer3.2"]["pwcca"] == pytest.approx(
        pwcca(x, y)["pwcca"], abs=1e-6)
    _check_headline(exp, figs, "pwcca", "mean_pwcca")


# --------------------------------------------------------------------------- Zhou et al. 2018

def test_ablation_drop_against_si(ran):
    exp, figs = ran("ablation")
    (ax, ax3) = _panels(figs["analysis_max_class_drop_vs_unit_si.png"])
    assert (ax.get_title(), ax3.get_title()) == ("layer1.0", "layer3.2")
    for panel, layer in ((ax, "layer1.0"), (ax3, "layer3.2")):
        points = [c.get_offsets().data for c in panel.collections]
        for alpha, got, label in zip(sorted(ALPHAS), points,
                                     [t.get_text() for t in panel.get_legend().get_texts()]):
            units = pd.concat([pd.read_csv(exp / "trials" / trial_name(alpha, s) / "analysis"
                                           / "ablation" / f"units_{layer}.csv") for s in SEEDS])
            np.testing.assert_allclose(got, units[["si", "max_class_drop"]].to_numpy())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rho = spearmanr(units["si"], units["max_class_drop"])[0]
            assert label == f"alpha {alpha:g}: rho {rho:.2f}"
    # the per-trial table: Spearman's rho of SI against the max class drop, per layer
    for t in (trial_name(a, s) for a in ALPHAS for s in SEEDS):
        units = pd.read_csv(exp / "trials" / t / "analysis" / "ablation" / "units_layer3.2.csv")
        got = _summary(exp, t, "ablation")["layers"]["layer3.2"]["rho_si_max_class_drop"]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a layer whose units all drop alike: no rho
            want = spearmanr(units["si"], units["max_class_drop"])[0]
        assert got is None and np.isnan(want) or got == pytest.approx(want)


def test_ablation_ranked_on_val_scored_on_test(ran):
    """Row "Ablation ranked on a held-out split": every trial records which split ranked and
    which scored; the ranking SI is the whole validation split's, and rho is Spearman's of it
    against the test drops."""
    from seltrain.analysis.ablation import AblationOptions
    from seltrain.analysis.unit_selectivity import unit_selectivity

    exp, _ = ran("ablation_val")
    for t in (trial_name(a, s) for a in ALPHAS for s in SEEDS):
        s = _summary(exp, t, "ablation")
        assert (s["rank_split"], s["score_split"]) == ("val", "test")
    t = trial_name(-1.0, 0)
    res = json.load(open(exp / "trials" / t / "analysis" / "ablation" / "ablation_layer3.2.json"))
    val = _open(exp, t, AblationOptions(split="val", layers=("layer3.2",), device="cpu"))
    assert val.data.num_images == 64
    si_val = unit_selectivity(val)["si"]["layer3.2"]
    np.testing.assert_allclose(res["si"], si_val, rtol=0, atol=1e-12)
    test = _open(exp, t, AblationOptions(layers=("layer3.2",), device="cpu", max_images=64))
    assert np.abs(unit_selectivity(test)["si"]["layer3.2"] - si_val).max() > 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(si_val, res["single_unit"]["max_class_drop"])[0]
    got = res["correlations"]["max_class_drop"]["si"]["rho"]
    assert got is None and np.isnan(rho) or got == pytest.approx(rho, abs=1e-12)


def test_random_rotation_against_the_unit_axes(ran):
    """Row "Random rotation of a layer's basis": the rotated network computes the trial's
    logits, its rotation is the seed's Haar draw, and the summary's means are the drops' CSV."""
    import torch

    from seltrain.analysis.rotation import RotationOptions, random_orthogonal, rotate_layer

    exp, figs = ran("rotation")
    q_seed = random_orthogonal(64, torch.Generator().manual_seed(3)).numpy()
    for t in (trial_name(a, s) for a in ALPHAS for s in SEEDS):
        out = exp / "trials" / t / "analysis" / "rotation"
        s = _summary(exp, t, "rotation")["layers"]["layer3.2"]
        assert s["rotated_baseline_acc"] == s["baseline_acc"] and s["units"] == 64
        table = pd.read_csv(out / "drops_layer3.2.csv")
        assert len(table) == 64
        for side in ("axes", "rotated"):
            assert s[f"mean_max_class_drop_{side}"] == pytest.approx(
                table[f"max_class_drop_{side}"].mean())
        q = np.array(json.load(open(out / "rotation_layer3.2.json"))["rotation"])
        np.testing.assert_allclose(q, q_seed, atol=1e-12)
        assert _valid(out / "max_class_drop_layer3.2.png")
    net = _open(exp, trial_name(-1.0, 1), RotationOptions(layers=("layer3.2",), device="cpu",
                                                           max_images=64))
    x = next(iter(net.data))[0]
    rotated = rotate_layer(net.model, "layer3.2", x, q=torch.from_numpy(q_seed))
    with torch.no_grad():
        want, got = net.model.eval()(x), rotated(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    for key in ("mean_max_class_drop_axes", "mean_max_class_drop_rotated"):
        _check_headline(exp, figs, "rotation", key)


# --------------------------------------------------------------------------- Ukita

def test_orientation_selectivity_against_test_accuracy(ran):
    exp, figs = ran("orientation")
    panels = _panels(figs["analysis_orientation_vs_test_acc.png"])
    assert [ax.get_title().split(":")[0] for ax in panels] == [
        "layer1.0 OSI", "layer3.2 OSI", "layer1.0 gOSI", "layer3.2 gOSI"]
    results = pd.read_csv(exp / "results.csv").set_index("trial")
    for ax, layer, key in ((panels[0], "layer1.0", "mean_osi"),
                           (panels[3], "layer3.2", "mean_gosi")):
        for alpha, pts in zip(sorted(ALPHAS), (c.get_offsets().data for c in ax.collections)):
            want = [(results.loc[trial_name(alpha, s), "test_acc"],
                     _summary(exp, trial_name(alpha, s), "orientation")["layers"][layer][key])
                    for s in SEEDS]
            np.testing.assert_allclose(pts, want)


def test_orientation_per_trial_figures(ran):
    exp, _ = ran("orientation")
    for t in (trial_name(a, s) for a in ALPHAS for s in SEEDS):
        out = exp / "trials" / t / "analysis" / "orientation"
        units = pd.read_csv(out / "units_layer1.0.csv")
        s = _summary(exp, t, "orientation")["layers"]["layer1.0"]
        assert s["mean_gosi"] == pytest.approx(units["gosi"].mean())
        assert s["mean_osi"] == pytest.approx(units["osi"].mean())
        for f in ("osi_gosi.png", "osi_gosi_vs_permuted.png", "orientation_range.png",
                  "gosi_split_ablation.png"):
            assert _valid(out / f), f


# --------------------------------------------------------------------------- Leavitt & Morcos 2020

def test_robustness_against_alpha(ran):
    exp, figs = ran("robustness")
    table = pd.read_csv(exp / "analysis_results.csv").set_index("trial")
    for m in ("mean_corruption_accuracy", "mean_fgsm_accuracy"):
        per_trial = {t: _summary(exp, t, "robustness")[m] for t in table.index}
        assert table[m].to_dict() == pytest.approx(per_trial)
        (ax,) = _panels(figs[f"analysis_{m}_vs_alpha.png"])
        _check_bars(ax, per_trial)


def test_dimensionality_and_gradients_against_alpha(ran):
    exp, figs = ran("dimensionality")
    table = pd.read_csv(exp / "analysis_results.csv").set_index("trial")
    for m, analysis in (("early_increase_adversarial", "dimensionality"),
                        ("representation_components_clean", "dimensionality"),
                        ("grad_across_samples_direction", "gradients")):
        per_trial = {t: _summary(exp, t, analysis)[m] for t in table.index}
        assert table[m].to_dict() == pytest.approx(per_trial)
        (ax,) = _panels(figs[f"analysis_{m}_vs_alpha.png"])
        _check_bars(ax, per_trial)
    panels = _panels(figs["analysis_dimensionality_increase_vs_alpha.png"])
    assert [ax.get_title() for ax in panels] == ["layer1.0", "layer3.2"]
    assert all(ax.get_xscale() == "symlog" for ax in panels)
