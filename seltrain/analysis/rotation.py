"""Random rotation of a layer's basis, then ablation (Zhou, Sun, Bau & Torralba 2018,
"Revisiting the importance of individual units in CNNs via ablation").

Are the class-specific drops of single-unit ablation a property of the units, or would any
direction of the layer's space do as well? Zhou et al. rotate a layer's representation by a
random orthogonal matrix, leave the network's function unchanged by undoing the rotation in
the next layer, and ablate the rotated directions one at a time: if the units are special,
the class-specific drops along random directions are smaller and more alike.

The rotation
------------
Let h [C] be the tensor the next layer receives at the layer's ablation point
(``probes.ablation_layer``: the post-ReLU output, or cnn7's BatchNorm after it), Q [C, C] a
random orthogonal matrix and W the next conv or linear layer's weight. The rotated network
computes z = Q^T h (a channel mixing at every position, the ``Rotation`` module inserted
after the ablation point) and feeds z to a next layer of weight W' = W Q (over W's input
channels, at every kernel position), so W' z = W Q Q^T h = W h: the function is unchanged
(to float32 rounding of the product; tests/unit_tests/test_analysis_rotation.py holds the
logits to 1e-5 of the logits' scale). A rotated "unit" j is the coordinate z_j, and
ablating it is zeroing z_j, exactly as ``ablation.single_unit_ablation`` zeroes a unit (the
same engine runs both). With Q = I the rotated network's drops are bitwise the unit axes'.

Q is Haar-distributed: the QR factors of a standard normal matrix (float64, drawn from
``torch.Generator().manual_seed(seed)``, one draw per layer in layer order) with the signs
of R's diagonal moved into Q (Mezzadri 2007), so every orthogonal matrix is equally likely.

Which layers can be rotated
---------------------------
Q^T cannot be folded into the layer that makes h (a ReLU or BatchNorm comes between), so it
is an extra module; Q is folded into the *next* layer, which must therefore be linear in h:
h has to reach one conv (``groups=1``) or linear layer, through nothing but operations that
act on every unit alike and linearly (average pooling, flatten, dropout, identity), and a
linear layer must read the C units themselves (pooled to 1 x 1, not C x H x W flattened).
Anything else is one line naming what comes after the layer, exit 2:

* a nonlinearity (ReLU, max pooling) before the next conv: rotate the tensor after it;
* BatchNorm: it scales each unit on its own, which does not commute with a rotation, and
  the analyses run in eval mode, where folding it would change the network's modules; rotate
  at the BatchNorm's output instead (cnn7's ablation points are exactly that);
* an output read twice (a ResNet block feeding the next block and its skip addition): there
  is no single next layer to undo the rotation in. The last block of a stage before the
  pooled classifier (resnet20's layer3.2, torchvision resnet18's layer4) can be rotated.

``undo="inverse"`` (``--undo inverse``) instead inserts a second module, h = Q z, right after
the rotation: any layer can then be rotated (VGG's and AlexNet's conv5, which feed max
pooling; every ResNet block), and ablating z_j removes the direction q_j from h at every
position, h - q_j q_j^T h, which is what the fold computes where it applies.

Outputs
-------
Per layer, single-unit ablation along the unit axes and along the rotated axes: the
distribution of the max class drop per direction (and of every class drop), their means,
and the two-sample Kolmogorov-Smirnov statistic between them. Zhou et al. do not say which
statistic their figure shows; seltrain reports both the max class drop per direction and
all class drops.
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn

from seltrain.analysis.ablation import UnsupportedModelError, single_unit_ablation, split_at
from seltrain.analysis.options import AnalysisOptions, option, whole_number
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target
from seltrain.errors import ConfigError
from seltrain.probes import ablation_layer, eval_mode, resolve_layer

# Between the rotated tensor and the next linear layer, only these may run: each acts on
# every unit alike and linearly (in eval mode), so it commutes with a channel rotation.
PASS_MODULES = (nn.Identity, nn.Dropout, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)
PASS_FUNCTIONS = {torch.flatten, nn.functional.adaptive_avg_pool2d, nn.functional.avg_pool2d,
                  nn.functional.dropout}
PASS_METHODS = {"flatten", "view", "reshape", "contiguous"}


class RotationError(ConfigError):
    """The layer cannot be rotated (module docstring): one line, exit 2."""


def random_orthogonal(n: int, seed: int | torch.Generator) -> Tensor:
    """A Haar-random n x n orthogonal matrix (float64): QR of a standard normal matrix with
    the signs of R's diagonal moved into Q (Mezzadri 2007)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))[None]


class Rotation(nn.Module):
    """z = Q^T h over dim 1 (the units), at every position; the output keeps h's memory
    layout, so the layers after it run exactly as they do on h."""

    def __init__(self, q: Tensor):
        super().__init__()
        self.register_buffer("q", q)

    def forward(self, h: Tensor) -> Tensor:
        z = (h.movedim(1, -1) @ self.q.to(h.dtype)).movedim(-1, 1)
        return torch.empty_like(h).copy_(z)


