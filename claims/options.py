"""The claims' command-line options and their one reader (a pytest plugin the root conftest loads).

Declared here: ``--scale``, ``--seed``, ``--seeds-per-setting``, ``--budget``, ``--report-dir``.

:func:`read_options` reads them once into a :class:`SuiteOptions` kept in ``config.stash``;
everything else (fixtures, parametrisation, the schedule, the report) asks :func:`suite_options`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from claims.profiles import PROFILES

SEEDS_ENV = "STABCHECK_SEEDS_PER_SETTING"
MAX_DURATION_S = 365 * 24 * 3600


@dataclass(frozen=True)
class SuiteOptions:
    """What a claims run was asked for."""

    scale: str
    seed: int
    seeds_per_setting: int | None   # keep the first k seeds of every grid; None: all
    device: str                     # the root conftest's --device
    budget_s: float | None          # stop the run once this many seconds are spent; None: no budget
    budget_text: str                # the budget as given, e.g. "90m"
    report_dir: Path | None


OPTIONS = pytest.StashKey[SuiteOptions]()


def pytest_addoption(parser):
    group = parser.getgroup("stabcheck")
    group.addoption("--seed", type=int, default=0, help="base seed for every random draw (default: 0)")
    group.addoption("--scale", choices=tuple(PROFILES), default="small",
                    help="small: the CPU profile, minutes (default); paper: the settings of PAPER.md §3 "
                         "(hours on a CPU; see the cost estimate at collection)")
    group.addoption("--seeds-per-setting", default=os.environ.get(SEEDS_ENV),
                    help=f"keep the first k seeds of every grid (env {SEEDS_ENV}; default: all)")
    group.addoption("--budget", default=None,
                    help="time budget of the run, e.g. 2h, 90m, 3600s or 1h30m: whole claims run cheapest first "
                         "and the run stops cleanly once the budget is spent")
    group.addoption("--report-dir", default=None,
                    help="folder for claims.json / claims.md of a claims run (default: reports/run-<time>)")


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``2h``, ``90m``, ``3600s`` or ``1h30m``.

    >>> parse_duration("2h"), parse_duration("90m"), parse_duration("1h30m"), parse_duration("45.5s")
    (7200.0, 5400.0, 5400.0, 45.5)
    """
    compact = re.sub(r"\s+", "", text.lower())
    if not re.fullmatch(r"(\d+(\.\d+)?[hms])+", compact):
        raise ValueError(f"cannot read the duration {text!r}: give numbers with a unit h, m or s, "
                         "e.g. 2h, 90m, 3600s or 1h30m")
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", compact)
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)
    if seconds <= 0:
        raise ValueError(f"the duration {text!r} is not positive")
    if seconds > MAX_DURATION_S:  # the budget's timer takes no more
        raise ValueError(f"the duration {text!r} is longer than a year; give at most 8760h")
    return seconds


def _seeds_per_setting(text: str | None) -> int | None:
    if text in (None, ""):
        return None
    if not re.fullmatch(r"[0-9]+", str(text)) or int(text) < 1:
        raise pytest.UsageError(f"--seeds-per-setting (or {SEEDS_ENV}) must be a positive integer, got {text!r}")
    return int(text)


def read_options(config: pytest.Config) -> SuiteOptions:
    """The one reader of the claims' options (called once, through :func:`suite_options`)."""
    budget_text = config.getoption("--budget")
    try:
        budget = parse_duration(budget_text) if budget_text else None
    except ValueError as err:
        raise pytest.UsageError(f"--budget: {err}") from None
    report_dir = config.getoption("--report-dir")
    if report_dir:
        check_folder(Path(report_dir), "--report-dir")
    return SuiteOptions(scale=config.getoption("--scale"), seed=config.getoption("--seed"),
                        seeds_per_setting=_seeds_per_setting(config.getoption("--seeds-per-setting")),
                        device=config.getoption("--device"), budget_s=budget, budget_text=budget_text or "",
                        report_dir=Path(report_dir) if report_dir else None)


def check_folder(path: Path, flag: str) -> None:
    """A usage error unless ``path`` is a folder that exists or can be made, and takes new files."""
    if path.exists() and not path.is_dir():
        raise pytest.UsageError(f"{flag} {path} is a file, not a folder: give a folder (it is made if missing)")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise pytest.UsageError(f"{flag} {path} lies under the file {existing}: give a folder outside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{flag} {path}: cannot write in {existing}; give a folder you can write to")


def suite_options(config: pytest.Config) -> SuiteOptions:
    """The options of this run, read by :func:`read_options` on first use and kept in ``config.stash``."""
    if OPTIONS not in config.stash:
        config.stash[OPTIONS] = read_options(config)
    return config.stash[OPTIONS]


def pytest_configure(config):
    suite_options(config)  # a bad option is a usage error before anything runs
