"""The factored engine's layer rules, one module per layer kind (the interface in :mod:`.base`).

* :mod:`.linear`: ``nn.Linear``, rank-two per-sample products met through a few dot products;
* :mod:`.conv2d`: ``nn.Conv2d``, the same on unfolded patches, as Gram matrices or weight tangents;
* :mod:`.activation`: element-wise σ, smooth (σ'' ≠ 0) or piecewise linear;
* :mod:`.pooling`: max pooling, linear given the primal's arg-max;
* :mod:`.linear_map`: average pooling, reshapes and inactive dropout, which add nothing.
"""
from .activation import PIECEWISE_LINEAR, SMOOTH, PiecewiseLinearRule, SmoothActivationRule
from .base import LayerRule, Pass1Context, Pass2Context, UnsupportedModel, add_into, module_label, rowdot
from .conv2d import Conv2dGram, Conv2dRule, Conv2dState, Conv2dTangents
from .linear import LinearRule
from .linear_map import LinearMapRule
from .pooling import MaxPool2dRule

__all__ = ["PIECEWISE_LINEAR", "SMOOTH", "Conv2dGram", "Conv2dRule", "Conv2dState", "Conv2dTangents", "LayerRule",
           "LinearMapRule", "LinearRule", "MaxPool2dRule", "Pass1Context", "Pass2Context", "PiecewiseLinearRule",
           "SmoothActivationRule", "UnsupportedModel", "add_into", "module_label", "rowdot"]
