"""Theorem 1 in sample space: the form that decides at an over-parameterised interpolating minimum.

At a minimum where every residual out_i − y_i is zero, the per-sample Hessian of the squared error
f_i = c‖out_i − y_i‖² is its Gauss–Newton part H_i = c′J_iᵀJ_i (c′ = 2c, J_i the K × d output
Jacobian). With J stacked (nK × d), Γ = JJᵀ and D = blockdiag(Γ_11, …, Γ_nn):

    T − I = −2ηH + η²(1 − p)H² + η²p·(1/n)Σ_i H_i² = Jᵀ M J,
    M = (ηc′/n)·(−2I + η·K_p),   K_p = (1 − p)(c′/n)Γ + p·c′D.

So T = I on the null space of J (the neutral directions, at least d − nK of them), and the nonzero
eigenvalues of T − I are those of MΓ. They are all ≤ 0, i.e. λ_max(T) ≤ 1 and x* is linearly stable
in the sense of Theorem 1, iff uᵀK_pu ≤ (2/η)‖u‖² on the range of Γ, which

    μ = η·λ_max(K_p) ≤ 2

certifies (over all of R^{nK}; equal to the condition when Γ has full rank). K_p is PSD and nK × nK:
its top is found like a itself, without the cluster of d − nK eigenvalues of T at exactly 1. At
B = n, μ = η·λ_max(G) with G = (c′/n)JᵀJ. μ(p) is non-decreasing (nD ⪰ Γ) and convex in p.

What is certified, exactly: the statement about T_GN, Theorem 1's operator built from the
Gauss–Newton parts G_i, which is T at the interpolation limit. At an inexact minimum (loss > 0),
H_i = G_i + R_i, and T differs from T_GN by −2ηR + η²(GR + RG + R²) + η²p(Σ − Σ_GN), first order
2η‖R‖ with R = H − G. :class:`ResidualTerm` measures R's extreme eigenvalues by a few products of
H − G and is reported beside the verdict; the per-sample R_i inside Σ are not measured.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Mapping

import torch
from torch import Tensor

from .bounds import noise_factor
from .eigen import EigenResult, top_eigenpair
from .gauss_newton import GaussNewton
from .operators import HessianOperator
from .problem import Problem
from .results import CERTIFIED_STABLE, NOT_CERTIFIED, SAMPLE, SOLVE, UNKNOWN, _Verdict


@dataclass(frozen=True)
class ResidualTerm:
    """R = H − G at the point, zero at an interpolating minimum: the extreme Ritz values of ``steps``
    Lanczos steps on R (one product of H − G each).

    Ritz values lie inside R's spectrum, so ``largest`` ≤ λ_max(R), ``smallest`` ≥ λ_min(R) and
    ``size`` = max(|largest|, |smallest|) ≤ ‖R‖: an estimate from below, exact once ``steps`` reaches d.
    """

    largest: float
    smallest: float
    steps: int

    @property
    def size(self) -> float:
        """max |Ritz value|, a lower estimate of ‖R‖."""
        return max(abs(self.largest), abs(self.smallest))

    def shift(self, lr: float) -> float:
        """2η·size: the first-order change of T's eigenvalues that R can cause."""
        return 2.0 * lr * self.size

    def as_dict(self) -> dict:
        return {"largest": self.largest, "smallest": self.smallest, "size": self.size, "steps": self.steps}


def ritz_extremes(matvec, dim: int, steps: int, seed: int, dtype: torch.dtype, device) -> tuple[float, float]:
    """(smallest, largest) Ritz value of ``steps`` Lanczos steps with full reorthogonalisation from a seeded
    random start (drawn in float64 on the CPU, as the eigensolvers draw theirs)."""
    q = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q = (q / q.norm()).to(device=device, dtype=dtype)
    basis, alphas, betas = [], [], []
    for _ in range(min(steps, dim)):
        basis.append(q)
        w = matvec(q)
        alphas.append(float(torch.dot(q.double(), w.double())))
        stack = torch.stack(basis)
        for _ in range(2):
            w = w - stack.T @ (stack @ w)
        beta = float(torch.linalg.vector_norm(w, dtype=torch.float64))
        if beta <= 1e-12 * max(abs(a) for a in alphas) or len(basis) == min(steps, dim):
            break
        betas.append(beta)
        q = w / beta
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(t)
    return float(ritz[0]), float(ritz[-1])


