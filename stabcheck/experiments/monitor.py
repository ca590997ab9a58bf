"""Watch stability while training: a, and on request s and Theorem 1, every ``every`` steps of any loop.

:class:`StabilityMonitor` is called as ``monitor(t, model, batch_loss)`` (the signature of
:func:`~stabcheck.experiments.train.train`'s ``callback``, so ``train(..., callback=monitor)`` works
unchanged); at every ``every``-th step it measures, on a fixed measurement set, the sharpness a and,
when asked, the non-uniformity s and Theorem 1 at the run's (η, B), with the box 2/η and
√(B(n−1)/(n−B))/η and the relative margins to both edges (1 − a·η/2 and 1 − s/bound: negative means
outside). Each check becomes one JSON object, appended as one line to ``log`` with a single write;
``python -m stabcheck monitor LOG`` draws the log, also while the run is going.

Warm starts. Lanczos for a, s and (sample-form) Theorem 1's μ starts from the previous check's top
eigenvector, which costs few products while the iterate moves little. The residual certifies an eigenpair, not that it is the top
one: a start without a component on the top eigenvector converges to a lower eigenvalue, certified.
So a warm value below the previous check's is not taken on trust: the check then also solves from the
seeded random start and keeps the larger certified value (Ritz values are lower bounds of λ_max, so
the larger is the better one). A top eigenvector that appears from a new direction while the tracked
eigenvalue still rises is found only by such a cold solve; ``warm=False`` makes every check cold.

>>> import torch
>>> from stabcheck.experiments.models import FNN
>>> from stabcheck.experiments.train import train
>>> torch.manual_seed(0) and None
>>> x, y = torch.rand(20, 1, 4, 4), torch.eye(3)[torch.arange(20) % 3]
>>> monitor = StabilityMonitor(x, y, lr=0.5, every=100, tol=1e-3)
>>> rec = train(FNN(16, (16,), 3), x, y, lr=0.5, batch_size=20, max_iters=300, progress=False, callback=monitor)
>>> [r["iteration"] for r in monitor.records], monitor.records[-1]["a_bound"]
([100, 200, 300], 4.0)
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor, nn

from ..curvature.bounds import check_batch, check_lr, nonuniformity_bound, sharpness_bound
from ..curvature.criteria import (
    NonUniformityResult, SharpnessResult, SolveOptions, choose_form, fingerprint, prepare_sample)
from ..curvature.criteria import theorem1 as solve_theorem1
from ..curvature.results import FULL, SAMPLE
from ..curvature.sample_space import solve_sample
from ..curvature.eigen import EigenResult, lanczos
from ..curvature.operators import HessianOperator, SigmaOperator
from ..curvature.problem import Problem
from ..curvature.threads import measurement_threads


class MonitorError(ValueError):
    """Monitor settings that cannot be used (the message says what to change)."""


class StabilityWarning(UserWarning):
    """A margin of the stability box fell below the monitor's ``warn_below``."""


