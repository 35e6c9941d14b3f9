"""Reading layers for the analyses: resolve a layer, stream batches, capture outputs.

A layer is given either as a probe name (``model.probe_points()[name]``, see
seltrain/models/probed.py), a submodule path (``model.get_submodule(path)``) or the module
itself. Its forward *output* is what the analyses read: [N, C, H, W] for a conv layer, where
a unit is a channel, or [N, F] for a linear layer (METHODS.md section 1). Ablations zero the
layer's *ablation point* instead (``ablation_layer``): the tensor the next layer receives.

Data is given either as tensors ``x`` [N, ...] (float, already normalised) and ``y`` [N]
(int64), cut into batches here, or as an iterable of ``(x, y)`` batches (a DataLoader) with
``y=None``. Every analysis makes exactly one pass over the iterable.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.errors import ConfigError


class LayerError(ConfigError, ValueError):
    """A layer name that the model does not have. A ConfigError so the CLI prints one line,
    a ValueError so library callers can catch it the ordinary way."""


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
                raise LayerError(f"no layer '{layer}' in {type(model).__name__}; valid names: "
                                 f"{', '.join(names)}") from None
    for path, m in model.named_modules():
        if m is module:
            return path, module
    raise LayerError(f"the given module is not part of {type(model).__name__}")


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


def unit_responses(out: Tensor) -> Tensor:
    """A unit's activation per sample: the spatial mean of a channel, or a feature as is."""
    return out.flatten(2).mean(2) if out.dim() > 2 else out


def layer_outputs(model: nn.Module, layers: dict[str, nn.Module], x, y=None, *,
                  batch_size: int = 256, device=None, desc: str | None = None
                  ) -> Iterator[tuple[dict[str, Tensor], Tensor, Tensor | None]]:
    """Yield ({name: output}, x, y) per batch, under eval mode and no_grad. Raises if a layer
    runs other than once per forward pass."""
    device = torch.device(device) if device is not None else model_device(model)
    counts = {n: 0 for n in layers}

    def hook(name):
        def fn(_m, _inp, out):
            counts[name] += 1
            store[name] = out
        return fn

    store: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with eval_mode(model):
            for xb, yb in tqdm(iterate_batches(x, y, batch_size), total=num_batches(x, batch_size),
                               desc=desc, disable=None, leave=False):
                for n in counts:
                    counts[n] = 0
                xb = xb.to(device)
                with torch.no_grad():
                    model(xb)
                bad = {n: c for n, c in counts.items() if c != 1}
                if bad:
                    raise LayerError(f"layers must run exactly once per forward pass; ran: {bad}")
                yield dict(store), xb, yb
                store.clear()
    finally:
        for h in handles:
            h.remove()


def layer_activations(model: nn.Module, layer: str | nn.Module, x, y=None, *,
                      batch_size: int = 256, device=None) -> np.ndarray:
    """Unit activations [N, U] of one layer (spatial means for conv layers), float32."""
    name, module = resolve_layer(model, layer)
    acts = [unit_responses(outs[name]).float().cpu()
            for outs, _, _ in layer_outputs(model, {name: module}, x, y, batch_size=batch_size,
                                            device=device, desc=f"activations {name}")]
    return torch.cat(acts).numpy()
