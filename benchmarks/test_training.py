"""Training several seeds at once (issue 13): 5 members by ``train_ensemble`` against 1 by ``train``.

``paper``: the FNN 784-500-500-500-10 on the first n = 1000 FashionMNIST training images;
``small``: the small profile's FNN 784-50-50-10 on n = 100. MSE on one-hot targets, float32,
SGD η = 0.1, B = 10, a fixed ``STEPS`` steps (tol 1e-30: nothing stops). Each round first runs
``train`` on one member (timed in the round's setup), then the ensemble on five, so the two times
of a round share the machine's load; medians of ``ROUNDS``. Goal: five members in at most 2× the
time of one. Peak memory as elsewhere in the suite (torch.profiler's allocator total, above its
level at the start) over ``MEMORY_STEPS`` steps.
"""
import statistics
import time

import pytest

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
NETS = {"paper": (1000, (500, 500, 500)), "small": (100, (50, 50))}
SETTING = {"lr": 0.1, "batch_size": 10, "tol": 1e-30, "num_threads": THREADS}


def _data(n: int):
    ds = load_fashion_mnist(n, with_test=False)
    return ds.inputs, one_hot(ds.labels, 10)


def _nets(count: int, widths: tuple) -> list:
    return [build_model("fnn", seed=seed, in_shape=(1, 28, 28), num_classes=10, widths=widths)
            for seed in range(count)]


def _alone(data, widths, steps: int):
    return train(_nets(1, widths)[0], *data, seed=0, max_iters=steps, progress=False, **SETTING)


def _together(data, nets: list, steps: int, options: dict):
    return train_ensemble(nets, *data, seeds=range(len(nets)), max_iters=steps, **options, **SETTING)


@pytest.mark.parametrize("net, options", [
    pytest.param("paper", {"engine": "mlp"}, id="paper-mlp"),
    pytest.param("paper", {"engine": "mlp", "fused_update": True}, id="paper-mlp-fused"),
    pytest.param("paper", {"engine": "vmap"}, id="paper-vmap"),
    pytest.param("small", {"engine": "mlp"}, id="small-mlp"),
])
def test_five_members_against_one(benchmark, net, options):
    n, widths = NETS[net]
    data = _data(n)
    alone_seconds = []

    def setup():
        start = time.process_time()
        record = _alone(data, widths, STEPS)
        alone_seconds.append(time.process_time() - start)
        assert record.status == "max_iters" and record.iterations == STEPS
        return (data, _nets(MEMBERS, widths), STEPS, options), {}

    benchmark.group = "training"
    records = benchmark.pedantic(_together, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert [(r.status, r.iterations) for r in records] == [("max_iters", STEPS)] * MEMBERS
    one = statistics.median(alone_seconds[-ROUNDS:]) / STEPS  # the warm-up round ran setup too
    five = benchmark.stats.stats.median / STEPS
    peak_one = peak_bytes(lambda: _alone(data, widths, MEMORY_STEPS))
    peak_five = peak_bytes(lambda: _together(data, _nets(MEMBERS, widths), MEMORY_STEPS, options))
    row = {"net": net, **options, "members": MEMBERS, "steps": STEPS, "one_member_s_per_step": one,
           "members_s_per_step": five, "time_ratio": five / one, "goal": GOAL, "one_member_peak_bytes": peak_one,
           "members_peak_bytes": peak_five, "memory_ratio": peak_five / peak_one}
    benchmark.extra_info.update(row)
    print(f"\n{net} {options}: 1 member {one * 1e3:.2f} ms/step, {MEMBERS} members {five * 1e3:.2f} ms/step, "
          f"ratio {five / one:.2f} (goal ≤ {GOAL}); peak {peak_one / 1e6:.1f} MB vs {peak_five / 1e6:.1f} MB")
