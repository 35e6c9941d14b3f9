"""Unit ablation: what happens to accuracy when units are silenced (METHODS.md section 3).

- ``single_unit_ablation``: zero one unit (a whole channel, every position) at a time and
  measure the overall and per-class accuracy drops (Zhou, Sun, Bau & Torralba 2018,
  "Revisiting the importance of individual units in CNNs via ablation").
- ``cumulative_ablation``: zero growing fractions of a layer, in order of class selectivity
  (high first, low first) or at random, and read accuracy (Morcos et al. 2018).
- ``unit_attributes`` and ``correlations``: the L1 norm of each unit's incoming weights and
  its mean activation, and Spearman correlations between those (and SI) and the drops.

Where a unit is zeroed
----------------------
A layer is named by its probe (the post-ReLU activation SI is read from), but its units are
zeroed at the model's *ablation point* (``capture.ablation_layer``,
seltrain/models/probed.py): the tensor the next layer receives, so an ablated unit sends it
exactly 0. Zhou et al.'s code (davidbau/dissect, experiment/intervention_experiment.py,
``test_perclass_pra``) sets ``x[:, units] = 0`` on a layer's output through nethook's
``edit_layer``; Ukita's zeroes the BatchNorm outputs. For cnn7 (conv -> ReLU -> BN) the
ablation point is the BN; elsewhere it is the probe itself. Results name both (``layer`` and
``ablated_module``).

Incoming-weight L1
------------------
Where a BatchNorm normalises the unit's channel right after its conv/linear (ResNets,
vgg16_bn: conv -> BN; cnn7: conv -> ReLU -> BN), the raw L1 of the conv's weights carries no
information: BN divides the scale out (scaling the conv by c scales the running std by c).
``unit_attributes`` therefore reports by default the L1 of the BN-folded effective weight,
``sum |w| * |gamma| / sqrt(running_var + eps)``, which is what the next layer effectively
sees, and the raw L1 beside it; ``l1_weights`` in the result says which one ``l1_norm`` is.
(The ReLU in cnn7 sits between conv and BN, but ReLU is positively homogeneous, so the same
fold holds for the magnitude.)

Fast by construction
--------------------
The naive method runs the whole network once per ablated unit. The fast method splits the
network at the ablated layer with torch.fx (``split_at``): the *head* (input -> layer output)
runs once per batch and its output is cached; the *tail* (layer output -> logits) runs on
``units_per_pass`` copies of the cache stacked along the batch dimension (on GPU), each with a
different set of channels zeroed. The tail executes exactly the operations of the model's own
forward after the layer, so with the same per-sample numerics the logits are bitwise the
ones of the naive method.

Supported models: any model torch.fx can trace in eval mode (plain chains / nn.Sequential,
torchvision ResNets and VGGs, CIFAR-style ResNets, seltrain's cnn7, resnet20/56, resnet18/50,
vgg16_bn and vgg16), where the layer's module runs exactly once per forward pass and the rest of
the network reads the input only through that layer's output (true for every chain and
for residual blocks, whose skips stay inside a block). Otherwise ``split_at`` raises
``UnsupportedModelError`` and the analyses fall back to the naive method with a warning.

Speed: seltrain's resnet20, its last stage (layer3.0-3.2, 192 units), 1,000 images, CPU
(2 cores, shared): 35.8 s fast against 320.8 s naive, 9.0x, identical accuracies (stacked 16
deep; one ablation per pass is faster still on CPU, see ``UNITS_PER_PASS``).

Exactness. ``units_per_pass=1`` (the CPU default) runs the tail at exactly the naive method's
shapes, so it is exact by construction. Stacking changes the batch size the tail runs at. On
CPU (MKL/oneDNN, measured with torch 2.14) the per-sample results of conv and linear layers
do not depend on the batch size once a batch has about a dozen samples, but small GEMMs take
another code path and differ in the last bit, so batches smaller than ``MIN_STACK_BATCH`` are
never stacked. On GPU (stacked 16 deep by default) cuDNN may pick another algorithm for
another batch size; accuracies then match unless two logits are tied to within ~1e-6; pass
``units_per_pass=1`` for a guarantee. tests/unit_tests/test_analysis_ablation.py checks
equality, stacked and not.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx
from scipy import stats
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.analysis.capture import (LayerError, ablation_layer, eval_mode, iterate_batches,
                                       layer_outputs, model_device, num_batches, resolve_layer,
                                       unit_responses)

# Below this many images per batch, per-sample CPU GEMM results can depend on the batch size
# (measured: batches of 1-3, 5-7 and 9-11 rows take another MKL path), so such batches are run
# one ablation per pass to stay bitwise equal to the naive method.
MIN_STACK_BATCH = 16
# Default ablations per tail pass. On CPU stacking does not pay: resnet20's tail after
# layer3.0 on 250 images costs 30 ms per ablation alone and 56 ms per ablation stacked 16 deep
# (cache misses; torch 2.14, 2 cores), so CPU runs one per pass, exact by construction. On a
# GPU a small batch leaves most of the device idle, and stacking fills it.
UNITS_PER_PASS = {"cpu": 1, "cuda": 16}


class UnsupportedModelError(ValueError):
    """The model cannot be split at the layer for the fast method (see module docstring)."""


def _as_index(units) -> Tensor:
    return torch.as_tensor(np.asarray(units, dtype=np.int64).reshape(-1))


@contextmanager
def ablate(module: nn.Module, units: Sequence[int] | Tensor):
    """While active, channels (dim 1) ``units`` of ``module``'s output are zero: a whole
    channel at every position for conv outputs, one feature for linear outputs."""
    idx = _as_index(units)

    def hook(_m, _inp, out):
        out = out.clone()
        out[:, idx.to(out.device)] = 0
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


class _LeafTracer(fx.Tracer):
    """Traces through custom modules as usual but keeps ``leaf`` as one call."""

    def __init__(self, leaf: nn.Module):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return m is self.leaf or super().is_leaf_module(m, qualname)


def split_at(model: nn.Module, layer: str | nn.Module) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split ``model`` at ``layer`` into ``head(x) -> layer output`` and ``tail(h) -> logits``
    so that ``tail(head(x))`` runs exactly the operations of ``model(x)`` in eval mode.

    The tail holds only operations that depend on the layer's output (plus constants);
    nothing of the head runs again. The trace is taken in eval mode, since functional calls
    such as ``F.dropout(x, training=self.training)`` are frozen at trace time. Raises
    UnsupportedModelError when torch.fx cannot trace the model, when the layer runs other
    than once, or when the tail needs another value computed before the layer.
    """
    name, module = resolve_layer(model, layer)
    try:
        with eval_mode(model):
            graph = _LeafTracer(module).trace(model)
    except Exception as e:  # fx raises many types for untraceable Python
        raise UnsupportedModelError(f"torch.fx cannot trace {type(model).__name__} "
                                    f"({type(e).__name__}: {e})") from e
    nodes = list(graph.nodes)
    splits = [n for n in nodes if n.op == "call_module" and n.target == name]
    if len(splits) != 1:
        raise UnsupportedModelError(f"layer '{name}' runs {len(splits)} times in the forward pass "
                                    "of the traced model; the fast method needs exactly one")
    split = splits[0]

    from_input: set[fx.Node] = set()  # values that depend on the model's input
    after: set[fx.Node] = {split}  # values that depend on the layer's output
    for n in nodes:
        if n.op == "placeholder" or any(a in from_input for a in n.all_input_nodes):
            from_input.add(n)
        if any(a in after for a in n.all_input_nodes):
            after.add(n)

    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes:  # everything up to the layer, in the model's own order
        env[n] = head.node_copy(n, env.__getitem__)
        if n is split:
            break
    head.output(env[split])

    tail = fx.Graph()
    tenv: dict[fx.Node, fx.Node] = {split: tail.placeholder("h")}

    def lookup(a: fx.Node) -> fx.Node:
        if a not in tenv:
            if a in from_input:
                raise UnsupportedModelError(
                    f"after layer '{name}' the network also reads '{a.name}', computed before "
                    "it (a skip connection around the layer?); the fast method needs the rest "
                    "of the network to depend on the input only through the layer's output")
            tenv[a] = tail.node_copy(a, lookup)  # a constant (parameter, buffer, literal)
        return tenv[a]

    for n in nodes:
        if n.op == "output":
            tail.node_copy(n, lookup)
        elif n in after and n is not split:
            tenv[n] = tail.node_copy(n, lookup)
    return fx.GraphModule(model, head), fx.GraphModule(model, tail)


