"""Dimensionality of layer representations (Leavitt & Morcos 2020; docs/METHODS.md section 5).

Per layer, the number of principal components needed to explain a fraction (``threshold``,
95% by default; the paper's exact threshold is unconfirmed) of the variance of a set of
layer outputs. Two readings are reported side by side, because the papers' text leaves open
which one carries the claim that "adversarial samples cause a larger increase in early-layer
dimensionality than corrupted samples" (ICLR 2021 version, arXiv 2010.07693):

* ``representation``: the dimensionality of the layer's representation of the (clean,
  corrupted or adversarial) inputs themselves; the *increase* is perturbed minus clean.
* ``change``: the dimensionality of the perturbation-induced change, the perturbed minus the
  clean representation of the same images (row n of one minus row n of the other). The
  workshop version of the paper (arXiv 2007.04440) words it this way: "the dimensionality of
  the change in the representation due to perturbation".

No code of either paper is public (searched: the authors' names and the titles in the code
corpus; Omkar-Ranadive/Class-Selective-Neurons holds selectivity, ablation and CKA code but
no dimensionality or gradient analysis), so how the paper computed PCA (which samples, which
layer tensor) is unconfirmed too: seltrain centres the features over the samples and takes
the eigenvalues of their covariance.

The representation is the layer's whole output flattened (every channel at every position);
``spatial="mean"`` uses the spatially averaged unit activations instead (C features per conv
layer, the units of docs/METHODS.md section 1). N bounds the answer (at most N - 1 components
vary), so compare layers, conditions and networks at equal N. A reading that reaches
min(N - 1, D) (``ceiling``) has saturated: the output then carries a warning line
(``saturated`` and ``warning`` in the JSON, the last printed line).

Memory: the clean features of every layer are held while the perturbed ones stream, so the
peak is about 3 x N x D x 4 bytes for the largest layer (clean, perturbed, change); use
``spatial="mean"`` or fewer images for very wide layers.
"""
from __future__ import annotations

import math
import os
from contextlib import closing
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seltrain.analysis.corruption_tables import COMMON, table_for
from seltrain.analysis.corruptions import release_format_name
from seltrain.analysis.options import (AnalysisOptions, max_images_option, number, numbers,
                                       option, whole_number)
from seltrain.analysis.robustness import (CORRUPTION_TABLES, adversarial_batches, check_attack,
                                          check_corruptions, check_eps, corrupted_batches,
                                          corruption_names)
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target
from seltrain.probes import layer_outputs, named_layers, unit_activation

# Slack when comparing a cumulative variance ratio with the threshold: with equal variances
# per component the sum can land a few ulps below an exactly reachable threshold.
_TOLERANCE = 1e-9
# Columns of float64 per chunk of the Gram product: bounds the float64 copy of the features
# to N x 4096 x 8 bytes however wide the layer is.
_CHUNK = 4096

READINGS = {
    "representation": "principal components for the threshold share of the variance of the "
                      "layer's representation of the inputs (clean, corrupted or adversarial)",
    "change": "principal components for the threshold share of the variance of the "
              "perturbation-induced change: the perturbed minus the clean representation of "
              "the same images",
}


def explained_variance_ratio(features) -> np.ndarray:
    """PCA explained-variance ratios, largest first, of ``features`` [N, D] (centred here).
    Computed in float64 from the smaller Gram matrix (N x N, accumulated over column chunks,
    or D x D). All zeros when the features do not vary."""
    x = features if isinstance(features, Tensor) else torch.as_tensor(np.asarray(features))
    x = x.detach().cpu().flatten(1)
    n, d = x.shape
    if n <= d:
        gram = torch.zeros(n, n, dtype=torch.float64)
        for i in range(0, d, _CHUNK):
            c = x[:, i:i + _CHUNK].double()
            c = c - c.mean(0, keepdim=True)
            gram += c @ c.T
    else:
        c = x.double()
        c = c - c.mean(0, keepdim=True)
        gram = c.T @ c
    ev = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
    total = ev.sum()
    return (ev / total).numpy() if total > 0 else np.zeros(len(ev))


def check_threshold(threshold: float) -> float:
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return threshold


def n_components(features, threshold: float = 0.95) -> int:
    """Smallest k whose first k principal components explain at least ``threshold`` of the
    variance of ``features`` [N, D]; 0 for features that do not vary."""
    check_threshold(threshold)
    ratio = explained_variance_ratio(features)
    if ratio.sum() == 0:
        return 0
    cum = np.cumsum(ratio)
    return int(min(np.searchsorted(cum, threshold - _TOLERANCE) + 1, len(cum)))


