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
                        ylabel: str, title: str, groups: Sequence[str] | None = None) -> Path:
    """The sweep style for a quantity against alpha: one panel per key of ``panels`` (all
    layers, then each layer), each series drawn as its trials (small grey points) and its
    mean +- std over the seeds of each alpha (``seed_stats``), on the symlog alpha axis
    (``alpha_axis``), titled. ``alpha``: one value per trial, as each series' values.
    ``groups``: each trial's group (a search over other keys, ``seltrain report``), or None:
    with groups, each series is drawn once per group, its trials and means in the group's
    colour (and, where a panel has several series, colour = series, line style = group), so
    that no mean pools two groups."""
    fig, axes = plots._figure(len(panels), cols=1 if len(panels) == 1 else
                        2 if len(panels) in (2, 4) else 3, size=(4.2, 3.2))
    x = np.asarray(alpha, dtype=np.float64)
    split = {None: np.arange(len(x))} if groups is None else {
        g: np.flatnonzero(np.asarray(groups) == g) for g in dict.fromkeys(groups)}
    several_seeds = any(n.max() > 1 for s in panels.values() for y in s.values()
                        for idx in split.values()
                        for n in (seed_stats(x[idx], np.asarray(y, np.float64)[idx])[3],)
                        if len(n))
    spread = "mean +- std over seeds" if several_seeds else "one seed per alpha"
    same = len({tuple(s) for s in panels.values()}) == 1
    for i, (ax, (name, series)) in enumerate(zip(axes, panels.items())):
        for j, (label, y) in enumerate(series.items()):
            y = np.asarray(y, dtype=np.float64)
            for k, (group, idx) in enumerate(split.items()):
                a, v = x[idx], y[idx]
                ok = np.isfinite(v)
                if group is None:
                    ax.scatter(a[ok], v[ok], s=8, color="0.6", zorder=1)
                    colour, fmt = f"C{j}", "o-"
                    legend = spread if len(series) == 1 else f"{label} ({spread})"
                else:
                    colour = f"C{k}" if len(series) == 1 else f"C{j}"
                    fmt = "o" + ("-" if len(series) == 1 else LINESTYLES[k % len(LINESTYLES)])
                    ax.scatter(a[ok], v[ok], s=8, color=colour, alpha=0.4, zorder=1)
                    legend = (f"{group}" if len(series) == 1 else f"{label}, {group}") + \
                        f" ({spread})"
                xs, mean, std, _ = seed_stats(a, v)
                ax.errorbar(xs, mean, yerr=std, fmt=fmt, ms=4, lw=1, capsize=3, color=colour,
                            label=legend, zorder=2)
        alpha_axis(ax)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        if i == 0 or not same:
            ax.legend(fontsize=6 if len(series) * len(split) > 3 else 7)
    return plots._save(fig, path, title)


# Where a figure's colour already says something else (alpha, a series), the line style says
# the group.
LINESTYLES = ("-", "--", ":", "-.")


def _by_alpha(alpha: Sequence[float]) -> dict[float, list[int]]:
    """{alpha: the indices of its trials}, alphas in increasing order."""
    out: dict[float, list[int]] = {}
    for i, a in sorted(enumerate(map(float, alpha)), key=lambda t: t[1]):
        out.setdefault(a, []).append(i)
    return out


def _alpha_lines(alpha: Sequence[float], groups: Sequence[str] | None
                 ) -> list[tuple[int, int, str, list[int]]]:
    """(colour index, group index, label, the indices of its trials) of each alpha, or with
    ``groups`` (each trial's group: a search over other keys) of each group and alpha: the
    colour says the alpha (the same in every group), the group index the line style or
    marker, so that no line pools two groups."""
    if groups is None:
        return [(j, 0, f"alpha {a:g}", idx) for j, (a, idx) in enumerate(_by_alpha(alpha).items())]
    alphas = sorted(set(map(float, alpha)))
    out = []
    for k, g in enumerate(dict.fromkeys(groups)):
        mine = [i for i, name in enumerate(groups) if name == g]
        for a, idx in _by_alpha([alpha[i] for i in mine]).items():
            out.append((alphas.index(a), k, f"alpha {a:g}, {g}", [mine[i] for i in idx]))
    return out


# A group's marker where a scatter's colour says the alpha.
MARKERS = ("o", "s", "^", "D", "v", "P")


def _cols(n: int) -> int:
    return 1 if n == 1 else 2 if n in (2, 4) else 3


def si_distributions(alpha: Sequence[float], si: Mapping[str, Sequence[Sequence[float]]],
                     path, *, bins: int = 20, title: str | None = None,
                     groups: Sequence[str] | None = None) -> Path:
    """The distribution of unit SI for each alpha, overlaid, one panel per layer: ``si[layer]``
    holds each trial's per-unit SI; the units of an alpha's seeds are pooled, and each
    histogram is in fractions of its units (``stairs``, so alphas with different unit counts
    share a scale). ``groups``: each trial's group (a search over other keys), or None: with
    groups, a histogram per group and alpha (colour = alpha, line style = group)."""
    lines = _alpha_lines(alpha, groups)
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig, axes = plots._figure(len(si), cols=_cols(len(si)), size=(4.2, 3.2))
    for ax, (layer, per_trial) in zip(axes, si.items()):
        for j, k, name, idx in lines:
            v = np.concatenate([np.asarray(per_trial[i], dtype=np.float64) for i in idx])
            v = v[np.isfinite(v)]
            counts = np.histogram(v, bins=edges)[0] / max(len(v), 1)
            style = {} if groups is None else {"ls": LINESTYLES[k % len(LINESTYLES)]}
            ax.stairs(counts, edges, color=f"C{j}", lw=1.2, **style,
                      label=f"{name} ({len(idx)} seed{'s' * (len(idx) > 1)}, "
                            f"mean {v.mean() if len(v) else float('nan'):.3f})")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("class selectivity index", fontsize=8)
        ax.set_ylabel("fraction of units", fontsize=8)
        ax.legend(fontsize=6)
    return plots._save(fig, path, title or "Unit SI per alpha")