def _ablation_logits(model: nn.Module, layer, x, y, make_unit_sets: Callable[[int], list[Tensor]],
                     *, fast: bool, units_per_pass: int | None, batch_size: int, device,
                     desc: str,
                     info: dict | None = None
                     ) -> Iterator[tuple[Tensor, Sequence[int] | None, Tensor]]:
    """The engine behind every ablation analysis. Per batch, yield ``(y, None, logits[1, B, K])``
    for the intact network, then ``(y, ids, logits[R, B, K])`` for the unit sets ``ids``
    (indices into ``make_unit_sets(U)``). Logits are float32 on the CPU. Units are zeroed at
    ``layer``'s ablation point (``capture.ablation_layer``). ``info`` receives the layer's
    path, the ablated module's path, its number of units and the method actually used."""
    info = {} if info is None else info
    info["layer"] = resolve_layer(model, layer)[0]
    name, module = ablation_layer(model, layer)
    info["ablated_module"] = name
    device = torch.device(device) if device is not None else model_device(model)
    if units_per_pass is None:
        units_per_pass = UNITS_PER_PASS.get(device.type, 16)
    total = num_batches(x, batch_size)
    bar = tqdm(total=total, desc=desc, unit="batch", disable=None, leave=False)
    unit_sets: list[Tensor] | None = None
    with eval_mode(model):
        if fast:
            try:
                head, tail = split_at(model, name)
            except UnsupportedModelError as e:
                warnings.warn(f"fast ablation unavailable ({e}); using the naive method",
                              stacklevel=3)
                fast = False
        info["method"] = "fast" if fast else "naive"
        for xb, yb in iterate_batches(x, y, batch_size):
            if yb is None:
                raise ValueError("ablation needs labels: pass y, or batches of (x, y)")
            xb, yb = xb.to(device), torch.as_tensor(yb).long().cpu()
            n_img = len(xb)
            if fast:
                with torch.no_grad():
                    h = head(xb)
                    base = tail(h.clone())  # clone: the tail may write into its input in place
                if unit_sets is None:
                    info["units"] = h.shape[1]
                    unit_sets = make_unit_sets(h.shape[1])
                yield yb, None, base.float().cpu()[None]
                per_pass = max(1, units_per_pass) if n_img >= MIN_STACK_BATCH else 1
                for start in range(0, len(unit_sets), per_pass):
                    ids = range(start, min(start + per_pass, len(unit_sets)))
                    stacked = h.repeat(len(ids), *([1] * (h.dim() - 1)))
                    for r, m in enumerate(ids):
                        stacked[r * n_img:(r + 1) * n_img, unit_sets[m].to(h.device)] = 0
                    with torch.no_grad():
                        logits = tail(stacked)
                    yield yb, ids, logits.float().cpu().view(len(ids), n_img, -1)
            else:
                calls: list[Tensor] = []
                handle = module.register_forward_hook(lambda _m, _i, out: calls.append(out))
                with torch.no_grad():
                    base = model(xb)
                handle.remove()
                if len(calls) != 1:
                    raise LayerError(f"layer '{name}' ran {len(calls)} times in one forward "
                                     "pass; ablating it would be ambiguous")
                if unit_sets is None:
                    info["units"] = calls[0].shape[1]
                    unit_sets = make_unit_sets(calls[0].shape[1])
                yield yb, None, base.float().cpu()[None]
                for m, units in enumerate(unit_sets):
                    with ablate(module, units), torch.no_grad():
                        logits = model(xb)
                    yield yb, [m], logits.float().cpu()[None]
            bar.update()
    bar.close()


