"""The claims' profiles: what each trained-net claim trains and how it judges, at ``--scale small`` and ``paper``.

A profile is data keyed by claim id: a :class:`Plan` per claim holds the (η, B, μ, seed) grids the
claim trains on, its thresholds (each with the reason for its value), the paper's numbers where the
profile is the paper's setting, and what a case costs. A new claim adds an entry here; the library
(:mod:`stabcheck.experiments.setups`) only knows the generic :class:`Setup` and :class:`MinimumConfig`,
which are the key of the on-disk minima cache.

``paper`` is PAPER.md §3: the first n = 1000 FashionMNIST training images, FNN 784-500-500-500-10,
MSE, tol 1e-4; the VGG of Table 4 on the first 1000 CIFAR-10 images of classes 0/1 (offline that
needs the JPEG-decoded rows: ``allow_jpeg``); the authors' ResNet-14 (width 2) with and without
BatchNorm; GD η grid of the paper's C5 table; SGD at η = 0.1 with B = 10, 100 and GD; 5 seeds. The
paper does not list its CIFAR-10 η grid, its restart settings beyond the authors' data files (GD
η′ = 0.3, 0.5; SGD B′ = 1, 4 at η = 0.1) or its momentum grid; those entries are this project's choice.

``small`` runs on a CPU in minutes: FashionMNIST, n = 100, FNN 784-50-50-10, with the measurements
that chose it in ``reports/README.md``.

>>> p = profile("small")
>>> p.setups["fnn"].n, [c.label for c in p.configs("C9")]
(100, ['fnn-eta0.1-Bn-seed0'])
>>> p.plans["C8"].thresholds["min r"].value, profile("paper").plans["C8"].thresholds["min r"].value
(0.9, 0.95)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from stabcheck.experiments.setups import MinimumConfig, Setup


@dataclass(frozen=True)
class Threshold:
    """A value a claim compares a measurement with, and why it is that value."""

    value: float
    reason: str


@dataclass(frozen=True)
class Grid:
    """(η, B, μ) settings × seeds on one setup; a ``batch_sizes`` entry None is GD (B = n)."""

    setup: str
    lrs: tuple[float, ...]
    batch_sizes: tuple[int | None, ...]
    seeds: tuple[int, ...]
    momenta: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class RestartPlan:
    """C9: restarts from each start minimum with new settings, sharpness every ``every`` iterations.

    ``unstable``/``stable``: (η′, B′ or None for GD) expected to leave / keep the start minimum;
    the claim confirms the prediction with a and s measured at the restart point.
    """

    unstable: tuple[tuple[float, int | None], ...]
    stable: tuple[tuple[float, int | None], ...]
    escape_iters: int
    stable_iters: int
    every: int


def _frozen(mapping: Mapping | None = None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Plan:
    """What one claim trains and how it judges, at one scale.

    ``grids``: the minima the claim trains (its cases may also use other claims' minima).
    ``thresholds``: name → :class:`Threshold`. ``paper``: the paper's numbers for this claim, present
    only where the profile is the paper's setting (PAPER.md §4; the claim module documents the keys).
    ``case_seconds``: a trained-net case's own work besides training and measuring its minima
    (measured on one core of the CI CPU; None: unmeasured). ``restart``: C9's restarts.
    """

    grids: tuple[Grid, ...] = ()
    thresholds: Mapping[str, Threshold] = field(default_factory=_frozen)
    paper: Mapping[str, Any] = field(default_factory=_frozen)
    case_seconds: float | None = 0.0
    restart: RestartPlan | None = None

    def __post_init__(self):
        object.__setattr__(self, "thresholds", _frozen(self.thresholds))
        object.__setattr__(self, "paper", _frozen(self.paper))


@dataclass(frozen=True)
class Measurement:
    """How every trained minimum is measured: Lanczos to ``tol`` within ``maxiter`` iterations."""

    tol: float
    maxiter: int


@dataclass(frozen=True)
class Profile:
    """The setups and the per-claim plans of one scale, with what its minima cost.

    ``train_seconds``: measured training time of one minimum on one core of the CI CPU, keyed by
    (setup, η, B or None for GD, μ); a setting missing here is unmeasured. ``measure_seconds``: a, s
    and Theorem 1 of one minimum. ``paper_note``: what the rows say where the paper's numbers do not
    apply (the profile's setting differs from PAPER.md §3); empty for the paper's own setting.
    """

    name: str
    setups: Mapping[str, Setup]
    measurement: Measurement
    plans: Mapping[str, Plan]
    train_seconds: Mapping[tuple[str, float, int | None, float], float]
    measure_seconds: float
    paper_note: str = ""

    def plan(self, claim: str) -> Plan:
        if claim not in self.plans:
            raise KeyError(f"profile {self.name!r} has no plan for {claim}; add one to claims/profiles.py "
                           f"(plans: {', '.join(self.plans)})")
        return self.plans[claim]

    def grid_configs(self, grid: Grid) -> list[MinimumConfig]:
        setup = self.setups[grid.setup]
        return [setup.config(lr, b, seed, mu) for lr in grid.lrs for b in grid.batch_sizes
                for mu in grid.momenta for seed in grid.seeds]

    def configs(self, *claims: str) -> list[MinimumConfig]:
        """Every minimum of these claims' grids, in grid order, each once (all claims when none given)."""
        out = [c for claim in (claims or tuple(self.plans)) for grid in self.plan(claim).grids
               for c in self.grid_configs(grid)]
        return list(dict.fromkeys(out))

    def train_cost(self, config: MinimumConfig) -> float | None:
        """Measured seconds to train this minimum (None: unmeasured)."""
        batch = None if config.is_gd else config.batch_size
        return self.train_seconds.get((config.setup.name, config.lr, batch, config.momentum))


# ---- thresholds that are the same at every scale ---------------------------------------------------
EDGE = {
    "single ceiling": Threshold(1.05, "GD stops (EMA of the loss below tol) inside its edge-of-stability "
                                      "oscillation, where a·η/2 swings between 0.99 and 1.08 (measured at small "
                                      "scale, η = 0.2 and 0.5); single solutions stopped at up to 1.026"),
    "mean ceiling": Threshold(1.02, "the paper's own ceiling on the mean a·η/2 over seeds"),
    "edge floor": Threshold(0.85, "the issue's floor for the edge regime (measured 0.98-1.003 at small scale)"),
}
C5 = {**EDGE, "min edge span": Threshold(5.0, "'a wide range of η': the edge regime spans at least a factor 5")}
C6 = {
    "alpha": Threshold(0.05, "one-sided Welch test level where the s bound binds"),
    "no growth": Threshold(1.05, "where the bound does not bind: 5% is 1.5-2 standard errors of a 3-seed mean "
                                 "of a (seed-to-seed spread 5-7% at η = 0.1, B = 20 and GD, measured)"),
}
C7 = {
    "over": Threshold(1.1, "the paper sees a rare run a few percent over; in d > 1 the s bound is empirical"),
    "tight": Threshold(0.5, "the smallest B of the batch grid is the tight case (measured s/bound 0.62-0.78 "
                            "at small scale, B = 2)"),
}
C3 = {"edge ceiling": EDGE["single ceiling"], "s over": C7["over"]}  # each minimum in its own box
C9 = {
    "leave fraction": Threshold(0.5, "leaving ends at a flatter minimum: the sharpness falls below half its "
                                     "start (SGD B′ = 1 halved it within 60-80 iterations, measured) ..."),
    "edge margin": Threshold(1.05, "... or, when a > 2/η′, below 1.05·2/η′ (inside the new a side, C5's "
                                   "single-solution ceiling)"),
    "loss rise": Threshold(10.0, "an escape lifts the loss at least 10× first (stable SGD restarts lifted it "
                                 "at most 3×, measured)"),
    "keep": Threshold(0.10, "stable: a within ±10% of its start (the stable restarts kept it within 3% for "
                            "500 iterations, measured at small scale)"),
}
C13 = {
    "alpha": Threshold(0.05, "one-sided Kendall test level (2-3 seeds per B leave a t-test without power)"),
    "edge ceiling": EDGE["single ceiling"],
    "s over": C7["over"],
    "bn eval loss": Threshold(5.0, "BatchNorm SGD at its cap counts as a minimum when its eval-mode loss (the "
                                   "function whose Hessian is measured) is at most this × tol, 20× below its "
                                   "value at initialisation"),
}
C14 = {**EDGE, "alpha": Threshold(0.05, "one-sided Kendall test level (3 seeds per μ leave a t-test without power)")}

MIN_R_SMALL = Threshold(0.9, "the issue's threshold for fewer and smaller nets (measured r = 0.987 over the 33 "
                             "small FNN minima)")
MIN_R_PAPER = Threshold(0.95, "the paper's value (r > 0.95 on both datasets)")

# ---- the paper's numbers (PAPER.md §4), for the paper's FashionMNIST FNN -------------------------------
PAPER_C5 = {"mean a": {"fnn": {0.01: 53.5, 0.05: 39.3, 0.1: 19.6, 0.5: 3.86, 1.0: 1.93, 5.0: 0.397}}}
PAPER_C6 = {"a, s": {"fnn": {(0.1, 10): (7.9, 20.7), (0.1, 100): (19.5, 44.4), (0.1, None): (19.7, 45.0)}}}

# ---- what cases without trained minima cost (toy problems; measured, the same at every scale) -------------
TOY_CASE_SECONDS = {"C1": 0.05, "C2": 0.15, "C3": 0.6, "C4": 0.15, "C11": 2.6, "C12": 0.9}
TOYS = {claim: Plan() for claim in ("C1", "C2", "C4", "C11")}


def _small() -> Profile:
    fnn = Setup("fnn", "fashion_mnist", 100, "fnn", (("widths", (50, 50)),), tol=1e-3, max_iters=20_000)
    # GD's edge claims (C5, C14) need the paper's tol: at 1e-3 GD can stop while still oscillating at the edge.
    fnn_gd = replace(fnn, name="fnn_gd", tol=1e-4, max_iters=30_000)
    res_bn = Setup("resfnn_bn", "fashion_mnist", 100, "resfnn",
                   (("width", 50), ("blocks", 1), ("batch_norm", True)), tol=1e-3, max_iters=3_000)
    res_free = Setup("resfnn_free", "fashion_mnist", 100, "resfnn",
                     (("width", 50), ("blocks", 1), ("batch_norm", False)), tol=1e-3, max_iters=20_000)
    seeds = (0, 1, 2)
    plans = {
        **TOYS,
        "C3": Plan(grids=(Grid("fnn", (0.1,), (2,), seeds), Grid("fnn", (0.5,), (10,), seeds)), thresholds=C3),
        "C5": Plan(grids=(Grid("fnn_gd", (0.05, 0.1, 0.2, 0.5), (None,), (0, 1)),), thresholds=C5),
        "C6": Plan(grids=(Grid("fnn", (0.1,), (2, 5, 20, None), seeds),), thresholds=C6),
        "C7": Plan(thresholds=C7),
        "C8": Plan(thresholds={"min r": MIN_R_SMALL}),
        # B′ = 2 breaks the s side by only 1.6× and does not halve a within 600 iterations; B′ = 1 breaks
        # it by 2.3×, the factor of the paper plan's B′ = 4 at n = 1000 (measured: reports/README.md).
        "C9": Plan(grids=(Grid("fnn", (0.1,), (None,), (0,)),), thresholds=C9, case_seconds=4.5,
                   restart=RestartPlan(unstable=((0.2, None), (0.1, 1)), stable=((0.05, None), (0.1, 20)),
                                       escape_iters=300, stable_iters=500, every=20)),
        "C12": Plan(case_seconds=0.9),
        "C13": Plan(grids=(Grid("resfnn_free", (0.1,), (5, 10, None), (0, 1)),
                           Grid("resfnn_bn", (0.1,), (10, 20, None), (0, 1))),
                    thresholds={**C13, "min r": MIN_R_SMALL}),
        "C14": Plan(grids=(Grid("fnn_gd", (0.2,), (None,), (0, 1), momenta=(0.0, 0.5, 0.8)),
                           Grid("fnn", (0.1,), (5,), seeds, momenta=(0.0, 0.5, 0.9))), thresholds=C14),
    }
    # CPU seconds per minimum (upper end over seeds), one thread: reports/README.md, "The small profile".
    train_seconds = {
        ("fnn_gd", 0.05, None, 0.0): 17, ("fnn_gd", 0.1, None, 0.0): 9, ("fnn_gd", 0.2, None, 0.0): 4,
        ("fnn_gd", 0.5, None, 0.0): 2, ("fnn", 0.1, 2, 0.0): 5, ("fnn", 0.1, 5, 0.0): 3.5, ("fnn", 0.1, 20, 0.0): 5,
        ("fnn", 0.1, None, 0.0): 6, ("fnn", 0.5, 10, 0.0): 1, ("fnn_gd", 0.2, None, 0.5): 3,
        ("fnn_gd", 0.2, None, 0.8): 2, ("fnn", 0.1, 5, 0.5): 2, ("fnn", 0.1, 5, 0.9): 1,
        ("resfnn_free", 0.1, 5, 0.0): 4, ("resfnn_free", 0.1, 10, 0.0): 4, ("resfnn_free", 0.1, None, 0.0): 6,
        ("resfnn_bn", 0.1, 10, 0.0): 8, ("resfnn_bn", 0.1, 20, 0.0): 9, ("resfnn_bn", 0.1, None, 0.0): 1,
    }
    return Profile(name="small", setups=_frozen({s.name: s for s in (fnn, fnn_gd, res_bn, res_free)}),
                   measurement=Measurement(tol=1e-3, maxiter=50), plans=_frozen(plans),
                   # a, s and Theorem 1: mean over the 45 minima of the reference run (at most 12 s)
                   train_seconds=_frozen(train_seconds), measure_seconds=1.5,
                   paper_note="paper setting differs (n=100, FNN 784-50-50-10)")


def _paper() -> Profile:
    fnn = Setup("fnn", "fashion_mnist", 1000, "fnn", (("widths", (500, 500, 500)),), tol=1e-4, max_iters=200_000)
    vgg = Setup("vgg", "cifar10", 1000, "vgg", (), tol=1e-4, max_iters=200_000, data_options=(("allow_jpeg", True),))
    res_bn = Setup("resnet_bn", "cifar10", 1000, "resnet", (("depth", 14), ("width", 2), ("batch_norm", True)),
                   tol=1e-4, max_iters=50_000, data_options=(("allow_jpeg", True),))
    res_free = Setup("resnet_free", "cifar10", 1000, "resnet", (("depth", 14), ("width", 2), ("batch_norm", False)),
                     tol=1e-4, max_iters=50_000, data_options=(("allow_jpeg", True),))
    seeds = (0, 1, 2, 3, 4)
    plans = {
        **TOYS,
        "C3": Plan(grids=(Grid("fnn", (0.1,), (10,), seeds), Grid("fnn", (0.5,), (50,), seeds)), thresholds=C3),
        "C5": Plan(grids=(Grid("fnn", (0.01, 0.05, 0.1, 0.5, 1.0, 5.0), (None,), seeds),
                          Grid("vgg", (0.01, 0.05, 0.1), (None,), (0, 1, 2))), thresholds=C5, paper=PAPER_C5),
        "C6": Plan(grids=(Grid("fnn", (0.1,), (10, 100, None), seeds),), thresholds=C6, paper=PAPER_C6),
        "C7": Plan(thresholds=C7),
        "C8": Plan(thresholds={"min r": MIN_R_PAPER}),
        "C9": Plan(grids=(Grid("fnn", (0.1,), (None,), (0,)),), thresholds=C9, case_seconds=None,
                   restart=RestartPlan(unstable=((0.3, None), (0.1, 4)), stable=((0.05, None), (0.1, 100)),
                                       escape_iters=1000, stable_iters=1000, every=25)),
        "C12": Plan(case_seconds=None),
        "C13": Plan(grids=(Grid("resnet_free", (0.1,), (10, 100, None), (0, 1, 2)),
                           Grid("resnet_bn", (0.1,), (10, 100, None), (0, 1, 2))),
                    thresholds={**C13, "min r": MIN_R_PAPER}),
        "C14": Plan(grids=(Grid("fnn", (0.1,), (None,), (0, 1, 2), momenta=(0.0, 0.5, 0.9)),
                           Grid("fnn", (0.1,), (10,), (0, 1, 2), momenta=(0.0, 0.5, 0.9))), thresholds=C14),
    }
    # One core of the CI CPU, one thread (reports/README.md, "Paper scale on this CPU").
    train_seconds = {("fnn", 0.1, 10, 0.0): 90, ("fnn", 0.1, 100, 0.0): 270, ("fnn", 0.5, None, 0.0): 1130}
    return Profile(name="paper", setups=_frozen({s.name: s for s in (fnn, vgg, res_bn, res_free)}),
                   measurement=Measurement(tol=1e-4, maxiter=50), plans=_frozen(plans),
                   train_seconds=_frozen(train_seconds), measure_seconds=10.0)


PROFILES = {"small": _small, "paper": _paper}


def profile(name: str) -> Profile:
    """The profile of ``--scale name`` (``small`` or ``paper``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown scale {name!r}; choose one of {tuple(PROFILES)}")
    return PROFILES[name]()