def si_over_training(alpha: Sequence[float], curves: Mapping[str, Sequence[Sequence[float]]],
                     path, *, title: str | None = None,
                     groups: Sequence[str] | None = None) -> Path:
    """SI against epoch for each alpha, one panel per key of ``curves`` (the mean over layers,
    then each layer): ``curves[panel]`` holds each trial's per-epoch values (epoch 1 first);
    each alpha's line is the mean over its seeds at each epoch (the seeds that reached it),
    the band +- their std. ``groups``: each trial's group (a search over other keys), or
    None: with groups, a line per group and alpha, colour = alpha (the same in every group),
    line style = group."""
    lines = [(f"C{j}", LINESTYLES[k % len(LINESTYLES)], label, idx)
             for j, k, label, idx in _alpha_lines(alpha, groups)]
    fig, axes = plots._figure(len(curves), cols=_cols(len(curves)), size=(4.2, 3.2))
    for i, (ax, (name, per_trial)) in enumerate(zip(axes, curves.items())):
        for colour, style, label, idx in lines:
            n = max(len(per_trial[t]) for t in idx)
            table = np.full((len(idx), n), np.nan)
            for r, t in enumerate(idx):
                table[r, :len(per_trial[t])] = np.asarray(per_trial[t], dtype=np.float64)
            seen = np.isfinite(table).sum(0)
            keep = seen > 0
            mean = np.nansum(table, 0)[keep] / seen[keep]
            std = np.array([np.std(c[np.isfinite(c)], ddof=1) if np.isfinite(c).sum() > 1
                            else 0.0 for c in table.T[keep]])
            epochs = np.arange(1, n + 1)[keep]
            ax.plot(epochs, mean, marker="o", ms=3, color=colour, ls=style, label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("class selectivity (test)", fontsize=8)
        if i == 0:
            ax.legend(fontsize=6)
    return plots._save(fig, path, title or "SI over training per alpha (mean +- std over seeds)")


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok])[0])


def orientation_vs_accuracy(alpha: Sequence[float], test_acc: Sequence[float],
                            osi: Mapping[str, Sequence[float]],
                            gosi: Mapping[str, Sequence[float]], path, *,
                            title: str | None = None,
                            groups: Sequence[str] | None = None) -> Path:
    """Ukita's generalisation figure over the trials of a sweep: each layer's mean OSI (top
    row) and mean gOSI (bottom row) of every trial against its test accuracy, the trials of
    one alpha in one colour, Spearman's rho over all trials in each panel's title.
    ``groups``: each trial's group (a search over other keys), or None: with groups, the
    marker says the group."""
    layers = list(gosi)
    series = _alpha_lines(alpha, groups)
    acc = np.asarray(test_acc, dtype=np.float64)
    fig, axes = plots._figure(2 * len(layers), cols=len(layers), size=(3.4, 2.9))
    for i, layer in enumerate(layers):
        for ax, values, label in ((axes[i], osi[layer], "mean OSI"),
                                  (axes[len(layers) + i], gosi[layer], "mean gOSI")):
            v = np.asarray(values, dtype=np.float64)
            for j, k, name, idx in series:
                marker = {} if groups is None else {"marker": MARKERS[k % len(MARKERS)]}
                ax.scatter(acc[idx], v[idx], s=16, color=f"C{j}", label=name, **marker)
            ax.set_title(f"{layer} {label.split()[1]}: rho {_spearman(acc, v):.2f}", fontsize=9)
            ax.set_xlabel("test accuracy", fontsize=8)
            ax.set_ylabel(label, fontsize=8)
    axes[0].legend(fontsize=6)
    return plots._save(fig, path, title or "Orientation selectivity against test accuracy")


def drop_vs_si(alpha: Sequence[float], si: Mapping[str, Sequence[Sequence[float]]],
               drop: Mapping[str, Sequence[Sequence[float]]], path, *,
               ylabel: str = "max class drop", title: str | None = None,
               groups: Sequence[str] | None = None) -> Path:
    """Zhou et al.'s unit ablation against class selectivity, over the trials of a sweep: one
    panel per layer, every unit of every trial (``si[layer][trial]``, ``drop[layer][trial]``)
    as a point, the units of one alpha (its seeds pooled) in one colour with their Spearman
    rho in the legend. ``groups``: each trial's group (a search over other keys), or None:
    with groups, the units of each group and alpha, the marker saying the group."""
    series = _alpha_lines(alpha, groups)
    fig, axes = plots._figure(len(drop), cols=_cols(len(drop)), size=(4.2, 3.2))
    for ax, layer in zip(axes, drop):
        for j, k, name, idx in series:
            x = np.concatenate([np.asarray(si[layer][i], dtype=np.float64) for i in idx])
            y = np.concatenate([np.asarray(drop[layer][i], dtype=np.float64) for i in idx])
            marker = {} if groups is None else {"marker": MARKERS[k % len(MARKERS)]}
            ax.scatter(x, y, s=8, alpha=0.7, color=f"C{j}",
                       label=f"{name}: rho {_spearman(x, y):.2f}", **marker)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("class selectivity index", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=6)
    return plots._save(fig, path, title or f"Ablation {ylabel} against SI per alpha")
