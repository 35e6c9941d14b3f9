"""ResNet18 / ResNet50 on torchvision's implementation, with a stem for small images.

Leavitt & Morcos (ICLR 2021) trained these on Tiny ImageNet (64x64) with the first max-pool
removed (docs/METHODS.md sec. 2). For inputs up to 96 px we also swap the 7x7 stride-2 stem conv
for a 3x3 stride-1 one, the usual small-image adaptation (that the paper did this too is
unconfirmed); otherwise a 64 px image would already be 16x16 after the stem. Larger inputs
(ImageNet, 224 px) keep torchvision's stem. Probe points are the residual blocks
(``layer1.0`` ... ``layer4.*``), whose output is taken after the skip addition and the final
ReLU (docs/METHODS.md sec. 1).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from seltrain.models.probed import Probed

SMALL_STEM_MAX_PX = 96


class ProbedResNet(Probed, ResNet):
    def __init__(self, block, layers: list[int], num_classes: int, in_channels: int = 3,
                 image_size: int = 224):
        super().__init__(block, layers, num_classes=num_classes)
        if image_size <= SMALL_STEM_MAX_PX:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        # torchvision's stem ReLU is in-place; as the "stem" probe point its output must be a
        # tensor of its own. (Block outputs are safe as they are: a block's in-place ReLU acts
        # on the fresh sum tensor, and the next block never writes into its input.)
        self.relu = nn.ReLU()

        self._block_probes = [f"layer{s}.{i}" for s, n in enumerate(layers, 1) for i in range(n)]
        self._probe_paths = {"stem": "relu", **{b: b for b in self._block_probes}}


def resnet18(num_classes: int, in_channels: int = 3, image_size: int = 224) -> ProbedResNet:
    return ProbedResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, image_size)


def resnet50(num_classes: int, in_channels: int = 3, image_size: int = 224) -> ProbedResNet:
    return ProbedResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, image_size)
