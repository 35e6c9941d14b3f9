"""Shift invariance: how little a layer's representation changes when the image moves.

Ukita measured it before and after ablating the top- vs bottom-gOSI units of a layer
(seltrain/analysis/orientation.py); how the paper computed it is unconfirmed. Per image: the
Pearson correlation between the flattened layer output (all channels and positions; a
spatial mean would hide the shift) for the image and for the image shifted by ``shift`` px
(``shift_images``). The correlation is taken inside the forward hook, so no feature map
outlives its forward pass.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.analysis.ablation import ablate
from seltrain.probes import (ablation_layer, iterate_batches, layer_outputs, named_layers,
                             num_batches)


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


def _pair_terms(out: Tensor) -> Tensor:
    """[2, B] for a layer output of B images followed by their B shifted copies: per image,
    the centred dot product of the two flattened representations and the product of their
    norms (the Pearson correlation is one over the other), in float64."""
    a, b = out.flatten(1).double().chunk(2)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return torch.stack([(a * b).sum(1), a.norm(dim=1) * b.norm(dim=1)])


def shift_invariance_layers(model: nn.Module, layers: Sequence[str | nn.Module], x,
                            shift: int = 2, *, dims: Sequence[int] = (-1,), mode: str = "roll",
                            ablation: tuple[str | nn.Module, Sequence[int]] | None = None,
                            batch_size: int = 256, device=None) -> dict[str, dict]:
    """Shift invariance of each of ``layers`` in one pass over ``x`` (normalised images, a
    tensor or batches of (x, y); shifting normalised images equals normalising shifted ones,
    as normalisation is per channel): {layer: {"mean", "sem", "n", "n_constant", "shift",
    "mode"}}, the mean and SEM of the correlation over images; images with a constant
    representation are left out (``n_constant``). ``ablation=(layer, units)`` zeroes those
    units, typically of a lower layer, in both passes, at that layer's ablation point
    (``probes.ablation_layer``)."""
    mods = named_layers(model, layers)
    corrs: dict[str, list[np.ndarray]] = {n: [] for n in mods}
    n_constant = dict.fromkeys(mods, 0)
    abl = None if ablation is None else (ablation_layer(model, ablation[0])[1], ablation[1])
    for xb, _ in tqdm(iterate_batches(x, None, batch_size), total=num_batches(x, batch_size),
                      desc="shift invariance", disable=None, leave=False):
        pair = torch.cat([xb, shift_images(xb, shift, dims, mode)])
        with ablate(*abl) if abl else nullcontext():
            (outs, _, _), = layer_outputs(model, mods, pair, reduce=_pair_terms,
                                          batch_size=len(pair), device=device)
        for n, terms in outs.items():
            num, den = terms.cpu()
            ok = den > 0
            n_constant[n] += int((~ok).sum())
            corrs[n].append((num[ok] / den[ok]).numpy())
    out = {}
    for n in mods:
        r = np.concatenate(corrs[n]) if corrs[n] else np.zeros(0)
        out[n] = {"mean": float(r.mean()) if len(r) else math.nan,
                  "sem": float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else math.nan,
                  "n": int(len(r)), "n_constant": n_constant[n], "shift": shift, "mode": mode}
    return out


def shift_invariance(model: nn.Module, layer: str | nn.Module, x, shift: int = 2, *,
                     dims: Sequence[int] = (-1,), mode: str = "roll",
                     ablation: tuple[str | nn.Module, Sequence[int]] | None = None,
                     batch_size: int = 256, device=None) -> dict:
    """``shift_invariance_layers`` for one layer."""
    (result,) = shift_invariance_layers(model, [layer], x, shift, dims=dims, mode=mode,
                                        ablation=ablation, batch_size=batch_size,
                                        device=device).values()
    return result
