"""A trained minimum with its measured a, s and Theorem 1, and what a claim needs of it.

:func:`measure` is the one place where the trained-net claims call stabcheck's criteria on a
minimum: a = λmax(H), s = λmax(Σ)^½ and Theorem 1 at the minimum's own (η, B), reusing a's solve, in the
full form and, where it applies, the sample-space form.
The ``measured_minimum`` fixture (``claims/conftest.py``) calls it once per minimum and run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import stabcheck
from claims.profiles import MINIMUM, Measurement
from claims.suite import case_id
from stabcheck.curvature.criteria import choose_form
from stabcheck.curvature.threads import measurement_threads
from stabcheck.experiments.minima import Minimum
from stabcheck.experiments.setups import MinimumConfig

UNSTABLE = "unstable (a > 2/eta)"


def theorem1_entries(t1: stabcheck.Theorem1Result | None,
                     sample: stabcheck.SampleTheorem1Result | None = None) -> dict:
    """A row's Theorem-1 entries: the library's verdict and convergence, and "unstable" only where
    a > 2/η proves it (Theorem 1 is sufficient only: a value above 1 is "not certified"). With the
    sample-space form's result (squared-error minima with d > nK): μ, its margin 2 − μ, its verdict and
    the size of the residual term H − G that the verdict leaves out. ``t1`` None: the full form was not
    solved (``Measurement.full_theorem1``), and its entries are left out."""
    if t1 is None and sample is None:
        raise ValueError("theorem1_entries needs the full-form or the sample-form result")
    entries = {} if t1 is None else {"theorem1": t1.value, "theorem1 verdict": t1.verdict,
                                     "theorem1 converged": t1.converged}
    if sample is not None:
        # "theorem1 mu", not "mu": a minimum's "mu" is its momentum
        entries.update({"theorem1 mu": sample.mu, "theorem1 mu margin": sample.margin,
                        "theorem1 mu verdict": sample.verdict, "theorem1 mu converged": sample.converged,
                        "residual |H-G|": None if sample.residual is None else sample.residual.size})
    if (t1 or sample).sharpness_exceeded:
        entries["GD criterion"] = UNSTABLE
    return entries


@dataclass(frozen=True)
class MeasuredMinimum:
    """A trained minimum with a = λmax(H), s = λmax(Σ)^½ and Theorem 1 at its own (η, B): ``theorem1`` in
    the full form (whose solve C12 cross-checks; None where the profile skips it, see
    ``Measurement.full_theorem1``) and ``theorem1_sample`` in the sample-space form where that applies (else
    None)."""

    minimum: Minimum
    a: stabcheck.SharpnessResult
    s: stabcheck.NonUniformityResult
    theorem1: stabcheck.Theorem1Result | None
    seconds: dict[str, float]
    theorem1_sample: stabcheck.SampleTheorem1Result | None = None

    @property
    def config(self) -> MinimumConfig:
        return self.minimum.config

    @property
    def a_bound(self) -> float:
        """2/η (for heavy ball, C14 uses 2(1 + μ)/η instead)."""
        return stabcheck.sharpness_bound(self.config.lr)

    @property
    def s_bound(self) -> float:
        """√(B(n−1)/(n−B))/η; infinite for GD."""
        c = self.config
        return stabcheck.nonuniformity_bound(c.lr, c.batch_size, c.setup.n)

    @property
    def edge_ratio(self) -> float:
        """a·η/2."""
        return self.a.value / self.a_bound

    @property
    def s_ratio(self) -> float:
        """s/bound (0 for GD)."""
        return self.s.value / self.s_bound

    def quantity(self, name: str) -> float:
        """a or s by name ("a", "s")."""
        return {"a": self.a, "s": self.s}[name].value

    def measured(self) -> dict:
        """The row's ``measured`` entries every trained-net case reports."""
        return {"a": self.a.value, "s": self.s.value, "a eta/2": self.edge_ratio, "s/bound": self.s_ratio,
                **theorem1_entries(self.theorem1, self.theorem1_sample), "status": self.minimum.status,
                "final loss": self.minimum.record["final_loss"]}

    def bounds(self) -> dict:
        return {"2/eta": self.a_bound, "s bound": self.s_bound}

    def point(self) -> dict:
        """Everything the sharpness–non-uniformity diagram and the reader need about this minimum."""
        c, rec = self.config, self.minimum.record
        return {"label": case_id(c), "setup": c.setup.name, "lr": c.lr, "B": c.batch_size, "n": c.setup.n,
                "mu": c.momentum, "seed": c.seed, "a": self.a.value, "s": self.s.value, "2/eta": self.a_bound,
                "s bound": self.s_bound, "a eta/2": self.edge_ratio, "s/bound": self.s_ratio,
                **theorem1_entries(self.theorem1, self.theorem1_sample),
                "status": rec["status"], "iterations": rec["iterations"], "final loss": rec["final_loss"],
                "train s": rec["wall_time"], "measure s": self.seconds,
                "a converged": self.a.converged, "a iterations": self.a.iterations, "a residual": self.a.residual,
                "s converged": self.s.converged, "s iterations": self.s.iterations, "s residual": self.s.residual,
                "sigma engine": self.s.engine, "a dtype": self.a.dtype, "s dtype": self.s.dtype,
                "device": self.a.device}


