"""Theorem 1 at several batch sizes at once: bounds that contain the dense value, the verdicts of separate
theorem1 calls, and fewer products than those calls."""
import json

import pytest
import torch

import stabcheck
from stabcheck.curvature.results import BOUND, CERTIFIED_STABLE, NOT_CERTIFIED, SOLVE, Theorem1Sweep
from stabcheck.curvature.sweep import theorem1_batch_sizes
from stabcheck.curvature.exact import theorem1_threshold
from stabcheck.experiments.toys import QuadraticToy

from .tiny import dense_curvature, make_problem

TOL = 1e-10
# The bounds hold to the solvers' tolerance (a converged value is exact to about TOL).
SLACK = 1e-8


def _toy():
    """A PSD quadratic toy (n = 12) at x* = 0 and its dense (H_i, H, Σ)."""
    toy = QuadraticToy.random_psd(12, 16, 2, seed=3)
    problem = toy.problem(torch.zeros(16))
    return problem, *dense_curvature(problem)


def _case(name: str):
    """(problem, dense H, dense Σ, η, stable_tol) with verdicts that change between two batch sizes."""
    if name == "toy":
        problem, his, h, sigma = _toy()
        # Between the thresholds of B = 3 and B = 4: B ≤ 3 is not certified, B ≥ 4 is.
        lr = (theorem1_threshold(his, 3) * theorem1_threshold(his, 4)) ** 0.5
        return problem, h, sigma, lr, 1e-3
    # The tiny nets sit at random points, where H has negative eigenvalues and λ_max(T) > 1 for every η.
    # stable_tol (< 0.5) moves the threshold 1 + stable_tol into their range of values (dense: B = 1, 2
    # above it by ≥ 3e-4, B ≥ 3 below it by ≥ 3e-4), so the verdicts change at B = 3.
    model, loss, lr, stable_tol = {"mlp-tanh": ("mlp-tanh", "mse", 0.3, 0.3157),
                                   "mlp-relu": ("mlp-relu", "ce", 0.2, 0.388),
                                   "cnn-pool": ("cnn-pool", "mse", 0.05, 0.2491)}[name]
    problem = make_problem(model, loss)
    _, h, sigma = dense_curvature(problem)
    return problem, h, sigma, lr, stable_tol


def dense_values(problem, h, sigma, lr) -> dict[int, float]:
    """λ_max(T_B) for every B = 1..n from dense float64 H and Σ."""
    a = torch.eye(h.shape[0], dtype=h.dtype) - lr * h
    return {b: float(torch.linalg.eigvalsh(a @ a + lr * lr * stabcheck.noise_factor(problem.n, b) * sigma)[-1])
            for b in range(1, problem.n + 1)}


@pytest.fixture(scope="module", params=["toy", "mlp-tanh", "mlp-relu", "cnn-pool"])
def case(request):
    """The sweep over every B = 1..n, the separate theorem1 calls with the same sharpness, the dense values."""
    problem, h, sigma, lr, stable_tol = _case(request.param)
    opts = dict(tol=TOL, maxiter=problem.dim, stable_tol=stable_tol, form="full")
    a = stabcheck.sharpness(problem, tol=TOL, maxiter=problem.dim)
    sizes = range(1, problem.n + 1)
    sweep = theorem1_batch_sizes(problem, lr, sizes, sharpness=a, **opts)
    separate = {b: stabcheck.theorem1(problem, lr, b, sharpness=a, **opts) for b in sizes}
    return sweep, separate, dense_values(problem, h, sigma, lr), a


def test_bounds_contain_the_dense_value(case):
    sweep, _, truth, _ = case
    assert sweep.batch_sizes == tuple(truth)
    for r in sweep:
        assert r.lower <= truth[r.batch_size] + SLACK, (r.batch_size, r.source)
        assert truth[r.batch_size] <= r.upper + SLACK, (r.batch_size, r.source)
        if r.source == SOLVE:
            assert r.converged and r.value == pytest.approx(truth[r.batch_size], rel=1e-8)


def test_verdicts_equal_separate_calls_and_the_dense_ones(case):
    sweep, separate, truth, _ = case
    verdicts = {r.batch_size: r.verdict for r in sweep}
    assert verdicts == {b: t.verdict for b, t in separate.items()}
    assert verdicts == {b: NOT_CERTIFIED if v > 1 + r.stable_tol else CERTIFIED_STABLE
                        for (b, v), r in zip(truth.items(), sweep)}
    # Each case has both verdicts and decides some B by bounds alone, so every part above ran.
    assert set(verdicts.values()) == {CERTIFIED_STABLE, NOT_CERTIFIED}
    assert {r.source for r in sweep} == {SOLVE, BOUND}


