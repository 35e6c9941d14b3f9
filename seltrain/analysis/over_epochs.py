"""An analysis' results across a run's kept epochs (``--checkpoint kept``): one table and one
figure per layer, with the epoch on the x axis.

Ranadive et al. 2023 ask whether class-selective units matter early in training: their
reference code (Omkar-Ranadive/Class-Selective-Neurons, ``pop_compare.py``, read, not copied)
zeroes the top half of a stage's channels by class selectivity, or the bottom half, in every
checkpoint from 0 to 35, and plots top-1 accuracy against the checkpoint. ``ablation_rows``
reads the same from seltrain's cumulative ablation of each kept epoch: the accuracy with half
of a layer's units zeroed (the curves' fraction 0.5: ``floor(U / 2 + 0.5)`` units), SI high
first, SI low first and at random (the mean of the random orders), beside the intact
accuracy and the mean single-unit drop. Deviations: one probed layer (a block's output) per
figure, not a whole stage's blocks at once; top-1 only; epochs as seltrain counts them (0 is
the first epoch trained; the reference's checkpoint 0 is the initialization, which
``run.keep_epochs`` does not keep).

``write(results, folder, name)`` is what ``commands.run_analysis`` calls for one run after
its kept epochs are analysed; an analysis without a reader here gets no summary.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np

from seltrain.analysis.serialize import write_csv

HALF = 0.5  # the fraction of a layer's units the reference's figure zeroes
COLUMNS = ("epoch", "layer", "intact_acc", "mean_unit_drop", "si_high_half_acc",
           "si_low_half_acc", "random_half_acc")


def epoch_of(out_dir: str) -> int:
    """The epoch of a kept epoch's results folder (``.../epoch_003/ablation`` or
    ``--out/<run>/epoch_003``)."""
    for part in reversed(os.path.normpath(out_dir).split(os.sep)):
        m = re.fullmatch(r"epoch_(\d{3,})", part)
        if m:
            return int(m.group(1))
    raise ValueError(f"{out_dir} is not a kept epoch's results folder")


def _at(fractions: Sequence[float], values, f: float) -> float:
    i = int(np.argmin(np.abs(np.asarray(fractions, dtype=float) - f)))
    if abs(fractions[i] - f) > 1e-9:
        return float("nan")
    return float(np.asarray(values, dtype=float)[i])


def ablation_rows(out_dirs: Sequence[str]) -> list[dict]:
    """One row per kept epoch and layer (``COLUMNS``) from each folder's
    ``ablation_<layer>.json``; the half-ablated accuracies are NaN without ``--cumulative``."""
    rows = []
    for out in sorted(out_dirs, key=epoch_of):
        files = sorted(f for f in os.listdir(out) if re.fullmatch(r"ablation_.+\.json", f))
        for f in files:
            with open(os.path.join(out, f)) as fh:
                res = json.load(fh)
            single, cum = res["single_unit"], res.get("cumulative")
            row = {"epoch": epoch_of(out), "layer": f[len("ablation_"):-len(".json")],
                   "intact_acc": float(single["baseline_acc"]),
                   "mean_unit_drop": float(np.mean(single["overall_drop"])),
                   "si_high_half_acc": float("nan"), "si_low_half_acc": float("nan"),
                   "random_half_acc": float("nan")}
            if cum:
                fr = cum["fractions"]
                row.update(si_high_half_acc=_at(fr, cum["si_high_first"], HALF),
                           si_low_half_acc=_at(fr, cum["si_low_first"], HALF),
                           random_half_acc=_at(fr, cum["random_mean"], HALF))
            rows.append(row)
    return rows


READERS = {"ablation": ablation_rows}


def write(results: Sequence[dict], folder: str, name: str) -> list[str]:
    """``<name>_over_epochs.csv`` and ``<name>_over_epochs.png`` (one panel per layer: the
    accuracies against the epoch) into ``folder``, replaced whole, from the summaries
    (``out_dir``) of one run's kept epochs; the lines the command prints. Nothing for an
    analysis ``READERS`` does not know."""
    from seltrain.analysis import plots
    from seltrain.atomic import atomic_folder

    if name not in READERS or not results:
        return []
    rows = READERS[name]([r["out_dir"] for r in results])
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    epochs = sorted({r["epoch"] for r in rows})
    series = {"intact": "intact_acc", "SI high half zeroed": "si_high_half_acc",
              "SI low half zeroed": "si_low_half_acc", "random half zeroed": "random_half_acc"}
    panels = {}
    for layer in layers:
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["epoch"])
        panels[layer] = {label: [r[key] for r in mine] for label, key in series.items()
                         if not all(np.isnan(r[key]) for r in mine)}
    with atomic_folder(folder) as staging:
        write_csv(os.path.join(staging, f"{name}_over_epochs.csv"),
                  {c: [r[c] for r in rows] for c in COLUMNS})
        plots.panels_against(epochs, panels, os.path.join(staging, f"{name}_over_epochs.png"),
                             xlabel="epoch (kept checkpoint)", ylabel="test accuracy",
                             title=f"{name} over the kept epochs")
    return [f"  wrote {folder} ({len(layers)} layers x {len(epochs)} epochs)"]
