"""The figures of a sweep (``seltrain report``): a quantity against alpha over the trials of
an experiment, in one style (``sweep_against_alpha``: the symlog alpha axis, every trial, the
mean +- std over the seeds of each alpha, a title, a panel per layer), and the figures that
compare the trials' units (the SI distribution per alpha, SI over training, orientation
selectivity against test accuracy, ablation drop against SI). Each is drawn and saved as
seltrain/analysis/plots.py draws and saves (``plots._figure``, ``plots._save``: every chosen
format).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from seltrain.analysis import plots


# alpha spans both signs over four decades: symlog, linear within |alpha| < 0.1 (the sweep
# report's main figures use the same axis).
ALPHA_LINTHRESH = 0.1


def alpha_axis(ax, *, linthresh: float = ALPHA_LINTHRESH) -> None:
    """The sweep figures' alpha axis: symlog, a faint line at alpha 0, a light grid."""
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlabel("alpha (loss = CE - alpha * mean SI)", fontsize=8)
    ax.axvline(0, color="0.8", lw=0.8, zorder=0)
    ax.grid(alpha=0.3)


def seed_stats(x: Sequence[float], y: Sequence[float]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct x (alpha): the mean of y over its trials (seeds), the standard deviation
    (ddof 1; 0 where one trial holds a value) and the count, trials with a NaN y left out;
    an x with no finite y is dropped. Returns (x, mean, std, n)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xs, means, stds, ns = [], [], [], []
    for a in np.unique(x[np.isfinite(x)]):
        v = y[(x == a) & np.isfinite(y)]
        if len(v):
            xs.append(a)
            means.append(v.mean())
            stds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
            ns.append(len(v))
    return np.array(xs), np.array(means), np.array(stds), np.array(ns, dtype=int)


def sweep_against_alpha(alpha: Sequence[float],
                        panels: Mapping[str, Mapping[str, Sequence[float]]], path, *,
                        ylabel: str, title: str) -> Path:
    """The sweep style for a quantity against alpha: one panel per key of ``panels`` (all
    layers, then each layer), each series drawn as its trials (small grey points) and its
    mean +- std over the seeds of each alpha (``seed_stats``), on the symlog alpha axis
    (``alpha_axis``), titled. ``alpha``: one value per trial, as each series' values."""
    fig, axes = plots._figure(len(panels), cols=1 if len(panels) == 1 else
                        2 if len(panels) in (2, 4) else 3, size=(4.2, 3.2))
    several_seeds = any(n.max() > 1 for s in panels.values() for y in s.values()
                        for n in (seed_stats(alpha, y)[3],) if len(n))
    spread = "mean +- std over seeds" if several_seeds else "one seed per alpha"
    same = len({tuple(s) for s in panels.values()}) == 1
    for i, (ax, (name, series)) in enumerate(zip(axes, panels.items())):
        for j, (label, y) in enumerate(series.items()):
            y = np.asarray(y, dtype=np.float64)
            ok = np.isfinite(y)
            ax.scatter(np.asarray(alpha, dtype=np.float64)[ok], y[ok], s=8, color="0.6",
                       zorder=1)
            xs, mean, std, _ = seed_stats(alpha, y)
            ax.errorbar(xs, mean, yerr=std, fmt="o-", ms=4, lw=1, capsize=3, color=f"C{j}",
                        label=spread if len(series) == 1 else f"{label} ({spread})", zorder=2)
        alpha_axis(ax)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        if i == 0 or not same:
            ax.legend(fontsize=6 if len(series) > 3 else 7)
    return plots._save(fig, path, title)
