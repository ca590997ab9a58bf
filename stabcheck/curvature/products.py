"""Hessian-vector products of a :class:`~stabcheck.curvature.problem.Problem` on parameter dicts."""
from __future__ import annotations

from torch import Tensor
from torch.func import grad, jvp

from .problem import Params, Problem


def axpy(acc: Params | None, tree: Params, scale: float = 1.0) -> Params:
    """acc + scale·tree, in place on ``acc`` (a scaled copy of ``tree`` when ``acc`` is None)."""
    if acc is None:
        return {k: t * scale for k, t in tree.items()}
    for k, t in tree.items():
        acc[k].add_(t, alpha=scale)
    return acc


def sub(a: Params, b: Params) -> Params:
    """a − b, leaf by leaf."""
    return {k: a[k] - b[k] for k in a}


def scale(tree: Params, factor: float) -> Params:
    """factor·tree, leaf by leaf."""
    return {k: t * factor for k, t in tree.items()}


def hvp(problem: Problem, v: Params) -> Params:
    """H v = (1/n) Σ_i ∇²f_i(x) v by forward-over-reverse, chunked over samples.

    Each chunk contributes its *sum* of per-sample products, so unequal chunks are weighted by
    their number of samples (pitfall 2 of PAPER.md).
    """
    acc = None
    for chunk in problem.chunks():
        _, hv = jvp(grad(problem.sum_loss_fn(chunk)), (problem.params,), (v,))
        acc = axpy(acc, hv)
    return scale(problem.all_sum(acc), 1.0 / problem.n)


def sample_hvp(problem: Problem, params: Params, x: Tensor, y: Tensor, v: Params) -> Params:
    """H_i v for the single sample (x, y), forward-over-reverse."""
    return jvp(grad(lambda p: problem.single_loss(p, x, y)), (params,), (v,))[1]
