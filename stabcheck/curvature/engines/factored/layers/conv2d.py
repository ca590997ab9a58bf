"""The rule of ``nn.Conv2d``: the Linear rule on unfolded patches, in one of two forms per layer.

Sample i's (H_i v)_W = Σ_p δ̇_ip ⊗ patch_ip + δ_ip ⊗ ȧpatch_ip = D̈_i Patchesᵢᵀ + D_i ȦPatchesᵢᵀ over
the P output positions p. What pass 2 needs of it is recorded in the smaller of two forms
(:class:`Conv2dGram` when P(C_out + C_in k²) < C_out C_in k², else :class:`Conv2dTangents`):

* P×P Gram matrices of the factors, as for a Linear layer (P = 1);
* the per-sample weight tangents themselves (m × C_out × C_in k²), applied as batched matrix products.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input, conv2d_weight

from .base import LayerRule, UnsupportedModel, WeightRule, add_into


@dataclass(frozen=True)
class Conv2dGram:
    """Sample i's (H_i v) as P×P Gram matrices of its factors (few output positions P)."""

    delta: Tensor                                # δ, (m, C_out, H_out, W_out)
    patches: Tensor                              # unfolded patches of a, (m, C_in k², P)
    delta_tangent: Tensor                        # δ̇ flattened, (m, C_out, P)
    patch_gram: Tensor                           # patch_p·patch_q (+1 for the bias), (m, P, P)
    delta_tangent_delta_gram: Tensor             # δ̇_p·δ_q
    patch_tangents: Optional[Tensor] = None      # unfolded patches of ȧ; None where ȧ = 0
    patch_tangent_patch_gram: Optional[Tensor] = None  # ȧpatch_p·patch_q; None where ȧ = 0
    delta_gram: Optional[Tensor] = None          # δ_p·δ_q; None where ȧ = 0

    def times_own_patches(self) -> Tensor:
        """(H_i v) applied to sample i's patches and the bias's 1, shaped as δ."""
        out = torch.bmm(self.delta_tangent, self.patch_gram)
        if self.patch_tangents is not None:
            out.baddbmm_(self.delta.flatten(2), self.patch_tangent_patch_gram)
        return out.view(self.delta.shape)

    def transposed_times_own_delta(self) -> Tensor:
        """(H_i v)_Wᵀ δ_i on the patches, (m, C_in k², P)."""
        cols = torch.bmm(self.patches, self.delta_tangent_delta_gram)
        if self.patch_tangents is not None:
            cols.baddbmm_(self.patch_tangents, self.delta_gram)
        return cols


@dataclass(frozen=True)
class Conv2dTangents:
    """Sample i's (H_i v) as the per-sample weight and bias tangents themselves (many positions)."""

    delta: Tensor                                # δ, (m, C_out, H_out, W_out)
    patches: Tensor                              # unfolded patches of a, (m, C_in k², P)
    weight: Tensor                               # (H_i v)_W, (m, C_out, C_in k²)
    bias: Optional[Tensor] = None                # (H_i v)_b, (m, C_out); None without a bias

    def times_own_patches(self) -> Tensor:
        out = torch.bmm(self.weight, self.patches).view(self.delta.shape)
        if self.bias is not None:
            out.add_(self.bias[:, :, None, None])
        return out

    def transposed_times_own_delta(self) -> Tensor:
        return torch.bmm(self.weight.transpose(1, 2), self.delta.flatten(2))


@dataclass
class Conv2dState:
    a: Tensor
    a_tangent: Optional[Tensor]
    factors: Union[Conv2dGram, Conv2dTangents, None] = None  # recorded by backward1 when ctx.keep
    t: Optional[Tensor] = None                   # pass 2's input tangent


