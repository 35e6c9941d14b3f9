"""``seltrain analyze selectivity``: exact dataset-level SI of every unit of a checkpoint.

Units are read exactly as the trainer reads them (``probes.Probe``, ``unit_activation``) and
the class statistics are the trainer's (``selectivity.SelectivityAccumulator``, float64 class
sums), so on the split a run was evaluated on the numbers equal its logged test SI.
"""
from __future__ import annotations

import numpy as np

from seltrain.analysis.options import SelectivityOptions
from seltrain.analysis.target import Target
from seltrain.errors import DataError
from seltrain.probes import layer_outputs, unit_activation
from seltrain.selectivity import SelectivityAccumulator

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("mean_si",)


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


def compute(target: Target, opts: SelectivityOptions) -> dict:
    """``unit_selectivity`` plus its summary: mean SI per layer and over layers."""
    r = unit_selectivity(target)
    per_layer = {n: float(v.mean()) for n, v in r["si"].items()}
    r["summary"] = {"mean_si": float(np.mean(list(per_layer.values()))),
                    "si_per_layer": per_layer}
    return r
