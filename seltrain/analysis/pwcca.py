"""Projection-weighted CCA between a network's layers and a reference network's (Morcos,
Raghu & Bengio 2018, "Insights on representational similarity in neural networks with
canonical correlation"), for Leavitt & Morcos's check (arXiv 2003.01262) that the
class-selectivity regularizer changes the representation rather than rotating selectivity off
the unit axes: CCA is invariant to any invertible linear map of a layer, rotations included,
so a network whose selectivity had only been rotated would stay PWCCA-similar to the
unregularized one.

The definition, as computed here
--------------------------------
X [N, Dx] and Y [N, Dy]: the two networks' responses to the same N images (each unit's
spatial mean, the unit activation SI is computed from; docs/METHODS.md section 1).

1. Centre each unit over the images. Optionally (``svd_share``, the SVCCA step of Raghu et
   al. 2017) keep, on each side, the top principal components that explain that share of the
   variance, and go on with their scores in place of the units.
2. CCA: with orthonormal bases Ux, Uy of the column spaces of X and Y (thin SVD, directions
   with singular values below 1e-10 of the largest dropped), the canonical correlations
   rho_1 >= ... >= rho_c, c = min(rank X, rank Y), are the singular values of Ux^T Uy, and
   X's canonical variates h_i = Ux a_i (a_i its left singular vectors), orthonormal N-vectors.
3. Projection weighting: alpha_i = sum_j |<h_i, x_j>| over X's (centred) columns x_j, how
   much of X's units each canonical direction accounts for, normalised to sum to 1.
4. PWCCA(X, Y) = sum_i alpha_i rho_i, in [0, 1]; 1 when Y is any invertible linear map of X.
   It is not symmetric: the weights are X's (here X is the analysed network, Y the
   reference, as Morcos et al. weight by the representation under study).

What the papers' text confirms, and what it does not
-----------------------------------------------------
Steps 2-4 are Morcos et al.'s definition (canonical correlations weighted by each canonical
variate's summed absolute projection onto the layer's neurons, normalised). The SVD step is
SVCCA's, optional in their method; the share kept (99% in SVCCA's experiments) is left to
``--svd-share``, off by default. Leavitt & Morcos's comparison (each regularized network's
layers against the unregularized network's, per alpha) is known here from the issue's
summary of their text: which layers, how conv feature maps were turned into samples, the
number of images, and the bound on off-axis selectivity they derive could not be read from the
full text with the tools at hand, so seltrain's choices (spatial means, one sample per image,
``--max-images`` images, the test split) are its own and no bound is computed.

CCA needs many more images than units (Kornblith et al. 2019: with N <= D any two layers
match perfectly); a layer whose directions reach N - 1 gets a warning line (``warning`` in
summary.json).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from seltrain.analysis.options import AnalysisOptions, number, option
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target
from seltrain.errors import ConfigError

RANK_TOL = 1e-10  # singular values below this fraction of the largest: no direction


def _basis(x: np.ndarray) -> np.ndarray:
    """An orthonormal basis [N, r] of the column space of centred ``x``."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return u[:, :0]
    return u[:, s > RANK_TOL * s[0]]


def svd_reduce(x: np.ndarray, share: float) -> np.ndarray:
    """The scores [N, k] of centred ``x`` on its top k principal components, k the fewest
    that explain ``share`` of the variance (SVCCA's reduction)."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s ** 2
    if var.sum() == 0:
        return x[:, :0]
    k = int(np.searchsorted(np.cumsum(var) / var.sum(), share - 1e-12) + 1)
    return u[:, :k] * s[:k]


def cca(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical correlations [c] (descending) and X's canonical variates [N, c] of
    ``x`` [N, Dx] and ``y`` [N, Dy] (centred here)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    ux, uy = _basis(x), _basis(y)
    a, rho, _ = np.linalg.svd(ux.T @ uy, full_matrices=False)
    c = min(ux.shape[1], uy.shape[1])
    return np.clip(rho[:c], 0.0, 1.0), ux @ a[:, :c]


def pwcca(x, y, svd_share: float | None = None) -> dict:
    """PWCCA of ``x`` [N, Dx] against ``y`` [N, Dy] (module docstring), with the canonical
    correlations, the weights and the mean (unweighted) canonical correlation."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need [N, D] responses to the same N images, got {x.shape} and "
                         f"{y.shape}")
    x, y = x - x.mean(0), y - y.mean(0)
    if svd_share:
        x, y = svd_reduce(x, svd_share), svd_reduce(y, svd_share)
    rho, h = cca(x, y)
    if rho.size == 0:  # a constant layer: nothing to correlate
        return {"pwcca": float("nan"), "mean_cca": float("nan"), "rho": rho,
                "weights": rho, "directions": 0}
    weights = np.abs(h.T @ x).sum(1)
    weights = weights / weights.sum()
    return {"pwcca": float(weights @ rho), "mean_cca": float(rho.mean()), "rho": rho,
            "weights": weights, "directions": int(rho.size)}


