"""The immutable results of the criteria, and the one protocol every Theorem-1 result answers.

* :class:`SharpnessResult`: ``value`` = a = λ_max(H);
* :class:`NonUniformityResult`: ``value`` = s = √max(λ_max(Σ), 0), ``eigenvalue`` = λ_max(Σ);
* Theorem 1, whichever form ran and whether solved or bounded: :class:`Theorem1Result` (full space),
  :class:`~stabcheck.curvature.sample_space.SampleTheorem1Result` (sample space) and
  :class:`Theorem1Bound` (decided by other solves of a sweep) each answer ``form``, ``solved``,
  ``value`` (λ_max(T); None where only bounds are known), ``lower`` ≤ λ_max(T) ≤ ``upper``,
  ``converged``, ``verdict`` (one of :data:`VERDICTS`), ``stable``, ``sharpness_exceeded`` and
  ``as_dict()``, whose keys start with :data:`THEOREM1_KEYS` for all of them;
* :class:`Theorem1Sweep`: one Theorem-1 result per batch size of one η.

Solver provenance (``converged``, ``residual``, ``iterations``, ``matvecs``, ``dtype``, ``device``,
``seed``, ``tol``, ``wall_time``, ``vector``, ``method``) reads through from ``.eigen``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Mapping

from .bounds import sharpness_bound
from .eigen import EigenResult

CERTIFIED_STABLE = "certified stable"
NOT_CERTIFIED = "not certified"
UNKNOWN = "unknown"
#: The three verdicts of every Theorem-1 result.
VERDICTS = (CERTIFIED_STABLE, NOT_CERTIFIED, UNKNOWN)
#: Where a Theorem-1 value of a :class:`Theorem1Sweep` comes from: a solve at that B, or bounds from other B.
SOLVE, BOUND = "solve", "bound"
#: The forms of Theorem 1: in parameter space, or in sample space at an interpolating minimum.
FULL, SAMPLE = "full", "sample"
#: The keys every Theorem-1 result's ``as_dict()`` starts with, in this order.
THEOREM1_KEYS = ("form", "source", "solved", "value", "lower", "upper", "verdict", "stable", "converged",
                 "sharpness_exceeded", "lr", "batch_size", "n", "p", "stable_tol", "sharpness")


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

    ``problem`` is the fingerprint of the problem it was measured on (see
    :func:`~stabcheck.curvature.criteria.fingerprint`): Theorem 1 refuses an a of another problem.

    >>> import torch, stabcheck
    >>> p = stabcheck.Problem(torch.nn.Linear(2, 1), torch.randn(4, 2), torch.randn(4, 1), loss="half_sq",
    ...                       dtype=torch.float64)
    >>> r = stabcheck.sharpness(p, tol=1e-8)
    >>> r.value == r.eigenvalue == r.eigen.value
    True
    """

    eigen: EigenResult
    problem: str = ""

    @property
    def value(self) -> float:
        """a, the sharpness."""
        return self.eigen.value

    @property
    def eigenvalue(self) -> float:
        """λ_max(H), which is a itself."""
        return self.eigen.value

    def as_dict(self) -> dict:
        """JSON-ready: ``value`` (a), ``problem`` and the solver's record (``eigenvalue``, ``converged``, ...)."""
        return {"value": self.value, "problem": self.problem, **self._solver_dict()}


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
    sharpness: float | None
    lr: float
    batch_size: int
    n: int
    p: float
    stable_tol: float
    form: ClassVar[str]
    source: ClassVar[str]

    @property
    def solved(self) -> bool:
        """Whether a solve ran at this B (else bounds from other solves decided it)."""
        return self.source == SOLVE

    @property
    def stable(self) -> bool:
        """True only for the verdict "certified stable"."""
        return self.verdict == CERTIFIED_STABLE

    @property
    def sharpness_exceeded(self) -> bool:
        """a > 2/η: GD, and so SGD, is unstable (the one case where "unstable" may be said); False
        when no a was measured (``sharpness`` None)."""
        return self.sharpness is not None and self.sharpness > sharpness_bound(self.lr)

    def _protocol_dict(self) -> dict:
        """The :data:`THEOREM1_KEYS` of this result."""
        return {key: getattr(self, key) for key in THEOREM1_KEYS}


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
    form: ClassVar[str] = FULL

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
        """JSON-ready: :data:`THEOREM1_KEYS`, then ``rayleigh_top``, ``shift``, ``products`` and the solve
        on T − shift·I under ``eigen``."""
        return {**self._protocol_dict(), "rayleigh_top": self.rayleigh_top, "shift": self.shift,
                "products": dict(self.products), "eigen": self.eigen.as_dict()}



