"""What the trained-net claims (C5–C9, C13, C14) share.

* :class:`Grids`: the current scale's grids (:mod:`stabcheck.experiments.setups`) as configs, seeds offset by
  ``--seed``, turned into pytest parameters with readable ids (``fnn-lr=0.1-B=5-seed=0``). At
  ``--scale paper`` every case carries the ``gpu`` mark: training the paper's nets on a CPU takes hours.
  ``STABCHECK_SEEDS_PER_SETTING=k`` keeps the first k seeds of every grid (a GPU time budget, used by
  ``scripts/gpu_check.sh``); every row records the seeds used.
* ``measured_minimum(config)`` (session fixture): the trained minimum with its a, s and the Theorem-1
  value at its own (η, B), measured once per session however many claims ask (the profile's tolerance
  and iteration cap, Lanczos start vector from ``--seed``, the model's float32, on ``--device``).
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pytest
import torch
from scipy import stats

import stabcheck
from stabcheck.curvature.eigen import EigenResult
from stabcheck.experiments.minima import Minimum
from stabcheck.experiments.setups import Grid, MinimumConfig, Profile, profile

SEEDS_ENV = "STABCHECK_SEEDS_PER_SETTING"


def case_id(config: MinimumConfig) -> str:
    """Readable test id, e.g. ``fnn-lr=0.1-B=5-mu=0.5-seed=0`` (``B=n``: GD)."""
    batch = "n" if config.is_gd else str(config.batch_size)
    mu = f"-mu={config.momentum:g}" if config.momentum else ""
    return f"{config.setup.name}-lr={config.lr:g}-B={batch}{mu}-seed={config.seed}"


@dataclass(frozen=True)
class Grids:
    """The profile of ``--scale`` with seeds offset by ``--seed`` and trimmed to ``seeds_per_setting``."""

    profile: Profile
    base_seed: int
    seeds_per_setting: int | None

    @classmethod
    def of(cls, config: pytest.Config) -> "Grids":
        limit = os.environ.get(SEEDS_ENV)
        return cls(profile(config.getoption("--scale")), config.getoption("--seed"), int(limit) if limit else None)

    def seeds(self, seeds: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(self.base_seed + s for s in seeds[: self.seeds_per_setting])

    def configs(self, grid: Grid) -> list[MinimumConfig]:
        return self.profile.configs(replace(grid, seeds=self.seeds(grid.seeds)))

    def _shifted(self, configs: list[MinimumConfig], seeds: tuple[int, ...]) -> list[MinimumConfig]:
        kept = set(seeds[: self.seeds_per_setting])
        return [c.with_(seed=self.base_seed + c.seed) for c in configs if c.seed in kept]

    def restart_starts(self) -> list[MinimumConfig]:
        return self._shifted(self.profile.restart_starts(), self.profile.restart.seeds)

    def equal_ratio_configs(self) -> list[MinimumConfig]:
        pairs = self.profile.equal_ratio_configs()
        return self._shifted([c for pair in pairs for c in pair], self.profile.equal_ratio_seeds)

    @property
    def marks(self) -> list:
        return [pytest.mark.gpu] if self.profile.name == "paper" else []

    def params(self, values: list, ids: list[str]) -> list:
        """``pytest.param`` for each value, with the scale's marks."""
        return [pytest.param(v, id=i, marks=self.marks) for v, i in zip(values, ids)]

    def config_params(self, configs: list[MinimumConfig]) -> list:
        return self.params(configs, [case_id(c) for c in configs])

    def describe(self) -> dict:
        return {"scale": self.profile.name, "base_seed": self.base_seed, "seeds_per_setting": self.seeds_per_setting}


@pytest.fixture(scope="session")
def grids(pytestconfig) -> Grids:
    return Grids.of(pytestconfig)


