"""The step engines of :func:`~.ensemble.train_ensemble`: loss and update of M members stacked along a
leading axis, the update that of ``torch.optim.SGD`` (v ← μ v + g, x ← x − η v) for the members that step.

``mlp``: ``[Flatten] Linear (ReLU Linear)*`` nets such as the paper's FNN: batched matmuls and a
written-out backward that adds −η δᵀa straight into the weights; ``vmap``: any model (buffers
such as BatchNorm statistics included) by ``functional_call`` under ``vmap(grad_and_value)``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ..curvature.problem import per_sample_loss
from .sgd import TrainError

ENGINES = ("auto", "mlp", "vmap")

#: Default of ``train_ensemble(batched_gradient_bytes=...)``: the mlp engine computes the weight
#: gradients of all members in one product up to this size (bytes of the stacked weights), member by
#: member above it: then one member's stays in the cache (2 MiB L2 per core where it was measured)
#: until its update reads it (benchmarks/README.md).
BATCHED_GRADIENT_BYTES = 1 << 20


def member_view(mask: Tensor, like: Tensor) -> Tensor:
    """A per-member (M,) tensor shaped to broadcast over a stacked (M, ...) tensor."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


#: Bytes to which torch's CPU allocator aligns a tensor, so every operand of ``train``'s products.
ALIGNMENT = 64


