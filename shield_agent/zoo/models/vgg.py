"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman, ICLR 2015): five conv stages each ending in a 2x2
max-pool, so a 32x32 input reaches 1x1x512, then one linear head."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: channels per conv layer; "M" is a 2x2 max-pool.
LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "VGG11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "VGG13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


class VGG(nn.Module):
    def __init__(self, layout: Sequence[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                width = int(item)
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11(num_classes: int, in_channels: int) -> VGG:
    return VGG(LAYOUTS["VGG11"], num_classes, in_channels)


def vgg13(num_classes: int, in_channels: int) -> VGG:
    return VGG(LAYOUTS["VGG13"], num_classes, in_channels)
