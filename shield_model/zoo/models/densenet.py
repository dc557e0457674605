"""CIFAR-style DenseNet-121 (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Dense blocks [6, 12, 24, 16] of BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) bottlenecks with growth k = 32, transitions
with compression 0.5 and 2x2 average pooling, a 3x3 stem with 2k channels, global average pool, linear head.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class DenseLayer(nn.Module):
    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet with ``blocks`` layers per dense block; the final pool is adaptive (4x4 on 32x32 inputs)."""

    def __init__(self, blocks: Sequence[int] = (6, 12, 24, 16), growth: int = 32, reduction: float = 0.5,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for index, count in enumerate(blocks):
            stages.append(nn.Sequential(*(DenseLayer(planes + i * growth, growth) for i in range(count))))
            planes += count * growth
            if index < len(blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.conv1(x))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


def densenet121(num_classes: int, in_channels: int) -> DenseNet:
    return DenseNet((6, 12, 24, 16), 32, 0.5, num_classes, in_channels)