def layer_features(model: nn.Module, layers: Sequence[str | nn.Module] | str | nn.Module, x,
                   *, spatial: str = "flatten", max_samples: int | None = None,
                   batch_size: int = 256, device=None) -> dict[str, np.ndarray]:
    """Representations [N, D] (float32) of each layer, in one pass over ``x`` (tensor or
    batches of (x, y)); at most ``max_samples`` images. Keys are the layers as given (probe
    names or module paths)."""
    if spatial not in ("flatten", "mean"):
        raise ValueError(f"spatial must be 'flatten' or 'mean', got '{spatial}'")
    named = named_layers(model, layers)  # keyed as given: cnn7's probe "conv1" is "relu1"
    feats: dict[str, list[Tensor]] = {n: [] for n in named}
    seen = 0
    reduce = unit_activation if spatial == "mean" else None  # only the features asked for
    with closing(layer_outputs(model, named, x, reduce=reduce, batch_size=batch_size,
                               device=device, desc="layer features")) as batches:
        for outs, xb, _ in batches:  # closing: the hooks go when the loop breaks
            take = len(xb) if max_samples is None else min(len(xb), max_samples - seen)
            for n, out in outs.items():
                feats[n].append(out[:take].flatten(1).float().cpu())
            seen += take
            if max_samples is not None and seen >= max_samples:
                break
    return {n: torch.cat(v).numpy() for n, v in feats.items()}


def feature_dimensionality(features: np.ndarray, threshold: float = 0.95,
                           spatial: str = "flatten") -> dict:
    """One reading of features [N, D]: ``n_components`` at ``threshold``, ``n_features``,
    ``n_samples``, and the settings."""
    return {"n_components": n_components(features, threshold),
            "n_features": int(features.shape[1]), "n_samples": int(features.shape[0]),
            "threshold": threshold, "spatial": spatial}


def layer_dimensionality(model: nn.Module, layers, x, threshold: float = 0.95, *,
                         spatial: str = "flatten", max_samples: int | None = None,
                         batch_size: int = 256, device=None) -> dict[str, dict]:
    """Per layer: ``n_components`` at ``threshold``, ``n_features`` (D), ``n_samples`` (N).
    Note that N bounds the answer (at most N - 1 components vary), so compare layers and
    conditions at equal N."""
    check_threshold(threshold)
    feats = layer_features(model, layers, x, spatial=spatial, max_samples=max_samples,
                           batch_size=batch_size, device=device)
    return {n: feature_dimensionality(f, threshold, spatial) for n, f in feats.items()}


def perturbed_dimensionality(model: nn.Module, clean_features: Mapping[str, np.ndarray],
                             perturbed, threshold: float = 0.95, *, spatial: str = "flatten",
                             batch_size: int = 256, device=None) -> dict[str, dict]:
    """Both readings for one perturbation. ``clean_features``: ``layer_features`` of the clean
    images (its keys name the layers); ``perturbed``: the same images perturbed, in the same
    order (tensor or batches, e.g. ``robustness.corrupted_batches`` of the clean batches).
    Returns {layer: {"representation": {...}, "change": {...}}}, each reading as
    ``layer_dimensionality`` gives it."""
    check_threshold(threshold)
    feats = layer_features(model, list(clean_features), perturbed, spatial=spatial,
                           batch_size=batch_size, device=device)
    out = {}
    for name, pert in feats.items():
        clean = clean_features[name]
        if pert.shape != clean.shape:
            raise ValueError(f"layer {name}: perturbed features {pert.shape} do not pair with "
                             f"the clean ones {clean.shape}; pass the same images in the same "
                             "order")
        rep = feature_dimensionality(pert, threshold, spatial)
        np.subtract(pert, clean, out=pert)  # in place: the change, without a third copy
        out[name] = {"representation": rep,
                     "change": feature_dimensionality(pert, threshold, spatial)}
    return out


def ceiling(reading: Mapping) -> int:
    """The most components a reading can count: min(N - 1, D), since N centred samples vary in
    at most N - 1 directions and D features span at most D."""
    return max(0, min(reading["n_samples"] - 1, reading["n_features"]))


