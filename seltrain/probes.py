"""Probes: read the units whose selectivity is measured, where the papers read them.

Each model names its probe points (``model.probe_points()``): modules whose forward output is
a post-ReLU unit activation. A conv unit is a channel and its activation for one image is the
spatial mean of its feature map; a linear unit is one output feature (METHODS.md section 1).
Forward hooks collect [N, U] per layer. Hooks are attached only while a probe is active, so
training with alpha = 0 runs the bare model at no extra cost.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from seltrain.errors import ConfigError, did_you_mean


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DeepSpeed / torch.compile wrappers keep the real model one attribute down.
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module) \
                and not hasattr(model, "probe_points"):
            model = getattr(model, attr)
    return model


def resolve_layers(model: nn.Module, spec) -> list[str]:
    """Turn ``selectivity.layers`` (``all``, ``blocks`` or a list of names) into probe names."""
    model = _unwrap(model)
    points = model.probe_points()
    groups = model.probe_groups()
    if isinstance(spec, str):
        if spec in groups:
            return list(groups[spec])
        spec = [spec]
    names = list(spec)
    if not names:
        raise ConfigError("selectivity.layers is empty; use 'all', 'blocks' or a list of "
                          f"layer names: {', '.join(points)}")
    for n in names:
        if n not in points:
            raise ConfigError(f"selectivity.layers: no layer '{n}' in {type(model).__name__}"
                              f"{did_you_mean(n, points)}; valid names: all, blocks, "
                              f"{', '.join(points)}")
    return names


def unit_activation(out: Tensor) -> Tensor:
    """[N, C, H, W] -> spatial mean [N, C]; [N, F] stays as is.

    Under bf16/fp16 autocast the feature map is bf16/fp16, and a plain ``mean`` would round
    each unit's activation to 8 (or 11) mantissa bits before SI ever sees it: the float32 SI
    and the float64 dataset SI would start from rounded values. The mean is accumulated and
    returned in float32 instead (float64 maps stay float64, for gradcheck).

    Written as a sum divided by H * W (what ``mean`` computes) because the backward of a sum
    is an expanded view of the [N, C] gradient, where ``mean``'s materialises an [N, C, H, W]
    one: a pass less over every probed feature map in the regularizer's backward.
    """
    if out.dim() != 4:
        return out.flatten(1)
    dtype = torch.float64 if out.dtype == torch.float64 else torch.float32
    return out.sum(dim=(2, 3), dtype=dtype) / (out.shape[2] * out.shape[3])


class Probe:
    """Collects the unit activations of the named layers during forward passes."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model = _unwrap(model)
        self.names = list(names)
        points = self.model.probe_points()
        self.modules = [points[n] for n in self.names]
        self.acts: dict[str, Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def fn(_module, _inp, out):
            self.acts[name] = unit_activation(out)
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
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    def pop(self) -> list[Tensor]:
        """The activations of the last forward pass, in layer order, and forget them."""
        missing = [n for n in self.names if n not in self.acts]
        if missing:
            raise RuntimeError(f"probe layers {missing} did not run in the forward pass")
        out = [self.acts[n] for n in self.names]
        self.acts = {}
        return out

    @torch.no_grad()
    def unit_counts(self, example: Tensor) -> dict[str, int]:
        """Units per probed layer, from one forward pass on ``example``."""
        was_training = self.model.training
        self.model.eval()
        with self.active():
            self.model(example)
            acts = self.pop()
        self.model.train(was_training)
        return {n: a.shape[1] for n, a in zip(self.names, acts)}
