"""The paper's networks: sizes, initialisation, the residual variants and seeded construction."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stabcheck.experiments.models import FNN, VGG, ResidualFNN, ResNet, build_model
from stabcheck.curvature.problem import Problem, ProblemError


def test_fnn_paper_size_and_output():
    net = FNN(784, (500, 500, 500), 10)
    assert net.num_parameters() == 784 * 500 + 500 + 2 * (500 * 500 + 500) + 500 * 10 + 10
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_vgg_table4_layers_and_init():
    torch.manual_seed(0)
    net = VGG(num_classes=2)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 16), (16, 16), (16, 32), (32, 64), (64, 64)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 5
    for c in convs:
        assert torch.count_nonzero(c.bias) == 0
        expected = math.sqrt(2.0 / (9 * c.out_channels))
        assert abs(float(c.weight.detach().std()) / expected - 1) < 0.25
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "bn-free"])
def test_resnet_variants(batch_norm):
    net = ResNet(depth=14, width=2, num_classes=2, batch_norm=batch_norm)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert has_bn == batch_norm
    # three stages of two blocks, channels 16/32/64 (the authors' resnet(width=2, depth=14))
    assert [len(stage) for stage in net.stages] == [2, 2, 2]
    assert net.fc.in_features == 64
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 2)


def test_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6m \\+ 2"):
        ResNet(depth=10)


def test_type_a_shortcut_pads_with_zeros():
    block = ResNet(depth=8, width=1, batch_norm=False).stages[1][0]
    x = torch.rand(1, 8, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (1, 16, 16, 16)
    assert torch.equal(out[:, :8], x[:, :, ::2, ::2]) and torch.count_nonzero(out[:, 8:]) == 0


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "bn-free"])
def test_residual_fnn_and_eval_mode_curvature(batch_norm):
    net = ResidualFNN(784, 16, 2, 10, batch_norm=batch_norm)
    x, y = torch.rand(6, 1, 28, 28), torch.eye(10)[torch.arange(6)]
    assert net(x).shape == (6, 10)
    if batch_norm:
        with pytest.raises(ProblemError, match="training mode"):
            Problem(net, x, y)
    assert Problem(net.eval(), x, y).n == 6


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model("resnet", seed=5, in_shape=(3, 32, 32), num_classes=2, depth=8, width=1)
    b = build_model("resnet", seed=5, in_shape=(3, 32, 32), num_classes=2, depth=8, width=1)
    c = build_model("resnet", seed=6, in_shape=(3, 32, 32), num_classes=2, depth=8, width=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("mlp", seed=0, in_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ValueError, match="not \\['depth'\\]"):
        build_model("fnn", seed=0, in_shape=(1, 28, 28), num_classes=10, depth=3)
    with pytest.raises(ValueError, match="3×32×32"):
        build_model("vgg", seed=0, in_shape=(1, 28, 28), num_classes=10)
