"""The sweep figures (seltrain/analysis/sweep_plots.py): what each one plots, read back from
the figure it saves (error bars, scatter and line data, axis scales, titles)."""
from __future__ import annotations

import numpy as np
import pytest

from seltrain.analysis import sweep_plots
from test_analysis_plots import _panels, _scatter, drawn  # noqa: F401 - the fixture


def _error_bars(ax, label):
    """(x, mean, lower, upper) of the errorbar call labelled ``label``."""
    (bar,) = [c for c in ax.containers if c.get_label() == label]
    line, _, (bars,) = bar.lines
    segs = np.asarray(bars.get_segments(), float)  # [[x, mean - err], [x, mean + err]] each
    return (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float),
            segs[:, 0, 1], segs[:, 1, 1])


def test_sweep_against_alpha_draws_each_alphas_seed_mean_and_spread(tmp_path, drawn):
    alpha = [-1, -1, 0, 0, 0, 10]
    si = [0.1, 0.3, 0.5, 0.6, np.nan, 0.9]  # a NaN trial is left out of its alpha's mean
    layer = [0.2, 0.4, 0.6, 0.8, 0.7, 1.0]
    sweep_plots.sweep_against_alpha(alpha, {"mean over layers": {"mean SI": si},
                                      "layer1": {"SI": layer}}, tmp_path / "s.png",
                              ylabel="mean SI", title="Mean SI against alpha")
    fig = drawn["s.png"]
    assert fig._suptitle.get_text() == "Mean SI against alpha"
    ax, ax1 = _panels(fig)
    assert ax.get_xscale() == ax1.get_xscale() == "symlog"
    assert ax.xaxis.get_transform().linthresh == 0.1
    assert ax.get_title() == "mean over layers" and ax1.get_title() == "layer1"
    x, mean, lo, hi = _error_bars(ax, "mean +- std over seeds")
    np.testing.assert_allclose(x, [-1, 0, 10])
    np.testing.assert_allclose(mean, [0.2, 0.55, 0.9])
    std = [np.std([0.1, 0.3], ddof=1), np.std([0.5, 0.6], ddof=1), 0.0]
    np.testing.assert_allclose(hi - mean, std, atol=1e-12)
    np.testing.assert_allclose(mean - lo, std, atol=1e-12)
    x, mean, lo, hi = _error_bars(ax1, "mean +- std over seeds")
    np.testing.assert_allclose(mean, [0.3, 0.7, 1.0])
    np.testing.assert_allclose(hi - mean, [np.std([0.2, 0.4], ddof=1), 0.1, 0.0], atol=1e-12)
    # every finite trial is drawn as a point
    assert len(_scatter(ax)) == 5 and len(_scatter(ax1)) == 6
    x, mean, std, n = sweep_plots.seed_stats(alpha, si)
    assert n.tolist() == [2, 2, 1]


def test_si_distributions_pool_each_alphas_seeds_in_fractions_of_units(tmp_path, drawn):
    alpha = [0, 0, -1]
    si = {"layer1": [[0.02, 0.07], [0.52, 0.97], [0.01, 0.02, 0.03, 0.99]]}
    sweep_plots.si_distributions(alpha, si, tmp_path / "d.png", bins=10)
    (ax,) = _panels(drawn["d.png"])
    stairs = {p.get_label().split(" (")[0]: p.get_data() for p in ax.patches}
    assert sorted(stairs) == ["alpha -1", "alpha 0"]
    np.testing.assert_allclose(stairs["alpha 0"].values, [0.5, 0, 0, 0, 0, 0.25, 0, 0, 0, 0.25])
    np.testing.assert_allclose(stairs["alpha -1"].values, [0.75, 0, 0, 0, 0, 0, 0, 0, 0, 0.25])
    np.testing.assert_allclose(stairs["alpha 0"].edges, np.linspace(0, 1, 11))
    assert "mean 0.395" in [p.get_label() for p in ax.patches if "alpha 0" in p.get_label()][0]


def test_orientation_vs_accuracy_places_each_trial_with_spearmans_rho(tmp_path, drawn):
    alpha = [-1, 0, 1, 0]
    acc = [0.5, 0.6, 0.7, 0.8]
    osi = {"conv1": [0.1, 0.2, 0.3, 0.4]}
    gosi = {"conv1": [0.4, 0.3, 0.2, 0.1]}
    sweep_plots.orientation_vs_accuracy(alpha, acc, osi, gosi, tmp_path / "o.png")
    top, bottom = _panels(drawn["o.png"])
    assert top.get_title() == "conv1 OSI: rho 1.00" and bottom.get_title() == "conv1 gOSI: rho -1.00"
    pts = np.concatenate([_scatter(top, i) for i in range(3)])  # alphas -1, 0, 1
    np.testing.assert_allclose(pts, [[0.5, 0.1], [0.6, 0.2], [0.8, 0.4], [0.7, 0.3]])
    np.testing.assert_allclose(_scatter(bottom, 1), [[0.6, 0.3], [0.8, 0.1]])


def test_drop_vs_si_pools_each_alphas_units_with_their_rho(tmp_path, drawn):
    alpha = [0, 0, -1]
    si = {"l": [[0.1, 0.2], [0.3], [0.4, 0.5, 0.6]]}
    drop = {"l": [[0.01, 0.02], [0.03], [0.3, 0.2, 0.1]]}
    sweep_plots.drop_vs_si(alpha, si, drop, tmp_path / "z.png")
    (ax,) = _panels(drawn["z.png"])
    np.testing.assert_allclose(_scatter(ax, 0), [[0.4, 0.3], [0.5, 0.2], [0.6, 0.1]])
    np.testing.assert_allclose(_scatter(ax, 1), [[0.1, 0.01], [0.2, 0.02], [0.3, 0.03]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "alpha -1: rho -1.00", "alpha 0: rho 1.00"]


def test_si_over_training_averages_the_seeds_that_reached_each_epoch(tmp_path, drawn):
    sweep_plots.si_over_training([1, 1], {"mean over layers": [[0.2, 0.4, 0.6], [0.4]]},
                                 tmp_path / "t.png")
    (ax,) = _panels(drawn["t.png"])
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.4, 0.6])
