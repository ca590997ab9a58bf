"""Several seeds of one SGD setting trained together, each member as :func:`~.train.train` trains it alone.

The members share the data and (η, B, μ, tol, sampler); member m has its own model and seed, so its
own ``BatchSampler(n, B, sampler, seed_m)``. Every step evaluates each running member on its own
batch and, exactly as ``train``: a non-finite batch loss or one above ``DIVERGENCE_LOSS`` ends the
member (``diverged``, no update); otherwise v ← μ v + g, x ← x − η v, then the float64
ema ← d·ema + (1 − d)·loss and the member ends ``converged`` when ema < tol (from ``min_iters`` on),
or ``max_iters`` at the cap. The flags live on the device: a member that stops is frozen by masking
from that step on, and the host reads them only every ``check_every`` steps (then drops the
stopped members from the stack), yet each record holds the exact stopping iteration. No callback,
no checkpoints (``train`` has both).

Engines: ``mlp`` for ``[Flatten] Linear (ReLU Linear)*`` nets such as the paper's FNN: batched
matmuls and a written-out backward that adds −η δᵀa straight into the weights (one ``baddbmm``
per layer, no gradient tensors); ``vmap``: any model (buffers such as BatchNorm statistics
included) by ``functional_call`` under ``vmap(grad_and_value)``. Both equal ``train`` up to
rounding, and a member's result does not depend on the others. Measured on this CPU (MKL): the
mlp engine bit-identical to ``train`` (float32 and float64, SGD and GD, with and without momentum,
when every product has at least 400 multiply-adds: below, torch's bmm runs its own loop); vmap
bit-identical or within 5e-16 (float64), which a BatchNorm net amplifies to 1e-10 in 200 steps.

Cost on the 2-core CPU, one thread, 5 members against one ``train`` run (benchmarks/test_training.py):
paper FNN, B = 10: see benchmarks/README.md (the batched matmuls stream 5 sets of weights through
memory); the small profile's FNN 784-50-50-10, B = 10: 1.2×. The vmap engine is for models the mlp
engine does not take: on the CPU it is slower than training the members one after another (10× one
run for the paper FNN: ``torch.where`` and fresh gradient tensors every step); on a GPU it saves
the launches.

>>> import copy, torch
>>> from stabcheck.experiments.models import FNN
>>> from stabcheck.experiments.train import train
>>> torch.manual_seed(0) and None
>>> x, y = torch.rand(20, 16, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[torch.arange(20) % 3]
>>> nets = [FNN(16, (8,), 3).double() for _ in range(2)]
>>> alone = [train(copy.deepcopy(net), x, y, lr=0.5, batch_size=5, seed=s, tol=1e-2, max_iters=500,
...                progress=False) for s, net in enumerate(nets)]
>>> together = train_ensemble(nets, x, y, lr=0.5, batch_size=5, seeds=[0, 1], tol=1e-2, max_iters=500)
>>> [(r.status, r.iterations) for r in together] == [(r.status, r.iterations) for r in alone]
True
"""
from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ..curvature.problem import per_sample_loss
from ..curvature.threads import torch_threads
from .train import DIVERGENCE_LOSS, BatchSampler, TrainError, TrainRecord, check_settings, full_loss

ENGINES = ("auto", "mlp", "vmap")

#: The mlp engine computes the weight gradients of all members in one product up to this size,
#: member by member above it: then one member's stays in the cache (2 MiB L2 per core here) until
#: its update reads it. Measured: the small profile's FNN batched 16% faster, the paper's FNN
#: member by member 15% faster.
BATCHED_GRADIENT_BYTES = 1 << 20

_RUNNING, _CONVERGED, _DIVERGED = 0, 1, 2
_STATUS_NAMES = {_RUNNING: "max_iters", _CONVERGED: "converged", _DIVERGED: "diverged"}


