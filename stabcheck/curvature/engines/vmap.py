"""The ``vmap`` Σ engine: per-sample Hessian-vector products batched with ``torch.func.vmap``."""
from __future__ import annotations

from torch.func import vmap

from ..problem import Params, Problem
from ..products import axpy, hvp, sample_hvp
from .centring import finish_sigma

# Samples per vmap call: the engine stores this many parameter-sized vectors at once.
VMAP_CHUNK = 32


def sigma_vmap(problem: Problem, v: Params, centred: bool) -> Params:
    """Per-sample HVPs batched over chunks of ``VMAP_CHUNK`` samples."""
    hv = hvp(problem, v) if centred else None
    shared_v = vmap(sample_hvp, in_dims=(None, None, 0, 0, None))
    own_v = vmap(sample_hvp, in_dims=(None, None, 0, 0, 0))
    acc: Params | None = None
    w_sum: Params | None = None
    for chunk in problem.chunks(VMAP_CHUNK):
        x, y = problem.inputs[chunk], problem.targets[chunk]
        hiv = shared_v(problem, problem.params, x, y, v)
        w = {k: hiv[k] - hv[k] for k in hiv} if centred else hiv
        hiw = own_v(problem, problem.params, x, y, w)
        acc = axpy(acc, {k: t.sum(0) for k, t in hiw.items()})
        if centred:
            w_sum = axpy(w_sum, {k: t.sum(0) for k, t in w.items()})
    return finish_sigma(problem, acc, w_sum, v, hv, centred)
