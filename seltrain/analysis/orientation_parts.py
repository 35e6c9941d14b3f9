"""Orientation selectivity in parts: the numbers of a run of the layers, and the hooks the
analyses' fan-out (seltrain.analysis.fanout) splits ``seltrain analyze orientation`` with.

Every number of a layer is its own, or depends on nothing another part computes:

* its grating responses: each stimulus' response does not depend on the other layers probed
  in the same pass (eval mode, the same batches of gratings);
* its null distribution: the permutations depend only on the grating grid and ``--seed``
  (``stimulus_permutations``), so every part draws the same ones;
* its gOSI-split ablation, and the shift invariance of the layers above it with its top or
  bottom group silenced: the layers above are read from the target's whole list, not the
  part's;
* its shift invariance before ablation: per image, per layer.

What spans layers, the summary's means over layers and the fraction of every unit that is
selective, is computed in the merge (``assemble``), which is also how ``compute`` ends: the
single-process run is the merge of one part holding every layer, so the parts' files equal
its files number for number.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from seltrain.analysis.shift_invariance import shift_invariance_layers
# Cut and named as selectivity's layer chunks.
from seltrain.analysis.unit_selectivity import chunk_label, chunk_layers  # noqa: F401
from seltrain.probes import resolve_layer

if TYPE_CHECKING:
    from seltrain.analysis.orientation import OrientationOptions
    from seltrain.analysis.target import Target

# The fan-out's chunks: each takes this share of the layers. Four, not selectivity's three:
# a layer costs the whole split twice (its gOSI-split ablation) and the shift invariance of
# every layer above it, so a part is far heavier than a selectivity part.
LAYER_CHUNKS = 4

# The per-layer numbers the summary repeats, in the order summary.json lists them.
SUMMARY_KEYS = ("mean_osi", "mean_gosi", "fraction_selective", "mean_null_osi",
                "mean_null_gosi", "fraction_selective_null", "mean_orientation_range_selective")


def check_shift(target: Target, opts: OrientationOptions) -> None:
    if not opts.no_ablation and not 1 <= opts.shift < target.image_size:
        # The shift is circular (torch.roll): a multiple of the image size is no shift at
        # all, and shift invariance would read 1.0 everywhere.
        opts.fail("shift", opts.shift, f"give a shift from 1 to {target.image_size - 1} pixels "
                  f"(the images are {target.image_size} px; the shift wraps around)")


def layer_results(target: Target, opts: OrientationOptions, names: list[str]) -> dict:
    """The numbers of the layers ``names`` (a run of ``target.layers``): ``{"layers",
    "gosi_split_ablation", "before", "after"}``, each keyed by layer in ``names``' order."""
    # orientation.py imports this module: its functions are imported where they are called.
    from seltrain.analysis.orientation import (fraction_selective, gosi, gosi_split_ablation,
                                               grating_parameters, layers_grating_responses,
                                               null_indices, orientation_range, osi,
                                               preferred_orientation, stimuli, tuning_curves)

    check_shift(target, opts)
    out: dict = {"layers": {}, "gosi_split_ablation": {}, "before": {}, "after": {}}
    if not names:
        return out
    threshold = opts.gosi_threshold
    stim = stimuli(target.image_size, target.info.channels, target.info.mean, target.info.std)
    angles = grating_parameters(target.image_size)["orientations_deg"]
    responses = layers_grating_responses(target.model, names, stim, device=target.device)
    for name in names:
        R, best_f = tuning_curves(responses[name])
        o, g = osi(R, angles), gosi(R, angles)
        # Ukita's controls: the same indices on shuffled gratings, and how far the preferred
        # orientation moves across the spatial frequencies a unit responds to
        null = null_indices(responses[name], opts.permutations, opts.seed, angles)
        rng = orientation_range(responses[name], angles)
        selective = g > threshold
        out["layers"][name] = {
            "osi": o, "gosi": g, "tuning_curves": R, "best_frequency": best_f,
            "preferred_orientation_deg": preferred_orientation(R, angles),
            "orientation_range_deg": rng, "null_osi": null["osi"], "null_gosi": null["gosi"],
            "mean_osi": float(o.mean()), "mean_gosi": float(g.mean()),
            "fraction_selective": fraction_selective(g, threshold),
            "mean_null_osi": float(null["osi"].mean()),
            "mean_null_gosi": float(null["gosi"].mean()),
            "fraction_selective_null": fraction_selective(null["gosi"], threshold),
            "n_selective": int(selective.sum()),
            "mean_orientation_range_selective": float(np.nanmean(rng[selective]))
            if np.isfinite(rng[selective]).any() else math.nan}
    if opts.no_ablation:
        return out
    out["before"] = shift_invariance_layers(target.model, names, target.data,
                                            shift=opts.shift, device=target.device)
    for name in names:
        r = gosi_split_ablation(target.model, name, target.data,
                                gosi_values=out["layers"][name]["gosi"],
                                percentile=opts.percentile, device=target.device)
        out["gosi_split_ablation"][name] = r
        above = target.layers[target.layers.index(name) + 1:]  # the whole list's, not the part's
        path = resolve_layer(target.model, name)[0]
        # the layers above the ablated one, with its top or bottom group silenced
        out["after"][name] = {group: shift_invariance_layers(
            target.model, above, target.data, shift=opts.shift, device=target.device,
            ablation=(path, r[group]["units"])) for group in ("top", "bottom")} \
            if above else {}
    return out


