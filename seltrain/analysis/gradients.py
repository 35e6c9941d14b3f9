"""Input gradients of unit activations, and how variable they are (Leavitt & Morcos 2020).

The paper's abstract (docs/METHODS.md section 5): "the input-unit gradient is more variable across
samples and units in high-selectivity networks compared to low-selectivity networks". The
text at hand does not define the statistic and no code of the paper is public (searched: the
title and the authors in the code corpus; Omkar-Ranadive/Class-Selective-Neurons has
selectivity, ablation and CKA code but no gradient analysis), so the statistics below are
seltrain's choice: **unconfirmed**. Two are reported for each axis, one for the gradient's
direction and one for its size, because "more variable" can mean either.

Definitions. For a probed layer with units u = 1..U and images n = 1..N:

* ``a_u(x)``: the unit's response as the probes read it (seltrain/probes.py
  ``unit_activation``): the spatial mean of its post-ReLU map, or the feature of a linear
  layer.
* ``g[n, u] = d a_u(x_n) / d x_n``, the gradient with respect to the input image, in pixel
  units by default (the network sees (pixel - mean) / std, so the gradient with respect to the
  normalised input is divided by the channel's std; ``std=None`` keeps the normalised input).
* ``ĝ = g / ||g||`` (Euclidean norm over all input pixels and channels), for ``g != 0``.

Across samples (one value per unit, over the images whose gradient is non-zero):

* ``direction`` = 1 - mean over pairs n != m of cos(g[n, u], g[m, u])
  = (c^2 - ||sum_n ĝ[n, u]||^2) / (c (c - 1)), c = number of non-zero gradients.
  It equals c / (c - 1) times the summed (over input pixels) variance across samples of
  the unit-normalised gradient, i.e. the unbiased total variance of ĝ. 0 when every image's
  gradient points the same way, about 1 when they are orthogonal on average, at most
  c / (c - 1). NaN with fewer than two non-zero gradients (a dead unit).
* ``norm_cv`` = std_n ||g[n, u]|| / mean_n ||g[n, u]|| (population std), zero gradients
  included: a unit silent on most images (a zero gradient: its ReLU map is all zero) has a
  large CV. NaN for a unit silent on every image.
* ``zero_fraction``: the share of images on which the unit is silent (gradient exactly 0),
  and ``mean_norm``, the mean gradient norm.

Across units (one value per image): the same three, with the roles of n and u swapped (the
unit's gradients for one image compared with each other).

Why these. Both are scale-free: networks trained at different alpha differ in how large
their activations and gradients are, and a scale-dependent spread (a raw std of gradient
entries) would track that scale and not the variability. The direction statistic asks
whether a unit's input sensitivity is the same pattern for every image (or every unit's for
one image); the norm CV asks whether units participate evenly, which is how the paper
interprets the result ("units participate more consistently in low-selectivity regimes").

Batched, one backward per block of units. In eval mode (BatchNorm uses its running
statistics) the images of a batch do not interact, so the gradient of sum_n a_u(x_n) with
respect to the batch holds every image's own gradient for unit u. A block of B units is done
in one ``torch.autograd.grad(..., is_grads_batched=True)`` call, the backward vmapped over B
one-hot ``grad_outputs``; the forward runs once per batch and stops at the probed layer.

Cost, per batch of N images and per layer of U units: one forward pass up to the layer, and
ceil(U / B) autograd calls through the layers below it, each producing B x N
sample-gradients. The arithmetic is that of U x N single-image backward passes, as in the
naive loop (``unit_input_gradients_naive``: N forwards and U x N backward calls of one
image), but in ceil(U / B) calls over whole batches. In torch 2.14 vmap has no batching rule
that fuses the B grad_outputs of ``convolution_backward`` and ``native_batch_norm_backward``
(the profiler shows B + 1 kernel calls per conv for a block of B), so those kernels run B
times over N images each: the gain comes from batching over images and from one autograd
traversal per block. On a CPU core, where arithmetic dominates, that is 1.0-1.2x the loop
(benchmarks/bench_gradients.py); where small kernels are launch-bound (a GPU) it should be
much more (not measured on a GPU). Replicating the batch B
times would fuse those kernels at the price of a B-times forward pass. Memory is about
B x N x (the input and the saved activations below the layer), and the running sums hold
U x P (P = pixels x channels) float64 per layer; the gradients are never all held at once.
In float64 the batched gradients equal the loop's to 1e-12. In float32 the batched and the
one-image convolutions round differently, so a pre-activation within rounding of 0 can fall
on either side of its ReLU: that image's gradient then differs over a receptive field, for
every unit above that ReLU (seen: 1 image of 64 in resnet20, benchmarks/bench_gradients.py);
all other gradients agree to 1e-6 of the largest entry.

In chunks (the analyses' fan-out, seltrain/analysis/fanout.py): ``UNIT_CHUNKS`` runs of whole
unit blocks of every layer (``unit_parts``), so a chunk makes the very backward calls that one
process makes for its units. The across-samples statistics are per unit, so a chunk's rows are
final. The across-units ones need, per image, the sum over every unit of the unit-normalised
gradients: a chunk returns its part's per-image sums (N x P float64 per layer: 6 MB for 256
CIFAR images, 300 MB at 224 px) and the merge adds them. One process adds its per-image sums
part by part too (one term per part), so the merged numbers equal its numbers exactly, not
only to rounding.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.analysis.options import AnalysisOptions, max_images_option, option, whole_number
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target
from seltrain.probes import (LayerError, eval_mode, iterate_batches, model_device, named_layers,
                             resolve_layer, unit_activation)

STATISTICS = {
    "direction": "1 - mean pairwise cosine similarity of the non-zero input gradients "
                 "(= unbiased total variance of the unit-normalised gradients)",
    "norm_cv": "std / mean of the input-gradient norm (population std, zeros included)",
    "zero_fraction": "share of exactly-zero input gradients (a silent unit)",
}


# The fan-out's chunks: each takes this share of every layer's unit blocks (``unit_parts``).
UNIT_CHUNKS = 4


class _Stop(Exception):
    """Raised by the forward hook once the probed layer has run: nothing above it is needed."""


def _activations_to_layer(model: nn.Module, module: nn.Module, x: Tensor) -> Tensor:
    """Unit activations [N, U] of ``module``'s output, with the graph back to ``x``; the
    forward pass stops at the module."""
    store: list[Tensor] = []

    def hook(_m, _inp, out):
        store.append(out)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not store:
        raise LayerError(f"layer {type(module).__name__} did not run in the forward pass")
    return unit_activation(store[0])


def _check_runs_once(model: nn.Module, module: nn.Module, name: str, x: Tensor) -> None:
    # The forward is cut at the layer's first call, so a module that runs twice per forward
    # (a shared ReLU) would silently give the first call's gradient.
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if len(calls) != 1:
        raise LayerError(f"layer {name} runs {len(calls)} times per forward pass; choose a "
                         "layer that runs exactly once")


def _input_scale(std, x: Tensor) -> Tensor | None:
    """1 / std per channel, shaped to multiply a gradient of ``x`` [N, C, ...]."""
    if std is None:
        return None
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1,
                                                                   *([1] * (x.dim() - 2)))
    return 1.0 / s


def gradient_blocks(model: nn.Module, module: nn.Module, x: Tensor,
                    units: Sequence[int] | Tensor | None = None, *, unit_block: int = 16,
                    std=None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (unit indices [B], gradients [B, N, *x.shape[1:]]) for one batch ``x``, blocks of
    ``unit_block`` units, one vmapped backward per block (module docstring). The model must
    be in eval mode (call under ``probes.eval_mode``) so that images do not interact."""
    if unit_block < 1:
        raise ValueError(f"unit_block must be >= 1, got {unit_block}")
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        acts = _activations_to_layer(model, module, x)  # [N, U]
        n, u_total = acts.shape
        units = torch.arange(u_total) if units is None else torch.as_tensor(units).long()
        scale = _input_scale(std, x)
        for start in range(0, len(units), unit_block):
            idx = units[start:start + unit_block]
            onehot = torch.zeros(len(idx), n, u_total, dtype=acts.dtype, device=acts.device)
            onehot[torch.arange(len(idx)), :, idx.to(acts.device)] = 1
            last = start + unit_block >= len(units)
            (g,) = torch.autograd.grad(acts, x, onehot, is_grads_batched=True,
                                       retain_graph=not last)
            yield idx, (g if scale is None else g * scale)


