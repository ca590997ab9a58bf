"""What every trainer of this package shares: settings, batch sampler, stop rule, record.

:func:`~.train.train` (autograd and ``torch.optim.SGD``, one run, callback and checkpoints) and
:func:`~.ensemble.train_ensemble` (M runs stacked) are the two trainers; both check their settings
with :class:`TrainSettings`, draw batches from :class:`BatchSampler`, stop by :class:`StopRule` and
describe the run by :meth:`TrainSettings.record`, so what a run is and when it ends is written once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..curvature.bounds import check_batch, check_lr
from ..curvature.problem import LOSSES, per_sample_loss

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
    NaN after divergence. ``loss_curve`` holds the mini-batch loss of every iteration. ``engine``:
    what computed the steps (``autograd``: :func:`train`; ``mlp`` or ``vmap``: :func:`~.ensemble.train_ensemble`).
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
    engine: str
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


@dataclass(frozen=True)
class TrainSettings:
    """The optimiser and the stopping rule of a run, checked when made (:class:`TrainError` says what to change).

    >>> TrainSettings(lr=0.1, batch_size=10, momentum=0.9).momentum
    0.9
    """

    lr: float
    batch_size: int
    loss: str = "mse"
    momentum: float = 0.0
    tol: float = 1e-4
    max_iters: int = 100_000
    min_iters: int = 0
    sampler: str = "epoch"
    ema_decay: float = 0.9

    def __post_init__(self):
        object.__setattr__(self, "lr", check_lr(self.lr))
        if self.loss not in LOSSES:
            raise TrainError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.sampler not in SAMPLERS:
            raise TrainError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
        if not 0.0 <= self.momentum < 1.0:
            raise TrainError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not self.tol > 0 or self.max_iters < 1 or self.min_iters < 0:
            raise TrainError(f"need tol > 0, max_iters ≥ 1, min_iters ≥ 0; got tol={self.tol}, "
                             f"max_iters={self.max_iters}, min_iters={self.min_iters}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")

    def check_data(self, inputs: Tensor, targets: Tensor) -> int:
        """n, after checking that inputs and targets pair up and that B fits n."""
        n = int(inputs.shape[0])
        if targets.shape[0] != n:
            raise TrainError(f"inputs have {n} samples but targets have {targets.shape[0]}")
        check_batch(n, self.batch_size)
        return n

    def record(self, model: nn.Module, x: Tensor, y: Tensor, *, status: str, iterations: int, ema: float, seed: int,
               curve: list[float], wall: float, device: torch.device, engine: str) -> TrainRecord:
        """The record of a run that ended with ``model`` as it is (x, y: the training data where it trained)."""
        return TrainRecord(
            status=status, iterations=iterations, ema_loss=ema,
            final_loss=math.nan if status == "diverged" else full_loss(model, x, y, self.loss),
            lr=self.lr, batch_size=self.batch_size, n=int(x.shape[0]), momentum=self.momentum, sampler=self.sampler,
            tol=self.tol, max_iters=self.max_iters, seed=seed, loss=self.loss,
            dtype=str(x.dtype).replace("torch.", ""), device=str(device), wall_time=wall,
            threads=torch.get_num_threads(), engine=engine, loss_curve=curve,
            state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        )


class StopRule:
    """When a run ends: one rule for :func:`~.train.train` (one run, Python numbers on the host) and
    :func:`~.ensemble.train_ensemble` (M runs, (M,) tensors on the device), written once over
    operations that both kinds of number have.

    ``step(t, losses)`` takes step t's float64 batch loss(es) of the running run(s) and says which
    step: a non-finite loss or one above ``DIVERGENCE_LOSS`` ends a run ``diverged`` (no update); the
    others move ema ← d·ema + (1 − d)·loss (started at the first loss) and end ``converged`` when
    ema < tol, from ``min_iters`` on. A run still going at the cap ends ``max_iters``.
    """

    RUNNING, CONVERGED, DIVERGED = 0, 1, 2
    NAMES = {RUNNING: "max_iters", CONVERGED: "converged", DIVERGED: "diverged"}

    def __init__(self, settings: TrainSettings, members: int | None = None, device: torch.device | None = None):
        """``members`` None: one run in Python numbers (no tensor work per step: small nets are overhead-bound)."""
        self.settings = settings
        if members is None:
            self.active, self.ema, self.stop_at, self.status = True, math.nan, 0, self.RUNNING
        else:
            self.active = torch.ones(members, dtype=torch.bool, device=device)
            self.ema = torch.full((members,), math.nan, dtype=torch.float64, device=device)
            self.stop_at = torch.zeros(members, dtype=torch.int64, device=device)
            self.status = torch.zeros(members, dtype=torch.int64, device=device)

    def step(self, t: int, losses: float | Tensor) -> bool | Tensor:
        s = self.settings
        finite_and_small = (losses > -math.inf) & (losses <= DIVERGENCE_LOSS)  # False for NaN
        stepping = self.active & finite_and_small
        moved = losses if t == 1 else self.ema * s.ema_decay + losses * (1.0 - s.ema_decay)
        self.ema = _select(stepping, moved, self.ema)
        diverged = self.active & _negate(finite_and_small)
        converged = stepping & (self.ema < s.tol) & (t >= s.min_iters)
        ended = diverged | converged
        self.stop_at = _select(ended, t, self.stop_at)
        self.status = _select(diverged, self.DIVERGED, _select(converged, self.CONVERGED, self.status))
        self.active = self.active & _negate(ended)
        return stepping

    def keep(self, rows: Tensor) -> None:
        """Keep only these runs (indices into the current ones; M runs only)."""
        for name in ("active", "ema", "stop_at", "status"):
            setattr(self, name, getattr(self, name).index_select(0, rows))

    def read(self) -> list[tuple[int, str, float]]:
        """Per run on the host: (stopping iteration or 0 while running, status name, ema)."""
        if not isinstance(self.ema, Tensor):
            return [(self.stop_at, self.NAMES[self.status], self.ema)]
        return [(t, self.NAMES[code], ema) for t, code, ema in
                zip(self.stop_at.tolist(), self.status.tolist(), self.ema.tolist())]


def _select(condition, if_true, if_false):
    """``torch.where`` for tensors, ``if … else`` for Python numbers."""
    if isinstance(condition, Tensor):
        return torch.where(condition, if_true, if_false)
    return if_true if condition else if_false


def _negate(condition):
    return ~condition if isinstance(condition, Tensor) else not condition


def place(models: list[nn.Module], inputs: Tensor, targets: Tensor, loss: str, device, dtype):
    """Move the models and the data to ``device`` and ``dtype`` (default: the first model's); returns
    (device, dtype, inputs, targets), the targets as labels for ``ce`` and in ``dtype`` otherwise."""
    first = next(models[0].parameters())
    device = torch.device(device) if device is not None else first.device
    dtype = dtype or first.dtype
    for model in models:
        model.to(device=device, dtype=dtype)
    x = inputs.to(device, dtype)
    y = targets.to(device) if loss == "ce" else targets.to(device, dtype)
    return device, dtype, x, y


def check_threads(num_threads: int | None) -> None:
    if num_threads is not None and num_threads < 1:
        raise TrainError(f"num_threads must be a positive integer or None, got {num_threads}")


def progress_reporter(progress: bool | Callable[[dict], None], printer: Callable[[dict], None]):
    """The progress callable: ``printer`` (to stderr) for True, the caller's callable, or None for False."""
    return printer if progress is True else (progress or None)


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
