"""The rules of element-wise activations σ: ż = σ'(a) ȧ, δ_in = σ' δ, δ̇_in = σ' δ̇ + σ''(a) ȧ δ.

The last term vanishes for the piecewise-linear ones (:class:`PiecewiseLinearRule`), which then
record σ' alone; the smooth ones (:class:`SmoothActivationRule`) also record σ'', ȧ and δ.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp

from .base import LayerRule

#: Element-wise activations with a non-zero second derivative: they add σ''(z) ż δ.
SMOOTH = (nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
          nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)
#: Element-wise activations that are piecewise linear: σ'' = 0 almost everywhere.
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh)


def _out_of_place(module: nn.Module) -> nn.Module:
    if getattr(module, "inplace", False):
        # σ is differentiated at a leaf copy of its input, which autograd forbids overwriting;
        # σ is element-wise, so the out-of-place copy is the same map.
        module = copy.copy(module)
        module.inplace = False
    return module


def _slope_and_value(module: nn.Module, a: Tensor) -> tuple[Tensor, Tensor]:
    """(σ'(a), σ(a)): σ is element-wise, so the pullback of ones is σ'(a). torch.func rather than
    autograd, so that products made of these rules can be batched with torch.func.vmap."""
    y, pullback = vjp(module, a)
    return pullback(torch.ones_like(y))[0], y


def _tangent(a_tangent: Optional[Tensor], slope: Tensor) -> Optional[Tensor]:
    return None if a_tangent is None else a_tangent * slope


@dataclass
class PiecewiseLinearState:
    slope: Tensor                                # σ'(a)


class PiecewiseLinearRule(LayerRule[PiecewiseLinearState]):
    """σ with σ'' = 0 almost everywhere: a linear map given the slopes σ'(a) of the primal."""

    keys = ()

    def __init__(self, module: nn.Module, prefix: str):
        self.module = _out_of_place(module)

    def forward1(self, ctx, a, a_tangent):
        if type(self.module) is nn.ReLU:  # σ' = 1[a > 0], autograd's convention at 0
            slope = (a > 0).to(a.dtype)  # a float mask: multiplying by a bool tensor is several times slower
            return PiecewiseLinearState(slope), F.relu(a), _tangent(a_tangent, slope)
        slope, y = _slope_and_value(self.module, a)
        return PiecewiseLinearState(slope), y, _tangent(a_tangent, slope)

    def backward1(self, st, ctx, delta, delta_tangent, need_input):
        return delta * st.slope, delta_tangent * st.slope

    def forward2(self, st, ctx, t):
        return _tangent(t, st.slope)

    def backward2(self, st, ctx, t_dot, need_input):
        return t_dot * st.slope


@dataclass
class SmoothActivationState:
    slope: Tensor                                # σ'(a)
    curvature: Tensor                            # σ''(a)
    a_tangent: Optional[Tensor]                  # ȧ
    delta: Optional[Tensor] = None               # δ of the output, recorded by backward1
    t: Optional[Tensor] = None                   # pass 2's input tangent


class SmoothActivationRule(LayerRule[SmoothActivationState]):
    """σ with a non-zero σ'': its curvature couples the tangents to the back-propagated signal."""

    keys = ()

    def __init__(self, module: nn.Module, prefix: str):
        self.module = _out_of_place(module)

    def forward1(self, ctx, a, a_tangent):
        # σ' is element-wise too, so its pullback of ones is σ''(a).
        slope, pullback, y = vjp(lambda x: _slope_and_value(self.module, x), a, has_aux=True)
        (curvature,) = pullback(torch.ones_like(slope))
        return SmoothActivationState(slope, curvature, a_tangent), y, _tangent(a_tangent, slope)

    def backward1(self, st, ctx, delta, delta_tangent, need_input):
        delta_in_tangent = delta_tangent * st.slope
        st.delta = delta
        if st.a_tangent is not None:
            delta_in_tangent.addcmul_(st.curvature * st.a_tangent, delta)
        return delta * st.slope, delta_in_tangent

    def forward2(self, st, ctx, t):
        st.t = t
        return _tangent(t, st.slope)

    def backward2(self, st, ctx, t_dot, need_input):
        r = t_dot * st.slope
        if st.t is not None:
            r.addcmul_(st.curvature * st.t, st.delta)
        return r
