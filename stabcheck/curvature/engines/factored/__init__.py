"""The ``factored`` Σ engine: exact Σv from per-sample factors, in two batched passes.

Σv = (1/n) Σ_i H_i w_i with w_i = H_i v − H v (centred; the −H w̄ term of the other engines is
zero here because H v is the mean of the very same H_i v). Nothing parameter-sized is formed
per sample for Linear layers:

* pass 1, one batched forward-over-reverse pass at the shared tangent v, records for every layer
  and sample the input a_i, its tangent ȧ_i, the back-propagated signal δ_i and its tangent
  δ̇_i; a Linear layer's per-sample product is then (H_i v)_W = δ̇_i a_iᵀ + δ_i ȧ_iᵀ (rank two),
  (H_i v)_b = δ̇_i, and H v is their mean;
* pass 2 applies each H_i to its own tangent w_i through a few per-sample dot products of those
  records instead of n parameter-sized vectors.

A Σv costs pass 1, which is all that the engine's own H v (:func:`hvp`) runs, plus pass 2, which
costs about as much again: about two of its own H v products, where the per-sample engines need 2n
per-sample ones. Measured ratios: ``benchmarks/README.md``, "Σv per H v of the factored engine".

The package in three steps, imports running one way: :mod:`.layers` (the :class:`LayerRule`
interface and one module per layer kind, with the per-layer math), :mod:`.passes` (the two passes
over a chunk and the loss's factors), :mod:`.plan` (a model's rules, probed once and cached).

Supported: ``nn.Sequential`` (nested) of Linear (2-D inputs), Conv2d (zeros padding, groups=1),
the element-wise activations of ``SMOOTH`` and ``PIECEWISE_LINEAR`` (``inplace=True`` ones are
applied out of place), MaxPool2d, AdaptiveMaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten,
Unflatten, Identity and inactive Dropout, but not subclasses of these that override ``forward``.
Anything else is declared unsupported with :class:`UnsupportedModel` (:func:`unsupported_reason`
says why) and ``engine="auto"`` picks the next engine; the operator's ``.engine`` names the one that
ran. Any other error inside the engine propagates: ``auto`` never falls back on a failure.

>>> import torch
>>> from stabcheck.curvature.problem import Problem
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
>>> p = Problem(net, torch.randn(6, 3), torch.randn(6, 2), loss="mse", dtype=torch.float64)
>>> unsupported_reason(p) is None
True
>>> sorted(sigma_factored(p, p.params, centred=True)) == sorted(p.params)
True
>>> from stabcheck.curvature import products
>>> all(torch.allclose(hvp(p, p.params)[k], t) for k, t in products.hvp(p, p.params).items())
True
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import torch

from ...problem import Params, Problem, ProblemError
from .layers import PIECEWISE_LINEAR, SMOOTH, LayerRule, Pass2Context, UnsupportedModel, add_into
from .passes import Records, hv_sum, pass1, pass2, records_bytes
from .plan import plan_for, supports, unsupported_reason

__all__ = ["PIECEWISE_LINEAR", "SMOOTH", "FactoredOptions", "LayerRule", "UnsupportedModel", "hvp", "sigma_factored",
           "supports", "unsupported_reason"]


@dataclass(frozen=True)
class FactoredOptions:
    """Memory limit of the factored engine: pass 1's records of every chunk are held until H v is known
    while their tensors take at most ``hold_records_bytes`` (estimated from the first chunk; closures
    such as a pooling's pullback are not counted); 0 never holds them."""

    hold_records_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        value = self.hold_records_bytes
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ProblemError(f"hold_records_bytes must be a whole number of bytes ≥ 0, got {value!r}")


def sigma_factored(problem: Problem, v: Params, centred: bool, options: FactoredOptions = FactoredOptions()) -> Params:
    """Σv = (1/n) Σ_i H_i (H_i v − H v) (centred) or (1/n) Σ_i H_i² v − H² v, from per-sample factors.

    Works in the chunks of :meth:`Problem.chunks` (the memory knob it shares with the H v product).
    Pass 1 on every chunk gives H v; pass 2 then applies each H_i to H_i v − H v. Pass 2 needs H v,
    the mean over all chunks, so the chunks' records are held in between while they fit in
    ``options.hold_records_bytes``: then pass 1 runs once per chunk. Beyond, a first sweep that
    records nothing gives H v and every chunk but the first runs pass 1 again.
    """
    plan = plan_for(problem)
    n = problem.n
    chunks = problem.chunks()

    def records_of(c: slice, keep: bool = True) -> Records:
        return pass1(plan, problem.params, problem.inputs[c], problem.targets[c], problem.loss, v, keep=keep)

    with torch.no_grad():
        first = records_of(chunks[0])
        hold = records_bytes(first) * len(chunks) <= options.hold_records_bytes
        held: list[Records | None] = []
        hv_total: Params = {}
        for i, c in enumerate(chunks):
            records = first if i == 0 else records_of(c, keep=hold)
            for k, t in records.hv_sum.items():
                add_into(hv_total, k, t)
            held.append(records if hold or i == 0 else None)
        del records, first
        # H v takes one all_sum on every rank.
        hv_mean = {k: t / n for k, t in problem.all_sum(hv_total).items()}
        out: Params = {}
        h_hv: Params = {}
        for i, c in enumerate(chunks):
            records = held[i] if held[i] is not None else records_of(c)
            held[i] = None  # free each chunk's records once pass 2 is done with them
            if centred:
                pass2(plan, records, Pass2Context(problem.params, True, {k: -t for k, t in hv_mean.items()}, out))
            else:
                pass2(plan, records, Pass2Context(problem.params, True, None, out))
                pass2(plan, records, Pass2Context(problem.params, False, hv_mean, h_hv))
            del records
        if not centred:
            for k in out:
                out[k].sub_(h_hv[k])
        out = problem.all_sum(out)
        return {k: out[k].div_(n) for k in problem.names}


def hvp(problem: Problem, v: Params) -> Params:
    """H v = (1/n) Σ_i H_i v from pass 1 alone, recording nothing for pass 2.

    The same product as :func:`stabcheck.curvature.products.hvp`, for the problems :func:`supports`
    accepts (UnsupportedModel otherwise), in the same chunks.
    """
    plan = plan_for(problem)
    with torch.no_grad():
        total = problem.all_sum(hv_sum(plan, problem, v))
    return {k: total[k].div_(problem.n) for k in problem.names}
