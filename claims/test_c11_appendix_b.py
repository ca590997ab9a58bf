"""C11 – Appendix B, the two-point polynomial (Figure 10; PAPER.md §4).

Data {(0, 0), (1, 0)}, model f(u) = a0 + √a1·u − √a2·u² (a1, a2 ≥ 0), f_i = ½(f(u_i) − y_i)², risk the
mean of the two. The global minima are (0, a, a), a ≥ 0, where the per-sample Hessians have the
positive eigenvalues 1 and 1 + 1/(2a): very non-uniform for small a. With η = 0.5 and 500 steps from
(0, 0.1, 0.2), GD converges near its start without a jump; SGD (B = 1) is unstable there, jumps and
converges to a larger a: over 100 runs SGD's a1 + a2 lies above GD's with high probability.

a1, a2 ≥ 0 is kept by projection (negative values set to 0, see ``AppendixBToy``); every test
checks that it never acted, so it cannot have changed a result.
"""
import pytest
import torch
from scipy.stats import binomtest

import stabcheck
from stabcheck.curvature.exact import mean_square_threshold, sample_hessians, theorem1_threshold
from stabcheck.experiments.toys import AppendixBToy, run_sgd
from stabcheck.reporting.rows import Kind, Tag

LR = 0.5
STEPS = 500
RUNS = 100
START = (0.0, 0.1, 0.2)
ALPHA = 0.01  # level of the one-sided sign test
FIGURE_RUNS = 5  # SGD trajectories kept in the report for Figure 10a
QUANTILES = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)


def a_sum(points: torch.Tensor) -> torch.Tensor:
    return points[..., 1] + points[..., 2]


def run_gd(toy):
    return run_sgd(toy, START, LR, 2, STEPS)


def run_sgd_b1(toy, seed):
    """100 SGD runs (B = 1) from (0, 0.1, 0.2), η = 0.5, 500 steps."""
    return run_sgd(toy, START, LR, 1, STEPS, runs=RUNS, seed=seed)


@pytest.mark.claim("C11")
@pytest.mark.parametrize("a", [0.05, 0.1, 0.3, 1.0, 3.0], ids=lambda a: f"a={a}")
def test_per_sample_hessian_eigenvalues_at_the_minima(claim, a):
    """At (0, a, a), H_1 and H_2 are rank one with eigenvalues 1 and 1 + 1/(2a); tolerance 1e-12 (float64)."""
    problem = AppendixBToy().problem([0.0, a, a])
    hessians = claim.measure(sample_hessians, problem)
    evals = torch.linalg.eigvalsh(hessians)                     # ascending, per sample
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0 + 1.0 / (2 * a)]], dtype=torch.float64)
    claim.record(measured={"eig H_1": Kind.VALUE(evals[0]), "eig H_2": Kind.VALUE(evals[1])},
                 expected={"eig H_1": expected[0], "eig H_2": expected[1]}, dtype="float64")
    torch.testing.assert_close(evals, expected, rtol=1e-12, atol=1e-12,
                               msg=lambda m: f"per-sample Hessian eigenvalues {evals.tolist()}: {m}")


@pytest.mark.claim("C11")
def test_gd_converges_near_its_start_without_a_jump(claim):
    """GD reaches a global minimum (loss < 1e-20) with a1 + a2 within 0.05 of its start's 0.3 and its
    loss never above its initial value (no jump); 0.05 is half the gap to SGD's 10% quantile in Figure 10c."""
    toy = AppendixBToy()
    gd = claim.measure(run_gd, toy)
    losses = toy.loss_values(gd.path[:, 0])
    final = gd.final[0]
    claim.record(measured={"final (a0, a1, a2)": Kind.VALUE(final), "final a1+a2": Kind.SHARPNESS(a_sum(final)),
                           "final loss": Kind.LOSS(losses[-1]), "max loss / initial": Kind.LOSS(losses.max() / losses[0]),
                           "projections": Kind.COUNT(gd.projections.sum())},
                 expected={"start a1+a2": sum(START[1:]), "max loss / initial": 1.0, "projections": 0},
                 dtype="float64")
    assert float(losses[-1]) < 1e-20, f"GD did not converge: loss {float(losses[-1])}"
    assert abs(float(a_sum(final)) - sum(START[1:])) < 0.05, f"GD's a1 + a2 = {float(a_sum(final))} moved away from 0.3"
    assert float(losses.max()) <= float(losses[0]), "GD's loss rose above its initial value"
    assert int(gd.projections.sum()) == 0, "the projection onto a1, a2 ≥ 0 acted on GD"


