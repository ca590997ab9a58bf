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

import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..curvature.problem import per_sample_loss
from ..curvature.threads import torch_threads
from ..files import write_atomic
from .sgd import (TRAINER_VERSION, BatchSampler, StopRule, TrainError, TrainRecord, TrainSettings, check_threads,
                  full_loss, place, progress_reporter)

__all__ = ["TRAINER_VERSION", "BatchSampler", "TrainError", "TrainRecord", "TrainSettings", "full_loss", "train"]


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
    check_threads(num_threads)
    if callback_every < 1:
        raise TrainError(f"callback_every must be at least 1, got {callback_every}")
    settings = TrainSettings(lr=lr, batch_size=batch_size, loss=loss, momentum=momentum, tol=tol, max_iters=max_iters,
                             min_iters=min_iters, sampler=sampler, ema_decay=ema_decay)
    settings.check_data(inputs, targets)
    with torch_threads(num_threads):
        return _train(model, inputs, targets, settings, seed=seed, device=device, dtype=dtype,
                      report=progress_reporter(progress, _stderr_progress), progress_every=progress_every,
                      callback=callback, callback_every=callback_every,
                      checkpoint=Path(checkpoint) if checkpoint is not None else None,
                      checkpoint_every=checkpoint_every)


def _train(model, inputs, targets, settings: TrainSettings, *, seed, device, dtype, report, progress_every, callback,
           callback_every, checkpoint, checkpoint_every) -> TrainRecord:
    s = settings
    device, dtype, x, y = place([model], inputs, targets, s.loss, device, dtype)
    n = int(x.shape[0])
    batches = BatchSampler(n, s.batch_size, s.sampler, seed)
    # PyTorch's own SGD is the update of record (stacked.sgd_update writes it for stacked members), and
    # the checkpoints of running jobs hold its state.
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum)
    rule = StopRule(s)  # on the host: the loss is read there every step anyway

    model.train()
    curve: list[float] = []
    status = None
    blob_settings = {"lr": s.lr, "batch_size": s.batch_size, "momentum": s.momentum, "seed": seed,
                     "sampler": s.sampler, "n": n, "loss": s.loss, "ema_decay": s.ema_decay, "dtype": str(dtype)}
    done, earlier_wall = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        done, ema, curve, earlier_wall = _resume(checkpoint, blob_settings, model, opt, batches)
        rule.ema = ema
    start = last_report = last_save = time.perf_counter()
    it = done
    for it in range(done + 1, s.max_iters + 1):
        idx = batches.next()
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        batch_loss = per_sample_loss(s.loss, model(xb), yb).mean()
        value = float(batch_loss.detach())
        curve.append(value)
        if not rule.step(it, value):
            break  # diverged: no update
        batch_loss.backward()
        opt.step()
        if callback is not None and it % callback_every == 0 and callback(it, model, value):
            status = "stopped"
            break
        if not rule.active:
            break  # converged
        now = time.perf_counter()
        if checkpoint is not None and now - last_save >= checkpoint_every:
            last_save = now
            _save_checkpoint(checkpoint, blob_settings, it, model, opt, batches, rule.ema, curve,
                             earlier_wall + now - start)
        if report is not None and now - last_report >= progress_every:
            last_report = now
            report({"iteration": it, "max_iters": s.max_iters, "ema_loss": rule.ema, "lr": s.lr,
                    "batch_size": s.batch_size, "momentum": s.momentum,
                    "iters_per_second": (it - done) / (now - start)})
    wall = earlier_wall + time.perf_counter() - start
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    (_, name, ema), = rule.read()
    return s.record(model, x, y, status=status or name, iterations=it, ema=ema, seed=seed, curve=curve, wall=wall,
                    device=device, engine="autograd")


def _save_checkpoint(path: Path, settings: dict, it: int, model: nn.Module, opt, batches: BatchSampler, ema: float,
                     curve: list[float], wall: float) -> None:
    blob = {"settings": settings, "iteration": it, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "sampler": batches.state(), "ema": ema, "curve": curve, "wall_time": wall}
    write_atomic(path, lambda fh: torch.save(blob, fh))  # a kill during the write leaves the previous checkpoint


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
