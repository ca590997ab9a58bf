"""The two batched passes of the factored engine over one chunk, and the loss's factors.

Pass 1 is one forward-over-reverse pass at the shared tangent v: it gives Σ_i H_i v of the chunk
and records, per layer, what pass 2 needs (:class:`Records`). Pass 2 applies each H_i to its own
tangent w_i = [H_i v if own] + [shift] through those records. The loss adds its output Hessian
(mse: 2/K·I, half_sq: I, ce: diag(p) − ppᵀ).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ...problem import Params, Problem
from .layers import LayerRule, Pass1Context, Pass2Context, add_into, rowdot


@dataclass(frozen=True)
class Plan:
    """The layer rules of a model in forward order; backward sweeps stop at ``first_param``."""

    layers: tuple[LayerRule, ...]
    first_param: int      # index of the first layer with parameters: nothing before it needs δ


@dataclass
class Records:
    """What pass 1 leaves on one chunk: per-layer states, Σ_i H_i v (a sum), the outputs, ż ↦ ∇²ℓ ż."""

    states: list[Any]
    hv_sum: Params
    outputs: Tensor
    loss_hvp: Callable[[Tensor], Tensor]


def records_bytes(records: Records) -> int:
    """Bytes of the tensors the layer states of ``records`` hold, their recorded factors included
    (closures' saved tensors not counted)."""
    def held(obj: Any) -> int:
        if isinstance(obj, Tensor):
            return obj.nbytes
        if is_dataclass(obj):
            return sum(held(getattr(obj, f.name)) for f in fields(obj))
        return 0

    return sum(held(st) for st in records.states)


def loss_factors(loss: str, z: Tensor, y: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(δ = ∂ℓ/∂z, ż ↦ ∇²ℓ ż) of the per-sample loss at the outputs z.

    >>> d, hess = loss_factors("half_sq", torch.tensor([[1., 2.]]), torch.tensor([[0., 2.]]))
    >>> d, hess(torch.tensor([[3., 4.]]))
    (tensor([[1., 0.]]), tensor([[3., 4.]]))
    """
    if loss == "ce":
        p = torch.softmax(z, dim=1)
        d = p.clone()
        d[torch.arange(z.shape[0], device=z.device), y] -= 1.0
        return d, lambda t: p * t - p * rowdot(p, t)[:, None]
    if loss == "mse":
        scale = 2.0 / z[0].numel()
        return scale * (z - y), lambda t: scale * t
    return z - y, lambda t: t  # half_sq


def pass1(plan: Plan, params: Params, x: Tensor, y: Tensor, loss: str, v: Params, keep: bool = True) -> Records:
    """Forward-over-reverse at the shared tangent v on the chunk (x, y); ``keep=False`` records nothing."""
    ctx = Pass1Context(params, v, keep=keep)
    states = []
    a, a_tangent = x, None
    for layer in plan.layers:
        st, a, a_tangent = layer.forward1(ctx, a, a_tangent)
        states.append(st)
    delta, loss_hvp = loss_factors(loss, a, y)
    delta_tangent = loss_hvp(a_tangent)
    for i in range(len(plan.layers) - 1, plan.first_param - 1, -1):
        delta, delta_tangent = plan.layers[i].backward1(states[i], ctx, delta, delta_tangent, i > plan.first_param)
    return Records(states, ctx.hv, a, loss_hvp)


def pass2(plan: Plan, records: Records, ctx: Pass2Context) -> None:
    """Adds Σ_i H_i w_i, w_i = [H_i v if ctx.own] + [ctx.shift], to ``ctx.out``, from the records of pass 1."""
    t = None
    for layer, st in zip(plan.layers, records.states):
        t = layer.forward2(st, ctx, t)
    t_dot = records.loss_hvp(t)
    for i in range(len(plan.layers) - 1, plan.first_param - 1, -1):
        t_dot = plan.layers[i].backward2(records.states[i], ctx, t_dot, i > plan.first_param)


def hv_sum(plan: Plan, problem: Problem, v: Params) -> Params:
    """Σ_i H_i v over all samples, chunk by chunk, from pass 1 alone (nothing recorded)."""
    total: Params = {}
    for c in problem.chunks():
        for k, t in pass1(plan, problem.params, problem.inputs[c], problem.targets[c], problem.loss, v, keep=False).hv_sum.items():
            add_into(total, k, t)
    return total
