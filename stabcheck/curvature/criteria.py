"""Sharpness, non-uniformity and the stability criteria of GD and SGD (PAPER.md §1).

Each criterion returns its own immutable result that holds the :class:`EigenResult` it came from
(``.eigen``) and gives one meaning to ``value``:

* :func:`sharpness` → :class:`SharpnessResult`: ``value`` = a = λ_max(H);
* :func:`non_uniformity` → :class:`NonUniformityResult`: ``value`` = s = √max(λ_max(Σ), 0),
  ``eigenvalue`` = λ_max(Σ), ``engine`` = the Σ engine that ran;
* :func:`theorem1` → :class:`Theorem1Result`: ``value`` = λ_max{(I − ηH)² + η²pΣ} and a
  ``verdict`` among :data:`VERDICTS`.

All three read the solver's provenance through (``converged``, ``residual``, ``iterations``,
``matvecs``, ``dtype``, ``device``, ``seed``, ``tol``, ``wall_time``, ``vector``, ``method``) and
give a JSON-ready ``as_dict()``.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .bounds import check_batch, check_lr, sharpness_bound
from .eigen import EigenResult, top_eigenpair
from .operators import CurvatureOperator, HessianOperator, SigmaOperator, Theorem1Operator
from .problem import Problem

CERTIFIED_STABLE = "certified stable"
NOT_CERTIFIED = "not certified"
UNKNOWN = "unknown"
#: The three verdicts of :class:`Theorem1Result`.
VERDICTS = (CERTIFIED_STABLE, NOT_CERTIFIED, UNKNOWN)


def _solve(op: CurvatureOperator, method: str, tol: float, maxiter: int, seed: int) -> EigenResult:
    return top_eigenpair(op.matvec, op.problem.dim, method=method, tol=tol, maxiter=maxiter, seed=seed,
                         dtype=op.dtype, device=op.device)


def _from_eigen(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.eigen, name), doc=doc)


class _SolverRun:
    """Read-only views of the eigensolver run behind a criterion (``self.eigen``)."""

    eigen: EigenResult
    converged = _from_eigen("converged", "Whether the eigensolver met its tolerance.")
    residual = _from_eigen("residual", "The solver's relative residual (see :class:`EigenResult`).")
    iterations = _from_eigen("iterations", "Solver steps taken.")
    matvecs = _from_eigen("matvecs", "Products with the solved operator.")
    dtype = _from_eigen("dtype", "dtype of the products, e.g. 'float64'.")
    device = _from_eigen("device", "Device of the products, e.g. 'cpu'.")
    seed = _from_eigen("seed", "Seed of the solver's start vector.")
    tol = _from_eigen("tol", "The solver's stopping tolerance.")
    wall_time = _from_eigen("wall_time", "Seconds spent in the solver.")
    vector = _from_eigen("vector", "The unit eigenvector estimate.")
    method = _from_eigen("method", "'lanczos' or 'power'.")
    history = _from_eigen("history", "The solver's eigenvalue estimate after each step.")

    def _solver_dict(self) -> dict:
        d = self.eigen.as_dict()
        d["eigenvalue"] = d.pop("value")
        return d


@dataclass(frozen=True, eq=False)
class SharpnessResult(_SolverRun):
    """a = λ_max(H), measured by ``eigen`` (a solve on H).

    >>> import torch
    >>> p = Problem(torch.nn.Linear(2, 1), torch.randn(4, 2), torch.randn(4, 1), loss="half_sq",
    ...             dtype=torch.float64)
    >>> r = sharpness(p, tol=1e-8)
    >>> r.value == r.eigenvalue == r.eigen.value
    True
    """

    eigen: EigenResult

    @property
    def value(self) -> float:
        """a, the sharpness."""
        return self.eigen.value

    @property
    def eigenvalue(self) -> float:
        """λ_max(H), which is a itself."""
        return self.eigen.value

    def as_dict(self) -> dict:
        """JSON-ready: ``value`` (a) and the solver's record (``eigenvalue``, ``converged``, ...)."""
        return {"value": self.value, **self._solver_dict()}


