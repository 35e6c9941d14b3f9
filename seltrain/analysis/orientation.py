"""Orientation selectivity of units (Ukita; METHODS.md section 4).

Stimuli are full-field sinusoidal gratings: 12 orientations (15 degree steps), 4 phases
(0/90/180/270 degrees) and 9 spatial frequencies with periods log-spaced from about 40 px down
to about 4.4 px at 32x32, scaled in proportion to the image size. They are grayscale in
[0, 1], copied to the model's channels and normalised like its data.

Orientation convention: a grating of orientation theta varies along the direction theta,
measured counter-clockwise from the image's horizontal axis with x to the right and y up
(rows run down). theta = 0 gives vertical stripes, theta = 90 horizontal ones:

    g(x, y) = 0.5 + 0.5 * cos(2 pi (x cos(theta) + y sin(theta)) / period + phase)

A unit's response is the spatial mean of its post-ReLU output. Per unit: the max over phase,
then the spatial frequency with the largest response, and the 12-point tuning curve R(theta)
at that frequency. Indices (units with zero response get 0):

    OSI  = (R_pref - R_orth) / (R_pref + R_orth),       orth = pref + 90 degrees
    gOSI = |sum_k R(theta_k) exp(2 i theta_k)| / sum_k R(theta_k)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.analysis.ablation import _ablation_logits, ablate
from seltrain.analysis.capture import (iterate_batches, layer_outputs, num_batches, resolve_layer,
                                       unit_responses)

GOSI_THRESHOLD = 0.33  # Ukita's cut-off for an orientation-selective unit


def grating_parameters(size: int, orientations: int = 12, phases: int = 4,
                       frequencies: int = 9, *, max_period: float | None = None,
                       min_period: float | None = None) -> dict[str, np.ndarray]:
    """Orientations (degrees, evenly over [0, 180)), phases (degrees, evenly over [0, 360))
    and periods (px, log-spaced from ``max_period`` down to ``min_period``; by default
    40 * size / 32 and 4.4 * size / 32)."""
    max_period = 40.0 * size / 32 if max_period is None else max_period
    min_period = 4.4 * size / 32 if min_period is None else min_period
    return {"orientations_deg": np.arange(orientations) * 180.0 / orientations,
            "phases_deg": np.arange(phases) * 360.0 / phases,
            "periods_px": np.geomspace(max_period, min_period, frequencies)}


def gratings(size: int, orientations: int = 12, phases: int = 4, frequencies: int = 9, *,
             max_period: float | None = None, min_period: float | None = None) -> Tensor:
    """Sinusoidal gratings in [0, 1], float32 [n_orient, n_phase, n_freq, 1, size, size]."""
    p = grating_parameters(size, orientations, phases, frequencies,
                           max_period=max_period, min_period=min_period)
    c = (size - 1) / 2
    coords = torch.arange(size, dtype=torch.float64) - c
    xx, yy = coords[None, :], -coords[:, None]  # x to the right, y up
    theta = torch.as_tensor(np.deg2rad(p["orientations_deg"]))[:, None, None, None, None]
    phase = torch.as_tensor(np.deg2rad(p["phases_deg"]))[None, :, None, None, None]
    period = torch.as_tensor(p["periods_px"])[None, None, :, None, None]
    along = xx * torch.cos(theta) + yy * torch.sin(theta)  # [n_or, 1, 1, size, size]
    g = 0.5 + 0.5 * torch.cos(2 * math.pi * along / period + phase)
    return g.unsqueeze(3).float()


def stimuli(size: int, channels: int, mean: Sequence[float], std: Sequence[float],
            **grating_kwargs) -> Tensor:
    """Gratings copied to ``channels`` and normalised with ``mean``/``std`` (one value per
    channel, or one for all): [n_orient, n_phase, n_freq, channels, size, size]."""
    g = gratings(size, **grating_kwargs)
    g = g.expand(*g.shape[:3], channels, size, size)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    return ((g - mean_t) / std_t).contiguous()


def grating_responses(model: nn.Module, layer: str | nn.Module, stim: Tensor, *,
                      batch_size: int = 256, device=None) -> np.ndarray:
    """Unit responses [U, n_orient, n_phase, n_freq] to ``stim`` (from ``stimuli``)."""
    name, module = resolve_layer(model, layer)
    grid = stim.shape[:3]
    acts = [unit_responses(outs[name]).double().cpu()
            for outs, _, _ in layer_outputs(model, {name: module}, stim.flatten(0, 2),
                                            batch_size=batch_size, device=device,
                                            desc=f"gratings {name}")]
    return torch.cat(acts).reshape(*grid, -1).permute(3, 0, 1, 2).numpy()


def tuning_curves(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From responses [U, n_orient, n_phase, n_freq]: the tuning curves R [U, n_orient] at each
    unit's best spatial frequency, and that frequency's index [U]. Max over phase first; the
    best frequency is the one holding the unit's largest response (ties: the lowest index)."""
    over_phase = responses.max(axis=2)  # [U, n_or, n_f]
    best = over_phase.max(axis=1).argmax(axis=1)  # [U]
    return over_phase[np.arange(len(best)), :, best], best


