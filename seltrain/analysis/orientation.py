"""Orientation selectivity of units (Ukita 2020; docs/METHODS.md section 4).

Matched to the author's code, ukky17/ori_selectivity_CNN (Keras): grating.py
(``create_gratings``, ``create_grating``), grating_analysis.py (``get_oristats`` and the
permuted-grating control) and ablation.py (``ablation_selective``, ``cross_entropy``,
``plot_impact_tuned``). Every deviation is listed at the end of this docstring. Besides the
math: ``compute`` (``seltrain analyze orientation``, ``OrientationOptions``; his shift
invariance is in ``shift_invariance``; the fan-out's chunks, runs of layers, and their merge
in ``orientation_parts``) and ``OrientationTracking``, the trainer's per-epoch hook for
``run.track_orientation``.

Stimuli
-------
Full-field sinusoidal gratings: 12 orientations theta_o = 180 o / 12 degrees, 4 phases
phi_p = 360 p / 4 degrees and 9 spatial frequencies. His frequency for an image of side S is
k_s = pi / (S / 2 + 4) * (s + 1) rad/px, s = 0..8, i.e. harmonic periods

    P_s = (S + 8) / (s + 1) px:  at 32 px 40, 20, 13.3, 10, 8, 6.7, 5.7, 5, 4.4 (CIFAR-10);
                                 at 224 px 232, 116, ..., 25.8 (his ImageNet VGG16);
                                 at 64 px 72, 36, ..., 8 (Tiny ImageNet).

Coordinates are whole pixels about the pixel ``S // 2`` (his ``np.ogrid`` minus ``h // 2``):
x = column - S // 2 to the right, y = S // 2 - row up. A grating of orientation theta varies
along the direction theta, counter-clockwise from the horizontal (theta = 0: vertical
stripes, 90: horizontal ones), and phase 0 puts a crest on that centre pixel:

    g(x, y) = cos(2 pi (x cos(theta) + y sin(theta)) / P + phi)

Each grating is then min-max scaled to [0, 1] on its own (the 40 px one spans less than a
period, so its raw range is not [-1, 1]), copied to the model's channels and normalised like
its data (``stimuli``).

Responses and indices
---------------------
A unit's response is the spatial mean of its probe output (post-ReLU; for cnn7 the ReLU
before BatchNorm, his Keras ``layer1``...``layer6``, ``fc1``). Per unit: the max over phase,
then the spatial frequency holding the largest response (ties: the lowest), and the
12-point tuning curve R(theta) there. Units whose tuning curve is all zero get OSI = gOSI = 0
and a NaN preferred orientation and orientation range, as in his code.

    OSI  = (R_pref - R_orth) / (R_pref + R_orth),       orth = pref + 90 degrees
    gOSI = |sum_k R(theta_k) exp(2 i theta_k)| / sum_k R(theta_k)

Controls (his grating_analysis.py)
----------------------------------
* **Permuted gratings** (``null_indices``): the 432 stimuli shuffled, so each (orientation,
  phase, frequency) slot shows a random grating; the same indices computed on the shuffled
  responses form the null distribution of OSI and gOSI. His permutation is
  ``np.random.permutation(432)`` over his stimulus order (frequency, orientation, phase) after
  ``np.random.seed(0)``; ``null_indices(seed=0)`` draws exactly that permutation (legacy
  ``RandomState``) in that order. The shuffle is applied to the responses rather than to the
  images, which is the same thing in eval mode (each image's response does not depend on its
  batch); tests/unit_tests/test_analysis_orientation.py checks it on a network.
* **Orientation range across frequencies** (``orientation_range``): for the frequencies whose
  best response (max over orientation and phase) is strictly above the midpoint of the
  unit's largest and smallest such response, the preferred orientation at each; the range
  is the shortest arc of the 180-degree orientation circle covering them, i.e. 180 minus the
  largest circular gap. 0 means the unit prefers one orientation at every frequency it
  responds to.

Top/bottom-gOSI ablation (his ablation.py)
------------------------------------------
Units strictly above ``np.percentile(gOSI, 100 - p)`` (top) and strictly below
``np.percentile(gOSI, p)`` (bottom), p = 50: units tied with the median are in neither
group, and the groups can differ in size. They are zeroed at the layer's ablation point
(``probes.ablation_layer``: for cnn7 the BatchNorm output, his ``bn1``...``bn7``), so the
next layer receives 0. The per-image cross-entropy is his: the softmax probability of the
true class clipped to [1e-7, 1 - 1e-7] (Keras ``K.epsilon()``), then -log; the increase is
ablated minus intact per image, reported as its mean and SEM with his population standard
deviation (``np.std``, ddof = 0) over sqrt(n images), on the whole test split as his
``ablation_selective(x_test, ...)`` (``--max-images`` takes the first N instead).

Deviations from his code, and why
---------------------------------
* Normalisation: he subtracts the per-pixel mean image of his training set; seltrain
  normalises gratings exactly as the model's own training data (per-channel mean and std),
  which is what "like the training data" means for a seltrain model.
* A unit that responds (not all zero) with the same peak at every frequency has no frequency
  strictly above the midpoint; his code raises there (``np.argmax`` of an empty array). Here
  all frequencies count.
* OSI's orthogonal orientation is the sampled one closest to pref + 90 degrees, his
  ``pref + n_ori // 2`` for an even number of orientations (the only case he used).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seltrain.analysis.ablation import ablated_logits
from seltrain.analysis.options import (AnalysisOptions, max_images_option, number, option,
                                       whole_number)
# the fan-out (seltrain/analysis/fanout.py) reads the chunk hooks from this module
from seltrain.analysis.orientation_parts import (LAYER_CHUNKS, assemble,  # noqa: F401
                                                 chunk_label, chunks, compute_chunk,
                                                 layer_results, merge)
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target
from seltrain.probes import layer_outputs, unit_activation

GOSI_THRESHOLD = 0.33  # Ukita's cut-off for an orientation-selective unit
CE_CLIP = 1e-7  # Keras K.epsilon(): his cross_entropy clips probabilities to [eps, 1 - eps]


def grating_periods(size: int, frequencies: int = 9) -> np.ndarray:
    """Periods in px of Ukita's spatial frequencies for images of side ``size``:
    k_s = pi / (size / 2 + 4) * (s + 1) rad/px, so P_s = (size + 8) / (s + 1)."""
    return (size + 8.0) / np.arange(1, frequencies + 1)


def grating_parameters(size: int, orientations: int = 12, phases: int = 4,
                       frequencies: int = 9) -> dict[str, np.ndarray]:
    """Orientations (degrees, evenly over [0, 180)), phases (degrees, evenly over [0, 360)),
    periods (px, ``grating_periods``) and the centre pixel (row = column = ``size // 2``)."""
    return {"orientations_deg": np.arange(orientations) * 180.0 / orientations,
            "phases_deg": np.arange(phases) * 360.0 / phases,
            "periods_px": grating_periods(size, frequencies),
            "centre_px": size // 2}


def gratings(size: int, orientations: int = 12, phases: int = 4, frequencies: int = 9
             ) -> Tensor:
    """Sinusoidal gratings, each min-max scaled to [0, 1] on its own (module docstring),
    float32 [n_orient, n_phase, n_freq, 1, size, size]. A grating with no contrast at all
    (only possible for a 1-px image) is mid-grey, 0.5."""
    p = grating_parameters(size, orientations, phases, frequencies)
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    xx, yy = coords[None, :], -coords[:, None]  # x to the right, y up, whole pixels
    theta = torch.as_tensor(np.deg2rad(p["orientations_deg"]))[:, None, None, None, None]
    phase = torch.as_tensor(np.deg2rad(p["phases_deg"]))[None, :, None, None, None]
    period = torch.as_tensor(p["periods_px"])[None, None, :, None, None]
    along = xx * torch.cos(theta) + yy * torch.sin(theta)  # [n_or, 1, 1, size, size]
    g = torch.cos(2 * math.pi * along / period + phase)
    lo = g.amin(dim=(-2, -1), keepdim=True)
    span = g.amax(dim=(-2, -1), keepdim=True) - lo
    g = torch.where(span > 0, (g - lo) / torch.where(span > 0, span, 1), 0.5)
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
    """Unit responses [U, n_orient, n_phase, n_freq] to ``stim`` (from ``stimuli``), read at
    the layer's probe (post-ReLU output, spatially averaged: ``probes.unit_activation``)."""
    (responses,) = layers_grating_responses(model, [layer], stim, batch_size=batch_size,
                                            device=device).values()
    return responses


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
    """The orientation (degrees) of each unit's largest response (ties: the first); NaN for
    a unit whose tuning curve is all zero (his ``pref_oris``)."""
    R = np.asarray(R, dtype=np.float64)
    pref = _angles(R.shape[1], orientations_deg)[R.argmax(1)]
    return np.where((R ** 2).sum(1) > 0, pref, np.nan)


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


def orientation_range(responses: np.ndarray, orientations_deg=None) -> np.ndarray:
    """How far a unit's preferred orientation moves across spatial frequencies (Ukita's
    ``ori_ranges``), degrees in [0, 180) per unit, from responses [U, n_or, n_phase, n_f].

    Max over phase; the frequencies whose best response is strictly above
    (max + min) / 2 of the unit's per-frequency best responses (all frequencies when those
    are all equal, where his code would raise); the preferred orientation at each of them
    (ties: the first); the range is 180 minus the largest gap between those orientations on
    the 180-degree circle. NaN for a unit with no response at all."""
    responses = np.asarray(responses, dtype=np.float64)
    over_phase = responses.max(axis=2)  # [U, n_or, n_f]
    ang = _angles(over_phase.shape[1], orientations_deg)
    peak = over_phase.max(axis=1)  # [U, n_f]
    mid = (peak.max(1) + peak.min(1)) / 2
    out = np.full(len(peak), np.nan)
    for u in range(len(peak)):
        if not np.any(over_phase[u] != 0):
            continue
        strong = peak[u] > mid[u]
        if not strong.any():
            strong[:] = True
        prefs = np.sort(ang[over_phase[u][:, strong].argmax(axis=0)])
        gaps = np.diff(np.append(prefs, prefs[0] + 180.0))
        out[u] = 180.0 - gaps.max()
    return out


def _his_order(n_or: int, n_ph: int, n_f: int) -> np.ndarray:
    """For stimulus slot j in Ukita's order (frequency, orientation, phase), the index of the
    same stimulus in seltrain's flattened (orientation, phase, frequency) order."""
    s, o, p = np.meshgrid(np.arange(n_f), np.arange(n_or), np.arange(n_ph), indexing="ij")
    return ((o * n_ph + p) * n_f + s).reshape(-1)


def stimulus_permutations(n_or: int, n_ph: int, n_f: int, n_permutations: int = 1,
                          seed: int = 0) -> np.ndarray:
    """[n_permutations, n_stimuli]: row r maps each stimulus slot (seltrain's flattened
    order) to the stimulus shown there. Drawn as his code draws them: successive
    ``np.random.RandomState(seed).permutation(n)`` over his order (frequency, orientation,
    phase), so seed 0's first row is his shuffle."""
    n = n_or * n_ph * n_f
    to_ours = _his_order(n_or, n_ph, n_f)
    from_ours = np.argsort(to_ours)
    rng = np.random.RandomState(seed)
    rows = []
    for _ in range(n_permutations):
        his = rng.permutation(n)  # his slot j shows his stimulus his[j]
        rows.append(to_ours[his[from_ours]])  # our slot i shows our stimulus ...
    return np.stack(rows) if rows else np.zeros((0, n), dtype=np.int64)


def permute_responses(responses: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Responses [U, n_or, n_phase, n_f] with the stimuli shuffled: slot i gets the response
    to stimulus ``permutation[i]`` (both in seltrain's flattened order)."""
    responses = np.asarray(responses)
    flat = responses.reshape(len(responses), -1)
    return flat[:, np.asarray(permutation)].reshape(responses.shape)


def null_indices(responses: np.ndarray, n_permutations: int = 1, seed: int = 0,
                 orientations_deg=None) -> dict[str, np.ndarray]:
    """OSI and gOSI on permuted gratings, Ukita's null distribution: ``{"osi": [P, U],
    "gosi": [P, U], "permutations": [P, n_stimuli]}`` for P = ``n_permutations`` shuffles
    (``stimulus_permutations``), one shuffle shared by every unit, as his code shares one
    shuffled stimulus set across units and layers."""
    responses = np.asarray(responses, dtype=np.float64)
    perms = stimulus_permutations(*responses.shape[1:], n_permutations, seed)
    osis, gosis = [], []
    for perm in perms:
        R = tuning_curves(permute_responses(responses, perm))[0]
        osis.append(osi(R, orientations_deg))
        gosis.append(gosi(R, orientations_deg))
    shape = (len(perms), len(responses))
    return {"osi": np.asarray(osis).reshape(shape), "gosi": np.asarray(gosis).reshape(shape),
            "permutations": perms}


def split_by_gosi(gosi_values: np.ndarray, percentile: float = 50.0) -> dict:
    """Ukita's top and bottom groups (his ablation_selective): ``top`` are the units with
    gOSI strictly above ``np.percentile(gOSI, 100 - percentile)``, ``bottom`` those strictly
    below ``np.percentile(gOSI, percentile)`` (linear interpolation, numpy's default). Ties
    with a threshold fall in neither group. Returns the unit indices and both thresholds."""
    g = np.asarray(gosi_values, dtype=np.float64)
    if not 0 < percentile <= 50:
        raise ValueError(f"percentile {percentile}: use a value in (0, 50]")
    hi, lo = float(np.percentile(g, 100 - percentile)), float(np.percentile(g, percentile))
    return {"top": np.flatnonzero(g > hi), "bottom": np.flatnonzero(g < lo),
            "threshold_top": hi, "threshold_bottom": lo}


def clipped_cross_entropy(logits: Tensor, y: Tensor, clip: float | None = CE_CLIP) -> np.ndarray:
    """Per-image cross-entropy as Ukita's ``cross_entropy``: -log of the softmax probability
    of the true class, clipped to [clip, 1 - clip] (None: no clip), float64."""
    p = torch.softmax(logits.double(), dim=-1).gather(-1, y.long()[:, None])[:, 0]
    if clip is not None:
        p = p.clamp(clip, 1 - clip)
    return (-torch.log(p)).numpy()


def gosi_split_ablation(model: nn.Module, layer: str | nn.Module, x, y=None, gosi_values=None, *,
                        percentile: float = 50.0, ce_clip: float | None = CE_CLIP,
                        fast: bool = True, units_per_pass: int | None = None,
                        batch_size: int = 256, device=None) -> dict:
    """Ablate the top-gOSI units of ``layer``, and as a control the bottom-gOSI units
    (Ukita; ``split_by_gosi``), at the layer's ablation point (``probes.ablation_layer``),
    and measure the per-image test cross-entropy (``clipped_cross_entropy``).

    Returns ``baseline_ce`` (mean per-image cross-entropy), ``baseline_acc``, ``n_images``,
    ``percentile``, ``threshold_top``, ``threshold_bottom``, ``layer``, ``ablated_module`` and,
    for "top" and "bottom": ``units``, ``n_units``, ``ce_increase_mean``,
    ``ce_increase_sem`` (his: population std over images / sqrt(n), ddof = 0),
    ``accuracy`` and ``acc_change`` (ablated minus baseline).
    """
    if gosi_values is None:
        raise ValueError("gosi_split_ablation needs gosi_values, one per unit")
    g = np.asarray(gosi_values, dtype=np.float64)
    split = split_by_gosi(g, percentile)
    groups = {"top": split["top"], "bottom": split["bottom"]}

    def unit_sets(units: int) -> list[Tensor]:
        if units != len(g):
            raise ValueError(f"gosi_values has {len(g)} entries but the layer has {units} units")
        return [torch.as_tensor(v) for v in groups.values()]

    info: dict = {}
    base_ce, base_hit, ce, hit = [], [], {k: [] for k in groups}, {k: [] for k in groups}
    for yb, ids, logits in ablated_logits(model, layer, x, y, unit_sets, fast=fast,
                                          units_per_pass=units_per_pass, batch_size=batch_size,
                                          device=device, desc="gOSI split ablation", info=info):
        yb, logits = yb.cpu(), logits.cpu()
        for r, lg in enumerate(logits):
            loss = clipped_cross_entropy(lg, yb, ce_clip)
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
           "n_images": len(base_ce_all), "percentile": percentile,
           "threshold_top": split["threshold_top"],
           "threshold_bottom": split["threshold_bottom"], "ce_clip": ce_clip,
           "layer": info["layer"], "ablated_module": info["ablated_module"]}
    for key, units in groups.items():
        inc = np.concatenate(ce[key]) - base_ce_all
        acc = float(np.concatenate(hit[key]).mean())
        out[key] = {"units": units, "n_units": len(units),
                    "ce_increase_mean": float(inc.mean()),
                    "ce_increase_sem": float(inc.std() / math.sqrt(len(inc))),
                    "accuracy": acc, "acc_change": acc - base_acc}
    return out


def layers_grating_responses(model: nn.Module, layers: Sequence[str | nn.Module], stim: Tensor, *,
                             batch_size: int = 256, device=None) -> dict[str, np.ndarray]:
    """Unit responses [U, n_orient, n_phase, n_freq] of several layers to ``stim`` (from
    ``stimuli``) in one pass over the stimuli, read at each layer's probe (post-ReLU output,
    spatially averaged: ``probes.unit_activation``), keyed as given (a module by its path)."""
    grid = stim.shape[:3]
    acts: dict[str, list[Tensor]] = {}
    for outs, _, _ in layer_outputs(model, layers, stim.flatten(0, 2), reduce=unit_activation,
                                    batch_size=batch_size, device=device, desc="gratings"):
        for n, a in outs.items():
            acts.setdefault(n, []).append(a.double().cpu())
    return {n: torch.cat(a).reshape(*grid, -1).permute(3, 0, 1, 2).numpy()
            for n, a in acts.items()}


def mean_osi_per_layer(model: nn.Module, layers: Sequence[str | nn.Module], stim: Tensor, *,
                       batch_size: int = 256, device=None) -> dict[str, float]:
    """Mean OSI over the units of each layer (per-epoch orientation tracking, Ukita)."""
    resp = layers_grating_responses(model, layers, stim, batch_size=batch_size, device=device)
    return {n: float(osi(tuning_curves(r)[0]).mean()) for n, r in resp.items()}




# --------------------------------------------------------------------------- tracking in training

class OrientationTracking:
    """The trainer's per-epoch hook for ``run.track_orientation``: the mean OSI of every probed
    layer on Ukita's 432 gratings at the model's input size (``stimuli``, normalised like the
    data), read at the probe points (post-ReLU, for cnn7 before BatchNorm). Every probed
    layer counts, fully connected ones included, as his grating_analysis.py analyses fc1 (and
    fc1, fc2 of VGG16). Every rank computes the same numbers on its own replica.

    Called as ``hook(trainer, epoch)`` after evaluation; the values go into the epoch record
    under ``record_key`` and into TensorBoard as ``<tag>/<layer>``."""

    record_key = "osi_per_layer"
    tag = "orientation/osi_mean"

    def __init__(self):
        self.stimuli: Tensor | None = None  # made once, at the first epoch's end

    @torch.no_grad()
    def __call__(self, trainer, epoch: int) -> dict[str, float]:
        if self.stimuli is None:
            info = trainer.info
            self.stimuli = stimuli(trainer.data.image_size, info.channels, info.mean, info.std)
        device = trainer.ctx.device
        # the grating passes must leave no activations in the regularizer's probe
        with trainer.probe.paused(), torch.autocast(device.type, enabled=False):
            return mean_osi_per_layer(trainer.network, list(trainer.layer_names),
                                      self.stimuli, device=device)


# --------------------------------------------------------------------------- the analysis

@dataclass
class OrientationOptions(AnalysisOptions):
    """OSI/gOSI on gratings, top/bottom-gOSI ablation, shift invariance"""

    max_images: int = max_images_option(0)  # Ukita ablates on the whole test set (x_test)
    gosi_threshold: float = option(0.33, "gOSI above this counts as orientation selective "
                                   "(Ukita: 0.33)", parse=number, aliases=("--threshold",),
                                   metavar="GOSI")
    shift: int = option(2, "pixels for shift invariance", parse=whole_number)
    no_ablation: bool = option(False, "gratings only: skip the gOSI-split ablation and shift "
                               "invariance")
    permutations: int = option(1, "shuffles of the gratings for the null OSI/gOSI "
                               "distribution (Ukita: 1, drawn with --seed 0)",
                               parse=whole_number)
    percentile: float = option(50.0, "ablate units strictly above the (100 - P)th and strictly "
                               "below the Pth gOSI percentile (Ukita: 50, the median)",
                               parse=number)

    def check(self) -> None:
        super().check()
        if not 0 <= self.gosi_threshold < 1:  # gOSI lies in [0, 1]
            self.fail("gosi_threshold", f"{self.gosi_threshold:g}", "give a gOSI in [0, 1) "
                      "(Ukita: 0.33)")
        if self.shift < 1:
            self.fail("shift", self.shift, "give a shift of at least 1 pixel")
        if self.permutations < 1:
            self.fail("permutations", self.permutations, "need at least 1 shuffle of the "
                      "gratings for the null distribution")
        if not 0 < self.percentile <= 50:
            self.fail("percentile", f"{self.percentile:g}", "use a value in (0, 50] (Ukita: "
                      "50, the median)")


Options = OrientationOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("mean_gosi", "fraction_selective")


def compute(target: Target, opts: OrientationOptions) -> dict:
    """``seltrain analyze orientation``: per layer OSI, gOSI, their permuted-grating null
    distributions and orientation ranges; unless ``opts.no_ablation``, the top- vs
    bottom-gOSI ablation (Ukita: units strictly above/below the median, zeroed at the
    ablation point) with cross-entropy, accuracy and the shift invariance of the layers above.
    Returns ``{"orientation": <orientation.json>, "summary": <summary.json>}``."""
    # The single-process run is the fan-out's merge of one part holding every layer
    # (seltrain/analysis/orientation_parts.py), so the two write the same numbers.
    return assemble(target, opts, [layer_results(target, opts, target.layers)])


def write(r: dict, target: Target, opts: OrientationOptions, out: str) -> list[str]:
    """units_<layer>.csv and tuning_<layer>.png per layer, the OSI/gOSI figures,
    orientation.json and summary.json in ``out``; the lines the command prints."""
    from seltrain.analysis import plots

    res, summary = r["orientation"], r["summary"]
    layers, params, threshold = res["layers"], res["grating_parameters"], res["threshold"]
    angles = params["orientations_deg"]
    for name, L in layers.items():
        write_csv(os.path.join(out, f"units_{name}.csv"),
                  {"unit": range(len(L["osi"])), "osi": L["osi"], "gosi": L["gosi"],
                   "null_osi": L["null_osi"][0], "null_gosi": L["null_gosi"][0],
                   "preferred_orientation_deg": L["preferred_orientation_deg"],
                   "best_period_px": params["periods_px"][L["best_frequency"]],
                   "orientation_range_deg": L["orientation_range_deg"]})
        plots.tuning_curves(L["tuning_curves"], os.path.join(out, f"tuning_{name}.png"),
                            orientations_deg=angles, title=name)
    osis = {n: L["osi"] for n, L in layers.items()}
    gosis = {n: L["gosi"] for n, L in layers.items()}
    plots.orientation_distributions(osis, gosis, os.path.join(out, "osi_gosi.png"),
                                    threshold=threshold)
    plots.null_distributions(osis, gosis, {n: L["null_osi"] for n, L in layers.items()},
                             {n: L["null_gosi"] for n, L in layers.items()},
                             os.path.join(out, "osi_gosi_vs_permuted.png"))
    plots.orientation_ranges({n: L["orientation_range_deg"] for n, L in layers.items()}, gosis,
                             os.path.join(out, "orientation_range.png"), threshold=threshold)
    plots.layer_means(gosis, os.path.join(out, "gosi_per_layer.png"), ylabel="mean gOSI")
    if res["gosi_split_ablation"]:
        plots.gosi_split_ablation(res["gosi_split_ablation"],
                                  os.path.join(out, "gosi_split_ablation.png"))
    write_json(os.path.join(out, "orientation.json"), res)
    write_json(os.path.join(out, "summary.json"), summary)
    lines = [f"orientation selectivity (gOSI > {threshold:g}: "
             f"{summary['fraction_selective']:.1%} of units; mean gOSI "
             f"{summary['mean_gosi']:.3f}, on permuted gratings {summary['mean_null_gosi']:.3f})"]
    for n, s in summary["layers"].items():
        extra = ""
        if "ce_increase_top" in s:
            extra = (f"  dCE top/bottom {s['ce_increase_top']:+.4f}/"
                     f"{s['ce_increase_bottom']:+.4f}  shift-inv {s['shift_invariance']:.3f}")
        lines.append(f"  {n:<24} OSI {s['mean_osi']:.3f}  gOSI {s['mean_gosi']:.3f} "
                     f"(permuted {s['mean_null_gosi']:.3f})  selective "
                     f"{s['fraction_selective']:.1%}{extra}")
    return lines
