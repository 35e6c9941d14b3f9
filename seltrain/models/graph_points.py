"""Where a unit of any network is read and zeroed, found from the network's graph.

seltrain's own models name their probe and ablation points in tables (``Probed``,
seltrain/models/probed.py). A network seltrain did not train has no table, so its points are
found from its computation graph, by the same rule the tables follow:

* a **layer** is a module that runs exactly once per forward pass and outputs one tensor
  [N, C, ...] (C units): a conv, a linear layer, a pool, or a block of them (a ResNet
  ``layer4.1``). Containers (``nn.Sequential``, ``ModuleList``), BatchNorm, activations,
  dropout, identity, flatten and padding modules are steps between layers, not layers, and
  the layer whose output is the network's output (the logits) is left out;
* its **ablation point** is the tensor the next layer receives: the layer's output followed
  through every BatchNorm and activation that alone consumes it (conv -> BN -> ReLU: the
  ReLU; cnn7's conv -> ReLU -> BN: the BN; a residual block: the block itself). Zeroing a
  unit there sends the next layer exactly 0;
* its **probe point** (where the unit is read, spatially averaged, for SI, orientation and
  the attributes) is the last activation of that chain (the post-ReLU activation,
  docs/METHODS.md section 1), or the ablation point where no activation follows.

How the graph is read: one forward pass of an example with a forward hook on every module
gives each module's call count, output shape and forward order; a torch.fx symbolic trace
(``torch.fx.Tracer``, with the layers as leaves, in eval mode) gives what consumes each
layer's output. Only a node with a single consumer is followed, so a chain stops at a skip
connection, a pool, a flatten or a second reader.

A point must be a module that runs once (hooks read and zero module outputs). Where the chain
ends in an activation that is not such a module (a ``F.relu`` call, or one ``nn.ReLU`` that
a block calls twice, as torchvision's BasicBlock and EfficientNet's ``_swish`` do):

* the unit is zeroed at the last module before it: every activation here maps 0 to 0, so
  the next layer still receives exactly 0;
* a ReLU or ReLU6 is idempotent (relu(relu(x)) = relu(x), and so are its gradients), so it
  is *folded* into that module: a forward hook applies it to the module's output
  (``fold_activations``), the module's output is then the post-activation tensor, and the
  network computes what it did before;
* any other activation (GELU, SiLU, ...) is not idempotent: the unit is read before it,
  and the listing says so.

A network torch.fx cannot trace keeps every layer's own output as both points, with a
warning. seltrain's architectures give the points of their tables
(tests/unit_tests/test_graph_points.py checks every one).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn import functional as F

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# Activations that map 0 to 0, so a zero sent through them stays zero (sigmoid is not one).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
               nn.Hardswish, nn.Mish, nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Tanhshrink)
ACTIVATION_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu,
                        F.elu, F.celu, F.selu, F.gelu, F.silu, F.hardswish, F.mish,
                        torch.tanh, F.hardtanh}
ACTIVATION_METHODS = {"relu", "relu_", "tanh", "tanh_"}
# Idempotent activations, folded into the module before them where they are no point of
# their own, and the function that folds each. A clamp, not F.relu: its backward keeps its
# input, not its output, so the network's own in-place ReLU may then rewrite that output
# (torchvision's blocks do), and the gradients are the ReLU's (at 0 the ReLU after it gives 0).
def _relu(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _relu6(t: Tensor) -> Tensor:
    return t.clamp(0, 6)


FOLDABLE_MODULES = {nn.ReLU: _relu, nn.ReLU6: _relu6}
FOLDABLE_FUNCTIONS = {F.relu: _relu, F.relu_: _relu, torch.relu: _relu, torch.relu_: _relu,
                      F.relu6: _relu6}
FOLDABLE_METHODS = {"relu": _relu, "relu_": _relu}
# Modules that are steps between layers, never layers of their own.
NOT_LAYERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, *BATCHNORMS, *ACTIVATIONS,
              nn.Sigmoid, nn.Softmax, nn.LogSoftmax, nn.Identity, nn.Flatten, nn.Unflatten,
              nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
              nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
              nn.modules.padding._ReplicationPadNd, nn.modules.padding.CircularPad2d)


@dataclass
class LayerPoints:
    """One layer: its units and the module paths where a unit is read and zeroed."""
    layer: str                  # the module path the user names (``features.28``)
    units: int                  # channels (dim 1) of the probe point's output
    probe: str                  # module whose output is the unit activation
    ablation: str               # module whose output an ablation zeroes
    depth: int = 0              # how many layers contain it (0: a top-level layer)
    read: str = "output"        # "output", "post-<act>" or "pre-<act> (...)": what is read
    fold: list = field(default_factory=list, repr=False)  # [(module path, function)] to fold


def _is_layer(m: nn.Module) -> bool:
    return not isinstance(m, NOT_LAYERS)


def _tensor_out(out) -> Tensor | None:
    return out if isinstance(out, Tensor) else None


def module_calls(model: nn.Module, example: Tensor) -> tuple[dict, dict, list[str], Tensor]:
    """One forward pass of ``example`` in eval mode, hooked: ({path: call count}, {path:
    first output shape or None}, paths in the order they start running, the output)."""
    from seltrain.probes import eval_mode

    counts: dict[str, int] = {}
    shapes: dict[str, tuple | None] = {}
    order: list[str] = []
    handles = []
    for path, m in model.named_modules():
        if not path:
            continue

        def pre(_m, _args, path=path):
            if path not in counts:
                order.append(path)
            counts[path] = counts.get(path, 0) + 1

        def post(_m, _args, out, path=path):
            t = _tensor_out(out)
            shapes.setdefault(path, None if t is None else tuple(t.shape))

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with eval_mode(model), torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    return counts, shapes, order, out


class _LevelTracer(fx.Tracer):
    """Traces through every module that holds a layer; keeps ``leaves`` as single calls."""

    def __init__(self, leaves: set[nn.Module], holders: set[nn.Module]):
        super().__init__()
        self.leaves, self.holders = leaves, holders

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if m in self.leaves:
            return True
        if m in self.holders:
            return False
        return super().is_leaf_module(m, qualname)


def _step(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """What the single consumer ``node`` of a value is in a chain: "bn", "act" or None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, BATCHNORMS):
            return "bn"
        if isinstance(m, ACTIVATIONS):
            return "act"
    elif node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        return "act"
    elif node.op == "call_method" and node.target in ACTIVATION_METHODS:
        return "act"
    return None


