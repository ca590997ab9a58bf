"""The solves: sharpness, non-uniformity and Theorem 1 (PAPER.md §1), with one frozen options object.

* :func:`sharpness` → :class:`~stabcheck.curvature.results.SharpnessResult` (a = λ_max(H));
* :func:`non_uniformity` → :class:`~stabcheck.curvature.results.NonUniformityResult` (s);
* :func:`theorem1` → a Theorem-1 result in the form that applies: the sample-space form
  (:mod:`stabcheck.curvature.sample_space`) at squared-error problems with d > nK, else the full form
  (:class:`~stabcheck.curvature.results.Theorem1Result`, λ_max of T in parameter space).

Every solve reads its solver settings from a :class:`SolveOptions`; the functions accept its fields as
keywords (``tol=1e-8``) or one ``options=SolveOptions(...)``. The results are in
:mod:`stabcheck.curvature.results`; the batch-size sweep in :mod:`stabcheck.curvature.sweep`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from numbers import Integral, Real
from types import MappingProxyType

import torch
from torch import Tensor

from .bounds import check_batch, check_lr
from .eigen import METHODS, EigenResult, top_eigenpair
from .engines import SIGMA_ENGINES, SigmaEngine
from .gauss_newton import SQUARED_LOSSES
from .operators import CurvatureOperator, HessianOperator, SigmaOperator, Theorem1Operator
from .problem import Problem, ProblemError
# The verdict and source names are re-exported: callers read them with the solves.
from .results import (  # noqa: F401
    BOUND, CERTIFIED_STABLE, FULL, NOT_CERTIFIED, SAMPLE, SOLVE, UNKNOWN, VERDICTS, NonUniformityResult,
    SharpnessResult, Theorem1Result,
)
from .sample_space import ResidualTerm, SampleSpace, SampleTheorem1Result, solve_sample
from .threads import measurement_threads

#: ``form`` values of :func:`theorem1`: "auto" picks "sample" where it applies (:func:`choose_form`).
FORMS = ("auto", SAMPLE, FULL)
#: stable_tol must lie in [0, this): a larger slack would call values far above 1 stable.
STABLE_TOL_LIMIT = 0.5


@dataclass(frozen=True)
class SolveOptions:
    """How the criteria solve (immutable; checked on construction).

    Attributes:
        method: "lanczos" (largest algebraic eigenvalue) or "power" (largest magnitude, the paper's).
        engine: the Σ engine's name in ``SIGMA_ENGINES``, "auto", or a configured engine
            (``SIGMA_ENGINES["factored"].with_options(...)``).
        tol, maxiter, seed: the eigensolver's (see :func:`~stabcheck.curvature.eigen.lanczos`).
        stable_tol: slack, on T's scale, that absorbs the solver's tolerance when the full form
            compares λ_max(T) with 1; finite, in [0, 0.5).
        hvp: how H v is computed: "auto", "autodiff" or "factored" (see :class:`HessianOperator`).
        residual_steps: Lanczos steps (products of H − G) the sample form spends on the residual term
            (0: not measured).

    >>> SolveOptions(tol=1e-8).maxiter
    50
    """

    method: str = "lanczos"
    engine: str | SigmaEngine = "auto"
    tol: float = 1e-4
    maxiter: int = 50
    seed: int = 0
    stable_tol: float = 1e-3
    hvp: str = "auto"
    residual_steps: int = 8

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown eigensolver {self.method!r}; choose one of {METHODS}")
        # checked even where Σ is not applied
        if not isinstance(self.engine, SigmaEngine) and self.engine != "auto" and self.engine not in SIGMA_ENGINES:
            raise ProblemError(f"unknown Σ engine {self.engine!r}; choose 'auto', one of {sorted(SIGMA_ENGINES)} "
                               "or a configured engine (SIGMA_ENGINES[name].with_options(...))")
        tol = self.stable_tol
        if isinstance(tol, bool) or not isinstance(tol, Real) or not (0 <= tol < STABLE_TOL_LIMIT):
            raise ValueError(f"stable_tol must be a finite number in [0, {STABLE_TOL_LIMIT}), got {tol!r}: it is the "
                             "slack by which λ_max(T) may exceed 1 and still count as stable (default 1e-3)")
        steps = self.residual_steps
        if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 0:
            raise ValueError(f"residual_steps must be a whole number ≥ 0, got {steps!r}")

    @classmethod
    def of(cls, options: SolveOptions | None, settings: dict) -> SolveOptions:
        """``options``, or the options made of keyword ``settings`` (not both)."""
        if options is None:
            return cls(**settings)
        if settings:
            raise TypeError(f"give the solver settings either as options= or as keywords, not both: {sorted(settings)}")
        if not isinstance(options, SolveOptions):
            raise TypeError(f"options must be a SolveOptions, got {type(options).__name__}")
        return options


def fingerprint(problem: Problem) -> str:
    """A digest of what defines the problem: loss, parameter names and shapes, and the values of x and of
    the data in float32 (so the float32 and float64 copies of one problem share it)."""
    digest = hashlib.sha256(f"{problem.loss}|{problem.n}|{problem.names}|{problem.shapes}".encode())
    for t in (*problem.params.values(), problem.inputs, problem.targets):
        t = t.detach().to("cpu")
        digest.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _one_thread_policy(criterion):
    """Run ``criterion(problem, ...)`` under the library's measurement thread policy (one CPU thread), so a
    value does not depend on the thread count of the process that asks for it."""
    @functools.wraps(criterion)
    def measured(problem, *args, **kwargs):
        with measurement_threads(problem.device):
            return criterion(problem, *args, **kwargs)

    return measured


def solve(op: CurvatureOperator, options: SolveOptions, atol: float = 0.0) -> EigenResult:
    """The top eigenpair of ``op`` by ``options``' solver (``atol``: the products' rounding floor)."""
    return top_eigenpair(op.matvec, op.problem.dim, method=options.method, tol=options.tol,
                         maxiter=options.maxiter, seed=options.seed, dtype=op.dtype, device=op.device, atol=atol)


@_one_thread_policy
def sharpness(problem: Problem, *, options: SolveOptions | None = None, **settings) -> SharpnessResult:
    """a = λ_max(H), H = (1/n) Σ_i ∇²f_i.

    Args:
        problem: the finite-sum problem at the point x.
        options, settings: a :class:`SolveOptions` or its fields (method, tol, maxiter, seed, hvp).
    """
    return measure_sharpness(problem, SolveOptions.of(options, settings))


def measure_sharpness(problem: Problem, options: SolveOptions) -> SharpnessResult:
    """:func:`sharpness` with its options made (the name ``sharpness`` is an argument of the Theorem-1 solves)."""
    return SharpnessResult(solve(HessianOperator(problem, options.hvp), options), problem=fingerprint(problem))


@_one_thread_policy
def non_uniformity(problem: Problem, *, options: SolveOptions | None = None, **settings) -> NonUniformityResult:
    """s = λ_max(Σ)^½, Σ = (1/n) Σ_i (H_i − H)².

    A Σ at the rounding floor of its products (Σ = 0 with H_i = H, e.g. n = 1) has no relative accuracy
    to reach: a solve that misses ``tol`` and saw no eigenvalue above the floor is redone against it
    (see :func:`_sigma_floor`) and converges with s at the noise level, s² ≤ ``SIGMA_NOISE``·eps·a².
    A Σ above the floor that misses ``tol`` stays unconverged.

    Args:
        problem: the finite-sum problem at the point x.
        options, settings: a :class:`SolveOptions` or its fields (method, engine, tol, maxiter, seed).
    """
    options = SolveOptions.of(options, settings)
    op = SigmaOperator(problem, options.engine)
    eigen = solve(op, options)
    if not eigen.converged:
        eigen = _sigma_floor(problem, op, options, eigen)
    return NonUniformityResult(eigen, engine=op.engine)


# Σ v is a difference of (1/n) Σ_i H_i² v and H² v: where they cancel (Σ ≈ 0, so H_i ≈ H) its rounding
# noise is about eps·‖H‖² per product, times a factor that grows with the operations summed. a² ≤ ‖H‖²
# keeps the floor on the strict side; ‖Σv‖ ≤ (0.03–0.1)·eps·a² was measured at Σ = 0 on the tiny test
# networks (d ≈ 100, both dtypes, every engine), so 16 leaves room for larger d.
SIGMA_NOISE = 16


def _sigma_floor(problem: Problem, op: SigmaOperator, options: SolveOptions, missed: EigenResult) -> EigenResult:
    """The Σ solve ``missed`` redone with the absolute floor atol = SIGMA_NOISE·eps·a², when every estimate
    of λ_max(Σ) it made lay within ±atol (Σ is zero as far as its products can tell); else ``missed`` as it
    is. A residual below atol alone would not do: Σ is low-rank, so a Ritz pair near 0 meets it long before
    λ_max is found. The sharpness a costs one more solve, spent only here."""
    a = measure_sharpness(problem, dataclasses.replace(options, method="lanczos")).value
    atol = SIGMA_NOISE * torch.finfo(op.dtype).eps * a * a
    if max(map(abs, missed.history), default=0.0) > atol:
        return missed
    again = solve(op, options, atol=atol)
    return dataclasses.replace(again, converged=again.converged and max(map(abs, again.history)) <= atol,
                               matvecs=missed.matvecs + again.matvecs, wall_time=missed.wall_time + again.wall_time)


def choose_form(problem: Problem, form: str) -> str:
    """"sample" for ``form="auto"`` at a squared-error loss with d > nK (the over-parameterised case, where
    the neutral directions exist) held by one process, else "full"; an explicit form as given."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form != "auto":
        return form
    if problem.n != problem.n_local:  # sharded: the sample-space vectors would span the processes
        return FULL
    outputs = problem.targets[0].numel() if problem.loss in SQUARED_LOSSES else math.inf
    return SAMPLE if problem.dim > problem.n * outputs else FULL


