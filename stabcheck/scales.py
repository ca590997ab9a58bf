"""The ``small`` and ``paper`` profiles: what the trained-net claims train, as data.

A :class:`Setup` fixes the data, model, loss and stopping rule; a :class:`MinimumConfig` adds the
optimiser settings (η, B, μ, seed) and is the key of a cached trained minimum
(:mod:`stabcheck.minima`). A :class:`Profile` holds the setups and the (η, B, μ, seed) grids of
each claim. ``batch_size=None`` in a grid means GD (B = n).

``paper`` reproduces PAPER.md §3: the first n = 1000 FashionMNIST training images,
FNN 784-500-500-500-10, MSE, tol 1e-4; the VGG of Table 4 on the first 1000 CIFAR-10 images of
classes 0/1 (offline, that needs the JPEG-decoded rows: ``allow_jpeg``); the authors' ResNet-14
(width 2) with and without BatchNorm; GD η grid of the paper's C5 table; SGD at η = 0.1 with
B = 10, 100 and GD; 5 seeds. The paper does not list its CIFAR-10 η grid, its restart settings
beyond the authors' data files (GD η′ = 0.3, 0.5; SGD B′ = 1, 4 at η = 0.1) or its momentum grid;
those entries of ``paper`` are this project's choice.

``small`` was chosen by measurement on the 2-core CI CPU (torch 2.14.1, one thread per run, with
other jobs competing; times are CPU seconds of the training process, measurement not included):

* FashionMNIST, first n = 100 training images; FNN 784-50-50-10; tol 1e-3; cap 20 000 iterations.
  n = 200 with width 100 showed the same effects at 2-4× the cost (GD η = 0.05: 9077 iterations,
  41 s wall). The FNN step is overhead-bound here: about 250-700 GD steps/s.
* GD (C5), seed 0: η = 0.05 → 5724 it, 11 s, a = 22.8 (a·η/2 = 0.57, landscape-limited);
  η = 0.1 → 2938 it, 4 s, a = 19.8 (0.99); η = 0.2 → 1746 it, 2 s, a = 10.0 (1.00);
  η = 0.5 → 751 it, 1.4 s, a = 4.05 (1.01). η = 1.0 at tol 1e-3 stopped at a·η/2 = 1.09 / 1.03
  (seeds 0/1; 0.98 at tol 1e-4): the loose tol stops large-η GD while it still oscillates at the
  edge, so the grid ends at η = 0.5. tol 1e-4 costs 2.4× the iterations (η = 0.1: 7052 it, 15 s).
* SGD at η = 0.1 (C6/C7), seed 0, s/bound with bound = √(B(n−1)/(n−B))/η:
  B = 1: a = 3.3, s = 5.6 (0.56); B = 2: a = 7.4, s = 11.0 (0.78); B = 5: a = 11.8, s = 15.6 (0.68);
  B = 20: a = 18.9, s = 21.9 (0.44); GD: a = 19.8, s = 22.7. 2800-3300 iterations, 3-4 s each.
  Across all these minima s/a lies in 1.1-2.4 and r(a, s) ≈ 0.99 (C8).
* Heavy-ball GD (C14), η = 0.2: μ = 0.5 → a = 15.0 (a·η/(2(1+μ)) = 1.00, 829 it);
  μ = 0.8 → a = 17.9 (0.995, 345 it). SGD η = 0.1, B = 5: μ = 0 / 0.5 / 0.9 → a = 11.8 / 9.0 / 1.2,
  s = 15.6 / 13.1 / 3.1.
* Restart (C9) from GD η = 0.1 (a = 19.8): GD η′ = 0.2 leaves within 20 iterations
  (a → 11.2, loss 1e-3 → 9e-3) and settles at a ≈ 10.2-10.5 by 260-300 iterations; SGD B′ = 2 leaves
  within 40 (a → 15.4, then 13); GD η′ = 0.05 and SGD B′ = 20 keep a within 3% for 500 iterations.
  Each restart of 300-500 iterations with a sharpness every 20-100 iterations: 1.5-4.5 s.
* Residual nets (C13): the conv ResNet (depth 8, width 1) costs 0.12-0.2 s per GD step at n = 100
  on this CPU, too slow for thousands of steps, so the small profile uses :class:`ResidualFNN`
  (width 50, one block) on the same FashionMNIST data; the conv ResNet runs at paper scale.
  BatchNorm-free, η = 0.1: GD a = 20.0, s = 25.0 (2444 it, 8 s); B = 10: a = 15.7, s = 19.9 (0.60);
  B = 5: a = 14.2, s = 18.1 (0.79); B = 2: a = 9.6, s = 13.6 (0.96).
  With BatchNorm (trained in train mode, measured in eval mode): GD stops after about 200 iterations
  at a = 250, s = 580 (a·η/2 = 12.5: the bound broken by a large factor, as the authors' data);
  B = 10: a = 16.1, s = 33.6 (s/bound 1.01); B = 20: a = 18.8, s = 48.1 (0.97). With BatchNorm
  the mini-batch loss in train mode stays near 1e-2 (B = 10) or 3e-3 (B = 25-50) while the eval
  loss is 1e-3 or less, so SGD with BatchNorm ends at its cap (status ``max_iters``, 3000 here);
  B = 2 with BatchNorm does not fit at all (eval loss 0.08 after 20 000 iterations).
* Measuring a and s (Lanczos, tol 1e-3) at n = 100 takes about 0.2 s and 1.5-2.5 s per minimum.

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
        fnn = self.setups[self.gd_lrs.setup]
        return [(fnn.config(*first, seed=s), fnn.config(*second, seed=s))
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
    res_bn = Setup("resfnn_bn", "fashion_mnist", 100, "resfnn",
                   (("width", 50), ("blocks", 1), ("batch_norm", True)), tol=1e-3, max_iters=3_000)
    res_free = Setup("resfnn_free", "fashion_mnist", 100, "resfnn",
                     (("width", 50), ("blocks", 1), ("batch_norm", False)), tol=1e-3, max_iters=20_000)
    return Profile(
        name="small",
        setups={s.name: s for s in (fnn, res_bn, res_free)},
        measure_tol=1e-3,
        measure_maxiter=50,
        gd_lrs=Grid("fnn", lrs=(0.05, 0.1, 0.2, 0.5), batch_sizes=(None,), seeds=(0, 1)),
        batch=Grid("fnn", lrs=(0.1,), batch_sizes=(2, 5, 20, None), seeds=(0, 1, 2)),
        equal_ratio=(((0.1, 2), (0.5, 10)),),
        equal_ratio_seeds=(0, 1, 2),
        restart=RestartPlan("fnn", start=(0.1, None), seeds=(0,), unstable=((0.2, None), (0.1, 2)),
                            stable=((0.05, None), (0.1, 20)), escape_iters=300, stable_iters=500, every=20),
        residual=(Grid("resfnn_free", lrs=(0.1,), batch_sizes=(5, 10, None), seeds=(0, 1)),
                  Grid("resfnn_bn", lrs=(0.1,), batch_sizes=(10, 20, None), seeds=(0, 1))),
        momentum_gd=Grid("fnn", lrs=(0.2,), batch_sizes=(None,), seeds=(0, 1), momenta=(0.0, 0.5, 0.8)),
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