@dataclass(frozen=True, eq=False)
class SampleTheorem1Result(_Verdict):
    """Theorem 1 in sample space (module docstring): μ = η·λ_max(K_p) and what it certifies.

    Verdicts, about T_GN (T at the interpolation limit):

    * "certified stable": the μ solve converged and its upper value μ(1 + residual) ≤ 2, so
      λ_max(T_GN) = 1 (the neutral directions) to the solver's tolerance;
    * "not certified": μ > 2 and the Lanczos solve on T_GN − I = JᵀMJ found a Rayleigh quotient
      ``excess`` > 0, so λ_max(T_GN) ≥ 1 + excess > 1 (Theorem 1 is sufficient only: never "unstable");
    * "unknown": otherwise (unconverged, or μ within its residual of 2, or μ > 2 while the excess
      solve found nothing above 0: a rank-deficient Γ).

    ``stable_tol`` does not enter these rules (they use the solvers' residuals); it is kept for the
    protocol. ``residual`` (:class:`ResidualTerm`) is the size of what the verdict leaves out at an
    inexact minimum; compare ``residual.shift(lr)`` with the margins.

    Attributes:
        lr, batch_size, n, p, stable_tol: η, B, the number of samples, p and the full form's slack.
        dim, outputs: d and K; ``neutral_dim`` = d − nK is a lower bound on the excluded directions.
        sharpness: a given by the caller (for ``sharpness_exceeded``), or None.
        eigen: the solve on K_p (nK × nK); μ = η·eigen.value.
        excess_eigen: the solve on T_GN − I in parameter space, run only when μ > 2; else None.
        residual: the measured residual term, or None when not asked for (``residual_steps`` 0).
        products: the products made on its :class:`SampleSpace`, by kind ("jvp", "vjp": each over all n
            samples; "hessian": H v of the residual term).
    """

    lr: float
    batch_size: int
    n: int
    p: float
    stable_tol: float
    dim: int
    outputs: int
    sharpness: float | None
    eigen: EigenResult = field(repr=False)
    excess_eigen: EigenResult | None = field(repr=False)
    residual: ResidualTerm | None
    products: Mapping[str, int]
    source: ClassVar[str] = SOLVE
    form: ClassVar[str] = SAMPLE

    @property
    def mu(self) -> float:
        """μ = η·λ_max(K_p), a lower bound (a Rayleigh quotient) to rounding."""
        return self.lr * self.eigen.value

    @property
    def mu_upper(self) -> float:
        """μ(1 + solver residual) if the μ solve converged, else ∞."""
        return self.mu * (1.0 + self.eigen.residual) if self.eigen.converged else math.inf

    @property
    def margin(self) -> float:
        """2 − μ: how far inside Theorem 1's condition (negative: outside)."""
        return 2.0 - self.mu

    @property
    def neutral_dim(self) -> int:
        """d − nK: at least this many directions have T_GN = I exactly (excluded from the solve)."""
        return max(self.dim - self.n * self.outputs, 0)

    @property
    def excess(self) -> float | None:
        """The Rayleigh quotient of T_GN − I found when μ > 2 (λ_max(T_GN) − 1 when converged)."""
        return None if self.excess_eigen is None else self.excess_eigen.value

    @property
    def value(self) -> float:
        """λ_max(T_GN) on T's scale: 1 + excess where positive, else 1 (the neutral directions; an upper
        bound only when d ≤ nK leaves none for sure)."""
        return 1.0 + max(self.excess or 0.0, 0.0)

    @property
    def lower(self) -> float:
        """``value``, or 0 (T is PSD) when it is 1 and no neutral direction is guaranteed."""
        return self.value if self.value > 1.0 or self.neutral_dim > 0 else 0.0

    @property
    def upper(self) -> float:
        """1 when μ ≤ 2 is certified, 1 + excess when its solve converged, else ∞."""
        if self.mu_upper <= 2.0:
            return 1.0
        if self.excess_eigen is not None and self.excess_eigen.converged:
            return self.value
        return math.inf

    @property
    def converged(self) -> bool:
        return self.eigen.converged and (self.excess_eigen is None or self.excess_eigen.converged)

    @property
    def verdict(self) -> str:
        if self.excess is not None and self.excess > 0:
            return NOT_CERTIFIED
        return CERTIFIED_STABLE if self.mu_upper <= 2.0 else UNKNOWN

    def as_dict(self) -> dict:
        """JSON-ready: :data:`~stabcheck.curvature.results.THEOREM1_KEYS`, then μ, its margin, the
        neutral dimension, the residual term and the solves."""
        return {**self._protocol_dict(), "mu": self.mu, "mu_upper": self.mu_upper, "margin": self.margin,
                "neutral_dim": self.neutral_dim, "dim": self.dim, "outputs": self.outputs, "excess": self.excess,
                "residual": None if self.residual is None else self.residual.as_dict(),
                "products": dict(self.products), "eigen": self.eigen.as_dict(),
                "excess_eigen": None if self.excess_eigen is None else self.excess_eigen.as_dict()}