def saturated(readings: Mapping[str, Mapping[str, Mapping[str, Mapping]]]) -> list[dict]:
    """The readings of ``{reading: {condition: {layer: reading}}}`` whose component count
    reached its ``ceiling``, where the count stops growing with the dimensionality."""
    return [{"reading": r, "condition": c, "layer": n, "n_components": v["n_components"],
             "ceiling": ceiling(v)}
            for r, conds in readings.items() for c, per_layer in conds.items()
            for n, v in per_layer.items() if 0 < ceiling(v) <= v["n_components"]]


def saturation_warning(sat: Sequence[Mapping], n_images: int) -> str | None:
    """One line naming the saturated readings (``saturated``), or None where none is."""
    if not sat:
        return None
    where = ", ".join(f"{s['reading']} {s['condition']} {s['layer']} ({s['n_components']})"
                      for s in sat[:4]) + (f" and {len(sat) - 4} more" if len(sat) > 4 else "")
    return (f"warning: {len(sat)} reading(s) reached the ceiling of min(N - 1, D) components, "
            f"where the count saturates: {where}; raise --max-images (N = {n_images}) to "
            "read them")


def mean_reading(results: Sequence[Mapping[str, Mapping]]) -> dict[str, dict]:
    """The per-layer mean of ``n_components`` over several results of one reading
    ({layer: {...}}, e.g. one per corruption); other fields from the first."""
    first = results[0]
    return {n: {**first[n], "n_components": float(np.mean([r[n]["n_components"]
                                                           for r in results]))}
            for n in first}


def perturbation_dimensionality(model: nn.Module, layers, clean,
                                perturbed: Mapping[str, Iterable], threshold: float = 0.95, *,
                                spatial: str = "flatten", max_samples: int | None = None,
                                batch_size: int = 256, device=None) -> dict:
    """Both readings for clean inputs and each named perturbation of them.

    ``clean``: a tensor or batches; ``perturbed``: {condition: the same images perturbed, in
    the same order}. Returns ``{"representation": {"clean": {layer: ...}, cond: ...},
    "change": {cond: {layer: ...}}, "increase": {cond: {layer: representation[cond] -
    representation["clean"]}}}``."""
    clean_feats = layer_features(model, layers, clean, spatial=spatial,
                                 max_samples=max_samples, batch_size=batch_size, device=device)
    res = {"representation": {"clean": {n: feature_dimensionality(f, threshold, spatial)
                                        for n, f in clean_feats.items()}},
           "change": {}}
    for cond, x in perturbed.items():
        r = perturbed_dimensionality(model, clean_feats, x, threshold, spatial=spatial,
                                     batch_size=batch_size, device=device)
        res["representation"][cond] = {n: v["representation"] for n, v in r.items()}
        res["change"][cond] = {n: v["change"] for n, v in r.items()}
    res["increase"] = increase(res["representation"])
    return res


def increase(representation: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict]:
    """{condition: {layer: components(condition) - components(clean)}} for every condition
    but clean."""
    clean = representation["clean"]
    return {c: {n: r[n]["n_components"] - clean[n]["n_components"] for n in r}
            for c, r in representation.items() if c != "clean"}


def early_layers(layers: Sequence[str], n: int | None = None) -> list[str]:
    """The "early" layers of the abstract's claim: the first ``n``, by default the first third
    (rounded up) of the analysed layers, which for a ResNet20's 9 blocks is stage 1. Where the
    paper drew the line is unconfirmed."""
    n = math.ceil(len(layers) / 3) if not n else n
    return list(layers[:max(1, min(n, len(layers)))])


# --------------------------------------------------------------------------- the analysis

def _single_eps(text: str) -> float:
    eps = numbers(text)
    if len(eps) != 1:
        raise ValueError("dimensionality takes one --eps, e.g. --eps 8/255")
    return eps[0]


