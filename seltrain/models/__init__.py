"""The image classifiers seltrain trains, each exposing where its units are read.

``build_model(arch, num_classes, in_channels, image_size)`` returns an nn.Module with
``probe_points()`` (probe name -> module whose output is a post-ReLU unit activation, in
forward order), ``ablation_points()`` (probe name -> module whose output, zeroed, is what the
next layer receives) and ``probe_groups()`` (``"all"`` and ``"blocks"``: lists of probe names).
See seltrain/models/probed.py for the contract and docs/METHODS.md sec. 1 for why these layers.
"""
from __future__ import annotations

from torch import nn

from seltrain.errors import did_you_mean
from seltrain.models.cnn7 import cnn7
from seltrain.models.probed import ModelConfigError, Probed
from seltrain.models.resnet_cifar import resnet20, resnet56
from seltrain.models.resnet_tv import resnet18, resnet50
from seltrain.models.vgg import vgg16, vgg16_bn

_BUILDERS = {
    "resnet20": lambda nc, ch, px: resnet20(nc, ch),  # global pooling: any size works
    "resnet56": lambda nc, ch, px: resnet56(nc, ch),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "cnn7": cnn7,
    "vgg16_bn": vgg16_bn,
    "vgg16": vgg16,  # Ukita's VGG16: no batch norm, pools probed too
}
ARCHS: tuple[str, ...] = tuple(_BUILDERS)
# The networks with fully connected hidden layers, where ``dropout`` goes (Zhou et al. 2018's
# BatchNorm x dropout comparison; seltrain/models/vgg.py, cnn7.py).
DROPOUT_ARCHS = ("vgg16", "vgg16_bn", "cnn7")
# The networks with a choice of stem (seltrain/models/resnet_tv.py).
STEM_ARCHS = ("resnet18", "resnet50")


def build_model(arch: str, num_classes: int, in_channels: int = 3,
                image_size: int = 32, *, dropout: float | None = None,
                stem: str = "auto") -> nn.Module:
    """``image_size`` is the input side in pixels; it picks the stem/head of resnet18/50 and
    the VGGs and sizes cnn7's first dense layer. ``dropout`` (``DROPOUT_ARCHS`` only): the
    probability of the dropout after each hidden fully connected layer; None keeps the
    architecture's own. ``stem`` (resnet18/50 only; ``STEM_ARCHS``): ``auto``, ``cifar``,
    ``nomaxpool`` or ``imagenet`` (seltrain/models/resnet_tv.py)."""
    if arch not in _BUILDERS:
        raise ModelConfigError(f"unknown model '{arch}'{did_you_mean(arch, ARCHS)}; choose one "
                               f"of: {', '.join(ARCHS)}")
    if stem != "auto":
        if arch not in STEM_ARCHS:
            raise ModelConfigError(f"the stem applies to {', '.join(STEM_ARCHS)}, not {arch}; "
                                   "leave model.stem at auto")
        return _BUILDERS[arch](num_classes, in_channels, image_size, stem=stem)
    if dropout is not None:
        if arch not in DROPOUT_ARCHS:
            raise ModelConfigError(f"dropout applies to {', '.join(DROPOUT_ARCHS)}, not {arch}; "
                                   "leave model.dropout out (null)")
        return _BUILDERS[arch](num_classes, in_channels, image_size, dropout=dropout)
    return _BUILDERS[arch](num_classes, in_channels, image_size)


__all__ = ["ARCHS", "DROPOUT_ARCHS", "STEM_ARCHS", "ModelConfigError", "Probed", "build_model"]
