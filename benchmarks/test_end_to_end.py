"""End to end on a trained paper-scale minimum: every method to about 1e-4 of a float64 reference.

The minimum is the paper profile's C6 SGD minimum: the first n = 1000 FashionMNIST training images,
FNN 784-500-500-500-10 (d = 898 510), MSE, SGD η = 0.1, B = 10, seed 0, from the minima cache
(``--cache-dir``; about 90 s to train on a miss). Measured in float32 with one torch thread; the
times are process CPU seconds (run with ``--benchmark-timer=time.process_time``), medians over the
start vectors :data:`SEEDS` where a row says so. Rows (``RESULTS["end_to_end"]``):

* sharpness a: stabcheck's Lanczos (tol 1e-4, certified residual) with the factored H v and with the
  autodiff H v; PyHessian's power iteration at :data:`PYHESSIAN_TOLS`; curvlinops through ARPACK
  ``eigsh``; the paper's method (power iteration with the autodiff H v, stopped by the relative
  change :data:`POWER_TOL`).
* non-uniformity s: stabcheck's Lanczos on Σ (factored engine); the paper's method, power iteration on
  Σ with per-sample products (the loop engine). One loop Σv takes about 11 s here, so that row is
  extrapolated: the products power iteration needs (counted with the factored engine: the same
  matrix) × the median time of :data:`LOOP_ROUNDS` loop Σv products.
* Theorem 1 at B = 10, 100, 1000: one :func:`~stabcheck.theorem1_batch_sizes` sweep beside three
  :func:`~stabcheck.theorem1` calls, both given the measured a.

The float64 references: a and s by Lanczos to tol 1e-10 and 1e-8, λ_max(T) at B = n to 1e-6. The
last test turns the rows into the goals of issue 13 (``RESULTS["goals"]``), met or not.
"""
from __future__ import annotations

import statistics

import pytest
import torch

import stabcheck
from claims.profiles import profile
from stabcheck.curvature.criteria import NOT_CERTIFIED, SOLVE
from stabcheck.curvature.operators import SigmaOperator
from stabcheck.experiments.minima import MinimaCache

from .support import RESULTS, tangent
from .test_external import curvlinops_sharpness, pyhessian_sharpness

pytestmark = pytest.mark.perf

TOL = 1e-4
SEEDS = (0, 1, 2, 3, 4)
LR = 0.1
BATCH_SIZES = (10, 100, 1000)
#: The T − I solve at this minimum needs about 110 Lanczos steps (a dense cluster of eigenvalues near 0).
T_MAXITER = 300
#: The paper's power iteration stops on a relative change; this one reaches 1e-4 of a and of s.
POWER_TOL = 1e-6
POWER_MAXITER = 1000
#: PyHessian's relative-change tolerances: at 1e-4 it stopped 1.7e-4 off here, at 1e-5 8e-5 (seed 0).
PYHESSIAN_TOLS = (1e-5, 1e-6)
LOOP_ROUNDS = 2


@pytest.fixture(scope="module")
def minimum(pytestconfig):
    config = profile("paper").setups["fnn"].config(LR, 10, seed=0)
    found = MinimaCache(pytestconfig.getoption("--cache-dir"), progress=False).get(config)
    assert found.converged, found.record
    return found


@pytest.fixture(scope="module")
def problem(minimum):
    return minimum.problem()


@pytest.fixture(scope="module")
def reference(minimum):
    """float64 a, s and λ_max(T) at B = n."""
    p64 = minimum.problem(dtype=torch.float64)
    a = stabcheck.sharpness(p64, tol=1e-10, maxiter=200)
    s = stabcheck.non_uniformity(p64, tol=1e-8, maxiter=200)
    gd = stabcheck.theorem1(p64, LR, p64.n, tol=1e-6, maxiter=400, sharpness=a, form="full")
    assert a.converged and s.converged and gd.converged
    return {"a": a.value, "s2": s.eigenvalue, "theorem1 B=n": gd.value}


