"""Theorem 1 at several batch sizes of one η, solving only where bounds from other solves do not decide.

Both forms use that their quantity is non-decreasing and convex in p = (n − B)/(B(n − 1)), which
falls with B: λ_max(T(p)) in the full form, μ(p) in the sample form (each a maximum of functions
affine in p, with a PSD slope: Σ ⪰ 0, nD ⪰ Γ).
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from .bounds import noise_factor
from .criteria import (
    SolveOptions, _one_thread_policy, check_setting, checked_sharpness, choose_form, measure_sharpness, prepare_sample,
    solve_full,
)
from .operators import HessianOperator, SigmaOperator
from .problem import Problem
from .results import SAMPLE, UNKNOWN, Theorem1Bound, Theorem1Result, Theorem1Sweep
from .sample_space import solve_sample


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
def theorem1_batch_sizes(problem: Problem, lr: float, batch_sizes, *, form: str = "auto",
                         sharpness=None, options: SolveOptions | None = None, **settings) -> Theorem1Sweep:
    """Theorem 1 at several batch sizes, solving T_B = (I − ηH)² + η²p_BΣ only where bounds do not decide.

    The form is chosen as :func:`~stabcheck.curvature.criteria.theorem1` chooses it. In the sample
    form, μ is solved at the smallest and the largest B, and every B between is bounded above by the
    chord of the two μ upper values and below by the Rayleigh quotients of their eigenvectors (one Γ
    product each): a chord ≤ 2 certifies it (:class:`Theorem1Bound` with ``mu_lower``, ``mu_upper``),
    else it is solved. The residual term is measured once for all.

    In the full form, λ_max(T(p)) is non-decreasing and convex in p = (n − B)/(B(n − 1)), which falls
    with B. So a solve at one B bounds the others: below by its value at every smaller B, and by the tangent
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
        form, sharpness, options, settings: as for :func:`~stabcheck.curvature.criteria.theorem1`.

    >>> import torch
    >>> p = Problem(torch.nn.Linear(2, 1), torch.randn(8, 2), torch.randn(8, 1), loss="half_sq",
    ...             dtype=torch.float64)
    >>> sweep = theorem1_batch_sizes(p, lr=1e-3, batch_sizes=[1, 2, 4, 8], tol=1e-8)
    >>> sweep.result(1).form
    'full'
    >>> [(r.batch_size, r.source, r.verdict) for r in sweep][:2]
    [(1, 'solve', 'certified stable'), (2, 'bound', 'certified stable')]
    """
    options = SolveOptions.of(options, settings)
    sizes = sorted(set(batch_sizes))
    if not sizes:
        raise ValueError("batch_sizes is empty; give at least one batch size")
    lr = check_setting(problem, lr, sizes)
    if choose_form(problem, form) == SAMPLE:
        return _sample_sweep(problem, lr, sizes, options, sharpness)
    return _full_sweep(problem, lr, sizes, options, sharpness)


def _full_sweep(problem: Problem, lr: float, sizes: list[int], options: SolveOptions, sharpness) -> Theorem1Sweep:
    products: Counter[str] = Counter({"hessian": 0, "sigma": 0})
    if sharpness is None:
        sharpness = measure_sharpness(problem, dataclasses.replace(options, method="lanczos"))
        products["hessian"] += sharpness.matvecs
    top = checked_sharpness(problem, sharpness)
    ps = {b: noise_factor(problem.n, b) for b in sizes}
    hessian = HessianOperator(problem, options.hvp)
    sigma = SigmaOperator(problem, options.engine) if any(ps.values()) else None
    top_tangent = _tangent(hessian, sigma, lr, top)
    tangents = [top_tangent]
    solved: list[Theorem1Result] = []

    def bound(b: int) -> Theorem1Bound:
        return Theorem1Bound(lr, b, problem.n, ps[b], options.stable_tol, sharpness.value,
                             *_enclose(ps[b], tangents, solved))

    def undecided() -> list[int]:
        done = {r.batch_size for r in solved}
        return [b for b in sizes if b not in done and bound(b).verdict == UNKNOWN]

    left = undecided()
    while left:
        b = _next_batch_size(left, solved)
        result = solve_full(problem, lr, b, options, sharpness.value, rayleigh_top=top_tangent.at(ps[b]))
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


def _sample_sweep(problem: Problem, lr: float, sizes: list[int], options: SolveOptions,
                  sharpness) -> Theorem1Sweep:
    space, value, residual = prepare_sample(problem, sharpness, options)
    solved = {b: solve_sample(space, lr, b, options, value, residual) for b in {sizes[0], sizes[-1]}}
    low, high = solved[sizes[-1]], solved[sizes[0]]  # the smallest and the largest p
    tangents = [space.parts(r.eigen.vector) for r in solved.values()] if len(sizes) > 2 else []
    floor = 1.0 if low.neutral_dim > 0 else 0.0  # T_GN = I on the neutral directions; T is PSD
    results = []
    for b in sizes:
        if b in solved:
            results.append(solved[b])
            continue
        p = noise_factor(problem.n, b)
        weight = (p - low.p) / (high.p - low.p)
        mu_upper = (1 - weight) * low.mu_upper + weight * high.mu_upper
        mu_lower = max([low.mu] + [lr * ((1 - p) * g + p * d) for g, d in tangents])
        if mu_upper <= 2.0:
            results.append(Theorem1Bound(lr, b, problem.n, p, options.stable_tol, value, lower=floor, upper=1.0,
                                         form=SAMPLE, mu_lower=mu_lower, mu_upper=mu_upper))
        else:
            results.append(solve_sample(space, lr, b, options, value, residual))
    products = Counter(space.products())
    return Theorem1Sweep(lr=lr, n=problem.n, results=tuple(results), sharpness=sharpness,
                         products=MappingProxyType(dict(products)))
