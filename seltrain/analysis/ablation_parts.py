"""Single-unit ablation in parts: the hit counts of a run of a layer's units, and the hooks
the analyses' fan-out (seltrain.analysis.fanout) splits ``seltrain analyze ablation`` with.

A part counts, for every layer, the hits of the intact network and of each of its share of
the units zeroed (whole numbers, so the parts' counts joined are exactly the whole layer's);
the merge turns the joined counts into ``single_unit_ablation``'s result and adds the
attributes, the correlations and the cumulative curves (one task: they need every unit).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from seltrain.analysis.ablation import AblationOptions
    from seltrain.analysis.target import Target

# The fan-out's chunks: each takes this share of every layer's units.
UNIT_CHUNKS = 4


def ablation_counts(model: nn.Module, layer: str | nn.Module, x, y=None,
                    num_classes: int | None = None, *, fast: bool = True,
                    units_per_pass: int | None = None, batch_size: int = 256, device=None,
                    part: tuple[int, int] = (0, 1)) -> dict:
    """The hit counts behind ``single_unit_ablation``: of the intact network and of each unit
    zeroed, per class. ``part`` (j, J): only the j-th of J equal runs of the layer's units, so
    that J tasks can share a layer (seltrain.analysis.fanout); their counts, concatenated in
    order (``join_counts``), are those of the whole layer: whole numbers, summed exactly."""
    # ablation.py imports this module: its functions are imported where they are called.
    from seltrain.analysis.ablation import _class_hits, _class_predictions, ablated_logits
    from seltrain.probes import resolve_layer

    acc: dict[str, Tensor] = {}
    info: dict = {}
    name, _ = resolve_layer(model, layer)
    j, n_parts = part

    def unit_sets(n: int) -> list[Tensor]:
        info["first_unit"] = j * n // n_parts
        return [torch.tensor([u]) for u in range(j * n // n_parts, (j + 1) * n // n_parts)]

    for yb, ids, logits in ablated_logits(model, layer, x, y, unit_sets, fast=fast,
                                          units_per_pass=units_per_pass,
                                          batch_size=batch_size, device=device,
                                          desc=f"ablate {name}", info=info):
        k = num_classes or logits.shape[-1]
        if not acc:  # counts on the device: read once, at the end
            n_sets = len(range(j * info["units"] // n_parts, (j + 1) * info["units"] // n_parts))
            acc = {key: torch.zeros(shape, dtype=torch.float64, device=logits.device)
                   for key, shape in (("correct", (n_sets, k)), ("base", k),
                                      ("counts", k), ("predicted", (n_sets, k)),
                                      ("base_predicted", k))}
        hits, n = _class_hits(yb, logits, k)
        preds = _class_predictions(logits, k)
        if ids is None:
            acc["base"] += hits[0]
            acc["base_predicted"] += preds[0]
            acc["counts"] += n
        else:
            acc["correct"][ids.start:ids.stop] += hits
            acc["predicted"][ids.start:ids.stop] += preds
    if not acc:
        raise ValueError("no data: x is empty")
    return {"name": name, "info": info, **{key: v.cpu().numpy() for key, v in acc.items()}}


def join_counts(parts: list[dict]) -> dict:
    """The counts of a whole layer from those of its parts (``ablation_counts``), in order."""
    return dict(parts[0], correct=np.concatenate([p["correct"] for p in parts]),
                predicted=np.concatenate([p["predicted"] for p in parts]))


def chunks(opts: AblationOptions) -> list:
    """Parts that run apart (seltrain.analysis.fanout): the j-th run of ``UNIT_CHUNKS``
    equal runs of every layer's units; the merge adds the attributes, the correlations and
    the cumulative curves."""
    return [("units", j, UNIT_CHUNKS) for j in range(UNIT_CHUNKS)]


def chunk_label(opts: AblationOptions, chunk) -> str:
    return f"units part {chunk[1] + 1} of {chunk[2]}"


def compute_chunk(target: Target, opts: AblationOptions, chunk) -> dict:
    _, j, n = chunk
    return {name: ablation_counts(target.model, name, target.data,
                                  num_classes=target.info.num_classes,
                                  units_per_pass=opts.unit_batch or None, device=target.device,
                                  part=(j, n)) for name in target.layers}


def merge(target: Target, opts: AblationOptions, parts: list[dict]) -> dict:
    from seltrain.analysis.ablation import _analyse, ablation_result

    return _analyse(target, opts, lambda name, **kw: ablation_result(
        join_counts([p[name] for p in parts])))
