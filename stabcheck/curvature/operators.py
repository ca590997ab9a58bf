"""Matrix-free curvature operators of a :class:`~stabcheck.curvature.problem.Problem`.

Every operator acts on flat parameter-space vectors (torch, length ``problem.dim``, in the
problem's ``dtype`` on its ``device``) with ``matvec``/``@`` and on columns with ``matmat`` (the
columns batched by ``torch.func.vmap``), counts every product it makes (``products``: its own and
those of the operators it is built from; a column counts as one product), and converts to a
``scipy.sparse.linalg.LinearOperator`` with :meth:`~CurvatureOperator.to_scipy`. A Σ product
counts once; the per-sample and centring products inside it are its engine's.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Iterator

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor
from torch.func import vmap

from . import products
from .bounds import noise_factor
from .engines import SigmaEngine, factored, resolve_engine
from .problem import CurvatureError, Params, Problem, ProblemError
from .products import axpy


# How the messages name each operator's product.
_SYMBOLS = {"hessian": "H", "sigma": "Σ", "theorem1": "T"}


class CurvatureOperator:
    """A symmetric d×d operator given by its product with flat vectors.

    ``matvecs`` counts this operator's products; ``products`` adds those of its parts by name.
    """

    name = "operator"

    def __init__(self, problem: Problem):
        self.problem = problem
        self.dtype = problem.dtype
        self.device = problem.device
        self.matvecs = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.problem.dim, self.problem.dim)

    def _apply(self, v: Params) -> Params:
        raise NotImplementedError

    def _parts(self) -> tuple[CurvatureOperator, ...]:
        """The operators whose products this one makes (none for a primitive operator)."""
        return ()

    def _tree(self) -> Iterator[CurvatureOperator]:
        yield self
        for part in self._parts():
            yield from part._tree()

    @property
    def batchable(self) -> bool:
        """Whether ``torch.func.vmap`` can trace the product, so that :meth:`matmat` batches its columns.

        Not for a sharded problem: its products end in an all-reduce across processes, which vmap
        cannot batch.
        """
        return type(self.problem).all_sum is Problem.all_sum and all(part.batchable for part in self._parts())

    @property
    def products(self) -> dict[str, int]:
        """Products made so far, by operator name: this operator's and, through it, its parts'."""
        counts = Counter({self.name: self.matvecs})
        for part in self._parts():
            counts.update(part.products)
        return dict(counts)

    def apply(self, v: Params) -> Params:
        """The product with a parameter dict, counted (what operators built from this one call)."""
        self.matvecs += 1
        return self._apply(v)

    def _checked(self, out: Tensor) -> Tensor:
        if not bool(torch.isfinite(out).all()):  # else the eigensolver fails later with an unrelated message
            symbol = _SYMBOLS.get(self.name, self.name)
            raise CurvatureError(
                f"{symbol} v is not finite ({int((~torch.isfinite(out)).sum())} of {out.numel()} entries) although "
                "the loss is finite: the curvature overflows or is undefined at these parameters (saturated "
                "activations, huge inputs or weights, a non-differentiable point); check the inputs and the "
                "parameters, or measure in float64"
            )
        return out

    def matvec(self, v: Tensor) -> Tensor:
        p = self.problem
        v = v.to(p.device, p.dtype)
        return self._checked(p.flatten(self.apply(p.unflatten(v))).detach())

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matmat(v) if v.dim() == 2 else self.matvec(v)

    def matmat(self, vs: Tensor) -> Tensor:
        """A V for a (d, k) tensor of columns, one counted product per column.

        The columns go through one product batched by ``torch.func.vmap`` where :attr:`batchable`,
        else through one :meth:`matvec` each.
        """
        p = self.problem
        if vs.dim() != 2 or vs.shape[0] != p.dim:
            raise ValueError(f"matmat needs a (d, k) tensor with d = {p.dim}, got shape {tuple(vs.shape)}")
        if not self.batchable:
            return torch.stack([self.matvec(col) for col in vs.T], dim=1)
        operators = list(self._tree())
        before = [op.matvecs for op in operators]
        with warnings.catch_warnings():
            # vmap runs the products' in-place updates (addmm_, addcmul_, ...) column by column, correctly;
            # it warns of the lost speed, which is no news to the caller.
            warnings.filterwarnings("ignore", "There is a performance drop because we have not yet implemented")
            product = vmap(lambda v: p.flatten(self.apply(p.unflatten(v))), in_dims=1, out_dims=1)
            out = product(vs.to(p.device, p.dtype))
        for op, count in zip(operators, before):  # the traced product ran once for all k columns
            op.matvecs = count + (op.matvecs - count) * vs.shape[1]
        return self._checked(out.detach())

    def to_scipy(self, dtype=np.float64) -> LinearOperator:
        """The operator as a scipy LinearOperator on numpy arrays of ``dtype``.

        Inputs are converted to the problem's dtype for the product and the result back to ``dtype``.
        """
        np_dtype = np.dtype(dtype)

        def mv(x):
            x = torch.as_tensor(np.asarray(x).reshape(-1))
            return self.matvec(x).cpu().numpy().astype(np_dtype, copy=False)

        def mm(xs):
            return self.matmat(torch.as_tensor(np.asarray(xs))).cpu().numpy().astype(np_dtype, copy=False)

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=np_dtype)

    def to_dense(self) -> Tensor:
        """Column by column; for tests on tiny models only."""
        return self.matmat(torch.eye(self.problem.dim, dtype=self.dtype, device=self.device))


#: Ways :class:`HessianOperator` computes H v ("auto": factored where it applies, else autodiff).
HVP_PATHS = ("auto", "autodiff", "factored")


class HessianOperator(CurvatureOperator):
    """H = (1/n) Σ_i ∇²f_i(x).

    ``hvp`` picks how H v is computed: "autodiff" (forward-over-reverse,
    :func:`~stabcheck.curvature.products.hvp`), "factored" (pass 1 of the factored Σ engine,
    :func:`~stabcheck.curvature.engines.factored.hvp`, cheaper, as ``benchmarks/README.md``
    measures; only for the models :func:`~stabcheck.curvature.engines.factored.supports` accepts)
    or "auto" (factored where supported, else autodiff). Both give the same product. ``.hvp``
    names the one that runs.

    >>> net = torch.nn.Linear(2, 1)
    >>> p = Problem(net, torch.randn(4, 2), torch.randn(4, 1), loss="half_sq", dtype=torch.float64)
    >>> op = HessianOperator(p)
    >>> op.to_dense().shape, op.hvp
    (torch.Size([3, 3]), 'factored')
    """

    name = "hessian"

    def __init__(self, problem: Problem, hvp: str = "auto"):
        super().__init__(problem)
        if hvp not in HVP_PATHS:
            raise ProblemError(f"unknown H v path {hvp!r}; choose one of {HVP_PATHS}")
        if hvp == "factored" and not factored.supports(problem):
            reason = factored.unsupported_reason(problem)
            raise ProblemError(f"hvp='factored' does not apply to this problem: {reason}; use hvp='autodiff' or 'auto'")
        if hvp == "auto":
            hvp = "factored" if factored.supports(problem) else "autodiff"
        self.hvp = hvp
        self._product = factored.hvp if hvp == "factored" else products.hvp

    def _apply(self, v: Params) -> Params:
        return self._product(self.problem, v)


class SigmaOperator(CurvatureOperator):
    """Σ = (1/n) Σ_i (H_i − H)² (centred; ``centred=False`` uses (1/n) Σ_i H_i² − H²).

    ``engine`` picks how the per-sample products are computed (a name in ``SIGMA_ENGINES``, "auto",
    or an engine with its options set by ``SigmaEngine.with_options``); all engines give the same
    matrix. ``.engine`` is the name of the one that runs.
    """

    name = "sigma"

    def __init__(self, problem: Problem, engine: str | SigmaEngine = "auto", centred: bool = True):
        super().__init__(problem)
        self._engine = resolve_engine(problem, engine)
        self.engine = self._engine.name
        self.centred = centred

    @property
    def batchable(self) -> bool:
        return super().batchable and self._engine.batchable

    def _apply(self, v: Params) -> Params:
        return self._engine(self.problem, v, self.centred)


class Theorem1Operator(CurvatureOperator):
    """T = (I − ηH)² + η² p Σ with p = (n − B)/(B(n − 1)); ``excess=True`` gives T − I.

    T − I = η²(H² + pΣ) − 2ηH vanishes on the common null space of H and Σ, so its top
    eigenvalue is found without resolving a cluster of eigenvalues at 1. One product makes two
    products with ``hessian`` and, when p > 0, one with ``sigma``. The Σ engine is resolved (an
    unknown name raises) even at p = 0 (B = n), where Σ is not applied. ``hvp`` is the H v path
    of :class:`HessianOperator`.
    """

    name = "theorem1"

    def __init__(self, problem: Problem, lr: float, batch_size: int, engine: str | SigmaEngine = "auto",
                 excess: bool = False, hvp: str = "auto"):
        super().__init__(problem)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.p = noise_factor(problem.n, batch_size)
        self.hessian = HessianOperator(problem, hvp)
        self.sigma = SigmaOperator(problem, engine)
        self.engine = self.sigma.engine
        self.excess = excess

    def _parts(self) -> tuple[CurvatureOperator, ...]:
        return (self.hessian, self.sigma)

    def _apply(self, v: Params) -> Params:
        lr = self.lr
        hv = self.hessian.apply(v)
        hhv = self.hessian.apply(hv)
        out = {k: lr * lr * hhv[k] - 2 * lr * hv[k] + (0 if self.excess else v[k]) for k in v}
        if self.p > 0:
            axpy(out, self.sigma.apply(v), lr * lr * self.p)
        return out