@pytest.mark.claim("C11")
def test_sgd_jumps_and_converges_to_larger_a(claim, base_seed):
    """In ≥ 90% of 100 SGD runs a1 + a2 ends above GD's, and a one-sided sign test (scipy's binomtest)
    rejects "no difference" at level 0.01; every run jumps (loss above its initial value) and converges."""
    toy, seed = AppendixBToy(), base_seed + 11
    sgd = claim.measure(run_sgd_b1, toy, seed)
    gd = run_gd(toy)
    ends = a_sum(sgd.final)
    gd_end = float(a_sum(gd.final[0]))
    above = int((ends > gd_end).sum())
    test = binomtest(above, RUNS, 0.5, alternative="greater")
    losses = toy.loss_values(sgd.path)                           # (steps + 1, runs)
    jumped = (losses.max(dim=0).values > losses[0]).double().mean().item()
    q10, median, q90 = torch.quantile(ends, QUANTILES).tolist()
    claim.record(
        measured={"GD a1+a2": gd_end, "SGD a1+a2 median": median, "SGD a1+a2 10%": q10, "SGD a1+a2 90%": q90,
                  "fraction above GD": Kind.FRACTION(above / RUNS), "sign test p": Kind.P_VALUE(test.pvalue),
                  "fraction that jumped": Kind.FRACTION(jumped), "max final loss": Kind.LOSS(losses[-1].max()),
                  "projections": Kind.COUNT(sgd.projections.sum())},
        kinds=dict.fromkeys(["GD a1+a2", "SGD a1+a2 median", "SGD a1+a2 10%", "SGD a1+a2 90%"], Kind.SHARPNESS),
        tag=Tag.APPENDIX_B,
        expected={"fraction above GD at least": 0.9, "sign test p below": ALPHA, "projections": 0},
        seed=seed, dtype="float64",
        # Figure 10 of the paper: a1 + a2 along GD and a few SGD runs, every end point
        figure={"gd_a_sum": a_sum(gd.path[:, 0]), "sgd_a_sum": a_sum(sgd.path[:, :FIGURE_RUNS]).T,
                "gd_final": gd.final[0], "sgd_final": sgd.final},
    )
    assert int(sgd.projections.sum()) == 0, "the projection onto a1, a2 ≥ 0 acted on SGD"
    assert float(losses[-1].max()) < 1e-20, f"an SGD run did not converge: loss {float(losses[-1].max())}"
    assert above >= 0.9 * RUNS, f"SGD's a1 + a2 exceeds GD's ({gd_end:.4f}) in only {above}/{RUNS} runs"
    assert test.pvalue < ALPHA, f"sign test p = {test.pvalue}"
    assert jumped == 1.0, f"only {jumped:.0%} of SGD runs jumped"


@pytest.mark.claim("C11")
def test_theorem1_gd_end_unstable_sgd_ends_stable(claim, base_seed):
    """Theorem 1 for SGD(η = 0.5, B = 1): GD's end point unstable, SGD's end points stable.

    stabcheck.theorem1 (Lanczos, tol 1e-10) runs at GD's end and at SGD's end points of the 0, 10, 50,
    90 and 100% quantiles of a1 + a2; the dense closed-form Theorem-1 threshold covers all 100 SGD ends
    (stable iff threshold ≥ η). The exact mean-square threshold is recorded beside it.
    """
    toy, seed = AppendixBToy(), base_seed + 11
    gd, sgd = run_gd(toy), run_sgd_b1(toy, seed)
    gd_problem = toy.problem(gd.final[0])
    gd_t1 = claim.measure(stabcheck.theorem1, gd_problem, lr=LR, batch_size=1, tol=1e-10)
    gd_hessians = sample_hessians(gd_problem)
    order = torch.argsort(a_sum(sgd.final))
    picked = order[torch.tensor([0, RUNS // 10, RUNS // 2, (9 * RUNS) // 10, RUNS - 1])]
    sgd_t1 = [stabcheck.theorem1(toy.problem(sgd.final[r]), lr=LR, batch_size=1, tol=1e-10) for r in picked]
    thresholds = torch.tensor([theorem1_threshold(sample_hessians(toy.problem(x)), 1) for x in sgd.final])
    claim.record(
        measured={"T1 at GD end": Kind.THEOREM1(gd_t1.value),
                  "T1 at SGD ends (quantiles)": Kind.THEOREM1([r.value for r in sgd_t1]),
                  "T1 threshold lr at GD end": Kind.VALUE(theorem1_threshold(gd_hessians, 1)),
                  "exact mean-square threshold lr at GD end": Kind.VALUE(mean_square_threshold(gd_hessians, 1)),
                  "min T1 threshold lr over SGD ends": Kind.VALUE(thresholds.min())},
        expected={"T1 at GD end above": 1 + gd_t1.stable_tol, "T1 at SGD ends at most": 1 + gd_t1.stable_tol,
                  "min T1 threshold lr at least": LR},
        seed=seed, dtype="float64",
        note="Theorem-1 values at minima are at least 1: T = I along the set of minima (0, a, a). The exact "
             "criterion puts GD's end just inside the stable region: Theorem 1 is only sufficient in d = 3",
    )
    assert not gd_t1.stable, f"Theorem 1 calls GD's end stable: value {gd_t1.value}"
    assert all(r.stable for r in sgd_t1), f"Theorem 1 calls an SGD end unstable: {[r.value for r in sgd_t1]}"
    assert float(thresholds.min()) >= LR, f"an SGD end has Theorem-1 threshold {float(thresholds.min())} < η = {LR}"
