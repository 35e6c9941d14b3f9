"""Unit ablation: what happens to accuracy when units are silenced (docs/METHODS.md section 3).

- ``single_unit_ablation``: zero one unit (a whole channel, every position) at a time and
  measure the overall and per-class accuracy drops (Zhou, Sun, Bau & Torralba 2018,
  "Revisiting the importance of individual units in CNNs via ablation").
- ``cumulative_ablation``: zero growing fractions of a layer, in order of class selectivity
  (high first, low first) or at random, and read accuracy (Morcos et al. 2018).
- ``ablated_logits``: the engine behind both, and behind orientation's top/bottom-gOSI
  ablation. The attributes the drops are correlated with live in ``attributes``.
- ``compute``: ``seltrain analyze ablation`` (``AblationOptions``).

Where a unit is zeroed
----------------------
A layer is named by its probe (the post-ReLU activation SI is read from), but its units are
zeroed at the model's *ablation point* (``probes.ablation_layer``, seltrain/models/probed.py):
the tensor the next layer receives, so an ablated unit sends it exactly 0. Zhou et al.'s code
(davidbau/dissect, experiment/intervention_experiment.py, ``test_perclass_pra``) sets
``x[:, units] = 0`` on a layer's output through nethook's ``edit_layer``; Ukita's zeroes the
BatchNorm outputs. For cnn7 (conv -> ReLU -> BN) the ablation point is the BN; elsewhere it is
the probe itself. Results name both (``layer``, ``ablated_module``).

Fast by construction
--------------------
The naive method runs the whole network once per ablated unit. The fast method splits the
network at the ablated layer with torch.fx (``split_at``): the *head* (input -> layer output)
runs once per batch and its output is cached; the *tail* (layer output -> logits) runs on
``units_per_pass`` copies of the cache stacked along the batch dimension, each with a
different set of channels zeroed. The tail executes exactly the operations of the model's own
forward after the layer, so with the same per-sample numerics the logits are bitwise the
ones of the naive method.

Supported models: any model torch.fx can trace in eval mode (plain chains / nn.Sequential,
torchvision ResNets and VGGs, CIFAR-style ResNets, seltrain's cnn7, resnet20/56, resnet18/50,
vgg16_bn and vgg16, EfficientNet), where the layer's module runs exactly once per forward pass
and the rest of the network reads the input only through that layer's output (true for every
chain and for residual blocks, whose skips stay inside a block); the input's batch size
(``x.size(0)``, which EfficientNet reads to flatten) is taken from the layer's output.
Otherwise ``split_at`` raises ``UnsupportedModelError`` and the analyses fall back to the
naive method with a warning.

Speed: seltrain's resnet20, its last stage (layer3.0-3.2, 192 units), 1,000 images, CPU
(2 cores, shared): 35.8 s fast against 320.8 s naive, 9.0x, identical accuracies (stacked 16
deep; one ablation per pass is faster still on CPU, see ``MAX_UNITS_PER_PASS``).

Units per pass, and memory
--------------------------
Each stacked ablation costs about ``PASS_COST`` times the cached layer output of a batch
(its copy in the stack, plus the tail's activations in flight): for resnet50's layer1 at
224 px and 256 images that is 3 x 822 MB. ``units_per_pass=None`` sizes the stack from the
memory there is (``auto_units_per_pass``): half of the free CUDA memory
(``torch.cuda.mem_get_info``), or ``CPU_BUDGET`` on the CPU, capped by
``MAX_UNITS_PER_PASS`` (1 on the CPU, where stacking does not pay). The unit sets are moved
to the device once, and hits are counted there: the host reads the counts once per call, not
once per pass.

Exactness. ``units_per_pass=1`` (the CPU default) runs the tail at exactly the naive method's
shapes, so it is exact by construction. Stacking changes the batch size the tail runs at. On
CPU (MKL/oneDNN, measured with torch 2.14) the per-sample results of conv and linear layers
do not depend on the batch size once a batch has about a dozen samples, but small GEMMs take
another code path and differ in the last bit, so batches smaller than ``MIN_STACK_BATCH`` are
never stacked. On GPU cuDNN may pick another algorithm for another batch size; accuracies
then match unless two logits are tied to within ~1e-6; pass ``units_per_pass=1`` for a
guarantee. tests/unit_tests/test_analysis_ablation.py checks equality, stacked and not.

Early in training (Ranadive et al. 2023)
----------------------------------------
Their reference code (Omkar-Ranadive/Class-Selective-Neurons, ``run_class_selectivity_cp.py``
and ``run_random_cp.py``, read, not copied) opens the per-epoch checkpoints of ResNet50 on
ImageNet (their 1-based ``checkpoint_epoch1`` to ``5`` and ``31`` to ``35``: after 0-based
epochs 0-4 and 30-34), ranks a stage's channels by class selectivity and zeroes the
highest-SI channels (or random ones) at the output of every bottleneck block of that stage
at once, 0, 10, 20, ... channels, reporting top-1 and top-5 accuracy. seltrain keeps such
checkpoints with ``run.keep_epochs`` and ablates one with ``--checkpoint epoch_NNN``
(docs/REPRODUCE.md). Deviations, each deliberate: a curve ablates one probed layer (a
block's output), not a whole stage's blocks together, which keeps the layer-by-layer
ablation point of the rest of this module; it steps through fractions of the layer's units
(``floor(f * U + 0.5)`` for f = 0, 0.1, ..., 1), not 10 channels at a time; it reports
top-1 accuracy only; and it adds the SI-low-first order and single-unit drops, which their
scripts do not have.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn
from tqdm import tqdm

# The fan-out's parts of an ablation (and the counts single_unit_ablation is made of).
from seltrain.analysis.ablation_parts import (ORDER_SEED, UNIT_CHUNKS,  # noqa: F401
                                              ablation_counts, chunk_label, chunks,
                                              compute_chunk, cumulative_counts,
                                              cumulative_result, join_counts, merge)
from seltrain.analysis.options import AnalysisOptions, option, whole_number
from seltrain.analysis.serialize import write_csv, write_json
from seltrain.analysis.target import Target, on_split
from seltrain.analysis.unit_selectivity import unit_selectivity
from seltrain.probes import (LayerError, ablation_layer, eval_mode, iterate_batches,
                             model_device, num_batches, resolve_layer)

# Below this many images per batch, per-sample CPU GEMM results can depend on the batch size
# (measured: batches of 1-3, 5-7 and 9-11 rows take another MKL path), so such batches are run
# one ablation per pass to stay bitwise equal to the naive method.
MIN_STACK_BATCH = 16
# Most ablations per tail pass. On CPU stacking does not pay: resnet20's tail after layer3.0
# on 250 images costs 30 ms per ablation alone and 56 ms per ablation stacked 16 deep (cache
# misses; torch 2.14, 2 cores), so CPU runs one per pass, exact by construction. On a GPU a
# small batch leaves most of the device idle, and stacking fills it.
MAX_UNITS_PER_PASS = {"cpu": 1, "cuda": 64}
# Memory one stacked ablation takes, in cached layer outputs of the batch: its copy in the
# stack, and the tail's activations in flight (in these networks no layer after the ablated
# one outputs more than it; a conv's input and output are alive together).
PASS_COST = 3
CUDA_MEMORY_SHARE = 0.5  # of the free device memory: the rest for the allocator's slack
CPU_BUDGET = 1 << 30  # bytes per tail pass on the CPU


def units_per_pass(bytes_per_unit: int, budget: int, cap: int) -> int:
    """How many ablations one tail pass stacks: as many as ``budget`` bytes hold at
    ``bytes_per_unit`` each, at least 1 and at most ``cap``."""
    return int(max(1, min(cap, budget // max(1, bytes_per_unit))))


def auto_units_per_pass(h: Tensor, device: torch.device) -> int:
    """``units_per_pass`` for the cached layer output ``h`` of one batch on ``device``: half the
    free CUDA memory, or ``CPU_BUDGET``, capped by ``MAX_UNITS_PER_PASS``."""
    if device.type == "cuda":
        budget = int(torch.cuda.mem_get_info(device)[0] * CUDA_MEMORY_SHARE)
    else:
        budget = CPU_BUDGET
    cap = MAX_UNITS_PER_PASS.get(device.type, MAX_UNITS_PER_PASS["cuda"])
    return units_per_pass(PASS_COST * h.numel() * h.element_size(), budget, cap)


class UnsupportedModelError(ValueError):
    """The model cannot be split at the layer for the fast method (see module docstring)."""


def _as_index(units) -> Tensor:
    if isinstance(units, Tensor):  # kept where it is: a device index costs no copy per pass
        return units.reshape(-1).long()
    return torch.as_tensor(np.asarray(units, dtype=np.int64).reshape(-1))


@contextmanager
def ablate(module: nn.Module, units: Sequence[int] | Tensor):
    """While active, channels (dim 1) ``units`` of ``module``'s output are zero: a whole
    channel at every position for conv outputs, one feature for linear outputs."""
    idx = _as_index(units)

    def hook(_m, _inp, out):
        nonlocal idx
        if idx.device != out.device:
            idx = idx.to(out.device)  # once, not per forward pass
        out = out.clone()
        out[:, idx] = 0
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
    inputs = [n for n in nodes if n.op == "placeholder"]

    def lookup(a: fx.Node) -> fx.Node:
        if a not in tenv:
            if _batch_size_of_input(a, inputs):
                # x.size(0) (EfficientNet's ``bs``): the batch the tail runs on is h's, also
                # when ablations are stacked along it
                tenv[a] = tail.call_method("size", (tenv[split], 0))
            elif a in from_input:
                raise UnsupportedModelError(
                    f"after layer '{name}' the network also reads '{a.name}', computed before "
                    "it (a skip connection around the layer?); the fast method needs the rest "
                    "of the network to depend on the input only through the layer's output")
            else:
                tenv[a] = tail.node_copy(a, lookup)  # a constant (parameter, buffer, literal)
        return tenv[a]

    for n in nodes:
        if n.op == "output":
            tail.node_copy(n, lookup)
        elif n in after and n is not split:
            tenv[n] = tail.node_copy(n, lookup)
    return fx.GraphModule(model, head), fx.GraphModule(model, tail)


def _batch_size_of_input(node: fx.Node, inputs: list[fx.Node]) -> bool:
    """Whether ``node`` is ``x.size(0)`` of the model's input ``x``."""
    if node.op != "call_method" or node.target != "size" or not node.args \
            or node.args[0] not in inputs:
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dim == 0