def assemble(target: Target, opts: OrientationOptions, parts: list[dict]) -> dict:
    """``compute``'s result from the ``layer_results`` of runs of the layers (every layer in
    the target's order), with what spans layers: the permutations and the summary."""
    from seltrain.analysis.orientation import grating_parameters, stimulus_permutations

    def joined(key: str) -> dict:
        return {n: p[key][n] for n in target.layers for p in parts if n in p[key]}

    layers, split_abl, before, after = (joined(k) for k in ("layers", "gosi_split_ablation",
                                                            "before", "after"))
    threshold = opts.gosi_threshold
    params = grating_parameters(target.image_size)
    # every layer's null distribution used these: they depend on the grid and the seed only
    perms = stimulus_permutations(len(params["orientations_deg"]), len(params["phases_deg"]),
                                  len(params["periods_px"]), opts.permutations, opts.seed) \
        if layers else None
    result = {"checkpoint": target.ckpt_path, "split": target.split, "threshold": threshold,
              "grating_parameters": params, "permutations": perms, "seed": opts.seed,
              "layers": layers, "gosi_split_ablation": split_abl,
              "shift_invariance": {"shift": opts.shift, "before": before,
                                   "after_ablation": after}}
    summary = {"layers": {n: {k: v[k] for k in SUMMARY_KEYS} for n, v in layers.items()}}
    summary["mean_gosi"] = float(np.mean([v["mean_gosi"] for v in layers.values()]))
    summary["mean_null_gosi"] = float(np.mean([v["mean_null_gosi"] for v in layers.values()]))
    summary["fraction_selective"] = float(np.mean(np.concatenate(
        [v["gosi"] for v in layers.values()]) > threshold))
    for n, r in split_abl.items():
        summary["layers"][n].update(
            ce_increase_top=r["top"]["ce_increase_mean"],
            ce_increase_bottom=r["bottom"]["ce_increase_mean"],
            n_top=r["top"]["n_units"], n_bottom=r["bottom"]["n_units"],
            acc_change_top=r["top"]["acc_change"], acc_change_bottom=r["bottom"]["acc_change"],
            ablated_module=r["ablated_module"], shift_invariance=before[n]["mean"])
    return {"orientation": result, "summary": summary}


def chunks(opts: OrientationOptions) -> list:
    """Parts that run apart (seltrain.analysis.fanout): the j-th run of ``LAYER_CHUNKS``
    runs of the layers; the merge adds the summary over layers."""
    return [("layers", j, LAYER_CHUNKS) for j in range(LAYER_CHUNKS)]


def compute_chunk(target: Target, opts: OrientationOptions, chunk) -> dict:
    return layer_results(target, opts, chunk_layers(target.layers, chunk))


def merge(target: Target, opts: OrientationOptions, parts: list[dict]) -> dict:
    return assemble(target, opts, parts)
