"""Rank 1 of benchmarks/test_distributed.py: ``python -m benchmarks.distributed_worker PATH PRODUCTS``.

Started with torchrun's environment by the benchmark, whose pytest process is rank 0. Makes
PRODUCTS H v products by PATH (``autodiff`` or ``factored``) on its half of the FNN problem, in
step with rank 0 (every product is one all-reduce), and exits.
"""
from __future__ import annotations

import sys

import torch

from stabcheck.curvature import distributed

from .support import THREADS, problem, tangent
from .test_distributed import HV_PATHS, MODEL, N


def main(path: str, count: int) -> None:
    torch.set_num_threads(THREADS)
    full = problem(MODEL, N)
    sharded = distributed.shard(full, distributed.init("cpu"))
    v = tangent(full)
    for _ in range(count):
        HV_PATHS[path](sharded, v)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
