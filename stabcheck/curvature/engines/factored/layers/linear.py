"""The rule of ``nn.Linear``: per-sample products of rank two, applied through a few dot products.

(H_i v)_W = δ̇_i a_iᵀ + δ_i ȧ_iᵀ (rank two), (H_i v)_b = δ̇_i. Pass 2 needs it only through
(H_i v) a_i and (H_i v)ᵀ δ_i, e.g. (δ̇_i a_iᵀ + δ_i ȧ_iᵀ) a_i = δ̇_i (a_i·a_i) + δ_i (ȧ_i·a_i): a few
per-sample dot products instead of n parameter-sized vectors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LayerRule, UnsupportedModel, WeightRule, add_into, rowdot


@dataclass(frozen=True)
class LinearFactors:
    """What pass 2 needs of sample i's (H_i v): the output signals and the inner products they meet."""

    delta: Tensor                                # δ_i
    delta_tangent: Tensor                        # δ̇_i
    a_dot_a: Tensor                              # a_i·a_i (+1 for the bias)
    delta_dot_delta_tangent: Tensor              # δ_i·δ̇_i
    a_dot_a_tangent: Optional[Tensor] = None     # a_i·ȧ_i; None where ȧ = 0
    delta_dot_delta: Optional[Tensor] = None     # δ_i·δ_i; None where ȧ = 0


@dataclass
class LinearState:
    a: Tensor
    a_tangent: Optional[Tensor]
    factors: Optional[LinearFactors] = None      # recorded by backward1 when ctx.keep
    t: Optional[Tensor] = None                   # pass 2's input tangent


class LinearRule(WeightRule, LayerRule[LinearState]):
    def forward1(self, ctx, a, a_tangent):
        if a.ndim != 2:
            raise UnsupportedModel(
                f"module {self.label!r} (Linear) gets inputs of shape {tuple(a.shape)}; the factored engine "
                "needs (batch, features) inputs for its rank-two per-sample products"
            )
        P, v = ctx.params, ctx.v
        z = F.linear(a, P[self.w], self._bias(P))
        z_tangent = F.linear(a, v[self.w], self._bias(v))
        if a_tangent is not None:
            z_tangent.addmm_(a_tangent, P[self.w].T)
        return LinearState(a, a_tangent), z, z_tangent

    def backward1(self, st, ctx, delta, delta_tangent, need_input):
        a, a_tangent = st.a, st.a_tangent
        g = delta_tangent.T @ a
        if a_tangent is not None:
            g.addmm_(delta.T, a_tangent)
        add_into(ctx.hv, self.w, g)
        if self.b:
            add_into(ctx.hv, self.b, delta_tangent.sum(0))
        if ctx.keep:
            moving = a_tangent is not None
            st.factors = LinearFactors(
                delta, delta_tangent, rowdot(a, a) + (1.0 if self.b else 0.0), rowdot(delta, delta_tangent),
                rowdot(a, a_tangent) if moving else None, rowdot(delta, delta) if moving else None)
        if not need_input:
            return None, None
        W = ctx.params[self.w]
        return delta @ W, torch.addmm(delta @ ctx.v[self.w], delta_tangent, W)

    def forward2(self, st, ctx, t):
        out = None
        f = st.factors
        if ctx.own:
            # (H_i v) applied to (a_i, 1): δ̇_i (a_i·a_i + 1) + δ_i (ȧ_i·a_i)
            out = f.delta_tangent * f.a_dot_a[:, None]
            if f.a_dot_a_tangent is not None:
                out.addcmul_(f.delta, f.a_dot_a_tangent[:, None])
        if ctx.shift is not None:
            s = F.linear(st.a, ctx.shift[self.w], self._bias(ctx.shift))
            out = s if out is None else out.add_(s)
        if t is not None:
            out.addmm_(t, ctx.params[self.w].T)
        st.t = t
        return out

    def backward2(self, st, ctx, t_dot, need_input):
        f = st.factors
        g = t_dot.T @ st.a
        if st.t is not None:
            g.addmm_(f.delta.T, st.t)
        add_into(ctx.out, self.w, g)
        if self.b:
            add_into(ctx.out, self.b, t_dot.sum(0))
        if not need_input:
            return None
        r = t_dot @ ctx.params[self.w]
        if ctx.own:
            # (H_i v)_Wᵀ δ_i = a_i (δ̇_i·δ_i) + ȧ_i (δ_i·δ_i)
            r.addcmul_(st.a, f.delta_dot_delta_tangent[:, None])
            if f.delta_dot_delta is not None:
                r.addcmul_(st.a_tangent, f.delta_dot_delta[:, None])
        if ctx.shift is not None:
            r.addmm_(f.delta, ctx.shift[self.w])
        return r
