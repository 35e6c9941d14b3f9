"""``seltrain report`` (seltrain/report.py) on an experiment folder written as ``seltrain tune``
writes one (trials/<name>/config.yaml, metrics.jsonl, summary.json; seltrain_experiment.json;
interrupted.json): one row per trial with its best epoch, which trials ASHA stopped, the
per-alpha means and spreads over the completed trials, the best alpha by each metric, the
printed table and lines, results.csv, and the figures' plotted points."""
from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np
import pytest
import yaml

from seltrain import report
from seltrain.config import Config
from seltrain.errors import ConfigError, DataError

# name: (alpha, seed, lr, per-epoch (val_acc, test_acc, test_si), finished)
TRIALS = {
    "alpha-1_seed0_a": (-1.0, 0, 0.1, [(0.5, 0.45, 0.3), (0.7, 0.65, 0.2), (0.6, 0.62, 0.25)],
                        True),
    "alpha-1_seed1_b": (-1.0, 1, 0.1, [(0.6, 0.55, 0.3), (0.8, 0.78, 0.1), (0.75, 0.7, 0.15)],
                        True),
    "alpha0_seed0_c": (0.0, 0, 0.2, [(0.7, 0.6, 0.5), (0.72, 0.7, 0.45), (0.9, 0.88, 0.4)], True),
    "alpha10_seed0_d": (10.0, 0, 0.1, [(0.4, 0.35, 0.6)], False),  # ASHA stopped it
    "alpha10_seed1_e": (10.0, 1, 0.1, [(0.3, 0.3, 0.7), (0.35, 0.33, 0.72)], False),  # Ctrl-C
}


def _run(folder, alpha, seed, lr, epochs, finished, planned=3):
    os.makedirs(folder)
    cfg = Config().to_dict()
    cfg["selectivity"]["alpha"], cfg["train"]["seed"] = alpha, seed
    cfg["train"]["lr"], cfg["train"]["epochs"] = lr, planned
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for e, (val, test, si) in enumerate(epochs):
            f.write(json.dumps({"epoch": e, "train_loss": 1.0, "val_acc": val, "test_acc": test,
                                "test_si": si}) + "\n")
    if finished:
        with open(os.path.join(folder, "summary.json"), "w") as f:
            json.dump({"best_epoch": 0}, f)


@pytest.fixture
def experiment(tmp_path):
    exp = tmp_path / "exp"
    for name, (alpha, seed, lr, epochs, finished) in TRIALS.items():
        _run(str(exp / "trials" / name), alpha, seed, lr, epochs, finished)
    (exp / "seltrain_experiment.json").write_text(json.dumps(
        {"scheduler": {"type": "asha"}, "space": {"selectivity.alpha": "grid", "train.lr": "grid"}}))
    (exp / "interrupted.json").write_text(json.dumps({"cut_trials": ["alpha10_seed1_e"]}))
    return str(exp)


def test_one_row_per_trial_with_its_best_epoch(experiment):
    rows = {r["trial"]: r for r in report.collect_trials(experiment)}
    assert list(rows) == sorted(TRIALS)
    assert rows["alpha-1_seed0_a"] == {
        "trial": "alpha-1_seed0_a", "alpha": -1.0, "seed": 0, "epochs_run": 3,
        "epochs_planned": 3, "stopped_early": False, "complete": True, "best_epoch": 2,
        "best_val_acc": 0.7, "test_acc": 0.65, "test_si": 0.2, "train.lr": 0.1}
    assert (rows["alpha0_seed0_c"]["best_epoch"], rows["alpha0_seed0_c"]["train.lr"]) == (3, 0.2)
    # stopped early: by the scheduler, not by a Ctrl-C (interrupted.json) nor when none runs
    assert rows["alpha10_seed0_d"]["stopped_early"] and not rows["alpha10_seed0_d"]["complete"]
    assert not rows["alpha10_seed1_e"]["stopped_early"]
    assert rows["alpha10_seed1_e"]["epochs_run"] == 2


def test_no_scheduler_means_nothing_was_stopped_early(experiment):
    with open(os.path.join(experiment, "seltrain_experiment.json"), "w") as f:
        json.dump({"scheduler": {"type": "none"}}, f)
    rows = report.collect_trials(experiment)
    assert not any(r["stopped_early"] for r in rows) and "train.lr" not in rows[0]


def test_without_validation_the_best_epoch_is_by_test_accuracy(tmp_path):
    _run(str(tmp_path / "r"), 1.0, 0, 0.1, [(None, 0.3, 0.1), (None, 0.6, 0.2), (None, 0.5, 0.3)],
         True)
    # a torn last line (a crash mid-append) is skipped, not an error
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "val_ac')
    (row,) = report.collect_trials(str(tmp_path))  # run folders collected by hand
    assert (row["best_epoch"], row["test_acc"], row["test_si"], row["epochs_run"]) == (
        2, 0.6, 0.2, 3)
    assert row["best_val_acc"] is None