def unit_input_gradients(model: nn.Module, layer: str | nn.Module, x: Tensor,
                         units: Sequence[int] | None = None, *, unit_block: int = 16,
                         std=None) -> Tensor:
    """d a_u(x_n) / d x_n for every image of ``x`` [N, ...] and every unit in ``units``
    (default all): [len(units), N, *x.shape[1:]], batched. Holds all of them: for small
    checks; ``gradient_variability`` streams."""
    _, module = resolve_layer(model, layer)
    with eval_mode(model):
        blocks = [g for _, g in gradient_blocks(model, module, x, units, unit_block=unit_block,
                                                std=std)]
    return torch.cat(blocks)


def unit_input_gradients_naive(model: nn.Module, layer: str | nn.Module, x: Tensor,
                               units: Sequence[int] | None = None, *, std=None) -> Tensor:
    """The same as ``unit_input_gradients``, the slow obvious way: one forward per image and
    one backward per (image, unit). The reference for the tests and the benchmark."""
    _, module = resolve_layer(model, layer)
    out = None
    with eval_mode(model), torch.enable_grad():
        for i in range(len(x)):
            xi = x[i:i + 1].detach().clone().requires_grad_(True)
            acts = _activations_to_layer(model, module, xi)[0]
            us = range(len(acts)) if units is None else list(units)
            if out is None:
                out = torch.zeros(len(us), *x.shape, dtype=x.dtype, device=x.device)
            scale = _input_scale(std, xi)
            for j, u in enumerate(us):
                (g,) = torch.autograd.grad(acts[u], xi, retain_graph=True)
                out[j, i] = (g if scale is None else g * scale)[0]
    return out