def _class_hits(yb: Tensor, logits: Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Correct predictions per class [R, K] and images per class [K] of one batch."""
    hits = (logits.argmax(-1) == yb[None]).double().numpy()  # [R, B]
    onehot = np.eye(num_classes)[yb.numpy()]  # [B, K]
    return hits @ onehot, onehot.sum(0)


def _class_predictions(logits: Tensor, num_classes: int) -> np.ndarray:
    """Images predicted as each class [R, K] of one batch."""
    pred = logits.argmax(-1).numpy()  # [R, B]
    return np.stack([np.bincount(p, minlength=num_classes)[:num_classes] for p in pred]
                    ).astype(np.float64)


def balanced_class_accuracy(correct: np.ndarray, predicted: np.ndarray, counts: np.ndarray
                            ) -> np.ndarray:
    """Per class, the balanced accuracy of "is it this class?" as a binary decision,
    (recall + true-negative rate) / 2, as dissect's ``test_perclass_pra`` scores a class
    (davidbau/dissect, experiment/intervention_experiment.py). ``correct``/``predicted``:
    [..., K] correct and predicted counts per class, ``counts`` [K] images per class. NaN
    where a class or its complement is absent."""
    n = counts.sum()
    recall = _ratio(correct, counts)
    true_neg = (n - counts) - (predicted - correct)
    return (recall + _ratio(true_neg, n - counts)) / 2


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def single_unit_ablation(model: nn.Module, layer: str | nn.Module, x, y=None,
                         num_classes: int | None = None, *, fast: bool = True,
                         units_per_pass: int | None = None, batch_size: int = 256,
                         device=None) -> dict:
    """Zero each unit of ``layer`` in turn and measure accuracy (Zhou et al. 2018).

    Returns a dict of numpy arrays (U units, K classes; accuracies are fractions):
    ``baseline_acc``, ``baseline_class_acc[K]``, ``ablated_acc[U]``, ``ablated_class_acc[U, K]``,
    ``overall_drop[U]`` (baseline minus ablated accuracy), ``class_drops[U, K]``,
    ``max_class_drop[U]``, ``class_drop_std[U]`` (population std over classes), plus
    ``class_counts[K]``, ``n_images``, ``layer``, ``ablated_module`` (where units are zeroed,
    module docstring) and ``method``. Beside the per-class accuracy (recall, METHODS.md sec.
    3), dissect's per-class score: ``baseline_class_balanced_acc[K]``,
    ``ablated_class_balanced_acc[U, K]`` and ``class_balanced_drops[U, K]``
    (``balanced_class_accuracy``). Classes absent from the data
    have NaN accuracies and are skipped by the summaries. ``num_classes`` defaults to the
    number of logits. ``fast``: the split-network method (module docstring) or the naive
    one; ``units_per_pass``: ablations per tail pass (default ``UNITS_PER_PASS``: 1 on CPU,
    16 on GPU).
    """
    correct = base = counts = None
    info: dict = {}
    name, _ = resolve_layer(model, layer)
    for yb, ids, logits in _ablation_logits(model, layer, x, y,
                                            lambda n: [torch.tensor([u]) for u in range(n)],
                                            fast=fast, units_per_pass=units_per_pass,
                                            batch_size=batch_size, device=device,
                                            desc=f"ablate {name}", info=info):
        k = num_classes or logits.shape[-1]
        if correct is None:
            correct, base, counts = np.zeros((info["units"], k)), np.zeros(k), np.zeros(k)
            predicted, base_predicted = np.zeros((info["units"], k)), np.zeros(k)
        hits, n = _class_hits(yb, logits, k)
        preds = _class_predictions(logits, k)
        if ids is None:
            base += hits[0]
            base_predicted += preds[0]
            counts += n
        else:
            correct[list(ids)] += hits
            predicted[list(ids)] += preds
    if correct is None:
        raise ValueError("no data: x is empty")
    n_images = counts.sum()
    base_class = _ratio(base, counts)
    abl_class = _ratio(correct, counts[None])
    drops = base_class[None] - abl_class
    base_bal = balanced_class_accuracy(base, base_predicted, counts)
    abl_bal = balanced_class_accuracy(correct, predicted, counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows only with no data
        max_drop, drop_std = np.nanmax(drops, 1), np.nanstd(drops, 1)
    return {
        "layer": name, "ablated_module": info["ablated_module"], "method": info["method"],
        "n_images": int(n_images),
        "class_counts": counts.astype(np.int64),
        "baseline_acc": float(base.sum() / n_images), "baseline_class_acc": base_class,
        "ablated_acc": correct.sum(1) / n_images, "ablated_class_acc": abl_class,
        "overall_drop": (base.sum() - correct.sum(1)) / n_images,
        "class_drops": drops, "max_class_drop": max_drop, "class_drop_std": drop_std,
        "baseline_class_balanced_acc": base_bal, "ablated_class_balanced_acc": abl_bal,
        "class_balanced_drops": base_bal[None] - abl_bal,
    }


def ablation_orders(si: np.ndarray, n_random: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Unit orders for cumulative ablation: SI high first, SI low first (ties by unit index)
    and ``n_random`` random permutations (numpy default_rng(seed))."""
    si = np.asarray(si, dtype=np.float64)
    if not np.all(np.isfinite(si)):
        raise ValueError("si must be finite")
    rng = np.random.default_rng(seed)
    orders = {"si_high_first": np.argsort(-si, kind="stable"),
              "si_low_first": np.argsort(si, kind="stable")}
    for i in range(n_random):
        orders[f"random_{i}"] = rng.permutation(len(si))
    return orders


def cumulative_ablation(model: nn.Module, layer: str | nn.Module, x, y=None, si=None, *,
                        fractions: Sequence[float] | None = None,
                        n_random: int = 5, seed: int = 0, fast: bool = True,
                        units_per_pass: int | None = None, batch_size: int = 256,
                        device=None) -> dict:
    """Accuracy against the fraction of ``layer``'s units ablated (Morcos et al. 2018).

    ``si[U]``: the class selectivity index per unit, which sets the orders. ``fractions``
    default to 0, 0.1, ..., 1; a fraction f ablates the first ``floor(f * U + 0.5)`` units of
    an order. Returns ``fractions[F]``,
    ``n_ablated[F]``, ``si_high_first[F]``, ``si_low_first[F]``, ``random[n_random, F]``,
    ``random_mean[F]``, ``random_std[F]`` (population std) and ``baseline_acc``.
    """
    if si is None:
        raise ValueError("cumulative_ablation needs si, the selectivity index per unit")
    name, _ = resolve_layer(model, layer)
    fractions = np.linspace(0, 1, 11) if fractions is None else np.asarray(fractions, np.float64)
    orders = ablation_orders(si, n_random, seed)
    n_units = len(np.asarray(si))
    n_abl = np.floor(fractions * n_units + 0.5).astype(np.int64)

    def unit_sets(n: int) -> list[Tensor]:
        if n != n_units:
            raise ValueError(f"si has {n_units} entries but layer '{name}' has {n} units")
        return [torch.as_tensor(o[:k]) for o in orders.values() for k in n_abl]

    correct = np.zeros(len(orders) * len(fractions))
    base = n_images = 0
    info: dict = {}
    for yb, ids, logits in _ablation_logits(model, layer, x, y, unit_sets, fast=fast,
                                            units_per_pass=units_per_pass, batch_size=batch_size,
                                            device=device, desc=f"cumulative ablation {name}",
                                            info=info):
        hits = (logits.argmax(-1) == yb[None]).sum(1).numpy()
        if ids is None:
            base += hits[0]
            n_images += len(yb)
        else:
            correct[list(ids)] += hits
    acc = (correct / n_images).reshape(len(orders), len(fractions))
    rand = acc[2:]
    return {
        "layer": name, "fractions": fractions, "n_ablated": n_abl,
        "si_high_first": acc[0], "si_low_first": acc[1], "random": rand,
        "random_mean": rand.mean(0) if n_random else np.full(len(fractions), np.nan),
        "random_std": rand.std(0) if n_random else np.full(len(fractions), np.nan),
        "baseline_acc": base / n_images, "n_images": int(n_images), "method": info["method"],
        "ablated_module": info["ablated_module"],
    }


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
    try:
        with eval_mode(model), torch.no_grad():
            model(x_example.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
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
    try:
        with eval_mode(model), torch.no_grad():
            model(x_example.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
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
    for outs, xb, yb in layer_outputs(model, {name: module}, x, y, batch_size=batch_size,
                                      device=device, desc=f"attributes {name}"):
        acts = unit_responses(outs[name]).double().cpu()
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
        means = _ratio(sums.numpy(), counts.numpy()[:, None]).T  # [U, K]
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
