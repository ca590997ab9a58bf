"""Sharpness, non-uniformity and the stability criteria of GD and SGD (PAPER.md §1).

Each criterion returns its own immutable result that holds the :class:`EigenResult` it came from
(``.eigen``) and gives one meaning to ``value``:

* :func:`sharpness` → :class:`SharpnessResult`: ``value`` = a = λ_max(H);
* :func:`non_uniformity` → :class:`NonUniformityResult`: ``value`` = s = √max(λ_max(Σ), 0),
  ``eigenvalue`` = λ_max(Σ), ``engine`` = the Σ engine that ran;
* :func:`theorem1` → :class:`Theorem1Result`: ``value`` = λ_max{(I − ηH)² + η²pΣ} and a
  ``verdict`` among :data:`VERDICTS`;
* :func:`theorem1_batch_sizes` → :class:`Theorem1Sweep`: Theorem 1 at several batch sizes of one η,
  each either solved (a :class:`Theorem1Result`) or decided by bounds from the solves of the others
  (a :class:`Theorem1Bound`, ``lower`` ≤ λ_max ≤ ``upper``); ``source`` says which.

All three read the solver's provenance through (``converged``, ``residual``, ``iterations``,
``matvecs``, ``dtype``, ``device``, ``seed``, ``tol``, ``wall_time``, ``vector``, ``method``) and
give a JSON-ready ``as_dict()``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Iterator, Mapping

import torch
from torch import Tensor

from .bounds import check_batch, check_lr, noise_factor, sharpness_bound
from .eigen import EigenResult, top_eigenpair
from .operators import CurvatureOperator, HessianOperator, SigmaOperator, Theorem1Operator
from .problem import Problem
from .threads import measurement_threads

CERTIFIED_STABLE = "certified stable"
NOT_CERTIFIED = "not certified"
UNKNOWN = "unknown"
#: The three verdicts of :class:`Theorem1Result`.
VERDICTS = (CERTIFIED_STABLE, NOT_CERTIFIED, UNKNOWN)
#: Where a Theorem-1 value of a :class:`Theorem1Sweep` comes from: a solve at that B, or bounds from other B.
SOLVE, BOUND = "solve", "bound"


def _one_thread_policy(criterion):
    """Run ``criterion(problem, ...)`` under the library's measurement thread policy (one CPU thread), so a
    value does not depend on the thread count of the process that asks for it."""
    @functools.wraps(criterion)
    def measured(problem, *args, **kwargs):
        with measurement_threads(problem.device):
            return criterion(problem, *args, **kwargs)

    return measured


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


class _Verdict:
    """What a Theorem-1 verdict says beyond its string (``verdict``, ``sharpness``, ``lr`` from the holder)."""

    verdict: str
    sharpness: float
    lr: float

    @property
    def stable(self) -> bool:
        """True only for the verdict "certified stable"."""
        return self.verdict == CERTIFIED_STABLE

    @property
    def sharpness_exceeded(self) -> bool:
        """a > 2/η: GD, and so SGD, is unstable (the one case where "unstable" may be said)."""
        return self.sharpness > sharpness_bound(self.lr)


@dataclass(frozen=True, eq=False)
class Theorem1Result(_Verdict, _SolverRun):
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
    source: ClassVar[str] = SOLVE

    @property
    def value(self) -> float:
        """λ_max(T): the larger of the solver's estimate and ``rayleigh_top``, both lower bounds up to
        the solver's tolerance (a Ritz value is a Rayleigh quotient)."""
        return max(self.eigen.value + self.shift, self.rayleigh_top)

    @property
    def lower(self) -> float:
        """A lower bound on λ_max(T): ``value`` (a Rayleigh quotient)."""
        return self.value

    @property
    def upper(self) -> float:
        """An upper bound on λ_max(T) to the solver's tolerance: ``value`` if the solve converged, else ∞."""
        return self.value if self.converged else math.inf

    @property
    def verdict(self) -> str:
        """"not certified" when value > 1 + stable_tol (a lower bound above it proves so even
        unconverged), else "certified stable" when the solver converged, else "unknown"."""
        if self.value > 1.0 + self.stable_tol:
            return NOT_CERTIFIED
        return CERTIFIED_STABLE if self.converged else UNKNOWN

    def as_dict(self) -> dict:
        """JSON-ready: value, verdict, the parts, and the solve on T − shift·I under ``eigen``."""
        return {"value": self.value, "verdict": self.verdict, "stable": self.stable, "converged": self.converged,
                "sharpness_exceeded": self.sharpness_exceeded, "lr": self.lr, "batch_size": self.batch_size,
                "n": self.n, "p": self.p, "stable_tol": self.stable_tol, "sharpness": self.sharpness,
                "rayleigh_top": self.rayleigh_top, "shift": self.shift, "products": dict(self.products),
                "eigen": self.eigen.as_dict()}


