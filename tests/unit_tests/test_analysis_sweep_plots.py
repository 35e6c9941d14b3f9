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
