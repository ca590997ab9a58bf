"""What a trained minimum is: a :class:`Setup` (data, model, loss, stopping rule) and a
:class:`MinimumConfig` (the setup plus the optimiser's η, B, μ, seed and sampler).

A :class:`MinimumConfig` is the key of a cached trained minimum (:mod:`stabcheck.experiments.minima`):
its fields that change training make the cache key, and ``label`` names it wherever a reader sees
it: the cache's summaries and the claims' test ids. ``batch_size=None`` in :meth:`Setup.config` means GD (B = n). Which minima an
experiment trains is the experiment's data (the claims suite keeps its grids in ``claims/profiles.py``).

>>> fnn = Setup("fnn", "fashion_mnist", 100, "fnn", (("widths", (50, 50)),), tol=1e-3, max_iters=20_000)
>>> c = fnn.config(lr=0.1, batch_size=None, seed=0)
>>> c.batch_size, c.is_gd, c.label
(100, True, 'fnn-lr=0.1-B=n-seed=0')
>>> c.with_(batch_size=5, momentum=0.5).label
'fnn-lr=0.1-B=5-mu=0.5-seed=0'
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
        """Readable unique id, e.g. ``fnn-lr=0.1-B=5-mu=0.5-seed=2`` (``B=n``: GD; a sampler other than
        ``epoch`` is named before the seed); the claims' test ids are these."""
        b = "n" if self.is_gd else str(self.batch_size)
        mu = f"-mu={self.momentum:g}" if self.momentum else ""
        smp = "" if self.sampler == "epoch" else f"-{self.sampler}"
        return f"{self.setup.name}-lr={self.lr:g}-B={b}{mu}{smp}-seed={self.seed}"

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def with_(self, **changes) -> "MinimumConfig":
        """A copy with some optimiser settings changed (lr, batch_size, momentum, seed, sampler)."""
        return replace(self, **changes)