def _finite(value):
    """Standard JSON has no NaN or infinity: those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StabilityMonitor:
    """Measures a (and s, Theorem 1 on request) of a training run every ``every`` steps, warm-started.

    Args:
        inputs, targets: the full training set (its size is the n of the box and of Theorem 1).
        lr, batch_size: the run's η and B (None: GD, B = n).
        loss: the per-sample loss ("mse", "half_sq" or "ce").
        every: measure at the steps t with t % every == 0 (``check`` measures at any step).
        s, theorem1: also measure s = λ_max(Σ)^½ and Theorem 1 (:func:`~stabcheck.curvature.criteria.theorem1`
            at (η, B), reusing a's solve).
        subset: where a, s and Theorem 1 are measured: None for the full training set, an int m for a fixed
            random m-subset (drawn from ``seed``), or the sample indices. The records say which.
        log: a JSON-lines file that every check is appended to (created with its folder; an existing
            file is continued, so name a new one per run).
        warn_below, stop_below: relative margins (e.g. 0.05 = 5% from an edge); a check whose smallest
            margin is below ``warn_below`` warns (:class:`StabilityWarning`), below ``stop_below`` makes
            the call return True, which stops ``train`` with status "stopped".
        tol, maxiter, seed: the Lanczos solves' (``seed``: the random start of cold solves).
        warm: start each solve from the previous check's top eigenvector (see the module docstring).
        dtype, device, hvp, engine: of the measurement (see :class:`~stabcheck.curvature.problem.Problem`,
            :class:`~stabcheck.curvature.operators.HessianOperator` and ``SigmaOperator``).

    ``records`` holds every check, a JSON-ready dict: ``iteration``, ``measured_on``, ``batch_loss`` (as
    the loop passed it), ``loss`` (on the measurement set, eval mode), ``a`` with ``a_converged``,
    ``a_residual``, ``a_products``, ``a_start`` ("cold", "warm" or "warm, fell, re-solved cold"), ``a_bound``
    and ``a_margin``; the same for ``s`` and ``theorem1`` when asked (``theorem1_form``, ``theorem1_mu``,
    ``theorem1_verdict``, ``theorem1_start``; its margin is 1 − μ/2 in the sample form, 1 − value in the full form); ``products``,
    ``seconds`` and ``stop``; non-finite numbers are null. ``stopped`` says why a call asked the loop to
    stop ("" if none).
    """

    def __init__(self, inputs: Tensor, targets: Tensor, *, lr: float, batch_size: int | None = None,
                 loss: str = "mse", every: int = 50, s: bool = False, theorem1: bool = False,
                 subset: int | Tensor | list[int] | None = None, log: str | os.PathLike | None = None,
                 warn_below: float | None = None, stop_below: float | None = None, tol: float = 1e-4,
                 maxiter: int = 50, seed: int = 0, warm: bool = True, dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None, hvp: str = "auto", engine: str = "auto"):
        self.lr = check_lr(lr)
        self.n = int(inputs.shape[0])
        self.batch_size = self.n if batch_size is None else batch_size
        check_batch(self.n, self.batch_size)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise MonitorError(f"every must be a whole number of steps ≥ 1, got {every!r}")
        for name, value in (("warn_below", warn_below), ("stop_below", stop_below)):
            if value is not None and not math.isfinite(value):
                raise MonitorError(f"{name} must be a finite margin (e.g. 0.05 for 5% from an edge) or None")
        self.indices, self.measured_on = self._measurement_set(subset, seed)
        self.inputs = inputs if self.indices is None else inputs[self.indices]
        self.targets = targets if self.indices is None else targets[self.indices]
        self.loss, self.every, self.tol, self.maxiter, self.seed, self.warm = loss, every, tol, maxiter, seed, warm
        self.with_s, self.with_theorem1 = s, theorem1
        self.warn_below, self.stop_below = warn_below, stop_below
        self.dtype, self.device, self.hvp, self.engine = dtype, device, hvp, engine
        self.a_bound = sharpness_bound(self.lr)
        self.s_bound = nonuniformity_bound(self.lr, self.batch_size, self.n)
        self.records: list[dict] = []
        self.stopped = ""
        self._previous: dict[str, EigenResult] = {}
        self.log = Path(log) if log is not None else None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._write({"kind": "monitor", "lr": self.lr, "batch_size": self.batch_size, "n": self.n,
                         "loss": loss, "every": every, "measured_on": self.measured_on,
                         "a_bound": self.a_bound, "s_bound": _finite(self.s_bound), "tol": tol, "warm": warm})

    def _measurement_set(self, subset, seed: int) -> tuple[Tensor | None, dict]:
        if subset is None:
            return None, {"set": "full training set", "samples": self.n}
        if isinstance(subset, int) and not isinstance(subset, bool):
            if not 1 <= subset <= self.n:
                raise MonitorError(f"subset must lie in [1, n={self.n}] samples, got {subset}")
            idx = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))[:subset].sort().values
            return idx, {"set": f"fixed random subset (seed {seed})", "samples": subset}
        idx = torch.as_tensor(subset)
        if idx.dtype.is_floating_point or idx.ndim != 1 or idx.numel() == 0 or len(set(idx.tolist())) != idx.numel() \
                or int(idx.min()) < 0 or int(idx.max()) >= self.n:
            raise MonitorError(f"subset indices must be distinct whole numbers in [0, {self.n}); give None, an int "
                               "or a list of sample indices")
        return idx, {"set": "fixed subset (given indices)", "samples": int(idx.numel())}

    def __call__(self, t: int, model: nn.Module, batch_loss: float | None = None) -> bool:
        """``train``'s callback: a check at every ``every``-th step; True (stop) when a margin is below
        ``stop_below``."""
        if t % self.every:
            return False
        return self.check(t, model, batch_loss)["stop"]

    def check(self, t: int, model: nn.Module, batch_loss: float | None = None) -> dict:
        """Measure now (the model's mode is restored after); returns the record, also kept and logged."""
        begin = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            with measurement_threads(self.device or next(model.parameters()).device):
                record = self._measure(model)
        finally:
            model.train(was_training)
        record = {"kind": "check", "iteration": t, "measured_on": self.measured_on["set"],
                  "batch_loss": None if batch_loss is None else float(batch_loss), **record}
        record["seconds"] = round(time.perf_counter() - begin, 4)
        self._judge(record)
        record = {k: _finite(v) for k, v in record.items()}
        self.records.append(record)
        if self.log is not None:
            self._write(record)
        return record

    def _measure(self, model: nn.Module) -> dict:
        problem = Problem(model, self.inputs, self.targets, loss=self.loss, dtype=self.dtype, device=self.device)
        rec: dict = {"loss": problem.loss_value(), "dtype": str(problem.dtype).replace("torch.", "")}
        a_eigen, rec["a_start"] = self._solve("a", HessianOperator(problem, self.hvp))
        # Theorem 1 accepts an a only with the fingerprint of its problem (a digest of weights and data)
        a = SharpnessResult(a_eigen, problem=fingerprint(problem) if self.with_theorem1 else None)
        rec |= {"a": a.value, "a_converged": a.converged, "a_residual": a.residual, "a_products": a.matvecs,
                "a_bound": self.a_bound, "a_margin": 1.0 - a.value / self.a_bound}
        products = a.matvecs
        if self.with_s:
            op = SigmaOperator(problem, self.engine)
            s_eigen, rec["s_start"] = self._solve("s", op)
            s = NonUniformityResult(s_eigen, engine=op.engine)
            rec |= {"s": s.value, "s_converged": s.converged, "s_residual": s.residual, "s_products": s.matvecs,
                    "s_bound": self.s_bound, "s_margin": 1.0 - s.value / self.s_bound}
            products += s.matvecs
        if self.with_theorem1:
            t1, rec["theorem1_start"] = self._theorem1(problem, a)
            count = sum(t1.products.values())
            # the share of the way left to the condition's edge, like a_margin = 1 − a/(2/η): the sample
            # form's value sits at 1 while μ ≤ 2, so its margin is read from μ
            if t1.form == SAMPLE:
                margin = t1.margin / 2.0
            else:
                margin = None if t1.value is None else 1.0 - t1.value
            rec |= {"theorem1": t1.value, "theorem1_form": t1.form, "theorem1_mu": getattr(t1, "mu", None),
                    "theorem1_verdict": t1.verdict, "theorem1_converged": t1.converged, "theorem1_products": count,
                    "theorem1_margin": margin}
            products += count
        rec["products"] = products
        return rec

    def _theorem1(self, problem: Problem, a: SharpnessResult):
        """Theorem 1 at (η, B) and how its solve started; in the sample form μ's Lanczos is warm-started like
        a's (the full form's T is solved cold: its start is a's top vector already)."""
        options = SolveOptions(tol=self.tol, maxiter=self.maxiter, seed=self.seed, hvp=self.hvp, engine=self.engine)
        if choose_form(problem, "auto") != SAMPLE:
            return solve_theorem1(problem, lr=self.lr, batch_size=self.batch_size, form=FULL, sharpness=a,
                                  options=options), "cold"
        space, value, residual = prepare_sample(problem, a, options)
        return self._warm(
            "mu", space.size, lambda v0: solve_sample(space, self.lr, self.batch_size, options, value, residual,
                                                      mu_start=v0),
            eigen=lambda result: result.eigen,
            # the space counts its products: the kept result gets the count after both solves
            both=lambda kept, warm, cold: replace(kept, products=MappingProxyType(dict(space.products()))))

    def _solve(self, name: str, op) -> tuple[EigenResult, str]:
        """(the solve, how it started) of a's or s's operator (see ``_warm``)."""
        solve = dict(tol=self.tol, maxiter=self.maxiter, seed=self.seed, dtype=op.dtype, device=op.device)
        return self._warm(name, op.problem.dim, lambda v0: lanczos(op.matvec, op.problem.dim, v0=v0, **solve),
                          eigen=lambda result: result,
                          both=lambda kept, warm, cold: replace(kept, matvecs=warm.matvecs + cold.matvecs,
                                                                wall_time=warm.wall_time + cold.wall_time))

    def _warm(self, name: str, dim: int, run, *, eigen, both):
        """``run(v0)`` from the previous check's top vector (``eigen(result)``: the result's EigenResult),
        re-solved from the seeded random start (v0 None) where the warm value fell below the previous one (a
        start without the top vector finds a lower eigenvalue): the larger certified value is kept, with the
        cost of both solves (``both(kept, warm, cold)``). Returns (result, how it started)."""
        previous = self._previous.get(name) if self.warm else None
        if previous is None or previous.vector.shape != (dim,):
            result, start = run(None), "cold"
        else:
            result, start = run(previous.vector), "warm"
            if eigen(result).value < previous.value - self.tol * abs(previous.value):
                cold = run(None)
                kept = max((result, cold), key=lambda r: (eigen(r).converged, eigen(r).value))
                result, start = both(kept, result, cold), "warm, fell, re-solved cold"
        self._previous[name] = eigen(result)
        return result, start

    def _judge(self, record: dict) -> None:
        margins = {k: record[k] for k in ("a_margin", "s_margin", "theorem1_margin")
                   if isinstance(record.get(k), float) and math.isfinite(record[k])}
        record["stop"] = False
        if not margins:  # a non-finite a (a diverged run) has no margin to judge
            return
        side, low = min(margins.items(), key=lambda kv: kv[1])
        message = f"step {record['iteration']}: {side.replace('_', ' ')} {low:.3g}"
        record["stop"] = self.stop_below is not None and low < self.stop_below
        if record["stop"]:
            self.stopped = f"{message} < stop_below {self.stop_below:g}"
        if self.warn_below is not None and low < self.warn_below:
            warnings.warn(f"{message} < warn_below {self.warn_below:g} (lr {self.lr:g}, B {self.batch_size})",
                          StabilityWarning, stacklevel=4)
            record["warning"] = f"{message} < {self.warn_below:g}"

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, allow_nan=False) + "\n").encode()
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one appending write per line: a reader never sees half a record
        finally:
            os.close(fd)