def checked_sharpness(problem: Problem, sharpness: SharpnessResult) -> Tensor:
    """H's unit top eigenvector from ``sharpness``, after checking that it was measured on ``problem``."""
    if not isinstance(sharpness, SharpnessResult):
        raise TypeError(f"sharpness must be a SharpnessResult (from stabcheck.sharpness), got {type(sharpness).__name__}")
    v = sharpness.vector
    if v.shape != (problem.dim,) or sharpness.problem != fingerprint(problem):
        raise ValueError("the given sharpness was measured on another problem (its fingerprint "
                         f"{sharpness.problem or 'none'} differs from this problem's {fingerprint(problem)}); pass "
                         "stabcheck.sharpness(problem) of this problem, or None to measure it here")
    v = v.to(problem.device, problem.dtype)
    return v / float(torch.linalg.vector_norm(v, dtype=torch.float64))  # float32 sums drift at d ~ 1e6


def check_setting(problem: Problem, lr: float, batch_sizes) -> float:
    lr = check_lr(lr)
    for b in batch_sizes:
        check_batch(problem.n, b)
    return lr


@_one_thread_policy
def theorem1(problem: Problem, lr: float, batch_size: int, *, form: str = "auto",
             sharpness: SharpnessResult | None = None, options: SolveOptions | None = None,
             **settings) -> Theorem1Result | SampleTheorem1Result:
    """Theorem 1: x* is linearly stable for SGD(η, B) if λ_max{(I − ηH)² + η²pΣ} ≤ 1.

    ``form="full"`` solves in parameter space: Lanczos on T − I (exactly 0 on the null space of H
    and Σ) or power iteration on the PSD T, bounded below by vᵀTv at H's top eigenvector v. At an
    over-parameterised minimum T has d − nK eigenvalues at 1, so this form cannot certify there.
    ``form="sample"`` solves μ = η·λ_max(K_p) ≤ 2 in sample space, the condition at the
    interpolation limit, and measures the residual term H − G beside it (see
    :mod:`stabcheck.curvature.sample_space` for what it certifies). "auto" takes "sample" where it
    applies (:func:`choose_form`).

    Args:
        problem: the finite-sum problem at the minimum x*.
        lr, batch_size: η and B (1 ≤ B ≤ n; B = n is GD).
        form: "auto", "sample" or "full".
        sharpness: this problem's measured a (checked to be of this problem). The full form reuses its
            value and vector (None: measured here with the same options); the sample form uses its
            value for ``sharpness_exceeded`` only (None: not measured).
        options, settings: a :class:`SolveOptions` or its fields (method, engine, tol, maxiter, seed,
            stable_tol, hvp, residual_steps).

    >>> import torch
    >>> p = Problem(torch.nn.Linear(2, 1), torch.randn(4, 2), torch.randn(4, 1), loss="half_sq",
    ...             dtype=torch.float64)
    >>> t = theorem1(p, lr=1e-3, batch_size=2, tol=1e-8)
    >>> t.form, t.verdict, t.stable, t.sharpness_exceeded
    ('full', 'certified stable', True, False)
    """
    options = SolveOptions.of(options, settings)
    lr = check_setting(problem, lr, [batch_size])
    if choose_form(problem, form) == SAMPLE:
        space, value, residual = prepare_sample(problem, sharpness, options)
        return solve_sample(space, lr, batch_size, options, value, residual)
    products: Counter[str] = Counter()
    if sharpness is None:
        sharpness = measure_sharpness(problem, dataclasses.replace(options, method="lanczos"))
        products["hessian"] += sharpness.matvecs
    top = checked_sharpness(problem, sharpness)
    result = solve_full(problem, lr, batch_size, options, sharpness.value, top=top)
    products.update(result.products)
    return dataclasses.replace(result, products=MappingProxyType(dict(products)))