@dataclass
class MeasuredMinimum:
    """A trained minimum with a = λmax(H), s = λmax(Σ)^½ and Theorem 1 at its own (η, B)."""

    minimum: Minimum
    a: EigenResult
    s: EigenResult
    theorem1: stabcheck.Theorem1Result
    seconds: dict[str, float]

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

    @property
    def theorem1_floor(self) -> float:
        return theorem1_floor(self.config.lr, self.a.value)

    @property
    def verdict(self) -> str:
        return verdict(self.theorem1, self.theorem1_floor)

    def measured(self) -> dict:
        """The row's ``measured`` entries every trained-net case reports."""
        return {"a": self.a.value, "s": self.s.value, "a eta/2": self.edge_ratio, "s/bound": self.s_ratio,
                "theorem1": self.theorem1.value, "theorem1 floor (1-eta a)^2": self.theorem1_floor,
                "theorem1 verdict": self.verdict, "status": self.minimum.status}

    def bounds(self) -> dict:
        return {"2/eta": self.a_bound, "s bound": self.s_bound}

    def point(self) -> dict:
        """Everything the sharpness–non-uniformity diagram and the reader need about this minimum."""
        c, rec = self.config, self.minimum.record
        return {"label": case_id(c), "setup": c.setup.name, "lr": c.lr, "B": c.batch_size, "n": c.setup.n,
                "mu": c.momentum, "seed": c.seed, "a": self.a.value, "s": self.s.value, "2/eta": self.a_bound,
                "s bound": self.s_bound, "a eta/2": self.edge_ratio, "s/bound": self.s_ratio,
                "theorem1": self.theorem1.value, "theorem1 floor": self.theorem1_floor, "theorem1 verdict": self.verdict,
                "status": rec["status"], "iterations": rec["iterations"], "final loss": rec["final_loss"],
                "train s": rec["wall_time"], "measure s": self.seconds,
                "a converged": self.a.converged, "a iterations": self.a.iterations, "a residual": self.a.residual,
                "s converged": self.s.converged, "s iterations": self.s.iterations, "s residual": self.s.residual,
                "sigma engine": self.s.engine, "dtype": self.a.dtype, "device": self.a.device}


def theorem1_floor(lr: float, a: float) -> float:
    """(1 − ηa)², the Rayleigh quotient of (I − ηH)² + η²pΣ along H's top eigenvector: a lower bound on the
    Theorem-1 value. The solver can miss a small excess over 1 (GD a little past 2/η) next to the
    eigenvalue-1 cluster of the flat directions (measured: 1.000 reported where (1 − ηa)² = 1.012)."""
    return (1 - lr * a) ** 2


def verdict(result: stabcheck.Theorem1Result, floor: float) -> str:
    """Theorem 1's verdict on max(solver value, floor); a floor above 1 means a > 2/η, unstable for sure."""
    if floor > 1 + result.stable_tol:
        return "unstable (a > 2/eta)"
    if result.value > 1 + result.stable_tol:
        return "maybe unstable (Theorem 1 is sufficient only)"
    return "stable"


@contextmanager
def cpu_threads(device: str, threads: int = 1):
    """One torch thread on the CPU: these nets are overhead-bound, and on the busy 2-core CI machine
    two threads made a Σ measurement 5-7× slower than one (measured)."""
    previous = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_minimum(minimum: Minimum, tol: float, maxiter: int, seed: int, device: str) -> MeasuredMinimum:
    with cpu_threads(device):
        return _measure(minimum, tol, maxiter, seed, device)


def _measure(minimum: Minimum, tol: float, maxiter: int, seed: int, device: str) -> MeasuredMinimum:
    problem = minimum.problem(device=device)
    c = minimum.config
    seconds = {}
    start = time.perf_counter()
    a = stabcheck.sharpness(problem, tol=tol, maxiter=maxiter, seed=seed)
    seconds["a"] = time.perf_counter() - start
    start = time.perf_counter()
    s = stabcheck.non_uniformity(problem, tol=tol, maxiter=maxiter, seed=seed)
    seconds["s"] = time.perf_counter() - start
    start = time.perf_counter()
    t1 = stabcheck.theorem1(problem, lr=c.lr, batch_size=c.batch_size, tol=tol, maxiter=maxiter, seed=seed)
    seconds["theorem1"] = time.perf_counter() - start
    return MeasuredMinimum(minimum, a, s, t1, {k: round(v, 3) for k, v in seconds.items()})


