"""LeNet for 28x28 single-channel images (MNIST), as used by ByzShield's MNIST experiments.

Layout of the original code (``src/model_ops/lenet.py``): conv(20, 5x5) - maxpool 2 - relu - conv(50, 5x5) -
maxpool 2 - relu - fc 500 - fc classes, with **no nonlinearity between the two linear layers** (so they compose to one
affine map of rank <= 500). ``relu_fc1=True`` (the CLI's ``LeNet-relu``) puts a ReLU after fc1, the textbook
LeNet-5 layout this project used before; it trains faster, but it is not the network the paper measured.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LeNet(nn.Module):
    """LeNet-5 style network; 431,080 parameters for 10 classes (either variant)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, relu_fc1: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.relu_fc1 = relu_fc1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = self.fc1(torch.flatten(x, 1))
        if self.relu_fc1:
            x = F.relu(x)
        return self.fc2(x)
