"""Eigensolvers for the largest eigenvalue of a symmetric matrix-free operator.

Both return an immutable :class:`EigenResult` whose ``value`` is the eigenvalue of the operator
they were given (the criteria wrap it in their own result types); neither hides non-convergence
(``converged`` is False and ``residual`` says how far off the pair is).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from typing import Callable

import torch
from torch import Tensor

Matvec = Callable[[Tensor], Tensor]

METHODS = ("lanczos", "power")


@dataclass(frozen=True, eq=False)
class EigenResult:
    """An eigenpair estimate of one operator A and how it was obtained (immutable).

    Attributes:
        value: the eigenvalue estimate λ of A (a Ritz value, i.e. a Rayleigh quotient vᵀAv of a unit v).
        vector: the unit eigenvector estimate v.
        iterations: solver steps taken.
        matvecs: products with A spent, certifications included.
        residual: the relative residual of (λ, v). Lanczos: ‖A v − λ v‖ / scale, scale = the
            largest |Ritz value| seen (≥ |λ|) or atol/tol if larger, measured with one extra product;
            without ``certify`` its Ritz estimate β_k|s_k|/scale instead. Power iteration:
            ‖A v − λ v‖ / max(|λ|, atol/tol).
        converged: whether the solver's stopping rule was met (``tol``, or ``atol`` for an operator
            whose eigenvalues lie at its rounding floor).
        method: "lanczos" or "power".
        tol: the stopping tolerance (its meaning per method is in each solver's docstring).
        seed: seed of the random start vector.
        dtype, device: where the products ran, e.g. "float64", "cpu".
        wall_time: seconds spent in the solver.
        history: the eigenvalue estimate after each step.

    >>> r = lanczos(lambda v: 2 * v, 3, dtype=torch.float64)
    >>> r.value == r.eigenvalue == 2.0
    True
    """

    value: float
    vector: Tensor = field(repr=False)
    iterations: int
    matvecs: int
    residual: float
    converged: bool
    method: str
    tol: float
    seed: int
    dtype: str
    device: str
    wall_time: float
    history: tuple[float, ...] = field(default=(), repr=False)

    @property
    def eigenvalue(self) -> float:
        """Alias of ``value``."""
        return self.value

    def as_dict(self) -> dict:
        """JSON-ready record without the eigenvector."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "vector"}
        d["history"] = list(self.history)
        return d


def _start_vector(dim: int, seed: int, dtype: torch.dtype, device, v0: Tensor | None = None) -> Tensor:
    if v0 is None:  # drawn on the CPU in float64 so the same seed gives the same start on every device and dtype
        v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    elif not isinstance(v0, Tensor) or v0.shape != (dim,):
        raise ValueError(f"v0 must be a flat tensor of length dim = {dim}, got "
                         f"{tuple(v0.shape) if isinstance(v0, Tensor) else type(v0).__name__}")
    else:
        v = v0.detach().to(device="cpu", dtype=torch.float64)
        if not (bool(torch.isfinite(v).all()) and bool(v.any())):
            raise ValueError("v0 must be finite and not zero; pass None for the seeded random start")
    return (v / v.norm()).to(device=device, dtype=dtype)


def _dot(a: Tensor, b: Tensor) -> float:
    """aᵀb accumulated in float64: float32 sums over d = 9e5 entries were off by 1e-5 (‖v‖² by 1e-4)."""
    return float(torch.dot(a.to(torch.float64), b.to(torch.float64)))


def _norm(a: Tensor) -> float:
    """‖a‖ accumulated in float64 (see :func:`_dot`)."""
    return float(torch.linalg.vector_norm(a, dtype=torch.float64))


def _check(tol: float, maxiter: int, atol: float = 0.0) -> None:
    for name, value in (("tol", tol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    if not (tol > 0 and math.isfinite(tol)):  # tol = inf would call any pair converged
        raise ValueError(f"tol must be positive and finite, got {tol}")
    if not (atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol must be zero or positive and finite, got {atol}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, Integral):
        raise TypeError(f"maxiter must be a whole number of iterations, got {maxiter!r} ({type(maxiter).__name__})")
    if maxiter < 1:
        raise ValueError(f"maxiter must be at least 1, got {maxiter}")


def power_iteration(
    matvec: Matvec, dim: int, *, tol: float = 1e-4, maxiter: int = 50, seed: int = 0,
    dtype: torch.dtype = torch.float32, device="cpu", v0: Tensor | None = None, atol: float = 0.0,
) -> EigenResult:
    """The paper's power iteration: v ← Av/‖Av‖, λ = vᵀAv, stop when |λ_k − λ_{k−1}| ≤ max(tol·|λ_k|, atol).

    Finds the eigenvalue of largest *magnitude* (pitfall 4); for a PSD operator that is λ_max.

    Args:
        matvec: v ↦ A v on flat tensors of length ``dim``.
        tol: relative change of λ between two steps that stops the iteration.
        maxiter: most steps (one product each).
        seed: seed of the random start vector (drawn in float64 on the CPU).
        dtype, device: of the vectors handed to ``matvec``.
        v0: start vector instead of the random one (normalised here; ``seed`` is then unused).
        atol: an absolute change of λ that also stops it: the rounding floor of the products, for an
            operator whose eigenvalues may lie at that floor (0: none).

    >>> A = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    >>> r = power_iteration(lambda v: A @ v, 3, tol=1e-10, maxiter=200, dtype=torch.float64)
    >>> round(r.value, 6), r.converged
    (3.0, True)
    """
    _check(tol, maxiter, atol)
    start = time.perf_counter()
    v = _start_vector(dim, seed, dtype, device, v0)
    floor = atol / tol  # the |λ| below which the residual is judged against atol
    history: list[float] = []
    lam, residual, converged, k = 0.0, math.inf, False, 0
    for k in range(1, maxiter + 1):
        w = matvec(v)
        lam = _dot(v, w)
        residual = _norm(w - lam * v) / max(abs(lam), floor, 1e-300)
        history.append(lam)
        if len(history) > 1 and abs(lam - history[-2]) <= tol * max(abs(lam), floor):
            converged = True
            break
        norm = _norm(w)
        if norm == 0:  # A v = 0: v is an eigenvector of eigenvalue 0
            converged = True
            residual = 0.0
            break
        if k < maxiter:  # keep v the vector that value and residual describe
            v = w / norm
    return EigenResult(
        value=lam, vector=v, iterations=k, matvecs=k, residual=residual,
        converged=converged, method="power", tol=tol, seed=seed, dtype=str(dtype).replace("torch.", ""),
        device=str(device), wall_time=time.perf_counter() - start, history=tuple(history),
    )


def lanczos(
    matvec: Matvec, dim: int, *, tol: float = 1e-4, maxiter: int = 50, seed: int = 0,
    dtype: torch.dtype = torch.float32, device="cpu", certify: bool = True, v0: Tensor | None = None,
    atol: float = 0.0,
) -> EigenResult:
    """Lanczos with full reorthogonalisation for the largest *algebraic* eigenvalue.

    Stops when the Ritz residual β_k|s_k| ≤ max(tol·scale, atol) (scale = largest |Ritz value|).
    ``certify`` spends one more product to measure ‖Av − λv‖ explicitly and reports that, with λ
    the Rayleigh quotient vᵀAv of that product; when the measured residual misses tol (rounding,
    mostly in float32) the iteration goes on with a stricter target instead of stopping unconverged.

    Args:
        matvec: v ↦ A v on flat tensors of length ``dim``; A symmetric.
        tol: relative residual ‖Av − λv‖/scale that counts as converged.
        maxiter: most Lanczos steps (capped at ``dim``); the products are the steps plus the
            certifications.
        seed: seed of the random start vector (drawn in float64 on the CPU).
        dtype, device: of the vectors handed to ``matvec``.
        certify: measure the residual explicitly (one product per check) instead of trusting
            the Ritz estimate.
        v0: start vector instead of the random one (normalised here; ``seed`` is then unused). The
            residual certifies an eigenpair, not that it is the top one: a start without a component
            on the top eigenvector finds another eigenvalue (see :mod:`stabcheck.experiments.monitor`).
        atol: an absolute residual that also counts as converged: the rounding floor of the
            products. An operator whose eigenvalues lie at that floor (Σ = 0 computed as a
            difference of equal terms) has no relative accuracy to reach; it converges to ±atol.
            0 (default): none.

    >>> A = torch.diag(torch.tensor([3.0, 1.0, -5.0], dtype=torch.float64))
    >>> r = lanczos(lambda v: A @ v, 3, tol=1e-10, dtype=torch.float64)
    >>> round(r.value, 6), r.converged
    (3.0, True)
    """
    _check(tol, maxiter, atol)
    start = time.perf_counter()
    maxiter = min(maxiter, dim)
    q = _start_vector(dim, seed, dtype, device, v0)
    # The Lanczos vectors as rows of one buffer that grows geometrically: stacking a list of them at
    # every step copied k·d numbers per step (30 s of a 108-step solve at d = 9e5).
    basis = torch.empty((min(maxiter, 16), dim), dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    # The scale residuals are judged against: the largest |Ritz value|, at least atol/tol.
    theta, scale, estimate = 0.0, max(atol / tol, 1e-300), math.inf
    target = tol  # the estimate a step must reach before a certification is spent
    certifications = 0
    residual = math.inf
    for k in range(1, maxiter + 1):
        if k > basis.shape[0]:
            basis = torch.cat([basis, torch.empty_like(basis[: min(basis.shape[0], maxiter - basis.shape[0])])])
        basis[k - 1] = q
        w = matvec(q)
        alpha = _dot(q, w)
        alphas.append(alpha)
        Q = basis[:k]
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - Q.T @ (Q @ w)
        beta = _norm(w)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if k > 1:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(T)
        theta = float(evals[-1])
        ritz = evecs[:, -1]
        scale = max(scale, float(evals.abs().max()))
        estimate = beta * abs(float(ritz[-1])) / scale
        history.append(theta)
        invariant = beta <= 1e-12 * scale  # the Krylov space is invariant: nothing more to find
        if estimate <= target or invariant or k == maxiter:
            vector = Q.T @ ritz.to(dtype=dtype, device=Q.device)
            vector = vector / _norm(vector)
            if not certify:
                residual = estimate
                break
            product = matvec(vector)
            # vᵀAv, the Ritz value of exact arithmetic: in float32 the recurrence's θ drifts by up to
            # the residual (7e-5 of a on the paper-scale FNN, d = 9e5, where vᵀAv is 3e-6 off).
            theta = _dot(vector, product)
            residual = _norm(product - theta * vector) / scale
            certifications += 1
            if residual <= tol or invariant or k == maxiter:
                break
            target = min(target, estimate) * 0.5 * tol / residual
        betas.append(beta)
        q = w / beta
    return EigenResult(
        value=theta, vector=vector, iterations=k, matvecs=k + certifications, residual=residual,
        converged=residual <= tol, method="lanczos", tol=tol, seed=seed,
        dtype=str(dtype).replace("torch.", ""), device=str(device), wall_time=time.perf_counter() - start,
        history=tuple(history),
    )


def top_eigenpair(matvec: Matvec, dim: int, *, method: str = "lanczos", **kwargs) -> EigenResult:
    """The top eigenpair by ``method`` ("lanczos": largest algebraic; "power": largest magnitude).

    ``kwargs`` go to the solver (:func:`lanczos` or :func:`power_iteration`).
    """
    if method == "lanczos":
        return lanczos(matvec, dim, **kwargs)
    if method == "power":
        return power_iteration(matvec, dim, **kwargs)
    raise ValueError(f"unknown eigensolver {method!r}; choose one of {METHODS}")
