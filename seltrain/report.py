"""``seltrain report EXPERIMENT``: the sweep's table, CSVs and figures, from the trial folders.

Everything here reads what trials left on disk (``trials/<name>/`` run folders: config.yaml,
metrics.jsonl, summary.json, checkpoints), so a report can be made at any time, during a
search, after it, or of an experiment copied off a cluster:

- ``collect_trials``: one row per trial (alpha, seed, epochs run, stopped early, best record);
- ``report_experiment``: results.csv, results_by_alpha.csv, the printed table, the sweep
  figures (after Leavitt & Morcos 2021, figs. 2-4) in plots/ and, as images, in TensorBoard
  (tb_sweep/, written through the run metrics sink); a search over other keys as well gets
  results_by_group.csv, results_by_alpha.csv per alpha and group, the best alpha of each
  group and a series per group in every figure (seltrain/report_groups.py): no number pools
  two groups;
- ``sweep_analyses`` (``--analyses``, seltrain/report_analyses.py): runs ``seltrain analyze``
  analyses on every trial's best checkpoint and plots their headline numbers against alpha
  and mean SI;
- ``report_targets``: a target folder (a network seltrain did not train, target.json) or a
  folder of them, treated as trials are: ``--analyses`` runs on each, and the table lists
  each target with its analyses' headline numbers (targets.csv).

alpha spans both signs over four decades, so alpha axes are symlog (linear within |alpha| <
0.1).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys

import numpy as np

from seltrain import report_groups
from seltrain.atomic import atomic_write
from seltrain.checkpoint import trials_root
from seltrain.config import get_dotted
from seltrain.errors import ConfigError, DataError, did_you_mean, excerpt
from seltrain.metrics import read_records


# --------------------------------------------------------------------------- the trials

# What the report reads from each epoch record, and the values it may hold: accuracies and
# class selectivity are fractions; null where the split (or SI) was not evaluated.
RECORD_RANGES = {"val_acc": (0.0, 1.0), "test_acc": (0.0, 1.0), "test_si": (0.0, 1.0),
                 "val_si": (0.0, 1.0)}


def check_records(path: str, records: list[dict]) -> None:
    """One DataError naming the file, the epoch, the key and the value, for a record the
    report cannot use: an epoch that is not a whole number >= 0, or an accuracy or SI that is
    not a number in [0, 1] (a string, a list, inf, a negative value: a hand-edited or foreign
    metrics.jsonl)."""
    for n, rec in enumerate(records, 1):
        epoch = rec.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"{path}: record {n} has epoch {excerpt(epoch)}, not a whole "
                            "number >= 0; restore the file or remove that record")
        for key, (lo, hi) in RECORD_RANGES.items():
            v = rec.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not (math.isfinite(v) and lo <= v <= hi):
                raise DataError(f"{path}: epoch {epoch + 1} has {key} {excerpt(v)}, not a number "
                                f"in [{lo:g}, {hi:g}]; restore the file or remove that record")

def collect_trials(exp_dir: str) -> list[dict]:
    """One row per trial run folder under exp_dir/trials (or exp_dir itself)."""
    import yaml

    root = trials_root(exp_dir)
    info_path = os.path.join(exp_dir, "seltrain_experiment.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    # Only a scheduler stops trials early; trials that a Ctrl-C cut short (listed by `seltrain
    # tune` in interrupted.json until --resume finishes them) are unfinished, not stopped.
    can_stop = (info.get("scheduler") or {}).get("type", "asha") != "none"
    cut_path = os.path.join(exp_dir, "interrupted.json")
    cut = set(json.load(open(cut_path)).get("cut_trials", [])) if os.path.exists(cut_path) \
        else set()
    rows = []
    for name in sorted(os.listdir(root)):
        run = os.path.join(root, name)
        cfg_path = os.path.join(run, "config.yaml")
        if not os.path.isfile(cfg_path):
            continue
        with open(cfg_path) as f:
            cfg = yaml.safe_load(f)
        # read_records skips a torn last line (a crash mid-write)
        records = read_records(os.path.join(run, "metrics.jsonl"))[0]
        check_records(os.path.join(run, "metrics.jsonl"), records)
        complete = os.path.exists(os.path.join(run, "summary.json"))
        key = "val_acc" if records and records[0].get("val_acc") is not None else "test_acc"
        best = max(records, key=lambda r: r[key]) if records else {}
        planned = cfg["train"]["epochs"]
        row = {"trial": name, "alpha": cfg["selectivity"]["alpha"], "seed": cfg["train"]["seed"],
               "epochs_run": len(records), "epochs_planned": planned,
               "stopped_early": (not complete) and len(records) < planned and can_stop
               and name not in cut,
               "complete": complete,
               "best_epoch": best.get("epoch", -1) + 1 if best else None,
               "best_val_acc": best.get("val_acc"), "test_acc": best.get("test_acc"),
               "test_si": best.get("test_si")}
        # Dead units (never fired on a test image) at the best epoch: their layer mean, and
        # each layer's fraction. A negative alpha can lower mean SI by silencing units.
        dead = best.get("test_dead_per_layer")
        if dead:
            row["test_dead"] = float(np.mean(list(dead.values())))
            row.update({f"dead/{layer}": v for layer, v in dead.items()})
        for k in info.get("space", {}):
            if k != "selectivity.alpha":
                row[k] = get_dotted(cfg, k)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the report

def report_experiment(exp_dir: str, *, metric: str = "val_acc", mode: str = "max",
                      out=None, tensorboard: bool = True,
                      analyses: list[str] | None = None,
                      analysis_args: list[str] | None = None,
                      formats: tuple[str, ...] | str = ("png",), fanout=None) -> dict:
    """Table, results.csv, per-alpha aggregates, figures (each in every one of ``formats``:
    png, svg, pdf) and TensorBoard images (of the PNGs).

    With ``analyses`` (names of ``seltrain analyze`` subcommands) each trial's best checkpoint
    is also analysed (options ``analysis_args``, e.g. ["--max-images", "500"]) and the
    analyses' headline numbers are plotted against alpha and mean SI
    (``sweep_analyses``); the result then carries "analyses". ``fanout``: a
    ``seltrain.analysis.fanout.FanoutOptions`` to run them as Ray tasks (None: one process).

    Returns {"trials": DataFrame, "by_alpha": DataFrame, "plots": [paths], "best": dict}
    (and "by_group" where other searched keys split an alpha's trials: then "by_alpha" has a
    row per alpha and group, and "best" is the best group and alpha).
    Aggregates use completed trials only: a trial ASHA stopped after one epoch says little
    about where its alpha ends up (they stay in the table and in results.csv).
    """
    from seltrain.analysis import plots
    from seltrain.analysis.options import parse_formats
    from seltrain.analysis.target_spec import target_folders

    out = out or sys.stdout  # resolved at call time: a caller may have swapped sys.stdout
    try:
        formats = parse_formats(formats)
    except ValueError as e:
        raise ConfigError(f"--format {formats if isinstance(formats, str) else ','.join(formats)}"
                          f": {e}") from None
    if not os.path.isdir(exp_dir):
        raise ConfigError(f"experiment folder not found: {exp_dir}")
    if target_folders(exp_dir):
        return report_targets(exp_dir, analyses=analyses, analysis_args=analysis_args, out=out,
                              formats=formats, fanout=fanout)
    with plots.formats(formats):
        return _report_trials(exp_dir, metric=metric, mode=mode, out=out,
                              tensorboard=tensorboard, analyses=analyses,
                              analysis_args=analysis_args, formats=formats, fanout=fanout)


def _report_trials(exp_dir: str, *, metric: str, mode: str, out, tensorboard: bool,
                   analyses: list[str] | None, analysis_args: list[str] | None,
                   formats: tuple[str, ...], fanout) -> dict:
    import pandas as pd

    rows = collect_trials(exp_dir)
    if not rows:
        raise ConfigError(f"{exp_dir} holds no trial run folders (trials/*/config.yaml) yet")
    df = pd.DataFrame(rows).sort_values(["alpha", "seed"]).reset_index(drop=True)
    with atomic_write(os.path.join(exp_dir, "results.csv"), newline="") as f:
        df.to_csv(f, index=False)
    done = df[df["complete"]]
    use = done if len(done) else df
    # Other searched keys that split an alpha's trials: a row and a series per combination.
    keys = report_groups.group_keys(df, report_groups.searched_keys(exp_dir))
    agg = report_groups.by_alpha(use, keys)  # per alpha (and group: no row pools two groups)
    by_group = report_groups.aggregate(use, keys + ["alpha"]) if keys else None
    for name, table in (("alpha", agg), ("group", by_group)):
        if table is not None:
            with atomic_write(os.path.join(exp_dir, f"results_by_{name}.csv"), newline="") as f:
                table.to_csv(f, index=False)
    col = {"val_acc": "best_val_acc_mean", "test_acc": "test_acc_mean",
           "test_si": "test_si_mean"}.get(metric, "best_val_acc_mean")
    if keys:  # the best group and alpha, as best_alpha_lines names it
        best = report_groups._pick(by_group, col, mode)
    else:
        best = agg.loc[agg[col].idxmax() if mode == "max" else agg[col].idxmin()].to_dict()
    with pd.option_context("display.max_rows", 500, "display.width", 200,
                           "display.float_format", "{:.4f}".format):
        show = df.drop(columns=["trial", "complete", "epochs_planned",
                                *[c for c in df if c.startswith("dead/")]])
        print(f"\n{len(df)} trials in {exp_dir} ({len(done)} complete, "
              f"{int(df['stopped_early'].sum())} stopped early)", file=out)
        print(show.to_string(index=False), file=out)
        # with one trial per alpha the table above says it all; with groups, the group
        # table below holds results_by_alpha.csv's rows
        if (agg["n"] > 1).any() and not keys:
            print(f"\nper alpha ({'completed trials' if len(done) else 'all trials'}, mean and "
                  "std over seeds):", file=out)
            print(agg.to_string(index=False), file=out)
        if keys:
            print(f"\nper {', '.join(keys)} and alpha (results_by_group.csv):", file=out)
            print(by_group.to_string(index=False), file=out)

    if keys:
        print("\n" + "\n".join(report_groups.best_alpha_lines(by_group, keys, col, mode)),
              file=out)
    else:
        print(f"\nbest alpha by {col}: {best['alpha']:g} {report_groups.describe(best, col)}",
              file=out)
    plots = report_groups.plot_sweep_by_group(df, by_group, keys, os.path.join(
        exp_dir, "plots")) if keys else plot_sweep(df, agg, os.path.join(exp_dir, "plots"))
    groups = report_groups.labels(use, keys) if keys else None
    plots.append(plot_si_over_training(exp_dir, use, os.path.join(exp_dir, "plots"), groups))
    if "test_dead" in use and use["test_dead"].notna().any():
        plots.append(plot_dead(use, os.path.join(exp_dir, "plots"), groups))
    extra = {}
    if analyses:
        from seltrain.report_analyses import sweep_analyses

        extra["analyses"] = sweep_analyses(exp_dir, list(analyses), rows, extra=analysis_args,
                                           out=out, formats=formats, fanout=fanout)
        plots = plots + extra["analyses"]["plots"]
    if tensorboard:
        _to_tensorboard(plots, os.path.join(exp_dir, "tb_sweep"))
    print(f"wrote {os.path.join(exp_dir, 'results.csv')}, results_by_alpha.csv"
          f"{', results_by_group.csv' if keys else ''} and "
          f"{len(plots)} plots ({', '.join(formats)}) in {os.path.join(exp_dir, 'plots')}",
          file=out)
    return {"trials": df, "by_alpha": agg, "plots": plots, "best": best, **extra,
            **({"by_group": by_group} if keys else {})}


# --------------------------------------------------------------------------- figures

LINTHRESH = 0.1


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    return plt, fig, ax


def _alpha_axis(ax) -> None:
    from seltrain.analysis import sweep_plots

    sweep_plots.alpha_axis(ax, linthresh=LINTHRESH)  # one alpha axis for every sweep figure


def _trial_points(ax, trials, col: str) -> None:
    """Each trial: filled if it ran to the end, hollow if ASHA stopped it (not in the means)."""
    done = trials["complete"].astype(bool)
    ax.scatter(trials["alpha"][done], trials[col][done], s=10, color="0.55", label="trials")
    if (~done).any():
        ax.scatter(trials["alpha"][~done], trials[col][~done], s=14, facecolors="none",
                   edgecolors="0.55", label="stopped early")


def _save(plt, fig, path: str) -> str:
    """Through the analyses' one save function: each chosen format (``--format``)."""
    from seltrain.analysis import plots

    fig.tight_layout()
    out = plots._save(fig, path, None)
    plt.close(fig)
    return str(out)


