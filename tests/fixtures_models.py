"""Small networks with known layouts, for the tests of what reads units (ablation, attributes):
a network whose every unit serves one class, a conv chain with and without BatchNorm, and the
CIFAR ResNet layout in two stages. Test modules import them as ``from fixtures_models import
...`` (tests/ is on the import path)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers import randomise_bn

K = 4  # classes of OneClassNet, and its units


class OneClassNet(nn.Module):
    """Input: class code e_k times a scale. Hidden unit u = relu(x_u) fires for class u only and
    drives logit u; the output bias (0.1 on class 1) decides when every unit is silent. So
    ablating unit u sends class u to class 1: classes 0, 2 and 3 lose all their accuracy,
    class 1 none, and no other class is touched."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(K, K, bias=False)
        self.relu = nn.ReLU()
        self.out = nn.Linear(K, K)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(K))
            self.out.weight.copy_(torch.eye(K))
            self.out.bias.copy_(torch.tensor([0.0, 0.1, 0.0, 0.0]))

    def probe_points(self):
        return {"hidden": self.relu}

    def forward(self, x):
        return self.out(self.relu(self.hidden(x)))


def one_class_data(per_class: int = 10):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(K).repeat_interleave(per_class)
    x = F.one_hot(y, K).float() * (0.5 + torch.rand(len(y), 1, generator=g))
    return x, y


def randomise_bn_02(model: nn.Module, seed: int = 0) -> nn.Module:
    """``helpers.randomise_bn`` with running means drawn with std 0.2 (the others use 0.5):
    the ablation tests' models and tolerances were set with it."""
    return randomise_bn(model, seed, mean_std=0.2)


def chain_net() -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn_02(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 32), nn.ReLU(), nn.Linear(32, 10)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class TinyCifarResNet(nn.Module):
    """The CIFAR ResNet layout (conv1, bn1, relu, layer1, layer2, avgpool, fc), two stages."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def probe_points(self):
        return {"stem": self.relu, **{f"block{s}_{i}": getattr(self, f"layer{s}")[i]
                                      for s in (1, 2) for i in (0, 1)}}

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = self.avgpool(out)
        return self.fc(out.view(out.size(0), -1))

