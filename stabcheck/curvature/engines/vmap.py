"""The ``vmap`` Σ engine: per-sample Hessian-vector products batched with ``torch.func.vmap``."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from torch.func import vmap

from ..problem import Params, Problem, ProblemError
from ..products import axpy, hvp, sample_hvp
from .centring import finish_sigma


@dataclass(frozen=True)
class VmapOptions:
    """Memory limit of the vmap engine: a vmap call holds one parameter-sized vector per sample it
    batches, and batches at most ``samples_per_call`` samples (and at most ``Problem.chunk_size``)."""

    samples_per_call: int = 32

    def __post_init__(self) -> None:
        value = self.samples_per_call
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ProblemError(f"samples_per_call must be a whole number of samples ≥ 1, got {value!r}")


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
