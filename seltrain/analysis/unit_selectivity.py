"""``seltrain analyze selectivity``: exact dataset-level SI of every unit of a checkpoint.

Units are read exactly as the trainer reads them (``probes.Probe``, ``unit_activation``) and
the class statistics are the trainer's (``seltrain.selectivity.SelectivityAccumulator``,
float64 class sums), so on the split a run was evaluated on the numbers equal its logged test
SI. The module has a name of its own: ``seltrain.selectivity`` is the regulariser's SI, which
this analysis reads over a whole split.
"""
from __future__ import annotations

import dataclasses

import os
from dataclasses import dataclass

import numpy as np

from seltrain.analysis.options import AnalysisOptions
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target
from seltrain.errors import DataError
from seltrain.probes import layer_outputs, unit_activation
from seltrain.selectivity import SelectivityAccumulator


def unit_selectivity(target: Target) -> dict:
    """SI [U], class means [K, U] and preferred class [U] per layer, and the image count."""
    acc = None
    for acts, _, yb in layer_outputs(target.model, target.layers, target.data,
                                     reduce=unit_activation, desc="selectivity"):
        if acc is None:
            acc = SelectivityAccumulator({n: a.shape[1] for n, a in acts.items()},
                                         target.info.num_classes, target.device)
        acc.update(acts, yb.to(target.device))
    if acc is None:
        raise DataError(f"the {target.split} split is empty")
    si = {n: v.cpu().numpy() for n, v in acc.si(target.cfg.selectivity.eps).items()}
    means = {n: v.cpu().numpy() for n, v in acc.class_means().items()}  # [K, U]
    return {"si": si, "class_means": means,
            "preferred_class": {n: m.argmax(0) for n, m in means.items()},
            "n_images": int(acc.counts.sum())}


# --------------------------------------------------------------------------- the analysis

@dataclass
class SelectivityOptions(AnalysisOptions):
    """exact SI per unit and layer, preferred classes"""


Options = SelectivityOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("mean_si",)


# The fan-out's chunks: each takes this share of the layers.
LAYER_CHUNKS = 3


def compute(target: Target, opts: SelectivityOptions) -> dict:
    """``unit_selectivity`` plus its summary: mean SI per layer and over layers."""
    return _summarised(unit_selectivity(target))


def chunks(opts: SelectivityOptions) -> list:
    """Parts that run apart (seltrain.analysis.fanout): the j-th run of ``LAYER_CHUNKS``
    runs of the layers (each layer's statistics are its own)."""
    return [("layers", j, LAYER_CHUNKS) for j in range(LAYER_CHUNKS)]


def chunk_label(opts: SelectivityOptions, chunk) -> str:
    return f"layers part {chunk[1] + 1} of {chunk[2]}"


def chunk_layers(layers: list[str], chunk) -> list[str]:
    """The j-th of n runs of ``layers`` (empty where there are fewer layers than runs); the
    layer chunks of orientation (orientation_parts) are cut the same way."""
    _, j, n = chunk
    return layers[j * len(layers) // n:(j + 1) * len(layers) // n]


def compute_chunk(target: Target, opts: SelectivityOptions, chunk) -> dict:
    layers = chunk_layers(target.layers, chunk)
    return unit_selectivity(dataclasses.replace(target, layers=layers)) if layers else {}


def merge(target: Target, opts: SelectivityOptions, parts: list[dict]) -> dict:
    """``compute``'s result from its chunks' (every layer in the target's order)."""
    parts = [p for p in parts if p]
    r = {key: {n: v for n in target.layers for p in parts if n in p[key]
               for v in (p[key][n],)} for key in ("si", "class_means", "preferred_class")}
    return _summarised(dict(r, n_images=parts[0]["n_images"]))


def _summarised(r: dict) -> dict:
    per_layer = {n: float(v.mean()) for n, v in r["si"].items()}
    r["summary"] = {"mean_si": float(np.mean(list(per_layer.values()))),
                    "si_per_layer": per_layer}
    return r


def write(r: dict, target: Target, opts: SelectivityOptions, out: str) -> list[str]:
    """selectivity.json, units_<layer>.csv, si_hist.png and si_per_layer.png in ``out``; the
    lines the command prints."""
    from seltrain.analysis import plots

    s = r["summary"]
    write_json(os.path.join(out, "selectivity.json"), {
        "checkpoint": target.ckpt_path, "split": target.split, "n_images": r["n_images"],
        "mean_si": s["mean_si"], "si_per_layer": s["si_per_layer"], "si": r["si"],
        "preferred_class": r["preferred_class"],
        "class_means": {n: m.T for n, m in r["class_means"].items()}})
    for n, v in r["si"].items():
        write_csv(os.path.join(out, f"units_{n}.csv"),
                  {"unit": range(len(v)), "si": v, "preferred_class": r["preferred_class"][n]})
    plots.histograms(r["si"], os.path.join(out, "si_hist.png"), xlabel="SI",
                     value_range=(0, 1), title=f"class selectivity ({target.split})")
    plots.layer_means(r["si"], os.path.join(out, "si_per_layer.png"), ylabel="mean SI")
    return [f"mean SI {s['mean_si']:.4f} over {len(s['si_per_layer'])} layers "
            f"({r['n_images']} {target.split} images)",
            *(f"  {n:<24} {v:.4f}" for n, v in s["si_per_layer"].items())]
