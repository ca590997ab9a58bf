"""Matrix-free curvature operators of a :class:`~stabcheck.curvature.problem.Problem`.

Every operator acts on flat parameter-space vectors (torch, length ``problem.dim``), counts its
products, and converts to a ``scipy.sparse.linalg.LinearOperator`` with :meth:`to_scipy`.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from .bounds import noise_factor
from .engines import resolve_engine
from .problem import Params, Problem
from .products import axpy, hvp


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
        self._engine = resolve_engine(problem, engine)
        self.engine = self._engine.name
        self.centred = centred

    def _apply(self, v: Params) -> Params:
        return self._engine(self.problem, v, self.centred)


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
            axpy(out, self.sigma._apply(v), lr * lr * self.p)
        return out
