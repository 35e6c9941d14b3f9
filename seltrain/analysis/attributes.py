"""What ablation drops are compared with: per-unit attributes and rank correlations.

- ``unit_attributes``: the L1 norm of each unit's incoming weights, its mean activation and,
  with labels, its class means and preferred class (Zhou, Sun, Bau & Torralba 2018).
- ``correlations``: Spearman correlations between those attributes (and SI) and the drops of
  ``ablation.single_unit_ablation``.

Incoming-weight L1
------------------
Where a BatchNorm normalises the unit's channel right after its conv/linear (ResNets,
vgg16_bn: conv -> BN; cnn7: conv -> ReLU -> BN), the raw L1 of the conv's weights carries no
information: BN divides the scale out (scaling the conv by c scales the running std by c).
``unit_attributes`` therefore reports by default the L1 of the BN-folded effective weight,
``sum |w| * |gamma| / sqrt(running_var + eps)``, which is what the next layer effectively
sees, and the raw L1 beside it; ``l1_weights`` in the result says which one ``l1_norm`` is.
(The ReLU in cnn7 sits between conv and BN, but ReLU is positively homogeneous, so the same
fold holds for the magnitude.) The L1 is not in dissect's code; its BN fold is seltrain's.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from seltrain.probes import (LayerError, eval_mode, layer_outputs, model_device, resolve_layer,
                             unit_activation)


def _forward_once(model: nn.Module, x: Tensor, handles: list) -> None:
    """One eval-mode forward pass of ``x`` for the forward hooks ``handles``, removed after."""
    try:
        with eval_mode(model), torch.no_grad():
            model(x.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
            and not isinstance(m, nn.modules.conv._ConvTransposeNd)}


def incoming_weight_module(model: nn.Module, layer: str | nn.Module, x_example: Tensor
                           ) -> tuple[str, nn.Module]:
    """The conv/linear layer whose output channels are ``layer``'s units: of the conv/linear
    layers that finish before ``layer`` finishes in a forward pass on ``x_example``, the last
    one with as many outputs as ``layer`` has units. Shortcut projections (module paths with a
    ``downsample`` or ``shortcut`` part) are skipped, so for a residual block this is the
    block's last conv (conv2 in a BasicBlock, conv3 in a Bottleneck); for a ReLU probe it is
    the conv before it. Pass ``weight_module`` to ``unit_attributes`` where this does not fit."""
    name, module = resolve_layer(model, layer)
    candidates = _weight_layers(model)
    if name in candidates:
        return name, module
    finished: list[tuple[str, int]] = []  # (module path, output channels) in finishing order
    width: list[int] = []

    def record(n):
        return lambda _m, _i, out: finished.append((n, out.shape[1]))

    handles = [m.register_forward_hook(record(n)) for n, m in candidates.items()]
    handles.append(module.register_forward_hook(lambda _m, _i, out: width.append(out.shape[1])
                                                or finished.append(("", -1))))
    _forward_once(model, x_example, handles)
    if not width:
        raise LayerError(f"layer '{name}' did not run in the forward pass")
    before = finished[:finished.index(("", -1))]
    for n, w in reversed(before):
        if w == width[0] and not set(n.split(".")) & {"downsample", "shortcut"}:
            return n, candidates[n]
    raise LayerError(f"found no conv/linear layer feeding '{name}'; pass weight_module")


def folding_batchnorm(model: nn.Module, weight_module: nn.Module, x_example: Tensor
                      ) -> tuple[str, nn.Module] | None:
    """The BatchNorm that normalises ``weight_module``'s output channels on their way to the
    next layer: the first BN whose input *is* the weight module's output (conv -> BN), or the
    output of a ReLU module applied to it (conv -> ReLU -> BN, cnn7), with one feature per
    output channel. Found by following tensor identity through forward hooks on one pass of
    ``x_example``; None when no such BN exists (vgg16, a plain linear head). A BN on another
    path (a shortcut's) never receives that tensor, so it is never picked."""
    width = weight_module.weight.shape[0]
    derived: list[Tensor] = []  # the weight module's output, and ReLU(it)
    found: list[nn.Module] = []

    def on_weight(_m, _i, out):
        derived.append(out)

    def on_relu(_m, inp, out):
        if any(inp[0] is t for t in derived):
            derived.append(out)

    def on_bn(m, inp, _out):
        if not found and m.num_features == width and any(inp[0] is t for t in derived):
            found.append(m)

    handles = [weight_module.register_forward_hook(on_weight)]
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(on_relu))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_hook(on_bn))
    _forward_once(model, x_example, handles)
    if not found:
        return None
    return resolve_layer(model, found[0])


def batchnorm_scale(bn: nn.Module) -> np.ndarray | None:
    """|gamma| / sqrt(running_var + eps) per channel (eval-mode BN), or None for a BN that
    keeps no running statistics (it normalises by batch statistics, which no fold captures)."""
    if bn.running_var is None:
        return None
    var = bn.running_var.detach().double().cpu()
    gamma = bn.weight.detach().double().cpu().abs() if bn.weight is not None \
        else torch.ones_like(var)
    return (gamma / torch.sqrt(var + bn.eps)).numpy()


L1_WEIGHTS = ("bn_folded", "raw")