@dataclass
class DimensionalityOptions(AnalysisOptions):
    """principal components for a share of the variance of the representation of clean,
    corrupted and adversarial inputs, and of the perturbation-induced change"""

    max_images: int = max_images_option(1000)
    variance_share: float = option(0.95, "share of the variance to explain (the paper's value "
                                   "is unconfirmed)", parse=number, aliases=("--threshold",),
                                   metavar="SHARE")
    spatial: str = option("flatten", "flatten: whole layer output; mean: spatial mean per unit",
                          choices=("flatten", "mean"))
    corruptions: tuple[str, ...] = option(
        tuple(COMMON), "all, extra, all+extra, or comma-separated names",
        parse=corruption_names, metavar="NAMES", shown="all")
    severity: int = option(3, "corruption severity", parse=whole_number,
                           choices=(1, 2, 3, 4, 5))
    corruption_table: str = option("auto", "corruption parameters of which released set "
                                   "(auto: by dataset, as analyze robustness)",
                                   choices=CORRUPTION_TABLES)
    raw_corruptions: bool = option(False, "feed the corrupted floats, without the released "
                                   "files' 8-bit (and JPEG q85) storage")
    eps: float = option(0.031, "one L-inf epsilon (pixel units), e.g. 8/255", parse=_single_eps)
    attack: str = option("pgd", "the attack", choices=("fgsm", "pgd"))
    steps: int = option(10, "PGD steps", parse=whole_number)
    step_size: float | None = option(None, "PGD step size", parse=number,
                                     shown="2.5 * eps / steps")
    early_layers: int | None = option(None, "how many of the first layers count as early in the "
                                      "summary", parse=whole_number, metavar="N",
                                      shown="the first third, rounded up")

    def check(self) -> None:
        super().check()
        if not 0 < self.variance_share <= 1:
            self.fail("variance_share", f"{self.variance_share:g}", "give a share in (0, 1], "
                      "e.g. 0.95")
        check_corruptions(self)
        check_eps(self, (self.eps,))
        self.at_least("early_layers", 1, optional=True)
        check_attack(self)


Options = DimensionalityOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: the abstract's two
# claims, that clean early-layer dimensionality falls with selectivity and that adversarial
# inputs raise it more than corrupted ones (both readings, docs/analysis.md).
SWEEP_HEADLINE = ("representation_components_clean", "early_increase_corrupted",
                  "early_increase_adversarial", "early_change_components_corrupted",
                  "early_change_components_adversarial")


def sweep_panels(summaries: list[dict]) -> dict[str, tuple[str, dict]]:
    """Per-layer figures of a sweep: {figure: (ylabel, {layer: {series: [value per trial]}})}."""
    layers = list(dict.fromkeys(n for s in summaries for n in s["layers"]))

    def panels(reading: str, conditions: tuple[str, ...]) -> dict:
        return {n: {c: [s["layers"].get(n, {}).get(reading, {}).get(c, math.nan)
                        for s in summaries] for c in conditions} for n in layers}

    return {"dimensionality_clean": ("components, clean representation",
                                     panels("representation", ("clean",))),
            "dimensionality_increase": ("increase over clean (representation)",
                                        panels("increase", ("adversarial", "corrupted"))),
            "dimensionality_change": ("components of the change (perturbed - clean)",
                                      panels("change", ("adversarial", "corrupted")))}


def compute(target: Target, opts: DimensionalityOptions) -> dict:
    """``seltrain analyze dimensionality``: both readings per layer, of the representation of
    clean, corrupted (the mean over ``opts.corruptions`` at ``opts.severity``, made as
    ``analyze robustness`` makes them: the dataset's -C table, stored as the released files
    unless ``opts.raw_corruptions``) and adversarial inputs, and of the perturbation-induced
    change; the increase over clean. Returns ``{"dimensionality": <dimensionality.json>,
    "summary": <summary.json>}``."""
    model, data, layers = target.model, target.data, target.layers
    mean, std = target.info.mean, target.info.std
    share, names = opts.variance_share, list(opts.corruptions)
    table = table_for(target.cfg.data.dataset, opts.corruption_table)
    # Lazy batches, made in the order they are read: the corruptions, then the attack.
    conditions = {c: corrupted_batches(
        data, None, c, opts.severity, mean=mean, std=std, seed=opts.seed, table=table,
        release_format=not opts.raw_corruptions) for c in names}
    conditions["adversarial"] = adversarial_batches(
        model, data, None, opts.eps, attack=opts.attack, steps=opts.steps,
        step_size=opts.step_size, mean=mean, std=std, seed=opts.seed, device=target.device)
    both = perturbation_dimensionality(model, layers, data, conditions, share,
                                       spatial=opts.spatial, device=target.device)
    sat = saturated({reading: both[reading] for reading in ("representation", "change")})
    warning = saturation_warning(sat, data.num_images)
    rep, change = {"clean": both["representation"]["clean"]}, {}
    # "corrupted": the mean over the corruptions, per layer and reading
    for reading, into in (("representation", rep), ("change", change)):
        into["corrupted"] = mean_reading([both[reading][c] for c in names])
        into["adversarial"] = both[reading]["adversarial"]
    inc = increase(rep)
    early = early_layers(layers, opts.early_layers)
    result = {
        "checkpoint": target.ckpt_path, "split": target.split, "threshold": share,
        "spatial": opts.spatial, "corruptions": names, "corruption_severity": opts.severity,
        "corruption_table": table.name,
        "corruption_storage": ("raw floats" if opts.raw_corruptions
                               else release_format_name(table)),
        "attack": opts.attack, "eps": opts.eps, "steps": opts.steps, "early_layers": early,
        "readings": {**READINGS, "increase": "representation components of the perturbed "
                     "inputs minus those of the clean inputs"},
        "representation": rep, "change": change, "increase": inc,
        "saturated": sat, "warning": warning,
        "per_corruption": {c: {reading: both[reading][c]
                               for reading in ("representation", "change")} for c in names}}

    def mean_over(names, values):
        return float(np.mean([values[n] for n in names]))

    summary: dict = {"threshold": share, "early_layers": early, "warning": warning}
    for cond, r in rep.items():
        summary[f"representation_components_{cond}"] = mean_over(
            layers, {n: v["n_components"] for n, v in r.items()})
    for cond, r in change.items():
        summary[f"change_components_{cond}"] = mean_over(
            layers, {n: v["n_components"] for n, v in r.items()})
        summary[f"early_change_components_{cond}"] = mean_over(
            early, {n: v["n_components"] for n, v in r.items()})
    for cond, r in inc.items():
        summary[f"early_increase_{cond}"] = mean_over(early, r)
    summary["layers"] = {n: {"representation": {c: rep[c][n]["n_components"] for c in rep},
                             "change": {c: change[c][n]["n_components"] for c in change},
                             "increase": {c: inc[c][n] for c in inc}} for n in layers}
    return {"dimensionality": result, "summary": summary}


