"""Root pytest configuration: command-line options, GPU/scale skips, and the claim report.

Options (all also shown by ``pytest --help`` under "stabcheck"):
  --device       torch device for measurements and training (default cpu)
  --seed         base seed every random draw derives from (default 0)
  --scale        small (default, CPU in minutes) or paper (PAPER.md §3, GPU)
  --data-dir     a torchvision dataset root to look in first (env STABCHECK_DATA_DIR)
  --cache-dir    where trained minima are cached (env STABCHECK_CACHE_DIR, default .cache/minima)
  --report-dir   where a claims run writes its report (default reports/run-<time>)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

# Every module in fixtures/ is a fixture plugin shared by all claims and tests.
pytest_plugins = sorted(
    f"fixtures.{p.stem}" for p in (ROOT / "fixtures").glob("*.py") if not p.stem.startswith("_")
)


def pytest_addoption(parser):
    group = parser.getgroup("stabcheck")
    group.addoption("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    group.addoption("--seed", type=int, default=0, help="base seed for every random draw (default: 0)")
    group.addoption("--scale", choices=("small", "paper"), default="small",
                    help="small: CPU profile in minutes (default); paper: the settings of PAPER.md §3")
    group.addoption("--data-dir", default=os.environ.get("STABCHECK_DATA_DIR"),
                    help="torchvision dataset root searched first (env STABCHECK_DATA_DIR)")
    group.addoption("--cache-dir", default=os.environ.get("STABCHECK_CACHE_DIR", str(ROOT / ".cache" / "minima")),
                    help="cache folder for trained minima (env STABCHECK_CACHE_DIR; default .cache/minima)")
    group.addoption("--report-dir", default=None,
                    help="folder for claims.json / claims.md of a claims run (default: reports/run-<time>)")


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        import torch

        # xdist runs one worker per core: more threads per worker only oversubscribe the CPU
        torch.set_num_threads(1)
    if config.getoption("--device").startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda was given but torch sees no CUDA device; use --device cpu")


def pytest_collection_modifyitems(config, items):
    import torch

    has_gpu = torch.cuda.is_available() and config.getoption("--device").startswith("cuda")
    paper = config.getoption("--scale") == "paper"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: run with --device cuda on a GPU machine (scripts/gpu_check.sh)")
    skip_paper = pytest.mark.skip(reason="paper-scale case: run with --scale paper (on a GPU)")
    for item in items:
        # markers, not keywords: a parametrize id such as "paper" is a keyword too
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("paper") and not paper:
            item.add_marker(skip_paper)


@pytest.fixture(scope="session")
def device(pytestconfig) -> str:
    return pytestconfig.getoption("--device")


@pytest.fixture(scope="session")
def base_seed(pytestconfig) -> int:
    return pytestconfig.getoption("--seed")


@pytest.fixture(scope="session")
def scale(pytestconfig) -> str:
    return pytestconfig.getoption("--scale")