def ablated_logits(model: nn.Module, layer, x, y, make_unit_sets: Callable[[int], list[Tensor]],
                   *, fast: bool = True, units_per_pass: int | None = None,
                   batch_size: int = 256, device=None, desc: str = "ablation",
                   info: dict | None = None) -> Iterator[tuple[Tensor, range | None, Tensor]]:
    """The engine behind every ablation analysis. Per batch, yield ``(y, None, logits[1, B,
    K])`` for the intact network, then ``(y, ids, logits[R, B, K])`` for the unit sets
    ``ids`` (a range of indices into ``make_unit_sets(U)``). Labels and float32 logits stay
    on the device, so a consumer can count there and read the host once. Units are zeroed at
    ``layer``'s ablation point (``probes.ablation_layer``). ``units_per_pass``: unit sets per
    tail pass of the fast method (None: ``auto_units_per_pass``). ``info`` receives the
    layer's path, the ablated module's path, its number of units, the units per pass and the
    method actually used."""
    info = {} if info is None else info
    info["layer"] = resolve_layer(model, layer)[0]
    name, module = ablation_layer(model, layer)
    info["ablated_module"] = name
    device = torch.device(device) if device is not None else model_device(model)
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
            xb = xb.to(device, non_blocking=True)
            yb = torch.as_tensor(yb).long().to(device, non_blocking=True)
            n_img = len(xb)
            if fast:
                with torch.no_grad():
                    h = head(xb)
                    base = tail(h.clone())  # clone: the tail may write into its input in place
                if unit_sets is None:
                    info["units"] = h.shape[1]
                    unit_sets = [_as_index(u).to(device) for u in make_unit_sets(h.shape[1])]
                    info["units_per_pass"] = max(1, units_per_pass) if units_per_pass \
                        else auto_units_per_pass(h, device)
                yield yb, None, base.float()[None]
                per_pass = info["units_per_pass"] if n_img >= MIN_STACK_BATCH else 1
                for start in range(0, len(unit_sets), per_pass):
                    ids = range(start, min(start + per_pass, len(unit_sets)))
                    stacked = h.repeat(len(ids), *([1] * (h.dim() - 1)))
                    for r, m in enumerate(ids):
                        stacked[r * n_img:(r + 1) * n_img, unit_sets[m]] = 0
                    with torch.no_grad():
                        logits = tail(stacked)
                    yield yb, ids, logits.float().view(len(ids), n_img, -1)
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
                    unit_sets = [_as_index(u).to(device) for u in make_unit_sets(info["units"])]
                    info["units_per_pass"] = 1
                yield yb, None, base.float()[None]
                for m, units in enumerate(unit_sets):
                    with ablate(module, units), torch.no_grad():
                        logits = model(xb)
                    yield yb, range(m, m + 1), logits.float()[None]
            bar.update()
    bar.close()


