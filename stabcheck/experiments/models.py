"""The networks of the paper's experiments (PAPER.md §3)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn



@torch.no_grad()
def init_conv_(conv: nn.Conv2d) -> None:
    """The authors' convolution init (PAPER.md §3): weights N(0, 2/(k²·C_out)), bias 0, in place."""
    k = conv.kernel_size[0]
    conv.weight.normal_(0.0, math.sqrt(2.0 / (k * k * conv.out_channels)))
    conv.bias.zero_()

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
                init_conv_(m)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class _Shortcut(nn.Module):
    """Identity, or for a change of shape the parameter-free "type A" shortcut: subsample by 2, pad channels with zeros."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.pad = c_out - c_in
        self.stride = stride

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad > 0:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.pad, *x.shape[2:])], dim=1)
        return x


class ResidualBlock(nn.Module):
    """relu(norm(conv(relu(norm(conv x)))) + shortcut x), 3×3 convolutions; norm is BatchNorm or identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.shortcut = _Shortcut(c_in, c_out, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """The authors' "standard" CIFAR residual net (C13): depth = 6m + 2, three stages of m blocks.

    Channels 8w, 16w, 32w (w = ``width``; the authors used w = 2, depth 14), stride 2 between stages,
    parameter-free type-A shortcuts, global average pooling, linear → K. Inputs are standardised
    with the CIFAR-10 channel mean/std (fixed buffers) as in the authors' code. ``batch_norm=False``
    gives the BatchNorm-free variant, whose training and evaluation functions coincide, so the
    stability bounds apply to it; the BatchNorm variant trains with batch statistics and is measured
    in eval mode (running statistics), a different function. Init: conv weights
    N(0, 2/(k²·C_out)), conv bias 0, BatchNorm 1/0, linear weight Kaiming normal, linear bias 0.

    >>> net = ResNet(depth=8, width=1, batch_norm=False)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 2])
    """

    MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
    STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)

    def __init__(self, depth: int = 14, width: int = 2, num_classes: int = 2, batch_norm: bool = True):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6m + 2 with m ≥ 1 (8, 14, 20, ...), got {depth}")
        if width < 1:
            raise ValueError(f"ResNet width must be a positive integer, got {width}")
        super().__init__()
        blocks = (depth - 2) // 6
        channels = (8 * width, 16 * width, 32 * width)
        self.batch_norm = batch_norm
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, channels[0], 3, padding=1)
        self.bn = nn.BatchNorm2d(channels[0]) if batch_norm else nn.Identity()
        stages = []
        c_in = channels[0]
        for i, c in enumerate(channels):
            layers = [ResidualBlock(c_in, c, 1 if i == 0 else 2, batch_norm)]
            layers += [ResidualBlock(c, c, 1, batch_norm) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                m.bias.zero_()

    def forward(self, x):
        out = torch.relu(self.bn(self.conv((x - self.mean) / self.std)))
        out = self.stages(out)
        return self.fc(out.mean(dim=(2, 3)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ResidualFNNBlock(nn.Module):
    """relu(h + norm(W₂ relu(norm(W₁ h)))): the conv block of :class:`ResNet` with linear layers."""

    def __init__(self, width: int, batch_norm: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.bn1 = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.fc2 = nn.Linear(width, width)
        self.bn2 = nn.BatchNorm1d(width) if batch_norm else nn.Identity()

    def forward(self, h):
        return torch.relu(h + self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(h))))))


class ResidualFNN(nn.Module):
    """Fully connected residual net (the small-scale stand-in for :class:`ResNet` in C13).

    flatten → linear in_dim→w, norm, ReLU → ``blocks`` residual blocks of width w → linear w→K,
    norm = BatchNorm1d or identity (``batch_norm=False``). PyTorch default initialisation.

    >>> ResidualFNN(784, 16, 2, 10, batch_norm=False)(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3, 10])
    """

    def __init__(self, in_dim: int = 784, width: int = 64, blocks: int = 2, out_dim: int = 10,
                 batch_norm: bool = True):
        if width < 1 or blocks < 1:
            raise ValueError(f"ResidualFNN needs width ≥ 1 and blocks ≥ 1, got width={width}, blocks={blocks}")
        super().__init__()
        self.batch_norm = batch_norm
        self.stem = nn.Linear(in_dim, width)
        self.bn = nn.BatchNorm1d(width) if batch_norm else nn.Identity()
        self.blocks = nn.Sequential(*[ResidualFNNBlock(width, batch_norm) for _ in range(blocks)])
        self.head = nn.Linear(width, out_dim)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x.flatten(1))))
        return self.head(self.blocks(h))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


#: Model names and the options each accepts.
MODELS = {"fnn": ("widths",), "vgg": ("channels", "hidden"), "resnet": ("depth", "width", "batch_norm"),
          "resfnn": ("width", "blocks", "batch_norm")}


def build_model(name: str, *, seed: int, in_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """A freshly initialised model, its random initialisation drawn from ``seed`` only.

    ``fnn``: options ``widths``; ``vgg``: ``channels``, ``hidden``; ``resnet``: ``depth``, ``width``,
    ``batch_norm``; ``resfnn``: ``width``, ``blocks``, ``batch_norm``. The global torch RNG is left as it was.

    >>> a = build_model("fnn", seed=1, in_shape=(1, 28, 28), num_classes=10, widths=(8,))
    >>> b = build_model("fnn", seed=1, in_shape=(1, 28, 28), num_classes=10, widths=(8,))
    >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    True
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {tuple(MODELS)}")
    unknown = sorted(set(options) - set(MODELS[name]))
    if unknown:
        raise ValueError(f"model {name!r} takes the options {MODELS[name]}, not {unknown}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "fnn":
            return FNN(math.prod(in_shape), tuple(options.get("widths", (500, 500, 500))), num_classes)
        if name == "resfnn":
            return ResidualFNN(math.prod(in_shape), int(options.get("width", 64)), int(options.get("blocks", 2)),
                               num_classes, bool(options.get("batch_norm", True)))
        if tuple(in_shape) != (3, 32, 32):
            raise ValueError(f"model {name!r} takes 3×32×32 images, got inputs of shape {tuple(in_shape)}")
        if name == "vgg":
            return VGG(num_classes, tuple(options.get("channels", VGG.CHANNELS)), int(options.get("hidden", 128)))
        return ResNet(int(options.get("depth", 14)), int(options.get("width", 2)), num_classes,
                      bool(options.get("batch_norm", True)))