def prepare_sample(problem: Problem, sharpness: SharpnessResult | None,
                   options: SolveOptions) -> tuple[SampleSpace, float | None, ResidualTerm | None]:
    """What every sample-form solve of one problem shares: its :class:`SampleSpace` (the Gram blocks), the
    checked value of a given sharpness (None without one) and the residual term (None if not asked for)."""
    value = None
    if sharpness is not None:
        checked_sharpness(problem, sharpness)
        value = sharpness.value
    space = SampleSpace(problem)
    residual = space.residual_term(options.residual_steps, options) if options.residual_steps else None
    return space, value, residual


def solve_full(problem: Problem, lr: float, batch_size: int, options: SolveOptions, sharpness_value: float, *,
               top: Tensor | None = None, rayleigh_top: float | None = None) -> Theorem1Result:
    """The full-form solve on T at one B; ``rayleigh_top`` given, or measured at ``top`` (one more T product).

    ``products`` holds this solve's H and Σ products only.
    """
    op = Theorem1Operator(problem, lr, batch_size, options.engine, excess=(options.method == "lanczos"),
                          hvp=options.hvp)
    shift = 1.0 if op.excess else 0.0
    res = solve(op, options)
    if rayleigh_top is None:
        rayleigh_top = shift + float(top.double() @ op.matvec(top).double())
    return Theorem1Result(lr=lr, batch_size=batch_size, n=problem.n, p=op.p, stable_tol=options.stable_tol,
                          sharpness=sharpness_value, rayleigh_top=rayleigh_top, shift=shift, eigen=res,
                          products=MappingProxyType({k: n for k, n in op.products.items() if k != op.name}))