def unit_attributes(model: nn.Module, layer: str | nn.Module, x, y=None, *,
                    num_classes: int | None = None, weight_module: str | nn.Module | None = None,
                    l1_weights: str = "bn_folded", batch_size: int = 256, device=None) -> dict:
    """Per-unit attributes for correlating with ablation drops (Zhou et al. 2018).

    ``l1_norm[U]``: L1 norm of each unit's incoming weights (the conv/linear that produces the
    unit, see ``incoming_weight_module``, or ``weight_module``). With ``l1_weights="bn_folded"``
    (default) and a BatchNorm on the channel (``folding_batchnorm``), the L1 of the BN-folded
    effective weight ``w * gamma / sqrt(running_var + eps)`` (module docstring: BN cancels
    the raw scale); otherwise, or with ``"raw"``, the raw L1. ``l1_weights`` in the result
    says which was used, ``l1_batchnorm`` names the BN folded in (or None) and
    ``l1_norm_raw[U]`` is always the raw L1. ``mean_activation[U]``: mean over images of the
    unit's (spatially averaged) activation at its probe. With labels also
    ``class_means[U, K]`` (NaN for absent classes) and ``preferred_class[U]`` (argmax of the
    class means). ``num_classes`` defaults to the largest label + 1 of the first batch, so
    pass it when streaming batches.
    """
    if l1_weights not in L1_WEIGHTS:
        raise ValueError(f"l1_weights '{l1_weights}': use one of {', '.join(L1_WEIGHTS)}")
    name, module = resolve_layer(model, layer)
    total, sums, counts, first, n_images = None, None, None, None, 0
    for outs, xb, yb in layer_outputs(model, {name: module}, x, y, reduce=unit_activation,
                                      batch_size=batch_size, device=device,
                                      desc=f"attributes {name}"):
        acts = outs[name].double().cpu()
        first = xb[:1] if first is None else first
        total = acts.sum(0) if total is None else total + acts.sum(0)
        n_images += len(acts)
        if yb is not None:
            yb = torch.as_tensor(yb).long().cpu()
            if sums is None:
                k = num_classes or int(yb.max()) + 1
                sums, counts = torch.zeros(k, acts.shape[1], dtype=torch.float64), torch.zeros(k)
            if int(yb.max()) >= len(counts):
                raise ValueError(f"label {int(yb.max())} >= num_classes {len(counts)}")
            onehot = torch.nn.functional.one_hot(yb, len(counts)).double()
            sums += onehot.t() @ acts
            counts += onehot.sum(0)
    if total is None:
        raise ValueError("no data: x is empty")
    if weight_module is None:
        w_name, w_module = incoming_weight_module(model, module, first)
    else:
        w_name, w_module = resolve_layer(model, weight_module)
    raw = w_module.weight.detach().double().cpu().abs().flatten(1).sum(1).numpy()
    if len(raw) != total.shape[0]:
        raise LayerError(f"'{w_name}' has {len(raw)} outputs but '{name}' has {total.shape[0]} "
                         "units; pass another weight_module")
    l1, used, bn_name = raw, "raw", None
    if l1_weights == "bn_folded":
        bn = folding_batchnorm(model, w_module, first)
        scale = None if bn is None else batchnorm_scale(bn[1])
        if scale is not None:
            l1, used, bn_name = raw * scale, "bn_folded", bn[0]
    result = {"layer": name, "weight_module": w_name, "l1_norm": l1, "l1_weights": used,
              "l1_batchnorm": bn_name, "l1_norm_raw": raw,
              "mean_activation": (total / n_images).numpy()}
    if sums is not None:
        per_class = counts.double()[:, None]  # NaN for a class absent from the data
        means = torch.where(per_class > 0, sums / per_class.clamp_min(1), torch.nan).T.numpy()
        result["class_means"] = means
        result["preferred_class"] = np.argmax(np.nan_to_num(means, nan=-np.inf), 1)
    return result


DROP_MEASURES = ("overall_drop", "max_class_drop", "class_drop_std", "preferred_class_drop")


def correlations(ablation: dict, attributes: dict[str, np.ndarray],
                 preferred_class: np.ndarray | None = None) -> dict:
    """Spearman rank correlations between ablation drops and unit attributes.

    ``ablation``: the result of ``single_unit_ablation``. ``attributes``: name -> [U] array,
    e.g. ``{"si": si, "l1_norm": ..., "mean_activation": ...}``. With ``preferred_class[U]``
    (argmax of class-mean activation) the drop on each unit's preferred class is included.
    Returns ``{drop: {attribute: {"rho", "p", "n"}}}``; units with a NaN in either variable are
    left out, and a constant variable gives rho = p = NaN.
    """
    drops = {k: np.asarray(ablation[k], dtype=np.float64) for k in DROP_MEASURES[:3]}
    if preferred_class is not None:
        pref = np.asarray(preferred_class, dtype=np.int64)
        cd = np.asarray(ablation["class_drops"], dtype=np.float64)
        drops["preferred_class_drop"] = cd[np.arange(len(pref)), pref]
    out: dict[str, dict] = {}
    for dname, d in drops.items():
        out[dname] = {}
        for aname, a in attributes.items():
            a = np.asarray(a, dtype=np.float64)
            if a.shape != d.shape:
                raise ValueError(f"attribute '{aname}' has shape {a.shape}, drops have {d.shape}")
            ok = np.isfinite(a) & np.isfinite(d)
            rho = p = math.nan
            if ok.sum() >= 3 and np.ptp(a[ok]) > 0 and np.ptp(d[ok]) > 0:
                res = stats.spearmanr(a[ok], d[ok])
                rho, p = float(res.statistic), float(res.pvalue)
            out[dname][aname] = {"rho": rho, "p": p, "n": int(ok.sum())}
    return out
