"""The exact mean-square stability criterion of SGD at an interpolating minimum, for small problems.

Linearised SGD, e_{t+1} = A_ξ e_t with A_ξ = I − ηH_ξ, moves the second moment S_t = E[e_t e_tᵀ] by
the linear map S ↦ E_ξ[A_ξ S A_ξ], i.e. vec(S) ↦ E[A_ξ ⊗ A_ξ] vec(S). Counting how often each pair of
samples shares a batch gives, for B-subsets drawn without replacement,

    E[A_ξ ⊗ A_ξ] = (I − ηH) ⊗ (I − ηH) + η² p (M − H ⊗ H),    M = (1/n) Σ_i H_i ⊗ H_i,

with p = (n − B)/(B(n − 1)) (1/B for B-tuples drawn with replacement): the Kronecker form of the
identity E[A_ξ²] = (I − ηH)² + η² p Σ behind Theorem 1, and the exact criterion of Mulayoff & Michaeli
(NeurIPS 2023).
The map is completely positive, so its spectral radius ρ is its largest eigenvalue and has a PSD
eigenvector S (Krein–Rutman); x* is mean-square stable iff ρ ≤ 1. Because
tr E[A S A] = tr(E[A²] S) ≤ λ_max(E[A²]) tr S, ρ never exceeds Theorem 1's value.

Writing E[A ⊗ A] = I − ηK + η²Q with K = H ⊗ I + I ⊗ H and Q = H ⊗ H + p(M − H ⊗ H) (both PSD),
ρ ≤ 1 iff ηQ ⪯ K, so the threshold learning rate is η* = 1/λ_max(K^{+½} Q K^{+½}).

Everything here is dense float64 and costs O(d⁴) memory: for d up to a few dozen parameters.
The enumeration helpers average over every batch and are the ground truth of the closed forms.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import hessian, vmap

from .bounds import check_batch, check_lr, noise_factor
from .problem import Problem

#: Largest parameter count the dense d² × d² second-moment matrix is built for (d⁴ doubles = 128 MiB).
MAX_DIM = 64

#: Eigenvalues of K below this fraction of the largest count as its null space.
NULL_RTOL = 1e-10


def sample_hessians(problem: Problem) -> Tensor:
    """(n, d, d) stack of the per-sample Hessians H_i = ∇²f_i at ``problem.params``, as float64.

    Computed in the problem's dtype: build the Problem with ``dtype=torch.float64`` for ground truth.

    >>> import torch
    >>> prob = Problem(torch.nn.Linear(2, 1), torch.randn(3, 2), torch.zeros(3, 1), loss="half_sq")
    >>> sample_hessians(prob).shape
    torch.Size([3, 3, 3])
    """
    if problem.dim > MAX_DIM:
        raise ValueError(f"the problem has {problem.dim} parameters; dense per-sample Hessians are meant for "
                         f"at most {MAX_DIM} (use stabcheck.theorem1 for large models)")
    flat = problem.flatten(problem.params)

    def one(x: Tensor, y: Tensor) -> Tensor:
        return hessian(lambda f: problem.single_loss(problem.unflatten(f), x, y))(flat)

    return vmap(one, chunk_size=problem.chunk_size)(problem.inputs, problem.targets).to(torch.float64)


def dense_sigma(hessians: Tensor) -> Tensor:
    """Σ = (1/n) Σ_i (H_i − H)² from the stacked (n, d, d) per-sample Hessians H_i, H their mean.

    The dense ground truth of the Σ operators (any d: the stack is not checked here).

    >>> dense_sigma(torch.tensor([[[1.0]], [[3.0]]]))
    tensor([[1.]])
    """
    centred = hessians - hessians.mean(0)
    return (centred @ centred).mean(0)


def check_hessians(hessians: Tensor, psd: bool = False) -> Tensor:
    """Validate an (n, d, d) stack of symmetric matrices and return it in float64."""
    if not isinstance(hessians, Tensor) or hessians.ndim != 3 or hessians.shape[1] != hessians.shape[2]:
        shape = tuple(hessians.shape) if isinstance(hessians, Tensor) else type(hessians).__name__
        raise ValueError(f"per-sample Hessians must be a tensor of shape (n, d, d), got {shape}")
    n, d, _ = hessians.shape
    if n == 0 or d == 0:
        raise ValueError(f"per-sample Hessians are empty: shape {tuple(hessians.shape)}")
    if d > MAX_DIM:
        raise ValueError(f"d = {d} parameters: the dense d² × d² second-moment map is meant for d ≤ {MAX_DIM}")
    h = hessians.detach().to(torch.float64)
    if not bool(torch.isfinite(h).all()):
        raise ValueError("per-sample Hessians contain inf or nan")
    scale = max(float(h.abs().max()), 1e-300)
    asym = float((h - h.transpose(1, 2)).abs().max())
    if asym > 1e-10 * scale:
        raise ValueError(f"per-sample Hessians must be symmetric (max |H_i − H_iᵀ| = {asym:.3g}); pass ½(H_i + H_iᵀ)")
    h = 0.5 * (h + h.transpose(1, 2))
    if psd:
        low = float(torch.linalg.eigvalsh(h).min())
        if low < -1e-10 * scale:
            raise ValueError(f"a per-sample Hessian has eigenvalue {low:.3g} < 0: the threshold learning rate "
                             "is defined at a global minimum, where every H_i is positive semi-definite")
    return h


def batches(n: int, batch_size: int, replace: bool = False) -> list[tuple[int, ...]]:
    """Every batch, each equally likely: the B-subsets of range(n), or all nᴮ B-tuples with ``replace``.

    >>> batches(3, 2)
    [(0, 1), (0, 2), (1, 2)]
    """
    if replace:
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch size must be positive, got n={n}, B={batch_size}")
        return list(itertools.product(range(n), repeat=batch_size))
    check_batch(n, batch_size)
    return list(itertools.combinations(range(n), batch_size))


def batch_hessians(hessians: Tensor, batch_size: int, replace: bool = False) -> Tensor:
    """(m, d, d): H_ξ = (1/B) Σ_{j∈ξ} H_j for each of the m equally likely batches of :func:`batches`."""
    h = check_hessians(hessians)
    index = torch.tensor(batches(h.shape[0], batch_size, replace), dtype=torch.long)
    return h[index].mean(dim=1)


def expected_square_enumerated(hessians: Tensor, lr: float, batch_size: int, replace: bool = False) -> Tensor:
    """E_ξ[(I − ηH_ξ)²] averaged over every batch (the left side of Theorem 1's identity)."""
    a = _iteration_matrices(hessians, lr, batch_size, replace)
    return (a @ a).mean(0)


def second_moment_enumerated(hessians: Tensor, lr: float, batch_size: int, replace: bool = False) -> Tensor:
    """E_ξ[A_ξ ⊗ A_ξ] (d² × d²), A_ξ = I − ηH_ξ, averaged over every batch."""
    a = _iteration_matrices(hessians, lr, batch_size, replace)
    m, d, _ = a.shape
    return torch.einsum("mij,mkl->ikjl", a, a).reshape(d * d, d * d) / m


def _iteration_matrices(hessians: Tensor, lr: float, batch_size: int, replace: bool) -> Tensor:
    lr = check_lr(lr)
    hb = batch_hessians(hessians, batch_size, replace)
    return torch.eye(hb.shape[1], dtype=hb.dtype) - lr * hb


def batch_noise(n: int, batch_size: int, replace: bool = False) -> float:
    """p in E[H_ξ ⊗ H_ξ] = H ⊗ H + p(M − H ⊗ H): (n − B)/(B(n − 1)), or 1/B with replacement."""
    if replace:
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        return 1.0 / batch_size
    return noise_factor(n, batch_size)


def _kron_terms(hessians: Tensor, batch_size: int, replace: bool) -> tuple[Tensor, Tensor]:
    """(K = H ⊗ I + I ⊗ H, Q = E[H_ξ ⊗ H_ξ]): E[A_ξ ⊗ A_ξ] = I − ηK + η²Q."""
    h = check_hessians(hessians)
    n, d, _ = h.shape
    p = batch_noise(n, batch_size, replace)
    mean = h.mean(0)
    eye = torch.eye(d, dtype=h.dtype)
    hh = torch.kron(mean, mean)
    m = torch.einsum("nij,nkl->ikjl", h, h).reshape(d * d, d * d) / n
    return torch.kron(mean, eye) + torch.kron(eye, mean), hh + p * (m - hh)


def second_moment_matrix(hessians: Tensor, lr: float, batch_size: int, replace: bool = False) -> Tensor:
    """E[A_ξ ⊗ A_ξ] = (I − ηH)⊗(I − ηH) + η² p (M − H⊗H) in closed form, (d² × d²).

    vec(S_{t+1}) = E[A ⊗ A] vec(S_t) for the row-major vec of the second moment S_t = E[e_t e_tᵀ].

    >>> h = torch.tensor([[[2.0]], [[0.0]]], dtype=torch.float64)   # d = 1: (1 − ηa)² + η² p s²
    >>> float(second_moment_matrix(h, lr=0.5, batch_size=1))        # a = 1, s = 1, p = 1
    0.5
    """
    lr = check_lr(lr)
    k, q = _kron_terms(hessians, batch_size, replace)
    return torch.eye(k.shape[0], dtype=k.dtype) - lr * k + lr * lr * q


@dataclass(frozen=True, eq=False)
class MeanSquareResult:
    """Spectral radius ρ of S ↦ E[(I − ηH_ξ) S (I − ηH_ξ)] and its verdict (ρ ≤ 1 + stable_tol: stable).

    ``moment`` is the PSD eigenvector as a d × d matrix of unit Frobenius norm: the second moment
    that decays (or grows) slowest, by the factor ρ per step.
    """

    value: float
    stable: bool
    lr: float
    batch_size: int
    n: int
    p: float
    replace: bool
    stable_tol: float
    moment: Tensor

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("value", "stable", "lr", "batch_size", "n", "p", "replace", "stable_tol")}


