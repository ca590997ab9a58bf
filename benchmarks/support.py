"""Problems, peak-memory measurement and the result table of the performance suite (issue 6).

Every benchmark runs with ``STABCHECK_BENCH_THREADS`` torch threads (default 1): on the shared
2-core machine two threads of one process wait on each other whenever another job takes a core,
which made single products vary 25-fold; one thread, timed by CPU time, varies little.
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache

import torch
from torch.profiler import ProfilerActivity, profile

from stabcheck import Problem
from stabcheck.experiments.data import load_fashion_mnist, one_hot
from stabcheck.experiments.models import FNN, VGG

THREADS = int(os.environ.get("STABCHECK_BENCH_THREADS", "1"))
SIZES = (100, 1000, 4000)
MODELS = ("fnn", "vgg")

#: Rows collected by the tests and written by the conftest at the end of the session.
RESULTS: dict[str, list[dict]] = {"products": [], "solvers": [], "external": [], "end_to_end": [], "goals": []}


@lru_cache(maxsize=4)
def problem(model: str, n: int) -> Problem:
    """FNN 784-500-500-500-10 on the first n FashionMNIST training images, or the VGG of Table 4 on
    n random 32×32×3 images in [0, 1] with random 0/1 labels (a product's cost does not depend on the
    pixel values; the offline CIFAR-10 subset has only 2000 images of classes 0/1). Random weights,
    seed 0, MSE with one-hot targets, float32, Problem's default chunk of 256 samples."""
    torch.manual_seed(0)
    if model == "fnn":
        data = load_fashion_mnist(n, with_test=False)
        return Problem(FNN().eval(), data.inputs, one_hot(data.labels, 10), loss="mse")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=gen)
    y = one_hot(torch.randint(0, 2, (n,), generator=gen), 2)
    return Problem(VGG(num_classes=2).eval(), x, y, loss="mse")


def tangent(problem: Problem, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in problem.params.items()}


def peak_bytes(fn) -> int:
    """Peak of the bytes held by torch's CPU allocator during fn(), above the level at its start.

    torch.profiler's memory events carry the allocator's running total, so the peak includes every
    tensor torch allocates and frees inside fn (tracemalloc sees none of them, and the process's
    maxrss also counts the interpreter, the data and the allocator's cached pages).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)["traceEvents"]
    events = [e["args"] for e in trace if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    if not events:
        return 0
    base = events[0]["Total Allocated"] - events[0]["Bytes"]
    return max(e["Total Allocated"] for e in events) - base