def _direction(sums: Tensor, counts: Tensor) -> np.ndarray:
    """1 - mean pairwise cosine from the sum of c unit vectors: (c^2 - ||s||^2) / (c (c-1));
    NaN where c < 2."""
    c = counts.to(sums.device).double()
    sq = sums.double().pow(2).sum(1)
    v = ((c * c - sq) / (c * (c - 1))).cpu().numpy()  # 0/0 -> nan, x/0 -> inf: both masked
    v[counts.cpu().numpy() < 2] = np.nan
    return np.maximum(v, 0.0, where=np.isfinite(v), out=v)  # rounding: -1e-16 is 0


def _norm_cv(norms: np.ndarray, axis: int) -> np.ndarray:
    mean = norms.mean(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, norms.std(axis) / mean, np.nan)


def unit_parts(n_units: int, unit_block: int, n_parts: int | None = None) -> list[slice]:
    """Where, in a layer's chosen units, each of ``n_parts`` (default ``UNIT_CHUNKS``) runs of
    whole blocks of ``unit_block`` units lies: a part never cuts a block, so the fan-out's
    chunks run the very backward calls of the single-process run (module docstring)."""
    n_parts = UNIT_CHUNKS if n_parts is None else n_parts
    n_blocks = -(-n_units // unit_block)
    edges = [min(j * n_blocks // n_parts * unit_block, n_units) for j in range(n_parts + 1)]
    return [slice(a, b) for a, b in zip(edges, edges[1:])]


class _LayerStatistics:
    """Running sums for one layer: per unit, the sum of its unit-normalised gradients over
    images; per image, over units (finished with each batch); every gradient norm.

    The per-image sum over units is added up part by part (``parts``, runs of whole blocks):
    each part's sum is one term of the total, as each fan-out chunk's is in the merge, so the
    two add the same float64 numbers in the same order. A chunk (``keep_sample_sums``) keeps
    its part's per-image sums for the merge instead of finishing them."""

    def __init__(self, units: Tensor, n_pixels: int, device, parts: list[slice],
                 keep_sample_sums: bool = False):
        self.units = units
        self.part_ends = {p.stop for p in parts if p.stop > p.start}
        self.unit_sums = torch.zeros(len(units), n_pixels, dtype=torch.float64, device=device)
        self.norms: list[np.ndarray] = []  # [N_b, U'] per batch
        self.sample_direction: list[np.ndarray] = []
        self.sample_sums: list[np.ndarray] | None = [] if keep_sample_sums else None

    def add_batch(self, blocks: Iterator[tuple[Tensor, Tensor]], n: int) -> None:
        sample_sums = torch.zeros(n, self.unit_sums.shape[1], dtype=torch.float64,
                                  device=self.unit_sums.device)
        part_sums = torch.zeros_like(sample_sums)
        norms = torch.zeros(n, len(self.units), dtype=torch.float64)
        pos = 0
        for idx, g in blocks:
            g = g.reshape(len(idx), n, -1)  # reshape: channels_last gradients are not views
            nrm = g.norm(dim=2)  # [B, N]
            unit_vectors = g / torch.where(nrm > 0, nrm, 1)[..., None]  # zero stays zero
            self.unit_sums[pos:pos + len(idx)] += unit_vectors.sum(1, dtype=torch.float64)
            part_sums += unit_vectors.sum(0, dtype=torch.float64)
            norms[:, pos:pos + len(idx)] = nrm.T.double().cpu()
            pos += len(idx)
            if pos in self.part_ends:  # a part's last block: its sum is one term of the total
                sample_sums += part_sums
                part_sums.zero_()
        if self.sample_sums is not None:
            self.sample_sums.append(sample_sums.cpu().numpy())
        else:
            self.sample_direction.append(_direction(sample_sums, (norms > 0).sum(1)))
        self.norms.append(norms.numpy())

    def state(self) -> dict:
        """A chunk's sums, for ``joined``."""
        return {"units": self.units.numpy(), "unit_sums": self.unit_sums.cpu().numpy(),
                "norms": self.norms, "sample_sums": self.sample_sums}

    @classmethod
    def joined(cls, states: list[dict], device) -> "_LayerStatistics":
        """The statistics of a whole layer from its parts' ``state``, in order: rows and
        columns concatenated, the per-image sums added part by part as ``add_batch`` adds."""
        units = torch.cat([torch.as_tensor(st["units"]) for st in states])
        s = cls(units, states[0]["unit_sums"].shape[1], device, [])
        s.unit_sums = torch.as_tensor(np.concatenate([st["unit_sums"] for st in states]),
                                      device=device)
        for b, first in enumerate(states[0]["sample_sums"]):
            norms = np.concatenate([st["norms"][b] for st in states], axis=1)
            total = torch.zeros(first.shape, dtype=torch.float64, device=device)
            for st in states:
                total += torch.as_tensor(st["sample_sums"][b], device=device)
            s.sample_direction.append(_direction(total, torch.as_tensor((norms > 0).sum(1))))
            s.norms.append(norms)
        return s

    def result(self) -> dict:
        norms = np.concatenate(self.norms)  # [N, U']
        zero = norms == 0
        return {
            "units": self.units.numpy(), "n_samples": int(norms.shape[0]),
            "across_samples": {
                "direction": _direction(self.unit_sums, torch.as_tensor((~zero).sum(0))),
                "norm_cv": _norm_cv(norms, 0), "zero_fraction": zero.mean(0),
                "mean_norm": norms.mean(0)},
            "across_units": {
                "direction": np.concatenate(self.sample_direction),
                "norm_cv": _norm_cv(norms, 1), "zero_fraction": zero.mean(1),
                "mean_norm": norms.mean(1)},
        }


def layer_means(result: dict) -> dict[str, float]:
    """The per-layer headline numbers: means over units (across-samples statistics) and over
    images (across-units statistics), NaNs (dead units) left out."""
    out = {}
    for axis in ("across_samples", "across_units"):
        for stat in ("direction", "norm_cv", "zero_fraction"):
            v = np.asarray(result[axis][stat], dtype=np.float64)
            out[f"{axis}_{stat}"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return out


def _chunks(x, y, batch_size: int, max_samples: int | None
            ) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(x, y) pieces of at most ``batch_size`` images, ``max_samples`` in all: a loader's own
    batches are cut too, so ``batch_size`` bounds the backward's memory whatever feeds it."""
    seen = 0
    for xb, yb in iterate_batches(x, y, batch_size):
        for i in range(0, len(xb), batch_size):
            take = batch_size if max_samples is None else min(batch_size, max_samples - seen)
            if take <= 0:
                return
            xc = xb[i:i + take]
            seen += len(xc)
            yield xc, (None if yb is None else yb[i:i + len(xc)])


def _chosen_units(model: nn.Module, module: nn.Module, name: str, example: Tensor,
                  max_units: int | None, seed: int) -> Tensor:
    """Every unit of the layer, or a seeded random subset of ``max_units`` (sorted)."""
    _check_runs_once(model, module, name, example)
    with torch.no_grad():
        n_units = _activations_to_layer(model, module, example).shape[1]
    if not max_units or max_units >= n_units:
        return torch.arange(n_units)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_units, generator=g)[:max_units].sort().values


def gradient_variability(model: nn.Module, layers: Sequence[str | nn.Module] | str, x,
                         y=None, *, max_samples: int | None = None, batch_size: int = 64,
                         unit_block: int = 16, max_units: int | None = None, seed: int = 0,
                         std=None, device=None) -> dict[str, dict]:
    """The variability statistics of the module docstring for each layer, over the images of
    ``x`` (a tensor, or batches of (x, y)), at most ``max_samples``. ``max_units`` keeps a
    random subset (seeded) of each layer's units, for very wide layers: the across-units
    statistics are then over that subset. ``std``: the data's per-channel std, to report
    gradients in pixel units (None: with respect to the input as given).

    Returns {layer: {"units", "n_samples", "across_samples": {stat: [U']}, "across_units":
    {stat: [N]}, "means": layer_means(...), "labels": [N] (when ``y`` or labelled batches
    are given)}}; keys are the layers as given."""
    stats, labels = _statistics(model, layers, x, y, max_samples=max_samples,
                                batch_size=batch_size, unit_block=unit_block,
                                max_units=max_units, seed=seed, std=std, device=device)
    return _finished(stats, labels)


def gradient_part(model: nn.Module, layers: Sequence[str | nn.Module] | str, x, y=None, *,
                  part: tuple[int, int], **kwargs) -> dict:
    """``gradient_variability``'s sums for part ``part`` = (j, J) of every layer's units only:
    the j-th of J runs of whole unit blocks (``unit_parts``), for one fan-out chunk:
    ``{"layers": {layer: sums}, "labels": [...]}``; ``join_parts`` finishes them. With
    J = ``UNIT_CHUNKS`` the joined numbers are one process's exactly (another J: to rounding,
    as one process adds its per-image sums in ``UNIT_CHUNKS`` terms)."""
    stats, labels = _statistics(model, layers, x, y, part=part, **kwargs)
    return {"layers": {k: s.state() for k, s in stats.items()}, "labels": labels}


def join_parts(parts: list[dict], device) -> dict[str, dict]:
    """``gradient_variability``'s result from the ``gradient_part`` of every part, in order."""
    return _finished({k: _LayerStatistics.joined([p["layers"][k] for p in parts], device)
                      for k in parts[0]["layers"]}, parts[0]["labels"])


def _statistics(model: nn.Module, layers: Sequence[str | nn.Module] | str, x, y=None, *,
                max_samples: int | None = None, batch_size: int = 64, unit_block: int = 16,
                max_units: int | None = None, seed: int = 0, std=None, device=None,
                part: tuple[int, int] | None = None
                ) -> tuple[dict[str, _LayerStatistics], list[np.ndarray]]:
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else model_device(model)
    resolved = named_layers(model, layers)
    stats: dict[str, _LayerStatistics] = {}
    labels: list[np.ndarray] = []
    n = len(x) if isinstance(x, Tensor) else getattr(x, "num_images", None)
    n = n if max_samples is None else (max_samples if n is None else min(n, max_samples))
    with eval_mode(model):
        for xb, yb in tqdm(_chunks(x, y, batch_size, max_samples), desc="input gradients",
                           total=None if n is None else -(-n // batch_size), disable=None,
                           leave=False):
            if yb is not None:
                labels.append(np.asarray(yb))
            xb = xb.to(device)
            for key, module in resolved.items():
                if key not in stats:
                    units = _chosen_units(model, module, key, xb[:1], max_units, seed)
                    parts = unit_parts(len(units), unit_block)
                    if part is not None:  # one chunk: one part, its sums kept for the merge
                        units = units[unit_parts(len(units), unit_block, part[1])[part[0]]]
                        parts = [slice(0, len(units))]
                    stats[key] = _LayerStatistics(units, xb[0].numel(), device, parts,
                                                  keep_sample_sums=part is not None)
                s = stats[key]
                # a chunk may hold none of a narrow layer's blocks: no forward for nothing
                blocks = gradient_blocks(model, module, xb, s.units, unit_block=unit_block,
                                         std=std) if len(s.units) else iter(())
                s.add_batch(blocks, len(xb))
    if not stats:
        raise ValueError("no images to take gradients of")
    return stats, labels


def _finished(stats: dict[str, _LayerStatistics], labels: list[np.ndarray]) -> dict[str, dict]:
    out = {}
    for key, s in stats.items():
        r = s.result()
        r["means"] = layer_means(r)
        if labels:
            r["labels"] = np.concatenate(labels)
        out[key] = r
    return out


# --------------------------------------------------------------------------- the analysis

@dataclass
class GradientsOptions(AnalysisOptions):
    """variability of each unit's input gradient across images and across units"""

    max_images: int = max_images_option(256)
    batch_size: int = option(64, "images per forward pass", parse=whole_number, metavar="N")
    unit_block: int = option(16, "units per vmapped backward pass; memory grows with "
                             "batch-size x unit-block", parse=whole_number, metavar="N")
    max_units: int | None = option(None, "a random subset (--seed) of at most this many units "
                                   "per layer", parse=whole_number, metavar="N",
                                   shown="every unit")
    wrt: str = option("pixels", "gradients with respect to pixel values or to the normalised "
                      "network input", choices=("pixels", "input"))

    def check(self) -> None:
        super().check()
        for name in ("batch_size", "unit_block"):
            self.at_least(name, 1)
        self.at_least("max_units", 1, optional=True)


Options = GradientsOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("grad_across_samples_direction", "grad_across_units_direction",
                  "grad_across_samples_norm_cv", "grad_across_units_norm_cv")


def sweep_panels(summaries: list[dict]) -> dict[str, tuple[str, dict]]:
    """One figure of a sweep: a panel per statistic, a series per layer."""
    layers = list(dict.fromkeys(n for s in summaries for n in s["layers"]))
    return {"gradients_per_layer": ("input-gradient variability", {
        st: {n: [s["layers"].get(n, {}).get(st, math.nan) for s in summaries]
             for n in layers}
        for st in (key[len("grad_"):] for key in SWEEP_HEADLINE)})}


def compute(target: Target, opts: GradientsOptions) -> dict:
    """``seltrain analyze gradients``: ``gradient_variability`` of the target's layers with
    respect to pixel values (``opts.wrt``) or the normalised input, and the per-layer means.
    Returns ``{"layers": {layer: result}, "summary": <summary.json>}``."""
    return _summarised(gradient_variability(target.model, target.layers, target.data,
                                            **_variability_options(target, opts)), opts)


def chunks(opts: GradientsOptions) -> list:
    """Parts that run apart (seltrain.analysis.fanout): the j-th of ``UNIT_CHUNKS`` runs of
    every layer's unit blocks; the merge finishes the across-units statistics, which need
    every unit."""
    return [("units", j, UNIT_CHUNKS) for j in range(UNIT_CHUNKS)]


def chunk_label(opts: GradientsOptions, chunk) -> str:
    return f"units part {chunk[1] + 1} of {chunk[2]}"


def compute_chunk(target: Target, opts: GradientsOptions, chunk) -> dict:
    _, j, n = chunk
    return gradient_part(target.model, target.layers, target.data, part=(j, n),
                         **_variability_options(target, opts))


def merge(target: Target, opts: GradientsOptions, parts: list[dict]) -> dict:
    return _summarised(join_parts(parts, target.device), opts)


def _variability_options(target: Target, opts: GradientsOptions) -> dict:
    return {"batch_size": opts.batch_size, "unit_block": opts.unit_block,
            "max_units": opts.max_units, "seed": opts.seed, "device": target.device,
            "std": target.info.std if opts.wrt == "pixels" else None}


def _summarised(res: dict[str, dict], opts: GradientsOptions) -> dict:
    means = {n: r["means"] for n, r in res.items()}
    summary: dict = {"wrt": opts.wrt, "layers": means}
    for key in next(iter(means.values())):
        v = [m[key] for m in means.values() if math.isfinite(m[key])]
        summary[f"grad_{key}"] = float(np.mean(v)) if v else math.nan
    return {"layers": res, "summary": summary}


def write(r: dict, target: Target, opts: GradientsOptions, out: str) -> list[str]:
    """gradients.json, units_<layer>.csv and samples_<layer>.csv per layer, the
    variability figures and summary.json in ``out``; the lines the command prints."""
    from seltrain.analysis import plots

    res, summary = r["layers"], r["summary"]
    means = summary["layers"]
    write_json(os.path.join(out, "gradients.json"), {
        "checkpoint": target.ckpt_path, "split": target.split, "wrt": opts.wrt,
        "activation": "spatial mean of the post-ReLU map (probes.unit_activation)",
        "statistics": STATISTICS, "statistic_status": "unconfirmed: seltrain's choice, "
        "the paper's definition is not public", "batch_size": opts.batch_size,
        "unit_block": opts.unit_block, "max_units": opts.max_units, "layers": res})
    for n, g in res.items():
        a, b = g["across_samples"], g["across_units"]
        write_csv(os.path.join(out, f"units_{n}.csv"), {
            "unit": g["units"], "direction": a["direction"], "norm_cv": a["norm_cv"],
            "zero_fraction": a["zero_fraction"], "mean_norm": a["mean_norm"]})
        write_csv(os.path.join(out, f"samples_{n}.csv"), {
            "sample": range(g["n_samples"]), "label": g["labels"],
            "direction": b["direction"], "norm_cv": b["norm_cv"],
            "zero_fraction": b["zero_fraction"], "mean_norm": b["mean_norm"]})
    plots.gradient_variability(means, os.path.join(out, "gradient_variability.png"),
                               title=f"input-gradient variability ({opts.wrt})")
    plots.histograms({n: g["across_samples"]["direction"] for n, g in res.items()},
                     os.path.join(out, "across_samples_direction_hist.png"),
                     xlabel="1 - mean pairwise cosine", title="per unit, across images")
    write_json(os.path.join(out, "summary.json"), summary)
    n_img = next(iter(res.values()))["n_samples"]
    lines = [f"input-gradient variability ({n_img} images, gradients w.r.t. {opts.wrt}): "
             "direction = 1 - mean pairwise cosine, CV = std/mean of the gradient norm",
             f"  {'layer':<24} {'across images: direction   CV':>32}   "
             f"{'across units: direction   CV':>30}   silent"]
    lines += [f"  {n:<24} {m['across_samples_direction']:>23.3f} "
              f"{m['across_samples_norm_cv']:>6.2f}   {m['across_units_direction']:>23.3f} "
              f"{m['across_units_norm_cv']:>6.2f}   {m['across_samples_zero_fraction']:>6.1%}"
              for n, m in means.items()]
    return lines
