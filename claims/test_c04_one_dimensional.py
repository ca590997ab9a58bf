"""C4 – the 1-D motivating example (PAPER.md §4).

f_1(x) = min{x², 0.1(x−1)²}, f_2(x) = min{x², 1.9(x−1)²}, f = (f_1 + f_2)/2 has the global minima
x = 0 (a = 2, s = 0) and x = 1 (a = 2, s = 1.8). With η = 0.7 GD is stable at both (|1 − ηa| = 0.4);
SGD with B = 1 has E(1 − ηh)² = 0.16 + 0.49·3.24 = 1.7476 > 1 at x = 1 and 0.16 at x = 0. SGD started
at x = 1 + 1e-5 leaves x = 1 and ends at x = 0; GD stays at x = 1.
"""
import math

import pytest

import stabcheck
from stabcheck.reporting.rows import Kind, Tag
from stabcheck.experiments.toys import OneDimensionalExample, exit_steps, run_sgd

LR = 0.7
STEPS = 500
RUNS = 500
START = 1.0 + 1e-5
# |x − x*| below which a run counts as sitting at the minimum x* (PAPER.md's GD criterion for C4)
AT_MINIMUM = 1e-4
# a run has left x = 1 once |x − 1| exceeds this: 10⁴ times the initial offset, beyond linear reach
LEFT = 0.1
FIGURE_RUNS = 3  # SGD trajectories kept in the report for the figure


@pytest.mark.claim("C4")
@pytest.mark.parametrize("x,a,s,moment", [(0.0, 2.0, 0.0, 0.16), (1.0, 2.0, 1.8, 1.7476)], ids=["x=0", "x=1"])
def test_sharpness_nonuniformity_and_second_moment_at_the_minima(claim, x, a, s, moment):
    """stabcheck measures a, s and E(1 − ηh)² = λmax{(1 − ηH)² + η²pΣ} (d = 1, B = 1) at both minima.

    Tolerance 1e-9: a one-parameter float64 problem, where Lanczos is exact up to rounding.
    """
    problem = OneDimensionalExample().problem([x])
    sharp = claim.measure(stabcheck.sharpness, problem, tol=1e-10)
    nonuni = stabcheck.non_uniformity(problem, tol=1e-10)
    t1 = stabcheck.theorem1(problem, lr=LR, batch_size=1, tol=1e-10)
    gd_factor = abs(1 - LR * sharp.value)
    claim.record(measured={"a": Kind.SHARPNESS(sharp.value), "s": Kind.NONUNIFORMITY(nonuni.value),
                           "E(1-eta h)^2": Kind.THEOREM1(t1.value), "abs(1-eta a)": Kind.VALUE(gd_factor)},
                 expected={"a": a, "s": s, "E(1-eta h)^2": moment, "abs(1-eta a)": 0.4, "2/eta": 2 / LR},
                 dtype="float64", note=f"SGD(η={LR}, B=1) {'stable' if t1.stable else 'unstable'}")
    assert sharp.value == pytest.approx(a, abs=1e-9), f"a = {sharp.value}, paper {a}"
    assert nonuni.value == pytest.approx(s, abs=1e-9), f"s = {nonuni.value}, paper {s}"
    assert t1.value == pytest.approx(moment, abs=1e-9), f"E(1-ηh)² = {t1.value}, paper {moment}"
    assert sharp.value <= stabcheck.sharpness_bound(LR), f"GD unstable: a = {sharp.value} > 2/η = {2 / LR}"
    assert t1.stable is (moment < 1)


@pytest.mark.claim("C4")
def test_gd_stays_at_x1(claim):
    """GD from 1 + 1e-5 contracts by |1 − ηa| = 0.4 per step and stays at x = 1 (|x − 1| < 1e-4)."""
    run = claim.measure(run_sgd, OneDimensionalExample(), [START], LR, 2, STEPS)
    final = float(run.final[0, 0])
    drift = float((run.path[:, 0, 0] - 1).abs().max())
    claim.record(measured={"final x": Kind.VALUE(final), "max abs(x_t - 1)": Kind.VALUE(drift)},
                 expected={"final x": 1.0, "max abs(x_t - 1) below": AT_MINIMUM}, dtype="float64")
    assert abs(final - 1) < AT_MINIMUM, f"GD ended at x = {final}, not at x = 1"
    assert drift < AT_MINIMUM, f"GD strayed to |x − 1| = {drift}"


@pytest.mark.claim("C4")
def test_sgd_leaves_x1_and_ends_at_x0(claim, base_seed):
    """SGD (B = 1) leaves x = 1 and ends at x = 0 in ≥ 95% of the runs: the median escape step is about 50
    of the 500 (predicted 52), so nearly every run has time to leave, and a 5% allowance still fails a
    library that leaves SGD at a stable x = 1 (no run escapes).

    The escape step (first |x − 1| > 0.1) is recorded beside the step predicted by the typical
    growth rate of |x − 1|, E log|1 − ηh| per step.
    """
    seed = base_seed + 4
    run = claim.measure(run_sgd, OneDimensionalExample(), [START], LR, 1, STEPS, runs=RUNS, seed=seed)
    final = run.final[:, 0]
    at_zero = (final.abs() < AT_MINIMUM).double().mean().item()
    escape = exit_steps(run, [1.0], LEFT)
    left = (escape >= 0).double().mean().item()
    steps = escape[escape >= 0].double()
    growth = 0.5 * (math.log(abs(1 - LR * 0.2)) + math.log(abs(1 - LR * 3.8)))
    claim.record(
        measured={"fraction at x=0": Kind.FRACTION(at_zero), "fraction that left x=1": Kind.FRACTION(left),
                  "escape step median": Kind.ITERATIONS(steps.median()),
                  "escape step 10%": Kind.ITERATIONS(steps.quantile(0.1)),
                  "escape step 90%": Kind.ITERATIONS(steps.quantile(0.9)), "runs": Kind.COUNT(RUNS)},
        expected={"fraction at x=0 at least": 0.95, "fraction that left x=1 at least": 0.95,
                  "escape step from E log abs(1-eta h)": math.log(LEFT / (START - 1)) / growth},
        seed=seed, dtype="float64",
        figure={"sgd_paths": run.path[:, :FIGURE_RUNS, 0].T, "escape_steps": escape}, tag=Tag.ONE_DIMENSIONAL,
    )
    assert left >= 0.95, f"only {left:.1%} of SGD runs left x = 1"
    assert at_zero >= 0.95, f"only {at_zero:.1%} of SGD runs ended at x = 0"
