"""The rule of max pooling: linear given the arg-max indices of the primal, a gather and its scatter-add."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LayerRule, UnsupportedModel, module_label


@dataclass
class MaxPoolState:
    argmax: Tensor                     # arg-max indices of the primal, per output element
    in_shape: torch.Size


class MaxPool2dRule(LayerRule[MaxPoolState]):
    """``nn.MaxPool2d`` and ``nn.AdaptiveMaxPool2d``: tangents and signals follow the primal's maxima."""

    keys = ()

    def __init__(self, module: nn.Module, prefix: str):
        self.label = module_label(prefix)
        if isinstance(module, nn.AdaptiveMaxPool2d):
            self.pool = lambda x: F.adaptive_max_pool2d(x, module.output_size, return_indices=True)
        else:
            self.pool = lambda x: F.max_pool2d(x, module.kernel_size, module.stride, module.padding,
                                               module.dilation, module.ceil_mode, return_indices=True)

    @staticmethod
    def _gather(st: MaxPoolState, x: Tensor) -> Tensor:
        return x.flatten(2).gather(2, st.argmax.flatten(2)).view(st.argmax.shape)

    @staticmethod
    def _scatter(st: MaxPoolState, delta: Tensor) -> Tensor:
        # Out of place: under torch.func.vmap, delta may be batched where the zeros are not.
        return torch.zeros(st.in_shape, dtype=delta.dtype, device=delta.device).flatten(2).scatter_add(
            2, st.argmax.flatten(2), delta.flatten(2)).view(st.in_shape)

    def forward1(self, ctx, a, a_tangent):
        if a.ndim != 4:  # the gather and scatter index the positions of each (sample, channel) plane
            raise UnsupportedModel(f"module {self.label!r} (max pooling) gets inputs of shape {tuple(a.shape)}; "
                                   "(batch, C, H, W) needed")
        out, argmax = self.pool(a)
        st = MaxPoolState(argmax, a.shape)
        return st, out, (None if a_tangent is None else self._gather(st, a_tangent))

    def backward1(self, st, ctx, delta, delta_tangent, need_input):
        return self._scatter(st, delta), self._scatter(st, delta_tangent)

    def forward2(self, st, ctx, t):
        return None if t is None else self._gather(st, t)

    def backward2(self, st, ctx, t_dot, need_input):
        return self._scatter(st, t_dot)