def _member_view(mask: Tensor, like: Tensor) -> Tensor:
    """A per-member (M,) tensor shaped to broadcast over a stacked (M, ...) tensor."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


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
#: otherwise than ``train``'s mm; at or above it the mlp engine is bit-identical to ``train`` (measured).
BIT_IDENTICAL_MACS = 400


def matches_train(model: nn.Module, batch_size: int) -> bool:
    """Whether the mlp engine trains ``model`` at ``batch_size`` bit-identically to ``train`` on the CPU:
    an mlp (:func:`mlp_layers`) whose every layer product has at least ``BIT_IDENTICAL_MACS`` multiply-adds
    (B·in·out), the condition under which equality was measured (tests/test_ensemble.py).

    >>> from stabcheck.experiments.models import FNN
    >>> matches_train(FNN(784, (50, 50), 10), 10), matches_train(FNN(16, (8,), 3), 2)
    (True, False)
    """
    if mlp_layers(model) is None:
        return False
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return all(batch_size * m.in_features * m.out_features >= BIT_IDENTICAL_MACS for m in layers)


class _MLPEngine:
    """Batched forward a_{l+1} = relu(a_l W_lᵀ + b_l) and a written-out backward, updates as train()'s SGD."""

    def __init__(self, model: nn.Module, loss: str, lr: float, momentum: float, fused_update: bool):
        if fused_update and momentum:
            raise TrainError("fused_update is for plain SGD (momentum 0): v ← μv + g needs the gradient itself")
        flatten, names = mlp_layers(model)
        self.flatten = flatten
        self.layers = [(f"{name}.weight", f"{name}.bias") for name in names]
        self.loss, self.lr, self.momentum, self.fused_update = loss, lr, momentum, fused_update
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
            a = torch.baddbmm(params[b].unsqueeze(1), a, params[w].transpose(1, 2))
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
            elif params[w].numel() * params[w].element_size() <= BATCHED_GRADIENT_BYTES:
                step = torch.bmm(delta_t, a, out=self._gradient_buffer(params[w], w))
                if self.momentum:
                    step = momenta[w].mul_(_member_view(mu, momenta[w])).add_(step)
                params[w].add_(step, alpha=-self.lr)
            else:  # member by member: one member's g stays in the cache until it is used
                gradient = self._gradient_buffer(params[w][0], w)
                for m in range(params[w].shape[0]):
                    step = torch.mm(delta_t[m], a[m], out=gradient)
                    if self.momentum:
                        step = momenta[w][m].mul_(mu[m]).add_(step)
                    params[w][m].add_(step, alpha=-self.lr)
            if self.momentum:
                bias_grad = momenta[b].mul_(_member_view(mu, momenta[b])).add_(bias_grad)
            params[b].add_(bias_grad, alpha=-self.lr)
            delta = below


class _VmapEngine:
    """Per-member gradients of any model by ``vmap(grad_and_value(functional_call))``, masked updates."""

    def __init__(self, model: nn.Module, loss: str, lr: float, momentum: float, fused_update: bool):
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
        for k, p in params.items():
            g = torch.where(_member_view(stepping, p), grads[k], 0)  # a diverged member's gradient may be NaN
            if self.momentum:
                mu = stepping.to(p.dtype) * self.momentum
                momenta[k].mul_(_member_view(mu, p)).add_(g)
                g = momenta[k]
            p.add_(g, alpha=-self.lr)


def _stderr_progress(info: dict) -> None:
    print(f"[ensemble] it {info['iteration']}/{info['max_iters']}  running {info['running']}/{info['members']}  "
          f"min ema {info['ema_loss']:.3e}  {info['iters_per_second']:.0f} it/s", file=sys.stderr, flush=True)


def train_ensemble(
    models: Sequence[nn.Module],
    inputs: Tensor,
    targets: Tensor,
    *,
    lr: float,
    batch_size: int,
    seeds: Sequence[int],
    loss: str = "mse",
    momentum: float = 0.0,
    tol: float = 1e-4,
    max_iters: int = 100_000,
    min_iters: int = 0,
    sampler: str = "epoch",
    ema_decay: float = 0.9,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    check_every: int = 50,
    engine: str = "auto",
    fused_update: bool = False,
    progress: bool | Callable[[dict], None] = False,
    progress_every: float = 10.0,
    num_threads: int | None = None,
) -> list[TrainRecord]:
    """Train ``models[m]`` in place by SGD(η = lr, B = batch_size, μ = momentum) from batch seed ``seeds[m]``.

    Returns one :class:`~.train.TrainRecord` per member, in order, each what ``train(models[m], ...,
    seed=seeds[m])`` returns up to rounding (same status, iterations and loss curve); ``wall_time``
    is the ensemble's time until the member's stop was read. The members must be distinct modules
    of one architecture. ``check_every``: steps between host reads of the stop flags (the one
    synchronisation with a GPU; stopped members run on frozen until the next read, then leave the
    stack); it changes no result. ``engine``: ``auto`` takes ``mlp`` where the net qualifies
    (:func:`mlp_layers`), else ``vmap``. ``fused_update`` (mlp engine, μ = 0): x ← x − η δᵀa in one
    product, no gradient tensor; faster (paper FNN, B = 10: 0.6× the step time) but rounded once
    where ``train`` rounds twice, so long float32 runs drift apart from ``train``'s. ``progress``
    and ``num_threads`` as in ``train`` (progress is reported at the checks).
    """
    if num_threads is not None and num_threads < 1:
        raise TrainError(f"num_threads must be a positive integer or None, got {num_threads}")
    with torch_threads(num_threads), torch.no_grad():
        return _train_ensemble(list(models), inputs, targets, lr=lr, batch_size=batch_size, seeds=list(seeds),
                               loss=loss, momentum=momentum, tol=tol, max_iters=max_iters, min_iters=min_iters,
                               sampler=sampler, ema_decay=ema_decay, device=device, dtype=dtype,
                               check_every=check_every, engine=engine, fused_update=fused_update,
                               progress=progress, progress_every=progress_every)


