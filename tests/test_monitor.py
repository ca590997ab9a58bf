"""The stability monitor: its records against the criteria (float64), the log, warm starts that cannot
give a silently wrong a, and its use as ``train``'s callback."""
import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import stabcheck
from stabcheck.curvature.eigen import lanczos
from stabcheck.curvature.operators import HessianOperator
from stabcheck.experiments.monitor import MonitorError, StabilityMonitor, StabilityWarning
from stabcheck.experiments.train import train
from stabcheck.reporting.cli import main
from stabcheck.reporting.monitor_figure import read_log
from stabcheck.reporting.report import ReportError

from .tiny import dense_curvature, make_problem

TOL = 1e-10


@pytest.fixture
def tiny():
    """A tiny float64 MLP, its data and the problem (n = 6, d = 113)."""
    problem = make_problem("mlp-tanh", "mse")
    return problem.model.train(), problem.inputs, problem.targets, problem


def monitor_of(tiny, **options):
    model, x, y, _ = tiny
    return StabilityMonitor(x, y, **{"lr": 0.1, "batch_size": 2, "tol": TOL, "maxiter": 200,
                                     "dtype": torch.float64, **options})


def test_a_check_records_the_criteria_and_the_box(tiny, tmp_path):
    model, x, y, problem = tiny
    monitor = monitor_of(tiny, s=True, theorem1=True, log=tmp_path / "run" / "log.jsonl")
    record = monitor.check(7, model, batch_loss=0.5)
    _, H, sigma = dense_curvature(problem)
    a, s2 = float(torch.linalg.eigvalsh(H)[-1]), float(torch.linalg.eigvalsh(sigma)[-1])
    t1 = stabcheck.theorem1(problem, lr=0.1, batch_size=2, tol=TOL, maxiter=200)
    s_bound = math.sqrt(2 * 5 / 4) / 0.1
    assert record["iteration"] == 7 and record["batch_loss"] == 0.5
    assert record["a"] == pytest.approx(a, rel=1e-8) and record["s"] == pytest.approx(math.sqrt(s2), rel=1e-8)
    assert record["theorem1"] == pytest.approx(t1.value, rel=1e-8) and record["theorem1_verdict"] == t1.verdict
    assert record["theorem1_form"] == t1.form == "sample" and record["theorem1_mu"] == pytest.approx(t1.mu, rel=1e-8)
    assert record["theorem1_margin"] == pytest.approx(1 - t1.mu / 2, rel=1e-8)  # not 1 − value, which is 0 here
    assert record["a_bound"] == 20.0 and record["s_bound"] == pytest.approx(s_bound)
    assert record["a_margin"] == pytest.approx(1 - a / 20)
    assert record["s_margin"] == pytest.approx(1 - record["s"] / s_bound)
    assert record["loss"] == pytest.approx(problem.loss_value())
    assert record["measured_on"] == "full training set" and record["a_start"] == record["s_start"] == "cold"
    assert record["products"] == record["a_products"] + record["s_products"] + record["theorem1_products"] > 0
    assert record["seconds"] > 0 and model.training  # the model's mode is given back
    settings, checks = read_log(tmp_path / "run" / "log.jsonl")
    assert settings["measured_on"] == {"set": "full training set", "samples": 6} and checks == [record]


def test_a_subset_is_fixed_and_named(tiny):
    model, x, y, _ = tiny
    by_count, by_index = monitor_of(tiny, subset=4, seed=3), monitor_of(tiny, subset=[0, 2, 5])
    assert by_count.measured_on == {"set": "fixed random subset (seed 3)", "samples": 4}
    assert torch.equal(by_count.indices, monitor_of(tiny, subset=4, seed=3).indices)
    sub = stabcheck.Problem(model.eval(), x[[0, 2, 5]], y[[0, 2, 5]], dtype=torch.float64)
    expected = stabcheck.sharpness(sub, tol=TOL, maxiter=200).value
    assert by_index.check(0, model)["a"] == pytest.approx(expected, rel=1e-8)


def test_a_still_iterate_costs_few_products_warm(tiny):
    model, *_ = tiny
    monitor = monitor_of(tiny)
    cold, warm = monitor.check(0, model), monitor.check(1, model)
    assert warm["a_start"] == "warm" and warm["a"] == pytest.approx(cold["a"], rel=1e-9)
    assert warm["a_products"] <= 3 < cold["a_products"]


def second_eigenvector(problem) -> torch.Tensor:
    _, H, _ = dense_curvature(problem)
    return torch.linalg.eigh(H).eigenvectors[:, -2]