def mean_square(hessians: Tensor, lr: float, batch_size: int, replace: bool = False,
                stable_tol: float = 1e-9) -> MeanSquareResult:
    """The exact mean-square criterion: ρ(E[A_ξ ⊗ A_ξ]) ≤ 1, A_ξ = I − ηH_ξ.

    >>> h = torch.tensor([[[2.0]], [[0.0]]], dtype=torch.float64)
    >>> r = mean_square(h, lr=0.5, batch_size=1)
    >>> round(r.value, 12), r.stable
    (0.5, True)
    """
    h = check_hessians(hessians)
    n, d, _ = h.shape
    t = second_moment_matrix(h, lr, batch_size, replace)
    evals, evecs = torch.linalg.eigh(t)
    # ρ is the largest eigenvalue (Krein–Rutman); max |λ| guards against rounding at ρ ≈ 0.
    top = int(torch.argmax(evals.abs()))
    moment = evecs[:, top].reshape(d, d)
    if float(torch.trace(moment)) < 0:
        moment = -moment
    value = float(evals.abs().max())
    return MeanSquareResult(value=value, stable=value <= 1.0 + stable_tol, lr=float(lr), batch_size=batch_size,
                            n=n, p=batch_noise(n, batch_size, replace), replace=replace, stable_tol=stable_tol,
                            moment=moment)