def _check_members(models: list[nn.Module], seeds: list[int]) -> None:
    if not models:
        raise TrainError("train_ensemble needs at least one model")
    if len(seeds) != len(models):
        raise TrainError(f"{len(models)} models but {len(seeds)} seeds; give one batch seed per model")
    if len({id(m) for m in models}) != len(models):
        raise TrainError("the same module appears twice among the models; give each member its own copy")

    def layout(m: nn.Module):
        return type(m), [(k, v.shape) for k, v in m.named_parameters()], [(k, v.shape) for k, v in m.named_buffers()]

    first = layout(models[0])
    for i, m in enumerate(models[1:], 1):
        if layout(m) != first:
            raise TrainError(f"model {i} differs from model 0 in type or parameter/buffer shapes; an ensemble "
                             "trains copies of one architecture")


def _pick_engine(engine: str, model: nn.Module):
    if engine not in ENGINES:
        raise TrainError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    qualifies = mlp_layers(model) is not None
    if engine == "mlp" and not qualifies:
        raise TrainError(f"engine 'mlp' needs a Sequential of [Flatten] Linear (ReLU Linear)*, got "
                         f"{type(model).__name__}; use engine='vmap'")
    return _MLPEngine if engine == "mlp" or (engine == "auto" and qualifies) else _VmapEngine


