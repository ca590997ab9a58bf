"""Sharded measurement over 2 and 3 gloo processes: the same numbers as one process, the same on every
rank, and a failing rank that makes the others fail with an error instead of hanging.

The ranks are separate processes (tests/distributed_worker.py, 1 torch thread each) on a free
localhost port; each writes its results to a file read here.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stabcheck.curvature import distributed
from stabcheck.curvature.problem import ProblemError
from stabcheck.experiments.models import build_model
from stabcheck.reporting.cli import main

from . import distributed_worker as worker

ROOT = Path(__file__).resolve().parent.parent
#: Ceiling on one scenario's wall time: starting torch in every rank takes seconds on the shared 2 cores.
RUN_LIMIT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world: int, port: int) -> dict:
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def _launch(world: int, scenario: str, out: Path) -> tuple[list[dict], float]:
    """Run ``world`` ranks of the worker; (each rank's file, seconds until every rank that exits has exited)."""
    port = _free_port()
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.distributed_worker", str(out), scenario], cwd=ROOT,
                              env=_rank_env(r, world, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    logs = []
    try:
        for r, proc in enumerate(procs):
            if scenario == "fail-stay" and r == 1:
                continue  # stays alive on purpose; the others must not wait for it
            logs.append(proc.communicate(timeout=max(1.0, RUN_LIMIT_S - (time.monotonic() - start)))[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the ranks of {scenario!r} did not finish within {RUN_LIMIT_S} s (a hang)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.monotonic() - start
    missing = [r for r in range(world) if not (out / f"rank{r}.pt").exists()]
    assert not missing, f"ranks {missing} wrote no result; output:\n" + "\n".join(b.decode() for b in logs)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)], elapsed


@pytest.fixture(scope="module")
def single() -> dict:
    """The unsharded measurement, in this process without a process group."""
    torch.manual_seed(0)
    return worker.measure_all(worker.tiny_problem())


def _relative(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


@pytest.mark.slow  # starts 2 or 3 processes, each importing torch
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_equals_one_process_and_every_rank_agrees(tmp_path, single, world):
    ranks, _ = _launch(world, "measure", tmp_path)
    errors = [r.get("message") for r in ranks if "error" in r]
    assert not errors, errors
    assert [tuple(r["samples"]) for r in ranks] == [(b.start, b.stop) for b in distributed.shard_bounds(worker.N, world)]
    for key, expected in single.items():
        # Every rank gets the same all-reduced products, so the same iterates: bit for bit.
        assert all(torch.equal(torch.as_tensor(r[key]), torch.as_tensor(ranks[0][key])) for r in ranks[1:]), key
        # Against one process only the order of the float64 sums differs.
        rel = 1e-12 if isinstance(expected, torch.Tensor) else 1e-6
        assert _relative(ranks[0][key], expected) < rel, (key, ranks[0][key], expected)


@pytest.mark.slow  # starts 2 or 3 processes, each importing torch
@pytest.mark.parametrize("scenario", ["fail-before-init", "fail-exit", "fail-stay"])
def test_a_failing_rank_makes_every_other_rank_fail_in_time(tmp_path, scenario):
    ranks, elapsed = _launch(3, scenario, tmp_path)
    assert ranks[1]["error"] == "PlannedFailure"
    for r in (0, 2):
        assert ranks[r].get("error") == "DistributedError", ranks[r]
        assert "another rank failed" in ranks[r]["message"]
        # An exited peer is noticed at once, a silent one after the timeout; slack for torch's start-up.
        assert ranks[r]["elapsed_s"] < worker.FAIL_TIMEOUT_S + 30.0, ranks[r]
    assert elapsed < worker.STAY_S  # nobody waited for the rank that stays alive


@pytest.mark.slow  # starts 2 or 3 processes, each importing torch
def test_ranks_holding_different_problems_are_refused_on_every_rank(tmp_path):
    ranks, _ = _launch(2, "differ", tmp_path)
    for r in ranks:
        assert r.get("error") == "ProblemError", r
        assert "rank 1 holds a different problem than rank 0 (inputs differ)" in r["message"]


def test_shard_without_process_group_is_the_problem_itself(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    problem = worker.tiny_problem()
    assert distributed.init() is None  # WORLD_SIZE unset: no process group, nothing started
    assert distributed.shard(problem) is problem


def test_measure_refuses_a_timeout_that_is_not_positive(tmp_path, capsys):
    model = build_model("fnn", seed=0, in_shape=(1, 4, 4), num_classes=3, widths=(6,))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save({"inputs": torch.rand(3, 1, 4, 4), "targets": torch.eye(3)}, tmp_path / "data.pt")
    assert main(["measure", "--model", str(tmp_path / "model.pt"), "--arch", "fnn:widths=6", "--data-file",
                 str(tmp_path / "data.pt"), "--lr", "0.5", "--dist-timeout", "0"]) == 2
    assert "--dist-timeout: timeout_s must be a positive finite number of seconds, got 0.0" in capsys.readouterr().err


def test_too_few_samples_for_the_ranks_is_refused():
    with pytest.raises(ProblemError, match="2 samples cannot be split over 3 processes"):
        distributed.shard_bounds(2, 3)


@pytest.mark.slow  # starts 2 or 3 processes, each importing torch
def test_torchrun_measure_reports_once_with_the_numbers_of_one_process(tmp_path):
    model = build_model("fnn", seed=0, in_shape=(1, 4, 4), num_classes=3, widths=(6,))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 4, 4, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (7,), generator=g), 3).float()
    torch.save({"inputs": x, "targets": y}, tmp_path / "data.pt")
    args = ["measure", "--model", str(tmp_path / "model.pt"), "--arch", "fnn:widths=6", "--data-file",
            str(tmp_path / "data.pt"), "--lr", "0.5", "--batch-size", "2", "7", "--dtype", "float64", "--tol", "1e-10",
            "--form", "full"]  # the sample form needs every sample on one process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, "-m", "stabcheck", *args, "--json", str(tmp_path / "one.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), "-m", "stabcheck", *args, "--json", str(tmp_path / "two.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("sharpness") == 1  # rank 0 alone prints the table
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    assert b["training_loss"] == pytest.approx(a["training_loss"], rel=1e-12)
    for quantity in ("sharpness", "non_uniformity"):
        assert b[quantity]["value"] == pytest.approx(a[quantity]["value"], rel=1e-6)
    assert len(b["settings"]) == len(a["settings"]) == 2
    for row_a, row_b in zip(a["settings"], b["settings"]):  # Theorem 1 values, bounds, verdicts per batch size
        assert row_b.keys() == row_a.keys()
        for key, value in row_a.items():
            assert row_b[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