def _row(key, quantity, method, value, products, median_s, relative_error=None, note=""):
    row = {"key": key, "quantity": quantity, "method": method, "value": value, "relative_error": relative_error,
           "products": products, "median_s": median_s, "note": note}
    RESULTS["end_to_end"].append(row)
    return row


def _per_seed(benchmark, run) -> tuple[list, float]:
    """run(seed) for every seed of SEEDS, one timed round each: (the results, the median time)."""
    seeds = iter(SEEDS)
    results = []
    benchmark.pedantic(lambda seed: results.append(run(seed)), setup=lambda: ((next(seeds),), {}),
                       rounds=len(SEEDS), iterations=1)
    return results, benchmark.stats.stats.median


def _median_error(values, exact) -> float:
    return statistics.median(abs(v - exact) / abs(exact) for v in values)


@pytest.mark.parametrize("hvp", ["factored", "autodiff"])
def test_sharpness_stabcheck(benchmark, problem, reference, hvp):
    benchmark.group = "e2e-sharpness"
    runs, median_s = _per_seed(benchmark, lambda seed: stabcheck.sharpness(problem, tol=TOL, seed=seed, hvp=hvp))
    error = _median_error([r.value for r in runs], reference["a"])
    _row(f"a-{hvp}", "sharpness a", f"stabcheck Lanczos, {hvp} H v", f"{statistics.median(r.value for r in runs):.6f}",
         statistics.median(r.matvecs for r in runs), median_s, error, f"median of {len(SEEDS)} start vectors")
    assert all(r.converged for r in runs) and max(abs(r.value - reference["a"]) for r in runs) <= TOL * reference["a"]


@pytest.mark.parametrize("tol", PYHESSIAN_TOLS)
def test_sharpness_pyhessian(benchmark, minimum, reference, tol):
    pytest.importorskip("pyhessian")
    inputs, targets = minimum.dataset.inputs, minimum.dataset.targets("mse")
    benchmark.group = "e2e-sharpness"
    runs, median_s = _per_seed(benchmark, lambda seed: pyhessian_sharpness(minimum.model(), inputs, targets, tol, seed))
    _row(f"a-pyhessian-{tol:g}", "sharpness a", f"PyHessian power iteration, tol {tol:g}",
         f"{statistics.median(v for v, _ in runs):.6f}", statistics.median(k for _, k in runs), median_s,
         _median_error([v for v, _ in runs], reference["a"]), f"median of {len(SEEDS)} start vectors")


def test_sharpness_curvlinops(benchmark, minimum, reference):
    pytest.importorskip("curvlinops")
    inputs, targets = minimum.dataset.inputs, minimum.dataset.targets("mse")
    benchmark.group = "e2e-sharpness"
    runs, median_s = _per_seed(benchmark, lambda seed: curvlinops_sharpness(minimum.model(), inputs, targets,
                                                                           TOL, seed))
    _row("a-curvlinops", "sharpness a", f"curvlinops ARPACK eigsh, tol {TOL:g}",
         f"{statistics.median(v for v, _ in runs):.6f}", statistics.median(k for _, k in runs), median_s,
         _median_error([v for v, _ in runs], reference["a"]), f"median of {len(SEEDS)} start vectors")


def test_sharpness_paper_power(benchmark, problem, reference):
    benchmark.group = "e2e-sharpness"
    res = benchmark.pedantic(lambda: stabcheck.sharpness(problem, method="power", tol=POWER_TOL,
                                                         maxiter=POWER_MAXITER, hvp="autodiff"),
                             rounds=1, iterations=1)
    _row("a-paper", "sharpness a", f"paper: power iteration, autodiff H v, tol {POWER_TOL:g}", f"{res.value:.6f}",
         res.matvecs, benchmark.stats.stats.median, abs(res.value - reference["a"]) / reference["a"],
         "start vector 0")


