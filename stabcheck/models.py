"""The networks of the paper's experiments (PAPER.md §3)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class FNN(nn.Sequential):
    """Fully connected ReLU net, input flattened: in_dim → widths… → out_dim (paper: 784-500-500-500-10).

    PyTorch default initialisation, as in the paper.

    >>> FNN(784, (500, 500, 500), 10).num_parameters()
    898510
    """

    def __init__(self, in_dim: int = 784, widths: Sequence[int] = (500, 500, 500), out_dim: int = 10):
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_dim
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        layers.append(nn.Linear(prev, out_dim))
        super().__init__(*layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class VGG(nn.Sequential):
    """The VGG-style net of the paper's Table 4 for 32×32×3 inputs (5 convolutions, K outputs).

    conv3×3 3→16, ReLU, maxpool 2 → 16→16 → 16→32 → 32→64 → 64→64 (each conv, ReLU, maxpool)
    → linear 64→128, ReLU → linear 128→K. Conv weights ~ N(0, 2/(k²·C_out)), conv bias 0;
    linear layers keep PyTorch's default initialisation.

    >>> VGG(num_classes=2)(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 2])
    """

    CHANNELS = (3, 16, 16, 32, 64, 64)

    def __init__(self, num_classes: int = 2, channels: Sequence[int] = CHANNELS, hidden: int = 128):
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten(), nn.Linear(channels[-1], hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
        super().__init__(*layers)
        self.reset_conv_parameters()

    @torch.no_grad()
    def reset_conv_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                m.weight.normal_(0.0, math.sqrt(2.0 / (k * k * m.out_channels)))
                m.bias.zero_()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
