"""ResNet20 / ResNet56 for 32x32 inputs (He et al. 2016, "Deep Residual Learning", sec. 4.2).

Stem: 3x3 conv with 16 filters. Then three stages of n basic blocks (n = 3 gives 6n+2 = 20
layers, n = 9 gives 56) with 16/32/64 channels at strides 1/2/2, global average pooling and
a linear classifier. This is the network of Leavitt & Morcos (ICLR 2021) on CIFAR-10.

Shortcuts: the paper's CIFAR nets use option A (identity with zero-padded extra channels
and stride-2 subsampling, no parameters). We use option B (1x1 conv + BN, paper sec. 3.3)
on the two downsampling blocks: it is the common PyTorch rendering, every block then has an
ordinary module for each path, and it adds only 2,752 parameters (ResNet20: 272,474 vs
269,722 for option A at 10 classes, i.e. still "0.27M"; ResNet56: 855,770 vs 853,018).
"""
from __future__ import annotations

from torch import Tensor, nn

from seltrain.models.probed import Probed


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))
        else:
            self.shortcut = nn.Identity()
        # Not in-place, and a module of its own, so ablation hooks can target it; the block's
        # output (the probe point, docs/METHODS.md sec. 1) is this ReLU's output.
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(Probed, nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()  # named and not in-place: it is the "stem" probe point
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # global pooling: works at 28 px too
        self.fc = nn.Linear(64, num_classes)

        # He (Kaiming) init for convs, as in the paper (He et al. 2015 "Delving deep");
        # fan_out as in torchvision's ResNet, so all four ResNets start alike.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        self._block_probes = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(blocks_per_stage)]
        self._probe_paths = {"stem": "relu", **{b: b for b in self._block_probes}}

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(3, num_classes, in_channels)


def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(9, num_classes, in_channels)
