"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman, ICLR 2015): five conv stages each ending in a 2x2
max-pool, so a 32x32 input reaches 1x1x512, then one linear head.

Layers and initialisation follow the original ByzShield code's ``vgg11_bn``/``vgg13_bn`` (``src/model_ops/vgg.py``):
conv weights drawn from N(0, 2/n) with n = kernel height * kernel width * output channels (He, fan-out), conv and
linear biases zero, BatchNorm weight 1 and bias 0, linear weight from N(0, 0.01^2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

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
        self._initialise()

    def _initialise(self) -> None:
        """The original code's initialisation (see the module docstring); draws from torch's global RNG."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11(num_classes: int, in_channels: int) -> VGG:
    return VGG(LAYOUTS["VGG11"], num_classes, in_channels)


def vgg13(num_classes: int, in_channels: int) -> VGG:
    return VGG(LAYOUTS["VGG13"], num_classes, in_channels)