def _chain(node: fx.Node, modules: dict[str, nn.Module]) -> list[tuple[fx.Node, str]]:
    """``node`` and the BatchNorms and activations that alone consume it, in order."""
    chain = [(node, "layer")]
    while len(node.users) == 1:
        user = next(iter(node.users))
        kind = _step(user, modules)
        if kind is None or not user.args or user.args[0] is not node:
            break
        chain.append((user, kind))
        node = user
    return chain


def _act_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__.lower()
    return getattr(node.target, "__name__", str(node.target))


def _fold_function(node: fx.Node, modules: dict[str, nn.Module]):
    if node.op == "call_module":
        return FOLDABLE_MODULES.get(type(modules[node.target]))
    if node.op == "call_function":
        ok = all(not isinstance(a, fx.Node) for a in node.args[1:])
        return FOLDABLE_FUNCTIONS.get(node.target) if ok else None
    if node.op == "call_method" and len(node.args) == 1:
        return FOLDABLE_METHODS.get(node.target)
    return None


def _points(chain, modules, counts) -> tuple[str, str, str, list]:
    """(probe path, ablation path, what is read, folds) of a layer from its chain."""
    def once(i: int) -> bool:
        node = chain[i][0]
        return i == 0 or (node.op == "call_module" and counts.get(node.target, 0) == 1)

    path = lambda i: chain[i][0].target  # noqa: E731 - a call_module node's target: its path
    where = [i for i in range(len(chain)) if once(i)]
    # Ablation: the last module that runs once, with only activations (0 -> 0) after it.
    abl = max(i for i in where if all(k == "act" for _, k in chain[i + 1:]))
    acts = [i for i, (_, k) in enumerate(chain) if k == "act"]
    if not acts:
        return path(abl), path(abl), "output", []
    a = acts[-1]
    name = _act_name(chain[a][0], modules)
    if a in where:
        return path(a), path(abl), f"post-{name}", []
    before = max(i for i in where if i < a)
    fn = _fold_function(chain[a][0], modules)
    if fn is not None and before == a - 1:
        # probe and ablation are then this module: its output is the post-activation tensor
        return path(before), path(before), f"post-{name} (folded into it)", [(path(before), fn)]
    return path(before), path(abl), f"pre-{name} (its {name} is no module of its own)", []


