"""Independent cross-checks of a measured minimum's a and s (C12, "measurement").

Every trained-net claim takes a = λmax(H) and s = λmax(Σ)^½ from :func:`claims.measured.measure`:
Lanczos in float32 on stabcheck's H operator and on the Σ engine that ``auto`` picks (``factored`` for
the FNNs). A scale error there (a Σ engine off by 20%, an H product off by 10%) moves every claim's
numbers together and slips through claims that compare minima with each other. This module recomputes
them in ways that share nothing with that path but the trained parameters:

* :func:`quotients`: at a reported eigenvector u, uᵀHu, ‖Hu‖² and uᵀΣu = (1/n)Σ_i ‖(H_i − H)u‖² from
  per-sample Hessian-vector products written here with ``torch.func`` (float64, its own loss and
  flattening, none of stabcheck's products, engines or operators). A Ritz value is the Rayleigh quotient
  of its Ritz vector, so the reported a, λmax(Σ) and Theorem-1 value must equal uᵀHu, uᵀΣu and
  uᵀ{(I − ηH)² + η²pΣ}u at their own vectors.
* :meth:`IndependentCurvature.hessian_product`: H u of the full-batch loss by double back-propagation
  (``torch.autograd``, float64), compared as a vector with stabcheck's own H u (the factored product
  where it applies) and as uᵀHu with a. A derivative taken at the point, unlike a finite difference: at
  d = 9e5 any step of a difference of gradients crosses ReLU kinks (a step of 1e-6 was 2.6% off a).
* :func:`second_solver`: λmax by ARPACK (``scipy.sparse.linalg.eigsh``) in float64 on stabcheck's H
  operator, and on Σ with the ``loop`` engine (the paper's per-sample double back-propagation): another
  solver on another engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.func import functional_call, grad, jvp, vmap

from stabcheck.experiments.minima import Minimum

FLOAT = torch.float64


def _sample_loss(loss: str):
    """f_i of one sample's output and target, written out here (not stabcheck's)."""
    if loss == "mse":          # PyTorch's MSELoss per sample: (1/K)‖out − y‖² (per row of a batch)
        return lambda out, y: ((out - y) ** 2).mean(-1)
    if loss == "half_sq":
        return lambda out, y: 0.5 * ((out - y) ** 2).sum(-1)
    raise ValueError(f"the cross-check knows the losses mse and half_sq, not {loss!r}")


class IndependentCurvature:
    """Per-sample curvature of a trained minimum in float64 from ``torch.func`` alone.

    Parameters are flattened in ``named_parameters()`` order, the order of the flat vectors that
    stabcheck's results hold (every parameter of these nets is trained).
    """

    def __init__(self, minimum: Minimum, device: str = "cpu", chunk: int = 50):
        net = minimum.model(device).to(FLOAT).eval()
        self.net = net
        self.params = {k: v.detach() for k, v in net.named_parameters()}
        self.buffers = {k: v.detach() for k, v in net.named_buffers()}
        self.names = list(self.params)
        self.shapes = [self.params[k].shape for k in self.names]
        self.sizes = [self.params[k].numel() for k in self.names]
        self.dim = sum(self.sizes)
        self.x = minimum.dataset.inputs.to(device, FLOAT)
        self.y = minimum.dataset.targets(minimum.config.setup.loss).to(device, FLOAT)
        self.n = self.x.shape[0]
        self.chunk = chunk
        per_sample = _sample_loss(minimum.config.setup.loss)
        self._per_sample = per_sample

        def f_i(params, x, y):
            out = functional_call(net, {**params, **self.buffers}, (x.unsqueeze(0),))
            return per_sample(out[0], y)

        self._f_i = f_i

    def unflatten(self, flat: torch.Tensor) -> dict:
        if flat.shape != (self.dim,):
            raise ValueError(f"vector of shape {tuple(flat.shape)}, the net has {self.dim} parameters")
        return {k: t.view(s) for k, t, s in zip(self.names, flat.to(self.x.device, FLOAT).split(self.sizes),
                                                  self.shapes)}

    def _flat_rows(self, tree: dict) -> torch.Tensor:
        """(batch, d) from a dict of (batch, *shape) tensors."""
        return torch.cat([tree[k].reshape(tree[k].shape[0], -1) for k in self.names], dim=1)

    def sample_products(self, u: torch.Tensor, rows: slice) -> torch.Tensor:
        """H_i u for the samples i in ``rows``, shape (len(rows), d): forward-over-reverse per sample."""
        tangent = self.unflatten(u)

        def one(x, y):
            return jvp(lambda p: grad(self._f_i)(p, x, y), (self.params,), (tangent,))[1]

        return self._flat_rows(vmap(one)(self.x[rows], self.y[rows]))

    def _rows(self):
        return [slice(i, min(i + self.chunk, self.n)) for i in range(0, self.n, self.chunk)]

    def hessian_product(self, u: torch.Tensor) -> torch.Tensor:
        """H u of the mean loss over the n samples by double back-propagation through whole batches
        (``torch.autograd``, none of ``torch.func``'s transforms), chunk by chunk (H is their mean)."""
        params = {k: v.clone().requires_grad_(True) for k, v in self.params.items()}
        leaves = [params[k] for k in self.names]
        tangent = self.unflatten(u)
        total = torch.zeros(self.dim, dtype=FLOAT, device=self.x.device)
        for rows in self._rows():
            out = functional_call(self.net, {**params, **self.buffers}, (self.x[rows],))
            gradient = torch.autograd.grad(self._per_sample(out, self.y[rows]).sum(), leaves, create_graph=True)
            directional = sum((g * tangent[k]).sum() for g, k in zip(gradient, self.names))
            total += torch.cat([h.reshape(-1) for h in torch.autograd.grad(directional, leaves)])
        return total / self.n


@dataclass(frozen=True)
class Quotients:
    """At a unit vector u, from per-sample products: uᵀHu, ‖Hu‖² and uᵀΣu = (1/n)Σ_i ‖H_i u − Hu‖²."""

    h: float
    hh: float
    sigma: float

    def theorem1(self, lr: float, p: float) -> float:
        """uᵀ{(I − ηH)² + η²pΣ}u = 1 − 2η uᵀHu + η²‖Hu‖² + η²p uᵀΣu."""
        return 1.0 - 2 * lr * self.h + lr * lr * self.hh + lr * lr * p * self.sigma


def quotients(curv: IndependentCurvature, u: torch.Tensor) -> Quotients:
    """uᵀHu, ‖Hu‖² and the centred uᵀΣu at u/‖u‖ (two passes over the samples, float64)."""
    u = unit(u, curv).detach()
    h_u = sum(curv.sample_products(u, rows).detach().sum(0) for rows in curv._rows()) / curv.n
    spread = sum(float(((curv.sample_products(u, rows).detach() - h_u) ** 2).sum()) for rows in curv._rows())
    return Quotients(float(u @ h_u), float(h_u @ h_u), spread / curv.n)


def unit(u: torch.Tensor, curv: IndependentCurvature) -> torch.Tensor:
    """u/‖u‖ in float64 on the cross-check's device."""
    u = u.to(curv.x.device, FLOAT)
    return u / u.norm()


def vector_gap(reported: torch.Tensor, other: torch.Tensor) -> float:
    """‖reported − other‖/‖other‖."""
    return float((reported.to(other) - other).norm() / other.norm())


@dataclass(frozen=True)
class SolverCheck:
    value: float
    products: int
    seconds: float


def second_solver(matvec, dim: int, seed: int, tol: float = 1e-8) -> SolverCheck:
    """λmax of a symmetric operator by ARPACK (``eigsh``, largest algebraic, float64) from a seeded start."""
    count = [0]

    def mv(x):
        count[0] += 1
        return matvec(torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1))).cpu().numpy()

    start = time.perf_counter()
    v0 = np.random.default_rng(seed).standard_normal(dim)
    op = LinearOperator((dim, dim), matvec=mv, dtype=np.float64)
    value = float(eigsh(op, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)[0])
    return SolverCheck(value, count[0], time.perf_counter() - start)


def relative_gap(reported: float, other: float) -> float:
    return abs(reported - other) / abs(other)
