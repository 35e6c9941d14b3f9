"""Dimensionality of layer representations (Leavitt & Morcos 2020; METHODS.md section 5).

Per layer, the number of principal components needed to explain a fraction (95% by default;
the paper's exact threshold is unconfirmed) of the variance of the layer's representation
over a set of inputs: clean, corrupted (``robustness.corrupted_batches``) or adversarial
(``robustness.adversarial_batches``).

The representation is the layer's whole output flattened (every channel at every position),
as in Leavitt & Morcos; ``spatial="mean"`` uses the spatially averaged unit activations
instead (C features per conv layer, the units of METHODS.md section 1).
"""
from __future__ import annotations

from contextlib import closing
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seltrain.analysis.capture import layer_outputs, resolve_layer, unit_responses

# Slack when comparing a cumulative variance ratio with the threshold: with equal variances
# per component the sum can land a few ulps below an exactly reachable threshold.
_TOLERANCE = 1e-9


def explained_variance_ratio(features) -> np.ndarray:
    """PCA explained-variance ratios, largest first, of ``features`` [N, D] (centred here).
    Computed from the smaller Gram matrix (N x N or D x D) in float64. All zeros when the
    features do not vary."""
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
    x = x.detach().double().cpu().flatten(1)
    x = x - x.mean(0, keepdim=True)
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    ev = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)
    total = ev.sum()
    return (ev / total).numpy() if total > 0 else np.zeros(len(ev))


def n_components(features, threshold: float = 0.95) -> int:
    """Smallest k whose first k principal components explain at least ``threshold`` of the
    variance of ``features`` [N, D]; 0 for features that do not vary."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    ratio = explained_variance_ratio(features)
    if ratio.sum() == 0:
        return 0
    cum = np.cumsum(ratio)
    return int(min(np.searchsorted(cum, threshold - _TOLERANCE) + 1, len(cum)))


def layer_features(model: nn.Module, layers: Sequence[str | nn.Module] | str | nn.Module, x,
                   *, spatial: str = "flatten", max_samples: int | None = None,
                   batch_size: int = 256, device=None) -> dict[str, np.ndarray]:
    """Representations [N, D] (float32) of each layer, in one pass over ``x`` (tensor or
    batches of (x, y)); at most ``max_samples`` images."""
    if spatial not in ("flatten", "mean"):
        raise ValueError(f"spatial must be 'flatten' or 'mean', got '{spatial}'")
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    named = dict(resolve_layer(model, layer) for layer in layers)
    feats: dict[str, list[Tensor]] = {n: [] for n in named}
    seen = 0
    with closing(layer_outputs(model, named, x, batch_size=batch_size, device=device,
                               desc="layer features")) as batches:  # closing: hooks go on break
        for outs, xb, _ in batches:
            take = len(xb) if max_samples is None else min(len(xb), max_samples - seen)
            for n, out in outs.items():
                out = out[:take]
                rep = out.flatten(1) if spatial == "flatten" else unit_responses(out)
                feats[n].append(rep.float().cpu())
            seen += take
            if max_samples is not None and seen >= max_samples:
                break
    return {n: torch.cat(v).numpy() for n, v in feats.items()}


def layer_dimensionality(model: nn.Module, layers, x, threshold: float = 0.95, *,
                         spatial: str = "flatten", max_samples: int | None = None,
                         batch_size: int = 256, device=None) -> dict[str, dict]:
    """Per layer: ``n_components`` at ``threshold``, ``n_features`` (D), ``n_samples`` (N).
    Note that N bounds the answer (at most N - 1 components vary), so compare layers and
    conditions at equal N."""
    feats = layer_features(model, layers, x, spatial=spatial, max_samples=max_samples,
                           batch_size=batch_size, device=device)
    return {n: {"n_components": n_components(f, threshold), "n_features": int(f.shape[1]),
                "n_samples": int(f.shape[0]), "threshold": threshold, "spatial": spatial}
            for n, f in feats.items()}