def test_nonuniformity_stabcheck(benchmark, problem, reference):
    benchmark.group = "e2e-nonuniformity"
    runs, median_s = _per_seed(benchmark, lambda seed: stabcheck.non_uniformity(problem, tol=TOL, seed=seed))
    assert {r.engine for r in runs} == {"factored"}
    error = _median_error([r.eigenvalue for r in runs], reference["s2"])
    _row("s-factored", "non-uniformity s", "stabcheck Lanczos, factored Σ v",
         f"{statistics.median(r.value for r in runs):.6f}", statistics.median(r.matvecs for r in runs), median_s,
         error, f"median of {len(SEEDS)} start vectors; error of λmax(Σ) = s²")
    assert all(r.converged for r in runs) and error <= TOL


def test_nonuniformity_paper_loop(benchmark, problem, reference):
    """Power iteration on Σ as the paper does it, with its per-sample loop products (extrapolated)."""
    power = stabcheck.non_uniformity(problem, method="power", engine="factored", tol=POWER_TOL,
                                     maxiter=POWER_MAXITER)
    loop = SigmaOperator(problem, "loop")
    v = tangent(problem)
    benchmark.group = "e2e-nonuniformity"
    benchmark.pedantic(lambda: loop.apply(v), rounds=LOOP_ROUNDS, iterations=1)
    per_product = benchmark.stats.stats.median
    _row("s-paper", "non-uniformity s", f"paper: power iteration, loop Σ v, tol {POWER_TOL:g}", f"{power.value:.6f}",
         power.matvecs, power.matvecs * per_product, abs(power.eigenvalue - reference["s2"]) / reference["s2"],
         f"extrapolated: {power.matvecs} products × {per_product:.1f} s (median of {LOOP_ROUNDS} loop Σv); "
         "products counted with the factored engine")


@pytest.fixture(scope="module")
def measured_a(problem):
    """The a both Theorem-1 rows reuse (as ``python -m stabcheck measure`` does)."""
    return stabcheck.sharpness(problem, tol=TOL)


def _theorem1_cell(r) -> str:
    if r.source == SOLVE:
        return f"{r.value:.6f}"
    return f"≥ {r.lower:.6f}" if r.verdict == NOT_CERTIFIED else f"≤ {r.upper:.6f}"


_THEOREM1: dict[str, object] = {}


def test_theorem1_sweep(benchmark, problem, reference, measured_a):
    benchmark.group = "e2e-theorem1"
    sweep = benchmark.pedantic(lambda: stabcheck.theorem1_batch_sizes(problem, LR, BATCH_SIZES, tol=TOL,
                                                                      maxiter=T_MAXITER, sharpness=measured_a,
                                                                      form="full"),
                               rounds=1, iterations=1)
    _THEOREM1["sweep"] = sweep
    gd = sweep.result(problem.n)
    cells = ", ".join(f"B={r.batch_size}: {_theorem1_cell(r)} ({r.source}, {r.verdict})" for r in sweep)
    products = dict(sweep.products)
    _row("t1-sweep", "Theorem 1, B = 10, 100, 1000", "stabcheck theorem1_batch_sizes (one sweep)", cells,
         f"H {products['hessian']} + Σ {products['sigma']}", benchmark.stats.stats.median,
         abs(gd.value - reference["theorem1 B=n"]) if gd.source == SOLVE else None,
         f"solved B = {list(sweep.solved)}; error: |λmax(T) − float64| at B = n (T's scale is 1)")
    assert all(r.converged for r in sweep if r.source == SOLVE)


