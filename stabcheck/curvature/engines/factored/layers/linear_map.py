"""The rule of parameter-free linear maps (average pooling, reshapes, inactive dropout): they add no
curvature, and tangents and signals pass as through the map and its transpose."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn
from torch.func import vjp

from .base import LayerRule


@dataclass
class LinearMapState:
    pullback: Callable[[Tensor], tuple[Tensor]]   # δ ↦ (Jᵀ δ,) of the map at this chunk's input


class LinearMapRule(LayerRule[LinearMapState]):
    keys = ()

    def __init__(self, module: nn.Module, prefix: str):
        self.module = module

    def forward1(self, ctx, a, a_tangent):
        out, pullback = vjp(self.module, a)
        return LinearMapState(pullback), out, (None if a_tangent is None else self.module(a_tangent))

    def backward1(self, st, ctx, delta, delta_tangent, need_input):
        return st.pullback(delta)[0], st.pullback(delta_tangent)[0]

    def forward2(self, st, ctx, t):
        return None if t is None else self.module(t)

    def backward2(self, st, ctx, t_dot, need_input):
        return st.pullback(t_dot)[0]
