"""The output Jacobian J (nK × d) of a squared-error problem and the products built from it.

For f_i = c‖out_i − y_i‖² (``mse``: c = 1/K; ``half_sq``: c = ½) the Gauss–Newton part of H_i is
G_i = c′ J_iᵀJ_i with c′ = 2c, J_i the K × d Jacobian of sample i's output. Γ = JJᵀ (nK × nK) is
the Gram matrix of all samples' output gradients and D = blockdiag(Γ_11, …, Γ_nn) its per-sample
K × K blocks. Jv is one JVP, Jᵀu one VJP; no d × d or nK × d matrix is formed.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .problem import Params, Problem, ProblemError
from .products import axpy, hvp, scale

#: Losses whose per-sample Hessian is c′J_iᵀJ_i at zero residual (the interpolating minima).
SQUARED_LOSSES = ("mse", "half_sq")
# Numbers of one chunk's per-sample Jacobians (m·K·d) in the generic Gram-block path.
_JACOBIAN_NUMBERS = 2 ** 24
# Parameter-free modules that act on each sample alone, allowed between the Linear layers of the fast path.
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity,
                nn.Flatten)


class GaussNewton:
    """J, Jᵀ, Γ = JJᵀ, the Gram blocks D and the residual term H − G of a squared-error problem.

    Sample-space vectors are (n, K) tensors in the problem's dtype: row i belongs to sample i.

    >>> net = nn.Linear(3, 2)
    >>> p = Problem(net, torch.randn(4, 3), torch.randn(4, 2), loss="half_sq", dtype=torch.float64)
    >>> gn = GaussNewton(p)
    >>> gn.outputs, gn.scale, tuple(gn.blocks().shape)
    (2, 1.0, (4, 2, 2))
    """

    def __init__(self, problem: Problem):
        if problem.loss not in SQUARED_LOSSES:
            raise ProblemError(f"the sample-space form needs a squared-error loss {SQUARED_LOSSES}, got "
                               f"{problem.loss!r}: use form='full' (cross-entropy has no zero-residual Hessian "
                               "of Gauss–Newton form)")
        self.problem = problem
        self.outputs = int(problem.targets[0].numel())
        #: c′ in G_i = c′J_iᵀJ_i: 2/K for mse, 1 for half_sq.
        self.scale = 2.0 / self.outputs if problem.loss == "mse" else 1.0
        #: Products made, by kind: "jvp", "vjp" (each over all samples), "hessian".
        self.counts = {"jvp": 0, "vjp": 0, "hessian": 0}

    def _outputs_fn(self, chunk: slice):
        x = self.problem.inputs[chunk]
        return lambda params: self.problem.forward(params, x).reshape(x.shape[0], -1)

    def jvp(self, v: Params) -> Tensor:
        """J v as (n, K)."""
        self.counts["jvp"] += 1
        rows = [jvp(self._outputs_fn(c), (self.problem.params,), (v,))[1] for c in self.problem.chunks()]
        return torch.cat(rows)

    def vjp(self, u: Tensor) -> Params:
        """Jᵀu for u of shape (n, K), a parameter dict."""
        self.counts["vjp"] += 1
        acc = None
        for c in self.problem.chunks():
            _, pull = vjp(self._outputs_fn(c), self.problem.params)
            acc = axpy(acc, pull(u[c])[0])
        return self.problem.all_sum(acc)

    def gram(self, u: Tensor) -> Tensor:
        """Γu = J(Jᵀu)."""
        return self.jvp(self.vjp(u))

    def gauss_newton(self, v: Params) -> Params:
        """G v = (c′/n) JᵀJ v, the Gauss–Newton part of H v."""
        return scale(self.vjp(self.jvp(v)), self.scale / self.problem.n)

    def residual(self, v: Params) -> Params:
        """(H − G) v: the residual term, zero at an interpolating minimum."""
        self.counts["hessian"] += 1
        hv, gv = hvp(self.problem, v), self.gauss_newton(v)
        return {k: hv[k] - gv[k] for k in hv}

    def blocks(self) -> Tensor:
        """D's blocks Γ_ii = J_iJ_iᵀ as (n, K, K): by layer factors for Sequential nets of Linear layers and
        per-sample parameter-free modules, else from per-sample Jacobians (vmap over chunks)."""
        if _linear_chain(self.problem):
            return torch.cat([_linear_blocks(self.problem, c) for c in self.problem.chunks()])
        d = self.problem.dim
        size = max(1, _JACOBIAN_NUMBERS // (self.outputs * d))
        return torch.cat([self._jacobian_blocks(c) for c in self.problem.chunks(size)])

    def _jacobian_blocks(self, chunk: slice) -> Tensor:
        problem = self.problem

        def per_sample(params, x):
            return functional_call(problem.model, ({**params}, problem.buffers), (x.unsqueeze(0),)).reshape(-1)

        jac = vmap(jacrev(per_sample), in_dims=(None, 0))(problem.params, problem.inputs[chunk])
        flat = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)
        return flat @ flat.transpose(1, 2)


def _linear_chain(problem: Problem) -> bool:
    """A Sequential of Linear layers (weight and any bias all in x) and per-sample parameter-free modules."""
    model = problem.model
    if not isinstance(model, nn.Sequential) or problem.buffers:
        return False
    expected = set()
    for i, module in enumerate(model):
        if isinstance(module, nn.Linear):
            expected |= {f"{i}.{name}" for name, _ in module.named_parameters()}
        elif not isinstance(module, _ELEMENTWISE):
            return False
    return expected == set(problem.params) and problem.inputs.ndim >= 2


def _linear_blocks(problem: Problem, chunk: slice) -> Tensor:
    """Γ_ii = Σ_layers (‖a_i‖² + [bias]) g_iᵀg_i: layer input a_i and g_i = ∂out_i/∂z_i (K × width).

    z = Wa + b is perturbed by ε (zero), so the VJP of output k with respect to ε is sample i's g
    at row i: the samples stay apart without a per-sample loop.
    """
    x = problem.inputs[chunk]
    layers = [(i, m) for i, m in enumerate(problem.model) if isinstance(m, nn.Linear)]
    inputs: dict[int, Tensor] = {}

    def forward(eps: list[Tensor]) -> Tensor:
        h, j = x, 0
        for i, module in enumerate(problem.model):
            if isinstance(module, nn.Linear):
                if h.ndim != 2:
                    raise ProblemError("a Linear layer met an input with more than one feature dimension")
                inputs[i] = h.detach()
                bias = problem.params.get(f"{i}.bias")
                h = torch.nn.functional.linear(h, problem.params[f"{i}.weight"], bias) + eps[j]
                j += 1
            else:
                h = module(h)
        return h.reshape(h.shape[0], -1)

    eps = [x.new_zeros(x.shape[0], m.out_features) for _, m in layers]
    out, pull = vjp(forward, eps)
    k = out.shape[1]
    basis = torch.eye(k, dtype=out.dtype, device=out.device).unsqueeze(1).expand(k, *out.shape)
    grads = vmap(pull)(basis)[0]  # per layer: (K, m, width)
    total = None
    for (i, module), g in zip(layers, grads):
        factor = inputs[i].pow(2).sum(dim=1) + (1.0 if module.bias is not None else 0.0)  # (m,)
        block = torch.einsum("kmw,lmw->mkl", g, g) * factor[:, None, None]
        total = block if total is None else total + block
    return total