def test_theorem1_separate_calls(benchmark, problem, reference, measured_a):
    benchmark.group = "e2e-theorem1"
    calls = benchmark.pedantic(lambda: [stabcheck.theorem1(problem, LR, b, tol=TOL, maxiter=T_MAXITER,
                                                           sharpness=measured_a, form="full") for b in BATCH_SIZES],
                               rounds=1, iterations=1)
    cells = ", ".join(f"B={t.batch_size}: {t.value:.6f} ({t.verdict})" for t in calls)
    hessian, sigma = (sum(t.products[k] for t in calls) for k in ("hessian", "sigma"))
    _row("t1-separate", "Theorem 1, B = 10, 100, 1000", "stabcheck theorem1, three calls", cells,
         f"H {hessian} + Σ {sigma}", benchmark.stats.stats.median, abs(calls[-1].value - reference["theorem1 B=n"]),
         "error: |λmax(T) − float64| at B = n")
    assert all(t.converged for t in calls)
    sweep = _THEOREM1.get("sweep")
    if sweep is not None:  # the sweep gives the verdicts of the separate calls for fewer products
        assert [r.verdict for r in sweep] == [t.verdict for t in calls]
        assert sweep.products["hessian"] < hessian and sweep.products["sigma"] <= sigma
        for r, t in zip(sweep, calls):
            assert r.lower <= t.value + TOL and t.value <= r.upper + TOL


def _ratio_goal(goal: str, numerator: str | None, denominator: str | None, limit: float, rows: dict) -> dict:
    if numerator not in rows or denominator not in rows:
        return {"goal": goal, "measured": "not measured in this session", "met": False}
    ratio = rows[numerator]["median_s"] / rows[denominator]["median_s"]
    return {"goal": goal, "measured": f"{ratio:.2f}× ({rows[numerator]['median_s']:.2f} s / "
                                      f"{rows[denominator]['median_s']:.2f} s)", "met": ratio <= limit}


def test_goals():
    """Issue 13's goals from the rows of this session, met or not (recorded; the reasons go to the README)."""
    rows = {r["key"]: r for r in RESULTS["end_to_end"]}
    if not rows:
        pytest.skip("no end-to-end rows in this session")
    goals = []
    # PyHessian at its loosest tolerance that reaches 1e-4 (its fastest run of that accuracy).
    pyhessian = [rows[k] for k in (f"a-pyhessian-{t:g}" for t in sorted(PYHESSIAN_TOLS, reverse=True))
                 if k in rows and rows[k]["relative_error"] <= TOL]
    if "a-factored" in rows and pyhessian:
        ours, theirs = rows["a-factored"], pyhessian[0]
        goals.append({"goal": "sharpness faster than PyHessian (median over start vectors) at equal or better accuracy",
                      "measured": f"{ours['median_s']:.2f} s vs {theirs['median_s']:.2f} s ({theirs['method']}); "
                                  f"median rel. error {ours['relative_error']:.1e} vs {theirs['relative_error']:.1e}",
                      "met": (ours["median_s"] < theirs["median_s"]
                              and ours["relative_error"] <= theirs["relative_error"])})
    goals.append(_ratio_goal("non-uniformity ≤ 1.5× the sharpness time", "s-factored", "a-factored", 1.5, rows))
    products = {(r["model"], r["n"], r["op"]): r["median_s"] for r in RESULTS["products"]}
    for model, limit in (("fnn", 2.0), ("vgg", 3.0)):
        hv, sigma = products.get((model, 1000, "hv")), products.get((model, 1000, "factored"))
        goals.append({"goal": f"Σv ≤ {limit:g} H v ({model.upper()}, n = 1000)",
                      "measured": "not measured in this session (test_sigma_engines.py)" if not (hv and sigma)
                      else f"{sigma / hv:.2f}× ({sigma:.3f} s / {hv:.3f} s)",
                      "met": bool(hv and sigma and sigma / hv <= limit)})
    if {"t1-sweep", "a-factored", "s-factored"} <= set(rows):
        both = rows["a-factored"]["median_s"] + rows["s-factored"]["median_s"]
        ratio = rows["t1-sweep"]["median_s"] / both
        goals.append({"goal": "Theorem 1 for several B ≤ 2× the cost of a and s together",
                      "measured": f"{ratio:.2f}× ({rows['t1-sweep']['median_s']:.2f} s / {both:.2f} s)",
                      "met": ratio <= 2.0})
    RESULTS["goals"].extend(goals)
