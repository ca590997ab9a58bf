"""The ``loop`` Σ engine: the paper's Appendix C, one graph per sample (the baseline to beat)."""
from __future__ import annotations

import torch

from ..problem import Params, Problem
from ..products import axpy, hvp, sub
from .centring import finish_sigma


def sigma_loop(problem: Problem, v: Params, centred: bool) -> Params:
    """Double back-propagation per sample: 2n per-sample Hessian-vector products per Σv."""
    params = {k: t.detach().clone().requires_grad_(True) for k, t in problem.params.items()}
    leaves = [params[k] for k in problem.names]
    hv = hvp(problem, v) if centred else None
    acc: Params | None = None
    w_sum: Params | None = None
    for i in range(problem.n_local):
        loss = problem.single_loss(params, problem.inputs[i], problem.targets[i])
        # materialize_grads: a parameter the forward does not use has H_i = 0 (zeros, not an error)
        g = torch.autograd.grad(loss, leaves, create_graph=True, materialize_grads=True)
        gv = sum((gk * v[k]).sum() for gk, k in zip(g, problem.names))
        hiv = dict(zip(problem.names, torch.autograd.grad(gv, leaves, retain_graph=True, materialize_grads=True)))
        w = sub(hiv, hv) if centred else hiv
        gw = sum((gk * w[k]).sum() for gk, k in zip(g, problem.names))
        hiw = dict(zip(problem.names, torch.autograd.grad(gw, leaves, materialize_grads=True)))
        acc = axpy(acc, hiw)
        if centred:
            w_sum = axpy(w_sum, w)
    return finish_sigma(problem, acc, w_sum, v, hv, centred)