@_one_thread_policy
def sharpness(problem: Problem, method: str = "lanczos", tol: float = 1e-4, maxiter: int = 50,
              seed: int = 0, hvp: str = "auto") -> SharpnessResult:
    """a = λ_max(H), H = (1/n) Σ_i ∇²f_i.

    Args:
        problem: the finite-sum problem at the point x.
        method: "lanczos" (largest algebraic eigenvalue) or "power" (largest magnitude, the paper's).
        tol, maxiter, seed: the solver's (see :func:`~stabcheck.curvature.eigen.lanczos`).
        hvp: how H v is computed: "auto", "autodiff" or "factored" (see :class:`HessianOperator`).
    """
    return _measure_sharpness(problem, method, tol, maxiter, seed, hvp)


def _measure_sharpness(problem: Problem, method: str, tol: float, maxiter: int, seed: int,
                       hvp: str) -> SharpnessResult:
    # theorem1's argument ``sharpness`` hides the public function there.
    return SharpnessResult(_solve(HessianOperator(problem, hvp), method, tol, maxiter, seed))


@_one_thread_policy
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
    return v / float(torch.linalg.vector_norm(v, dtype=torch.float64))  # float32 sums drift at d ~ 1e6


@_one_thread_policy
def theorem1(problem: Problem, lr: float, batch_size: int, method: str = "lanczos", engine: str = "auto",
             tol: float = 1e-4, maxiter: int = 50, seed: int = 0, stable_tol: float = 1e-3,
             sharpness: SharpnessResult | None = None, hvp: str = "auto") -> Theorem1Result:
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
        hvp: how H v is computed (see :class:`HessianOperator`).

    >>> import torch
    >>> p = Problem(torch.nn.Linear(2, 1), torch.randn(4, 2), torch.randn(4, 1), loss="half_sq",
    ...             dtype=torch.float64)
    >>> t = theorem1(p, lr=1e-3, batch_size=2, tol=1e-8)
    >>> t.verdict, t.stable, t.sharpness_exceeded
    ('certified stable', True, False)
    """
    lr = check_lr(lr)
    check_batch(problem.n, batch_size)
    _check_stable_tol(stable_tol)
    products: Counter[str] = Counter()
    if sharpness is None:
        sharpness = _measure_sharpness(problem, "lanczos", tol, maxiter, seed, hvp)
        products["hessian"] += sharpness.matvecs
    top = _top_vector(problem, sharpness)
    result = _solve_theorem1(problem, lr, batch_size, method, engine, tol, maxiter, seed, stable_tol, hvp,
                             sharpness.value, top=top)
    products.update(result.products)
    return dataclasses.replace(result, products=MappingProxyType(dict(products)))


def _check_stable_tol(stable_tol: float) -> None:
    if not stable_tol >= 0:
        raise ValueError(f"stable_tol must be non-negative, got {stable_tol}")


def _solve_theorem1(problem: Problem, lr: float, batch_size: int, method: str, engine: str, tol: float,
                    maxiter: int, seed: int, stable_tol: float, hvp: str, sharpness_value: float, *,
                    top: Tensor | None = None, rayleigh_top: float | None = None) -> Theorem1Result:
    """The solve on T at one B; ``rayleigh_top`` given, or measured at ``top`` (one more T product).

    ``products`` holds this solve's H and Σ products only.
    """
    op = Theorem1Operator(problem, lr, batch_size, engine, excess=(method == "lanczos"), hvp=hvp)
    shift = 1.0 if op.excess else 0.0
    res = _solve(op, method, tol, maxiter, seed)
    if rayleigh_top is None:
        rayleigh_top = shift + float(top.double() @ op.matvec(top).double())
    return Theorem1Result(lr=lr, batch_size=batch_size, n=problem.n, p=op.p, stable_tol=stable_tol,
                          sharpness=sharpness_value, rayleigh_top=rayleigh_top, shift=shift, eigen=res,
                          products=MappingProxyType({k: n for k, n in op.products.items() if k != op.name}))


# ---- Theorem 1 at several batch sizes -------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Theorem1Bound(_Verdict):
    """λ_max(T) at one B enclosed, lower ≤ λ_max(T) ≤ upper, by the solves at other batch sizes.

    No solve ran at this B (``source`` is "bound"); :func:`theorem1_batch_sizes` explains the bounds.
    The verdict is read from them as :class:`Theorem1Result`'s is from its value: "not certified"
    when lower > 1 + stable_tol, "certified stable" when upper ≤ 1 + stable_tol, else "unknown".

    Attributes:
        lr, batch_size, n, p, stable_tol, sharpness: as for :class:`Theorem1Result`.
        lower: a lower bound (a Rayleigh quotient of T, or a solved value at a larger B).
        upper: an upper bound to the solvers' tolerance (∞ when no converged solve bounds it).
    """

    lr: float
    batch_size: int
    n: int
    p: float
    stable_tol: float
    sharpness: float
    lower: float
    upper: float
    source: ClassVar[str] = BOUND

    @property
    def verdict(self) -> str:
        """"not certified", "certified stable" or "unknown", from ``lower`` and ``upper``."""
        if self.lower > 1.0 + self.stable_tol:
            return NOT_CERTIFIED
        return CERTIFIED_STABLE if self.upper <= 1.0 + self.stable_tol else UNKNOWN

    def as_dict(self) -> dict:
        """JSON-ready: the bounds, the verdict and the setting (``upper`` may be ∞)."""
        return {"lower": self.lower, "upper": self.upper, "verdict": self.verdict, "stable": self.stable,
                "sharpness_exceeded": self.sharpness_exceeded, "lr": self.lr, "batch_size": self.batch_size,
                "n": self.n, "p": self.p, "stable_tol": self.stable_tol, "sharpness": self.sharpness}


@dataclass(frozen=True, eq=False)
class Theorem1Sweep:
    """Theorem 1 at several batch sizes of one η: per B a solve (:class:`Theorem1Result`) or bounds
    (:class:`Theorem1Bound`), each with ``source``, ``verdict``, ``lower`` and ``upper``.

    Iterating gives the results in ascending B; :meth:`result` looks one up by B.

    Attributes:
        lr, n: η and the number of samples.
        results: one per distinct batch size, ascending.
        sharpness: the a used (given, or measured by the sweep).
        products: every H and Σ product the sweep made: the solves, the Rayleigh quotients behind the
            lower bounds and, when it ran one, the sharpness solve.
    """

    lr: float
    n: int
    results: tuple[Theorem1Result | Theorem1Bound, ...]
    sharpness: SharpnessResult = field(repr=False)
    products: Mapping[str, int]

    def __iter__(self) -> Iterator[Theorem1Result | Theorem1Bound]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(r.batch_size for r in self.results)

    @property
    def solved(self) -> tuple[int, ...]:
        """The batch sizes where T was solved."""
        return tuple(r.batch_size for r in self.results if r.source == SOLVE)

    def result(self, batch_size: int) -> Theorem1Result | Theorem1Bound:
        """The result at ``batch_size``; KeyError if the sweep did not include it."""
        for r in self.results:
            if r.batch_size == batch_size:
                return r
        raise KeyError(f"batch size {batch_size} is not in this sweep; it has {list(self.batch_sizes)}")

    def as_dict(self) -> dict:
        """JSON-ready: per batch size its ``source``, ``lower``, ``upper`` and its own record; the products."""
        return {"lr": self.lr, "n": self.n, "solved": list(self.solved), "products": dict(self.products),
                "sharpness": self.sharpness.value,
                "results": [{"source": r.source, "lower": r.lower, "upper": r.upper, **r.as_dict()}
                            for r in self.results]}


@dataclass(frozen=True)
class _Tangent:
    """vᵀT(p)v = 1 + excess + p·slope at a unit v: a lower bound on λ_max(T(p)) for every p."""

    excess: float  # η²‖Hv‖² − 2η vᵀHv
    slope: float   # η² vᵀΣv

    def at(self, p: float) -> float:
        return 1.0 + self.excess + p * self.slope


def _tangent(hessian: HessianOperator, sigma: SigmaOperator | None, lr: float, v: Tensor) -> _Tangent:
    """One H product and, unless ``sigma`` is None (every p = 0), one Σ product at v/‖v‖."""
    v = v.to(hessian.device, torch.float64)  # the sums in float64: float32 ones drift at d ~ 1e6
    v = v / v.norm()
    hv = hessian.matvec(v).double()
    slope = lr * lr * float(v @ sigma.matvec(v).double()) if sigma is not None else 0.0
    return _Tangent(excess=lr * lr * float(hv @ hv) - 2 * lr * float(v @ hv), slope=slope)


def _enclose(p: float, tangents: list[_Tangent], solved: list[Theorem1Result]) -> tuple[float, float]:
    """(lower, upper) on λ_max(T(p)) from the tangents and the solves at other p.

    λ_max(T(p)) is non-decreasing in p (Σ ⪰ 0) and convex in p (a maximum of functions affine in p):
    a solve at q ≤ p bounds it below, a converged solve at q ≥ p above, and the chord between the
    nearest converged solves on either side of p above.
    """
    lower = max([t.at(p) for t in tangents] + [r.value for r in solved if r.p <= p])
    converged = [r for r in solved if r.converged]
    left = max((r for r in converged if r.p < p), key=lambda r: r.p, default=None)
    right = min((r for r in converged if r.p > p), key=lambda r: r.p, default=None)
    upper = math.inf if right is None else right.value
    if left is not None and right is not None:
        weight = (p - left.p) / (right.p - left.p)
        upper = min(upper, (1 - weight) * left.value + weight * right.value)
    return lower, upper


def _next_batch_size(undecided: list[int], solved: list[Theorem1Result]) -> int:
    """The largest undecided B first (at B = n, T has no Σ part), then the smallest undecided one if it lies
    below every solve, else the middle undecided one."""
    done = {r.batch_size for r in solved}
    if not done:
        return undecided[-1]
    if undecided[0] < min(done):
        return undecided[0]
    return undecided[len(undecided) // 2]


@_one_thread_policy
def theorem1_batch_sizes(problem: Problem, lr: float, batch_sizes, method: str = "lanczos", engine: str = "auto",
                         tol: float = 1e-4, maxiter: int = 50, seed: int = 0, stable_tol: float = 1e-3,
                         sharpness: SharpnessResult | None = None, hvp: str = "auto") -> Theorem1Sweep:
    """Theorem 1 at several batch sizes, solving T_B = (I − ηH)² + η²p_BΣ only where bounds do not decide.

    λ_max(T(p)) is non-decreasing and convex in p = (n − B)/(B(n − 1)), which falls with B. So a
    solve at one B bounds the others: below by its value at every smaller B, and by the tangent
    vᵀT(p)v = 1 + η²‖Hv‖² − 2ηvᵀHv + p·η²vᵀΣv of its eigenvector v at every B (one H and one Σ
    product; H's top eigenvector gives one too); above by its value at every larger B, and by the
    chord between two solved p around each p in between. The largest undecided B is solved first,
    then the smallest, then the middle of the undecided ones, until every B is solved or its bounds
    decide its verdict (see :class:`Theorem1Bound`). Each solve is the one :func:`theorem1` makes,
    so every verdict is that of a separate :func:`theorem1` call up to the solvers' tolerance.

    Args:
        problem: the finite-sum problem at the minimum x*.
        lr: η.
        batch_sizes: the B to check (1 ≤ B ≤ n; repeats are checked once).
        method, engine, tol, maxiter, seed, stable_tol, hvp: as for :func:`theorem1`, for every solve.
        sharpness: this problem's measured a; None measures it here as :func:`theorem1` does.

    >>> import torch
    >>> p = Problem(torch.nn.Linear(2, 1), torch.randn(8, 2), torch.randn(8, 1), loss="half_sq",
    ...             dtype=torch.float64)
    >>> sweep = theorem1_batch_sizes(p, lr=1e-3, batch_sizes=[1, 2, 4, 8], tol=1e-8)
    >>> [(r.batch_size, r.source, r.verdict) for r in sweep][:2]
    [(1, 'solve', 'certified stable'), (2, 'bound', 'certified stable')]
    """
    lr = check_lr(lr)
    sizes = sorted(set(batch_sizes))
    if not sizes:
        raise ValueError("batch_sizes is empty; give at least one batch size")
    for b in sizes:
        check_batch(problem.n, b)
    _check_stable_tol(stable_tol)
    products: Counter[str] = Counter({"hessian": 0, "sigma": 0})
    if sharpness is None:
        sharpness = _measure_sharpness(problem, "lanczos", tol, maxiter, seed, hvp)
        products["hessian"] += sharpness.matvecs
    top = _top_vector(problem, sharpness)
    ps = {b: noise_factor(problem.n, b) for b in sizes}
    hessian = HessianOperator(problem, hvp)
    sigma = SigmaOperator(problem, engine) if any(ps.values()) else None
    top_tangent = _tangent(hessian, sigma, lr, top)
    tangents = [top_tangent]
    solved: list[Theorem1Result] = []

    def bound(b: int) -> Theorem1Bound:
        return Theorem1Bound(lr, b, problem.n, ps[b], stable_tol, sharpness.value, *_enclose(ps[b], tangents, solved))

    def undecided() -> list[int]:
        done = {r.batch_size for r in solved}
        return [b for b in sizes if b not in done and bound(b).verdict == UNKNOWN]

    left = undecided()
    while left:
        b = _next_batch_size(left, solved)
        result = _solve_theorem1(problem, lr, b, method, engine, tol, maxiter, seed, stable_tol, hvp,
                                 sharpness.value, rayleigh_top=top_tangent.at(ps[b]))
        solved.append(result)
        products.update(result.products)
        left = undecided()
        if left:  # its eigenvector's tangent, only when some B are still open
            tangents.append(_tangent(hessian, sigma, lr, result.vector))
            left = undecided()
    by_size = {r.batch_size: r for r in solved}
    results = tuple(by_size[b] if b in by_size else bound(b) for b in sizes)
    for part in (hessian, sigma):
        if part is not None:
            products.update(part.products)
    return Theorem1Sweep(lr=lr, n=problem.n, results=results, sharpness=sharpness,
                         products=MappingProxyType(dict(products)))
