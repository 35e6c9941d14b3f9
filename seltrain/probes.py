"""Probes: read units where the papers read them, for training and for every analysis.

Each model names its probe points (``model.probe_points()``): modules whose forward output is
a post-ReLU unit activation. A conv unit is a channel and its activation for one image is the
spatial mean of its feature map; a linear unit is one output feature (docs/METHODS.md section 1).
``unit_activation`` is that reading, and ``Probe`` (forward hooks) is the one way it is taken:
the trainer's regularizer and evaluation, and every analysis (``layer_outputs``), read a unit
through the same hook and the same arithmetic. Hooks are attached only while a probe is
active, so training with alpha = 0 runs the bare model at no extra cost.

A layer is named by a probe name (``model.probe_points()[name]``), a probe group (``all``,
``blocks``), a submodule path (``model.get_submodule(path)``), or given as the module itself
(``resolve_layer``). Ablations zero a layer's *ablation point* instead (``ablation_layer``,
``model.ablation_points()``, seltrain/models/probed.py): the tensor the next layer receives.

Data is given either as tensors ``x`` [N, ...] (float, already normalised) and ``y`` [N]
(int64), cut into batches here, or as an iterable of ``(x, y)`` batches with ``y=None``
(``iterate_batches``).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.errors import ConfigError, did_you_mean


class LayerError(ConfigError, ValueError):
    """A layer name that the model does not have, or a layer that cannot be read. A
    ConfigError so the CLI prints one line, a ValueError so library callers can catch it the
    ordinary way."""


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DeepSpeed / torch.compile wrappers keep the real model one attribute down.
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module) \
                and not hasattr(model, "probe_points"):
            model = getattr(model, attr)
    return model


# --------------------------------------------------------------------------- naming layers

def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """(submodule path, module) of ``layer``: a probe name, a submodule path or a module."""
    if isinstance(layer, nn.Module):
        module = layer
    else:
        points = model.probe_points() if hasattr(model, "probe_points") else {}
        if layer in points:
            module = points[layer]
        else:
            try:
                module = model.get_submodule(layer)
            except AttributeError:
                names = list(points) or [n for n, _ in model.named_modules() if n][:20]
                raise LayerError(f"no layer '{layer}' in {type(model).__name__}"
                                 f"{did_you_mean(layer, names)}; valid names: "
                                 f"{', '.join(names)}") from None
    for path, m in model.named_modules():
        if m is module:
            return path, module
    raise LayerError(f"the given module is not part of {type(model).__name__}")


def resolve_layers(model: nn.Module, spec, *, option: str = "selectivity.layers",
                   any_module: bool = False) -> list[str]:
    """Layer names from ``spec``: a probe group (``all``, ``blocks``), a probe name, or a list
    of them (items may be comma-separated); duplicates dropped, order kept. Training probes
    only probe points; with ``any_module`` (the analyses' ``--layers``) submodule paths count
    too. ``option`` names the setting in the one-line error."""
    model = _unwrap(model)
    points = model.probe_points()
    groups = model.probe_groups()
    items = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (p.strip() for item in items for p in str(item).split(",")):
        if not part:
            continue
        if part in groups:
            names.extend(groups[part])
        elif part in points:
            names.append(part)
        elif any_module:
            resolve_layer(model, part)  # raises LayerError naming the valid layers
            names.append(part)
        else:
            raise LayerError(f"{option}: no layer '{part}' in {type(model).__name__}"
                             f"{did_you_mean(part, points)}; valid names: all, blocks, "
                             f"{', '.join(points)}")
    if not names:
        raise LayerError(f"{option} is empty; use 'all', 'blocks' or a list of layer names: "
                         f"{', '.join(points)}")
    return list(dict.fromkeys(names))


def named_layers(model: nn.Module, layers: Sequence[str | nn.Module] | Mapping[str, nn.Module]
                 ) -> dict[str, nn.Module]:
    """{name: module} for ``layers``, keyed as given (a probe name such as cnn7's "conv1" is
    not its module path "relu1"); a module given as such is keyed by its path."""
    if isinstance(layers, Mapping):
        return dict(layers)
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    out = {}
    for layer in layers:
        path, module = resolve_layer(model, layer)
        out[layer if isinstance(layer, str) else path] = module
    return out


def ablation_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """(submodule path, module) whose output an ablation of ``layer``'s units zeroes.

    For a probe (given by its name, or its module or module path), the model's ablation point
    (``model.ablation_points()``, seltrain/models/probed.py): the tensor the next layer
    receives, so an ablated unit sends it exactly zero. For cnn7 that is the BatchNorm after
    the probed ReLU (Ukita zeroes ``bn1``...``bn7``); for every other seltrain model it is the
    probe point itself. Any other layer is ablated where given."""
    path, module = resolve_layer(model, layer)
    if hasattr(model, "ablation_points"):
        targets = model.ablation_points()
        for name, m in model.probe_points().items():
            if m is module:
                return resolve_layer(model, targets[name])
    return path, module


# --------------------------------------------------------------------------- reading units

class _SpatialMean(torch.autograd.Function):
    """[N, C, ...] -> [N, C]: the float32 (float64 for float64) mean over the spatial axes.

    Forward: ``out.sum(spatial, dtype=acc) / (H * W)``. Backward: the [N, C] gradient divided
    by H * W and cast to the feature map's dtype, *then* expanded over H, W as a view. Left to
    autograd, a bf16 map's gradient is expanded first and then cast (autograd casts each
    gradient to its input's dtype), which writes a whole [N, C, H, W] tensor per probed layer
    and step (about 0.7 G elements a step for ResNet50's 16 blocks at 224 px, batch 128). Every
    element of a (n, c) plane is the same float32 number, so casting before or after the
    expansion gives the same bits (tests/unit_tests/test_probes.py)."""

    @staticmethod
    def forward(ctx, out: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.shape, ctx.in_dtype = out.shape, out.dtype
        ctx.size = math.prod(out.shape[2:])
        return out.sum(dim=tuple(range(2, out.dim())), dtype=dtype) / ctx.size

    @staticmethod
    def backward(ctx, grad: Tensor):
        g = (grad / ctx.size).to(ctx.in_dtype)
        return g.view(*g.shape, *([1] * (len(ctx.shape) - 2))).expand(ctx.shape), None


def unit_activation(out: Tensor) -> Tensor:
    """A unit's activation per sample: [N, C, H, W] -> spatial mean [N, C]; [N, F] as is.

    Under bf16/fp16 autocast the feature map is bf16/fp16, and a plain ``mean`` would round
    each unit's activation to 8 (or 11) mantissa bits before SI ever sees it: the float32 SI
    and the float64 dataset SI would start from rounded values. The mean is accumulated and
    returned in float32 instead (float64 maps stay float64, for gradcheck).

    Its backward hands the feature map an expanded view of the [N, C] gradient, already in
    the map's dtype (``_SpatialMean``): no [N, C, H, W] gradient is written for the probe, in
    float32 as in bf16, so the regularizer costs the backward pass no extra pass over any
    probed feature map.
    """
    if out.dim() <= 2:
        return out.flatten(1)
    dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
    return _SpatialMean.apply(out, dtype)


class Probe:
    """Collects what the named layers output during forward passes, reduced on the fly
    (``reduce``, by default ``unit_activation``: [N, U] per layer, so no feature map outlives
    its forward pass; ``None`` keeps the whole output)."""

    def __init__(self, model: nn.Module, layers, reduce: Callable[[Tensor], Tensor] | None
                 = unit_activation):
        self.model = _unwrap(model)
        named = named_layers(self.model, layers)
        self.names = list(named)
        self.modules = list(named.values())
        self.reduce = reduce
        self.acts: dict[str, Tensor] = {}
        self.calls = dict.fromkeys(self.names, 0)
        self._handles: list = []

    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model (between ``attach`` and ``detach``)."""
        return bool(self._handles)

    def _hook(self, name: str):
        def fn(_module, _inp, out):
            self.acts[name] = out if self.reduce is None else self.reduce(out)
            self.calls[name] += 1
        return fn

    def attach(self) -> "Probe":
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n))
                             for n, m in zip(self.names, self.modules)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextmanager
    def active(self):
        """Hooks on for the block, and as they were afterwards: off again, unless they were
        attached before it (the trainer keeps them on while alpha != 0)."""
        was = self.attached
        self.attach()
        try:
            yield self
        finally:
            if not was:
                self.detach()

    @contextmanager
    def paused(self):
        """Hooks off for the block (forward passes that must leave nothing in the probe), and
        back on afterwards if they were on."""
        was = self.attached
        self.detach()
        try:
            yield self
        finally:
            if was:
                self.attach()

    def pop(self) -> list[Tensor]:
        """The activations of the last forward pass, in layer order, and forget them."""
        missing = [n for n in self.names if n not in self.acts]
        if missing:
            raise RuntimeError(f"probe layers {missing} did not run in the forward pass")
        out = [self.acts[n] for n in self.names]
        self.acts = {}
        self.calls = dict.fromkeys(self.names, 0)
        return out

    def pop_single_pass(self) -> dict[str, Tensor]:
        """``pop`` as {name: output}, for a probe popped after every forward pass: raises
        LayerError if a layer ran other than once (a module reused within the network would
        leave only its last call here)."""
        bad = {n: c for n, c in self.calls.items() if c != 1}
        if bad:
            raise LayerError(f"layers must run exactly once per forward pass; ran: {bad}")
        return dict(zip(self.names, self.pop()))

    @torch.no_grad()
    def unit_counts(self, example: Tensor) -> dict[str, int]:
        """Units per probed layer, from one forward pass on ``example``."""
        with eval_mode(self.model), self.active():
            self.model(example)
            acts = self.pop()
        return {n: a.shape[1] for n, a in zip(self.names, acts)}