@dataclass(frozen=True, eq=False)
class Theorem1Bound(_Verdict):
    """λ_max(T) at one B enclosed, lower ≤ λ_max(T) ≤ upper, by the solves at other batch sizes.

    No solve ran at this B (``source`` "bound", ``value`` None); :func:`theorem1_batch_sizes` explains
    the bounds. The verdict is read from them as a solved result's is from its value: "not certified"
    when lower > 1 + stable_tol, "certified stable" when upper ≤ 1 + stable_tol, else "unknown".

    Attributes:
        lr, batch_size, n, p, stable_tol, sharpness: as for :class:`Theorem1Result`.
        lower: a lower bound (a Rayleigh quotient of T, or a solved value at a larger B).
        upper: an upper bound to the solvers' tolerance (∞ when no converged solve bounds it).
        form: the form of the solves the bounds come from ("full" or "sample").
        mu_lower, mu_upper: in the sample form, bounds on μ (see
            :class:`~stabcheck.curvature.sample_space.SampleTheorem1Result`); None in the full form.
    """

    lr: float
    batch_size: int
    n: int
    p: float
    stable_tol: float
    sharpness: float | None
    lower: float
    upper: float
    form: str = FULL
    mu_lower: float | None = None
    mu_upper: float | None = None
    source: ClassVar[str] = BOUND
    value: ClassVar[None] = None

    @property
    def converged(self) -> bool:
        """Whether converged solves bound it above (``upper`` finite)."""
        return math.isfinite(self.upper)

    @property
    def verdict(self) -> str:
        """"not certified", "certified stable" or "unknown", from ``lower`` and ``upper``."""
        if self.lower > 1.0 + self.stable_tol:
            return NOT_CERTIFIED
        return CERTIFIED_STABLE if self.upper <= 1.0 + self.stable_tol else UNKNOWN

    def as_dict(self) -> dict:
        """JSON-ready: :data:`THEOREM1_KEYS` (``upper`` may be ∞), then ``mu_lower`` and ``mu_upper``."""
        return {**self._protocol_dict(), "mu_lower": self.mu_lower, "mu_upper": self.mu_upper}


@dataclass(frozen=True, eq=False)
class Theorem1Sweep:
    """Theorem 1 at several batch sizes of one η: per B a solved result or a :class:`Theorem1Bound`,
    each answering the Theorem-1 protocol (see the module docstring).

    Iterating gives the results in ascending B; :meth:`result` looks one up by B.

    Attributes:
        lr, n: η and the number of samples.
        results: one per distinct batch size, ascending.
        sharpness: the a used (given, or measured by a full-form sweep; None in a sample-form sweep
            given none).
        products: every H and Σ product the sweep made: the solves, the Rayleigh quotients behind the
            lower bounds and, when it ran one, the sharpness solve.
    """

    lr: float
    n: int
    results: tuple
    sharpness: SharpnessResult | None = field(repr=False)
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
        return tuple(r.batch_size for r in self.results if r.solved)

    def result(self, batch_size: int) -> Theorem1Result | Theorem1Bound:
        """The result at ``batch_size``; KeyError if the sweep did not include it."""
        for r in self.results:
            if r.batch_size == batch_size:
                return r
        raise KeyError(f"batch size {batch_size} is not in this sweep; it has {list(self.batch_sizes)}")

    def as_dict(self) -> dict:
        """JSON-ready: per batch size its record (each starting with :data:`THEOREM1_KEYS`); the products."""
        return {"lr": self.lr, "n": self.n, "solved": list(self.solved), "products": dict(self.products),
                "sharpness": None if self.sharpness is None else self.sharpness.value,
                "results": [r.as_dict() for r in self.results]}