def _class_hits(yb: Tensor, logits: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Correct predictions per class [R, K] and images per class [K] of one batch, float64 on
    the logits' device."""
    onehot = torch.nn.functional.one_hot(yb, num_classes).double()  # [B, K]
    hits = (logits.argmax(-1) == yb[None]).double()  # [R, B]
    return hits @ onehot, onehot.sum(0)


def _class_predictions(logits: Tensor, num_classes: int) -> Tensor:
    """Images predicted as each class [R, K] of one batch (predictions of a logit beyond
    ``num_classes`` are not counted), float64 on the logits' device."""
    pred = logits.argmax(-1)  # [R, B]
    width = max(num_classes, logits.shape[-1])
    out = torch.zeros(len(pred), width, dtype=torch.float64, device=logits.device)
    return out.scatter_add_(1, pred, torch.ones_like(pred, dtype=torch.float64))[:, :num_classes]


def balanced_class_accuracy(correct: np.ndarray, predicted: np.ndarray, counts: np.ndarray
                            ) -> np.ndarray:
    """Per class, the balanced accuracy of "is it this class?" as a binary decision,
    (recall + true-negative rate) / 2, as dissect's ``test_perclass_pra`` scores a class
    (davidbau/dissect, experiment/intervention_experiment.py). ``correct``/``predicted``:
    [..., K] correct and predicted counts per class, ``counts`` [K] images per class. NaN
    where a class or its complement is absent."""
    n = counts.sum()
    recall = safe_ratio(correct, counts)
    true_neg = (n - counts) - (predicted - correct)
    return (recall + safe_ratio(true_neg, n - counts)) / 2


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (an absent class has no accuracy)."""
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
    module docstring), ``method`` and ``units_per_pass``. Beside the per-class accuracy
    (recall, docs/METHODS.md sec. 3), dissect's per-class score:
    ``baseline_class_balanced_acc[K]``, ``ablated_class_balanced_acc[U, K]`` and
    ``class_balanced_drops[U, K]`` (``balanced_class_accuracy``). Classes absent from the data
    have NaN accuracies and are skipped by the summaries. ``num_classes`` defaults to the
    number of logits. ``fast``: the split-network method (module docstring) or the naive
    one; ``units_per_pass``: ablations per tail pass (default: ``auto_units_per_pass``).
    """
    return ablation_result(ablation_counts(
        model, layer, x, y, num_classes, fast=fast, units_per_pass=units_per_pass,
        batch_size=batch_size, device=device))


def ablation_result(a: dict) -> dict:
    """``single_unit_ablation``'s result from the counts of ``ablation_counts``."""
    name, info = a["name"], a["info"]
    correct, base, counts = a["correct"], a["base"], a["counts"]
    n_images = counts.sum()
    base_class = safe_ratio(base, counts)
    abl_class = safe_ratio(correct, counts[None])
    drops = base_class[None] - abl_class
    base_bal = balanced_class_accuracy(base, a["base_predicted"], counts)
    abl_bal = balanced_class_accuracy(correct, a["predicted"], counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows only with no data
        max_drop, drop_std = np.nanmax(drops, 1), np.nanstd(drops, 1)
    return {
        "layer": name, "ablated_module": info["ablated_module"], "method": info["method"],
        "units_per_pass": info["units_per_pass"], "n_images": int(n_images),
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
    counts = cumulative_counts(model, layer, x, y, ablation_orders(si, n_random, seed),
                               fractions, fast=fast, units_per_pass=units_per_pass,
                               batch_size=batch_size, device=device)
    return cumulative_result(counts)


# --------------------------------------------------------------------------- the analysis

@dataclass
class AblationOptions(AnalysisOptions):
    """single-unit (and cumulative) ablation, correlations of the drops with SI, L1 norm and
    mean activation"""

    cumulative: bool = option(False, "also cumulative ablation curves (SI high/low first, "
                              "random)")
    n_random: int = option(5, "random orders for --cumulative", parse=whole_number,
                           metavar="N")
    l1_weights: str = option("bn_folded", "incoming-weight L1: of the BatchNorm-folded "
                             "effective weight (BN cancels the raw conv scale) or of the raw "
                             "weight", choices=("bn_folded", "raw"))
    rank_split: str = option("same", "the split whose SI ranks the units (same: --split's)",
                             choices=("same", "val", "test"))
    unit_batch: int = option(0, "ablations per pass of the network after the layer (0: auto, "
                             "sized from free memory on CUDA, 1 on the CPU); the results do "
                             "not depend on it", parse=whole_number, metavar="N", shown="0")

    def check(self) -> None:
        super().check()
        self.at_least("n_random", 0)
        self.at_least("unit_batch", 0)


Options = AblationOptions  # what the registry (seltrain/analysis/registry.py) reads

# What `seltrain report --analyses` plots against alpha and mean SI: keys of the summary.
SWEEP_HEADLINE = ("mean_overall_drop",)


def compute(target: Target, opts: AblationOptions) -> dict:
    """``seltrain analyze ablation``: per layer, single-unit ablation, the unit attributes and
    their correlations with the drops, and (``opts.cumulative``) cumulative ablation; a
    summary per layer and over layers."""
    return _analyse(target, opts, lambda name, **kw: single_unit_ablation(
        target.model, name, target.data, **kw))


def _analyse(target: Target, opts: AblationOptions, single, cumulative=None) -> dict:
    """``compute`` with ``single(layer, num_classes=, units_per_pass=, device=)``: a layer's
    single-unit ablation, and ``cumulative(layer, si)``: its cumulative curves (default:
    ``cumulative_ablation``)."""
    from seltrain.analysis.attributes import correlations, unit_attributes

    ranked = on_split(target, opts.rank_split, "--rank-split")  # where SI ranks the units
    sel = unit_selectivity(ranked)
    k = target.info.num_classes
    per_pass = opts.unit_batch or None
    layers, summary = {}, {"layers": {}, "rank_split": ranked.split, "score_split": target.split}
    for name in target.layers:
        res = single(name, num_classes=k, units_per_pass=per_pass, device=target.device)
        attrs = unit_attributes(target.model, name, target.data, num_classes=k,
                                l1_weights=opts.l1_weights, device=target.device)
        si = sel["si"][name]
        pref = attrs["preferred_class"]
        corr = correlations(res, {"si": si, "l1_norm": attrs["l1_norm"],
                                  "mean_activation": attrs["mean_activation"]}, pref)
        layers[name] = {"single_unit": res, "attributes": attrs, "si": si,
                        "preferred_class_drop": res["class_drops"][np.arange(len(pref)), pref],
                        "correlations": corr}
        if opts.cumulative:
            layers[name]["cumulative"] = cumulative(name, si) if cumulative else \
                cumulative_ablation(target.model, name, target.data, si=si,
                                    n_random=opts.n_random, seed=ORDER_SEED,
                                    units_per_pass=per_pass, device=target.device)
        rho = corr["max_class_drop"]["si"]
        summary["layers"][name] = {
            "baseline_acc": res["baseline_acc"],
            "mean_overall_drop": float(np.mean(res["overall_drop"])),
            "mean_max_class_drop": float(np.nanmean(res["max_class_drop"])),
            "rho_si_max_class_drop": rho["rho"], "p_si_max_class_drop": rho["p"],
            "rho_si_overall_drop": corr["overall_drop"]["si"]["rho"],
            "method": res["method"], "ablated_module": res["ablated_module"],
            "l1_weights": attrs["l1_weights"], "l1_batchnorm": attrs["l1_batchnorm"]}
    first = next(iter(summary["layers"].values()), {})
    summary["baseline_acc"] = first.get("baseline_acc")
    summary["mean_overall_drop"] = float(np.mean([v["mean_overall_drop"]
                                                  for v in summary["layers"].values()]))
    return {"layers": layers, "summary": summary}


def write(r: dict, target: Target, opts: AblationOptions, out: str) -> list[str]:
    """units_<layer>.csv, class_drops_<layer>.csv, ablation_<layer>.json, the
    SI-against-drop scatter plots (and cumulative curves) per layer, and summary.json in
    ``out``; the lines the command prints."""
    from seltrain.analysis import plots

    lines = [f"single-unit ablation, {len(target.layers)} layers: drops on {target.data.num_images}"
             f" {target.split} images, units ranked by SI on {r['summary']['rank_split']}"]
    for name, layer in r["layers"].items():
        res, attrs, si = layer["single_unit"], layer["attributes"], layer["si"]
        corr = layer["correlations"]
        write_csv(os.path.join(out, f"units_{name}.csv"), {
            "unit": range(len(si)), "si": si, "preferred_class": attrs["preferred_class"],
            "l1_norm": attrs["l1_norm"], "l1_norm_raw": attrs["l1_norm_raw"],
            "mean_activation": attrs["mean_activation"], "overall_drop": res["overall_drop"],
            "max_class_drop": res["max_class_drop"], "class_drop_std": res["class_drop_std"],
            "preferred_class_drop": layer["preferred_class_drop"]})
        drops = res["class_drops"]
        write_csv(os.path.join(out, f"class_drops_{name}.csv"),
                  {"unit": range(len(si)),
                   **{f"class_{c}": drops[:, c] for c in range(drops.shape[1])}})
        for drop, ylabel in (("max_class_drop", "max class drop"),
                             ("overall_drop", "overall accuracy drop")):
            plots.drop_scatter(si, res[drop], os.path.join(out, f"si_vs_{drop}_{name}.png"),
                               ylabel=ylabel, rho=corr[drop]["si"]["rho"], title=name)
        if "cumulative" in layer:
            plots.cumulative_ablation(layer["cumulative"],
                                      os.path.join(out, f"cumulative_{name}.png"))
        write_json(os.path.join(out, f"ablation_{name}.json"), layer)
        s = r["summary"]["layers"][name]
        lines.append(f"  {name:<24} baseline {s['baseline_acc']:.4f}  mean drop "
                     f"{s['mean_overall_drop']:+.4f}  max class drop (mean) "
                     f"{s['mean_max_class_drop']:.4f}  rho(SI, max class drop) "
                     f"{s['rho_si_max_class_drop']:.3f} (p {s['p_si_max_class_drop']:.2g})")
    write_json(os.path.join(out, "summary.json"), r["summary"])
    return lines
