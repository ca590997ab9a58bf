"""GD and SGD as the authors ran them (PAPER.md §3): constant lr, optional heavy-ball momentum,
stop when the EMA of the mini-batch loss falls below tol, or at an iteration cap.

Update (PyTorch's SGD, no weight decay): v ← μ v + g_ξ(x), x ← x − η v, with
g_ξ the gradient of the mean per-sample loss over the batch ξ (μ = 0: plain SGD; B = n: GD).
EMA: ema ← 0.9·ema + 0.1·loss_ξ, started at the first batch loss (as the authors' trainer).

Samplers: ``epoch`` (the authors'): reshuffle once per epoch and take consecutive slices of B, the
last slice of an epoch smaller when B does not divide n; ``uniform``: an independent uniformly
random B-subset (without replacement) every step, the sampling of the theory.

A run ends with status ``converged`` (EMA < tol), ``max_iters`` (cap reached), ``diverged``
(a non-finite or exploding batch loss; recorded, never raised) or ``stopped`` (by the callback).

Long runs checkpoint: with ``checkpoint=PATH`` the full training state (parameters, momentum
buffers, sampler, EMA, loss curve) is written atomically every ``checkpoint_every`` seconds, an
interrupted run called again with the same path continues where the last checkpoint left it, with
the same result as an uninterrupted run, and the file is removed when the run ends.

>>> import torch
>>> from stabcheck.experiments.models import FNN
>>> torch.manual_seed(0) and None
>>> x, y = torch.rand(20, 1, 4, 4), torch.eye(3)[torch.arange(20) % 3]
>>> rec = train(FNN(16, (32,), 3), x, y, lr=0.5, batch_size=20, tol=1e-3, max_iters=3000, progress=False,
...             num_threads=1)
>>> rec.status, rec.ema_loss < 1e-3
('converged', True)
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..curvature.bounds import check_batch, check_lr
from ..curvature.problem import LOSSES, per_sample_loss
from ..curvature.threads import torch_threads

#: Bumped whenever a change would alter the trained parameters; part of every cache key.
TRAINER_VERSION = "1"

SAMPLERS = ("epoch", "uniform")

#: A batch loss above this (or non-finite) counts as divergence; initial MSE losses are O(1).
DIVERGENCE_LOSS = 1e6


class TrainError(ValueError):
    """Training settings that cannot be run (the message says what to change)."""


@dataclass
class TrainRecord:
    """What a training run did: settings, status, loss curve and the final parameters (CPU state_dict).

    ``final_loss`` is the full training loss with the net in eval mode (what the measurements see),
    NaN after divergence. ``loss_curve`` holds the mini-batch loss of every iteration.
    """

    status: str
    iterations: int
    ema_loss: float
    final_loss: float
    lr: float
    batch_size: int
    n: int
    momentum: float
    sampler: str
    tol: float
    max_iters: int
    seed: int
    loss: str
    dtype: str
    device: str
    wall_time: float
    threads: int
    loss_curve: list[float] = field(repr=False, default_factory=list)
    state: dict[str, Tensor] = field(repr=False, default_factory=dict)
    trainer_version: str = TRAINER_VERSION

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def iters_per_second(self) -> float:
        return self.iterations / self.wall_time if self.wall_time > 0 else math.inf

    def as_dict(self) -> dict:
        """JSON-ready summary (no parameters, no loss curve)."""
        d = asdict(self)
        d.pop("state")
        d.pop("loss_curve")
        d["iters_per_second"] = self.iters_per_second
        return d


class BatchSampler:
    """Deterministic batch indices from a seed: ``epoch`` reshuffling or ``uniform`` B-subsets.

    >>> s = BatchSampler(5, 2, "epoch", seed=0)
    >>> sorted(int(i) for _ in range(3) for i in s.next())
    [0, 1, 2, 3, 4]
    """

    def __init__(self, n: int, batch_size: int, sampler: str = "epoch", seed: int = 0):
        if sampler not in SAMPLERS:
            raise TrainError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
        check_batch(n, batch_size)
        self.n, self.batch_size, self.sampler = n, batch_size, sampler
        self.generator = torch.Generator().manual_seed(seed)
        self._order: Tensor | None = None
        self._pos = n

    def next(self) -> Tensor | None:
        """Indices of the next batch; None for the whole data set in its order (GD)."""
        if self.batch_size == self.n:
            return None
        if self.sampler == "uniform":
            return torch.randperm(self.n, generator=self.generator)[: self.batch_size]
        if self._pos >= self.n:
            self._order = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        batch = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return batch

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self._order, "pos": self._pos}

    def restore(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order, self._pos = state["order"], state["pos"]


def _stderr_progress(info: dict) -> None:
    print(
        f"[train] it {info['iteration']}/{info['max_iters']}  ema {info['ema_loss']:.3e}  "
        f"{info['iters_per_second']:.0f} it/s  lr {info['lr']:g} B {info['batch_size']} mu {info['momentum']:g}",
        file=sys.stderr, flush=True,
    )


def train(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    lr: float,
    batch_size: int,
    loss: str = "mse",
    momentum: float = 0.0,
    tol: float = 1e-4,
    max_iters: int = 100_000,
    min_iters: int = 0,
    seed: int = 0,
    sampler: str = "epoch",
    ema_decay: float = 0.9,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool | Callable[[dict], None] = True,
    progress_every: float = 10.0,
    callback: Callable[[int, nn.Module, float], bool | None] | None = None,
    callback_every: int = 1,
    num_threads: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: float = 60.0,
) -> TrainRecord:
    """Train ``model`` in place by SGD(η = lr, B = batch_size, μ = momentum); GD is B = n.

    ``min_iters``: never stop on tol before this many iterations (a restart from a minimum would
    otherwise stop at once). ``callback(t, model, batch_loss)`` runs after every ``callback_every``-th
    step (t = steps done; the model is in train mode, switch to eval and back for measurements) and
    ends the run with status ``stopped`` when it returns True. ``progress``: True prints to stderr
    every ``progress_every`` seconds, a callable receives the same dict, False is silent.
    ``num_threads``: torch's CPU threads during the run (restored after). Small nets are
    overhead-bound, and two threads on a busy 2-core machine ran 16× slower than one.
    ``checkpoint``: a file for the training state, written every ``checkpoint_every`` seconds (0: every
    iteration) and resumed from when it exists at the start; removed when the run ends. A checkpoint of
    other settings (lr, B, μ, seed, sampler, n, loss) is refused with an error naming the file.
    """
    if num_threads is not None and num_threads < 1:
        raise TrainError(f"num_threads must be a positive integer or None, got {num_threads}")
    with torch_threads(num_threads):
        return _train(model, inputs, targets, lr=lr, batch_size=batch_size, loss=loss, momentum=momentum, tol=tol,
                      max_iters=max_iters, min_iters=min_iters, seed=seed, sampler=sampler, ema_decay=ema_decay,
                      device=device, dtype=dtype, progress=progress, progress_every=progress_every,
                      callback=callback, callback_every=callback_every,
                      checkpoint=Path(checkpoint) if checkpoint is not None else None,
                      checkpoint_every=checkpoint_every)


def check_settings(inputs: Tensor, targets: Tensor, *, lr, batch_size, loss, momentum, tol, max_iters, min_iters,
                   ema_decay) -> tuple[float, int]:
    """Refuse settings no trainer can run (TrainError saying what to change); returns (η, n)."""
    lr = check_lr(lr)
    n = int(inputs.shape[0])
    if targets.shape[0] != n:
        raise TrainError(f"inputs have {n} samples but targets have {targets.shape[0]}")
    if loss not in LOSSES:
        raise TrainError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    check_batch(n, batch_size)
    if not 0.0 <= momentum < 1.0:
        raise TrainError(f"momentum must lie in [0, 1), got {momentum}")
    if not tol > 0 or max_iters < 1 or min_iters < 0:
        raise TrainError(f"need tol > 0, max_iters ≥ 1, min_iters ≥ 0; got tol={tol}, max_iters={max_iters}, "
                         f"min_iters={min_iters}")
    if not 0.0 <= ema_decay < 1.0:
        raise TrainError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    return lr, n


def _train(model, inputs, targets, *, lr, batch_size, loss, momentum, tol, max_iters, min_iters, seed, sampler,
           ema_decay, device, dtype, progress, progress_every, callback, callback_every, checkpoint,
           checkpoint_every) -> TrainRecord:
    lr, n = check_settings(inputs, targets, lr=lr, batch_size=batch_size, loss=loss, momentum=momentum, tol=tol,
                           max_iters=max_iters, min_iters=min_iters, ema_decay=ema_decay)
    if callback_every < 1:
        raise TrainError(f"callback_every must be at least 1, got {callback_every}")

    first = next(model.parameters())
    device = torch.device(device) if device is not None else first.device
    dtype = dtype or first.dtype
    model.to(device=device, dtype=dtype)
    x = inputs.to(device, dtype)
    y = targets.to(device) if loss == "ce" else targets.to(device, dtype)
    batches = BatchSampler(n, batch_size, sampler, seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    report = _stderr_progress if progress is True else (progress or None)

    model.train()
    curve: list[float] = []
    ema = math.nan
    status = "max_iters"
    settings = {"lr": lr, "batch_size": batch_size, "momentum": momentum, "seed": seed, "sampler": sampler, "n": n,
                "loss": loss, "ema_decay": ema_decay, "dtype": str(dtype)}
    done, earlier_wall = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        done, ema, curve, earlier_wall = _resume(checkpoint, settings, model, opt, batches)
    start = last_report = last_save = time.perf_counter()
    it = done
    for it in range(done + 1, max_iters + 1):
        idx = batches.next()
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        batch_loss = per_sample_loss(loss, model(xb), yb).mean()
        value = float(batch_loss.detach())
        curve.append(value)
        if not math.isfinite(value) or value > DIVERGENCE_LOSS:
            status = "diverged"
            break
        batch_loss.backward()
        opt.step()
        ema = value if it == 1 else ema_decay * ema + (1.0 - ema_decay) * value
        if callback is not None and it % callback_every == 0 and callback(it, model, value):
            status = "stopped"
            break
        if ema < tol and it >= min_iters:
            status = "converged"
            break
        now = time.perf_counter()
        if checkpoint is not None and now - last_save >= checkpoint_every:
            last_save = now
            _save_checkpoint(checkpoint, settings, it, model, opt, batches, ema, curve, earlier_wall + now - start)
        if report is not None and now - last_report >= progress_every:
            last_report = now
            report({"iteration": it, "max_iters": max_iters, "ema_loss": ema, "lr": lr, "batch_size": batch_size,
                    "momentum": momentum, "iters_per_second": (it - done) / (now - start)})
    wall = earlier_wall + time.perf_counter() - start
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)

    final = math.nan
    if status != "diverged":
        final = full_loss(model, x, y, loss)
    return TrainRecord(
        status=status, iterations=it, ema_loss=ema, final_loss=final, lr=lr, batch_size=batch_size, n=n,
        momentum=momentum, sampler=sampler, tol=tol, max_iters=max_iters, seed=seed, loss=loss,
        dtype=str(dtype).replace("torch.", ""), device=str(device), wall_time=wall, threads=torch.get_num_threads(),
        loss_curve=curve,
        state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    )


def _save_checkpoint(path: Path, settings: dict, it: int, model: nn.Module, opt, batches: BatchSampler, ema: float,
                     curve: list[float], wall: float) -> None:
    blob = {"settings": settings, "iteration": it, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "sampler": batches.state(), "ema": ema, "curve": curve, "wall_time": wall}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)  # a kill during the write leaves the previous checkpoint intact
    finally:
        tmp.unlink(missing_ok=True)


def _resume(path: Path, settings: dict, model: nn.Module, opt, batches: BatchSampler):
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever broke the file, the remedy is the same
        raise TrainError(f"checkpoint {path} cannot be read ({type(err).__name__}); delete it to train from the "
                         "start") from err
    if blob.get("settings") != settings:
        raise TrainError(f"checkpoint {path} belongs to other settings ({blob.get('settings')}, this run: {settings}); "
                         "delete it or pass another checkpoint path")
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    batches.restore(blob["sampler"])
    return blob["iteration"], blob["ema"], list(blob["curve"]), blob["wall_time"]


@torch.no_grad()
def full_loss(model: nn.Module, inputs: Tensor, targets: Tensor, loss: str = "mse", chunk: int = 1000) -> float:
    """f(x) = (1/n) Σ_i f_i(x) with the net in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        total = sum(float(per_sample_loss(loss, model(inputs[i:i + chunk]), targets[i:i + chunk]).sum())
                    for i in range(0, inputs.shape[0], chunk))
    finally:
        model.train(was_training)
    return total / inputs.shape[0]