def measure(minimum: Minimum, how: Measurement, seed: int, device: str) -> MeasuredMinimum:
    """a, s and Theorem 1 at (η, B) of a trained minimum, Lanczos to ``how.tol`` from start vector ``seed``
    (float32; an unconverged a or s is solved again in float64 when ``how.float64_retry``). Theorem 1 in the
    sample form where it applies, and in the full form unless the sample form applies and
    ``how.full_theorem1`` is off."""
    c = minimum.config
    seconds = {}
    with measurement_threads(device):
        problem = minimum.problem(device=device)

        def solve(criterion):  # float32, then float64 where float32 did not converge
            result = criterion(problem, tol=how.tol, maxiter=how.maxiter, seed=seed)
            if not result.converged and how.float64_retry:
                result = criterion(minimum.problem(dtype=torch.float64, device=device), tol=how.tol,
                                   maxiter=how.maxiter, seed=seed)
            return result

        start = time.perf_counter()
        a = solve(stabcheck.sharpness)
        seconds["a"] = time.perf_counter() - start
        start = time.perf_counter()
        s = solve(stabcheck.non_uniformity)
        seconds["s"] = time.perf_counter() - start
        t1 = sample = None
        applies = choose_form(problem, "auto") == "sample"
        if how.full_theorem1 or not applies:
            start = time.perf_counter()
            t1 = stabcheck.theorem1(problem, lr=c.lr, batch_size=c.batch_size, tol=how.tol, maxiter=how.maxiter,
                                    seed=seed, sharpness=a, form="full")
            seconds["theorem1"] = time.perf_counter() - start
        if applies:
            start = time.perf_counter()
            sample = stabcheck.theorem1(problem, lr=c.lr, batch_size=c.batch_size, tol=how.tol,
                                        maxiter=how.maxiter, seed=seed, sharpness=a, form="sample")
            seconds["theorem1 sample"] = time.perf_counter() - start
    return MeasuredMinimum(minimum, a, s, t1, {k: round(v, 3) for k, v in seconds.items()}, sample)


def require_minimum(m: MeasuredMinimum, eval_loss_limit: float | None = None) -> None:
    """A claim about minima needs a minimum and converged measurements.

    A minimum: training converged (EMA of the batch loss below tol) and its full training loss, with
    the net in eval mode as measured, is at most ``MINIMUM["final loss"]``·tol (the EMA rule alone let
    SGD stop above tol). ``eval_loss_limit``: instead, accept a run whose eval-mode training loss is at
    most this, converged or at its iteration cap (BatchNorm nets, whose train-mode loss cannot meet
    the EMA rule; C13).
    """
    rec, label = m.minimum.record, case_id(m.config)
    limit = eval_loss_limit if eval_loss_limit is not None else MINIMUM["final loss"].value * rec["tol"]
    fitted = eval_loss_limit is not None and rec["final_loss"] <= eval_loss_limit
    assert rec["status"] == "converged" or fitted, (
        f"{label}: training ended with status {rec['status']!r} after {rec['iterations']} iterations "
        f"(EMA loss {rec['ema_loss']:.2e}, eval loss {rec['final_loss']:.2e}, tol {rec['tol']:g}); "
        "a claim about minima needs a converged minimum")
    assert rec["final_loss"] <= limit, (
        f"{label}: the full training loss at the end is {rec['final_loss']:.3g} > {limit:.3g} (EMA loss "
        f"{rec['ema_loss']:.2e}, tol {rec['tol']:g}); a claim about minima needs a loss near 0")
    for name, res in (("a", m.a), ("s", m.s)):
        assert res.converged, (f"{label}: the measurement of {name} did not converge: residual {res.residual:.2e} "
                               f"> tol {res.tol:g} after {res.iterations} iterations")
