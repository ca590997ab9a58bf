"""The ``small`` and ``paper`` profiles: what the trained-net claims train, as data.

A :class:`Setup` fixes the data, model, loss and stopping rule; a :class:`MinimumConfig` adds the
optimiser settings (η, B, μ, seed) and is the key of a cached trained minimum
(:mod:`stabcheck.experiments.minima`). A :class:`Profile` holds the setups and the (η, B, μ, seed) grids of
each claim. ``batch_size=None`` in a grid means GD (B = n).

``paper`` reproduces PAPER.md §3: the first n = 1000 FashionMNIST training images,
FNN 784-500-500-500-10, MSE, tol 1e-4; the VGG of Table 4 on the first 1000 CIFAR-10 images of
classes 0/1 (offline, that needs the JPEG-decoded rows: ``allow_jpeg``); the authors' ResNet-14
(width 2) with and without BatchNorm; GD η grid of the paper's C5 table; SGD at η = 0.1 with
B = 10, 100 and GD; 5 seeds. The paper does not list its CIFAR-10 η grid, its restart settings
beyond the authors' data files (GD η′ = 0.3, 0.5; SGD B′ = 1, 4 at η = 0.1) or its momentum grid;
those entries of ``paper`` are this project's choice.

``small`` was chosen by measurement on the 2-core CI CPU (torch 2.14.1, one thread per training
run, other jobs competing for the cores; "CPU s" = CPU seconds of the training process, which is
about the wall time on an idle core):

* Data and model: FashionMNIST, the first n = 100 training images; FNN 784-50-50-10; MSE; SGD runs
  tol 1e-3 (cap 20 000); GD runs of the edge claims tol 1e-4 (setup ``fnn_gd``, cap 30 000).
  At tol 1e-3 GD stops while it may still oscillate at the edge: a·η/2 = 1.026 (η = 0.2, seed 1),
  1.09 (η = 1.0); at tol 1e-4 every GD solution below has a·η/2 ≤ 1.007. n = 200 with width 100
  showed the same effects at 2-4× the cost. One FNN step costs 1.3-4 ms (overhead-bound); with 2
  threads on the busy 2-core machine it was 16× slower than with one.
* Cold cache, all 45 minima of ``small``: 184 CPU s (243 s wall) of training and 95 CPU s of
  measuring a and s (Lanczos, tol 1e-3: 7-18 products each; about 2 s per minimum, mostly s);
  under 5 minutes on one core. The C9 restarts add 1.5-4.5 s each (300-500 iterations, a sharpness every 20).
* Per setting, mean over seeds (iterations, a, s, max a·η/(2(1+μ)), max s/bound with
  bound = √(B(n−1)/(n−B))/η), CPU s per minimum:

  ============================  ======  ======  ======  =====  =====  ======
  setting                        iters     a       s     edge   s/b    CPU s
  ============================  ======  ======  ======  =====  =====  ======
  fnn_gd η=0.05 GD               13222   22.6    26.8   0.62    –     14-17
  fnn_gd η=0.1 GD                 7039   19.8    24.0   0.99    –      7-9
  fnn_gd η=0.2 GD                 3862   10.0    16.0   1.003   –      4
  fnn_gd η=0.5 GD                 1662    3.98    8.5   0.995   –      2
  fnn η=0.1 B=2                   3384    6.4    10.2   0.37   0.78    4-5
  fnn η=0.1 B=5                   3166   11.7    15.9   0.70   0.75    3.5
  fnn η=0.1 B=20                  3094   17.7    21.6   0.94   0.44    3-5
  fnn η=0.1 GD                    3101   19.2    23.1   0.99    –      4-6
  fnn η=0.5 B=10 (C3 partner)      831    3.1     5.7   0.89   0.94    1
  fnn_gd η=0.2 GD μ=0.5           1814   15.0    20.4   1.007   –      3
  fnn_gd η=0.2 GD μ=0.8            816   17.9    22.1   0.99    –      2
  fnn η=0.1 B=5 μ=0.5             1714    8.7    13.0   0.30   0.58    2
  fnn η=0.1 B=5 μ=0.9              674    1.3     3.1   0.04   0.16    1
  resfnn_free η=0.1 B=5           2447   14.3    18.4   0.72   0.82    3-4
  resfnn_free η=0.1 B=10          2393   16.9    20.4   0.90   0.63    3-4
  resfnn_free η=0.1 GD            2474   20.2    25.1   1.016   –      3-6
  resfnn_bn η=0.1 B=10 (cap)      3000   15.2    33.8   0.89   1.12    6-8
  resfnn_bn η=0.1 B=20 (cap)      3000   23.2    52.9   1.28   1.22    7-9
  resfnn_bn η=0.1 GD               202  246     578    12.5     –      1
  ============================  ======  ======  ======  =====  =====  ======

  So C5: landscape-limited at η = 0.05 (a·η/2 = 0.5-0.6), edge at 0.1-0.5; C6/C7: a and s fall with
  B, s/bound up to 0.78; C3: (η, B) = (0.5, 10) is flatter than (0.1, 2) in every seed; C8:
  r(a, s) = 0.987 over the 33 FNN minima; C14: a·η/(2(1+μ)) ≈ 1 for heavy-ball GD, SGD's a and s
  fall with μ. C9 (from fnn η = 0.1 GD, a = 19.8, seed 0): GD η′ = 0.2 leaves within 20 iterations
  (a → 11.2, loss 1e-3 → 9e-3) and reaches a ≈ 10.2 by 260; SGD B′ = 2 leaves within 40
  (a → 15.4, then 13); GD η′ = 0.05 and SGD B′ = 20 keep a within 3% for 500 iterations.
  The plan restarts SGD with B′ = 1: B′ = 2 does not halve a within 600 iterations (C9 needs it).
* Residual nets (C13): the conv :class:`~stabcheck.experiments.models.ResNet` (depth 8, width 1) costs
  0.12-0.2 s per GD step at n = 100 here, too slow for thousands of steps, so ``small`` uses the
  fully connected :class:`~stabcheck.experiments.models.ResidualFNN` (width 50, one block) on the same data; the
  conv ResNet runs at ``paper`` scale. With BatchNorm (trained in train mode, measured in eval
  mode) GD's a is 12× beyond 2/η, the authors' "bounds broken by large factors"; and the train-mode
  mini-batch loss of SGD stays near 1e-2 (B = 10) or 3e-3 (B = 25-50) while the eval loss is 1e-3
  or less, so SGD with BatchNorm ends at its cap (status ``max_iters``, 3000 iterations; B = 2 does
  not fit at all: eval loss 0.08 after 20 000).
* The paper-scale FNN GD step (n = 1000, 784-500-500-500-10) runs at 5.4 it/s on one core of this
  CPU (2.0 it/s with 2 threads under load): paper scale needs a GPU.

>>> p = profile("small")
>>> p.setups["fnn"].n, p.setups["fnn"].model_options
(100, (('widths', (50, 50)),))
>>> c = p.setups["fnn"].config(lr=0.1, batch_size=None, seed=0)
>>> c.batch_size, c.label
(100, 'fnn-eta0.1-Bn-seed0')
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Setup:
    """What is trained: data (``dataset``, first ``n`` training samples), model, loss and stopping rule."""

    name: str
    dataset: str
    n: int
    model: str
    model_options: tuple[tuple[str, Any], ...] = ()
    tol: float = 1e-4
    max_iters: int = 100_000
    loss: str = "mse"
    data_options: tuple[tuple[str, Any], ...] = ()

    def config(self, lr: float, batch_size: int | None, seed: int = 0, momentum: float = 0.0,
               sampler: str = "epoch") -> "MinimumConfig":
        """The minimum trained by SGD(η = lr, B = batch_size or n for GD, μ = momentum) from ``seed``."""
        return MinimumConfig(self, float(lr), self.n if batch_size is None else int(batch_size), float(momentum),
                             int(seed), sampler)


@dataclass(frozen=True)
class MinimumConfig:
    """A setup plus the optimiser settings: everything that decides a trained minimum."""

    setup: Setup
    lr: float
    batch_size: int
    momentum: float = 0.0
    seed: int = 0
    sampler: str = "epoch"

    @property
    def is_gd(self) -> bool:
        return self.batch_size == self.setup.n

    @property
    def label(self) -> str:
        """Readable id for test parametrisation, e.g. ``fnn-eta0.1-B5-mu0.5-seed2``."""
        b = "n" if self.is_gd else str(self.batch_size)
        mu = f"-mu{self.momentum:g}" if self.momentum else ""
        smp = "" if self.sampler == "epoch" else f"-{self.sampler}"
        return f"{self.setup.name}-eta{self.lr:g}-B{b}{mu}{smp}-seed{self.seed}"

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def with_(self, **changes) -> "MinimumConfig":
        """A copy with some optimiser settings changed (lr, batch_size, momentum, seed, sampler)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Grid:
    """(η, B, μ) settings × seeds on one setup; ``batch_sizes`` entry None = GD."""

    setup: str
    lrs: tuple[float, ...]
    batch_sizes: tuple[int | None, ...]
    seeds: tuple[int, ...]
    momenta: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class RestartPlan:
    """C9: restart from a converged minimum with new settings, sharpness every ``every`` iterations.

    ``unstable``/``stable``: (η′, B′ or None for GD) expected to leave / keep the start minimum;
    the claim must confirm the prediction with a and s measured at the restart point.
    """

    setup: str
    start: tuple[float, int | None]
    seeds: tuple[int, ...]
    unstable: tuple[tuple[float, int | None], ...]
    stable: tuple[tuple[float, int | None], ...]
    escape_iters: int
    stable_iters: int
    every: int


