"""A search over keys besides alpha, read per group (``seltrain report``): the trials of one
combination of the other searched keys (a start epoch of tune/alpha_late.yaml, an
architecture and dropout of tune/bn_dropout.yaml) are one group, and its alphas are the points
of one series.

- ``group_keys``: which searched keys split the trials (read from the experiment's
  seltrain_experiment.json, the search space ``seltrain tune`` writes there);
- ``aggregate``: the means and spreads over seeds per group and alpha
  (results_by_group.csv; per alpha alone it is results_by_alpha.csv);
- ``by_alpha``: results_by_alpha.csv, per alpha and group where there are groups;
- ``best_alpha_lines``: the printed best alpha of each group, then the best group;
- ``plot_sweep_by_group``: the main sweep figures with one series per group (and
  ``labels``, each trial's group, for the other figures that draw a series per group:
  si_over_training, dead_vs_alpha, the ``--analyses`` figures against alpha and mean SI);
- ``class_drop_by_group``: the distributions of the units' max class-specific drop side by
  side, one box per group (Zhou et al. 2018, the BatchNorm x dropout comparison).

A search over alpha alone has no groups, and its report is what it was before groups existed.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

# Not groups: alpha is the x axis of every series, and the seeds are what a mean is over.
NOT_GROUPED = ("selectivity.alpha", "train.seed")


def searched_keys(exp_dir: str) -> list[str]:
    """The keys of the search space ``seltrain tune`` recorded in the experiment folder
    (seltrain_experiment.json), alpha and seed left out; none for a folder of runs gathered
    by hand."""
    path = os.path.join(exp_dir, "seltrain_experiment.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        space = json.load(f).get("space") or {}
    return [k for k in space if k not in NOT_GROUPED]


def _hashable(v):
    # A searched value may be a list or a mapping (a layer list, a schedule): group by its text.
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def group_keys(trials, keys: Sequence[str]) -> list[str]:
    """The keys of ``keys`` (columns of the trials' DataFrame) that split the trials of some
    alpha into several values. A key that holds one value per alpha (a learning rate picked
    per alpha) pools nothing: each alpha's mean is already that value's, so it makes no
    series of its own."""
    out = []
    for k in keys:
        if k not in trials:
            continue
        values = trials[k].map(_hashable)
        if (values.groupby(trials["alpha"]).nunique(dropna=False) > 1).any():
            out.append(k)
    return out


def aggregate(trials, by: list[str]):
    """n, then the mean and std (ddof 1) over the trials of each combination of ``by`` of the
    best validation accuracy, test accuracy, test SI and, where recorded, dead units."""
    dead = {f"test_dead_{s}": ("test_dead", s) for s in ("mean", "std")} \
        if "test_dead" in trials and trials["test_dead"].notna().any() else {}
    keyed = trials.assign(**{k: trials[k].map(_hashable) for k in by if k != "alpha"})
    return (keyed.groupby(by, dropna=False)
            .agg(n=("seed", "size"), best_val_acc_mean=("best_val_acc", "mean"),
                 best_val_acc_std=("best_val_acc", "std"), test_acc_mean=("test_acc", "mean"),
                 test_acc_std=("test_acc", "std"), test_si_mean=("test_si", "mean"),
                 test_si_std=("test_si", "std"), **dead)
            .reset_index())


def by_alpha(trials, keys: Sequence[str]):
    """results_by_alpha.csv: ``aggregate`` per alpha, and where other searched keys split an
    alpha's trials (``group_keys``), per alpha and group: its columns are alpha, then the
    keys, then those of the alpha-only table (n, best_val_acc_mean, ...), sorted by alpha,
    then the keys' values. A mean over the trials of one alpha whatever their start epoch or
    architecture describes no network anyone trained, so no row pools two groups; the
    columns a reader of the alpha-only table uses keep their names and meaning, and a reader
    that picks the rows of one alpha gets one row per group where it got one row. (It holds
    the rows of results_by_group.csv, ordered by alpha first.)"""
    return aggregate(trials, ["alpha", *keys])


def describe(best: Mapping, col: str) -> str:
    """"(best_val_acc_mean 0.9000 +- 0.0100, test_acc ..., test_si ...)" of a row of the
    aggregates: the metric that picked it, then test accuracy and SI, with the seeds' spread
    where there is one ("; one seed" where there is not)."""
    def spread(c: str) -> str:
        n, sd = best["n"], best[c.replace("_mean", "_std")]
        return "" if n < 2 or np.isnan(sd) else f" +- {sd:.4f}"

    return (f"({col} {best[col]:.4f}{spread(col)}, test_acc {best['test_acc_mean']:.4f}"
            f"{spread('test_acc_mean')}, test_si {best['test_si_mean']:.4f}"
            f"{spread('test_si_mean')}{'' if best['n'] > 1 else '; one seed'})")


def _pick(table, col: str, mode: str) -> dict:
    # A one-row frame, not a row Series, so each value keeps its column's type (5, not 5.0).
    (row,) = table.loc[[table[col].idxmax() if mode == "max" else
                        table[col].idxmin()]].to_dict("records")
    return row


def best_alpha_lines(by_group, keys: Sequence[str], col: str, mode: str) -> list[str]:
    """The printed best alpha of each group by ``col`` (one line per group, in the order of
    results_by_group.csv), then ``best_line``'s best group and alpha, which is the best of
    those lines."""
    names = labels(by_group, keys)
    rows = {}
    for name, idx in _in_order(names).items():
        rows[name] = _pick(by_group.iloc[idx], col, mode)
    return [f"best alpha by {col} per {', '.join(keys)}:",
            *(f"  {name}: alpha {row['alpha']:g} {describe(row, col)}"
              for name, row in rows.items()), best_line(by_group, keys, col, mode)]


def labels(rows, keys: Sequence[str]) -> list[str]:
    """Each row's group named by its values, "start_epoch=5" (a key by its last part, or in
    full where two keys end alike), for legends and box labels. ``rows``: a DataFrame or a
    list of dicts holding ``keys``."""
    last = [k.rpartition(".")[2] for k in keys]
    names = [s if last.count(s) == 1 else k for k, s in zip(keys, last)]
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    return [", ".join(f"{n}={_hashable(r.get(k))}" for n, k in zip(names, keys))
            for r in records]


def best_line(by_group, keys: Sequence[str], col: str, mode: str) -> str:
    """The printed line naming the best group and alpha by ``col`` (a mean of
    results_by_group.csv), with the seeds' spread where there is one."""
    best = _pick(by_group, col, mode)
    n, sd = int(best["n"]), best[col.replace("_mean", "_std")]
    spread = "" if n < 2 or np.isnan(sd) else f" +- {sd:.4f}"
    return (f"best {', '.join(keys)} and alpha by {col}: {labels([best], keys)[0]}, "
            f"alpha {best['alpha']:g} ({col} {best[col]:.4f}{spread}; {n} "
            f"seed{'s' * (n > 1)})")


