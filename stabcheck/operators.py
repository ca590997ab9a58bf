"""Matrix-free curvature operators of a :class:`~stabcheck.problem.Problem`.

Every operator acts on flat parameter-space vectors (torch, length ``problem.dim``), counts its
products, and converts to a ``scipy.sparse.linalg.LinearOperator`` with :meth:`to_scipy`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor
from torch.func import grad, jvp, vmap

from . import factored
from .bounds import noise_factor
from .problem import Params, Problem, ProblemError

# Samples per vmap call: the vmap engine stores this many parameter-sized vectors at once.
VMAP_CHUNK = 32


def _axpy(acc: Params | None, tree: Params, scale: float = 1.0) -> Params:
    if acc is None:
        return {k: t * scale for k, t in tree.items()}
    for k, t in tree.items():
        acc[k].add_(t, alpha=scale)
    return acc


def _sub(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def hvp(problem: Problem, v: Params) -> Params:
    """H v = (1/n) Σ_i ∇²f_i(x) v by forward-over-reverse, chunked over samples.

    Each chunk contributes its *sum* of per-sample products, so unequal chunks are weighted by
    their number of samples (pitfall 2 of PAPER.md).
    """
    acc = None
    for chunk in problem.chunks():
        _, hv = jvp(grad(problem.sum_loss_fn(chunk)), (problem.params,), (v,))
        acc = _axpy(acc, hv)
    return {k: t / problem.n for k, t in acc.items()}


def sample_hvp(problem: Problem, params: Params, x: Tensor, y: Tensor, v: Params) -> Params:
    """H_i v for the single sample (x, y), forward-over-reverse."""
    return jvp(grad(lambda p: problem.single_loss(p, x, y)), (params,), (v,))[1]


# ---- Σ engines: (problem, v, centred) -> Σ v ------------------------------------------------------
def _sigma_loop(problem: Problem, v: Params, centred: bool) -> Params:
    """The paper's Appendix C: one graph per sample, double back-propagation, 2n per-sample HVPs."""
    params = {k: t.detach().clone().requires_grad_(True) for k, t in problem.params.items()}
    leaves = [params[k] for k in problem.names]
    hv = hvp(problem, v) if centred else None
    acc: Params | None = None
    w_sum: Params | None = None
    for i in range(problem.n):
        loss = problem.single_loss(params, problem.inputs[i], problem.targets[i])
        g = torch.autograd.grad(loss, leaves, create_graph=True)
        gv = sum((gk * v[k]).sum() for gk, k in zip(g, problem.names))
        hiv = dict(zip(problem.names, torch.autograd.grad(gv, leaves, retain_graph=True)))
        w = _sub(hiv, hv) if centred else hiv
        gw = sum((gk * w[k]).sum() for gk, k in zip(g, problem.names))
        hiw = dict(zip(problem.names, torch.autograd.grad(gw, leaves)))
        acc = _axpy(acc, hiw)
        if centred:
            w_sum = _axpy(w_sum, w)
    return _finish_sigma(problem, acc, w_sum, v, hv, centred)


def _sigma_vmap(problem: Problem, v: Params, centred: bool) -> Params:
    """Per-sample HVPs batched with torch.func.vmap over chunks of ``VMAP_CHUNK`` samples."""
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
        acc = _axpy(acc, {k: t.sum(0) for k, t in hiw.items()})
        if centred:
            w_sum = _axpy(w_sum, {k: t.sum(0) for k, t in w.items()})
    return _finish_sigma(problem, acc, w_sum, v, hv, centred)


def _finish_sigma(problem, acc, w_sum, v, hv, centred) -> Params:
    """Centred: (1/n)Σ H_i w_i − H w̄ with w_i = H_i v − H v.  Uncentred: (1/n)Σ H_i² v − H² v."""
    n = problem.n
    if centred:
        w_mean = {k: t / n for k, t in w_sum.items()}
        return _sub({k: t / n for k, t in acc.items()}, hvp(problem, w_mean))
    return _sub({k: t / n for k, t in acc.items()}, hvp(problem, hvp(problem, v)))


SigmaEngine = Callable[[Problem, Params, bool], Params]