@dataclass(frozen=True)
class Profile:
    """Setups and per-claim grids of one scale. ``minima()`` lists every config the claims train."""

    name: str
    setups: dict[str, Setup]
    measure_tol: float
    measure_maxiter: int
    gd_lrs: Grid                                   # C5 (and C8, C12)
    batch: Grid                                    # C6, C7 (and C8, C12)
    equal_ratio: tuple[tuple[tuple[float, int], tuple[float, int]], ...]  # C3: pairs (η, B) with equal η/B
    equal_ratio_seeds: tuple[int, ...]
    restart: RestartPlan                           # C9
    residual: tuple[Grid, ...]                     # C13: one grid per variant
    momentum_gd: Grid                              # C14 heavy-ball GD
    momentum_sgd: Grid                             # C14 heavy-ball SGD
    extra_gd_lrs: tuple[Grid, ...] = ()            # C5/C8 on further setups (paper: VGG on CIFAR-10)

    def configs(self, grid: Grid) -> list[MinimumConfig]:
        setup = self.setups[grid.setup]
        return [setup.config(lr, b, seed, mu) for lr in grid.lrs for b in grid.batch_sizes
                for mu in grid.momenta for seed in grid.seeds]

    def equal_ratio_configs(self) -> list[tuple[MinimumConfig, MinimumConfig]]:
        setup = self.setups[self.batch.setup]
        return [(setup.config(*first, seed=s), setup.config(*second, seed=s))
                for first, second in self.equal_ratio for s in self.equal_ratio_seeds]

    def restart_starts(self) -> list[MinimumConfig]:
        setup = self.setups[self.restart.setup]
        return [setup.config(*self.restart.start, seed=s) for s in self.restart.seeds]

    def minima(self) -> list[MinimumConfig]:
        """Every distinct minimum the trained-net claims need, in a stable order."""
        out: list[MinimumConfig] = []
        grids = [self.gd_lrs, self.batch, *self.extra_gd_lrs, *self.residual, self.momentum_gd, self.momentum_sgd]
        for grid in grids:
            out += self.configs(grid)
        out += [c for pair in self.equal_ratio_configs() for c in pair]
        out += self.restart_starts()
        seen: set[MinimumConfig] = set()
        return [c for c in out if not (c in seen or seen.add(c))]


