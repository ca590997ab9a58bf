"""Root pytest configuration: the options every suite shares and the plugins it loads.

Options here (``pytest --help``, group "stabcheck"): ``--device``, ``--data-dir``, ``--cache-dir``.
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

ROOT = Path(__file__).resolve().parent

pytest_plugins = ["fixtures.data", "fixtures.minima", "claims.options", "claims.schedule", "claims.report_plugin"]


def pytest_addoption(parser):
    group = parser.getgroup("stabcheck")
    group.addoption("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    group.addoption("--data-dir", default=os.environ.get("STABCHECK_DATA_DIR"),
                    help="torchvision dataset root searched first (env STABCHECK_DATA_DIR)")
    group.addoption("--cache-dir", default=os.environ.get("STABCHECK_CACHE_DIR", str(ROOT / ".cache" / "minima")),
                    help="cache folder for trained minima (env STABCHECK_CACHE_DIR; default .cache/minima)")


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        import torch

        # xdist runs one worker per core: more threads per worker only oversubscribe the CPU
        torch.set_num_threads(1)
    if config.getoption("--device").startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda was given but torch sees no CUDA device; use --device cpu")


@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    """``--device``: where minima are trained and measured."""
    return pytestconfig.getoption("--device")
