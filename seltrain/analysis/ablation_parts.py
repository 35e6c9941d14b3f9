"""Single-unit ablation in parts: the hit counts of a run of a layer's units, and the hooks
the analyses' fan-out (seltrain.analysis.fanout) splits ``seltrain analyze ablation`` with.

A units part counts, for every layer, the hits of the intact network and of each of its
share of the units zeroed (whole numbers, so the parts' counts joined are exactly the whole
layer's). With ``--cumulative``, a part per order of the cumulative curves (SI high first, SI
low first, each random order) counts the hits of every layer with the first fractions of that
order zeroed (``cumulative_counts``). The merge turns the joined counts into
``single_unit_ablation``'s and ``cumulative_ablation``'s results and adds the attributes and
the correlations (they need every unit). Hits are whole numbers and the accuracies, means and
standard deviations are computed from the joined counts as one process computes them from its
own, so the merged result is the single-process one exactly, with one ablation per tail pass
(the CPU default; stacked passes are exact where ``ablation``'s module docstring says).

The orders need each unit's SI. It is computed in the merge (on ``--rank-split``), so each
cumulative part computes it again, the same way (``unit_selectivity``: one forward pass over
that split, deterministic for a given device and thread count), and draws the orders with
the single process' seed; the merge checks that a part's order is its own.
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
# The fractions of a layer's units the cumulative curves ablate.
FRACTIONS = np.linspace(0, 1, 11)
# The seed of the cumulative curves' random orders: the same in one process and in parts.
ORDER_SEED = 0


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


def cumulative_counts(model: nn.Module, layer: str | nn.Module, x, y,
                      orders: dict[str, np.ndarray], fractions=None, *, fast: bool = True,
                      units_per_pass: int | None = None, batch_size: int = 256,
                      device=None) -> dict:
    """The hits behind ``cumulative_ablation``: of the intact network, and (``correct[O, F]``)
    of the first ``n_ablated[F]`` units of each of ``orders`` (name: unit indices) zeroed.
    The rows of parts holding some of the orders each, concatenated (``join_cumulative``),
    are those of one call with all of them."""
    from seltrain.analysis.ablation import ablated_logits
    from seltrain.probes import resolve_layer

    name, _ = resolve_layer(model, layer)
    fractions = np.array(FRACTIONS if fractions is None else fractions, np.float64)  # a copy
    n_units = len(next(iter(orders.values())))
    n_abl = np.floor(fractions * n_units + 0.5).astype(np.int64)

    def unit_sets(n: int) -> list[Tensor]:
        if n != n_units:
            raise ValueError(f"si has {n_units} entries but layer '{name}' has {n} units")
        return [torch.as_tensor(o[:k]) for o in orders.values() for k in n_abl]

    correct = base = None  # hits on the device: read once, at the end
    n_images = 0
    info: dict = {}
    for yb, ids, logits in ablated_logits(model, layer, x, y, unit_sets, fast=fast,
                                          units_per_pass=units_per_pass, batch_size=batch_size,
                                          device=device, desc=f"cumulative ablation {name}",
                                          info=info):
        hits = (logits.argmax(-1) == yb[None]).sum(1).double()
        if correct is None:
            correct = torch.zeros(len(orders) * len(fractions), dtype=torch.float64,
                                  device=hits.device)
            base = torch.zeros((), dtype=torch.float64, device=hits.device)
        if ids is None:
            base += hits[0]
            n_images += len(yb)
        else:
            correct[ids.start:ids.stop] += hits
    if correct is None:
        raise ValueError("no data: x is empty")
    return {"layer": name, "orders": dict(orders), "fractions": fractions, "n_ablated": n_abl,
            "correct": correct.cpu().numpy().reshape(len(orders), len(fractions)),
            "base": float(base), "n_images": n_images, "info": info}


def join_cumulative(parts: list[dict]) -> dict:
    """The counts of every order from those of parts holding some of them, in order."""
    return dict(parts[0], orders={k: o for p in parts for k, o in p["orders"].items()},
                correct=np.concatenate([p["correct"] for p in parts]))


def cumulative_result(c: dict) -> dict:
    """``cumulative_ablation``'s result from its counts (``cumulative_counts``): the orders
    SI high first, SI low first, then the random ones."""
    assert list(c["orders"])[:2] == ["si_high_first", "si_low_first"], list(c["orders"])
    acc = c["correct"] / c["n_images"]
    rand, n_f = acc[2:], len(c["fractions"])
    return {
        "layer": c["layer"], "fractions": c["fractions"], "n_ablated": c["n_ablated"],
        "si_high_first": acc[0], "si_low_first": acc[1], "random": rand,
        "random_mean": rand.mean(0) if len(rand) else np.full(n_f, np.nan),
        "random_std": rand.std(0) if len(rand) else np.full(n_f, np.nan),
        "baseline_acc": c["base"] / c["n_images"], "n_images": int(c["n_images"]),
        "method": c["info"]["method"], "ablated_module": c["info"]["ablated_module"],
        "units_per_pass": c["info"]["units_per_pass"],
    }


# --------------------------------------------------------------------------- the fan-out's hooks

def order_names(n_random: int) -> list[str]:
    """The orders of the cumulative curves, as ``ablation.ablation_orders`` names them."""
    return ["si_high_first", "si_low_first"] + [f"random_{i}" for i in range(n_random)]


def chunks(opts: AblationOptions) -> list:
    """Parts that run apart (seltrain.analysis.fanout): the j-th run of ``UNIT_CHUNKS``
    equal runs of every layer's units and, with ``--cumulative``, one part per order of the
    cumulative curves; the merge adds the attributes and the correlations."""
    return [("units", j, UNIT_CHUNKS) for j in range(UNIT_CHUNKS)] + (
        [("cumulative", o) for o in order_names(opts.n_random)] if opts.cumulative else [])


def chunk_label(opts: AblationOptions, chunk) -> str:
    if chunk[0] == "cumulative":
        return "cumulative, " + (chunk[1].replace("_", " ").replace("si ", "SI ")
                                 if chunk[1].startswith("si_") else
                                 f"random order {int(chunk[1].split('_')[1]) + 1} of "
                                 f"{opts.n_random}")
    return f"units part {chunk[1] + 1} of {chunk[2]}"


def compute_chunk(target: Target, opts: AblationOptions, chunk) -> dict:
    if chunk[0] == "cumulative":
        return _cumulative_part(target, opts, chunk[1])
    _, j, n = chunk
    return {name: ablation_counts(target.model, name, target.data,
                                  num_classes=target.info.num_classes,
                                  units_per_pass=opts.unit_batch or None, device=target.device,
                                  part=(j, n)) for name in target.layers}


def _cumulative_part(target: Target, opts: AblationOptions, order: str) -> dict:
    """Every layer's hits along the order ``order``, from the SI the merge will compute."""
    from seltrain.analysis.ablation import ablation_orders
    from seltrain.analysis.target import on_split
    from seltrain.analysis.unit_selectivity import unit_selectivity

    si = unit_selectivity(on_split(target, opts.rank_split, "--rank-split"))["si"]
    return {name: cumulative_counts(
        target.model, name, target.data, None,
        {order: ablation_orders(si[name], opts.n_random, ORDER_SEED)[order]},
        units_per_pass=opts.unit_batch or None, device=target.device)
        for name in target.layers}


def merge(target: Target, opts: AblationOptions, parts: list[dict]) -> dict:
    """The parts, in ``chunks(opts)``'s order, into ``ablation.compute``'s result."""
    from seltrain.analysis.ablation import _analyse, ablation_orders, ablation_result

    kinds = [c[0] for c in chunks(opts)]
    units = [p for k, p in zip(kinds, parts) if k == "units"]
    curves = [p for k, p in zip(kinds, parts) if k == "cumulative"]

    def cumulative(name: str, si: np.ndarray) -> dict:
        c = join_cumulative([p[name] for p in curves])
        for key, order in ablation_orders(si, opts.n_random, ORDER_SEED).items():
            if not np.array_equal(c["orders"][key], order):
                raise ValueError(f"cumulative ablation of {name}: the part of the order {key} "
                                 "ranked the units by another SI than the merge's")
        return cumulative_result(c)

    return _analyse(target, opts, lambda name, **kw: ablation_result(
        join_counts([p[name] for p in units])), cumulative)