def aligned(a: Tensor) -> Tensor:
    """``a`` (M, ...) with every member's block starting on an ``ALIGNMENT``-byte boundary, as ``train``'s
    operand would; copied into a padded buffer where the stack puts a block elsewhere.

    MKL's sgemm rounds a product with a narrow output (10 columns: the FNN's head) otherwise when its
    left operand is off 16 bytes, so without this the members in odd rows of a (M, 5, 50) float32
    stack (1000 bytes each) drift from ``train``. Measured: at B ≥ ``BIT_IDENTICAL_BATCH`` no other
    operand or output of the engine's products is sensitive to alignment; below, the products'
    outputs are too (:func:`matches_train` says False there).
    """
    if a.data_ptr() % ALIGNMENT == 0 and (a.stride(0) == 0 or a.stride(0) * a.element_size() % ALIGNMENT == 0):
        return a
    step = -(-a[0].numel() * a.element_size() // ALIGNMENT) * ALIGNMENT // a.element_size()
    padded = torch.empty(a.shape[0], step, dtype=a.dtype, device=a.device)[:, :a[0].numel()]
    return padded.view(a.shape).copy_(a)


def sgd_update(param: Tensor, step: Tensor, buffer: Tensor | None, mu: Tensor, lr: float) -> None:
    """x ← x − η v with v ← μ v + step (``buffer`` holds v; None: μ = 0, v = step), as ``torch.optim.SGD``.

    ``mu`` is per member ((M,) for stacked (M, ...) tensors): μ for a member that steps, 0 for one that
    does not (its buffer restarts, and its ``step`` is 0).
    """
    if buffer is not None:
        step = buffer.mul_(member_view(mu, buffer)).add_(step)
    param.add_(step, alpha=-lr)


def mlp_layers(model: nn.Module) -> tuple[bool, list[str]] | None:
    """(flattens its input, names of its Linear layers) for ``[Flatten] Linear (ReLU Linear)*``, else None.

    >>> from stabcheck.experiments.models import FNN
    >>> mlp_layers(FNN(16, (8, 8), 3)), mlp_layers(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)))
    ((True, ['1', '3', '5']), None)
    """
    if not isinstance(model, nn.Sequential):
        return None
    children = list(model.named_children())
    flatten = bool(children) and isinstance(children[0][1], nn.Flatten)
    if flatten:
        if (children[0][1].start_dim, children[0][1].end_dim) != (1, -1):
            return None
        children = children[1:]
    linears, relus = children[0::2], children[1::2]
    if len(children) % 2 == 0 or not all(type(m) is nn.Linear and m.bias is not None for _, m in linears):
        return None
    if not all(type(m) is nn.ReLU for _, m in relus):
        return None
    return flatten, [name for name, _ in linears]


#: Below this many multiply-adds in a layer's product torch's bmm runs its own loop and rounds
#: otherwise than ``train``'s mm (measured).
BIT_IDENTICAL_MACS = 400
#: Below this batch size MKL's products round otherwise also where their output (a member's block of
#: the stack, not aligned as ``train``'s) or their right operand is off 16 bytes (measured at B = 1, 2, 3).
BIT_IDENTICAL_BATCH = 4


def matches_train(model: nn.Module, batch_size: int, n: int | None = None) -> bool:
    """Whether the mlp engine trains ``model`` at ``batch_size`` bit-identically to ``train`` on the CPU:
    an mlp (:func:`mlp_layers`) whose every batch (B, and the short last batch n mod B of an epoch
    where ``n`` is given) has at least ``BIT_IDENTICAL_BATCH`` samples and whose every layer product
    has at least ``BIT_IDENTICAL_MACS`` multiply-adds (B·in·out): the conditions under which equality
    was measured (tests/test_ensemble.py), outside which it was seen to fail.

    >>> from stabcheck.experiments.models import FNN
    >>> matches_train(FNN(784, (50, 50), 10), 10), matches_train(FNN(16, (8,), 3), 2)
    (True, False)
    >>> matches_train(FNN(784, (50, 50), 10), 5, n=100), matches_train(FNN(784, (50, 50), 10), 5, n=101)
    (True, False)
    """
    if mlp_layers(model) is None:
        return False
    batches = {batch_size} | ({n % batch_size} - {0} if n is not None else set())
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return all(b >= BIT_IDENTICAL_BATCH and b * m.in_features * m.out_features >= BIT_IDENTICAL_MACS
               for b in batches for m in layers)


class MLPEngine:
    """Batched forward a_{l+1} = relu(a_l W_lᵀ + b_l) and a written-out backward, updates as train()'s SGD."""

    name = "mlp"

    def __init__(self, model: nn.Module, loss: str, lr: float, momentum: float, fused_update: bool,
                 batched_gradient_bytes: int):
        if fused_update and momentum:
            raise TrainError("fused_update is for plain SGD (momentum 0): v ← μv + g needs the gradient itself")
        flatten, names = mlp_layers(model)
        self.flatten = flatten
        self.layers = [(f"{name}.weight", f"{name}.bias") for name in names]
        self.loss, self.lr, self.momentum, self.fused_update = loss, lr, momentum, fused_update
        self.batched_gradient_bytes = batched_gradient_bytes
        self._gradients: dict[str, Tensor] = {}  # weight gradients, reused (fresh large tensors page-fault)

    def _gradient_buffer(self, like: Tensor, key: str) -> Tensor:
        buffer = self._gradients.get(key)
        if buffer is None or buffer.shape != like.shape:  # first use, or members left the stack
            buffer = self._gradients[key] = torch.empty_like(like)
        return buffer

    def inputs(self, x: Tensor) -> Tensor:
        return x.flatten(1) if self.flatten else x

    def loss_and_grad(self, params: dict, buffers: dict, xb: Tensor, yb: Tensor, shared: bool):
        members = next(iter(params.values())).shape[0]
        a = xb.expand(members, *xb.shape) if shared else xb
        acts = [a]
        for i, (w, b) in enumerate(self.layers):
            a = torch.baddbmm(params[b].unsqueeze(1), aligned(a), params[w].transpose(1, 2))
            if i < len(self.layers) - 1:
                a = torch.relu(a)
                acts.append(a)
        # The head by autograd: δ = ∂(batch loss)/∂(output), the same ops as train()'s backward.
        with torch.enable_grad():
            out = a.requires_grad_(True)
            batch = out.shape[1]
            yb = yb.expand(members, *yb.shape) if shared else yb
            sample = per_sample_loss(self.loss, out.reshape(members * batch, -1),
                                     yb.reshape(members * batch, *yb.shape[2:]))
            losses = sample.view(members, batch).mean(1)
            (delta,) = torch.autograd.grad(losses.sum(), out)
        return losses.detach(), (acts, delta)

    def update(self, params: dict, momenta: dict, grads, stepping: Tensor) -> None:
        acts, delta = grads
        # Frozen members get δ = 0. A diverged member's activations may be inf or NaN (0·inf = NaN), so
        # non-finite activations become 0; those of a member that steps are finite (its loss is).
        # (torch.where on these shapes costs 4-20× nan_to_num or threshold_backward on the CPU.)
        delta = torch.where(stepping.view(-1, 1, 1), delta, 0)
        mu = stepping.to(delta.dtype) * self.momentum  # μ for the members that step, 0 (buffer reset) for the rest
        for i in reversed(range(len(self.layers))):
            w, b = self.layers[i]
            a = acts[i] if i == 0 else torch.nan_to_num(acts[i], nan=0.0, posinf=0.0, neginf=0.0)
            # δ of the layer below with the old W, through ReLU′ as autograd applies it.
            below = torch.ops.aten.threshold_backward(torch.bmm(delta, params[w]), acts[i], 0) if i > 0 else None
            bias_grad, delta_t = delta.sum(1), delta.transpose(1, 2)
            if self.fused_update:  # x ← x − η δᵀa in one product: one rounding where train() has two
                params[w].baddbmm_(delta_t, a, alpha=-self.lr)
            elif params[w].numel() * params[w].element_size() <= self.batched_gradient_bytes:
                step = torch.bmm(delta_t, a, out=self._gradient_buffer(params[w], w))
                sgd_update(params[w], step, momenta.get(w), mu, self.lr)
            else:  # member by member: one member's g stays in the cache until it is used
                gradient = self._gradient_buffer(params[w][0], w)
                for m in range(params[w].shape[0]):
                    step = torch.mm(delta_t[m], a[m], out=gradient).unsqueeze(0)
                    buffer = momenta[w][m:m + 1] if self.momentum else None
                    sgd_update(params[w][m:m + 1], step, buffer, mu[m:m + 1], self.lr)
            sgd_update(params[b], bias_grad, momenta.get(b), mu, self.lr)
            delta = below


class VmapEngine:
    """Per-member gradients of any model by ``vmap(grad_and_value(functional_call))``, masked updates."""

    name = "vmap"

    def __init__(self, model: nn.Module, loss: str, lr: float, momentum: float, fused_update: bool,
                 batched_gradient_bytes: int):
        if fused_update:
            raise TrainError("fused_update needs the mlp engine (a [Flatten] Linear (ReLU Linear)* net)")
        base = copy.deepcopy(model).to("meta").train()  # the structure only; values come stacked

        def member_loss(params, buffers, xb, yb):
            return per_sample_loss(loss, functional_call(base, (params, buffers), (xb,)), yb).mean()

        self._grad_and_loss = grad_and_value(member_loss)
        self.lr, self.momentum = lr, momentum

    def inputs(self, x: Tensor) -> Tensor:
        return x

    def loss_and_grad(self, params: dict, buffers: dict, xb: Tensor, yb: Tensor, shared: bool):
        data_dim = None if shared else 0
        grads, losses = vmap(self._grad_and_loss, in_dims=(0, 0, data_dim, data_dim))(params, buffers, xb, yb)
        return losses, grads

    def update(self, params: dict, momenta: dict, grads, stepping: Tensor) -> None:
        mu = stepping.to(next(iter(params.values())).dtype) * self.momentum
        for k, p in params.items():
            g = torch.where(member_view(stepping, p), grads[k], 0)  # a diverged member's gradient may be NaN
            sgd_update(p, g, momenta.get(k), mu, self.lr)


def pick_engine(engine: str, model: nn.Module):
    """The engine class for ``engine`` (``auto``: mlp where the net qualifies, else vmap)."""
    if engine not in ENGINES:
        raise TrainError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    qualifies = mlp_layers(model) is not None
    if engine == "mlp" and not qualifies:
        raise TrainError(f"engine 'mlp' needs a Sequential of [Flatten] Linear (ReLU Linear)*, got "
                         f"{type(model).__name__}; use engine='vmap'")
    return MLPEngine if engine == "mlp" or (engine == "auto" and qualifies) else VmapEngine