@pytest.mark.parametrize("records,message", [
    ([{"epoch": -1}], "record 1 has epoch -1, not a whole number >= 0"),
    ([{"epoch": 0, "val_acc": 0.5}, {"epoch": 1.5}], "record 2 has epoch 1.5, not a whole "
                                                       "number >= 0"),
    ([{"epoch": 0, "val_acc": 1.2}], "epoch 1 has val_acc 1.2, not a number in [0, 1]"),
    ([{"epoch": 2, "test_si": "high"}], "epoch 3 has test_si 'high', not a number in [0, 1]"),
    ([{"epoch": 0, "test_acc": float("inf")}], "epoch 1 has test_acc inf, not a number in "
                                               "[0, 1]"),
    ([{"epoch": 0, "test_acc": True}], "epoch 1 has test_acc True, not a number in [0, 1]"),
])
def test_a_record_the_report_cannot_use_is_one_line_naming_it(records, message):
    with pytest.raises(DataError) as e:
        report.check_records("runs/r/metrics.jsonl", records)
    assert str(e.value) == (f"runs/r/metrics.jsonl: {message}; restore the file or remove that "
                            "record")


def test_the_report_aggregates_completed_trials_and_names_the_best_alpha(experiment):
    printed = io.StringIO()
    r = report.report_experiment(experiment, out=printed, tensorboard=False)
    agg = r["by_alpha"].set_index("alpha")
    assert list(agg.index) == [-1.0, 0.0]  # alpha 10 has no completed trial
    assert agg.loc[-1.0, "n"] == 2 and agg.loc[0.0, "n"] == 1
    assert agg.loc[-1.0, "best_val_acc_mean"] == pytest.approx(0.75)
    assert agg.loc[-1.0, "best_val_acc_std"] == pytest.approx(math.sqrt(0.005))  # ddof 1
    assert agg.loc[-1.0, "test_acc_mean"] == pytest.approx(0.715)
    assert agg.loc[-1.0, "test_acc_std"] == pytest.approx(0.065 * math.sqrt(2))
    assert agg.loc[-1.0, "test_si_mean"] == pytest.approx(0.15)
    assert math.isnan(agg.loc[0.0, "best_val_acc_std"])  # one seed: no spread
    assert r["best"]["alpha"] == 0.0
    lines = printed.getvalue().splitlines()
    assert lines[1] == f"5 trials in {experiment} (3 complete, 1 stopped early)"
    assert "best alpha by best_val_acc_mean: 0 (best_val_acc_mean 0.9000, test_acc 0.8800, " \
           "test_si 0.4000; one seed)" in lines
    assert lines[-1] == (f"wrote {experiment}/results.csv, results_by_alpha.csv and 4 plots (png) in "
                         f"{experiment}/plots")
    assert "per alpha (completed trials, mean and std over seeds):" in lines
    with open(os.path.join(experiment, "results.csv"), newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["trial"] for t in table] == ["alpha-1_seed0_a", "alpha-1_seed1_b",
                                           "alpha0_seed0_c", "alpha10_seed0_d",
                                           "alpha10_seed1_e"]  # by alpha, then seed
    assert (table[3]["stopped_early"], table[3]["best_val_acc"], table[2]["train.lr"]) == (
        "True", "0.4", "0.2")
    with open(os.path.join(experiment, "results_by_alpha.csv"), newline="") as f:
        by_alpha = list(csv.DictReader(f))
    assert [(b["alpha"], b["n"], float(b["test_acc_mean"])) for b in by_alpha] == [
        ("-1.0", "2", pytest.approx(0.715)), ("0.0", "1", pytest.approx(0.88))]
    assert sorted(os.listdir(os.path.join(experiment, "plots"))) == [
        "acc_vs_si.png", "si_over_training.png", "si_vs_alpha.png", "test_acc_vs_alpha.png"]
    assert not [f for f in os.listdir(experiment) if f.startswith(".")]  # no temporaries


def test_the_best_alpha_by_another_metric_shows_the_spread(experiment):
    printed = io.StringIO()
    r = report.report_experiment(experiment, metric="test_si", mode="min", out=printed,
                                 tensorboard=False)
    assert r["best"]["alpha"] == -1.0
    assert ("best alpha by test_si_mean: -1 (test_si_mean 0.1500 +- 0.0707, test_acc 0.7150 "
            "+- 0.0919, test_si 0.1500 +- 0.0707)") in printed.getvalue().splitlines()


def test_the_figures_plot_the_per_alpha_means_and_every_trial(experiment, monkeypatch):
    figures = {}
    save = report._save

    def keep(plt, fig, path):
        figures[os.path.basename(path)] = fig
        return save(plt, fig, path)

    monkeypatch.setattr(report, "_save", keep)
    report.report_experiment(experiment, out=io.StringIO(), tensorboard=False)
    ax = figures["test_acc_vs_alpha.png"].axes[0]
    (means,) = ax.containers
    np.testing.assert_allclose(np.asarray(means.lines[0].get_xdata(), float), [-1.0, 0.0])
    np.testing.assert_allclose(np.asarray(means.lines[0].get_ydata(), float), [0.715, 0.88])
    assert means.get_label() == "mean +- std over seeds"
    done, stopped = (c.get_offsets().data for c in ax.collections[:2])
    np.testing.assert_allclose(sorted(map(tuple, done)), [(-1, 0.65), (-1, 0.78), (0, 0.88)])
    np.testing.assert_allclose(sorted(map(tuple, stopped)), [(10, 0.33), (10, 0.35)])
    assert ax.get_xscale() == "symlog"
    ax = figures["acc_vs_si.png"].axes[0]
    np.testing.assert_allclose(sorted(map(tuple, ax.collections[0].get_offsets().data)),
                               [(0.1, 0.78), (0.2, 0.65), (0.4, 0.88), (0.6, 0.35),
                                (0.72, 0.33)])
    assert sorted(t.get_text() for t in ax.texts) == ["-1", "0"]  # each mean, named by alpha