def _in_order(names: Sequence[str]) -> dict[str, list[int]]:
    """{group name: the indices of its rows}, in the order the names first appear."""
    out: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        out.setdefault(n, []).append(i)
    return out


def plot_sweep_by_group(trials, by_group, keys: Sequence[str], out_dir: str) -> list[str]:
    """test_acc_vs_alpha and si_vs_alpha with one series per group (dead_vs_alpha, per layer
    too, is ``report.plot_dead``'s): its trials as small points (hollow where ASHA stopped one), its
    mean +- std over seeds per alpha; acc_vs_si with each group's trials and means in its
    colour, each mean named by its alpha. ``trials``: every trial; ``by_group``:
    ``aggregate(completed trials, keys + ["alpha"])``."""
    from seltrain.analysis import plots, sweep_plots

    os.makedirs(out_dir, exist_ok=True)
    groups = _in_order(labels(by_group, keys))
    of_trial = np.asarray(labels(trials, keys))
    several = (by_group["n"] > 1).any()
    spread = "mean +- std over seeds" if several else "one seed per alpha"
    done = trials["complete"].astype(bool).to_numpy()
    figures = [("test_acc", "test accuracy", "Test accuracy against alpha", "test_acc_vs_alpha"),
               ("test_si", "mean class selectivity (test)", "Mean SI against alpha",
                "si_vs_alpha")]
    paths = []
    for metric, ylabel, title, name in figures:
        fig, (ax,) = plots._figure(1, size=(6.4, 4.2))
        for j, (group, idx) in enumerate(groups.items()):
            mine = of_trial == group
            for keep, face in ((mine & done, f"C{j}"), (mine & ~done, "none")):
                if keep.any():
                    ax.scatter(trials["alpha"][keep], trials[metric][keep], s=10, alpha=0.5,
                               facecolors=face, edgecolors=f"C{j}")
            rows = by_group.iloc[idx]
            ax.errorbar(rows["alpha"], rows[f"{metric}_mean"],
                        yerr=np.nan_to_num(rows[f"{metric}_std"].to_numpy(float)), fmt="o-",
                        capsize=3, color=f"C{j}", label=f"{group} ({spread})")
        sweep_plots.alpha_axis(ax)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        paths.append(str(plots._save(fig, os.path.join(out_dir, f"{name}.png"), title)))
    fig, (ax,) = plots._figure(1, size=(6.4, 4.2))
    for j, (group, idx) in enumerate(groups.items()):
        mine = of_trial == group
        ax.scatter(trials["test_si"][mine], trials["test_acc"][mine], s=12, alpha=0.5,
                   color=f"C{j}")
        rows = by_group.iloc[idx]
        ax.errorbar(rows["test_si_mean"], rows["test_acc_mean"],
                    xerr=np.nan_to_num(rows["test_si_std"].to_numpy(float)),
                    yerr=np.nan_to_num(rows["test_acc_std"].to_numpy(float)), fmt="o",
                    capsize=2, color=f"C{j}", label=group)
        for x, y, a in zip(rows["test_si_mean"], rows["test_acc_mean"], rows["alpha"]):
            ax.annotate(f"{a:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean class selectivity (test)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="means, named by alpha", title_fontsize=7)
    paths.append(str(plots._save(fig, os.path.join(out_dir, "acc_vs_si.png"),
                                 "Accuracy against selectivity")))
    return paths


def class_drop_by_group(groups: Sequence[str], drops: Mapping[str, Sequence[Sequence[float]]],
                        path) -> str:
    """Zhou et al.'s comparison of networks trained with and without BatchNorm and dropout:
    one panel per layer, one box per group of the units' max class-specific drop (the
    ablation's units_<layer>.csv ``max_class_drop``), the units of a group's trials (its
    seeds) pooled; the mean is the marked line. ``groups``: each trial's group name;
    ``drops[layer][trial]``: that trial's per-unit drops."""
    from seltrain.analysis import plots

    order = _in_order(groups)
    cols = 1 if len(drops) == 1 else 2 if len(drops) in (2, 4) else 3
    fig, axes = plots._figure(len(drops), cols=cols, size=(1.2 + 1.1 * len(order), 3.4))
    for ax, (layer, per_trial) in zip(axes, drops.items()):
        pooled = []
        for idx in order.values():
            v = np.concatenate([np.asarray(per_trial[i], dtype=np.float64) for i in idx])
            pooled.append(v[np.isfinite(v)])
        ax.boxplot(pooled, showmeans=True, meanline=True, widths=0.6)
        ax.set_xticks(range(1, len(order) + 1),
                      [f"{g}\n({len(order[g])} trial{'s' * (len(order[g]) > 1)})"
                       for g in order], fontsize=6, rotation=20)
        ax.set_title(layer, fontsize=9)
        ax.set_ylabel("max class drop per unit", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return str(plots._save(fig, path, "Class-specific drop per unit, per group"))