def plot_sweep(trials, by_alpha, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    a = by_alpha["alpha"].to_numpy(float)
    std = lambda c: np.nan_to_num(by_alpha[c].to_numpy(float))  # noqa: E731 - one seed: no bar
    # One trial per alpha has no spread to draw: say so instead of promising error bars.
    label = "mean +- std over seeds" if (by_alpha["n"] > 1).any() else "one seed per alpha"
    paths = []

    figures = [("test_acc", "C0", "test accuracy", "Test accuracy against alpha",
                "test_acc_vs_alpha.png"),
               ("test_si", "C1", "mean class selectivity (test)", "Mean SI against alpha",
                "si_vs_alpha.png")]
    for metric, colour, ylabel, title, name in figures:
        plt, fig, ax = _axes()
        _trial_points(ax, trials, metric)
        ax.errorbar(a, by_alpha[f"{metric}_mean"], yerr=std(f"{metric}_std"), fmt="o-",
                    capsize=3, color=colour, label=label)
        _alpha_axis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        paths.append(_save(plt, fig, os.path.join(out_dir, name)))

    plt, fig, ax = _axes()
    sc = ax.scatter(trials["test_si"], trials["test_acc"], c=np.arcsinh(trials["alpha"] /
                    LINTHRESH), cmap="coolwarm", s=14)
    ax.errorbar(by_alpha["test_si_mean"], by_alpha["test_acc_mean"], xerr=std("test_si_std"),
                yerr=std("test_acc_std"), fmt="none", ecolor="0.3", capsize=2)
    for x, y, al in zip(by_alpha["test_si_mean"], by_alpha["test_acc_mean"], a):
        ax.annotate(f"{al:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    cb = fig.colorbar(sc, ax=ax)
    # Colour is asinh(alpha / 0.1) (symlog-like, both signs); ticks read as alpha itself.
    ticks = sorted(set(trials["alpha"].tolist()))
    cb.set_ticks(np.arcsinh(np.asarray(ticks, float) / LINTHRESH))
    cb.set_ticklabels([f"{t:g}" for t in ticks])
    cb.set_label("alpha")
    ax.set_xlabel("mean class selectivity (test)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against selectivity")
    ax.grid(alpha=0.3)
    paths.append(_save(plt, fig, os.path.join(out_dir, "acc_vs_si.png")))
    return paths


def plot_si_over_training(exp_dir: str, trials, out_dir: str,
                          groups: list[str] | None = None) -> str:
    """si_over_training.png: each trial's per-epoch test SI (metrics.jsonl ``test_si`` and
    ``test_si_per_layer``), the mean over layers and each layer, per alpha (mean +- std over
    seeds). ``trials``: the rows the aggregates use (completed trials, where there are);
    ``groups``: each one's group (``report_groups.labels``), a line per group and alpha."""
    from seltrain.analysis import sweep_plots

    root = trials_root(exp_dir)
    curves: dict[str, list[list[float]]] = {"mean over layers": []}
    per_layer: list[dict] = []
    for name in trials["trial"]:
        records = read_records(os.path.join(root, name, "metrics.jsonl"))[0]
        records = sorted(records, key=lambda r: r["epoch"])
        curves["mean over layers"].append([np.nan if r.get("test_si") is None
                                           else r["test_si"] for r in records])
        per_layer.append([r.get("test_si_per_layer") or {} for r in records])
    for layer in dict.fromkeys(n for t in per_layer for rec in t for n in rec):
        curves[layer] = [[rec.get(layer, np.nan) for rec in t] for t in per_layer]
    return str(sweep_plots.si_over_training(
        trials["alpha"].tolist(), curves, os.path.join(out_dir, "si_over_training.png"),
        groups=groups, title=None if groups is None else
        "SI over training per group and alpha (mean +- std over seeds)"))


def plot_dead(trials, out_dir: str, groups: list[str] | None = None) -> str:
    """dead_vs_alpha.png: the dead units of each trial's best epoch against alpha, a panel
    for the mean over layers (``test_dead``) and one per layer (``dead/<layer>``), each
    alpha's mean +- std over seeds (``sweep_plots.sweep_against_alpha``), a series per group
    where there are groups. ``trials``: the rows the aggregates use, so the first panel's
    means are results_by_alpha.csv's ``test_dead_mean``."""
    from seltrain.analysis import sweep_plots

    def column(c: str) -> list[float]:
        return trials[c].to_numpy(float).tolist() if c in trials else []

    panels = {"mean over layers": {"dead units": column("test_dead")},
              **{c.partition("/")[2]: {"dead units": column(c)} for c in trials
                 if c.startswith("dead/")}}
    return str(sweep_plots.sweep_against_alpha(
        trials["alpha"].tolist(), panels, os.path.join(out_dir, "dead_vs_alpha.png"),
        ylabel="dead units (fraction)", title="Dead units against alpha, per layer",
        groups=groups))


def _to_tensorboard(paths: list[str], logdir: str) -> None:
    """Rewrite ``logdir`` with one image per figure (a fresh folder: reports never stack up),
    through the same sink a run writes its TensorBoard events with. TensorBoard shows raster
    images: each figure's PNG, where png is among the formats."""
    from seltrain.metrics import RunSink

    shutil.rmtree(logdir, ignore_errors=True)
    sink = RunSink(logdir, tensorboard=True, tb_subdir=".")
    try:
        for p in paths:
            png = os.path.splitext(p)[0] + ".png"
            if os.path.isfile(png):
                sink.image(f"sweep/{os.path.splitext(os.path.basename(p))[0]}", png, 0)
    finally:
        sink.close()


# --------------------------------------------------------------------------- targets

def report_targets(folder: str, *, analyses: list[str] | None = None,
                   analysis_args: list[str] | None = None, out=None,
                   formats: tuple[str, ...] = ("png",), fanout=None) -> dict:
    """The report of a target folder or a folder of them (networks seltrain did not train):
    with ``analyses``, each is run on every target first (options ``analysis_args``, read
    strictly before anything runs, as for a sweep); then one row per target (its model,
    weights, data, image size) with the headline numbers of every analysis its folder holds,
    printed and written to ``<folder>/targets.csv``. Returns {"rows": [...], "csv": path}."""
    from seltrain.analysis.commands import run_analysis, sweep_options
    from seltrain.analysis.outputs import read_headlines
    from seltrain.analysis.registry import ANALYSES, NAMES
    from seltrain.analysis.serialize import write_csv
    from seltrain.analysis.target_spec import read_spec, target_folders

    out = out or sys.stdout
    folders = target_folders(folder)
    if analyses:
        bad = [a for a in analyses if a not in ANALYSES]
        if bad:
            raise ConfigError(f"--analyses: unknown {', '.join(bad)}"
                              f"{did_you_mean(bad[0], NAMES)}; choose from {', '.join(NAMES)}")
        options = {a: dataclasses.replace(o, format=tuple(formats)) for a, o in
                   sweep_options(list(analyses), list(analysis_args or [])).items()}
        if fanout:
            from seltrain.report_analyses import fan_out

            fan_out(folders, options, fanout, out)
        for f in folders if not fanout else ():
            for a in analyses:
                run_analysis(a, f, options[a], stream=out)
    rows = []
    for f in folders:
        spec = read_spec(f)
        weights = os.path.basename(spec.weights) if spec.weights else "(initialised)"
        row = {"target": os.path.basename(f), "model": spec.model, "weights": weights,
               "data": spec.data, "image_size": spec.image_size}
        for a, head in read_headlines(f).items():
            row.update({f"{a}.{k}": v for k, v in head.items()})
        rows.append(row)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    path = os.path.join(folder, "targets.csv")
    write_csv(path, {c: [r.get(c) for r in rows] for c in cols})
    print(f"\n{len(rows)} target(s) in {folder}", file=out)

    def shown(v) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    widths = {c: max(len(c), *(len(shown(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(f"{c:<{widths[c]}}" for c in cols), file=out)
    for r in rows:
        print("  ".join(f"{shown(r.get(c)):<{widths[c]}}" for c in cols), file=out)
    print(f"wrote {path}", file=out)
    return {"rows": rows, "csv": path}


# --------------------------------------------------------------------------- the CLI

def _report(args) -> int:
    import shlex

    analyses = [a.strip() for a in args.analyses.split(",") if a.strip()] \
        if args.analyses else None
    from seltrain.analysis.fanout import fanout_from

    fanout = fanout_from(args, force=args.force)
    if fanout is not None and not analyses:
        raise ConfigError("--address runs the analyses of --analyses on a Ray cluster; give "
                          "--analyses, or drop --address")
    report_experiment(args.experiment, metric=args.metric, mode=args.mode, analyses=analyses,
                      analysis_args=shlex.split(args.analysis_args or ""),
                      formats=args.format, fanout=fanout)
    return 0


def register(subparsers) -> None:
    from seltrain.analysis.fanout import add_fanout_options
    # The registry's names, so that a new analysis is listed without editing this help.
    from seltrain.analysis.registry import NAMES

    r = subparsers.add_parser("report", help="tables, results.csv and figures of an experiment "
                              "(or the table of target folders)")
    r.add_argument("experiment", help="the experiment folder (<storage>/<name>), or a target "
                   "folder or a folder of them (runs/targets)")
    r.add_argument("--metric", default="val_acc", choices=["val_acc", "test_acc", "test_si"],
                   help="what 'best alpha' means (default: val_acc)")
    r.add_argument("--mode", default="max", choices=["max", "min"])
    r.add_argument("--format", default="png", metavar="png|svg|pdf[,...]",
                   help="the figures' formats, comma-separated from png, svg, pdf (svg and "
                        "pdf are vector, for papers): every figure, the analyses' included, "
                        "is written in each (default: png; TensorBoard shows the PNGs)")
    r.add_argument("--analyses", default=None, metavar="NAMES",
                   help="also run these analyses on each trial's best checkpoint and plot them "
                        f"against alpha and mean SI: comma-separated from {', '.join(NAMES)}")
    r.add_argument("--analysis-args", default=None, metavar="'OPTIONS'",
                   help="`seltrain analyze` options for the chosen analyses, e.g. "
                        "\"--max-images 500 --corruptions gaussian_noise\": each analysis "
                        "takes those it has, so an option only some of them take is fine; "
                        "one that none takes, or a bad value, is an error before anything "
                        "runs. Use --gosi-threshold / --variance-share, not --threshold, when "
                        "running orientation and dimensionality together; --out does not "
                        "apply")
    r.add_argument("--force", action="store_true",
                   help="with --address: recompute every analysis, also those whose outputs "
                        "for these options exist")
    add_fanout_options(r)
    r.set_defaults(func=_report, sigterm_as_interrupt=True)