def _valid(path) -> bool:
    head = open(path, "rb").read(64)
    return {".png": head[:8] == b"\x89PNG\r\n\x1a\n", ".pdf": head[:5] == b"%PDF-",
            ".svg": head.startswith(b"<?xml") and b"<svg" in open(path, "rb").read()
            }[os.path.splitext(path)[1]]


def test_every_figure_is_written_in_each_format(experiment):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    printed = io.StringIO()
    r = report.report_experiment(experiment, out=printed, formats="svg,pdf,png")
    names = ("test_acc_vs_alpha", "si_vs_alpha", "acc_vs_si", "si_over_training")
    # the paths returned are the first format's; every format of every figure is on disk
    assert [os.path.basename(p) for p in r["plots"]] == [f"{n}.svg" for n in names]
    written = sorted(os.listdir(os.path.join(experiment, "plots")))
    assert written == sorted(f"{n}.{x}" for n in names for x in ("png", "svg", "pdf"))
    assert all(_valid(os.path.join(experiment, "plots", f)) for f in written)
    assert "4 plots (svg, pdf, png) in" in printed.getvalue()
    acc = EventAccumulator(os.path.join(experiment, "tb_sweep"), size_guidance={"images": 0})
    acc.Reload()  # TensorBoard holds the PNGs
    assert sorted(acc.Tags()["images"]) == sorted(f"sweep/{n}" for n in names)


def test_a_report_in_pdf_only_writes_no_png_and_an_unknown_format_is_one_line(experiment):
    r = report.report_experiment(experiment, out=io.StringIO(), tensorboard=False,
                                 formats=("pdf",))
    assert sorted(os.listdir(os.path.join(experiment, "plots"))) == [
        "acc_vs_si.pdf", "si_over_training.pdf", "si_vs_alpha.pdf", "test_acc_vs_alpha.pdf"]
    assert all(_valid(p) for p in r["plots"])
    with pytest.raises(ConfigError, match=r"^--format png,tiff: unknown format 'tiff'; choose "
                                          r"from png, svg, pdf \(comma-separated for several\)$"):
        report.report_experiment(experiment, out=io.StringIO(), formats="png,tiff")


