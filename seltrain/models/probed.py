"""The contract between a model and seltrain's probes (seltrain/probes.py).

A probe point is a module whose forward *output* is a layer's post-ReLU unit activation:
[N, C, H, W] for a conv layer (a unit is a channel) or [N, F] for a linear layer (a unit is
a feature), METHODS.md section 1. Probes hook these modules and take the spatial mean;
ablation hooks zero channels of the same outputs (section 3).
"""
from __future__ import annotations

from torch import nn

from seltrain.errors import ConfigError


class ModelConfigError(ConfigError, ValueError):
    """A model name or input size that cannot work. A ConfigError so the CLI prints one line,
    and a ValueError so library callers can catch it the ordinary way."""


class Probed:
    """Mixin for nn.Module models. Subclasses fill ``_probe_paths`` (probe name -> submodule
    path, in forward order) and ``_block_probes`` (the names in the "blocks" group)."""

    _probe_paths: dict[str, str]
    _block_probes: list[str]

    def probe_points(self) -> dict[str, nn.Module]:
        return {name: self.get_submodule(path) for name, path in self._probe_paths.items()}

    def probe_groups(self) -> dict[str, list[str]]:
        return {"all": list(self._probe_paths), "blocks": list(self._block_probes)}
