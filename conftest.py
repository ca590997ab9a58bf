"""Root pytest configuration: the options every suite shares and the plugins it loads.

Options here (``pytest --help``, group "stabcheck"): ``--device``, ``--data-dir``, ``--cache-dir``;
``--device`` and ``--cache-dir`` are checked at start-up (a usage error, exit status 4), so that a
run on an unusable device or folder never reports the paper's claims as failing.
The claims' own options (``--scale``, ``--seed``, ``--seeds-per-setting``, ``--budget``,
``--report-dir``) are declared and read by :mod:`claims.options`.

Plugins: ``fixtures.data`` and ``fixtures.minima`` (datasets and trained minima, for tests and
claims); ``claims.options``, ``claims.schedule`` (cost estimate, ``--budget``) and
``claims.report_plugin`` (the ``claim`` fixture and the run's report). The claims' fixtures and
parametrisation live in ``claims/conftest.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from stabcheck.experiments.minima import default_cache_dir

ROOT = Path(__file__).resolve().parent

pytest_plugins = ["fixtures.data", "fixtures.minima", "claims.options", "claims.schedule", "claims.report_plugin"]


def pytest_addoption(parser):
    group = parser.getgroup("stabcheck")
    group.addoption("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    group.addoption("--data-dir", default=os.environ.get("STABCHECK_DATA_DIR"),
                    help="torchvision dataset root searched first (env STABCHECK_DATA_DIR)")
    group.addoption("--cache-dir", default=default_cache_dir(),
                    help="cache folder for trained minima (env STABCHECK_CACHE_DIR; default "
                         "$XDG_CACHE_HOME/stabcheck/minima or ~/.cache/stabcheck/minima, shared by every checkout)")


def check_device(text: str) -> None:
    """A usage error unless ``--device`` names a CPU or CUDA device that exists here and computes in float64."""
    import torch

    from stabcheck.curvature.problem import ProblemError, check_device as usable

    try:
        device = usable(text)
    except ProblemError as err:
        raise pytest.UsageError(f"--device {text}: {err}") from None
    if device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device {text}: the claims train and measure on cpu or cuda, not {device.type}")
    try:
        torch.ones(2, dtype=torch.float64, device=device).sum().item()
    except (RuntimeError, TypeError) as err:
        raise pytest.UsageError(f"--device {text} does not compute in float64 here ({err}); use cpu") from None


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        import torch

        # xdist runs one worker per core: more threads per worker only oversubscribe the CPU
        torch.set_num_threads(1)
    from claims.options import check_folder   # a plugin of this conftest: imported once pytest has it

    check_device(config.getoption("--device"))
    check_folder(Path(config.getoption("--cache-dir")), "--cache-dir")


@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    """``--device``: where minima are trained and measured."""
    return pytestconfig.getoption("--device")
