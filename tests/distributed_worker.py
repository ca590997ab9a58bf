"""One rank of the sharded-measurement tests: ``python -m tests.distributed_worker OUT SCENARIO``.

Started by tests/test_distributed.py with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT). Writes ``OUT/rank<r>.pt``: the measured products and values (scenario ``measure``),
or the error this rank got and when. Scenarios ``fail-*``: rank 1 raises, before joining the
process group (``fail-before-init``) or after it, before the first product, and then exits
(``fail-exit``) or lives on without taking part (``fail-stay``); the other ranks measure.
Scenario ``differ``: rank 1 holds the same samples in another order.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from stabcheck import non_uniformity, sharpness, theorem1
from stabcheck.curvature import distributed, products
from stabcheck.curvature.engines import SIGMA_ENGINES, factored
from stabcheck.curvature.operators import Theorem1Operator
from stabcheck.curvature.problem import Problem

from .tiny import make_problem

N = 7            # split 4/3 over 2 ranks and 3/2/2 over 3: uneven
CHUNK = 2        # so the ranks run different numbers of chunks (the factored engine's two H v branches)
TOL = 1e-10
LR, BATCH = 0.05, 2
#: Engines whose s is solved for (every engine's Σv is compared directly); vmap's many small calls are slow.
SOLVED_ENGINES = ("factored", "loop")
#: Seconds a rank waits for the others in the failure scenarios.
FAIL_TIMEOUT_S = 5.0
#: How long the failing rank of ``fail-stay`` stays alive: well past the others' timeout.
STAY_S = 60.0


class PlannedFailure(RuntimeError):
    """The error the failing rank raises on purpose."""


def tiny_problem() -> Problem:
    problem = make_problem("mlp-tanh", "mse", seed=3, n=N)
    problem.chunk_size = CHUNK
    return problem


def measure_all(problem: Problem) -> dict:
    """Every sum over samples the library makes, on ``problem`` (sharded or not): loss, H v by both paths, Σv by
    every engine centred and uncentred at a fixed v, T on three columns, and, by Lanczos, a, s and the
    Theorem-1 value."""
    gen = torch.Generator().manual_seed(11)
    v = problem.unflatten(torch.randn(problem.dim, generator=gen, dtype=torch.float64))
    out: dict = {"loss": problem.loss_value(),
                 "hv_autodiff": problem.flatten(products.hvp(problem, v)),
                 "hv_factored": problem.flatten(factored.hvp(problem, v))}
    for name, engine in SIGMA_ENGINES.items():
        for centred in (True, False):
            out[f"sigma_v_{name}_{'centred' if centred else 'uncentred'}"] = problem.flatten(engine(problem, v, centred))
    # Columns batched by vmap in one process; sharded, one all-reduced product per column.
    out["theorem1_matmat"] = Theorem1Operator(problem, LR, BATCH).matmat(
        torch.randn(problem.dim, 3, generator=gen, dtype=torch.float64))
    a = sharpness(problem, tol=TOL, maxiter=problem.dim)
    out["sharpness"] = a.value
    for name in SOLVED_ENGINES:
        out[f"non_uniformity_{name}"] = non_uniformity(problem, engine=name, tol=TOL, maxiter=problem.dim).value
    out["theorem1"] = theorem1(problem, LR, BATCH, form="full", engine="factored", tol=TOL, maxiter=problem.dim, sharpness=a).value
    return out


def run(scenario: str) -> dict:
    rank = int(os.environ["RANK"])
    failing = scenario.startswith("fail-") and rank == 1
    if failing and scenario == "fail-before-init":
        raise PlannedFailure("rank 1 failed before joining the process group")
    group = distributed.init("cpu", timeout_s=FAIL_TIMEOUT_S if scenario.startswith("fail-") else 60.0)
    problem = tiny_problem()
    if scenario == "differ" and rank == 1:
        problem.inputs = problem.inputs.flip(0)
    problem = distributed.shard(problem, group)
    if failing:
        raise PlannedFailure("rank 1 failed before its first product")
    return {"samples": [problem.samples.start, problem.samples.stop], **measure_all(problem)}


def main(out: Path, scenario: str) -> int:
    torch.set_num_threads(1)
    start = time.monotonic()
    rank = int(os.environ["RANK"])
    try:
        result, status = run(scenario), 0
    except Exception as err:  # noqa: BLE001 - recorded for the test, which judges it
        result, status = {"error": type(err).__name__, "message": str(err)}, 1
    result["elapsed_s"] = time.monotonic() - start
    torch.save(result, out / f"rank{rank}.pt")
    if status and scenario == "fail-stay" and rank == 1:
        time.sleep(STAY_S)  # alive but not taking part, e.g. an interactive session that caught the error
    return status


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