def orientation_tuning(model: nn.Module, layer: str | nn.Module, stim: Tensor, *,
                       batch_size: int = 256, device=None) -> np.ndarray:
    """Tuning curves R [U, n_orient] of ``layer``'s units to the gratings ``stim``."""
    return tuning_curves(grating_responses(model, layer, stim, batch_size=batch_size,
                                           device=device))[0]


def _angles(n: int, orientations_deg) -> np.ndarray:
    if orientations_deg is None:
        return np.arange(n) * 180.0 / n
    return np.asarray(orientations_deg, dtype=np.float64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def preferred_orientation(R: np.ndarray, orientations_deg=None) -> np.ndarray:
    """The orientation (degrees) of each unit's largest response."""
    R = np.asarray(R, dtype=np.float64)
    return _angles(R.shape[1], orientations_deg)[R.argmax(1)]


def osi(R: np.ndarray, orientations_deg=None) -> np.ndarray:
    """OSI per unit, (R_pref - R_orth) / (R_pref + R_orth); orth is the sampled orientation
    closest to pref + 90 degrees (modulo 180). Zero-response units get 0."""
    R = np.asarray(R, dtype=np.float64)
    ang = _angles(R.shape[1], orientations_deg)
    pref = R.argmax(1)
    dist = np.abs(((ang[None, :] - ang[pref][:, None] - 90.0) + 90.0) % 180.0 - 90.0)
    orth = dist.argmin(1)
    rows = np.arange(len(R))
    rp, ro = R[rows, pref], R[rows, orth]
    return _safe_div(rp - ro, rp + ro)


def gosi(R: np.ndarray, orientations_deg=None) -> np.ndarray:
    """Global OSI per unit, |sum_k R_k exp(2 i theta_k)| / sum_k R_k. Zero-response units get 0.
    Responses are post-ReLU (non-negative), so gOSI lies in [0, 1]."""
    R = np.asarray(R, dtype=np.float64)
    theta = np.deg2rad(_angles(R.shape[1], orientations_deg))
    vec = np.abs((R * np.exp(2j * theta)[None, :]).sum(1))
    return _safe_div(vec, R.sum(1))


def fraction_selective(gosi_values: np.ndarray, threshold: float = GOSI_THRESHOLD) -> float:
    """Fraction of units with gOSI above ``threshold``."""
    g = np.asarray(gosi_values, dtype=np.float64)
    return float((g > threshold).mean()) if g.size else math.nan


def gosi_split_ablation(model: nn.Module, layer: str | nn.Module, x, y=None, gosi_values=None, *,
                        fraction: float = 0.5, fast: bool = True, batch_size: int = 256,
                        device=None) -> dict:
    """Ablate the top ``fraction`` of ``layer``'s units by gOSI, and as a control the bottom
    ``fraction`` (Ukita). ``floor(fraction * U)`` units each; ties keep unit order.

    Returns ``baseline_ce`` (mean per-image cross-entropy), ``baseline_acc`` and, for "top"
    and "bottom": ``units``, ``ce_increase_mean``, ``ce_increase_sem`` (over images, ddof=1),
    ``accuracy`` and ``acc_change`` (ablated minus baseline).
    """
    if gosi_values is None:
        raise ValueError("gosi_split_ablation needs gosi_values, one per unit")
    g = np.asarray(gosi_values, dtype=np.float64)
    n = int(math.floor(fraction * len(g)))
    groups = {"top": np.argsort(-g, kind="stable")[:n], "bottom": np.argsort(g, kind="stable")[:n]}

    def unit_sets(units: int) -> list[Tensor]:
        if units != len(g):
            raise ValueError(f"gosi_values has {len(g)} entries but the layer has {units} units")
        return [torch.as_tensor(v) for v in groups.values()]

    base_ce, base_hit, ce, hit = [], [], {k: [] for k in groups}, {k: [] for k in groups}
    for yb, ids, logits in _ablation_logits(model, layer, x, y, unit_sets, fast=fast,
                                            units_per_pass=None, batch_size=batch_size,
                                            device=device, desc="gOSI split ablation"):
        for r, lg in enumerate(logits):
            loss = F.cross_entropy(lg.double(), yb, reduction="none").numpy()
            correct = (lg.argmax(-1) == yb).numpy()
            if ids is None:
                base_ce.append(loss)
                base_hit.append(correct)
            else:
                key = list(groups)[ids[r]]
                ce[key].append(loss)
                hit[key].append(correct)
    base_ce_all, base_acc = np.concatenate(base_ce), float(np.concatenate(base_hit).mean())
    out = {"baseline_ce": float(base_ce_all.mean()), "baseline_acc": base_acc,
           "n_images": len(base_ce_all), "fraction": fraction}
    for key, units in groups.items():
        inc = np.concatenate(ce[key]) - base_ce_all
        acc = float(np.concatenate(hit[key]).mean())
        out[key] = {"units": units, "ce_increase_mean": float(inc.mean()),
                    "ce_increase_sem": float(inc.std(ddof=1) / math.sqrt(len(inc)))
                    if len(inc) > 1 else math.nan,
                    "accuracy": acc, "acc_change": acc - base_acc}
    return out


def shift_images(x: Tensor, shift: int, dims: Sequence[int] = (-1,), mode: str = "roll") -> Tensor:
    """Translate images by ``shift`` pixels along each of ``dims`` (-1: right, -2: down).
    ``mode="roll"``: circular (content wraps around, nothing is invented); ``"edge"``: the
    vacated border repeats the edge pixels (no wrap-around, but a smeared border)."""
    if mode == "roll":
        return torch.roll(x, shifts=[shift] * len(dims), dims=list(dims))
    if mode != "edge":
        raise ValueError(f"unknown shift mode '{mode}'; use 'roll' or 'edge'")
    out = x
    for d in dims:
        n = out.shape[d]
        src = (torch.arange(n, device=x.device) - shift).clamp(0, n - 1)
        out = out.index_select(d % out.dim(), src)
    return out


def shift_invariance(model: nn.Module, layer: str | nn.Module, x, shift: int = 2, *,
                     dims: Sequence[int] = (-1,), mode: str = "roll",
                     ablation: tuple[str | nn.Module, Sequence[int]] | None = None,
                     batch_size: int = 256, device=None) -> dict:
    """How little ``layer``'s representation changes when the image moves (Ukita; how the
    paper measured it is unconfirmed). Per image: the Pearson correlation between the
    flattened layer output (all channels and positions; a spatial mean would hide the shift)
    for the image and for the image shifted by ``shift`` px (``shift_images``). Returns the
    ``mean`` and ``sem`` over images and ``n``; images with a constant representation are left
    out (``n_constant``). ``ablation=(layer, units)`` zeroes those units, typically of a lower
    layer, in both passes.

    ``x``: normalised images (tensor or batches of (x, y)); shifting normalised images equals
    normalising shifted ones, as normalisation is per channel.
    """
    name, module = resolve_layer(model, layer)
    corrs: list[np.ndarray] = []
    n_constant = 0

    def run(images: Tensor) -> Tensor:
        (outs, _, _), = layer_outputs(model, {name: module}, images, batch_size=len(images),
                                      device=device)
        return outs[name].flatten(1).double().cpu()

    for xb, _ in tqdm(iterate_batches(x, None, batch_size), total=num_batches(x, batch_size),
                      desc=f"shift invariance {name}", disable=None, leave=False):
        pair = torch.cat([xb, shift_images(xb, shift, dims, mode)])
        if ablation is None:
            reps = run(pair)
        else:
            with ablate(resolve_layer(model, ablation[0])[1], ablation[1]):
                reps = run(pair)
        a, b = reps[:len(xb)], reps[len(xb):]
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        den = a.norm(dim=1) * b.norm(dim=1)
        ok = den > 0
        n_constant += int((~ok).sum())
        corrs.append(((a * b).sum(1)[ok] / den[ok]).numpy())
    r = np.concatenate(corrs) if corrs else np.zeros(0)
    return {"mean": float(r.mean()) if len(r) else math.nan,
            "sem": float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else math.nan,
            "n": int(len(r)), "n_constant": n_constant, "shift": shift, "mode": mode}


def layers_grating_responses(model: nn.Module, layers: Sequence[str | nn.Module], stim: Tensor, *,
                             batch_size: int = 256, device=None) -> dict[str, np.ndarray]:
    """``grating_responses`` for several layers in one pass over the stimuli:
    {layer name as given (or module path): responses [U, n_orient, n_phase, n_freq]}."""
    mods = {}
    for layer in layers:
        path, module = resolve_layer(model, layer)
        mods[layer if isinstance(layer, str) else path] = module
    grid = stim.shape[:3]
    acts: dict[str, list[Tensor]] = {n: [] for n in mods}
    for outs, _, _ in layer_outputs(model, mods, stim.flatten(0, 2), batch_size=batch_size,
                                    device=device, desc="gratings"):
        for n, o in outs.items():
            acts[n].append(unit_responses(o).double().cpu())
    return {n: torch.cat(a).reshape(*grid, -1).permute(3, 0, 1, 2).numpy()
            for n, a in acts.items()}


def mean_osi_per_layer(model: nn.Module, layers: Sequence[str | nn.Module], stim: Tensor, *,
                       batch_size: int = 256, device=None) -> dict[str, float]:
    """Mean OSI over the units of each layer (per-epoch orientation tracking, Ukita)."""
    resp = layers_grating_responses(model, layers, stim, batch_size=batch_size, device=device)
    return {n: float(osi(tuning_curves(r)[0]).mean()) for n, r in resp.items()}


def shift_invariance_layers(model: nn.Module, layers: Sequence[str | nn.Module], x,
                            shift: int = 2, *, dims: Sequence[int] = (-1,), mode: str = "roll",
                            ablation: tuple[str | nn.Module, Sequence[int]] | None = None,
                            batch_size: int = 256, device=None) -> dict[str, dict]:
    """``shift_invariance`` for several layers in one pass over ``x`` (same measure, same
    result per layer): {layer: {"mean", "sem", "n", "n_constant", "shift", "mode"}}."""
    mods = {}
    for layer in layers:
        path, module = resolve_layer(model, layer)
        mods[layer if isinstance(layer, str) else path] = module
    corrs: dict[str, list[np.ndarray]] = {n: [] for n in mods}
    n_constant = {n: 0 for n in mods}
    abl = None if ablation is None else (resolve_layer(model, ablation[0])[1], ablation[1])
    for xb, _ in tqdm(iterate_batches(x, None, batch_size), total=num_batches(x, batch_size),
                      desc="shift invariance", disable=None, leave=False):
        pair = torch.cat([xb, shift_images(xb, shift, dims, mode)])
        if abl is None:
            (outs, _, _), = layer_outputs(model, mods, pair, batch_size=len(pair), device=device)
        else:
            with ablate(*abl):
                (outs, _, _), = layer_outputs(model, mods, pair, batch_size=len(pair),
                                              device=device)
        for n, o in outs.items():
            reps = o.flatten(1).double().cpu()
            a, b = reps[:len(xb)], reps[len(xb):]
            a = a - a.mean(1, keepdim=True)
            b = b - b.mean(1, keepdim=True)
            den = a.norm(dim=1) * b.norm(dim=1)
            ok = den > 0
            n_constant[n] += int((~ok).sum())
            corrs[n].append(((a * b).sum(1)[ok] / den[ok]).numpy())
    out = {}
    for n in mods:
        r = np.concatenate(corrs[n]) if corrs[n] else np.zeros(0)
        out[n] = {"mean": float(r.mean()) if len(r) else math.nan,
                  "sem": float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else math.nan,
                  "n": int(len(r)), "n_constant": n_constant[n], "shift": shift, "mode": mode}
    return out