#: Σ-product engines by name. ``auto`` resolves through :func:`resolve_engine`.
SIGMA_ENGINES: dict[str, SigmaEngine] = {"loop": _sigma_loop, "vmap": _sigma_vmap, "factored": factored.sigma_factored}

#: Engines tried in order by ``engine="auto"``; each maps a problem to True when it supports it.
AUTO_ORDER: list[tuple[str, Callable[[Problem], bool]]] = [
    ("factored", factored.supports),  # exact and fastest; plain Sequential nets of known layers only
    ("vmap", lambda problem: True),
]


def resolve_engine(problem: Problem, engine: str) -> str:
    if engine == "auto":
        return next(name for name, supports in AUTO_ORDER if supports(problem))
    if engine not in SIGMA_ENGINES:
        raise ProblemError(f"unknown Σ engine {engine!r}; choose 'auto' or one of {sorted(SIGMA_ENGINES)}")
    return engine


# ---- operators ------------------------------------------------------------------------------------
class CurvatureOperator:
    """A symmetric d×d operator given by its product with flat vectors."""

    name = "operator"

    def __init__(self, problem: Problem):
        self.problem = problem
        self.matvecs = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.problem.dim, self.problem.dim)

    def _apply(self, v: Params) -> Params:
        raise NotImplementedError

    def matvec(self, v: Tensor) -> Tensor:
        p = self.problem
        v = v.to(p.device, p.dtype)
        self.matvecs += 1
        return p.flatten(self._apply(p.unflatten(v))).detach()

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v)

    def to_scipy(self) -> LinearOperator:
        """The operator as a scipy LinearOperator on float64 numpy vectors."""
        np_dtype = np.float64 if self.problem.dtype == torch.float64 else np.float32

        def mv(x):
            x = np.asarray(x).reshape(-1)
            return self.matvec(torch.as_tensor(x)).cpu().numpy().astype(np_dtype)

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, dtype=np_dtype)

    def to_dense(self) -> Tensor:
        """Column by column; for tests on tiny models only."""
        eye = torch.eye(self.problem.dim, dtype=self.problem.dtype, device=self.problem.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


class HessianOperator(CurvatureOperator):
    """H = (1/n) Σ_i ∇²f_i(x).

    >>> net = torch.nn.Linear(2, 1)
    >>> p = Problem(net, torch.randn(4, 2), torch.randn(4, 1), loss="half_sq", dtype=torch.float64)
    >>> HessianOperator(p).to_dense().shape
    torch.Size([3, 3])
    """

    name = "hessian"

    def _apply(self, v: Params) -> Params:
        return hvp(self.problem, v)


class SigmaOperator(CurvatureOperator):
    """Σ = (1/n) Σ_i (H_i − H)² (centred; ``centred=False`` uses (1/n) Σ_i H_i² − H²).

    ``engine`` picks how the per-sample products are computed; all engines give the same matrix.
    """

    name = "sigma"

    def __init__(self, problem: Problem, engine: str = "auto", centred: bool = True):
        super().__init__(problem)
        self.engine = resolve_engine(problem, engine)
        self.centred = centred

    def _apply(self, v: Params) -> Params:
        return SIGMA_ENGINES[self.engine](self.problem, v, self.centred)


class Theorem1Operator(CurvatureOperator):
    """T = (I − ηH)² + η² p Σ with p = (n − B)/(B(n − 1)); ``excess=True`` gives T − I.

    T − I = η²(H² + pΣ) − 2ηH vanishes on the common null space of H and Σ, so its top
    eigenvalue is found without resolving a cluster of eigenvalues at 1.
    """

    name = "theorem1"

    def __init__(self, problem: Problem, lr: float, batch_size: int, engine: str = "auto", excess: bool = False):
        super().__init__(problem)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.p = noise_factor(problem.n, batch_size)
        self.sigma = SigmaOperator(problem, engine) if self.p > 0 else None
        self.engine = self.sigma.engine if self.sigma else None
        self.excess = excess

    def _apply(self, v: Params) -> Params:
        lr, prob = self.lr, self.problem
        hv = hvp(prob, v)
        hhv = hvp(prob, hv)
        out = {k: lr * lr * hhv[k] - 2 * lr * hv[k] + (0 if self.excess else v[k]) for k in v}
        if self.sigma is not None:
            _axpy(out, self.sigma._apply(v), lr * lr * self.p)
        return out