@pytest.mark.parametrize("bad", ["orthogonal to the top", "random"])
def test_a_wrong_warm_start_gives_the_same_a(tiny, bad):
    model, _, _, problem = tiny
    monitor = monitor_of(tiny)
    first = monitor.check(0, model)
    vector = second_eigenvector(problem) if bad == "orthogonal to the top" else torch.randn(problem.dim,
                                                                                             dtype=torch.float64)
    monitor._previous["a"] = dataclasses.replace(monitor._previous["a"], vector=vector)
    again = monitor.check(1, model)
    assert again["a"] == pytest.approx(first["a"], rel=1e-8) and again["a_converged"]


def test_mu_is_warm_started_too(tiny):
    model, *_ = tiny
    monitor = monitor_of(tiny, theorem1=True)
    cold, warm = monitor.check(0, model), monitor.check(1, model)
    assert cold["theorem1_start"] == "cold" and warm["theorem1_start"] == "warm"
    assert warm["theorem1_mu"] == pytest.approx(cold["theorem1_mu"], rel=1e-9)
    # the Gram blocks and the residual term cost the same at both checks: only μ's solve got cheaper
    assert warm["theorem1_products"] < cold["theorem1_products"]


@pytest.mark.parametrize("bad", ["orthogonal to the top", "random"])
def test_a_wrong_warm_start_of_mu_gives_the_same_mu(tiny, bad):
    model, *_ = tiny
    monitor = monitor_of(tiny, theorem1=True)
    first = monitor.check(0, model)
    top = monitor._previous["mu"].vector
    vector = torch.randn(top.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if bad == "orthogonal to the top":
        vector = vector - (vector @ top) / (top @ top) * top
    monitor._previous["mu"] = dataclasses.replace(monitor._previous["mu"], vector=vector)
    again = monitor.check(1, model)
    assert again["theorem1_mu"] == pytest.approx(first["theorem1_mu"], rel=1e-8) and again["theorem1_converged"]


def test_the_guard_is_needed_a_start_on_the_second_eigenvector_certifies_the_wrong_eigenvalue(tiny):
    _, _, _, problem = tiny
    op = HessianOperator(problem)
    wrong = lanczos(op.matvec, problem.dim, tol=TOL, maxiter=200, dtype=torch.float64, v0=second_eigenvector(problem))
    right = stabcheck.sharpness(problem, tol=TOL, maxiter=200)
    assert wrong.converged and wrong.value < right.value * (1 - 1e-3)


def test_train_takes_the_monitor_as_its_callback_and_stops_on_a_margin(tiny):
    model, x, y, _ = tiny
    watch = monitor_of(tiny, lr=0.5, batch_size=None, every=5)
    rec = train(model, x, y, lr=0.5, batch_size=6, max_iters=12, progress=False, callback=watch)
    assert rec.status == "max_iters" and [r["iteration"] for r in watch.records] == [5, 10]
    stop = monitor_of(tiny, lr=0.5, batch_size=None, every=5, stop_below=2.0, warn_below=2.0)
    with pytest.warns(StabilityWarning, match="a margin"):
        rec = train(model, x, y, lr=0.5, batch_size=6, max_iters=12, progress=False, callback=stop)
    assert rec.status == "stopped" and rec.iterations == 5 and "stop_below" in stop.stopped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not monitor_of(tiny, warn_below=-10.0).check(0, model)["stop"]


@pytest.mark.parametrize("options, match", [({"every": 0}, "every"), ({"subset": 7}, "subset"),
                                            ({"subset": [0, 0]}, "distinct"), ({"stop_below": math.nan}, "finite")])
def test_bad_settings_are_refused(tiny, options, match):
    with pytest.raises(MonitorError, match=match):
        monitor_of(tiny, **options)


def test_the_command_line_draws_a_log(tiny, tmp_path, capsys):
    model, *_ = tiny
    log = tmp_path / "log.jsonl"
    monitor = monitor_of(tiny, log=log, s=True)
    for t in (0, 10):
        monitor.check(t, model)
    with open(log, "a") as fh:
        fh.write('{"kind": "check", "iter')  # a line still being written is left out
    assert main(["monitor", str(log)]) == 0
    assert (tmp_path / "log.png").stat().st_size > 0 and capsys.readouterr().out.strip() == str(tmp_path / "log.png")
    assert all(json.loads(line) for line in log.read_text().split("\n")[:-1])
    log.write_text("not json\n")
    with pytest.raises(ReportError, match="line 1 is not JSON"):
        read_log(log)


def test_the_readme_loop_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Watching stability while training", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    monitor = namespace["monitor"]
    assert [r["iteration"] for r in monitor.records] == list(range(100, 1001, 100)) and not monitor.stopped
    assert read_log(tmp_path / "run.jsonl")[1] == monitor.records