@dataclass(frozen=True, eq=False)
class NonUniformityResult(_SolverRun):
    """s = √max(λ_max(Σ), 0), measured by ``eigen`` (a solve on Σ with the Σ engine ``engine``).

    Rounding can leave λ_max(Σ) of a Σ ≈ 0 slightly negative; s clips it at 0, ``eigenvalue`` does not.
    """

    eigen: EigenResult
    engine: str

    @property
    def value(self) -> float:
        """s, the non-uniformity."""
        return math.sqrt(max(self.eigen.value, 0.0))

    @property
    def eigenvalue(self) -> float:
        """λ_max(Σ) as the solver found it."""
        return self.eigen.value

    def as_dict(self) -> dict:
        """JSON-ready: ``value`` (s), ``engine`` and the solver's record (``eigenvalue`` = λ_max(Σ), ...)."""
        return {"value": self.value, "engine": self.engine, **self._solver_dict()}


@dataclass(frozen=True, eq=False)
class Theorem1Result(_SolverRun):
    """λ_max(T), T = (I − ηH)² + η²pΣ, p = (n − B)/(B(n − 1)), and what it certifies.

    Theorem 1 is sufficient, not necessary, in d > 1: a value above 1 means "not certified",
    never "unstable". Only ``sharpness_exceeded`` (a > 2/η, the necessary GD criterion, which the
    mean of SGD follows) proves SGD unstable.

    Attributes:
        lr, batch_size, n, p: η, B, the number of samples and the noise factor p.
        stable_tol: slack for the solver's tolerance in the comparison with 1.
        sharpness: the a used (its eigenvector gave ``rayleigh_top``).
        rayleigh_top: vᵀTv at H's top eigenvector v, a lower bound on λ_max(T). Next to a large
            cluster of T's eigenvalues the solver can miss a small excess over 1 (GD just past 2/η)
            that this safeguard still sees.
        shift: the solver ran on T − shift·I (1 for Lanczos, whose T − I vanishes on the common
            null space of H and Σ; 0 for power iteration on the PSD T).
        eigen: that solve; ``eigen.value + shift`` is the solver's estimate of λ_max(T).
        products: every H and Σ product :func:`theorem1` made, by kind ("hessian", "sigma"),
            the sharpness solve included when it ran one.
    """

    lr: float
    batch_size: int
    n: int
    p: float
    stable_tol: float
    sharpness: float
    rayleigh_top: float
    shift: float
    eigen: EigenResult = field(repr=False)
    products: Mapping[str, int]

    @property
    def value(self) -> float:
        """λ_max(T): the larger of the solver's estimate and ``rayleigh_top``, both lower bounds up to
        the solver's tolerance (a Ritz value is a Rayleigh quotient)."""
        return max(self.eigen.value + self.shift, self.rayleigh_top)

    @property
    def verdict(self) -> str:
        """"not certified" when value > 1 + stable_tol (a lower bound above it proves so even
        unconverged), else "certified stable" when the solver converged, else "unknown"."""
        if self.value > 1.0 + self.stable_tol:
            return NOT_CERTIFIED
        return CERTIFIED_STABLE if self.converged else UNKNOWN

    @property
    def stable(self) -> bool:
        """True only for the verdict "certified stable"."""
        return self.verdict == CERTIFIED_STABLE

    @property
    def sharpness_exceeded(self) -> bool:
        """a > 2/η: GD, and so SGD, is unstable (the one case where "unstable" may be said)."""
        return self.sharpness > sharpness_bound(self.lr)

    def as_dict(self) -> dict:
        """JSON-ready: value, verdict, the parts, and the solve on T − shift·I under ``eigen``."""
        return {"value": self.value, "verdict": self.verdict, "stable": self.stable, "converged": self.converged,
                "sharpness_exceeded": self.sharpness_exceeded, "lr": self.lr, "batch_size": self.batch_size,
                "n": self.n, "p": self.p, "stable_tol": self.stable_tol, "sharpness": self.sharpness,
                "rayleigh_top": self.rayleigh_top, "shift": self.shift, "products": dict(self.products),
                "eigen": self.eigen.as_dict()}


def sharpness(problem: Problem, method: str = "lanczos", tol: float = 1e-4, maxiter: int = 50,
              seed: int = 0) -> SharpnessResult:
    """a = λ_max(H), H = (1/n) Σ_i ∇²f_i.

    Args:
        problem: the finite-sum problem at the point x.
        method: "lanczos" (largest algebraic eigenvalue) or "power" (largest magnitude, the paper's).
        tol, maxiter, seed: the solver's (see :func:`~stabcheck.curvature.eigen.lanczos`).
    """
    return _measure_sharpness(problem, method, tol, maxiter, seed)