def _small() -> Profile:
    fnn = Setup("fnn", "fashion_mnist", 100, "fnn", (("widths", (50, 50)),), tol=1e-3, max_iters=20_000)
    # GD's edge claims (C5, C14) need the paper's tol: at 1e-3 GD can stop while still oscillating at the edge.
    fnn_gd = replace(fnn, name="fnn_gd", tol=1e-4, max_iters=30_000)
    res_bn = Setup("resfnn_bn", "fashion_mnist", 100, "resfnn",
                   (("width", 50), ("blocks", 1), ("batch_norm", True)), tol=1e-3, max_iters=3_000)
    res_free = Setup("resfnn_free", "fashion_mnist", 100, "resfnn",
                     (("width", 50), ("blocks", 1), ("batch_norm", False)), tol=1e-3, max_iters=20_000)
    return Profile(
        name="small",
        setups={s.name: s for s in (fnn, fnn_gd, res_bn, res_free)},
        measure_tol=1e-3,
        measure_maxiter=50,
        gd_lrs=Grid("fnn_gd", lrs=(0.05, 0.1, 0.2, 0.5), batch_sizes=(None,), seeds=(0, 1)),
        batch=Grid("fnn", lrs=(0.1,), batch_sizes=(2, 5, 20, None), seeds=(0, 1, 2)),
        equal_ratio=(((0.1, 2), (0.5, 10)),),
        equal_ratio_seeds=(0, 1, 2),
        restart=RestartPlan("fnn", start=(0.1, None), seeds=(0,), unstable=((0.2, None), (0.1, 1)),
                            stable=((0.05, None), (0.1, 20)), escape_iters=300, stable_iters=500, every=20),
        residual=(Grid("resfnn_free", lrs=(0.1,), batch_sizes=(5, 10, None), seeds=(0, 1)),
                  Grid("resfnn_bn", lrs=(0.1,), batch_sizes=(10, 20, None), seeds=(0, 1))),
        momentum_gd=Grid("fnn_gd", lrs=(0.2,), batch_sizes=(None,), seeds=(0, 1), momenta=(0.0, 0.5, 0.8)),
        momentum_sgd=Grid("fnn", lrs=(0.1,), batch_sizes=(5,), seeds=(0, 1, 2), momenta=(0.0, 0.5, 0.9)),
    )


