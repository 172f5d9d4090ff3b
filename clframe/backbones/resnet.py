"""ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), as in GEM / ER / DER / Mammoth.

``nf`` is the width of the first stage (stages: nf, 2nf, 4nf, 8nf): ``nf=64`` is the full
ResNet-18 (11.2 M parameters, 512 features), ``nf=20`` the reduced ResNet-18 of
Lopez-Paz & Ranzato (2017) and Chaudhry et al. (2019) (1.1 M parameters, 160 features).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from clframe.backbones.simple import Backbone
from clframe.errors import ConfigError
from clframe.registry import register_backbone


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register_backbone("resnet18")
class ResNet18(Backbone):
    """ResNet-18, CIFAR stem; ``nf=64`` full width, ``nf=20`` reduced (GEM / ER papers).
    Global average pooling, so any input size works (MNIST 1x28x28 too)."""

    def __init__(self, input_shape: Sequence[int], nf: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        if nf <= 0:
            raise ConfigError("backbone.nf", nf, "a positive integer (64 full ResNet-18, 20 reduced)")
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU())
        layers, c_in = [], nf
        for i, n in enumerate(blocks):
            c_out, stride = nf * 2**i, 1 if i == 0 else 2
            for j in range(n):
                layers.append(BasicBlock(c_in, c_out, stride if j == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.num_features = c_in

    def forward_features(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)
