"""ResNet18 / ResNet50 on torchvision's implementation, with a choice of stem (``stem``).

- ``imagenet``: torchvision's stem, a 7x7 stride-2 conv and a 3x3 stride-2 max-pool. It is the
  co-authors' (Omkar-Ranadive/Class-Selective-Neurons builds ``torchvision.models.resnet18/50``
  unchanged, ``custom_models.py``; their code holds no Tiny ImageNet variant).
- ``nomaxpool``: the 7x7 stride-2 conv without the max-pool: the co-authors' conv with the
  first max-pool removed, as Leavitt & Morcos (ICLR 2021) describe for Tiny ImageNet
  (docs/METHODS.md sec. 2); configs/tinyimagenet_resnet18/50.yaml use it.
- ``cifar``: a 3x3 stride-1 conv and no max-pool, the usual small-image adaptation; that the
  paper did this too is unconfirmed. At 64 px every stage's maps are 4x (2x per side) those of
  ``nomaxpool`` and 16x those of ``imagenet``.
- ``auto`` (the default): ``cifar`` for inputs up to 96 px, ``imagenet`` above. It is the
  default because it keeps every recipe, trained run and checkpoint as it was; a recipe that
  wants another stem names it (``model.stem``).

Probe points are the residual blocks
(``layer1.0`` ... ``layer4.*``), whose output is taken after the skip addition and the final
ReLU (docs/METHODS.md sec. 1).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from seltrain.models.probed import ModelConfigError, Probed

SMALL_STEM_MAX_PX = 96
STEMS = ("auto", "cifar", "nomaxpool", "imagenet")


class ProbedResNet(Probed, ResNet):
    def __init__(self, block, layers: list[int], num_classes: int, in_channels: int = 3,
                 image_size: int = 224, stem: str = "auto"):
        super().__init__(block, layers, num_classes=num_classes)
        if stem not in STEMS:
            raise ModelConfigError(f"unknown stem '{stem}'; choose one of: {', '.join(STEMS)}")
        if stem == "auto":
            stem = "cifar" if image_size <= SMALL_STEM_MAX_PX else "imagenet"
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        if stem != "imagenet":
            self.maxpool = nn.Identity()
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        # torchvision's stem ReLU is in-place; as the "stem" probe point its output must be a
        # tensor of its own. (Block outputs are safe as they are: a block's in-place ReLU acts
        # on the fresh sum tensor, and the next block never writes into its input.)
        self.relu = nn.ReLU()

        self._block_probes = [f"layer{s}.{i}" for s, n in enumerate(layers, 1) for i in range(n)]
        self._probe_paths = {"stem": "relu", **{b: b for b in self._block_probes}}


def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 224,
             stem: str = "auto") -> ProbedResNet:
    return ProbedResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, image_size, stem)


def resnet50(num_classes: int, in_channels: int = 3, image_size: int = 224,
             stem: str = "auto") -> ProbedResNet:
    return ProbedResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size, stem)
