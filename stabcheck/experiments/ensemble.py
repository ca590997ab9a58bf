"""Several seeds of one SGD setting trained together, each member as :func:`~.train.train` trains it alone.

The members share the data and (η, B, μ, tol, sampler); member m has its own model and seed, so its
own ``BatchSampler(n, B, sampler, seed_m)``. Every step evaluates each running member on its own
batch and applies ``train``'s stop rule (:class:`~.sgd.StopRule`): a non-finite batch loss or one above ``DIVERGENCE_LOSS`` ends the
member (``diverged``, no update); otherwise v ← μ v + g, x ← x − η v, then the float64
ema ← d·ema + (1 − d)·loss and the member ends ``converged`` when ema < tol (from ``min_iters`` on),
or ``max_iters`` at the cap. The flags live on the device: a member that stops is frozen by masking
from that step on, and the host reads them only every ``check_every`` steps (then drops the
stopped members from the stack), yet each record holds the exact stopping iteration. No callback,
no checkpoints (``train`` has both).

Engines (:mod:`~.stacked`): ``mlp`` for ``[Flatten] Linear (ReLU Linear)*`` nets such as the
paper's FNN: batched matmuls and a written-out backward; ``vmap``: any model (buffers such as
BatchNorm statistics included) by ``functional_call`` under ``vmap(grad_and_value)``. Both equal
``train`` up to rounding, and a member's result does not depend on the others; where the mlp
engine is bit-identical to ``train`` (:func:`~.stacked.matches_train`) the minima cache trains
seeds together. What was measured (bit-identity, rounding gaps, cost per step of 5 members against
one run) is in benchmarks/README.md, "Training several seeds at once".

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

import sys
import time
from collections.abc import Sequence
from typing import Callable

import torch
from torch import Tensor, nn

from ..curvature.threads import torch_threads
from .sgd import (BatchSampler, StopRule, TrainError, TrainRecord, TrainSettings, check_threads, place,
                  progress_reporter)
from .stacked import BATCHED_GRADIENT_BYTES, member_view, pick_engine

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
    batched_gradient_bytes: int = BATCHED_GRADIENT_BYTES,
) -> list[TrainRecord]:
    """Train ``models[m]`` in place by SGD(η = lr, B = batch_size, μ = momentum) from batch seed ``seeds[m]``.

    Returns one :class:`~.train.TrainRecord` per member, in order, each what ``train(models[m], ...,
    seed=seeds[m])`` returns up to rounding (same status, iterations and loss curve); ``wall_time``
    is the ensemble's time until the member's stop was read. The members must be distinct modules
    of one architecture. ``check_every``: steps between host reads of the stop flags (the one
    synchronisation with a GPU; stopped members run on frozen until the next read, then leave the
    stack); it changes no result. ``engine``: ``auto`` takes ``mlp`` where the net qualifies
    (:func:`~.stacked.mlp_layers`), else ``vmap``. ``fused_update`` (mlp engine, μ = 0): x ← x − η δᵀa
    in one product, no gradient tensor; faster but rounded once where ``train`` rounds twice, so long
    float32 runs drift apart from ``train``'s. ``progress``
    and ``num_threads`` as in ``train`` (progress is reported at the checks). ``batched_gradient_bytes``:
    the mlp engine's weight gradients of all members in one product up to this many bytes of stacked
    weights, member by member above (a memory-traffic choice; both give the same result).
    """
    check_threads(num_threads)
    settings = TrainSettings(lr=lr, batch_size=batch_size, loss=loss, momentum=momentum, tol=tol, max_iters=max_iters,
                             min_iters=min_iters, sampler=sampler, ema_decay=ema_decay)
    settings.check_data(inputs, targets)
    models, seeds = list(models), list(seeds)
    _check_members(models, seeds)
    if check_every < 1:
        raise TrainError(f"check_every must be a positive integer, got {check_every}")
    engine_cls = pick_engine(engine, models[0])
    step_engine = engine_cls(models[0], loss, settings.lr, momentum, fused_update, batched_gradient_bytes)
    with torch_threads(num_threads), torch.no_grad():
        return _train_ensemble(models, inputs, targets, settings, seeds, step_engine, device=device, dtype=dtype,
                               check_every=check_every, report=progress_reporter(progress, _stderr_progress),
                               progress_every=progress_every)


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


def _train_ensemble(models, inputs, targets, settings: TrainSettings, seeds, step_engine, *, device, dtype,
                    check_every, report, progress_every) -> list[TrainRecord]:
    st = settings
    device, dtype, x_full, y = place(models, inputs, targets, st.loss, device, dtype)
    for m in models:
        m.train()
    n = int(x_full.shape[0])
    samplers = [BatchSampler(n, st.batch_size, st.sampler, seed) for seed in seeds]
    x = step_engine.inputs(x_full)
    shared = st.batch_size == n  # GD: every member sees the whole set, in order

    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k, _ in
              models[0].named_parameters()}
    buffers = {k: torch.stack([dict(m.named_buffers())[k].detach() for m in models]) for k, _ in
               models[0].named_buffers()}
    momenta = {k: torch.zeros_like(v) for k, v in params.items()} if st.momentum else {}
    members = len(models)
    slots = list(range(members))  # slots[j]: the member in row j of every stacked tensor
    rule = StopRule(st, members, device)
    curves: list[list[float]] = [[] for _ in models]
    records: list[TrainRecord | None] = [None] * members
    start = last_report = time.perf_counter()

    def finish(slot_row: int, member: int, status: str, iterations: int, ema: float, wall: float) -> None:
        model = models[member]
        for k, p in model.named_parameters():
            p.copy_(params[k][slot_row])
        for k, b in model.named_buffers():
            b.copy_(buffers[k][slot_row])
        records[member] = st.record(model, x_full, y, status=status, iterations=iterations, ema=ema,
                                    seed=seeds[member], curve=curves[member], wall=wall, device=device,
                                    engine=step_engine.name)

    t = 0
    while t < st.max_iters and slots:
        chunk = min(check_every, st.max_iters - t)
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
                    b.copy_(torch.where(member_view(rule.active, b), b, kept[key]))
            stepping = rule.step(t, batch_losses.double())
            step_engine.update(params, momenta, grads, stepping)
            losses[k] = batch_losses

        # The host reads the flags: one synchronisation per chunk.
        chunk_start = t - chunk
        rows = losses.T.cpu().tolist()
        ends = rule.read()
        wall = time.perf_counter() - start
        keep = []
        for j, member in enumerate(slots):
            stop_at, status, ema = ends[j]
            curves[member].extend(rows[j][: stop_at - chunk_start] if stop_at else rows[j])
            if stop_at or t == st.max_iters:
                finish(j, member, status, stop_at or t, ema, wall)
            else:
                keep.append(j)
        if len(keep) < len(slots):
            rows_kept = torch.tensor(keep, dtype=torch.int64, device=device)
            params = {k: v.index_select(0, rows_kept) for k, v in params.items()}
            buffers = {k: v.index_select(0, rows_kept) for k, v in buffers.items()}
            momenta = {k: v.index_select(0, rows_kept) for k, v in momenta.items()}
            rule.keep(rows_kept)
            slots = [slots[j] for j in keep]
            samplers = [samplers[j] for j in keep]
        now = time.perf_counter()
        if report is not None and slots and now - last_report >= progress_every:
            last_report = now
            report({"iteration": t, "max_iters": st.max_iters, "running": len(slots), "members": members,
                    "ema_loss": min(ends[j][2] for j in keep), "iters_per_second": t / (now - start)})
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