def find_layers(model: nn.Module, example: Tensor) -> tuple[list[LayerPoints], int]:
    """Every layer of ``model`` with its probe and ablation points (module docstring), in
    forward order, and the number of the network's outputs. ``example``: one input batch
    of the size the network will see (its shapes give the unit counts)."""
    counts, shapes, order, out = module_calls(model, example)
    named = dict(model.named_modules())
    out_shape = tuple(out.shape) if isinstance(out, Tensor) else None
    if out_shape is None or len(out_shape) < 2:
        raise ValueError(f"{type(model).__name__} returns {type(out).__name__}, not logits "
                         "[N, classes]")
    layers = [p for p in order
              if counts[p] == 1 and _is_layer(named[p]) and shapes.get(p) is not None
              and len(shapes[p]) >= 2]
    # The network's own output layer: the last layer whose output has the logits' shape.
    if layers and shapes[layers[-1]] == out_shape:
        layers = layers[:-1]
    inside = {p: sum(1 for q in layers if p.startswith(q + ".")) for p in layers}
    points = {p: LayerPoints(p, shapes[p][1], p, p, inside[p]) for p in layers}
    try:
        _trace_points(model, points, counts, named)
    except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable Python
        warnings.warn(f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:160] if str(e) else ''}); each layer is "
                      "read and zeroed at its own output", stacklevel=2)
    for p in points.values():
        p.units = shapes[p.probe][1] if shapes.get(p.probe) else p.units
    return list(points.values()), out_shape[1]


def _trace_points(model: nn.Module, points: dict[str, LayerPoints], counts, named) -> None:
    from seltrain.probes import eval_mode

    # every module above a layer is traced through, so the layer's consumers are visible
    holders = {named[a] for q in points for a in _prefixes(q)[:-1]}
    for depth in sorted({p.depth for p in points.values()}):
        level = [p for p in points.values() if p.depth == depth]
        tracer = _LevelTracer({named[p.layer] for p in level}, holders)
        with eval_mode(model):
            graph = tracer.trace(model)
        modules = dict(model.named_modules())
        nodes = {}
        for n in graph.nodes:
            if n.op == "call_module":
                nodes.setdefault(n.target, []).append(n)
        for p in level:
            found = nodes.get(p.layer, [])
            if len(found) != 1:
                continue
            probe, ablation, read, fold = _points(_chain(found[0], modules), modules, counts)
            p.probe, p.ablation, p.read, p.fold = probe, ablation, read, fold


def _prefixes(path: str) -> list[str]:
    """``a.b.c`` -> [``a``, ``a.b``, ``a.b.c``]: the module and every module above it."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def fold_activations(model: nn.Module, layers: list[LayerPoints]) -> list:
    """Fold each layer's idempotent activation into the module before it (module
    docstring): a forward hook returns act(output). Returns the hook handles."""
    handles = []
    for p in layers:
        for path, fn in p.fold:
            handles.append(model.get_submodule(path).register_forward_hook(
                lambda _m, _i, out, fn=fn: fn(out)))
    return handles


class _OutputOrder:
    """The network's outputs reordered (``_seltrain_output_order``, a buffer): a class map
    puts the output of data class k in column k, the other outputs after them, so argmax
    over all of them still decides (an evaluation subset of ImageNet's 1000 classes is
    scored 1000-way)."""

    def forward(self, x):
        return super().forward(x).index_select(1, self._seltrain_output_order)


def as_probed(model: nn.Module, layers: list[LayerPoints],
              output_order: Tensor | None = None) -> nn.Module:
    """``model`` itself, now also ``Probed`` (seltrain/models/probed.py): its probe names are
    the layers' module paths, their probe and ablation points the graph's, group ``blocks``
    the top-level layers. Its class becomes a subclass of its own (same name), so every module
    keeps its name, its weights stay where they are, and torch.fx traces it as before;
    ``output_order`` (a class map) reorders its outputs (``_OutputOrder``)."""
    from seltrain.models.probed import Probed

    base = type(model)
    mixins = (Probed,) if output_order is None else (_OutputOrder, Probed)
    model.__class__ = type(base.__name__, (*mixins, base),
                           {"__module__": base.__module__, "__qualname__": base.__qualname__})
    model._probe_paths = {p.layer: p.probe for p in layers}
    model._ablation_paths = {p.layer: p.ablation for p in layers if p.ablation != p.probe}
    model._block_probes = [p.layer for p in layers if p.depth == 0]
    if output_order is not None:
        model.register_buffer("_seltrain_output_order", output_order.long(), persistent=False)
    return model


__all__ = ["LayerPoints", "as_probed", "find_layers", "fold_activations", "module_calls"]
