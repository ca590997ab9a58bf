"""The output Jacobian J (nK × d) of a squared-error problem and the products built from it.

For f_i = c‖out_i − y_i‖² (``mse``: c = 1/K; ``half_sq``: c = ½) the Gauss–Newton part of H_i is
G_i = c′ J_iᵀJ_i with c′ = 2c, J_i the K × d Jacobian of sample i's output. Γ = JJᵀ (nK × nK) is
the Gram matrix of all samples' output gradients and D = blockdiag(Γ_11, …, Γ_nn) its per-sample
K × K blocks. Jv is one JVP, Jᵀu one VJP; no d × d or nK × d matrix is formed. For Sequential nets
of Linear layers (and per-sample parameter-free modules between them) the same products come, exactly
and several times cheaper, from the layer factors: layer input a_i and back-propagated output
gradients g_i = ∂out_i/∂z_i of each sample, since ∂out_ik/∂W = g_i^k a_iᵀ.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .problem import Params, Problem, ProblemError
from .products import axpy, scale

#: Losses whose per-sample Hessian is c′J_iᵀJ_i at zero residual (the interpolating minima).
SQUARED_LOSSES = ("mse", "half_sq")
# Numbers of one chunk's per-sample Jacobians (m·K·d) in the generic Gram-block path.
_JACOBIAN_NUMBERS = 2 ** 24
# The layer factors of a Linear chain are kept while they hold at most this many numbers (K·n·Σ widths
# and the n × n input kernels); larger problems take the autodiff products.
_FACTOR_NUMBERS = 2 ** 27
# Parameter-free modules that act on each sample alone, allowed between the Linear layers of the fast path.
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity,
                nn.Flatten)


class GaussNewton:
    """J, Jᵀ, Γ = JJᵀ, the Gram blocks D and the Gauss–Newton product G v of a squared-error problem.

    Sample-space vectors are (n, K) tensors in the problem's dtype: row i belongs to sample i.
    ``engine`` says how the products run: "factors" (Linear chains, :class:`ChainFactors`) or "autodiff".

    >>> net = nn.Sequential(nn.Linear(3, 2))
    >>> p = Problem(net, torch.randn(4, 3), torch.randn(4, 2), loss="half_sq", dtype=torch.float64)
    >>> gn = GaussNewton(p)
    >>> gn.outputs, gn.scale, gn.engine, tuple(gn.blocks().shape)
    (2, 1.0, 'factors', (4, 2, 2))
    """

    def __init__(self, problem: Problem):
        if problem.loss not in SQUARED_LOSSES:
            raise ProblemError(f"the sample-space form needs a squared-error loss {SQUARED_LOSSES}, got "
                               f"{problem.loss!r}: use form='full' (cross-entropy has no zero-residual Hessian "
                               "of Gauss–Newton form)")
        if problem.n != problem.n_local:
            raise ProblemError("the sample-space form needs every sample on this process (the problem is sharded "
                               f"over processes: {problem.n_local} of {problem.n} here); use form='full'")
        self.problem = problem
        self.outputs = int(problem.targets[0].numel())
        #: c′ in G_i = c′J_iᵀJ_i: 2/K for mse, 1 for half_sq.
        self.scale = 2.0 / self.outputs if problem.loss == "mse" else 1.0
        #: Products made, by kind: "jvp", "vjp" (each over all samples).
        self.counts = {"jvp": 0, "vjp": 0}
        self.factors = ChainFactors(problem) if _factorable(problem, self.outputs) else None
        self.engine = "autodiff" if self.factors is None else "factors"

    def _outputs_fn(self, chunk: slice):
        x = self.problem.inputs[chunk]
        return lambda params: self.problem.forward(params, x).reshape(x.shape[0], -1)

    def jvp(self, v: Params) -> Tensor:
        """J v as (n, K)."""
        self.counts["jvp"] += 1
        if self.factors is not None:
            return self.factors.jvp(v)
        rows = [jvp(self._outputs_fn(c), (self.problem.params,), (v,))[1] for c in self.problem.chunks()]
        return torch.cat(rows)

    def vjp(self, u: Tensor) -> Params:
        """Jᵀu for u of shape (n, K), a parameter dict."""
        self.counts["vjp"] += 1
        if self.factors is not None:
            return self.factors.vjp(u)
        acc = None
        for c in self.problem.chunks():
            _, pull = vjp(self._outputs_fn(c), self.problem.params)
            acc = axpy(acc, pull(u[c])[0])
        return self.problem.all_sum(acc)

    def gram(self, u: Tensor) -> Tensor:
        """Γu = J(Jᵀu)."""
        if self.factors is not None:
            self.counts["jvp"] += 1
            self.counts["vjp"] += 1
            return self.factors.gram(u)
        return self.jvp(self.vjp(u))

    def gauss_newton(self, v: Params) -> Params:
        """G v = (c′/n) JᵀJ v, the Gauss–Newton part of H v."""
        return scale(self.vjp(self.jvp(v)), self.scale / self.problem.n)

    def blocks(self) -> Tensor:
        """D's blocks Γ_ii = J_iJ_iᵀ as (n, K, K): from the layer factors, else from per-sample Jacobians
        (vmap over chunks)."""
        if self.factors is not None:
            return self.factors.blocks()
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


def _factorable(problem: Problem, outputs: int) -> bool:
    """A Sequential of Linear layers (weight and any bias all in x) and per-sample parameter-free modules,
    unsharded, whose factors fit :data:`_FACTOR_NUMBERS`."""
    model = problem.model
    if not isinstance(model, nn.Sequential) or problem.buffers or problem.n != problem.n_local:
        return False
    expected, widths = set(), 0
    for i, module in enumerate(model):
        if isinstance(module, nn.Linear):
            expected |= {f"{i}.{name}" for name, _ in module.named_parameters()}
            widths += module.out_features
        elif not isinstance(module, _ELEMENTWISE):
            return False
    layers = sum(isinstance(m, nn.Linear) for m in model)
    size = outputs * problem.n * widths + layers * problem.n ** 2
    return expected == set(problem.params) and problem.inputs.ndim >= 2 and size <= _FACTOR_NUMBERS


class ChainFactors:
    """Per Linear layer l: the inputs A_l (n × in), the output gradients g_l (n × K × width) and the input
    kernel Q_l = A_lA_lᵀ + [bias] (n × n), from one forward and K batched VJPs.

    J's rows are ∂out_ik/∂(W_l, b_l) = g_l[k, i] ⊗ (a_li, 1), so Jv, Jᵀu and Γu = Σ_l g_l ∘ (Q_l (g_lᵀu))
    are matrix products of these factors, and Γ_ii = Σ_l Q_l[i, i] g_l[:, i] g_l[:, i]ᵀ.
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        self.layers = [(i, m) for i, m in enumerate(problem.model) if isinstance(m, nn.Linear)]
        parts = [self._chunk(c) for c in problem.chunks()]
        self.inputs = [torch.cat([p[0][j] for p in parts]) for j in range(len(self.layers))]
        # (n, K, width), contiguous: the products below are then plain broadcasts and sums
        self.grads = [torch.cat([p[1][j] for p in parts], dim=1).transpose(0, 1).contiguous()
                      for j in range(len(self.layers))]
        self.kernels = [a @ a.T + (1.0 if m.bias is not None else 0.0) for a, (_, m) in zip(self.inputs, self.layers)]

    def _chunk(self, chunk: slice) -> tuple[list[Tensor], list[Tensor]]:
        """The layer inputs and g of one chunk: one forward that keeps each module's input, then the K
        output directions back-propagated together as (K, m, width) batches (z_l's cotangent is g_l,
        a Linear layer maps it back by W, an elementwise module multiplies by its derivative)."""
        problem, h = self.problem, self.problem.inputs[chunk]
        seen: list[tuple[nn.Module, int, Tensor]] = []
        with torch.no_grad():
            for i, module in enumerate(problem.model):
                if isinstance(module, nn.Linear) and h.ndim != 2:
                    raise ProblemError("a Linear layer met an input with more than one feature dimension")
                seen.append((module, i, h))
                h = (torch.nn.functional.linear(h, problem.params[f"{i}.weight"], problem.params.get(f"{i}.bias"))
                     if isinstance(module, nn.Linear) else module(h))
            k, m = h.reshape(h.shape[0], -1).shape[1], h.shape[0]
            cot = torch.eye(k, dtype=h.dtype, device=h.device).unsqueeze(1).expand(k, m, k)
            inputs, grads = [], []
            for module, i, x in reversed(seen):
                if isinstance(module, nn.Linear):
                    inputs.append(x)
                    grads.append(cot)
                    if len(grads) < len(self.layers):
                        cot = cot @ problem.params[f"{i}.weight"]
                elif len(grads) < len(self.layers):  # elementwise: its derivative at x, by one JVP
                    cot = cot.reshape(k, *x.shape) * jvp(module, (x,), (torch.ones_like(x),))[1]
        return inputs[::-1], [g.reshape(k, m, -1) for g in grads[::-1]]

    def blocks(self) -> Tensor:
        return sum(torch.bmm(g, g.transpose(1, 2)) * q.diagonal()[:, None, None]
                   for g, q in zip(self.grads, self.kernels))

    def gram(self, u: Tensor) -> Tensor:
        return sum(_forward(g, q @ _back(g, u)) for g, q in zip(self.grads, self.kernels))

    def jvp(self, v: Params) -> Tensor:
        out = 0
        for (i, module), a, g in zip(self.layers, self.inputs, self.grads):
            z = a @ v[f"{i}.weight"].T
            if module.bias is not None:
                z = z + v[f"{i}.bias"]
            out = out + _forward(g, z)
        return out

    def vjp(self, u: Tensor) -> Params:
        out = {}
        for (i, module), a, g in zip(self.layers, self.inputs, self.grads):
            back = _back(g, u)
            out[f"{i}.weight"] = back.T @ a
            if module.bias is not None:
                out[f"{i}.bias"] = back.sum(0)
        return out


def _back(g: Tensor, u: Tensor) -> Tensor:
    """Σ_k u_ik g[i, k]: a sample-space vector (n, K) taken to a layer's outputs (n, width)."""
    return (g * u[:, :, None]).sum(1)


def _forward(g: Tensor, z: Tensor) -> Tensor:
    """g[i, k]·z_i: a change of a layer's outputs (n, width) taken to the net's outputs (n, K)."""
    return (g * z[:, None, :]).sum(2)