def write(r: dict, target: Target, opts: DimensionalityOptions, out: str) -> list[str]:
    """dimensionality.json, dimensionality.csv, dimensionality.png and summary.json in
    ``out``; the lines the command prints."""
    from seltrain.analysis import plots

    res, summary = r["dimensionality"], r["summary"]
    rep, change, inc = res["representation"], res["change"], res["increase"]
    layers, share, early = target.layers, res["threshold"], res["early_layers"]
    write_json(os.path.join(out, "dimensionality.json"), res)
    rows = [(reading, cond, n, per_layer[n])
            for reading, conds in (("representation", rep), ("change", change))
            for cond, per_layer in conds.items() for n in layers]
    write_csv(os.path.join(out, "dimensionality.csv"), {
        "reading": [r[0] for r in rows], "condition": [r[1] for r in rows],
        "layer": [r[2] for r in rows], "n_components": [r[3]["n_components"] for r in rows],
        "increase_over_clean": [inc[c][n] if reading == "representation" and c != "clean"
                                else np.nan for reading, c, n, _ in rows],
        "n_features": [r[3]["n_features"] for r in rows],
        "n_samples": [r[3]["n_samples"] for r in rows],
        "threshold": [share] * len(rows)})
    plots.dimensionality_readings({"representation": rep, "change": change, "increase": inc},
                                  os.path.join(out, "dimensionality.png"),
                                  title=f"components for {share:.0%} of the variance")
    write_json(os.path.join(out, "summary.json"), summary)
    n_img = rep["clean"][layers[0]]["n_samples"]
    lines = [f"principal components for {share:.0%} of the variance ({n_img} images; "
             f"corrupted: mean of {len(res['corruptions'])} at severity "
             f"{res['corruption_severity']}; adversarial: {res['attack']} eps {res['eps']:g})",
             f"  {'layer':<24} {'representation clean/corrupted/adversarial':>44}   "
             f"{'change corrupted/adversarial':>28}"]
    lines += [f"  {n:<24} {rep['clean'][n]['n_components']:>14} / "
              f"{rep['corrupted'][n]['n_components']:>9.1f} / "
              f"{rep['adversarial'][n]['n_components']:>13}   "
              f"{change['corrupted'][n]['n_components']:>15.1f} / "
              f"{change['adversarial'][n]['n_components']:>10}" for n in layers]
    lines.append(f"  early layers ({', '.join(early)}): increase over clean corrupted "
                 f"{summary['early_increase_corrupted']:+.1f}, adversarial "
                 f"{summary['early_increase_adversarial']:+.1f}; change corrupted "
                 f"{summary['early_change_components_corrupted']:.1f}, adversarial "
                 f"{summary['early_change_components_adversarial']:.1f}")
    if res["warning"]:
        lines.append(f"  {res['warning']}")
    return lines
