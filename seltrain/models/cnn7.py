"""Ukita's 7-layer CNN for CIFAR-10 (orientation selectivity; docs/METHODS.md sec. 4).

Ported from the author's Keras code: six unpadded 3x3 convs with 32, 32, 64, 64, 128, 128
channels at strides 1, 2, 1, 2, 1, 2, each ``Conv2D(activation='relu')`` followed by
``BatchNormalization`` -- so ReLU comes *before* BN here, unlike the ResNets -- then flatten,
dense 512 (ReLU, then BN) and dense num_classes. The probe points are the ReLUs, i.e. the
post-ReLU, pre-BN activations that the paper reads as the unit responses (his
grating_analysis.py reads the Keras layers ``layer1``...``layer6`` and ``fc1``, whose outputs
are post-ReLU). The ablation points are the BatchNorms after them: his ablation.py zeroes
``bn1``...``bn7``, so the next layer receives zero; zeroing the ReLU output instead would let
BN emit beta - gamma * mu / sqrt(var + eps) for the channel (seltrain/models/probed.py).

Weights start as Keras's defaults (Glorot-uniform kernels, zero biases). BatchNorm keeps
PyTorch's defaults (momentum 0.1, eps 1e-5); Keras's are momentum 0.99 (0.01 in PyTorch's
convention) and eps 1e-3 -- whether that matters for the paper's results is unconfirmed.
"""
from __future__ import annotations

from torch import Tensor, nn

from seltrain.models.probed import ModelConfigError, Probed

CONVS = ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2))  # (channels, stride)


def _out_size(px: int) -> int:
    # Keras 'valid' padding: floor((n - k) / s) + 1 per conv; <= 0 means the input is too small.
    for _, stride in CONVS:
        px = (px - 3) // stride + 1 if px >= 3 else 0
    return px


def _min_size() -> int:
    px = 3
    while _out_size(px) < 1:
        px += 1
    return px  # 29: the design size is 32 (CIFAR-10), 28 px (Fashion-MNIST) is one short


class CNN7(Probed, nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 dropout: float | None = None):
        super().__init__()
        side = _out_size(image_size)
        if side < 1:
            raise ModelConfigError(
                f"cnn7 needs inputs of at least {_min_size()} px (it was built for 32 px "
                f"CIFAR-10 images, with unpadded convs), got {image_size} px; pick another "
                "model or resize the data")
        c_in = in_channels
        for i, (c_out, stride) in enumerate(CONVS, 1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride))
            setattr(self, f"relu{i}", nn.ReLU())
            setattr(self, f"bn{i}", nn.BatchNorm2d(c_out))
            c_in = c_out
        self.fc1 = nn.Linear(c_in * side * side, 512)
        self.relu_fc1 = nn.ReLU()
        self.bn_fc1 = nn.BatchNorm1d(512)
        # Ukita's network has no dropout (None, 0). A probability puts one after the hidden
        # dense layer, before the classifier: where VGG has its own (Zhou et al. 2018's
        # BatchNorm x dropout comparison). It follows fc1's BN, so the probe (relu_fc1) and
        # the ablation point (bn_fc1) read what they read without it.
        self.drop_fc1 = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc2 = nn.Linear(512, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self._block_probes = [f"conv{i}" for i in range(1, len(CONVS) + 1)]
        self._probe_paths = {**{c: f"relu{c[4:]}" for c in self._block_probes},
                             "fc1": "relu_fc1"}
        self._ablation_paths = {**{c: f"bn{c[4:]}" for c in self._block_probes},
                                "fc1": "bn_fc1"}

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, len(CONVS) + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"relu{i}")(getattr(self, f"conv{i}")(x)))
        # Keras flattens NHWC, we flatten NCHW: same features in another order, which only
        # matters when porting trained Keras weights (and not at all at 32 px, where it is 1x1).
        x = self.bn_fc1(self.relu_fc1(self.fc1(x.flatten(1))))
        return self.fc2(self.drop_fc1(x))


def cnn7(num_classes: int, in_channels: int = 3, image_size: int = 32,
         dropout: float | None = None) -> CNN7:
    return CNN7(num_classes, in_channels, image_size, dropout)
