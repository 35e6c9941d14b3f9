"""The contract between a model and seltrain's probes (seltrain/probes.py) and ablations.

A model names, for every probed layer, two tensors by the module that outputs them:

* the **probe point**: a module whose forward *output* is the layer's post-ReLU unit
  activation, [N, C, H, W] for a conv layer (a unit is a channel) or [N, F] for a linear
  layer (a unit is a feature), docs/METHODS.md section 1. Class selectivity (training and
  ``analyze selectivity``), orientation responses (``analyze orientation``) and the unit
  attributes of ``analyze ablation`` read it, spatially averaged.
* the **ablation point**: a module whose output is what the *next* layer receives from those
  units. Zeroing a unit there makes the next layer's input zero for that channel, as Ukita's
  ablation of the BatchNorm outputs ``bn1`` ... ``bn7`` does and as Zhou et al. (dissect's
  ``edit_layer`` on a layer output) do. Where ReLU comes before BatchNorm (cnn7, from Keras
  ``Conv2D(activation='relu')`` then ``BatchNormalization``), zeroing the ReLU output would
  leave BatchNorm's constant beta - gamma * mu / sqrt(var + eps) for the channel, not zero,
  so the ablation point is the BatchNorm. Everywhere else it is the probe point itself.

Per architecture (docs/analysis.md, "Where a unit is read, zeroed and weighed"):

    arch        probe / SI / orientation tensor          ablation tensor
    resnet*     block output (after add and ReLU); stem ReLU    the same
    cnn7        relu{i}, relu_fc1 (post-ReLU, pre-BN)    bn{i}, bn_fc1 (what conv{i+1}/fc sees)
    vgg16_bn    features.relu{s}_{i}, classifier.relu_fc{1,2}   the same
    vgg16       as vgg16_bn, plus features.pool{1..5}    the same
"""
from __future__ import annotations

from torch import nn

from seltrain.errors import ConfigError


class ModelConfigError(ConfigError, ValueError):
    """A model name or input size that cannot work. A ConfigError so the CLI prints one line,
    and a ValueError so library callers can catch it the ordinary way."""


class Probed:
    """Mixin for nn.Module models. Subclasses fill ``_probe_paths`` (probe name -> submodule
    path, in forward order) and ``_block_probes`` (the names in the "blocks" group), and
    ``_ablation_paths`` (probe name -> submodule path) where a unit's ablation point is not
    its probe point."""

    _probe_paths: dict[str, str]
    _block_probes: list[str]
    _ablation_paths: dict[str, str] = {}

    def probe_points(self) -> dict[str, nn.Module]:
        return {name: self.get_submodule(path) for name, path in self._probe_paths.items()}

    def ablation_points(self) -> dict[str, nn.Module]:
        """Probe name -> the module whose output a unit's ablation zeroes (module docstring)."""
        return {name: self.get_submodule(self._ablation_paths.get(name, path))
                for name, path in self._probe_paths.items()}

    def probe_groups(self) -> dict[str, list[str]]:
        return {"all": list(self._probe_paths), "blocks": list(self._block_probes)}
