"""The stability monitor along a whole GD run: warm-started checks against cold ones, and what monitoring costs.

GD from the minima cache's initialisation (seed 0) to the setup's tol: ``paper``: FNN 784-500-500-500-10 on the
first n = 1000 FashionMNIST images, η = 1 (the paper profile's C9 start minimum); ``small``: the small profile's
FNN 784-50-50-10 on n = 100, η = 0.2; ``small-mu``: the same run, the monitors also solving Theorem 1's μ (sample
form). Every ``EVERY`` iterations two monitors check a (and μ) on the same iterate, to the profile's tol: one
warm-started, one cold (``warm=False``). Timed by process CPU time (one thread), so other
jobs on the machine do not enter: training alone is the run's time less both monitors'. Goals: a warm check at
most a third of a cold one's products (median over the checks), and the warm monitor at most 25% of the
training time. The run also checks that the monitors leave training alone: its final loss equals the cached
minimum's where the cache holds it. The table is written to ``$STABCHECK_BENCH_REPORT_DIR/monitor-<net>.json``,
both monitors' checks as they happen to ``monitor-<net>-warm.jsonl`` and ``-cold.jsonl``.
"""
import json
import os
import statistics
import time
from pathlib import Path

import pytest

from claims.profiles import profile
from stabcheck.experiments.minima import MinimaCache, build_for, dataset_for, default_cache_dir
from stabcheck.experiments.monitor import StabilityMonitor
from stabcheck.experiments.train import train

from .conftest import REPORT_DIR
from .support import THREADS

pytestmark = pytest.mark.perf

EVERY = 50
RUNS = {"paper": ("paper", "fnn", 1.0, False), "small": ("small", "fnn_gd", 0.2, False),
        "small-mu": ("small", "fnn_gd", 0.2, True)}   # (profile, setup, η, Theorem 1 too)
GOALS = {"warm products / cold products": 1 / 3, "monitoring / training time": 0.25}


class Timed:
    """A monitor whose calls are timed in process CPU seconds."""

    def __init__(self, monitor: StabilityMonitor):
        self.monitor, self.cpu = monitor, 0.0

    def __call__(self, t, model, batch_loss):
        start = time.process_time()
        self.monitor(t, model, batch_loss)
        self.cpu += time.process_time() - start


@pytest.mark.parametrize("net", list(RUNS))
def test_warm_against_cold_along_gd(net):
    scale_name, name, lr, with_theorem1 = RUNS[net]
    scale = profile(scale_name)
    config = scale.setups[name].config(lr, None, 0)
    data = dataset_for(config)
    x, y = data.inputs, data.targets(config.setup.loss)
    how = dict(lr=lr, loss=config.setup.loss, every=EVERY, tol=scale.measurement.tol,
               maxiter=scale.measurement.maxiter, theorem1=with_theorem1)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    logs = {kind: Path(REPORT_DIR) / f"monitor-{net}-{kind}.jsonl" for kind in ("warm", "cold")}
    for log in logs.values():  # a monitor appends: a log of an earlier run would mix in
        log.unlink(missing_ok=True)
    warm = Timed(StabilityMonitor(x, y, log=logs["warm"], **how))
    cold = Timed(StabilityMonitor(x, y, warm=False, log=logs["cold"], **how))

    def both(t, model, batch_loss):
        warm(t, model, batch_loss)
        cold(t, model, batch_loss)
        if t % EVERY == 0:  # a partial run still gives the table
            w, c = warm.monitor.records[-1], cold.monitor.records[-1]
            print(f"[check] it {t} a {w['a']:.6g} {c['a']:.6g} products {w['products']} {c['products']} "
                  f"({w['a_start']}) monitor cpu {warm.cpu:.1f} {cold.cpu:.1f} total cpu "
                  f"{time.process_time() - start:.1f}", flush=True)

    start = time.process_time()
    record = train(build_for(config, data), x, y, lr=lr, batch_size=config.batch_size, loss=config.setup.loss,
                   tol=config.setup.tol, max_iters=config.setup.max_iters, seed=0, progress_every=60,
                   progress=lambda info: print(f"[monitor benchmark] it {info['iteration']} ema {info['ema_loss']:.3g} "
                                               f"cpu {time.process_time() - start:.0f} s", flush=True),
                   callback=both, num_threads=THREADS)
    total = time.process_time() - start
    training = total - warm.cpu - cold.cpu
    pairs = list(zip(warm.monitor.records, cold.monitor.records))
    ratios = [w["products"] / c["products"] for w, c in pairs[1:]]  # the first warm check is cold
    cache = MinimaCache(default_cache_dir(), progress=False)
    cached = json.loads(cache.path(config).with_suffix(".json").read_text()) \
        if cache.path(config).with_suffix(".json").exists() else None
    result = {
        "net": net, "lr": lr, "every": EVERY, "status": record.status, "iterations": record.iterations,
        "final loss": record.final_loss, "cached final loss": cached and cached["final_loss"],
        "cached wall s": cached and cached["wall_time"], "checks": len(pairs),
        "warm products": [w["products"] for w, _ in pairs], "cold products": [c["products"] for _, c in pairs],
        "warm starts": [w["a_start"] for w, _ in pairs],
        "a warm": [w["a"] for w, _ in pairs], "a cold": [c["a"] for _, c in pairs],
        **({"theorem1 products warm": [w["theorem1_products"] for w, _ in pairs],
            "theorem1 products cold": [c["theorem1_products"] for _, c in pairs],
            "mu starts": [w["theorem1_start"] for w, _ in pairs],
            "median theorem1 products warm / cold": statistics.median(
                w["theorem1_products"] / c["theorem1_products"] for w, c in pairs[1:]),
            "max relative mu gap warm / cold": max(abs(w["theorem1_mu"] / c["theorem1_mu"] - 1) for w, c in pairs)}
           if with_theorem1 else {}),
        "all converged": all(r["a_converged"] and r.get("theorem1_converged", True) for pair in pairs for r in pair),
        "median products warm / cold": statistics.median(ratios),
        "total products warm / cold": sum(w["products"] for w, _ in pairs) / sum(c["products"] for _, c in pairs),
        "training cpu s": training, "warm monitor cpu s": warm.cpu, "cold monitor cpu s": cold.cpu,
        "warm monitor / training": warm.cpu / training, "cold monitor / training": cold.cpu / training,
        "load average": os.getloadavg(),
    }
    (Path(REPORT_DIR) / f"monitor-{net}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))
    assert record.status == "converged", f"GD at η = {lr:g} ended {record.status} after {record.iterations} steps"
    assert cached is None or record.final_loss == cached["final_loss"], "the monitors changed the trained run"
    assert result["all converged"], "a check did not converge"
