"""An on-disk cache of trained minima, shared by all claims and safe under pytest-xdist.

Key = sha256 of what trains (:func:`training_fields`: the :class:`~stabcheck.experiments.setups.MinimumConfig`
without the setup's display name), the trainer version, the torch
version and the device type (CPU and GPU runs give different parameters). A miss trains under a
file lock (``filelock``), so concurrent workers asking for the same minimum train it once; files
are written to a temporary name and renamed, so a reader never sees half a file. Temporaries left
by a killed writer are removed when the key's lock is next taken; a damaged cache file (unreadable
or incomplete) is named in a warning, deleted and trained again.

>>> import tempfile
>>> from stabcheck.experiments.setups import Setup
>>> setup = Setup("tiny", "fashion_mnist", 20, "fnn", (("widths", (8,)),), tol=1e-2, max_iters=200)
>>> cache = MinimaCache(tempfile.mkdtemp(), progress=False)                # doctest: +SKIP
>>> m = cache.get(setup.config(lr=0.5, batch_size=None, seed=0))          # doctest: +SKIP
>>> m.record["status"], cache.misses, cache.get(m.config).record == m.record, cache.hits   # doctest: +SKIP
('converged', 1, True, 1)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import nn

from ..curvature.problem import Problem
from ..files import write_atomic
from .data import Dataset, load_dataset
from .ensemble import train_ensemble
from .models import build_model
from .setups import MinimumConfig
from .sgd import TRAINER_VERSION
from .stacked import matches_train
from .train import train

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: How often a process waiting for another's training of the same minimum says so (seconds).
WAIT_REPORT_EVERY = 60.0
# What a cache file holds; a file without one of them is damaged.
_BLOB_KEYS = ("config", "record", "loss_curve", "state")


def default_cache_dir() -> str:
    """STABCHECK_CACHE_DIR, else the user's cache folder: minima that took hours survive a new checkout."""
    if os.environ.get("STABCHECK_CACHE_DIR"):
        return os.environ["STABCHECK_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "stabcheck" / "minima")


def cache_key(config: MinimumConfig, device: str | torch.device = "cpu", dtype: str = "float32") -> str:
    """Hex digest naming the cached minimum of ``config`` trained on ``device`` in ``dtype``.

    >>> from stabcheck.experiments.setups import Setup
    >>> c = Setup("fnn", "fashion_mnist", 100, "fnn", (("widths", (50, 50)),)).config(0.1, None, 0)
    >>> cache_key(c) == cache_key(c), cache_key(c) == cache_key(c.with_(seed=1))
    (True, False)
    """
    payload = {
        "config": training_fields(config), "trainer_version": TRAINER_VERSION,
        "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
        "device": torch.device(device).type, "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def training_fields(config: MinimumConfig) -> dict:
    """What decides the trained parameters: the config without the setup's display ``name``, so two
    setups that differ only in name (a profile's ``fnn`` and ``fnn_gd``) share one cached minimum.

    >>> from stabcheck.experiments.setups import Setup
    >>> a = Setup("fnn", "fashion_mnist", 100, "fnn").config(0.1, None, 0)
    >>> b = Setup("fnn_gd", "fashion_mnist", 100, "fnn").config(0.1, None, 0)
    >>> training_fields(a) == training_fields(b), cache_key(a) == cache_key(b)
    (True, True)
    """
    return training_fields_of(config.as_dict())


@lru_cache(maxsize=8)
def _dataset(name: str, n: int, data_options: tuple, data_dir: str | None) -> Dataset:
    return load_dataset(name, n, with_test=False, data_dir=data_dir, **dict(data_options))


def dataset_for(config: MinimumConfig, data_dir: str | None = None) -> Dataset:
    """The training data of a config's setup (loaded once per process)."""
    s = config.setup
    return _dataset(s.dataset, s.n, s.data_options, data_dir)


def build_for(config: MinimumConfig, dataset: Dataset) -> nn.Module:
    """The freshly initialised model of a config (initialisation drawn from ``config.seed``)."""
    s = config.setup
    return build_model(s.model, seed=config.seed, in_shape=tuple(dataset.inputs.shape[1:]),
                       num_classes=dataset.num_classes, **dict(s.model_options))


@dataclass
class Minimum:
    """A trained minimum: its config, the training record (dict, no parameters) and the parameters.

    ``model()`` gives the net in eval mode; ``problem()`` the :class:`~stabcheck.curvature.problem.Problem` on
    its training set with the setup's loss, ready for ``stabcheck.sharpness`` / ``non_uniformity``.
    Check ``status`` first: a ``diverged`` run is cached too (its parameters are not finite, so
    ``problem()`` refuses it), and ``max_iters`` means the EMA never fell below tol.
    """

    config: MinimumConfig
    record: dict
    loss_curve: list[float]
    state: dict[str, torch.Tensor]
    dataset: Dataset
    key: str
    path: Path
    from_cache: bool

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def converged(self) -> bool:
        return self.record["status"] == "converged"

    def model(self, device: str | torch.device = "cpu") -> nn.Module:
        net = build_for(self.config, self.dataset)
        net.load_state_dict(self.state)
        return net.to(device).eval()

    def problem(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Problem:
        net = self.model(device or "cpu")
        d = self.dataset
        return Problem(net, d.inputs, d.targets(self.config.setup.loss), loss=self.config.setup.loss,
                       dtype=dtype, device=device)

    def summary(self) -> dict:
        """JSON-ready: config, key and the training record."""
        return {"config": self.config.as_dict(), "label": self.config.label, "key": self.key, **self.record}


class MinimaCacheError(RuntimeError):
    """The cache cannot serve a minimum: its folder is unusable, or a minimum's lock stayed taken past
    ``lock_timeout`` (the message names the folder or the minimum)."""


class MinimaCache:
    """Trained minima in ``root`` (one ``<key>.pt`` with parameters, record and loss curve, and a
    readable ``<key>.json``); ``get(config)`` trains on a miss and loads on a hit.

    CPU training uses ``cpu_threads`` threads (default 1: the small profile's nets are
    overhead-bound, one thread avoids oversubscribing a 2-core machine under pytest-xdist, and a
    fixed thread count keeps the floating-point reductions, hence the parameters, reproducible).

    A process that finds a minimum's lock taken waits for the process training it, saying so every
    ``WAIT_REPORT_EVERY`` seconds (with ``progress``). ``lock_timeout`` (seconds) ends the wait with a
    :class:`MinimaCacheError` naming the minimum; the default None waits as long as the training
    takes: the lock (``flock``) is released when its holder exits, so a taken lock means a live
    process training that minimum, for seconds at the small scale or hours for a paper-scale GD run.
    """

    def __init__(self, root: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: str = "float32",
                 data_dir: str | None = None, progress: bool = True, lock_timeout: float | None = None,
                 cpu_threads: int | None = 1):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
        if lock_timeout is not None and not lock_timeout >= 0:
            raise ValueError(f"lock_timeout must be a number of seconds ≥ 0 or None (wait as long as it takes), "
                             f"got {lock_timeout!r}")
        _check_folder(Path(root))
        self.root = Path(root)
        self.device = str(device)
        self.dtype = dtype
        self.data_dir = data_dir
        self.progress = progress
        self.lock_timeout = lock_timeout
        self.cpu_threads = cpu_threads
        self.hits = 0
        self.misses = 0

    def path(self, config: MinimumConfig) -> Path:
        return self.root / f"{cache_key(config, self.device, self.dtype)}.pt"

    def get(self, config: MinimumConfig) -> Minimum:
        """The minimum of ``config``: loaded from the cache, or trained, stored and returned."""
        path = self.path(config)
        dataset = dataset_for(config, self.data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self._acquire(path, config)
        try:
            _remove_stale_temporaries(path)
            if path.exists():
                minimum = self._load(path, config, dataset)
                if minimum is not None:
                    self.hits += 1
                    return minimum
            self.misses += 1
            return self._train_and_store(path, config, dataset)
        finally:
            lock.release()

    def _acquire(self, path: Path, config: MinimumConfig) -> FileLock:
        """The taken lock of ``path``, after waiting for a process that trains ``config`` (see the class)."""
        lock = FileLock(str(path) + ".lock")
        start = time.monotonic()
        while True:
            waited = time.monotonic() - start
            left = math.inf if self.lock_timeout is None else self.lock_timeout - waited
            try:
                lock.acquire(timeout=max(0.0, min(WAIT_REPORT_EVERY, left)))
                return lock
            except Timeout:
                waited = time.monotonic() - start
                if self.lock_timeout is not None and waited >= self.lock_timeout:
                    raise MinimaCacheError(
                        f"gave up after {waited:.0f} s waiting for minimum {config.label} ({path.name}): another "
                        f"process holds its lock {lock.lock_file} and is training it; wait for it, or pass a "
                        "longer lock_timeout (None waits as long as the training takes)") from None
                if self.progress:
                    print(f"[minima] waiting for {config.label}: another process is training it ({waited:.0f} s "
                          f"so far; lock {lock.lock_file})", file=sys.stderr, flush=True)

    def get_many(self, configs: list[MinimumConfig]) -> list[Minimum]:
        """The minima of ``configs``, in order; the missing seeds of one SGD setting are trained together.

        Configs that differ only in ``seed`` form a setting. Where two or more of a setting's minima are
        missing, the setting is SGD (B < n) on the CPU and the ensemble trainer reproduces ``train`` bit
        for bit there (:func:`~stabcheck.experiments.stacked.matches_train`), they are trained in one
        :func:`~stabcheck.experiments.ensemble.train_ensemble` run under all their locks and stored
        as ``get`` would store them (same keys; the record's ``ensemble`` says how many trained
        together). Everything else goes through ``get``: GD keeps its checkpoints, and an ensemble has
        none, so an interrupted ensemble run starts again.
        """
        settings: dict[MinimumConfig, list[MinimumConfig]] = {}
        for config in dict.fromkeys(configs):
            settings.setdefault(config.with_(seed=0), []).append(config)
        for members in settings.values():
            missing = [c for c in members if not self.path(c).exists()]
            if len(missing) >= 2 and self._ensemble_trains(missing[0]):
                self._train_together(missing)
        return [self.get(c) for c in configs]

    def _ensemble_trains(self, config: MinimumConfig) -> bool:
        if config.is_gd or torch.device(self.device).type != "cpu":
            return False
        dataset = dataset_for(config, self.data_dir)
        return matches_train(build_for(config, dataset), config.batch_size, n=len(dataset.inputs))

    def _train_together(self, configs: list[MinimumConfig]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # One order of taking locks: no deadlock between runs.
        paths = sorted(((self.path(c), c) for c in configs), key=lambda pair: pair[0])
        locks = []
        try:
            for path, config in paths:
                locks.append(self._acquire(path, config))
            for path, _ in paths:
                _remove_stale_temporaries(path)
            todo = [c for c in configs if not self.path(c).exists()]
            if len(todo) < 2:
                return  # another run trained them meanwhile; ``get`` does the rest
            dataset = dataset_for(todo[0], self.data_dir)
            first, s = todo[0], todo[0].setup
            if self.progress:
                print(f"[minima] training {len(todo)} seeds of {first.label.rpartition('-seed')[0]} together on "
                      f"{self.device} (cache misses: {', '.join(self.path(c).name for c in todo)})",
                      file=sys.stderr, flush=True)
            nets = [build_for(c, dataset) for c in todo]
            records = train_ensemble(nets, dataset.inputs, dataset.targets(s.loss), lr=first.lr,
                                     batch_size=first.batch_size, seeds=[c.seed for c in todo], loss=s.loss,
                                     momentum=first.momentum, tol=s.tol, max_iters=s.max_iters,
                                     sampler=first.sampler, device=self.device, dtype=_DTYPES[self.dtype],
                                     engine="mlp", progress=self.progress, num_threads=self.cpu_threads)
            for config, rec in zip(todo, records):
                self._store(self.path(config), config, dataset, rec, ensemble=len(todo))
                self.misses += 1
        finally:
            for lock in reversed(locks):
                lock.release()

    def _load(self, path: Path, config: MinimumConfig, dataset: Dataset) -> Minimum | None:
        """The cached minimum, or None after deleting an unreadable or incomplete file (with a warning)."""
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated zip, EOF, bad pickle: all mean a damaged file
            damage = f"cannot be read ({type(err).__name__})"
        else:
            missing = [k for k in _BLOB_KEYS if not isinstance(blob, dict) or k not in blob]
            damage = f"lacks the entries {missing}" if missing else ""
        if damage:
            warnings.warn(f"minima cache file {path} {damage}; deleting it and training the minimum again",
                          RuntimeWarning, stacklevel=3)
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            return None
        if training_fields_of(blob["config"]) != training_fields(config):
            raise RuntimeError(f"cache file {path} holds a different config (hash collision or edited file); delete it")
        return Minimum(config, blob["record"], blob["loss_curve"], blob["state"], dataset, path.stem, path, True)

    def _train_and_store(self, path: Path, config: MinimumConfig, dataset: Dataset) -> Minimum:
        s = config.setup
        if self.progress:
            print(f"[minima] training {config.label} on {self.device} (cache miss: {path.name})", file=sys.stderr,
                  flush=True)
        net = build_for(config, dataset)
        rec = train(net, dataset.inputs, dataset.targets(s.loss), lr=config.lr, batch_size=config.batch_size,
                    loss=s.loss, momentum=config.momentum, tol=s.tol, max_iters=s.max_iters, seed=config.seed,
                    sampler=config.sampler, device=self.device, dtype=_DTYPES[self.dtype], progress=self.progress,
                    num_threads=self.cpu_threads if torch.device(self.device).type == "cpu" else None,
                    checkpoint=path.with_suffix(".ckpt"))  # an interrupted long run resumes here
        return self._store(path, config, dataset, rec, ensemble=1)

    def _store(self, path: Path, config: MinimumConfig, dataset: Dataset, rec, ensemble: int) -> Minimum:
        """Write a trained minimum (``rec``: its TrainRecord; ``ensemble``: members trained together)."""
        record = rec.as_dict()
        record["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        record["data_source"] = dataset.source
        record["ensemble"] = ensemble
        blob = {"config": config.as_dict(), "record": record, "loss_curve": rec.loss_curve, "state": rec.state}
        write_atomic(path, lambda fh: torch.save(blob, fh))
        summary = {"config": config.as_dict(), "label": config.label, **record}
        write_atomic(path.with_suffix(".json"), json.dumps(summary, indent=1))
        if self.progress:
            together = f" (one of {ensemble} trained together)" if ensemble > 1 else ""
            print(f"[minima] {config.label}: {rec.status} after {rec.iterations} iterations, "
                  f"{rec.wall_time:.1f} s{together}", file=sys.stderr, flush=True)
        return Minimum(config, record, rec.loss_curve, rec.state, dataset, path.stem, path, False)


def _check_folder(root: Path) -> None:
    """Refuse a cache folder that is a file or lies below one (it could never be created)."""
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == root else f"lies below the file {folder}"
                raise MinimaCacheError(f"the minima cache folder {root} {where}; pass a folder (--cache-dir or "
                                       "STABCHECK_CACHE_DIR)")
            return


def training_fields_of(stored: dict) -> dict:
    """:func:`training_fields` of a config stored as a dict in a cache file."""
    return {**stored, "setup": {k: v for k, v in stored["setup"].items() if k != "name"}}


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of ``path``'s key (``.<key>.*.tmp``): called under the key's lock, so
    no writer is running and any such file was left by a killed one."""
    for tmp in path.parent.glob(f".{path.stem}.*.tmp"):
        tmp.unlink(missing_ok=True)