def test_si_over_training_is_each_alphas_seed_mean_per_epoch(experiment, monkeypatch):
    from seltrain.analysis import plots

    figures = {}
    save = plots._save

    def keep(fig, path, title):
        figures[os.path.basename(path)] = fig
        return save(fig, path, title)

    monkeypatch.setattr(plots, "_save", keep)
    report.report_experiment(experiment, out=io.StringIO(), tensorboard=False)
    (ax,) = [a for a in figures["si_over_training.png"].axes if a.get_visible()]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert sorted(lines) == ["alpha -1", "alpha 0"]  # completed trials only, as the means
    np.testing.assert_allclose(lines["alpha -1"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(lines["alpha -1"].get_ydata(), [0.3, 0.15, 0.2])
    np.testing.assert_allclose(lines["alpha 0"].get_ydata(), [0.5, 0.45, 0.4])
    # the band is +- the seeds' std: epoch 2 of alpha -1 has SI 0.2 and 0.1
    band = ax.collections[0].get_paths()[0].vertices
    assert np.isclose(band[:, 1], 0.15 + np.std([0.2, 0.1], ddof=1)).any()


def test_an_empty_or_missing_experiment_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^experiment folder not found: .*/none$"):
        report.report_experiment(str(tmp_path / "none"), out=io.StringIO())
    with pytest.raises(ConfigError, match=r"holds no trial run folders \(trials/\*/config.yaml\) "
                                          r"yet$"):
        report.report_experiment(str(tmp_path), out=io.StringIO())


def test_dead_units_at_the_best_epoch_are_tabulated_and_plotted_against_alpha(tmp_path,
                                                                              monkeypatch):
    """test_dead_per_layer of each trial's best epoch: results.csv gets its layer mean
    (test_dead) and each layer (dead/<layer>), results_by_alpha.csv the mean and spread over
    seeds, and dead_vs_alpha.png plots those means."""
    exp = tmp_path / "exp"
    for name, alpha, seed, dead in (("a", -10.0, 0, {"l1": 0.5, "l2": 0.25}),
                                    ("b", -10.0, 1, {"l1": 0.25, "l2": 0.0}),
                                    ("c", 0.0, 0, {"l1": 0.0, "l2": 0.0})):
        folder = exp / "trials" / name
        _run(str(folder), alpha, seed, 0.1, [(0.5, 0.5, 0.3)], True, planned=1)
        rec = json.loads((folder / "metrics.jsonl").read_text())
        rec["test_dead_per_layer"] = dead
        (folder / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
    from seltrain.analysis import plots

    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, title: figures.setdefault(
        os.path.basename(str(path)), fig) and save(fig, path, title))
    r = report.report_experiment(str(exp), out=io.StringIO(), tensorboard=False)
    rows = {row["trial"]: row for row in csv.DictReader(open(exp / "results.csv"))}
    assert float(rows["a"]["test_dead"]) == 0.375 and float(rows["a"]["dead/l1"]) == 0.5
    assert float(rows["c"]["test_dead"]) == 0.0
    by = {row["alpha"]: row for row in csv.DictReader(open(exp / "results_by_alpha.csv"))}
    assert float(by["-10.0"]["test_dead_mean"]) == pytest.approx(0.25)
    assert float(by["-10.0"]["test_dead_std"]) == pytest.approx(math.sqrt(2 * 0.125 ** 2))
    # a panel for the mean over layers (results_by_alpha.csv's means), then one per layer
    panels = [a for a in figures["dead_vs_alpha.png"].axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["mean over layers", "l1", "l2"]
    for ax, want in zip(panels, ([0.25, 0.0], [(0.5 + 0.25) / 2, 0.0], [(0.25 + 0.0) / 2, 0.0])):
        (means,) = ax.containers
        np.testing.assert_allclose(np.asarray(means.lines[0].get_xdata(), float), [-10.0, 0.0])
        np.testing.assert_allclose(np.asarray(means.lines[0].get_ydata(), float), want)
        assert ax.get_xscale() == "symlog"
    (bars,) = panels[1].containers[0].lines[2]  # l1 at alpha -10: +- the seeds' std
    np.testing.assert_allclose(bars.get_segments()[0][:, 1], 0.375 + np.array([-1, 1]) *
                               np.std([0.5, 0.25], ddof=1))
    assert any(p.endswith("dead_vs_alpha.png") for p in r["plots"])


# alpha, start epoch, seed, test_acc, test_si: tune/alpha_late.yaml in small
LATE = [(-10.0, 0, 0, 0.4, 0.1), (-10.0, 0, 1, 0.5, 0.2), (-10.0, 5, 0, 0.8, 0.3),
        (-10.0, 5, 1, 0.9, 0.5), (0.0, 0, 0, 0.6, 0.4), (0.0, 5, 0, 0.7, 0.6)]
START = "selectivity.alpha_schedule.start_epoch"


def _late(tmp_path):
    exp = tmp_path / "late"
    for alpha, start, seed, test_acc, si in LATE:
        folder = exp / "trials" / f"alpha{alpha:g}_start_epoch{start}_seed{seed}"
        _run(str(folder), alpha, seed, 0.1, [(0.5, test_acc, si)], True, planned=1)
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["selectivity"]["alpha_schedule"] = {"kind": "step", "start_epoch": start}
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (exp / "seltrain_experiment.json").write_text(json.dumps(
        {"scheduler": {"type": "none"}, "space": {"selectivity.alpha": "grid", START: "grid"}}))
    return exp


def test_a_search_over_another_key_is_grouped_by_it_and_alpha(tmp_path, monkeypatch):
    """tune/alpha_late.yaml: results_by_group.csv holds each start epoch and alpha's means
    over seeds, each main figure one series per start epoch; results_by_alpha.csv has the
    same rows ordered by alpha (no row pools two start epochs), the printed best alpha is
    each start epoch's, then the best of them, and results.csv keeps each trial's start
    epoch."""
    from seltrain.analysis import plots

    exp = _late(tmp_path)
    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, title: figures.setdefault(
        os.path.basename(str(path)), fig) and save(fig, path, title))
    printed = io.StringIO()
    r = report.report_experiment(str(exp), out=printed, tensorboard=False, metric="test_acc")
    by_alpha = list(csv.DictReader(open(exp / "results_by_alpha.csv")))
    assert list(by_alpha[0])[:4] == ["alpha", START, "n", "best_val_acc_mean"]
    # by alpha, then start epoch: alpha -10's four trials are two rows of two seeds, not one
    # mean of 0.65 over both start epochs
    assert [(float(b["alpha"]), int(b[START]), int(b["n"]), float(b["test_acc_mean"]))
            for b in by_alpha] == [(-10.0, 0, 2, pytest.approx(0.45)),
                                   (-10.0, 5, 2, pytest.approx(0.85)),
                                   (0.0, 0, 1, pytest.approx(0.6)), (0.0, 5, 1, pytest.approx(0.7))]
    assert float(by_alpha[1]["test_si_std"]) == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert r["by_alpha"]["n"].tolist() == [2, 2, 1, 1]
    assert (r["best"][START], r["best"]["alpha"]) == (5, -10.0)  # the best group's best alpha
    rows = list(csv.DictReader(open(exp / "results_by_group.csv")))
    assert list(rows[0])[:3] == [START, "alpha", "n"]
    got = {(int(row[START]), float(row["alpha"])): row for row in rows}
    assert list(got) == [(0, -10.0), (0, 0.0), (5, -10.0), (5, 0.0)]  # by start, then alpha
    for key, n, acc, si in (((0, -10.0), 2, (0.4 + 0.5) / 2, (0.1 + 0.2) / 2),
                            ((0, 0.0), 1, 0.6, 0.4), ((5, -10.0), 2, (0.8 + 0.9) / 2,
                                                      (0.3 + 0.5) / 2), ((5, 0.0), 1, 0.7, 0.6)):
        assert int(got[key]["n"]) == n
        assert float(got[key]["test_acc_mean"]) == pytest.approx(acc)
        assert float(got[key]["test_si_mean"]) == pytest.approx(si)
    assert float(got[(5, -10.0)]["test_acc_std"]) == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert got[(0, 0.0)]["test_acc_std"] == ""  # one seed: no spread
    lines = printed.getvalue().splitlines()
    assert f"per {START} and alpha (results_by_group.csv):" in lines
    i = lines.index(f"best alpha by test_acc_mean per {START}:")
    assert lines[i + 1:i + 4] == [
        "  start_epoch=0: alpha 0 (test_acc_mean 0.6000, test_acc 0.6000, test_si 0.4000; one "
        "seed)",
        "  start_epoch=5: alpha -10 (test_acc_mean 0.8500 +- 0.0707, test_acc 0.8500 +- 0.0707, "
        "test_si 0.4000 +- 0.1414)",
        f"best {START} and alpha by test_acc_mean: start_epoch=5, alpha -10 (test_acc_mean "
        "0.8500 +- 0.0707; 2 seeds)"]
    assert not any(ln.startswith(("per alpha", "best alpha by test_acc_mean:")) for ln in lines)
    assert "results_by_alpha.csv, results_by_group.csv and 4 plots (png)" in printed.getvalue()
    ax = figures["test_acc_vs_alpha.png"].axes[0]
    series = {c.get_label(): c for c in ax.containers}
    assert sorted(series) == ["start_epoch=0 (mean +- std over seeds)",
                              "start_epoch=5 (mean +- std over seeds)"]
    for start, want in ((0, [0.45, 0.6]), (5, [0.85, 0.7])):
        line = series[f"start_epoch={start} (mean +- std over seeds)"].lines[0]
        np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [-10.0, 0.0])
        np.testing.assert_allclose(np.asarray(line.get_ydata(), float), want)
    assert ax.get_xscale() == "symlog"
    ax = figures["si_vs_alpha.png"].axes[0]
    np.testing.assert_allclose([np.asarray(c.lines[0].get_ydata(), float) for c in
                                ax.containers], [[0.15, 0.4], [0.4, 0.6]])
    ax = figures["acc_vs_si.png"].axes[0]  # each start's means, at (mean SI, mean accuracy)
    np.testing.assert_allclose(
        [np.asarray(c.lines[0].get_xydata(), float).tolist() for c in ax.containers],
        [[[0.15, 0.45], [0.4, 0.6]], [[0.4, 0.85], [0.6, 0.7]]])
    assert [t.get_text() for t in ax.texts] == ["-10", "0", "-10", "0"]
    trials = {row["trial"]: row for row in csv.DictReader(open(exp / "results.csv"))}
    assert trials["alpha-10_start_epoch5_seed1"][START] == "5"


# alpha, start epoch, seed, test SI per epoch (1, 2), dead units of layers l1, l2 (epoch 2)
LATE_EPOCHS = [(-10.0, 0, 0, [0.3, 0.1], (0.5, 0.25)), (-10.0, 0, 1, [0.5, 0.3], (0.25, 0.25)),
               (-10.0, 5, 0, [0.6, 0.5], (0.0, 0.0)), (0.0, 0, 0, [0.4, 0.45], (0.0, 0.0)),
               (0.0, 5, 0, [0.4, 0.5], (0.125, 0.0))]


def _drawn(monkeypatch) -> dict:
    """{file name: figure} of every figure saved through plots._save."""
    from seltrain.analysis import plots

    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, title: figures.setdefault(
        os.path.basename(str(path)), fig) and save(fig, path, title))
    return figures