class Conv2dRule(WeightRule, LayerRule[Conv2dState]):
    def __init__(self, module: nn.Conv2d, prefix: str):
        super().__init__(module, prefix)
        if module.groups != 1:
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) has groups={module.groups}; only groups=1 is supported")
        if module.padding_mode != "zeros":
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) pads with {module.padding_mode!r}; only 'zeros' is supported")
        self.kernel, self.stride, self.dilation = module.kernel_size, module.stride, module.dilation
        self.padding = self._int_padding(module)

    def _int_padding(self, module: nn.Conv2d) -> tuple[int, int]:
        if module.padding == "valid":
            return (0, 0)
        if module.padding == "same":
            if any(s != 1 for s in module.stride) or any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
                raise UnsupportedModel(f"module {self.label!r} (Conv2d) uses asymmetric padding='same'")
            return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
        return tuple(module.padding)

    def _conv(self, x, w, b=None):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def _unfold(self, x):
        return F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)

    def _input_grad(self, shape, w, delta):
        return conv2d_input(shape, w, delta, self.stride, self.padding, self.dilation)

    def _weight_grad(self, x, shape, delta):
        return conv2d_weight(x, shape, delta, self.stride, self.padding, self.dilation)

    def forward1(self, ctx, a, a_tangent):
        if a.ndim != 4:
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) gets inputs of shape {tuple(a.shape)}; (batch, C, H, W) needed")
        P, v = ctx.params, ctx.v
        z = self._conv(a, P[self.w], self._bias(P))
        z_tangent = self._conv(a, v[self.w], self._bias(v))
        if a_tangent is not None:
            z_tangent.add_(self._conv(a_tangent, P[self.w]))
        return Conv2dState(a, a_tangent), z, z_tangent

    def backward1(self, st, ctx, delta, delta_tangent, need_input):
        a, a_tangent, W = st.a, st.a_tangent, ctx.params[self.w]
        if ctx.keep:
            st.factors = self._factors(st, delta, delta_tangent)
        if isinstance(st.factors, Conv2dTangents):
            add_into(ctx.hv, self.w, st.factors.weight.sum(0).view_as(W))
        else:
            g = self._weight_grad(a, W.shape, delta_tangent)
            if a_tangent is not None:
                g.add_(self._weight_grad(a_tangent, W.shape, delta))
            add_into(ctx.hv, self.w, g)
        if self.b:
            add_into(ctx.hv, self.b, delta_tangent.sum((0, 2, 3)))
        if not need_input:
            return None, None
        delta_in_tangent = self._input_grad(a.shape, W, delta_tangent)
        delta_in_tangent.add_(self._input_grad(a.shape, ctx.v[self.w], delta))
        return self._input_grad(a.shape, W, delta), delta_in_tangent

    def _factors(self, st: Conv2dState, delta: Tensor, delta_tangent: Tensor) -> Conv2dGram | Conv2dTangents:
        """What pass 2 needs of (H_i v), in the smaller of the two forms (the module docstring)."""
        patches = self._unfold(st.a)                                           # (m, C_in k², P)
        D, D_tangent = delta.flatten(2), delta_tangent.flatten(2)              # (m, C_out, P)
        patch_tangents = None if st.a_tangent is None else self._unfold(st.a_tangent)
        out_ch, k, positions = D.shape[1], patches.shape[1], D.shape[2]
        if positions * (out_ch + k) < out_ch * k:
            patch_gram = torch.bmm(patches.transpose(1, 2), patches)
            if self.b:
                patch_gram.add_(1.0)                                           # the bias sees a constant 1
            moving = patch_tangents is not None
            return Conv2dGram(
                delta, patches, D_tangent, patch_gram, torch.bmm(D_tangent.transpose(1, 2), D), patch_tangents,
                torch.bmm(patch_tangents.transpose(1, 2), patches) if moving else None,
                torch.bmm(D.transpose(1, 2), D) if moving else None)
        weight = torch.bmm(D_tangent, patches.transpose(1, 2))                 # (m, C_out, C_in k²)
        if patch_tangents is not None:
            weight.baddbmm_(D, patch_tangents.transpose(1, 2))
        return Conv2dTangents(delta, patches, weight, delta_tangent.sum((2, 3)) if self.b else None)

    def forward2(self, st, ctx, t):
        out = st.factors.times_own_patches() if ctx.own else None
        if ctx.shift is not None:
            s = self._conv(st.a, ctx.shift[self.w], self._bias(ctx.shift))
            out = s if out is None else out.add_(s)
        if t is not None:
            out.add_(self._conv(t, ctx.params[self.w]))
        st.t = t
        return out

    def backward2(self, st, ctx, t_dot, need_input):
        W, a, delta = ctx.params[self.w], st.a, st.factors.delta
        g = self._weight_grad(a, W.shape, t_dot)
        if st.t is not None:
            g.add_(self._weight_grad(st.t, W.shape, delta))
        add_into(ctx.out, self.w, g)
        if self.b:
            add_into(ctx.out, self.b, t_dot.sum((0, 2, 3)))
        if not need_input:
            return None
        r = self._input_grad(a.shape, W, t_dot)
        if ctx.own:  # (H_i v)_Wᵀ δ_i on the patches, folded back onto the input
            cols = st.factors.transposed_times_own_delta()
            r.add_(F.fold(cols, a.shape[2:], self.kernel, self.dilation, self.padding, self.stride))
        if ctx.shift is not None:
            r.add_(self._input_grad(a.shape, ctx.shift[self.w], delta))
        return r