# --------------------------------------------------------------------------- the analysis

def _share(text: str) -> float:
    value = number(text)
    if not 0 <= value <= 1:
        raise ValueError("give a share of the variance in (0, 1], or 0 for no reduction")
    return value


@dataclass
class PwccaOptions(AnalysisOptions):
    """projection-weighted CCA similarity of each layer to a reference network's (e.g. the
    alpha = 0 run of a search)"""

    reference: str | None = option(None, "the network to compare with: a checkpoint, run "
                                   "folder or target folder (e.g. the alpha = 0 trial)",
                                   metavar="PATH")
    svd_share: float = option(0.0, "first keep the principal components explaining this share "
                              "of each layer's variance (SVCCA; 0: none)", parse=_share,
                              metavar="SHARE")


Options = PwccaOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("mean_pwcca",)


def _reference(target: Target, opts: PwccaOptions) -> Target:
    from seltrain.analysis.target import find_targets

    if not opts.reference:
        raise ConfigError("pwcca needs --reference PATH: the network to compare with (e.g. "
                          "the alpha = 0 trial's run folder)")
    refs = find_targets(opts.reference)
    if len(refs) != 1:
        raise ConfigError(f"--reference {opts.reference}: found {len(refs)} networks there; "
                          "give one checkpoint, run folder or target folder")
    ref = refs[0].load(opts)
    if ref.data.num_images != target.data.num_images or \
            ref.cfg.data.dataset != target.cfg.data.dataset:
        raise ConfigError(f"--reference {opts.reference}: its {ref.split} split "
                          f"({ref.cfg.data.dataset}, {ref.data.num_images} images) is not the "
                          f"analysed one's ({target.cfg.data.dataset}, "
                          f"{target.data.num_images}); compare networks on the same images")
    missing = [n for n in target.layers if n not in ref.layers]
    if missing:
        raise ConfigError(f"--reference {opts.reference} has no layer {missing[0]}; pass "
                          "--layers that both networks have")
    return ref


def compute(target: Target, opts: PwccaOptions) -> dict:
    """``seltrain analyze pwcca``: per layer, PWCCA (and the mean canonical correlation) of
    the analysed network's unit activations against the reference network's on the same
    images."""
    from seltrain.analysis.dimensionality import layer_features

    ref = _reference(target, opts)
    mine = layer_features(target.model, target.layers, target.data, spatial="mean",
                          device=target.device)
    theirs = layer_features(ref.model, target.layers, ref.data, spatial="mean",
                            device=ref.device)
    layers = {n: pwcca(mine[n], theirs[n], opts.svd_share or None) for n in target.layers}
    summary = {"reference": ref.ckpt_path, "svd_share": opts.svd_share,
               "n_images": target.data.num_images,
               "layers": {n: {k: r[k] for k in ("pwcca", "mean_cca", "directions")}
                          for n, r in layers.items()}}
    summary["mean_pwcca"] = float(np.mean([r["pwcca"] for r in layers.values()]))
    # With N images, two layers share at least D1 + D2 - (N - 1) directions whatever they
    # compute: CCA can only tell networks apart where the images far outnumber the units.
    n = target.data.num_images
    full = [name for name, r in layers.items() if r["directions"] >= n - 1]
    summary["warning"] = None if not full else (
        f"warning: {len(full)} layer(s) ({', '.join(full[:4])}) have as many CCA directions as "
        f"the {n} images allow, where PWCCA reads near 1 whatever the networks; raise "
        "--max-images well above their unit count")
    return {"layers": layers, "summary": summary}


def write(r: dict, target: Target, opts: PwccaOptions, out: str) -> list[str]:
    """pwcca.json, pwcca.csv, pwcca_per_layer.png and summary.json in ``out``; the lines the
    command prints."""
    from seltrain.analysis import plots

    s = r["summary"]
    write_json(os.path.join(out, "pwcca.json"), {"checkpoint": target.ckpt_path,
                                                 "split": target.split, **s,
                                                 "per_layer": r["layers"]})
    names = list(r["layers"])
    write_csv(os.path.join(out, "pwcca.csv"), {
        "layer": names, "pwcca": [s["layers"][n]["pwcca"] for n in names],
        "mean_cca": [s["layers"][n]["mean_cca"] for n in names],
        "directions": [s["layers"][n]["directions"] for n in names]})
    plots.layer_means({n: [s["layers"][n]["pwcca"]] for n in names},
                      os.path.join(out, "pwcca_per_layer.png"), ylabel="PWCCA to reference")
    write_json(os.path.join(out, "summary.json"), s)
    return [f"PWCCA against {s['reference']} ({s['n_images']} {target.split} images): mean "
            f"{s['mean_pwcca']:.4f}",
            *(f"  {n:<24} PWCCA {v['pwcca']:.4f}  mean CCA {v['mean_cca']:.4f}  "
              f"({v['directions']} directions)" for n, v in s["layers"].items()),
            *([f"  {s['warning']}"] if s["warning"] else [])]