# Module-level, not fixture state: each test module that imports the fixture gets its own fixture
# instance, and the measurements must still happen once per process.
_MEASURED: dict[tuple, MeasuredMinimum] = {}


@pytest.fixture(scope="session")
def measured_minimum(trained_minimum, scale_profile, device, base_seed):
    """Factory ``measured_minimum(config) -> MeasuredMinimum``: trained and measured at most once per session."""
    tol, maxiter = scale_profile.measure_tol, scale_profile.measure_maxiter

    def get(config: MinimumConfig) -> MeasuredMinimum:
        key = (config, tol, maxiter, base_seed, device)
        if key not in _MEASURED:
            _MEASURED[key] = measure_minimum(trained_minimum(config), tol, maxiter, base_seed, device)
        return _MEASURED[key]

    return get


def require_minimum(m: MeasuredMinimum, eval_loss_limit: float | None = None) -> None:
    """A claim about minima needs a converged minimum and converged measurements.

    ``eval_loss_limit``: accept a run that hit its iteration cap when its eval-mode training loss is
    below this (BatchNorm nets, whose train-mode loss cannot meet the EMA rule; C13).
    """
    rec, label = m.minimum.record, case_id(m.config)
    fitted = eval_loss_limit is not None and rec["final_loss"] <= eval_loss_limit
    assert rec["status"] == "converged" or fitted, (
        f"{label}: training ended with status {rec['status']!r} after {rec['iterations']} iterations "
        f"(EMA loss {rec['ema_loss']:.2e}, eval loss {rec['final_loss']:.2e}, tol {rec['tol']:g}); "
        "a claim about minima needs a converged minimum")
    for name, res in (("a", m.a), ("s", m.s)):
        assert res.converged, (f"{label}: the measurement of {name} did not converge: residual {res.residual:.2e} "
                               f"> tol {res.tol:g} after {res.iterations} iterations")


def sharpest_found(minima: list[MeasuredMinimum]) -> float:
    """The largest a among these minima (0 for none): a lower bound on the sharpest minimum GD can reach."""
    return max((m.a.value for m in minima), default=0.0)


def monotone_trend(minima: list[MeasuredMinimum], setting: str, rising: bool, alpha: float) -> tuple[dict, list[str]]:
    """Means of a and s per value of a config attribute (``batch_size``, ``momentum``) and Kendall τ.

    The claim holds when both means move strictly in one direction (``rising``: they grow with the
    setting) and the one-sided Kendall test rejects "no trend" at ``alpha``. Returns the measured
    entries for the report row and the failures, empty when the claim holds.
    """
    levels = sorted({getattr(m.config, setting) for m in minima})
    direction = "grows" if rising else "falls"
    measured, failures = {}, []
    for q in ("a", "s"):
        values = [m.a.value if q == "a" else m.s.value for m in minima]
        means = [statistics.fmean(v for m, v in zip(minima, values) if getattr(m.config, setting) == x) for x in levels]
        tau = stats.kendalltau([getattr(m.config, setting) for m in minima], values,
                               alternative="greater" if rising else "less")
        measured |= {f"mean {q} per {setting}": means, f"kendall tau ({setting}, {q})": float(tau.statistic),
                     f"p ({q} {direction} with {setting})": float(tau.pvalue)}
        if not all((x < y) if rising else (x > y) for x, y in zip(means, means[1:])):
            failures.append(f"mean {q} does not move with {setting} as claimed: {levels} → {[round(x, 4) for x in means]}")
        if not tau.pvalue < alpha:
            failures.append(f"{q}: Kendall τ = {tau.statistic:.3f}, one-sided p = {tau.pvalue:.3g} ≥ {alpha}")
    return measured, failures
