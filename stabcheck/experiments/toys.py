"""The paper's toy problems as torch models, and vectorised GD/SGD simulators for them.

Each toy is a finite-sum problem f(x) = (1/n) Σ_i f_i(x) with a torch model (so :class:`Problem`
and every stabcheck measurement apply to it) and closed-form per-sample gradients (so thousands of
SGD runs take milliseconds):

* :class:`QuadraticToy` — f_i(x) = ½‖L_iᵀx‖², H_i = L_i L_iᵀ: random PSD interpolation problems and
  rank-one f_i = ½(a_iᵀx)² (C1, C2, C3, C12).
* :class:`OneDimensionalExample` — f_i(x) = min{x², c_i(x − 1)²}, c = (0.1, 1.9) (C4).
* :class:`AppendixBToy` — f(u) = a0 + √a1·u − √a2·u² fitted to {(0, 0), (1, 0)} (C11, Figure 10).

:func:`run_sgd` runs many independent SGD runs at once: x ← x − η (1/B) Σ_{j∈ξ} ∇f_j(x) with a fresh uniformly
random B-subset ξ per step and run (without replacement, PAPER.md §1); B = n is GD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..curvature.bounds import check_batch, check_lr
from ..curvature.problem import Problem

DTYPE = torch.float64


class Toy:
    """A toy finite-sum problem: a torch model of it, and its per-sample gradients in closed form."""

    n: int
    dim: int
    loss: str

    def model(self, point: Tensor) -> nn.Module:
        """The torch model with its parameters set to ``point`` (flat, length ``dim``)."""
        raise NotImplementedError

    def data(self) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of the n samples, as the torch model and the loss take them."""
        raise NotImplementedError

    def sample_grads(self, x: Tensor, index: Tensor) -> Tensor:
        """(R, B, d): ∇f_j(x_r) for j = index[r, b]; x is (R, d), index (R, B)."""
        raise NotImplementedError

    def loss_values(self, x: Tensor) -> Tensor:
        """f(x) = (1/n) Σ_i f_i(x) for x of shape (..., d)."""
        raise NotImplementedError

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map iterates back to the parameter domain; returns (x, number of clipped coordinates per run)."""
        return x, torch.zeros(x.shape[0], dtype=torch.long)

    def problem(self, point, dtype: torch.dtype = DTYPE) -> Problem:
        """The stabcheck :class:`Problem` at ``point``."""
        inputs, targets = self.data()
        return Problem(self.model(self.check_point(point)), inputs, targets, loss=self.loss, dtype=dtype)

    def check_point(self, point) -> Tensor:
        point = torch.as_tensor(point, dtype=DTYPE)
        if point.shape != (self.dim,):
            raise ValueError(f"a point of {type(self).__name__} has {self.dim} coordinates, "
                             f"got shape {tuple(point.shape)}")
        return point


# ---- quadratic interpolation problems ------------------------------------------------------------
class QuadraticModel(nn.Module):
    """x ↦ L_iᵀx for each input factor L_i (d × r); with ½‖·‖² loss, f_i(x) = ½ xᵀ L_i L_iᵀ x."""

    def __init__(self, point: Tensor):
        super().__init__()
        self.x = nn.Parameter(point.clone())

    def forward(self, factors: Tensor) -> Tensor:
        return torch.einsum("mdr,d->mr", factors, self.x)


class QuadraticToy(Toy):
    """f_i(x) = ½‖L_iᵀx‖² = ½ xᵀH_i x with H_i = L_i L_iᵀ: every f_i vanishes at x* = 0.

    The Hessians do not depend on x, so linearised and actual SGD coincide.

    >>> toy = QuadraticToy.rank_one(n=3, d=5, seed=0)        # f_i = ½(a_iᵀx)², n < d
    >>> toy.hessians.shape, toy.problem(torch.zeros(5)).dim
    (torch.Size([3, 5, 5]), 5)
    """

    loss = "half_sq"

    def __init__(self, factors: Tensor):
        if not isinstance(factors, Tensor) or factors.ndim != 3 or 0 in factors.shape:
            shape = tuple(factors.shape) if isinstance(factors, Tensor) else type(factors).__name__
            raise ValueError(f"factors must be a tensor of shape (n, d, r) with H_i = L_i L_iᵀ, got {shape}")
        self.factors = factors.to(DTYPE)
        self.n, self.dim, self.rank = factors.shape

    @classmethod
    def random_psd(cls, n: int, d: int, rank: int, seed: int) -> "QuadraticToy":
        """H_i = L_i L_iᵀ with L_i ∈ R^{d×rank} of i.i.d. N(0, 1/d) entries."""
        gen = torch.Generator().manual_seed(seed)
        return cls(torch.randn(n, d, rank, generator=gen, dtype=DTYPE) / math.sqrt(d))

    @classmethod
    def rank_one(cls, n: int, d: int, seed: int) -> "QuadraticToy":
        """f_i = ½(a_iᵀx)², a_i ~ N(0, I/d): for n < d the global minima form a (d − n)-dim subspace."""
        return cls.random_psd(n, d, 1, seed)

    @classmethod
    def from_hessians(cls, hessians: Tensor) -> "QuadraticToy":
        """The toy whose per-sample Hessians are the given PSD matrices (factor L_i = V_i Λ_i^½)."""
        h = torch.as_tensor(hessians, dtype=DTYPE)
        if h.ndim != 3 or h.shape[1] != h.shape[2]:
            raise ValueError(f"hessians must have shape (n, d, d), got {tuple(h.shape)}")
        evals, evecs = torch.linalg.eigh(0.5 * (h + h.transpose(1, 2)))
        if float(evals.min()) < -1e-12 * max(float(evals.abs().max()), 1e-300):
            raise ValueError(f"hessians must be positive semi-definite; smallest eigenvalue {float(evals.min()):.3g}")
        return cls(evecs * evals.clamp(min=0).sqrt().unsqueeze(1))

    @classmethod
    def from_curvatures(cls, curvatures) -> "QuadraticToy":
        """1-D toy f_i(x) = ½h_i x² with the given curvatures h_i ≥ 0."""
        h = torch.as_tensor(curvatures, dtype=DTYPE).reshape(-1)
        if bool((h < 0).any()):
            raise ValueError(f"curvatures must be non-negative, got {h.tolist()}")
        return cls(h.sqrt().reshape(-1, 1, 1))

    @property
    def hessians(self) -> Tensor:
        return self.factors @ self.factors.transpose(1, 2)

    def model(self, point: Tensor) -> nn.Module:
        return QuadraticModel(self.check_point(point))

    def data(self) -> tuple[Tensor, Tensor]:
        return self.factors, torch.zeros(self.n, self.rank, dtype=DTYPE)

    def loss_values(self, x: Tensor) -> Tensor:
        return 0.5 * torch.einsum("ndr,...d->...nr", self.factors, x).pow(2).sum(-1).mean(-1)

    def sample_grads(self, x: Tensor, index: Tensor) -> Tensor:
        factors = self.factors[index]                                   # (R, B, d, r)
        return torch.einsum("rbdk,rbk->rbd", factors, torch.einsum("rbdk,rd->rbk", factors, x))


# ---- the 1-D example of C4 -------------------------------------------------------------------------
class TwoValleyModel(nn.Module):
    """x ↦ x where x² ≤ c(x − 1)², else √c (x − 1): with the loss out², f = min{x², c(x − 1)²}."""

    def __init__(self, point: Tensor):
        super().__init__()
        self.x = nn.Parameter(point.clone())

    def forward(self, c: Tensor) -> Tensor:
        x = self.x
        return torch.where(x * x <= c * (x - 1) ** 2, x.expand_as(c), c.sqrt() * (x - 1))


class OneDimensionalExample(Toy):
    """f_i(x) = min{x², c_i(x − 1)²}, c = (0.1, 1.9), f = (f_1 + f_2)/2 (PAPER.md C4).

    Global minima x = 0 (H_1 = H_2 = 2: a = 2, s = 0) and x = 1 (H = 0.2, 3.8: a = 2, s = 1.8).

    >>> toy = OneDimensionalExample()
    >>> import stabcheck
    >>> round(stabcheck.non_uniformity(toy.problem([1.0])).value, 6)
    1.8
    """

    loss = "mse"  # one output, K = 1: f_i = out², no ½
    dim = 1

    def __init__(self, constants=(0.1, 1.9)):
        self.constants = torch.as_tensor(constants, dtype=DTYPE).reshape(-1)
        if self.constants.numel() == 0 or bool((self.constants <= 0).any()):
            raise ValueError(f"the constants c_i must be positive, got {self.constants.tolist()}")
        self.n = self.constants.numel()

    def model(self, point: Tensor) -> nn.Module:
        return TwoValleyModel(self.check_point(point))

    def data(self) -> tuple[Tensor, Tensor]:
        return self.constants.reshape(-1, 1), torch.zeros(self.n, 1, dtype=DTYPE)

    def loss_values(self, x: Tensor) -> Tensor:
        return torch.minimum(x * x, self.constants * (x - 1) ** 2).mean(-1)

    def sample_grads(self, x: Tensor, index: Tensor) -> Tensor:
        c = self.constants[index]                                       # (R, B)
        x = x.expand(-1, index.shape[1])                                # (R, B): d = 1
        near_zero = x * x <= c * (x - 1) ** 2
        return torch.where(near_zero, 2 * x, 2 * c * (x - 1)).unsqueeze(-1)


# ---- Appendix B --------------------------------------------------------------------------------------
class AppendixBModel(nn.Module):
    """u ↦ a0 + √a1·u − √a2·u² (a1, a2 ≥ 0)."""

    def __init__(self, point: Tensor):
        super().__init__()
        self.a0 = nn.Parameter(point[0].clone())
        self.a1 = nn.Parameter(point[1].clone())
        self.a2 = nn.Parameter(point[2].clone())

    def forward(self, u: Tensor) -> Tensor:
        return self.a0 + self.a1.sqrt() * u - self.a2.sqrt() * u * u


class AppendixBToy(Toy):
    """Appendix B: data {(0, 0), (1, 0)}, f(u) = a0 + √a1·u − √a2·u², f_i = ½(f(u_i) − y_i)².

    Global minima (0, a, a), a ≥ 0, where the per-sample Hessians have eigenvalues 1 and 1 + 1/(2a).

    The domain a1, a2 ≥ 0 is kept by projection: after each step negative a1, a2 are set to 0
    and counted in :attr:`SGDRun.projections`, so a caller can check it never happened (√a has an
    infinite slope at 0, so a run that hit the boundary would not be a faithful SGD run).

    >>> toy = AppendixBToy()
    >>> toy.problem([0.0, 0.25, 0.25]).loss_value()
    0.0
    """

    loss = "half_sq"
    dim = 3
    n = 2
    inputs = (0.0, 1.0)

    def model(self, point: Tensor) -> nn.Module:
        point = self.check_point(point)
        if bool((point[1:] <= 0).any()):
            raise ValueError("a1 and a2 must be positive for the model to be twice differentiable, "
                             f"got {point.tolist()}")
        return AppendixBModel(point)

    def data(self) -> tuple[Tensor, Tensor]:
        return torch.tensor(self.inputs, dtype=DTYPE).reshape(-1, 1), torch.zeros(self.n, 1, dtype=DTYPE)

    def loss_values(self, x: Tensor) -> Tensor:
        u = torch.tensor(self.inputs, dtype=DTYPE)
        residual = x[..., :1] + x[..., 1:2].sqrt() * u - x[..., 2:3].sqrt() * u * u
        return 0.5 * residual.pow(2).mean(-1)

    def sample_grads(self, x: Tensor, index: Tensor) -> Tensor:
        u = torch.tensor(self.inputs, dtype=DTYPE)[index]               # (R, B)
        a0, r1, r2 = x[:, :1], x[:, 1:2].sqrt(), x[:, 2:3].sqrt()       # (R, 1)
        residual = a0 + r1 * u - r2 * u * u
        # ∂/∂a1 √a1 = 1/(2√a1), ∂/∂a2 (−√a2) = −1/(2√a2)
        return torch.stack([residual, residual * u / (2 * r1), -residual * u * u / (2 * r2)], dim=-1)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        clipped = x[:, 1:] < 0
        x = x.clone()
        x[:, 1:] = x[:, 1:].clamp(min=0)
        return x, clipped.sum(dim=1)


# ---- simulators -----------------------------------------------------------------------------------
@dataclass
class SGDRun:
    """Iterates of ``runs`` independent SGD runs: ``path[t, r]`` is x_t of run r (t = 0..steps)."""

    path: Tensor
    lr: float
    batch_size: int
    seed: int
    projections: Tensor

    @property
    def final(self) -> Tensor:
        return self.path[-1]


def sample_batches(n: int, batch_size: int, runs: int, generator: torch.Generator) -> Tensor:
    """(runs, B): for each run a uniformly random B-subset of range(n) (without replacement)."""
    return torch.rand(runs, n, generator=generator).argsort(dim=1)[:, :batch_size]


def run_sgd(toy: Toy, start, lr: float, batch_size: int, steps: int, runs: int = 1, seed: int = 0) -> SGDRun:
    """``runs`` SGD runs of ``steps`` steps from ``start`` ((d,) or (runs, d)); B = n is GD.

    All runs draw their batches from one generator seeded with ``seed``, so the set of runs is
    reproducible from the seed.

    >>> toy = OneDimensionalExample()
    >>> gd = run_sgd(toy, [1.0 + 1e-5], lr=0.7, batch_size=2, steps=50)
    >>> abs(float(gd.final) - 1.0) < 1e-12
    True
    """
    lr = check_lr(lr)
    check_batch(toy.n, batch_size)
    if steps < 0 or runs < 1:
        raise ValueError(f"steps must be ≥ 0 and runs ≥ 1, got steps={steps}, runs={runs}")
    x = torch.as_tensor(start, dtype=DTYPE)
    if x.shape == (toy.dim,):
        x = x.expand(runs, toy.dim)
    if x.shape != (runs, toy.dim):
        raise ValueError(f"start must have shape ({toy.dim},) or ({runs}, {toy.dim}), got {tuple(x.shape)}")
    x = x.clone()
    gen = torch.Generator().manual_seed(seed)
    full = torch.arange(toy.n).expand(runs, toy.n)
    path = [x]
    projections = torch.zeros(runs, dtype=torch.long)
    for _ in range(steps):
        index = full if batch_size == toy.n else sample_batches(toy.n, batch_size, runs, gen)
        x, clipped = toy.project(x - lr * toy.sample_grads(x, index).mean(dim=1))
        projections += clipped
        path.append(x)
    return SGDRun(path=torch.stack(path), lr=lr, batch_size=batch_size, seed=seed, projections=projections)


def exit_steps(run: SGDRun, centre, radius: float) -> Tensor:
    """(runs,): first step t with ‖x_t − centre‖ > radius, or −1 for runs that never leave."""
    centre = torch.as_tensor(centre, dtype=DTYPE)
    outside = (run.path - centre).norm(dim=-1) > radius                  # (steps + 1, runs)
    first = outside.to(torch.int8).argmax(dim=0)
    return torch.where(outside.any(dim=0), first, torch.full_like(first, -1))
