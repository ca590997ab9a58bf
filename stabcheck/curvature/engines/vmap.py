"""The ``vmap`` Σ engine: per-sample Hessian-vector products batched with ``torch.func.vmap``."""
from __future__ import annotations

from dataclasses import dataclass

from torch.func import vmap

from ..bounds import check_count

from ..problem import Params, Problem
from ..products import axpy, hvp, sample_hvp
from .centring import finish_sigma


@dataclass(frozen=True)
class VmapOptions:
    """Memory limit of the vmap engine: a vmap call holds one parameter-sized vector per sample it
    batches, and batches at most ``samples_per_call`` samples (and at most ``Problem.chunk_size``)."""

    samples_per_call: int = 32

    def __post_init__(self) -> None:
        check_count("samples_per_call", self.samples_per_call)


def sigma_vmap(problem: Problem, v: Params, centred: bool, options: VmapOptions = VmapOptions()) -> Params:
    """Per-sample HVPs batched over chunks of at most ``options.samples_per_call`` samples."""
    hv = hvp(problem, v) if centred else None
    shared_v = vmap(sample_hvp, in_dims=(None, None, 0, 0, None))
    own_v = vmap(sample_hvp, in_dims=(None, None, 0, 0, 0))
    acc: Params | None = None
    w_sum: Params | None = None
    for chunk in problem.chunks(min(options.samples_per_call, problem.chunk_size)):
        x, y = problem.inputs[chunk], problem.targets[chunk]
        hiv = shared_v(problem, problem.params, x, y, v)
        w = {k: hiv[k] - hv[k] for k in hiv} if centred else hiv
        hiw = own_v(problem, problem.params, x, y, w)
        acc = axpy(acc, {k: t.sum(0) for k, t in hiw.items()})
        if centred:
            w_sum = axpy(w_sum, {k: t.sum(0) for k, t in w.items()})
    return finish_sigma(problem, acc, w_sum, v, hv, centred)
