"""The interface every layer rule implements, the two passes' shared contexts and small tensor helpers.

A rule carries a layer through the two passes of :mod:`..passes`; the state of one layer on one
chunk (a dataclass per rule) is made by ``forward1`` and read by the three later steps:

* pass 1 at the shared tangent v: ``forward1`` maps (a, ȧ) to (z, ż), ``backward1`` maps (δ, δ̇)
  of the layer's output to those of its input and adds Σ_i (H_i v) of the layer's parameters;
* pass 2 at the per-sample tangents w_i = [H_i v if own] + [shift]: ``forward2`` maps the input
  tangent t to the output's, ``backward2`` maps ṫ back and adds Σ_i (H_i w_i).

Names spell the symbols out: ``a`` is a layer's input, ``delta`` (δ) the gradient of the loss at its
output, and ``_tangent`` their tangents along v (ȧ, δ̇). A tangent of None is zero (layers before
the first parameter).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Optional, Protocol, TypeVar

import torch
from torch import Tensor

from ....problem import Params, ProblemError


class UnsupportedModel(ProblemError):
    """The factored engine has no exact rule for this model (the message names the module)."""


def rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample inner products x_i·y_i over all non-batch dimensions, shape (m,).

    >>> rowdot(torch.ones(2, 3), torch.arange(6.).view(2, 3))
    tensor([ 3., 12.])
    """
    return torch.einsum("ij,ij->i", x.flatten(1), y.flatten(1))


def add_into(acc: Params, key: str, value: Tensor) -> None:
    """acc[key] += value, storing ``value`` itself (or a copy if it is a view) on the first add."""
    if key in acc:
        acc[key].add_(value)
    else:
        acc[key] = value.clone() if value._base is not None or not value.is_contiguous() else value


def module_label(prefix: str) -> str:
    """The name of the module at ``prefix`` (with its trailing dot) for messages; "model" for the root."""
    return prefix[:-1] or "model"


@dataclass
class Pass1Context:
    """Shared by every layer of pass 1: parameters P, the tangent v, Σ_i H_i v so far, whether to record.

    ``keep=False`` records nothing for pass 2 (the sweep that only needs H v).
    """

    params: Params
    v: Params
    hv: Params = field(default_factory=dict)
    keep: bool = True


@dataclass
class Pass2Context:
    """Shared by every layer of pass 2: tangents w_i = [H_i v if own] + [shift]; Σ_i H_i w_i adds to ``out``."""

    params: Params
    own: bool
    shift: Optional[Params]
    out: Params


S = TypeVar("S")


class LayerRule(Protocol, Generic[S]):
    """How one layer kind takes part in the two passes; ``S`` is its per-chunk state."""

    #: Names of the layer's parameters in the problem (empty for parameter-free layers).
    keys: tuple[str, ...]

    def forward1(self, ctx: Pass1Context, a: Tensor,
                 a_tangent: Optional[Tensor]) -> tuple[S, Tensor, Optional[Tensor]]:
        """(state, z, ż) from the layer's input a and its tangent ȧ."""

    def backward1(self, st: S, ctx: Pass1Context, delta: Tensor, delta_tangent: Tensor,
                  need_input: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """(δ_in, δ̇_in) of the input (None, None unless ``need_input``); adds Σ_i (H_i v) to ``ctx.hv``."""

    def forward2(self, st: S, ctx: Pass2Context, t: Optional[Tensor]) -> Optional[Tensor]:
        """The output's tangent from the input's tangent t (None: zero)."""

    def backward2(self, st: S, ctx: Pass2Context, t_dot: Tensor, need_input: bool) -> Optional[Tensor]:
        """ṫ of the input (None unless ``need_input``); adds Σ_i (H_i w_i) to ``ctx.out``."""


class WeightRule:
    """Shared by the rules of layers with a weight and an optional bias (``prefix`` + "weight", "bias")."""

    def __init__(self, module, prefix: str):
        self.label = module_label(prefix)
        self.w = prefix + "weight"
        self.b = prefix + "bias" if module.bias is not None else None
        self.keys = tuple(k for k in (self.w, self.b) if k)

    def _bias(self, tree: Params) -> Optional[Tensor]:
        return tree[self.b] if self.b else None
