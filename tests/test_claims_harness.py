"""The claims harness: profiles, the suite's seeds and paper numbers, the cost estimate, ``--budget``,
and the report of runs that stop early (inner pytest runs via ``pytester``)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claims.options import parse_duration
from claims.profiles import profile
from claims.suite import NO_NUMBER, Suite
from stabcheck.reporting.report import render_markdown, summarise

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@pytest.mark.parametrize("name", ["small", "paper"], ids=["small-profile", "paper-profile"])
def test_profiles_are_complete(name):
    p = profile(name)
    configs = p.configs()
    assert len(configs) == len(set(configs)) and all(c.setup.name in p.setups for c in configs)
    assert len({c.label for c in configs}) == len(configs)  # readable ids are unique
    assert any(c.momentum > 0 for c in configs) and any(c.is_gd for c in configs)
    assert {c.setup.model_options for c in configs if c.setup.model.startswith("res")} >= {
        s.model_options for s in p.setups.values() if s.model.startswith("res")}
    batch = p.configs("C6")
    assert not batch[0].is_gd and any(c.is_gd for c in batch)  # small B and GD at fixed η
    ratios = {}
    for c in p.configs("C3"):
        ratios.setdefault((round(c.lr / c.batch_size, 12), c.seed), set()).add(c.lr)
    assert all(len(lrs) == 2 for lrs in ratios.values()), f"C3's grids must pair up with equal η/B: {ratios}"
    for plan in p.plans.values():
        assert all(t.reason for t in plan.thresholds.values())  # every threshold says why


@pytest.mark.parametrize("name", ["small", "paper"], ids=["small-profile", "paper-profile"])
def test_profiles_declare_what_their_claims_check(name):
    """What a claim checks against a declaration is declared for every case it will have, each setup's C5 η
    grid (over its grids) can reach the edge span (an η grid whose edge regime cannot span 5× fails on every
    run), and each unstable restart of C9 has a matched stable one of its kind."""
    p = profile(name)
    for plan in p.plans.values():
        assert all(d.reason for d in plan.expect.values())
    span = p.plans["C5"].thresholds["min edge span"].value
    for setup in {grid.setup for grid in p.plans["C5"].grids}:
        lrs = sorted({lr for grid in p.plans["C5"].grids if grid.setup == setup for lr in grid.lrs})
        assert lrs[-1] / lrs[1] >= span, f"{setup}: η grid {lrs} cannot span {span}× beyond its smallest η"
        declared = p.plans["C5"].expect["landscape-limited"].value.get(setup, ())
        assert set(declared) <= set(lrs)
    binds = p.plans["C6"].expect["binds"].value
    for grid in p.plans["C6"].grids:
        for lr in grid.lrs:
            sizes = sorted(grid.batch_sizes, key=lambda b: p.setups[grid.setup].n if b is None else b)
            assert {(lr, b1, b2) for b1, b2 in zip(sizes, sizes[1:])} == set(binds), binds
            assert any(binds.values()), "C6 needs a pair where the s bound binds: that is where the claim is tested"
    sgd = {(c.lr, c.batch_size) for c in p.configs("C6", "C3") if not c.is_gd}
    assert set(p.plans["C7"].expect["tight settings"].value) <= sgd
    restart = p.plans["C9"].restart
    assert len(restart.unstable) == len(restart.stable)
    assert all((u[1] is None) == (s[1] is None) for u, s in zip(restart.unstable, restart.stable))


def test_paper_profile_is_the_papers_settings():
    p = profile("paper")
    fnn, vgg = p.setups["fnn"], p.setups["vgg"]
    assert (fnn.dataset, fnn.n, dict(fnn.model_options)["widths"], fnn.tol, fnn.loss) == \
        ("fashion_mnist", 1000, (500, 500, 500), 1e-4, "mse")
    assert (vgg.dataset, vgg.n, vgg.model, vgg.tol) == ("cifar10", 1000, "vgg", 1e-4)
    fnn_gd = [c for c in p.configs("C5") if c.setup.name == "fnn"]
    # three GD seeds per η where the paper averages five: the C5 plan's choice for a CPU (GD η = 0.5 costs 10 min a
    # seed); the agreement with the paper's means allows for the scatter of a 3-seed mean
    assert {c.lr for c in fnn_gd} >= {0.01, 0.05, 0.1, 0.5, 1.0, 5.0} and len({c.seed for c in fnn_gd}) == 3
    assert {None if c.is_gd else c.batch_size for c in p.configs("C6")} >= {10, 100, None}


def test_suite_shifts_and_trims_seeds_and_says_where_the_paper_has_no_number():
    small = Suite(profile("small"), base_seed=10, seeds_per_setting=1)
    assert {c.seed for c in small.configs("C6")} == {10}
    assert small.paper("C5", "mean a", "fnn_gd", 0.1) == profile("small").paper_note
    paper = Suite(profile("paper"), base_seed=0, seeds_per_setting=None)
    assert paper.paper("C5", "mean a", "fnn", 0.1) == 19.6
    assert paper.paper("C6", "a, s", "fnn", (0.1, None)) == (19.7, 45.0)
    assert paper.paper("C5", "mean a", "vgg", 0.1) == 19.8 and paper.paper("C5", "mean a", "resnet_free", 0.1) == NO_NUMBER


def test_durations():
    assert [parse_duration(t) for t in ("2h", "90m", "3600s", "1h30m")] == [7200, 5400, 3600, 5400]
    for bad in ("2x", "90", "", "0m"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_minima_cache_defaults_to_the_users_cache_folder(monkeypatch, tmp_path):
    """Outside the checkout, so paper-scale minima survive a new clone: STABCHECK_CACHE_DIR, else
    $XDG_CACHE_HOME/stabcheck/minima, else ~/.cache/stabcheck/minima."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    monkeypatch.setenv("STABCHECK_CACHE_DIR", "/elsewhere")
    assert root_conftest.default_cache_dir() == "/elsewhere"
    monkeypatch.delenv("STABCHECK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert root_conftest.default_cache_dir() == str(tmp_path / "stabcheck" / "minima")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert root_conftest.default_cache_dir() == str(tmp_path / "home" / ".cache" / "stabcheck" / "minima")


def test_summary_verdicts_and_markdown_order():
    cases = [{"claim": "C1", "test": "a", "case": "", "outcome": "passed"},
             {"claim": "C2", "test": "b", "case": "", "outcome": "failed"},
             {"claim": "C2", "test": "c", "case": "", "outcome": "passed"},
             {"claim": "C3", "test": "d", "case": "", "outcome": "not run", "reason": "budget", "estimate": "≈ 5 s"}]
    summary = summarise([], cases)
    assert [(s["claim"], s["verdict"], s["passed"], s["total"]) for s in summary] == \
        [("C1", "passed", 1, 1), ("C2", "failed", 1, 2), ("C3", "not run", 0, 1)]
    text = render_markdown([], [], summary, cases, stopped="the budget of 1m was spent after 1m 0s")
    assert text.index("## Summary") < text.index("## Cases that did not run")
    assert "The run stopped early: the budget of 1m was spent" in text and "| `d` | C3 | ≈ 5 s | budget |" in text


def _inner_run(pytester, monkeypatch, test_source: str, *args):
    """An inner pytest run with the project's own root conftest (options and claims plugins), the same
    however the outer run was started: an outer ``-n`` worker's environment would switch pytest-benchmark
    off in the inner run, so it is removed, and xdist loads only where ``args`` ask for workers."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for name in XDIST_ENV:
        monkeypatch.delenv(name, raising=False)
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile(test_inner=test_source)
    report = pytester.path / "report"
    plugins = () if "-n" in args else ("-p", "no:xdist")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *plugins, "--report-dir", str(report), *args)
    return result, report


INTERRUPTED = '''
import pytest
from stabcheck.reporting.rows import Kind

@pytest.mark.claim("C1")
def test_done(claim):
    claim.measure(lambda: 1)
    claim.record(measured={"x": Kind.VALUE(1)}, expected={"x": 1})

@pytest.mark.claim("C1")
def test_interrupted(claim):
    def stop():
        raise KeyboardInterrupt  # what SIGINT does in the middle of a measurement
    claim.measure(stop)

@pytest.mark.claim("C2")
def test_never_reached(claim):
    claim.record(measured={}, expected={})
'''


def test_interrupted_serial_run_still_writes_its_report(pytester, monkeypatch):
    """SIGINT inside claim.measure leaves a pytest-benchmark benchmark without data: the report and
    benchmark.json hold the finished case, and the others are listed as not run."""
    result, report = _inner_run(pytester, monkeypatch, INTERRUPTED)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "empty sequence" not in result.stdout.str() + result.stderr.str()
    benchmarks = json.loads((report / "benchmark.json").read_text())["benchmarks"]
    assert [b["name"] for b in benchmarks] == ["test_done"]
    data = json.loads((report / "claims.json").read_text())
    assert data["stopped"] == "interrupted (Ctrl-C)"
    assert {c["test"].split("::")[1]: c["outcome"] for c in data["cases"]} == \
        {"test_done": "passed", "test_interrupted": "not run", "test_never_reached": "not run"}
    assert [(s["claim"], s["verdict"]) for s in data["summary"]] == [("C1", "partial"), ("C2", "not run")]


EXPECTED_FAILURE = '''
import pytest
from stabcheck.reporting.rows import Kind

@pytest.mark.claim("C1")
def test_passes(claim):
    claim.measure(lambda: 1)
    claim.record(measured={"x": Kind.VALUE(1)}, expected={"x": 1})

@pytest.mark.claim("C1")
def test_declared_finding(claim):
    claim.measure(lambda: 1)
    claim.record(measured={"x": Kind.VALUE(2)}, expected={"x": 1})
    pytest.xfail("declared: x is 2 here, measured")
'''


def test_an_expected_failure_is_recorded_as_one_with_its_finding(pytester, monkeypatch):
    """An xfail is "xfailed" with the finding as its reason, in its case and its row, not a skip; the claim
    "passed with findings"; claims.md lists the finding."""
    result, report = _inner_run(pytester, monkeypatch, EXPECTED_FAILURE)
    assert result.ret == pytest.ExitCode.OK
    data = json.loads((report / "claims.json").read_text())
    case = next(c for c in data["cases"] if c["test"].endswith("test_declared_finding"))
    assert (case["outcome"], case["reason"]) == ("xfailed", "declared: x is 2 here, measured")
    assert {r["test"].split("::")[1]: r["outcome"] for r in data["rows"]} == {"test_passes": "passed",
                                                                             "test_declared_finding": "xfailed"}
    assert [(s["verdict"], s["passed"], s["expected failures"]) for s in data["summary"]] == \
        [("passed with findings", 1, 1)]
    markdown = (report / "claims.md").read_text()
    assert "1 of 2 cases passed, 1 failed as expected" in markdown and "declared: x is 2 here, measured" in markdown


PARALLEL = '''
import pytest
from stabcheck.reporting.rows import Kind

@pytest.mark.claim("C1")
@pytest.mark.parametrize("x", [1, 2, 3, 4])
def test_recorded(claim, x):
    claim.measure(lambda: x)
    claim.record(measured={"x": Kind.VALUE(x)}, expected={"x": x})
'''


def test_parallel_run_reports_every_case_of_every_worker(pytester, monkeypatch):
    """The README's ``-n`` path: two workers, every row reaches the controller's report, and no
    benchmark.json is written (pytest-benchmark is off under xdist)."""
    result, report = _inner_run(pytester, monkeypatch, PARALLEL, "-n", "2")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    data = json.loads((report / "claims.json").read_text())
    assert sorted(r["measured"]["x"] for r in data["rows"]) == [1, 2, 3, 4]
    assert {c["outcome"] for c in data["cases"]} == {"passed"} and len(data["cases"]) == 4
    assert not (report / "benchmark.json").exists()


def test_harness_tests_pass_under_xdist():
    """The harness tests that start inner runs pass when the outer run has workers too (an outer worker's
    environment once switched pytest-benchmark off inside them)."""
    env = {k: v for k, v in os.environ.items() if k not in XDIST_ENV}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
                             f"{Path(__file__).relative_to(ROOT)}", "-k", "interrupted_serial or budget_interrupts"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 passed" in result.stdout, result.stdout[-3000:]


BUDGET = '''
import time
import pytest
from stabcheck.reporting.rows import Kind

@pytest.mark.claim("C1")
def test_quick(claim):
    claim.record(measured={"x": Kind.VALUE(1)}, expected={"x": 1})

@pytest.mark.claim("C2")
def test_slow(claim):
    time.sleep(60)

@pytest.mark.claim("C3")
def test_after(claim):
    claim.record(measured={}, expected={})
'''


def test_budget_interrupts_the_running_case_and_reports_what_did_not_run(pytester, monkeypatch):
    result, report = _inner_run(pytester, monkeypatch, BUDGET, "--budget", "3s")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "--budget 3s: whole claims run cheapest first" in out and "claims summary" in out
    data = json.loads((report / "claims.json").read_text())
    assert data["stopped"].startswith("the budget of 3s was spent after")
    outcomes = {c["test"].split("::")[1]: (c["outcome"], c.get("reason", "")) for c in data["cases"]}
    assert outcomes["test_quick"][0] == "passed"
    assert outcomes["test_slow"] == ("not run", "interrupted: budget spent")
    assert outcomes["test_after"][0] == "not run" and outcomes["test_after"][1].startswith("the budget of 3s")
    assert "The run stopped early: the budget of 3s" in (report / "claims.md").read_text()


ESTIMATE = '''
import pytest
from claims.profiles import profile

FNN = profile("paper").setups["fnn"]

@pytest.mark.claim("C6")
@pytest.mark.parametrize("config", [FNN.config(0.1, 10, seed=0), FNN.config(0.1, 10, seed=1)])
def test_measured_settings(config):
    pass

@pytest.mark.claim("C7")
@pytest.mark.parametrize("config", [FNN.config(0.1, 10, seed=0), FNN.config(0.3, 7, seed=0)])
def test_shares_a_minimum_and_adds_an_unmeasured_one(config):
    pass
'''


def test_cost_estimate_from_measurements_at_collection(pytester, monkeypatch):
    """Two paper FNN minima at η = 0.1, B = 10: 2 × (90 s training + 10 s measuring) = 3m 20s; C7 shares
    one of them and adds a setting without a training measurement."""
    result, _ = _inner_run(pytester, monkeypatch, ESTIMATE, "--scale", "paper", "--collect-only", "-q",
                           "--cache-dir", str(pytester.path / "empty-cache"))   # nothing cached, wherever it runs
    out = result.stdout.str()
    assert "C6     2 cases, 2 minima (0 cached): ≈ 3m 20s" in out, out
    assert "C7     2 cases, 1 minimum (0 cached): ≥ 10 s + 1 part unmeasured" in out, out


PAPER_NUMBERS_PLUGIN = '''
"""Gives the small profile paper numbers for C6 (a, s per batch size), so that its paper path runs."""
import dataclasses

from claims import profiles

SCALE = {scale}
OURS = {ours}  # the committed reference run's means at B = 2, 20, n


def _small_with_paper():
    small = profiles._small()
    numbers = {{(0.1, b): (a * SCALE, s * SCALE) for b, (a, s) in OURS.items()}}
    c6 = dataclasses.replace(small.plans["C6"], paper={{"a, s": {{"fnn": numbers}}}})
    return dataclasses.replace(small, paper_note="", plans=profiles._frozen({{**small.plans, "C6": c6}}))


profiles.PROFILES["small"] = _small_with_paper
'''


@pytest.mark.slow
@pytest.mark.parametrize("scale, passes", [(1.0, True), (1.5, False)], ids=["paper-agrees", "paper-1.5x"])
def test_paper_numbers_are_asserted_where_the_profile_has_them(tmp_path, pytestconfig, scale, passes):
    """C6 with paper numbers equal to the reference run's means passes and records the agreement; numbers
    1.5× ours fail with the agreement message (the path a paper-scale run takes, at the small scale's cost)."""
    heads = next(s["headline"] for s in json.loads((ROOT / "reports/reference/claims.json").read_text())["summary"]
                 if s["claim"] == "C6")
    ours = {None if h["what"].endswith("=n") else int(h["what"].rpartition("=")[2]): tuple(h["ours"]) for h in heads}
    (tmp_path / "paper_numbers.py").write_text(PAPER_NUMBERS_PLUGIN.format(scale=scale, ours=ours))
    env = {**{k: v for k, v in os.environ.items() if k not in XDIST_ENV},
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "paper_numbers", "-p", "no:cacheprovider", "-q",
                             "claims/test_c06_batch_size.py", "--report-dir", str(tmp_path / "report"),
                             "--cache-dir", pytestconfig.getoption("--cache-dir")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert (result.returncode == 0) == passes, result.stdout[-3000:]
    rows = json.loads((tmp_path / "report" / "claims.json").read_text())["rows"]
    allowed = [k for r in rows for k in r["measured"] if k.endswith(": allowed")]
    assert len(allowed) == 2 * 2 * len(rows) == 8, allowed   # a and s at both batch sizes of both cases
    if not passes:
        assert "beyond the" in result.stdout and "allowed (seed sd" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("retry", [True, False], ids=["float64-retry", "no-retry"])
def test_unconverged_float32_solves_are_solved_again_in_float64(tmp_path, retry):
    """measure(): an a or s solve that misses tol in float32 (here 1 step to 1e-12) is solved again in float64
    when the profile says so, and the point records which dtype measured each."""
    from claims.measured import measure
    from claims.profiles import Measurement
    from stabcheck.experiments.minima import MinimaCache
    from stabcheck.experiments.setups import Setup

    tiny = Setup("tiny", "fashion_mnist", 20, "fnn", (("widths", (8,)),), tol=1e-2, max_iters=400)
    minimum = MinimaCache(tmp_path, progress=False).get(tiny.config(lr=0.5, batch_size=None, seed=0))
    m = measure(minimum, Measurement(tol=1e-12, maxiter=1, float64_retry=retry), seed=0, device="cpu")
    expected = "float64" if retry else "float32"
    assert (m.point()["a dtype"], m.point()["s dtype"]) == (expected, expected)
    assert m.theorem1.dtype == "float32"
