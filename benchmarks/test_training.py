"""Training several seeds at once (issue 13): 5 members by ``train_ensemble`` against 1 by ``train``.

The paper's FNN 784-500-500-500-10 on the first n = 1000 FashionMNIST training images, MSE on
one-hot targets, float32, SGD η = 0.1, B = 10, a fixed ``STEPS`` steps (tol 1e-30: nothing stops).
Each round first runs ``train`` on one member (timed in the round's setup), then the ensemble on
five, so the two times of a round share the machine's load; medians of ``ROUNDS``. Goal: five
members in at most 2× the time of one. Peak memory as elsewhere in the suite (torch.profiler's
allocator total, above its level at the start) over ``MEMORY_STEPS`` steps.
"""
import statistics
import time

import pytest
import torch

from stabcheck.experiments.data import load_fashion_mnist, one_hot
from stabcheck.experiments.ensemble import train_ensemble
from stabcheck.experiments.models import build_model
from stabcheck.experiments.train import train

from .support import THREADS, peak_bytes

pytestmark = pytest.mark.perf

MEMBERS = 5
STEPS = 300
MEMORY_STEPS = 20
ROUNDS = 5
GOAL = 2.0
SETTING = {"lr": 0.1, "batch_size": 10, "tol": 1e-30, "num_threads": THREADS}


@pytest.fixture(scope="module")
def data():
    ds = load_fashion_mnist(1000, with_test=False)
    return ds.inputs, one_hot(ds.labels, 10)


def _nets(count: int) -> list:
    return [build_model("fnn", seed=seed, in_shape=(1, 28, 28), num_classes=10) for seed in range(count)]


def _alone(data, steps: int):
    return train(_nets(1)[0], *data, seed=0, max_iters=steps, progress=False, **SETTING)


def _together(data, engine: str, nets: list, steps: int):
    return train_ensemble(nets, *data, seeds=range(len(nets)), max_iters=steps, engine=engine, **SETTING)


@pytest.mark.parametrize("engine", ["mlp", "vmap"])
def test_five_members_against_one(benchmark, data, engine):
    alone_seconds = []

    def setup():
        start = time.process_time()
        record = _alone(data, STEPS)
        alone_seconds.append(time.process_time() - start)
        assert record.status == "max_iters" and record.iterations == STEPS
        return (data, engine, _nets(MEMBERS), STEPS), {}

    benchmark.group = "training"
    records = benchmark.pedantic(_together, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert [(r.status, r.iterations) for r in records] == [("max_iters", STEPS)] * MEMBERS
    one = statistics.median(alone_seconds[-ROUNDS:]) / STEPS  # the warm-up round ran setup too
    five = benchmark.stats.stats.median / STEPS
    peak_one = peak_bytes(lambda: _alone(data, MEMORY_STEPS))
    peak_five = peak_bytes(lambda: _together(data, engine, _nets(MEMBERS), MEMORY_STEPS))
    row = {"engine": engine, "members": MEMBERS, "steps": STEPS, "one_member_s_per_step": one,
           "members_s_per_step": five, "time_ratio": five / one, "goal": GOAL, "one_member_peak_bytes": peak_one,
           "members_peak_bytes": peak_five, "memory_ratio": peak_five / peak_one}
    benchmark.extra_info.update(row)
    print(f"\n{engine}: 1 member {one * 1e3:.2f} ms/step, {MEMBERS} members {five * 1e3:.2f} ms/step, "
          f"ratio {five / one:.2f} (goal ≤ {GOAL}); peak {peak_one / 1e6:.1f} MB vs {peak_five / 1e6:.1f} MB")
