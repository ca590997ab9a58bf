"""Sharpness, non-uniformity and the stability criteria of GD and SGD (PAPER.md §1)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .bounds import check_batch, check_lr
from .eigen import EigenResult, top_eigenpair
from .operators import HessianOperator, SigmaOperator, Theorem1Operator
from .problem import Problem


def _solve(op, method: str, tol: float, maxiter: int, seed: int) -> EigenResult:
    p = op.problem
    return top_eigenpair(op.matvec, p.dim, method=method, tol=tol, maxiter=maxiter, seed=seed,
                         dtype=p.dtype, device=p.device)


def sharpness(problem: Problem, method: str = "lanczos", tol: float = 1e-4, maxiter: int = 50,
              seed: int = 0) -> EigenResult:
    """a = λ_max(H), H = (1/n) Σ_i ∇²f_i.  ``result.value`` is a."""
    res = _solve(HessianOperator(problem), method, tol, maxiter, seed)
    res.quantity = "sharpness"
    return res


def non_uniformity(problem: Problem, method: str = "lanczos", engine: str = "auto", tol: float = 1e-4,
                   maxiter: int = 50, seed: int = 0) -> EigenResult:
    """s = λ_max(Σ)^½, Σ = (1/n) Σ_i (H_i − H)².  ``result.value`` is s, ``result.eigenvalue`` λ_max(Σ)."""
    op = SigmaOperator(problem, engine)
    res = _solve(op, method, tol, maxiter, seed)
    res.value = math.sqrt(max(res.eigenvalue, 0.0))
    res.quantity = "non_uniformity"
    res.engine = op.engine
    return res


@dataclass
class Theorem1Result:
    """λ_max{(I − ηH)² + η² p Σ} and the verdict of Theorem 1 (value ≤ 1 + stable_tol: stable)."""

    value: float
    stable: bool
    lr: float
    batch_size: int
    n: int
    p: float
    stable_tol: float
    eigen: EigenResult
    floor: float  # Rayleigh quotient of T along H's top eigenvector: a lower bound on the value

    def as_dict(self) -> dict:
        d = asdict(self)
        d["eigen"] = self.eigen.as_dict()
        return d


def theorem1(problem: Problem, lr: float, batch_size: int, method: str = "lanczos", engine: str = "auto",
             tol: float = 1e-4, maxiter: int = 50, seed: int = 0, stable_tol: float = 1e-3) -> Theorem1Result:
    """Theorem 1: x* is linearly stable for SGD(η, B) if λ_max{(I − ηH)² + η² p Σ} ≤ 1.

    Lanczos runs on T − I (exactly 0 on the null space of H and Σ); power iteration runs on the PSD
    matrix T itself.  ``stable_tol`` absorbs the solver's tolerance in the comparison with 1.
    The value is the larger of the solver's and ``floor`` = vᵀTv at H's top eigenvector v: next to
    large negative eigenvalues of T − I the solver can miss a small excess over 1 (GD just past 2/η).
    """
    lr = check_lr(lr)
    check_batch(problem.n, batch_size)
    op = Theorem1Operator(problem, lr, batch_size, engine, excess=(method == "lanczos"))
    res = _solve(op, method, tol, maxiter, seed)
    top = sharpness(problem, tol=tol, maxiter=maxiter, seed=seed).vector
    excess = Theorem1Operator(problem, lr, batch_size, engine, excess=True).matvec(top)
    floor = 1.0 + float(top @ excess)
    value = max(res.eigenvalue + (1.0 if op.excess else 0.0), floor)
    res.value = value
    res.quantity = "theorem1"
    res.engine = op.engine
    return Theorem1Result(value=value, stable=value <= 1.0 + stable_tol, lr=lr, batch_size=batch_size,
                          n=problem.n, p=op.p, stable_tol=stable_tol, eigen=res, floor=floor)