class RotatedNetwork(nn.Module):
    """``head`` (input -> the layer's ablation point), ``rotation`` (z = Q^T h) and ``tail``
    (the rest of the network, its next layer's weight times Q): the original function."""

    def __init__(self, head: nn.Module, rotation: Rotation, tail: nn.Module):
        super().__init__()
        self.head, self.rotation, self.tail = head, rotation, tail

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.rotation(self.head(x)))


def _describe(node: fx.Node, tail: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"'{node.target}' ({type(tail.get_submodule(node.target)).__name__})"
    if node.op == "output":
        return "the network's output"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{name} ({'a method' if node.op == 'call_method' else 'a function'})"


def next_linear_layer(tail: fx.GraphModule, layer: str) -> nn.Module:
    """The conv or linear module of ``tail`` that first reads its input (the rotated
    tensor), through pass-through operations only; else a RotationError naming what is
    there (module docstring)."""
    node = next(n for n in tail.graph.nodes if n.op == "placeholder")
    fix = ("; rotate a layer whose output goes straight into one conv or linear layer "
           "(through average pooling, flatten or dropout at most)")
    while True:
        # x.size(...) reads the shape only, not the units (a view's batch size)
        users = [u for u in node.users if not (u.op == "call_method" and u.target == "size")]
        if len(users) != 1:
            what = ", ".join(_describe(u, tail) for u in users)
            raise RotationError(f"cannot rotate '{layer}': its output feeds {len(users)} "
                                f"operations ({what}; a residual addition?), so no single "
                                f"next layer can undo the rotation{fix}")
        node = users[0]
        if node.op == "call_module":
            m = tail.get_submodule(node.target)
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
                return m
            if isinstance(m, PASS_MODULES):
                continue
        elif (node.op == "call_function" and node.target in PASS_FUNCTIONS) or \
                (node.op == "call_method" and node.target in PASS_METHODS):
            continue
        raise RotationError(f"cannot rotate '{layer}': the next layer is not linear in its "
                            f"units: {_describe(node, tail)} comes first (a nonlinearity, a "
                            f"per-unit normalisation or a grouped conv){fix}")


def fold(layer: nn.Module, q: Tensor, units: int) -> None:
    """W <- W Q over ``layer``'s input channels (in float64, then back to W's dtype)."""
    w = layer.weight
    if w.shape[1] != units:
        raise RotationError(f"cannot rotate into '{type(layer).__name__}' with {w.shape[1]} "
                            f"inputs: the layer has {units} units (a linear layer must read "
                            "them pooled, not flattened with their positions); rotate a "
                            "layer whose output goes straight into one conv or linear layer")
    with torch.no_grad():
        w.copy_(torch.einsum("oc...,cd->od...", w.double(), q.to(w.device)).to(w.dtype))


def rotate_layer(model: nn.Module, layer: str, sample: Tensor, q: Tensor | None = None, *,
                 seed: int | torch.Generator = 0, undo: str = "fold") -> RotatedNetwork:
    """A copy of ``model`` with ``layer``'s units (at its ablation point) rotated by ``q``
    (default: ``random_orthogonal`` from ``seed``) and the rotation undone (module docstring):
    ``undo="fold"`` in the next layer's weights, ``"inverse"`` by a second module right
    after it (any layer). ``sample``: an input batch, which reads the layer's units."""
    name, _ = ablation_layer(model, layer)
    model = copy.deepcopy(model)  # the fold rewrites a weight: never the caller's network
    try:
        head, tail = split_at(model, name)
    except UnsupportedModelError as e:
        raise RotationError(f"cannot rotate '{layer}': {e}") from None
    nxt = next_linear_layer(tail, name) if undo == "fold" else None
    with eval_mode(head), torch.no_grad():
        h = head(sample)
    units = h.shape[1]
    q = random_orthogonal(units, seed) if q is None else q.double()
    if q.shape != (units, units):
        raise ValueError(f"q is {tuple(q.shape)}, the layer has {units} units")
    if nxt is None:  # h = Q z, as a module: the next layer reads h itself
        tail = nn.Sequential(Rotation(q.T.contiguous().to(h.device, h.dtype)), tail)
    else:
        fold(nxt, q, units)
    return RotatedNetwork(head, Rotation(q.to(h.device, h.dtype)), tail).eval()


# --------------------------------------------------------------------------- the analysis

@dataclass
class RotationOptions(AnalysisOptions):
    """single-unit ablation along a layer's unit axes and along randomly rotated axes, the
    rotation undone in the next layer (Zhou et al. 2018)"""

    undo: str = option("fold", "undo the rotation in the next layer's weights (fold: the "
                       "next layer must be linear in the units) or by an inverse rotation "
                       "module right after it (inverse: any layer)",
                       choices=("fold", "inverse"))
    unit_batch: int = option(0, "ablations per pass of the network after the layer (0: auto, "
                             "as analyze ablation); the results do not depend on it",
                             parse=whole_number, metavar="N", shown="0")

    def check(self) -> None:
        super().check()
        self.at_least("unit_batch", 0)


Options = RotationOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("mean_max_class_drop_axes", "mean_max_class_drop_rotated")


def _first_batch(data) -> Tensor:
    for xb, _ in data:
        return xb
    raise ConfigError("the split is empty: nothing to ablate")


def _distribution(res: dict) -> dict:
    drops = np.asarray(res["class_drops"], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN only without data
        return {"mean_max_class_drop": float(np.nanmean(res["max_class_drop"])),
                "mean_class_drop": float(np.nanmean(drops)),
                "std_class_drop": float(np.nanstd(drops)),
                "mean_overall_drop": float(np.mean(res["overall_drop"]))}


def compute(target: Target, opts: RotationOptions) -> dict:
    """``seltrain analyze rotation``: per layer, single-unit ablation along the unit axes and
    along a random rotation's axes (one rotation per layer, drawn in layer order from
    ``opts.seed``), and how the two distributions of drops differ."""
    from scipy import stats

    k = target.info.num_classes
    per_pass = opts.unit_batch or None
    gen = torch.Generator().manual_seed(opts.seed)
    sample = _first_batch(target.data)
    layers, summary = {}, {"layers": {}, "seed": opts.seed, "undo": opts.undo}
    for name in target.layers:
        path = resolve_layer(target.model, name)[0]
        rotated = rotate_layer(target.model, name, sample, seed=gen, undo=opts.undo)
        axes = single_unit_ablation(target.model, name, target.data, num_classes=k,
                                    units_per_pass=per_pass, device=target.device)
        rot = single_unit_ablation(rotated, "rotation", target.data, num_classes=k,
                                   units_per_pass=per_pass, device=target.device)
        ks = stats.ks_2samp(axes["max_class_drop"], rot["max_class_drop"])
        a, r = _distribution(axes), _distribution(rot)
        layers[name] = {"layer": path, "rotated_module": axes["ablated_module"],
                        "unit_axes": axes, "rotated_axes": rot,
                        "rotation": rotated.rotation.q.double().cpu().numpy()}
        summary["layers"][name] = {
            "rotated_module": axes["ablated_module"], "baseline_acc": axes["baseline_acc"],
            "rotated_baseline_acc": rot["baseline_acc"], "units": len(axes["overall_drop"]),
            **{f"{key}_axes": v for key, v in a.items()},
            **{f"{key}_rotated": v for key, v in r.items()},
            "ks_max_class_drop": float(ks.statistic), "ks_p": float(ks.pvalue)}
    for key in ("mean_max_class_drop", "mean_class_drop", "mean_overall_drop"):
        for side in ("axes", "rotated"):
            summary[f"{key}_{side}"] = float(np.mean(
                [v[f"{key}_{side}"] for v in summary["layers"].values()]))
    return {"layers": layers, "summary": summary}


def write(r: dict, target: Target, opts: RotationOptions, out: str) -> list[str]:
    """rotation_<layer>.json, drops_<layer>.csv, max_class_drop_<layer>.png (the two
    distributions) and summary.json in ``out``; the lines the command prints."""
    from seltrain.analysis import plots

    lines = [f"single-unit ablation along unit axes vs a random rotation's axes (seed "
             f"{opts.seed}), {target.data.num_images} {target.split} images"]
    for name, layer in r["layers"].items():
        axes, rot = layer["unit_axes"], layer["rotated_axes"]
        write_csv(os.path.join(out, f"drops_{name}.csv"), {
            "direction": range(len(axes["overall_drop"])),
            "max_class_drop_axes": axes["max_class_drop"],
            "max_class_drop_rotated": rot["max_class_drop"],
            "class_drop_std_axes": axes["class_drop_std"],
            "class_drop_std_rotated": rot["class_drop_std"],
            "overall_drop_axes": axes["overall_drop"], "overall_drop_rotated": rot["overall_drop"]})
        both = np.concatenate([axes["max_class_drop"], rot["max_class_drop"]])
        both = both[np.isfinite(both)]
        span = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        if not span[1] > span[0]:
            span = (span[0] - 0.5, span[0] + 0.5)
        plots.histograms({"unit axes": axes["max_class_drop"],
                          "rotated axes": rot["max_class_drop"]},
                         os.path.join(out, f"max_class_drop_{name}.png"),
                         xlabel="max class drop", value_range=span,
                         title=f"{name}: single-direction ablation")
        write_json(os.path.join(out, f"rotation_{name}.json"), layer)
        s = r["summary"]["layers"][name]
        lines.append(f"  {name:<24} max class drop (mean) axes {s['mean_max_class_drop_axes']:.4f}"
                     f"  rotated {s['mean_max_class_drop_rotated']:.4f}  KS "
                     f"{s['ks_max_class_drop']:.3f} (p {s['ks_p']:.2g})")
    write_json(os.path.join(out, "summary.json"), r["summary"])
    return lines