def _train_ensemble(models, inputs, targets, *, lr, batch_size, seeds, loss, momentum, tol, max_iters, min_iters,
                    sampler, ema_decay, device, dtype, check_every, engine, fused_update, progress,
                    progress_every) -> list[TrainRecord]:
    lr, n = check_settings(inputs, targets, lr=lr, batch_size=batch_size, loss=loss, momentum=momentum, tol=tol,
                           max_iters=max_iters, min_iters=min_iters, ema_decay=ema_decay)
    _check_members(models, seeds)
    first = next(models[0].parameters())
    device = torch.device(device) if device is not None else first.device
    dtype = dtype or first.dtype
    if check_every < 1:
        raise TrainError(f"check_every must be a positive integer, got {check_every}")
    engine_cls = _pick_engine(engine, models[0])
    samplers = [BatchSampler(n, batch_size, sampler, seed) for seed in seeds]
    for m in models:
        m.to(device=device, dtype=dtype).train()
    step_engine = engine_cls(models[0], loss, lr, momentum, fused_update)
    x_full = inputs.to(device, dtype)
    x = step_engine.inputs(x_full)
    y = targets.to(device) if loss == "ce" else targets.to(device, dtype)
    shared = batch_size == n  # GD: every member sees the whole set, in order

    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k, _ in
              models[0].named_parameters()}
    buffers = {k: torch.stack([dict(m.named_buffers())[k].detach() for m in models]) for k, _ in
               models[0].named_buffers()}
    momenta = {k: torch.zeros_like(v) for k, v in params.items()} if momentum else {}
    members = len(models)
    slots = list(range(members))  # slots[j]: the member in row j of every stacked tensor
    active = torch.ones(members, dtype=torch.bool, device=device)
    ema = torch.full((members,), math.nan, dtype=torch.float64, device=device)
    stop_at = torch.zeros(members, dtype=torch.int64, device=device)
    status = torch.zeros(members, dtype=torch.int64, device=device)
    curves: list[list[float]] = [[] for _ in models]
    records: list[TrainRecord | None] = [None] * members
    report = _stderr_progress if progress is True else (progress or None)
    start = last_report = time.perf_counter()

    def finish(slot_row: int, member: int, code: int, iterations: int, ema_value: float, wall: float) -> None:
        model = models[member]
        for k, p in model.named_parameters():
            p.copy_(params[k][slot_row])
        for k, b in model.named_buffers():
            b.copy_(buffers[k][slot_row])
        name = _STATUS_NAMES[code]
        records[member] = TrainRecord(
            status=name, iterations=iterations, ema_loss=ema_value,
            final_loss=math.nan if name == "diverged" else full_loss(model, x_full, y, loss),
            lr=lr, batch_size=batch_size, n=n, momentum=momentum, sampler=sampler, tol=tol, max_iters=max_iters,
            seed=seeds[member], loss=loss, dtype=str(dtype).replace("torch.", ""), device=str(device),
            wall_time=wall, threads=torch.get_num_threads(), loss_curve=curves[member],
            state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        )

    t = 0
    while t < max_iters and slots:
        chunk = min(check_every, max_iters - t)
        plan = _batch_plan(samplers, chunk, device)
        losses = torch.empty(chunk, len(slots), dtype=dtype, device=device)
        for k in range(chunk):
            t += 1
            xb, yb = (x, y) if plan is None else (x[plan[k]], y[plan[k]])
            if buffers:  # BatchNorm statistics move in the forward: keep the frozen members' as they are
                kept = {key: b.clone() for key, b in buffers.items()}
            batch_losses, grads = step_engine.loss_and_grad(params, buffers, xb, yb, shared)
            if buffers:
                for key, b in buffers.items():
                    b.copy_(torch.where(_member_view(active, b), b, kept[key]))
            value = batch_losses.double()
            bad = ~torch.isfinite(value) | (value > DIVERGENCE_LOSS)
            stepping = active & ~bad
            step_engine.update(params, momenta, grads, stepping)
            moved = value if t == 1 else ema * ema_decay + value * (1.0 - ema_decay)
            ema = torch.where(stepping, moved, ema)
            diverged = active & bad
            converged = stepping & (ema < tol) if t >= min_iters else torch.zeros_like(stepping)
            ended = diverged | converged
            stop_at = torch.where(ended, t, stop_at)
            status = torch.where(diverged, _DIVERGED, torch.where(converged, _CONVERGED, status))
            active = active & ~ended
            losses[k] = batch_losses

        # The host reads the flags: one synchronisation per chunk.
        chunk_start = t - chunk
        rows = losses.T.cpu().tolist()
        stop_list, status_list, ema_list = stop_at.tolist(), status.tolist(), ema.tolist()
        wall = time.perf_counter() - start
        keep = []
        for j, member in enumerate(slots):
            stopped = stop_list[j] > 0
            curves[member].extend(rows[j][: stop_list[j] - chunk_start] if stopped else rows[j])
            if stopped or t == max_iters:
                finish(j, member, status_list[j], stop_list[j] if stopped else t, ema_list[j], wall)
            else:
                keep.append(j)
        if len(keep) < len(slots):
            rows_kept = torch.tensor(keep, dtype=torch.int64, device=device)
            params = {k: v.index_select(0, rows_kept) for k, v in params.items()}
            buffers = {k: v.index_select(0, rows_kept) for k, v in buffers.items()}
            momenta = {k: v.index_select(0, rows_kept) for k, v in momenta.items()}
            active, ema = active.index_select(0, rows_kept), ema.index_select(0, rows_kept)
            stop_at, status = stop_at.index_select(0, rows_kept), status.index_select(0, rows_kept)
            slots = [slots[j] for j in keep]
            samplers = [samplers[j] for j in keep]
        now = time.perf_counter()
        if report is not None and slots and now - last_report >= progress_every:
            last_report = now
            running_ema = [ema_list[j] for j in keep]
            report({"iteration": t, "max_iters": max_iters, "running": len(slots), "members": members,
                    "ema_loss": min(running_ema), "iters_per_second": t / (now - start)})
    return records


def _batch_plan(samplers: list[BatchSampler], steps: int, device: torch.device) -> list[Tensor] | None:
    """Each step's (members, B) batch indices on the device, moved in one copy; None for GD."""
    per_step = [[s.next() for s in samplers] for _ in range(steps)]
    if per_step[0][0] is None:
        return None
    stacked = [torch.stack(batches) for batches in per_step]
    flat = torch.cat([s.reshape(-1) for s in stacked])
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    views, offset = [], 0
    for s in stacked:  # the epoch's last slice may be shorter
        views.append(flat[offset: offset + s.numel()].view(s.shape))
        offset += s.numel()
    return views