def test_a_solved_batch_size_equals_its_separate_call(case):
    sweep, separate, _, _ = case
    for b in sweep.solved:
        r, t = sweep.result(b), separate[b]
        assert (r.eigen.value, r.iterations, r.converged) == (t.eigen.value, t.iterations, t.converged)
        # rayleigh_top from the tangent line instead of a T product: equal up to rounding.
        assert r.rayleigh_top == pytest.approx(t.rayleigh_top, rel=1e-12, abs=1e-12)
        assert r.value == pytest.approx(t.value, rel=1e-12)


def test_fewer_products_than_separate_calls_and_every_one_counted(case):
    sweep, separate, _, a = case
    for kind in ("hessian", "sigma"):
        assert sweep.products[kind] < sum(t.products[kind] for t in separate.values())
    # Beyond the solves: one H and one Σ product per tangent line (H's top eigenvector's, and some solves').
    extra = {k: sweep.products[k] - sum(sweep.result(b).products[k] for b in sweep.solved)
             for k in ("hessian", "sigma")}
    assert extra["hessian"] == extra["sigma"] >= 1


def test_a_not_certified_largest_batch_decides_every_smaller_one():
    problem = make_problem("mlp-tanh", "mse")  # λ_max(T) > 1 + stable_tol at every B (negative curvature)
    sweep = theorem1_batch_sizes(problem, 0.1, [1, 2, 3, problem.n], form="full", tol=TOL, maxiter=problem.dim)
    assert sweep.solved == (problem.n,)
    assert [r.verdict for r in sweep] == [NOT_CERTIFIED] * 4
    assert all(r.lower >= sweep.result(problem.n).value for r in sweep)


def test_stable_everywhere_solves_the_two_ends_only():
    problem, his, h, sigma = _toy()
    lr = 0.5 * theorem1_threshold(his, 1)
    sweep = theorem1_batch_sizes(problem, lr, range(1, problem.n + 1), form="full", tol=TOL)
    assert sweep.solved == (1, problem.n)
    assert {r.verdict for r in sweep} == {CERTIFIED_STABLE}
    truth = dense_values(problem, h, sigma, lr)
    assert all(r.lower - SLACK <= truth[r.batch_size] <= r.upper + SLACK for r in sweep)


def test_sharpness_beyond_two_over_lr_needs_no_solve():
    problem = _toy()[0]
    a = stabcheck.sharpness(problem, tol=TOL)
    sweep = theorem1_batch_sizes(problem, 1.1 * 2 / a.value, [1, 5, problem.n], form="full", tol=TOL, sharpness=a)
    assert sweep.solved == ()
    assert all(r.verdict == NOT_CERTIFIED and r.sharpness_exceeded for r in sweep)
    assert dict(sweep.products) == {"hessian": 1, "sigma": 1}, "only the tangent at H's top eigenvector"


def test_sweep_without_sharpness_measures_and_counts_it():
    problem = _toy()[0]
    given = stabcheck.sharpness(problem, tol=1e-6)
    alone = theorem1_batch_sizes(problem, 0.1, [2, 4], form="full", tol=1e-6)
    with_a = theorem1_batch_sizes(problem, 0.1, [2, 4], form="full", tol=1e-6, sharpness=given)
    assert alone.sharpness.value == given.value
    assert alone.products["hessian"] - with_a.products["hessian"] == given.matvecs
    assert [r.verdict for r in alone] == [r.verdict for r in with_a]


def test_results_lookup_repeats_and_json():
    problem = _toy()[0]
    sweep = theorem1_batch_sizes(problem, 0.1, [4, 2, 4], form="full", tol=1e-6)
    assert isinstance(sweep, Theorem1Sweep) and sweep.batch_sizes == (2, 4) and len(sweep) == 2
    assert sweep.result(4).batch_size == 4
    with pytest.raises(KeyError, match="batch size 3 is not in this sweep"):
        sweep.result(3)
    d = json.loads(json.dumps(sweep.as_dict()))
    assert [row["source"] for row in d["results"]] == [r.source for r in sweep]
    assert d["products"] == dict(sweep.products)


def test_bad_batch_sizes_are_refused():
    problem = _toy()[0]
    with pytest.raises(ValueError, match="batch_sizes is empty"):
        theorem1_batch_sizes(problem, 0.1, [])
    with pytest.raises(ValueError, match=r"batch size must lie in \[1, n=12\]"):
        theorem1_batch_sizes(problem, 0.1, [2, 13])
    with pytest.raises(TypeError, match="batch size must be a whole number"):
        theorem1_batch_sizes(problem, 0.1, [2.5])
