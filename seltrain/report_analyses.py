"""``seltrain report EXPERIMENT --analyses NAMES``: the analyses of every trial of a sweep (each
trial's best checkpoint), their headline numbers against alpha and mean SI, and the figures
that compare the trials' units (``sweep_analyses``), run in this process or as Ray tasks
(``--address``, ``seltrain.analysis.fanout``). seltrain/report.py calls it after the sweep's
own table and figures.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from seltrain import report_groups
from seltrain.checkpoint import run_checkpoint, trials_root
from seltrain.errors import CheckpointError, ConfigError, did_you_mean


def sweep_analyses(exp_dir: str, analyses: list[str], trials: list[dict], *,
                   extra: list[str] | None = None, out=None,
                   formats: tuple[str, ...] = ("png",), fanout=None) -> dict:
    """Run ``analyses`` on each trial's best checkpoint and plot their headline numbers (each
    analysis declares its own: ``SWEEP_HEADLINE``, and ``sweep_panels`` for per-layer
    figures) against alpha and against mean SI into <exp>/plots/. ``extra``: the options of
    ``--analysis-args``, read strictly into each analysis' options before anything runs
    (``commands.sweep_options``). ``trials``: rows of ``collect_trials``. ``fanout``: run
    them as Ray tasks, one per trial and analysis (``seltrain.analysis.fanout``).
    Returns {"rows": [...], "plots": [...]}; writes <exp>/analysis_results.csv."""
    import pandas as pd

    from seltrain.analysis.commands import run_analysis, sweep_options
    from seltrain.analysis.registry import ANALYSES, NAMES
    from seltrain.analysis.serialize import write_csv
    out = out or sys.stdout

    bad = [a for a in analyses if a not in ANALYSES]
    if bad:
        raise ConfigError(f"--analyses: unknown {', '.join(bad)}"
                          f"{did_you_mean(bad[0], NAMES)}; choose from {', '.join(NAMES)}")
    options = {a: dataclasses.replace(o, format=tuple(formats))
               for a, o in sweep_options(analyses, list(extra or [])).items()}
    modules = {a: ANALYSES[a] for a in analyses}
    root = trials_root(exp_dir)
    rows = []
    per_trial: dict[str, list[dict]] = {a: [] for a in analyses}
    skipped = []
    runs = []
    for t in trials:
        run = os.path.join(root, t["trial"])
        if run_checkpoint(run, ("best.pt",)) is None:
            skipped.append(t["trial"])
            print(f"analyses: skipped {run}: no checkpoints/best.pt (the trial ended or was "
                  "stopped before its first checkpoint)", file=out)
            continue
        runs.append((t, run))
    fanned = fan_out([run for _, run in runs], options, fanout, out) if fanout else {}
    # The searched keys besides alpha that split its trials (report_groups): a column each.
    keys = report_groups.group_keys(pd.DataFrame(trials), report_groups.searched_keys(exp_dir)) \
        if trials else []
    for t, run in runs:
        row = {"trial": t["trial"], "alpha": t["alpha"], "seed": t["seed"],
               **{k: t.get(k) for k in keys},
               "test_acc": t.get("test_acc"), "mean_si": t.get("test_si")}
        for a in analyses:
            s = fanned[(os.path.abspath(run), a)] if fanout else \
                run_analysis(a, run, options[a], stream=out)[0]
            row.update({k: s.get(k) for k in modules[a].SWEEP_HEADLINE})
            per_trial[a].append(s)
        rows.append(row)
    if not rows:
        raise CheckpointError(f"no trial in {exp_dir} has checkpoints/best.pt")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(os.path.join(exp_dir, "analysis_results.csv"),
              {c: [np.nan if r.get(c) is None else r.get(c) for r in rows] for c in cols})
    plot_dir = os.path.join(exp_dir, "plots")
    paths = _against_figures(rows, per_trial, plot_dir, keys)
    paths += _unit_figures(rows, per_trial, plot_dir, keys)
    print(f"wrote {os.path.join(exp_dir, 'analysis_results.csv')} and {len(paths)} analysis "
          f"plots in {os.path.join(exp_dir, 'plots')}"
          + (f"; analysed {len(rows)} of {len(rows) + len(skipped)} trials, skipped "
             f"{', '.join(skipped)} (no checkpoints/best.pt)" if skipped else ""), file=out)
    return {"rows": rows, "plots": [str(p) for p in paths], "skipped": skipped}


def _against_figures(rows: list[dict], per_trial: dict[str, list[dict]], plot_dir: str,
                     keys: list[str] = ()) -> list:
    """The analyses' headline numbers (each analysis' ``SWEEP_HEADLINE``, the columns of
    ``rows``) and per-layer panels (``sweep_panels`` of its summaries ``per_trial[name]``)
    against alpha (analysis_<name>_vs_alpha) and against mean SI (analysis_<name>_vs_si),
    and mean SI per layer against alpha (analysis_mean_si_vs_alpha). ``rows``: one per
    trial (alpha, seed, mean_si, the keys, the headline numbers); ``keys``: the other searched
    keys that split the trials, a series per group in every figure."""
    from seltrain.analysis import plots, sweep_plots
    from seltrain.analysis.registry import ANALYSES

    modules = {a: ANALYSES[a] for a in per_trial}
    metrics = [m for a in per_trial for m in modules[a].SWEEP_HEADLINE if m != "mean_si"]
    paths = []
    # Figures against alpha in the sweep style (plots.sweep_against_alpha: symlog axis, the
    # trials, mean +- std over seeds, a title, per-layer panels where the analysis has them).
    alpha = [r["alpha"] for r in rows]
    si = [np.nan if r["mean_si"] is None else r["mean_si"] for r in rows]
    # Where other searched keys split an alpha's trials, a series per group in every figure
    # against alpha or mean SI, as in the main figures: no mean pools two groups.
    groups = report_groups.labels(rows, keys) if keys else None

    def vs_alpha(name: str, panels: dict, ylabel: str, title: str) -> None:
        paths.append(sweep_plots.sweep_against_alpha(alpha, panels, os.path.join(
            plot_dir, f"analysis_{name}_vs_alpha.png"), ylabel=ylabel, title=title,
            groups=groups))

    for m in metrics:
        y = [np.nan if r.get(m) is None else r[m] for r in rows]
        vs_alpha(m, {m: {m: y}}, m, f"{m} against alpha")
        paths.append(plots.against(si, {m: y}, os.path.join(plot_dir, f"analysis_{m}_vs_si.png"),
                                   xlabel="mean SI", ylabel=m, title=f"{m} against mean SI",
                                   groups=groups))
    for a in per_trial:
        sweep_panels = getattr(modules[a], "sweep_panels", None)
        if sweep_panels is None:
            continue
        for fig, (ylabel, panels) in sweep_panels(per_trial[a]).items():
            vs_alpha(fig, panels, ylabel, f"{fig} against alpha")
            paths.append(plots.panels_against(si, panels, os.path.join(
                plot_dir, f"analysis_{fig}_vs_si.png"), xlabel="mean SI", ylabel=ylabel,
                title=f"{fig} against mean SI", groups=groups))
    if any("mean_si" in r for r in rows) and "selectivity" in per_trial:
        # the mean over layers, then each layer (the selectivity analysis' si_per_layer)
        layers = list(dict.fromkeys(n for s in per_trial["selectivity"]
                                    for n in s.get("si_per_layer", {})))
        panels = {"mean over layers": {"mean SI": si},
                  **{n: {"SI": [s.get("si_per_layer", {}).get(n, np.nan)
                                for s in per_trial["selectivity"]]} for n in layers}}
        vs_alpha("mean_si", panels, "mean class selectivity",
                 "Mean SI against alpha, per layer")
    return paths


def _unit_figures(rows: list[dict], per_trial: dict[str, list[dict]], plot_dir: str,
                  keys: list[str] = ()) -> list:
    """The figures that compare the trials' units, from the files each analysis wrote into
    its trial's output folder (per alpha, and per group and alpha where other searched keys
    ``keys`` split the trials): the distribution of unit SI per alpha (selectivity's
    selectivity.json), ablation drops against unit SI (ablation's units_<layer>.csv, Zhou et
    al. 2018) and, where other searched keys (``keys``) split the trials, each group's max
    class drops side by side (Zhou et al.'s BatchNorm x dropout figure), and mean OSI and
    gOSI against test accuracy (orientation's summary, Ukita's generalisation figure)."""
    import pandas as pd

    from seltrain.analysis import sweep_plots

    alpha = [r["alpha"] for r in rows]
    groups = report_groups.labels(rows, keys) if keys else None  # a series per group and alpha
    paths = []
    if "selectivity" in per_trial:
        si = [json.load(open(os.path.join(s["out_dir"], "selectivity.json")))["si"]
              for s in per_trial["selectivity"]]
        layers = list(dict.fromkeys(n for t in si for n in t))
        paths.append(sweep_plots.si_distributions(
            alpha, {n: [t.get(n, []) for t in si] for n in layers},
            os.path.join(plot_dir, "analysis_si_distributions.png"), groups=groups))
    if "ablation" in per_trial:
        units = [{n: pd.read_csv(os.path.join(s["out_dir"], f"units_{n}.csv"))
                  for n in s["layers"]} for s in per_trial["ablation"]]
        layers = list(dict.fromkeys(n for t in units for n in t))
        for drop, ylabel in (("max_class_drop", "max class drop"),
                             ("overall_drop", "overall accuracy drop")):
            paths.append(sweep_plots.drop_vs_si(
                alpha, {n: [t[n]["si"] if n in t else [] for t in units] for n in layers},
                {n: [t[n][drop] if n in t else [] for t in units] for n in layers},
                os.path.join(plot_dir, f"analysis_{drop}_vs_unit_si.png"), ylabel=ylabel,
                groups=groups))
        if keys:
            # Boxes in the order of the keys' values, then alpha (named only if it varies).
            order = pd.DataFrame(rows)[[*keys, "alpha"]].sort_values([*keys, "alpha"],
                                                                   kind="stable").index
            names = report_groups.labels(rows, keys if len(set(alpha)) == 1 else
                                         [*keys, "alpha"])
            paths.append(report_groups.class_drop_by_group(
                [names[i] for i in order],
                {n: [units[i][n]["max_class_drop"] if n in units[i] else [] for i in order]
                 for n in layers}, os.path.join(plot_dir, "analysis_class_drop_by_group.png")))
    if "orientation" in per_trial:
        summaries = per_trial["orientation"]
        layers = list(dict.fromkeys(n for s in summaries for n in s["layers"]))

        def mean(key):
            return {n: [s["layers"].get(n, {}).get(key, np.nan) for s in summaries]
                    for n in layers}

        acc = [np.nan if r.get("test_acc") is None else r["test_acc"] for r in rows]
        paths.append(sweep_plots.orientation_vs_accuracy(
            alpha, acc, mean("mean_osi"), mean("mean_gosi"),
            os.path.join(plot_dir, "analysis_orientation_vs_test_acc.png"), groups=groups))
    return paths


def fan_out(folders: list[str], options: dict, fanout, out) -> dict:
    """{(run folder, analysis): summary} of every analysis of every folder, as Ray tasks."""
    from seltrain.analysis.fanout import run_fanout, this_command

    results = run_fanout(folders, options, fanout, stream=out, again=this_command())
    return {(os.path.abspath(r.run_dir), r.analysis): r.summary for r in results}