def _paper() -> Profile:
    fnn = Setup("fnn", "fashion_mnist", 1000, "fnn", (("widths", (500, 500, 500)),), tol=1e-4, max_iters=200_000)
    vgg = Setup("vgg", "cifar10", 1000, "vgg", (), tol=1e-4, max_iters=200_000, data_options=(("allow_jpeg", True),))
    res_bn = Setup("resnet_bn", "cifar10", 1000, "resnet", (("depth", 14), ("width", 2), ("batch_norm", True)),
                   tol=1e-4, max_iters=50_000, data_options=(("allow_jpeg", True),))
    res_free = Setup("resnet_free", "cifar10", 1000, "resnet", (("depth", 14), ("width", 2), ("batch_norm", False)),
                     tol=1e-4, max_iters=50_000, data_options=(("allow_jpeg", True),))
    seeds = (0, 1, 2, 3, 4)
    return Profile(
        name="paper",
        setups={s.name: s for s in (fnn, vgg, res_bn, res_free)},
        measure_tol=1e-4,
        measure_maxiter=50,
        gd_lrs=Grid("fnn", lrs=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0), batch_sizes=(None,), seeds=seeds),
        batch=Grid("fnn", lrs=(0.1,), batch_sizes=(10, 100, None), seeds=seeds),
        equal_ratio=(((0.1, 10), (0.5, 50)),),
        equal_ratio_seeds=seeds,
        restart=RestartPlan("fnn", start=(0.1, None), seeds=(0,), unstable=((0.3, None), (0.1, 4)),
                            stable=((0.05, None), (0.1, 100)), escape_iters=1000, stable_iters=1000, every=25),
        residual=(Grid("resnet_free", lrs=(0.1,), batch_sizes=(10, 100, None), seeds=(0, 1, 2)),
                  Grid("resnet_bn", lrs=(0.1,), batch_sizes=(10, 100, None), seeds=(0, 1, 2))),
        momentum_gd=Grid("fnn", lrs=(0.1,), batch_sizes=(None,), seeds=(0, 1, 2), momenta=(0.0, 0.5, 0.9)),
        momentum_sgd=Grid("fnn", lrs=(0.1,), batch_sizes=(10,), seeds=(0, 1, 2), momenta=(0.0, 0.5, 0.9)),
        extra_gd_lrs=(Grid("vgg", lrs=(0.01, 0.05, 0.1), batch_sizes=(None,), seeds=(0, 1, 2)),),
    )


PROFILES = {"small": _small, "paper": _paper}


def profile(name: str) -> Profile:
    """The profile for ``--scale name`` (``small`` or ``paper``)."""
    if name not in PROFILES:
        raise ValueError(f"unknown scale {name!r}; choose one of {tuple(PROFILES)}")
    return PROFILES[name]()