# --------------------------------------------------------------------------- streaming data

def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def iterate_batches(x, y=None, batch_size: int = 256) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (x, y) batches from tensors, or pass an iterable of batches through."""
    if isinstance(x, Tensor):
        if y is not None and len(y) != len(x):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], (None if y is None else y[i:i + batch_size])
        return
    if y is not None:
        raise ValueError("pass y only with a tensor x; an iterable x must yield (x, y) batches")
    for batch in x:
        if isinstance(batch, Tensor):
            yield batch, None
        else:
            yield batch[0], batch[1]


def num_batches(x, batch_size: int) -> int | None:
    if isinstance(x, Tensor):
        return -(-len(x) // batch_size)
    try:
        return len(x)
    except TypeError:
        return None


@contextmanager
def eval_mode(model: nn.Module):
    """Put every submodule in eval mode, and restore each one's own flag afterwards (a
    blanket ``model.train(prev)`` would unfreeze deliberately frozen BatchNorms)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def layer_outputs(model: nn.Module, layers, x, y=None, *,
                  reduce: Callable[[Tensor], Tensor] | None = None, batch_size: int = 256,
                  device=None, desc: str | None = None
                  ) -> Iterator[tuple[dict[str, Tensor], Tensor, Tensor | None]]:
    """Yield ({name: output}, x, y) per batch, under eval mode and no_grad, through a
    ``Probe`` on ``layers`` (names, modules, or {name: module}). ``reduce`` (e.g.
    ``unit_activation``) is applied inside the hook, so only what is asked outlives the
    forward pass: [N, U] per layer instead of every layer's whole feature map. Raises if a
    layer runs other than once per forward pass."""
    device = torch.device(device) if device is not None else model_device(model)
    probe = Probe(model, named_layers(model, layers), reduce=reduce)
    with eval_mode(model):
        for xb, yb in tqdm(iterate_batches(x, y, batch_size), total=num_batches(x, batch_size),
                           desc=desc, disable=None, leave=False):
            xb = xb.to(device, non_blocking=True)
            # hooked for this forward pass only: the batches may come from a generator that
            # runs the model itself (adversarial_batches), and those passes are not ours
            with probe.active(), torch.no_grad():
                model(xb)
            yield probe.pop_single_pass(), xb, yb
