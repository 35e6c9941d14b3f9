"""Figures for the analyses and the sweep report. Each function draws one figure from an
analysis result and writes it whole (``seltrain.atomic.atomic_write``; parents created)
through ``_save``, the one function that writes a figure: once per chosen format (PNG, SVG,
PDF; ``--format``), the file name's suffix replaced by each format's. It returns the path
in the first chosen format.

The formats are chosen for a block of work with ``with formats(("png", "pdf")):`` (the
analyses' ``--format`` option, ``seltrain report --format``), so that no drawing function
and no analysis' ``write`` has to carry them; outside such a block a figure is written in
the format its file name says.

Figures are drawn on matplotlib's Agg canvas through ``matplotlib.figure.Figure`` rather than
pyplot, so nothing touches global backend state and plotting works on headless machines.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seltrain.analysis.options import FORMATS, parse_formats  # noqa: F401 - re-exported
from seltrain.atomic import atomic_write


def _figure(n_panels: int = 1, *, cols: int = 4, size: tuple[float, float] = (3.2, 2.6)
            ) -> tuple[Figure, list]:
    cols = max(1, min(cols, n_panels))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


# None: the format the file name says (a library caller's "f.pdf").
_formats: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "figure_formats", default=None)


@contextlib.contextmanager
def formats(chosen):
    """Every figure saved inside the block is written in each of ``chosen``."""
    token = _formats.set(parse_formats(chosen))
    try:
        yield
    finally:
        _formats.reset(token)


def _save(fig: Figure, path, title: str | None) -> Path:
    """Write ``fig`` to ``path`` in every chosen format (``path`` with each format's suffix);
    returns the path in the first."""
    if title:
        fig.suptitle(title)
    path = Path(path)
    written = []
    for fmt in _formats.get() or (path.suffix[1:] or "png",):
        target = path.with_suffix(f".{fmt}")
        # Into a file object, so the format is the chosen one, not the temporary's suffix.
        # No date in the vector files, so a figure redrawn from the same numbers is the same
        # file (SVG's element ids are hashed with a fixed salt for the same reason).
        meta = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
        with atomic_write(str(target), "wb") as f, \
                matplotlib.rc_context({"svg.hashsalt": "seltrain"}):
            fig.savefig(f, format=fmt, dpi=120, metadata=meta)
        written.append(target)
    return written[0]


def histograms(values: Mapping[str, Sequence[float]], path, *, xlabel: str = "value",
               bins: int = 20, value_range: tuple[float, float] | None = None,
               threshold: float | None = None, title: str | None = None) -> Path:
    """One histogram per layer (e.g. SI, OSI or gOSI per unit), with the layer mean marked
    and an optional threshold line."""
    fig, axes = _figure(len(values))
    for ax, (name, v) in zip(axes, values.items()):
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=bins, range=value_range, color="tab:blue", alpha=0.8)
        if len(v):
            ax.axvline(v.mean(), color="black", ls="--", lw=1, label=f"mean {v.mean():.3f}")
        if threshold is not None:
            ax.axvline(threshold, color="tab:red", lw=1, label=f"threshold {threshold:g}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("units")
        ax.legend(fontsize=7)
    return _save(fig, path, title)


def layer_means(values: Mapping[str, Sequence[float]], path, *, ylabel: str = "mean",
                title: str | None = None) -> Path:
    """The mean (+/- SEM over units) of a per-unit quantity for each layer, in order."""
    names = list(values)
    means = [np.nanmean(np.asarray(values[n], dtype=np.float64)) for n in names]
    sems = [np.nanstd(np.asarray(values[n], dtype=np.float64), ddof=1)
            / math.sqrt(max(np.isfinite(values[n]).sum(), 1)) if len(values[n]) > 1 else 0.0
            for n in names]
    fig, (ax,) = _figure(1, size=(max(4.0, 0.5 * len(names)), 3.0))
    ax.errorbar(range(len(names)), means, yerr=sems, marker="o", capsize=2)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    return _save(fig, path, title)


def cumulative_ablation(result: Mapping, path, *, title: str | None = None) -> Path:
    """Accuracy against the fraction of units ablated (``ablation.cumulative_ablation``)."""
    f = np.asarray(result["fractions"])
    fig, (ax,) = _figure(1, size=(4.5, 3.4))
    ax.plot(f, result["si_high_first"], marker="o", label="SI high first")
    ax.plot(f, result["si_low_first"], marker="s", label="SI low first")
    mean, std = np.asarray(result["random_mean"]), np.asarray(result["random_std"])
    if np.all(np.isfinite(mean)):
        ax.plot(f, mean, marker="^", color="gray", label="random")
        ax.fill_between(f, mean - std, mean + std, color="gray", alpha=0.25)
    ax.set_xlabel("fraction of units ablated")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _save(fig, path, title or f"cumulative ablation, {result.get('layer', '')}")


def drop_scatter(attribute: Sequence[float], drop: Sequence[float], path, *,
                 xlabel: str = "class selectivity index", ylabel: str = "max class drop",
                 rho: float | None = None, title: str | None = None) -> Path:
    """Per-unit ablation drop against a unit attribute, with Spearman's rho in the legend."""
    fig, (ax,) = _figure(1, size=(4.2, 3.4))
    label = None if rho is None else f"Spearman rho = {rho:.2f}"
    ax.scatter(attribute, drop, s=10, alpha=0.7, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if label:
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def orientation_distributions(osi: Mapping[str, Sequence[float]],
                              gosi: Mapping[str, Sequence[float]], path, *,
                              threshold: float = 0.33, title: str | None = None) -> Path:
    """OSI and gOSI distributions per layer (two rows), the gOSI threshold marked."""
    names = list(gosi)
    fig, axes = _figure(2 * len(names), cols=len(names))
    for i, name in enumerate(names):
        for ax, vals, label, thr in ((axes[i], osi.get(name, []), "OSI", None),
                                     (axes[len(names) + i], gosi[name], "gOSI", threshold)):
            v = np.asarray(vals, dtype=np.float64)
            ax.hist(v, bins=20, range=(0, 1), color="tab:green" if label == "OSI" else "tab:purple")
            if thr is not None:
                frac = float((v > thr).mean()) if len(v) else float("nan")
                ax.axvline(thr, color="tab:red", lw=1, label=f"> {thr:g}: {frac:.0%}")
                ax.legend(fontsize=7)
            ax.set_title(f"{name} {label}", fontsize=9)
            ax.set_xlabel(label)
    return _save(fig, path, title)


def null_distributions(osi: Mapping[str, Sequence[float]], gosi: Mapping[str, Sequence[float]],
                       null_osi: Mapping[str, Sequence[float]],
                       null_gosi: Mapping[str, Sequence[float]], path, *,
                       title: str | None = None) -> Path:
    """OSI and gOSI per layer on gratings against permuted gratings (Ukita's dist_OSI
    figure): overlaid histograms over [0, 1] in 10 bins, OSI top row, gOSI bottom row."""
    names = list(gosi)
    fig, axes = _figure(2 * len(names), cols=len(names))
    for i, name in enumerate(names):
        for ax, real, null, label in ((axes[i], osi[name], null_osi[name], "OSI"),
                                      (axes[len(names) + i], gosi[name], null_gosi[name],
                                       "gOSI")):
            real = np.asarray(real, dtype=np.float64).ravel()
            null = np.asarray(null, dtype=np.float64).ravel()
            # weights: fractions of units, so several permutations plot on the same scale
            for v, color, lab in ((real, "tab:red", "gratings"), (null, "tab:blue", "permuted")):
                ax.hist(v, bins=10, range=(0, 1), color=color, alpha=0.5, label=lab,
                        weights=np.full(len(v), 1 / max(len(v), 1)))
            ax.set_title(f"{name} {label}", fontsize=9)
            ax.set_xlabel(label)
            ax.set_ylabel("fraction of units", fontsize=7)
            ax.legend(fontsize=7)
    return _save(fig, path, title)


def orientation_ranges(ranges: Mapping[str, Sequence[float]],
                       gosi: Mapping[str, Sequence[float]], path, *, threshold: float = 0.33,
                       bins: int = 12, title: str | None = None) -> Path:
    """Histogram per layer of the orientation range across spatial frequencies of the units
    with gOSI above ``threshold`` (Ukita's ori_ranges figure: 12 bins over [0, 180))."""
    names = list(ranges)
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names):
        r = np.asarray(ranges[name], dtype=np.float64)
        r = r[(np.asarray(gosi[name], dtype=np.float64) > threshold) & np.isfinite(r)]
        ax.hist(r, bins=bins, range=(0, 180), color="tab:orange")
        ax.set_xticks(range(0, 181, 30))
        ax.set_title(f"{name} (gOSI > {threshold:g}: {len(r)})", fontsize=9)
        ax.set_xlabel("orientation range (deg)")
        ax.set_ylabel("units")
    return _save(fig, path, title)


def gosi_split_ablation(results: Mapping[str, Mapping], path, *,
                        title: str | None = None) -> Path:
    """Test cross-entropy increase (mean +/- SEM over images) per layer when its top- and its
    bottom-gOSI units are ablated (Ukita's plot_impact_tuned)."""
    names = list(results)
    fig, (ax,) = _figure(1, size=(max(4.5, 0.6 * len(names)), 3.4))
    for key, color in (("top", "tab:red"), ("bottom", "tab:blue")):
        ax.errorbar(range(len(names)), [results[n][key]["ce_increase_mean"] for n in names],
                    yerr=[results[n][key]["ce_increase_sem"] for n in names], color=color,
                    marker="o", capsize=2, label=f"{key} gOSI ablated")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("increase in test cross-entropy")
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def tuning_curves(R, path, *, orientations_deg: Sequence[float] | None = None,
                  units: Sequence[int] | None = None, title: str | None = None) -> Path:
    """Orientation tuning curves R(theta) of some units (default: the first 16)."""
    R = np.asarray(R, dtype=np.float64)
    units = list(range(min(16, len(R)))) if units is None else list(units)
    ang = np.arange(R.shape[1]) * 180.0 / R.shape[1] if orientations_deg is None \
        else np.asarray(orientations_deg)
    fig, axes = _figure(len(units), size=(2.2, 1.8))
    for ax, u in zip(axes, units):
        ax.plot(ang, R[u], marker=".")
        ax.set_title(f"unit {u}", fontsize=8)
        ax.set_xticks([0, 90, 180])
    return _save(fig, path, title)


def corruption_accuracy(result: Mapping, path, *, title: str | None = None) -> Path:
    """Accuracy against severity for each corruption (``robustness.accuracy_under_corruptions``
    or ``accuracy_on_released``), with the clean accuracy at severity 0, the mean over
    corruptions in the last panel, and where the corrupted images came from in the title."""
    sev = [0, *result["severities"]]
    names = list(result["accuracy"])
    curves = {n: [result["clean_acc"], *np.asarray(result["accuracy"][n])] for n in names}
    if len(names) > 1:
        curves["mean"] = [result["clean_acc"], *np.mean([np.asarray(result["accuracy"][n])
                                                        for n in names], 0)]
    fig, axes = _figure(len(curves), cols=5, size=(2.6, 2.2))
    for ax, (name, acc) in zip(axes, curves.items()):
        ax.plot(sev, acc, marker="o", color="k" if name == "mean" else None)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_xticks(sev)
        ax.set_xlabel("severity", fontsize=7)
    source = result.get("source")
    if source == "on-the-fly" and result.get("table_title"):
        source = f"on the fly, {result['table_title']} table"
    elif source == "released files":
        source = f"released files ({os.path.basename(str(result.get('root', '')))})"
    default = f"mean corruption accuracy {result['mean_corruption_accuracy']:.3f}"
    return _save(fig, path, title or (f"{default}: {source}" if source else default))


def attack_accuracy(results: Mapping[str, Mapping] | Mapping, path, *,
                    title: str | None = None) -> Path:
    """Accuracy against epsilon, one line per result (``robustness.accuracy_under_attack``);
    pass one result or a {label: result} mapping."""
    if "eps" in results:
        results = {results.get("attack", "attack"): results}
    fig, (ax,) = _figure(1, size=(4.5, 3.4))
    for label, r in results.items():
        ax.plot(r["eps"], r["accuracy"], marker="o", label=label)
    ax.set_xlabel("epsilon")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def dimensionality(results: Mapping[str, Mapping[str, Mapping]], path, *,
                   title: str | None = None) -> Path:
    """Components per layer, one line per condition: ``{"clean": layer_dimensionality(...),
    "corrupted": ..., "adversarial": ...}``."""
    fig, (ax,) = _figure(1, size=(5.0, 3.4))
    layers: list[str] = []
    for cond, res in results.items():
        layers = layers or list(res)
        ax.plot(range(len(res)), [res[n]["n_components"] for n in res], marker="o", label=cond)
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("principal components")
    ax.legend(fontsize=8)
    return _save(fig, path, title)


def dimensionality_readings(result: Mapping[str, Mapping[str, Mapping[str, Mapping]]], path, *,
                            title: str | None = None) -> Path:
    """Components per layer for both readings (``dimensionality.perturbation_dimensionality``):
    left, the representation of clean, corrupted and adversarial inputs; right, the
    perturbation-induced change (perturbed minus clean representation)."""
    panels = {"representation (of the inputs)": result["representation"],
              "change (perturbed - clean)": result["change"]}
    fig, axes = _figure(2, cols=2, size=(4.6, 3.4))
    for ax, (label, conditions) in zip(axes, panels.items()):
        layers: list[str] = []
        for cond, res in conditions.items():
            layers = layers or list(res)
            ax.plot(range(len(res)), [res[n]["n_components"] for n in res], marker="o",
                    label=cond)
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("principal components")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def gradient_variability(means: Mapping[str, Mapping[str, float]], path, *,
                         title: str | None = None) -> Path:
    """Per layer, the input-gradient statistics (``gradients.layer_means``): direction
    variability, norm CV and the share of zero gradients, each across samples (mean over
    units) and across units (mean over images)."""
    layers = list(means)
    stats = (("direction", "1 - mean pairwise cosine"), ("norm_cv", "CV of gradient norm"),
             ("zero_fraction", "share of zero gradients"))
    fig, axes = _figure(len(stats), cols=3, size=(3.6, 3.2))
    for ax, (stat, label) in zip(axes, stats):
        # the share of zeros is one number per layer (the mean of one zero/non-zero table)
        axes_ = ("across_samples",) if stat == "zero_fraction" else ("across_samples",
                                                                       "across_units")
        for axis, marker in zip(axes_, "os"):
            ax.plot(range(len(layers)), [means[n][f"{axis}_{stat}"] for n in layers],
                    marker=marker, label=axis.replace("_", " "))
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    return _save(fig, path, title)


def _split(n: int, groups: Sequence[str] | None) -> dict:
    """{group: the indices of its trials}, in the order the groups first appear; one group,
    None, of every index where there are no groups."""
    if groups is None:
        return {None: np.arange(n)}
    return {g: np.flatnonzero(np.asarray(groups) == g) for g in dict.fromkeys(groups)}


def panels_against(x: Sequence[float], panels: Mapping[str, Mapping[str, Sequence[float]]],
                   path, *, xlabel: str, ylabel: str, title: str | None = None,
                   groups: Sequence[str] | None = None) -> Path:
    """One panel per key of ``panels`` (e.g. a layer), each a scatter of its series against
    ``x`` (e.g. alpha over the trials of a sweep), points joined in x order: the per-layer
    comparisons of ``seltrain report --analyses dimensionality,gradients``. ``groups``: each
    point's group (a search over other keys), or None: with groups, each series is a line per
    group (colour = group; where a panel has several series, colour = series, line style =
    group), its points joined in x order within the group."""
    x = np.asarray(x, dtype=np.float64)
    split = _split(len(x), groups)
    fig, axes = _figure(len(panels), cols=2 if len(panels) in (2, 4) else 3, size=(3.6, 2.9))
    # the same series in every panel (e.g. one per layer): one legend, on the first panel
    same = len({tuple(s) for s in panels.values()}) == 1
    for i, (ax, (name, series)) in enumerate(zip(axes, panels.items())):
        for j, (label, y) in enumerate(series.items()):
            y = np.asarray(y, dtype=np.float64)
            for k, (group, idx) in enumerate(split.items()):
                idx = idx[np.argsort(x[idx], kind="stable")]
                if group is None:
                    ax.plot(x[idx], y[idx], marker="o", ms=4, lw=0.8, label=label)
                    continue
                one = len(series) == 1
                ax.plot(x[idx], y[idx], marker="o", ms=4, lw=0.8, color=f"C{k if one else j}",
                        ls="-" if one else ("-", "--", ":", "-.")[k % 4],
                        label=group if one else f"{label}, {group}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        if (len(series) > 1 or groups is not None) and (i == 0 or not same):
            ax.legend(fontsize=6 if len(series) * len(split) > 4 else 7)
    return _save(fig, path, title)


def against(x: Sequence[float], ys: Mapping[str, Sequence[float]], path, *, xlabel: str,
            ylabel: str, title: str | None = None, groups: Sequence[str] | None = None) -> Path:
    """Scatter of one or more quantities against one (e.g. robustness against mean SI over
    the trials of a sweep, ``seltrain report``). ``groups``: each point's group (a search over
    other keys), or None: with groups, a scatter (and a colour) per group and quantity."""
    x = np.asarray(x, dtype=np.float64)
    split = _split(len(x), groups)
    fig, (ax,) = _figure(1, size=(4.5, 3.4))
    for label, y in ys.items():
        y = np.asarray(y, dtype=np.float64)
        for group, idx in split.items():
            ax.scatter(x[idx], y[idx], s=14, label=label if group is None else
                       group if len(ys) == 1 else f"{label}, {group}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(ys) > 1 or groups is not None:
        ax.legend(fontsize=8)
    return _save(fig, path, title)

