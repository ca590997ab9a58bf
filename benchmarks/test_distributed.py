"""Sharded H v (issue 15): 2 gloo processes against 1, on the 2-core machine.

The paper's FNN 784-500-500-500-10 on the first n = 4000 FashionMNIST training images (random
weights, MSE on one-hot targets, float32, the Problem's chunk of 256), H v by forward-over-reverse
(``autodiff``) and by pass 1 of the factored engine (``factored``), one torch thread per process.
This pytest process is rank 0 and a subprocess is rank 1 (gloo on localhost), each holding 2000
samples. A round first makes ``PRODUCTS`` products on the whole problem without a process group
(in the round's setup), then ``PRODUCTS`` sharded ones, so both share the machine's load of that
moment. Both are wall times (``time.perf_counter``, whatever ``--benchmark-timer`` says): a
speed-up is a matter of wall time, and rank 0's CPU time leaves out its waits for rank 1.
Speed-up = median single-process time / median two-process time, over ``ROUNDS`` rounds.
"""
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from stabcheck.curvature import distributed, products
from stabcheck.curvature.engines import factored

from .support import THREADS, problem, tangent

pytestmark = pytest.mark.perf

MODEL, N = "fnn", 4000
HV_PATHS = {"autodiff": products.hvp, "factored": factored.hvp}
PRODUCTS = 5
ROUNDS = 5
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("path", HV_PATHS)
def test_two_processes_against_one(benchmark, monkeypatch, path):
    full = problem(MODEL, N)
    v = tangent(full)
    product = HV_PATHS[path]
    world = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(_free_port())}
    # Rank 1 makes the check's product, then every round's.
    rank1 = subprocess.Popen([sys.executable, "-m", "benchmarks.distributed_worker", path, str(1 + ROUNDS * PRODUCTS)],
                             cwd=ROOT, env={**os.environ, **world, "RANK": "1", "LOCAL_RANK": "1",
                                            "OMP_NUM_THREADS": str(THREADS)})
    for key, value in world.items():
        monkeypatch.setenv(key, value)
    one_s, two_s = [], []

    def single():
        start = time.perf_counter()
        for _ in range(PRODUCTS):
            product(full, v)
        one_s.append(time.perf_counter() - start)

    def sharded_products():
        start = time.perf_counter()
        for _ in range(PRODUCTS):
            product(sharded, v)
        two_s.append(time.perf_counter() - start)

    load_start = os.getloadavg()[0]
    try:
        sharded = distributed.shard(full, distributed.init("cpu"))
        # Also the warm-up of both (the factored engine's one-off probe of each problem).
        whole, split = full.flatten(product(full, v)), full.flatten(product(sharded, v))
        difference = float((split - whole).norm() / whole.norm())
        benchmark.group = "distributed"
        benchmark.pedantic(sharded_products, setup=single, rounds=ROUNDS, iterations=1)
        assert rank1.wait(timeout=120) == 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if rank1.poll() is None:
            rank1.kill()
            rank1.wait()
    # float32: only the order of the sums over 4000 samples differs.
    assert difference < 1e-5
    one, two = statistics.median(one_s) / PRODUCTS, statistics.median(two_s) / PRODUCTS
    row = {"model": MODEL, "n": N, "hv": path, "products_per_round": PRODUCTS, "rounds": ROUNDS,
           "one_process_s_per_product": one, "two_processes_s_per_product": two, "speed_up": one / two,
           "round_speed_ups": [a / b for a, b in zip(one_s, two_s)], "relative_difference": difference,
           "load_average": [load_start, os.getloadavg()[0]]}
    benchmark.extra_info.update(row)
    print(f"\n{path} H v, n={N}: 1 process {one:.3f} s, 2 processes {two:.3f} s per product, speed-up {one / two:.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in row['round_speed_ups'])}); load {load_start:.1f} → "
          f"{row['load_average'][1]:.1f}; |H v₂ − H v₁|/|H v₁| = {difference:.1e}")