def _series(ax) -> dict:
    """{legend label: (x, y)} of the mean +- std series (errorbar containers) of a panel."""
    return {c.get_label(): (np.asarray(c.lines[0].get_xdata(), float).tolist(),
                            np.asarray(c.lines[0].get_ydata(), float).tolist())
            for c in ax.containers}


def test_si_over_training_and_dead_units_are_drawn_per_start_epoch_and_alpha(tmp_path,
                                                                           monkeypatch):
    """tune/alpha_late.yaml over two epochs: si_over_training.png has a line per start epoch
    and alpha (colour = alpha, the same in both groups; line style = start epoch), each the
    seeds' mean per epoch of metrics.jsonl's test_si (and test_si_per_layer in the layer
    panels); dead_vs_alpha.png a panel for the mean over layers and one per layer, a series
    per start epoch of the best epoch's dead fractions."""
    exp = tmp_path / "late"
    for alpha, start, seed, si, (d1, d2) in LATE_EPOCHS:
        folder = exp / "trials" / f"alpha{alpha:g}_start_epoch{start}_seed{seed}"
        _run(str(folder), alpha, seed, 0.1, [(0.4, 0.5, si[0]), (0.6, 0.5, si[1])], True,
             planned=2)
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["selectivity"]["alpha_schedule"] = {"kind": "step", "start_epoch": start}
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        recs = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
        for rec in recs:  # layer l1 0.1 above the mean, l2 0.1 below
            rec["test_si_per_layer"] = {"l1": rec["test_si"] + 0.1, "l2": rec["test_si"] - 0.1}
            rec["test_dead_per_layer"] = {"l1": d1, "l2": d2}
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (exp / "seltrain_experiment.json").write_text(json.dumps(
        {"scheduler": {"type": "none"}, "space": {"selectivity.alpha": "grid", START: "grid"}}))
    figures = _drawn(monkeypatch)
    report.report_experiment(str(exp), out=io.StringIO(), tensorboard=False)

    mean, l1, l2 = [a for a in figures["si_over_training.png"].axes if a.get_visible()]
    assert [a.get_title() for a in (mean, l1, l2)] == ["mean over layers", "l1", "l2"]
    lines = {ln.get_label(): ln for ln in mean.get_lines()}
    want = {"alpha -10, start_epoch=0": [(0.3 + 0.5) / 2, (0.1 + 0.3) / 2],
            "alpha 0, start_epoch=0": [0.4, 0.45], "alpha -10, start_epoch=5": [0.6, 0.5],
            "alpha 0, start_epoch=5": [0.4, 0.5]}
    assert sorted(lines) == sorted(want)
    for label, y in want.items():
        np.testing.assert_allclose(lines[label].get_xdata(), [1, 2])
        np.testing.assert_allclose(lines[label].get_ydata(), y)
    # colour = alpha, line style = start epoch
    assert {(ln.get_color(), ln.get_linestyle()) for ln in lines.values()} == {
        (lines["alpha -10, start_epoch=0"].get_color(), "-"),
        (lines["alpha -10, start_epoch=0"].get_color(), "--"),
        (lines["alpha 0, start_epoch=0"].get_color(), "-"),
        (lines["alpha 0, start_epoch=0"].get_color(), "--")}
    assert lines["alpha -10, start_epoch=5"].get_color() == \
        lines["alpha -10, start_epoch=0"].get_color() != lines["alpha 0, start_epoch=5"].get_color()
    (l1_line,) = [ln for ln in l1.get_lines() if ln.get_label() == "alpha -10, start_epoch=0"]
    np.testing.assert_allclose(l1_line.get_ydata(), [0.5, 0.3])

    panels = [a for a in figures["dead_vs_alpha.png"].axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["mean over layers", "l1", "l2"]
    one = " (mean +- std over seeds)"
    for ax, start0, start5 in zip(panels, ([(0.75 / 2 + 0.5 / 2) / 2, 0.0], [0.375, 0.0],
                                           [0.25, 0.0]),
                                  ([0.0, 0.0625], [0.0, 0.125], [0.0, 0.0])):
        got = _series(ax)
        assert sorted(got) == [f"start_epoch=0{one}", f"start_epoch=5{one}"]
        assert got[f"start_epoch=0{one}"][0] == got[f"start_epoch=5{one}"][0] == [-10.0, 0.0]
        np.testing.assert_allclose(got[f"start_epoch=0{one}"][1], start0)
        np.testing.assert_allclose(got[f"start_epoch=5{one}"][1], start5)
    by_alpha = list(csv.DictReader(open(exp / "results_by_alpha.csv")))
    assert float(by_alpha[0]["test_dead_mean"]) == pytest.approx(0.3125)  # alpha -10, start 0


def test_the_analyses_figures_draw_a_series_per_start_epoch(tmp_path, monkeypatch):
    """``--analyses`` on tune/alpha_late.yaml, from hand-written rows and summaries: mean SI per
    layer (selectivity), the ablation's headline number and dimensionality's per-layer panels,
    against alpha and against mean SI, each a series per start epoch whose means are the
    seeds' means within that start epoch."""
    from seltrain import report_analyses

    # alpha, start, seed, mean SI, l1's SI, mean overall drop, l1's clean components
    table = [(-10.0, 0, 0, 0.1, 0.2, 0.02, 10), (-10.0, 0, 1, 0.2, 0.3, 0.04, 12),
             (-10.0, 5, 0, 0.3, 0.5, 0.10, 20), (0.0, 0, 0, 0.4, 0.6, 0.06, 14),
             (0.0, 5, 0, 0.6, 0.7, 0.08, 16)]
    rows = [{"trial": f"t{i}", "alpha": a, "seed": seed, START: start, "test_acc": 0.5,
             "mean_si": si, "mean_overall_drop": drop}
            for i, (a, start, seed, si, _, drop, _) in enumerate(table)]
    per_trial = {"selectivity": [{"si_per_layer": {"l1": l1}} for *_, l1, _, _ in table],
                 "ablation": [{} for _ in table],
                 "dimensionality": [{"layers": {"l1": {"representation": {"clean": c}}}}
                                    for *_, c in table]}
    figures = _drawn(monkeypatch)
    report_analyses._against_figures(rows, per_trial, str(tmp_path / "plots"), [START])
    one = " (mean +- std over seeds)"
    mean, l1 = [a for a in figures["analysis_mean_si_vs_alpha.png"].axes if a.get_visible()]
    for ax, start0, start5 in ((mean, [0.15, 0.4], [0.3, 0.6]), (l1, [0.25, 0.6], [0.5, 0.7])):
        got = _series(ax)
        assert got[f"start_epoch=0{one}"][0] == got[f"start_epoch=5{one}"][0] == [-10.0, 0.0]
        np.testing.assert_allclose(got[f"start_epoch=0{one}"][1], start0)
        np.testing.assert_allclose(got[f"start_epoch=5{one}"][1], start5)
    (ax,) = [a for a in figures["analysis_mean_overall_drop_vs_alpha.png"].axes
             if a.get_visible()]
    got = _series(ax)
    np.testing.assert_allclose(got[f"start_epoch=0{one}"][1], [0.03, 0.06])
    np.testing.assert_allclose(got[f"start_epoch=5{one}"][1], [0.10, 0.08])
    assert ax.get_xscale() == "symlog"
    (ax,) = [a for a in figures["analysis_mean_overall_drop_vs_si.png"].axes
             if a.get_visible()]
    points = {c.get_label(): sorted(map(tuple, np.asarray(c.get_offsets(), float).tolist()))
              for c in ax.collections}
    assert points == {"start_epoch=0": [(0.1, 0.02), (0.2, 0.04), (0.4, 0.06)],
                      "start_epoch=5": [(0.3, 0.10), (0.6, 0.08)]}
    (ax,) = [a for a in figures["analysis_dimensionality_clean_vs_alpha.png"].axes
             if a.get_visible()]
    got = _series(ax)
    np.testing.assert_allclose(got[f"start_epoch=0{one}"][1], [11, 14])
    np.testing.assert_allclose(got[f"start_epoch=5{one}"][1], [20, 16])
    (ax,) = [a for a in figures["analysis_dimensionality_clean_vs_si.png"].axes
             if a.get_visible()]
    lines = {ln.get_label(): np.asarray(ln.get_xydata(), float).tolist()
             for ln in ax.get_lines()}
    assert lines == {"start_epoch=0": [[0.1, 10], [0.2, 12], [0.4, 14]],  # in mean SI order
                     "start_epoch=5": [[0.3, 20], [0.6, 16]]}


def test_the_unit_figures_draw_each_start_epoch_and_alpha_apart(tmp_path, monkeypatch):
    """``--analyses selectivity,ablation`` on tune/alpha_late.yaml, from hand-written
    selectivity.json and units_<layer>.csv files: the unit SI histograms and the drops
    against unit SI pool the units of one start epoch and alpha's seeds, never two start
    epochs."""
    from seltrain import report_analyses
    from seltrain.analysis.serialize import write_csv

    # start epoch, seed, units' SI (none on a bin edge), their max class drop
    trials = [(0, 0, [0.12, 0.32], [0.1, 0.2]), (0, 1, [0.52], [0.3]),
              (5, 0, [0.72, 0.92], [0.5, 0.4])]
    rows, sel, abl = [], [], []
    for i, (start, seed, si, drop) in enumerate(trials):
        out = tmp_path / f"t{i}"
        out.mkdir()
        (out / "selectivity.json").write_text(json.dumps({"si": {"l1": si}}))
        write_csv(str(out / "units_l1.csv"), {"unit": range(len(si)), "si": si,
                                              "overall_drop": [0.0] * len(si),
                                              "max_class_drop": drop})
        rows.append({"trial": f"t{i}", "alpha": -10.0, "seed": seed, START: start,
                     "test_acc": 0.5 + 0.1 * i})
        sel.append({"out_dir": str(out)})
        abl.append({"out_dir": str(out), "layers": ["l1"]})
    ori = [{"layers": {"l1": {"mean_osi": 0.2 * i, "mean_gosi": 0.1 * i}}} for i in range(3)]
    figures = _drawn(monkeypatch)
    report_analyses._unit_figures(rows, {"selectivity": sel, "ablation": abl,
                                         "orientation": ori}, str(tmp_path / "plots"), [START])
    (ax,) = [a for a in figures["analysis_si_distributions.png"].axes if a.get_visible()]
    hist = {p.get_label(): p for p in ax.patches}
    assert sorted(hist) == ["alpha -10, start_epoch=0 (2 seeds, mean 0.320)",
                            "alpha -10, start_epoch=5 (1 seed, mean 0.820)"]
    want = np.zeros(20)
    want[[2, 6, 10]] = 1 / 3  # 0.12, 0.32, 0.52: a third of start epoch 0's units each
    np.testing.assert_allclose(hist["alpha -10, start_epoch=0 (2 seeds, mean 0.320)"]
                               .get_data().values, want)
    assert hist["alpha -10, start_epoch=5 (1 seed, mean 0.820)"].get_linestyle() == "--"
    (ax,) = [a for a in figures["analysis_max_class_drop_vs_unit_si.png"].axes
             if a.get_visible()]
    points = {c.get_label(): sorted(map(tuple, np.asarray(c.get_offsets(), float).tolist()))
              for c in ax.collections}
    assert points == {"alpha -10, start_epoch=0: rho 1.00": [(0.12, 0.1), (0.32, 0.2),
                                                               (0.52, 0.3)],
                      "alpha -10, start_epoch=5: rho nan": [(0.72, 0.5), (0.92, 0.4)]}
    osi = [a for a in figures["analysis_orientation_vs_test_acc.png"].axes if a.get_visible()][0]
    points = {c.get_label(): sorted(map(tuple, np.asarray(c.get_offsets(), float).tolist()))
              for c in osi.collections}  # (test accuracy, mean OSI) of each trial
    np.testing.assert_allclose(points["alpha -10, start_epoch=0"], [(0.5, 0.0), (0.6, 0.2)])
    np.testing.assert_allclose(points["alpha -10, start_epoch=5"], [(0.7, 0.4)])


def test_without_other_keys_the_report_is_what_it_was(experiment, tmp_path):
    """No results_by_group.csv and no group in any output: a search over alpha alone, and one
    whose other key holds one value per alpha (the fixture's train.lr, which pools nothing),
    write the same bytes (figures in every format, results_by_alpha.csv, the printed lines
    after the trial table) as the report before groups (its results_by_alpha.csv below)."""
    plain = tmp_path / "plain"
    for name, (alpha, seed, lr, epochs, finished) in TRIALS.items():
        _run(str(plain / "trials" / name), alpha, seed, lr, epochs, finished)
    (plain / "seltrain_experiment.json").write_text(json.dumps(
        {"scheduler": {"type": "asha"}, "space": {"selectivity.alpha": "grid"}}))
    (plain / "interrupted.json").write_text(json.dumps({"cut_trials": ["alpha10_seed1_e"]}))
    printed = {}
    for exp in (experiment, str(plain)):
        out = io.StringIO()
        r = report.report_experiment(exp, out=out, tensorboard=False, formats="png,svg,pdf")
        printed[exp] = out.getvalue().replace(exp, "EXP")
        assert "by_group" not in r
        assert not os.path.exists(os.path.join(exp, "results_by_group.csv"))
    # the trial table has the train.lr column; what follows it is the same
    assert printed[experiment].split("\nper alpha")[1] == printed[str(plain)].split(
        "\nper alpha")[1]
    assert "group" not in printed[experiment]
    for f in ["results_by_alpha.csv"] + [f"plots/{p}" for p in
                                         sorted(os.listdir(os.path.join(experiment, "plots")))]:
        assert open(os.path.join(experiment, f), "rb").read() == (plain / f).read_bytes(), f
    assert (plain / "results_by_alpha.csv").read_text().splitlines() == [
        "alpha,n,best_val_acc_mean,best_val_acc_std,test_acc_mean,test_acc_std,test_si_mean,"
        "test_si_std", "-1.0,2,0.75,0.07071067811865482,0.7150000000000001,0.09192388155425114,"
        "0.15000000000000002,0.07071067811865477", "0.0,1,0.9,,0.88,,0.4,"]


def test_the_bn_dropout_search_draws_each_groups_class_drops_side_by_side(tmp_path,
                                                                           monkeypatch):
    """tune/bn_dropout.yaml in small: two arms (vgg16 and vgg16_bn) at alpha 0, their units'
    max class drop (the ablation's units_<layer>.csv) pooled over each arm's seeds, one box
    per arm in analysis_class_drop_by_group.png, whose means are the hand-computed ones."""
    from seltrain import report_analyses
    from seltrain.analysis import plots
    from seltrain.analysis.serialize import write_csv

    drops = {("vgg16_bn", 0): [0.1, 0.3, 0.8], ("vgg16", 0): [0.2, 0.4, 0.9],
             ("vgg16", 1): [0.0, 0.6]}
    rows, summaries = [], []
    for i, ((arch, seed), d) in enumerate(drops.items()):
        out = tmp_path / f"t{i}"
        out.mkdir()
        write_csv(str(out / "units_fc1.csv"), {"unit": range(len(d)), "si": [0.5] * len(d),
                                               "overall_drop": [0.0] * len(d),
                                               "max_class_drop": d})
        rows.append({"trial": f"t{i}", "alpha": 0.0, "seed": seed, "model.arch": arch})
        summaries.append({"out_dir": str(out), "layers": ["fc1"]})
    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, title: figures.setdefault(
        os.path.basename(str(path)), fig) and save(fig, path, title))
    paths = report_analyses._unit_figures(rows, {"ablation": summaries}, str(tmp_path / "plots"),
                                          ["model.arch"])
    assert [os.path.basename(p) for p in paths] == [
        "analysis_max_class_drop_vs_unit_si.png", "analysis_overall_drop_vs_unit_si.png",
        "analysis_class_drop_by_group.png"]
    assert (tmp_path / "plots" / "analysis_class_drop_by_group.png").read_bytes()[:4] == \
        b"\x89PNG"
    (ax,) = [a for a in figures["analysis_class_drop_by_group.png"].axes if a.get_visible()]
    # boxes in the order of the key's values; a group's trials (seeds) pooled
    assert [t.get_text() for t in ax.get_xticklabels()] == ["arch=vgg16\n(2 trials)",
                                                            "arch=vgg16_bn\n(1 trial)"]
    means = [float(np.mean(ln.get_ydata())) for ln in ax.get_lines()
             if ln.get_linestyle() == "--"]  # meanline: the dashed line per box
    np.testing.assert_allclose(means, [(0.2 + 0.4 + 0.9 + 0.0 + 0.6) / 5, (0.1 + 0.3 + 0.8) / 3])
    medians = [ln for ln in ax.get_lines() if ln.get_color() in ("C1", "#ff7f0e")]
    np.testing.assert_allclose([float(np.mean(ln.get_ydata())) for ln in medians], [0.4, 0.3])
    assert ax.get_title() == "fc1"