def _measure_sharpness(problem: Problem, method: str, tol: float, maxiter: int, seed: int) -> SharpnessResult:
    # theorem1's argument ``sharpness`` hides the public function there.
    return SharpnessResult(_solve(HessianOperator(problem), method, tol, maxiter, seed))


def non_uniformity(problem: Problem, method: str = "lanczos", engine: str = "auto", tol: float = 1e-4,
                   maxiter: int = 50, seed: int = 0) -> NonUniformityResult:
    """s = λ_max(Σ)^½, Σ = (1/n) Σ_i (H_i − H)².

    Args:
        problem: the finite-sum problem at the point x.
        method: "lanczos" or "power".
        engine: the Σ engine's name in ``SIGMA_ENGINES``, or "auto".
        tol, maxiter, seed: the solver's (see :func:`~stabcheck.curvature.eigen.lanczos`).
    """
    op = SigmaOperator(problem, engine)
    return NonUniformityResult(_solve(op, method, tol, maxiter, seed), engine=op.engine)


def _top_vector(problem: Problem, sharpness: SharpnessResult):
    if not isinstance(sharpness, SharpnessResult):
        raise TypeError(f"sharpness must be a SharpnessResult (from stabcheck.sharpness), got {type(sharpness).__name__}")
    v = sharpness.vector
    if v.shape != (problem.dim,):
        raise ValueError(f"the given sharpness has a vector of shape {tuple(v.shape)} but the problem has "
                         f"d = {problem.dim} parameters; pass the sharpness of this problem, or None to measure it")
    v = v.to(problem.device, problem.dtype)
    return v / v.norm()


def theorem1(problem: Problem, lr: float, batch_size: int, method: str = "lanczos", engine: str = "auto",
             tol: float = 1e-4, maxiter: int = 50, seed: int = 0, stable_tol: float = 1e-3,
             sharpness: SharpnessResult | None = None) -> Theorem1Result:
    """Theorem 1: x* is linearly stable for SGD(η, B) if λ_max{(I − ηH)² + η²pΣ} ≤ 1.

    Lanczos runs on T − I (exactly 0 on the null space of H and Σ); power iteration runs on the PSD
    matrix T itself. The value is also bounded below by vᵀTv at H's top eigenvector v.

    Args:
        problem: the finite-sum problem at the minimum x*.
        lr, batch_size: η and B (1 ≤ B ≤ n; B = n is GD).
        method, engine, tol, maxiter, seed: as for :func:`non_uniformity`, for the solve on T.
        stable_tol: slack that absorbs the solver's tolerance in the comparison with 1.
        sharpness: this problem's measured a (its value and vector are reused); None measures it here
            by Lanczos with the same tol, maxiter and seed.

    >>> import torch
    >>> p = Problem(torch.nn.Linear(2, 1), torch.randn(4, 2), torch.randn(4, 1), loss="half_sq",
    ...             dtype=torch.float64)
    >>> t = theorem1(p, lr=1e-3, batch_size=2, tol=1e-8)
    >>> t.verdict, t.stable, t.sharpness_exceeded
    ('certified stable', True, False)
    """
    lr = check_lr(lr)
    check_batch(problem.n, batch_size)
    if not stable_tol >= 0:
        raise ValueError(f"stable_tol must be non-negative, got {stable_tol}")
    products: Counter[str] = Counter()
    if sharpness is None:
        sharpness = _measure_sharpness(problem, "lanczos", tol, maxiter, seed)
        products["hessian"] += sharpness.matvecs
    top = _top_vector(problem, sharpness)
    op = Theorem1Operator(problem, lr, batch_size, engine, excess=(method == "lanczos"))
    shift = 1.0 if op.excess else 0.0
    res = _solve(op, method, tol, maxiter, seed)
    rayleigh_top = shift + float(top @ op.matvec(top))
    products.update({k: n for k, n in op.products.items() if k != op.name})
    return Theorem1Result(lr=lr, batch_size=batch_size, n=problem.n, p=op.p, stable_tol=stable_tol,
                          sharpness=sharpness.value, rayleigh_top=rayleigh_top, shift=shift, eigen=res,
                          products=MappingProxyType(dict(products)))