def mean_square_threshold(hessians: Tensor, batch_size: int, replace: bool = False) -> float:
    """Largest η with ρ(E[A_ξ ⊗ A_ξ]) ≤ 1: η* = 1/λ_max(K^{+½} Q K^{+½}) (every H_i PSD).

    ``inf`` when every H_i is 0. For GD (B = n) it is 2/a.

    >>> h = torch.tensor([[[2.0]], [[0.0]]], dtype=torch.float64)   # 2a/(a² + p s²) = 2/2
    >>> round(mean_square_threshold(h, batch_size=1), 12)
    1.0
    """
    h = check_hessians(hessians, psd=True)
    k, q = _kron_terms(h, batch_size, replace)
    return _generalised_threshold(k, q)


def theorem1_threshold(hessians: Tensor, batch_size: int) -> float:
    """Largest η with λ_max{(I − ηH)² + η² p Σ} ≤ 1, i.e. 2/λ_max(H^{+½}(H² + pΣ)H^{+½}) (every H_i PSD).

    Theorem 1's sufficient condition; never larger than :func:`mean_square_threshold`.

    >>> h = torch.tensor([[[2.0]], [[0.0]]], dtype=torch.float64)
    >>> round(theorem1_threshold(h, batch_size=1), 12)
    1.0
    """
    h = check_hessians(hessians, psd=True)
    n = h.shape[0]
    mean = h.mean(0)
    return 2.0 * _generalised_threshold(mean, mean @ mean + noise_factor(n, batch_size) * dense_sigma(h))


def _generalised_threshold(k: Tensor, q: Tensor) -> float:
    """sup{η ≥ 0 : ηQ ⪯ K} for PSD K and Q with null(K) ⊂ null(Q)."""
    evals, evecs = torch.linalg.eigh(k)
    scale = float(evals.abs().max())
    if scale == 0.0:  # every H_i is 0
        return math.inf
    # Q vanishes on the null space of K: the H_i are PSD, so null(H) ⊂ null(H_i).
    keep = evals > NULL_RTOL * scale
    w = evecs[:, keep] / evals[keep].sqrt()
    top = float(torch.linalg.eigvalsh(w.T @ q @ w).max())
    return math.inf if top <= 0.0 else 1.0 / top


def propagate_second_moment(hessians: Tensor, lr: float, batch_size: int, moment: Tensor, steps: int,
                            replace: bool = False) -> Tensor:
    """E‖e_t‖² = tr S_t for t = 0..steps, iterating S_{t+1} = E[A_ξ S_t A_ξ] exactly from S_0 = ``moment``."""
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    t = second_moment_matrix(hessians, lr, batch_size, replace)
    d = hessians.shape[1]
    s = moment.detach().to(torch.float64)
    if s.shape != (d, d):
        raise ValueError(f"the initial second moment must be a {d} × {d} matrix, got shape {tuple(s.shape)}")
    vec = s.reshape(-1)
    traces = [float(torch.trace(s))]
    for _ in range(steps):
        vec = t @ vec
        traces.append(float(torch.trace(vec.reshape(d, d))))
    return torch.tensor(traces, dtype=torch.float64)
