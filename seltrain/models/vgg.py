"""VGG16 (Simonyan & Zisserman 2015, config D), with and without batch norm.

``vgg16`` is the network Ukita analysed on ImageNet (Keras ``applications.vgg16.VGG16``,
docs/METHODS.md sec. 4): the 13 3x3 convs of config D, each conv -> ReLU, no batch norm, a 2x2
max-pool after each of the five stages, then fc1 and fc2 (ReLU) and the classifier. Its probe
points are his analysed layer set (grating_analysis.py, ``analyzed_layers`` for 'imagenet'):
every conv's ReLU output (``block1_conv1`` ... ``block5_conv3``), every stage's max-pool
output (``block1_pool`` ... ``block5_pool``) and fc1, fc2, in forward order; here named
``conv1_1`` ... ``conv5_3``, ``pool1`` ... ``pool5``, ``fc1``, ``fc2``. Group ``all`` is that
set of 20 layers, ``blocks`` the 13 convs.

``vgg16_bn`` is *not* Ukita's network: each conv -> BN -> ReLU (torchvision's vgg16_bn), probe
points the 13 conv ReLUs and fc1, fc2 (no pools). It is here for training with selectivity
regularisation; use ``vgg16`` to reproduce the orientation analysis.

Two heads, for both:
  * ImageNet-sized inputs (> 64 px): torchvision's head, 7x7 adaptive pool and 4096-4096
    fully connected layers with dropout (same layers and parameter count as torchvision's
    vgg16 / vgg16_bn; Keras's VGG16 has no dropout layers, which is the same network at
    evaluation time, where every analysis runs).
  * Small inputs (<= 64 px, CIFAR-style): global average pool and 512-512 fully connected
    layers, no dropout; the pools use ceil_mode so 28 px (Fashion-MNIST) still reaches 1x1
    (28 -> 14 -> 7 -> 4 -> 2 -> 1).
Modules are named after the paper's layers (``features.conv3_2``, ``classifier.fc1``); the
ReLUs are built non-in-place so the probed outputs are never overwritten. In both variants a
unit's ablation point is its probe point (a ReLU or pool output is what the next layer
receives; seltrain/models/probed.py).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from seltrain.models.probed import Probed

STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, convs) of config D
SMALL_MAX_PX = 64


class VGG16BN(Probed, nn.Module):
    """VGG16, config D; ``batch_norm=False`` is Ukita's (Keras) VGG16, ``True`` vgg16_bn."""

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 224,
                 batch_norm: bool = True, dropout: float | None = None):
        super().__init__()
        small = image_size <= SMALL_MAX_PX
        feats, c_in, points = OrderedDict(), in_channels, {}
        for s, (c_out, n) in enumerate(STAGES, 1):
            for i in range(1, n + 1):
                name = f"{s}_{i}"
                feats[f"conv{name}"] = nn.Conv2d(c_in, c_out, 3, padding=1)
                if batch_norm:
                    feats[f"bn{name}"] = nn.BatchNorm2d(c_out)
                feats[f"relu{name}"] = nn.ReLU()
                points[f"conv{name}"] = f"features.relu{name}"
                c_in = c_out
            feats[f"pool{s}"] = nn.MaxPool2d(2, 2, ceil_mode=small)
            if not batch_norm:  # Ukita's layer set probes each stage's pool too
                points[f"pool{s}"] = f"features.pool{s}"
        self.features = nn.Sequential(feats)

        pool, width = (1, 512) if small else (7, 4096)
        # dropout None: torchvision's 0.5 for the large head, none for the small one; a number
        # sets it for either, in torchvision's places (after fc1's and fc2's ReLU).
        p = (0.0 if small else 0.5) if dropout is None else dropout
        drop = (lambda: nn.Dropout(p)) if p > 0 else nn.Identity
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(OrderedDict(
            fc1=nn.Linear(512 * pool * pool, width), relu_fc1=nn.ReLU(), drop1=drop(),
            fc2=nn.Linear(width, width), relu_fc2=nn.ReLU(), drop2=drop(),
            fc3=nn.Linear(width, num_classes)))

        # torchvision's VGG init, so the large variant starts as torchvision's would.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

        self._block_probes = [n for n in points if n.startswith("conv")]
        self._probe_paths = {**points, "fc1": "classifier.relu_fc1",
                             "fc2": "classifier.relu_fc2"}

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg16_bn(num_classes: int, in_channels: int = 3, image_size: int = 224,
             dropout: float | None = None) -> VGG16BN:
    return VGG16BN(num_classes, in_channels, image_size, batch_norm=True, dropout=dropout)


def vgg16(num_classes: int, in_channels: int = 3, image_size: int = 224,
          dropout: float | None = None) -> VGG16BN:
    return VGG16BN(num_classes, in_channels, image_size, batch_norm=False, dropout=dropout)