class SampleSpace:
    """The sample-space operators of one problem: Γ products, the Gram blocks (computed once) and K_p.

    ``settings`` maps the solver's settings (method, tol, maxiter, seed) to every solve.
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        self.gn = GaussNewton(problem)
        self.blocks = self.gn.blocks()
        self.shape = (problem.n, self.gn.outputs)
        self._hessian: HessianOperator | None = None

    @property
    def size(self) -> int:
        return self.problem.n * self.gn.outputs

    def block_apply(self, u: Tensor) -> Tensor:
        """D u, row by row."""
        return torch.einsum("ikl,il->ik", self.blocks, u)

    def kernel(self, p: float, u: Tensor) -> Tensor:
        """K_p u = (1 − p)(c′/n)Γu + p·c′·Du on a flat nK vector."""
        c, n = self.gn.scale, self.problem.n
        u = u.reshape(self.shape)
        out = p * c * self.block_apply(u)
        if p < 1.0:
            out = out + (1.0 - p) * c / n * self.gn.gram(u)
        return out.reshape(-1)

    def parts(self, u: Tensor) -> tuple[float, float]:
        """(uᵀ(c′/n)Γu, uᵀc′Du) at unit u: uᵀK_pu = (1 − p)·first + p·second for every p (one Γ product)."""
        u = u.reshape(self.shape).to(self.problem.dtype)
        u = u / float(torch.linalg.vector_norm(u, dtype=torch.float64))
        c, n = self.gn.scale, self.problem.n
        gram = float((u.double() * self.gn.gram(u).double()).sum()) * c / n
        block = float((u.double() * self.block_apply(u).double()).sum()) * c
        return gram, block

    def solve_mu(self, p: float, settings, v0: Tensor | None = None) -> EigenResult:
        """The top eigenpair of K_p (PSD, nK × nK); ``v0``: a start vector, e.g. a previous
        solve's top vector (a start without the top direction converges below λ_max, certified)."""
        start = {} if v0 is None else {"v0": v0}
        return top_eigenpair(lambda u: self.kernel(p, u), self.size, method=settings.method, tol=settings.tol,
                             maxiter=settings.maxiter, seed=settings.seed, dtype=self.problem.dtype,
                             device=self.problem.device, **start)

    def solve_excess(self, lr: float, p: float, settings) -> EigenResult:
        """The top eigenpair of T_GN − I = JᵀMJ in parameter space (Lanczos, largest algebraic)."""
        problem, gn = self.problem, self.gn
        factor = lr * gn.scale / problem.n

        def matvec(v: Tensor) -> Tensor:
            u = gn.jvp(problem.unflatten(v))
            mu = factor * (-2.0 * u.reshape(-1) + lr * self.kernel(p, u.reshape(-1)))
            return problem.flatten(gn.vjp(mu.reshape(self.shape)))

        return top_eigenpair(matvec, problem.dim, method="lanczos", tol=settings.tol, maxiter=settings.maxiter,
                             seed=settings.seed, dtype=problem.dtype, device=problem.device)

    def residual_term(self, steps: int, settings) -> ResidualTerm:
        """The extreme Ritz values of ``steps`` Lanczos steps on R = H − G (H v by ``settings.hvp``)."""
        problem = self.problem

        def matvec(v: Tensor) -> Tensor:
            return self.hessian(settings.hvp).matvec(v) - problem.flatten(self.gn.gauss_newton(problem.unflatten(v)))

        low, high = ritz_extremes(matvec, problem.dim, steps, settings.seed, problem.dtype, problem.device)
        return ResidualTerm(largest=high, smallest=low, steps=min(steps, problem.dim))

    def hessian(self, path: str) -> HessianOperator:
        """The H operator of the residual term (one per space, so its products add up)."""
        if self._hessian is None:
            self._hessian = HessianOperator(self.problem, path)
        return self._hessian

    def products(self) -> dict[str, int]:
        """Products so far: "jvp" and "vjp" (J and Jᵀ over all samples) and "hessian" (H v)."""
        return {**self.gn.counts, "hessian": 0 if self._hessian is None else self._hessian.matvecs}


def solve_sample(space: SampleSpace, lr: float, batch_size: int, settings, sharpness: float | None,
                 residual: ResidualTerm | None, mu_start: Tensor | None = None) -> SampleTheorem1Result:
    """The sample-space Theorem 1 at one (η, B), on a prepared :class:`SampleSpace`.

    ``products`` of the result counts the products of ``space`` so far (the blocks, this solve and any
    earlier solve on the same space). ``mu_start``: the μ solve's start vector (see ``solve_mu``).
    """
    problem = space.problem
    p = noise_factor(problem.n, batch_size)
    eigen = space.solve_mu(p, settings, v0=mu_start)
    excess = space.solve_excess(lr, p, settings) if lr * eigen.value > 2.0 else None
    return SampleTheorem1Result(
        lr=lr, batch_size=batch_size, n=problem.n, p=p, stable_tol=settings.stable_tol, dim=problem.dim,
        outputs=space.gn.outputs, sharpness=sharpness, eigen=eigen, excess_eigen=excess, residual=residual,
        products=MappingProxyType(dict(Counter(space.products()))))
