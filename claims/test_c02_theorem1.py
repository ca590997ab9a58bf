"""C2 – Theorem 1 and its identity (PAPER.md §1, §4).

(i) E_ξ[(I − ηH_ξ)²] = (I − ηH)² + η² p Σ with p = (n − B)/(B(n − 1)) for B-subsets drawn without
replacement (1/B with replacement). (ii) In d = 1 the second moment obeys m_{t+1} = [(1 − ηa)² + η²ps²] m_t
exactly, so the sign of that bracket minus 1 decides stability. (iii) In d > 1 Theorem 1,
λmax{(I − ηH)² + η²pΣ} ≤ 1, is sufficient only: the exact mean-square criterion — the spectral radius
ρ of S ↦ E[(I − ηH_ξ)S(I − ηH_ξ)] (stabcheck.curvature.exact) — never exceeds Theorem 1's value, second moments
stay bounded whenever that value is ≤ 1, and there are minima Theorem 1 calls unstable that are stable.
"""
import math

import pytest
import torch

import stabcheck
from claims import kinds
from claims.measured import require_minimum, theorem1_entries
from stabcheck.reporting.rows import Kind
from stabcheck.curvature import exact
from stabcheck.experiments.toys import QuadraticToy, run_sgd

Z = 3.29  # two-sided 99.9% normal quantile for Monte Carlo confidence intervals


def dense_h_sigma(problem):
    """H and Σ as dense matrices from stabcheck's operators."""
    return stabcheck.HessianOperator(problem).to_dense(), stabcheck.SigmaOperator(problem).to_dense()


# ---- (i) the identity, by enumerating every batch ---------------------------------------------------
IDENTITY_CASES = [(4, 1, False), (4, 2, False), (6, 3, False), (8, 1, False), (8, 3, False), (8, 4, False),
                  (8, 8, False), (4, 2, True), (6, 3, True), (8, 3, True)]


@pytest.mark.claim("C2")
@pytest.mark.parametrize("n,batch_size,replace", IDENTITY_CASES,
                         ids=[f"n={n}-B={b}-{'with-replacement' if r else 'subsets'}" for n, b, r in IDENTITY_CASES])
def test_identity_by_enumeration(claim, base_seed, n, batch_size, replace):
    """Enumerated E[(I − ηH_ξ)²] equals (I − ηH)² + η²pΣ (H, Σ from stabcheck; p = noise_factor, or 1/B
    with replacement) to 1e-12 of its largest entry: float64 rounding of sums of at most 8³ terms."""
    seed, lr = base_seed + 10 * n + batch_size, 0.7
    problem = QuadraticToy.random_psd(n, 3, 2, seed).problem(torch.zeros(3))
    hessians = exact.sample_hessians(problem)
    enumerated = claim.measure(exact.expected_square_enumerated, hessians, lr, batch_size, replace)
    h, sigma = dense_h_sigma(problem)
    p = 1 / batch_size if replace else stabcheck.noise_factor(n, batch_size)
    step = torch.eye(3, dtype=torch.float64) - lr * h
    formula = step @ step + lr * lr * p * sigma
    error = float((enumerated - formula).abs().max() / formula.abs().max())
    claim.record(measured={"max relative deviation": Kind.RELATIVE(error),
                           "batches": Kind.COUNT(len(exact.batches(n, batch_size, replace)))},
                 expected={"p": p, "max relative deviation below": 1e-12}, seed=seed, dtype="float64")
    assert error <= 1e-12, f"E[(I−ηH_ξ)²] deviates from (I−ηH)² + η²pΣ by {error:.2e} (p = {p})"


# ---- (ii) d = 1: the second-moment recursion decides stability --------------------------------------
# e_T² is a product of T random factors, so its spread relative to its mean grows like (E A⁴/(E A²)²)^{T/2}:
# few steps keep the estimate's tail light. With T = 4 (m_T ≈ 0.43 at 0.95 η*, ≈ 2.1 at 1.05 η*) and 40 000
# runs the 99.9% CI half-width stays under a third of m_T's distance from 1 for every U(0.5, 1.5) draw
# of seeds 20..79 (computed from the exact fourth moment when these constants were chosen).
MC_STEPS = 4
MC_RUNS = 40_000


@pytest.fixture(scope="module", params=[0, 1], ids=lambda s: f"seed={s}")
def scalar_toy(request, base_seed):
    """1-D toy f_i = ½h_i x², n = 5, h_i ~ U(0.5, 1.5), and stabcheck's a and s of it."""
    seed = base_seed + 20 + request.param
    curvatures = 0.5 + torch.rand(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    toy = QuadraticToy.from_curvatures(curvatures)
    problem = toy.problem(torch.zeros(1))
    return seed, toy, problem, stabcheck.sharpness(problem).value, stabcheck.non_uniformity(problem).value


@pytest.mark.claim("C2")
@pytest.mark.parametrize("factor", [0.95, 1.05], ids=lambda f: f"lr={f}x")
@pytest.mark.parametrize("batch_size", [1, 2], ids=lambda b: f"B={b}")
def test_one_dimensional_bracket_decides_stability(claim, scalar_toy, batch_size, factor):
    """d = 1, η = factor · η* with η* = 2a/(a² + ps²), the root of (1 − ηa)² + η²ps² = 1.

    The bracket from stabcheck's a and s equals stabcheck's Theorem-1 value (1e-9: Lanczos in d = 1 is
    exact up to rounding) and the exact recursion factor ρ (1e-12); tr S_t = bracket^t exactly; and a
    Monte Carlo mean of e_T² over 40 000 SGD runs has a 99.9% CI on the side of 1 the bracket predicts
    and containing bracket^T.
    """
    seed, toy, problem, a, s = scalar_toy
    p = stabcheck.noise_factor(toy.n, batch_size)
    lr = factor * 2 * a / (a * a + p * s * s)
    bracket = (1 - lr * a) ** 2 + lr * lr * p * s * s
    t1 = stabcheck.theorem1(problem, lr=lr, batch_size=batch_size, tol=1e-10)
    hessians = exact.sample_hessians(problem)
    rho = exact.mean_square(hessians, lr, batch_size).value
    traces = exact.propagate_second_moment(hessians, lr, batch_size, torch.ones(1, 1), MC_STEPS)
    run = claim.measure(run_sgd, toy, [1.0], lr, batch_size, MC_STEPS, runs=MC_RUNS, seed=seed + 100 * batch_size)
    squares = run.final[:, 0] ** 2
    mean, half = float(squares.mean()), Z * float(squares.std()) / math.sqrt(MC_RUNS)
    claim.record(
        measured={"bracket (stabcheck a, s)": bracket, "theorem1 value": Kind.THEOREM1(t1.value), "exact rho": rho,
                  "exact m_T": float(traces[-1]), "MC m_T": mean, "MC CI low": mean - half, "MC CI high": mean + half},
        kinds=dict.fromkeys(["bracket (stabcheck a, s)", "exact rho", "exact m_T", "MC m_T", "MC CI low", "MC CI high"],
                            Kind.VALUE),
        expected={"bracket^T": bracket ** MC_STEPS, "stable": factor < 1, "a": a, "s": s, "p": p, "lr": lr},
        seed=seed, dtype="float64",
    )
    assert t1.value == pytest.approx(bracket, abs=1e-9), f"Theorem-1 value {t1.value} vs bracket {bracket}"
    assert rho == pytest.approx(bracket, rel=1e-12), f"exact ρ {rho} vs bracket {bracket}"
    torch.testing.assert_close(traces, bracket ** torch.arange(MC_STEPS + 1, dtype=torch.float64), rtol=1e-12, atol=0)
    assert (bracket < 1) is (factor < 1), f"bracket {bracket} on the wrong side of 1 at η = {factor} η*"
    assert abs(mean - bracket ** MC_STEPS) <= half, f"MC m_T = {mean} ± {half} vs exact {bracket ** MC_STEPS}"
    if factor < 1:
        assert mean + half < 1, f"MC second moment {mean} ± {half} is not below 1 though the bracket is {bracket}"
    else:
        assert mean - half > 1, f"MC second moment {mean} ± {half} is not above 1 though the bracket is {bracket}"


# ---- (iii) d > 1: Theorem 1 is sufficient, the exact criterion decides -----------------------------
RANDOM_CASES = 10
BOUNDED_STEPS = 300


def random_case(seed):
    """A random small interpolation problem: d ∈ {2, 3, 4}, n ∈ [3, 6], B ∈ [1, n − 1], rank-one H_i."""
    gen = torch.Generator().manual_seed(seed)
    d = int(torch.randint(2, 5, (1,), generator=gen))
    n = int(torch.randint(3, 7, (1,), generator=gen))
    batch_size = int(torch.randint(1, n, (1,), generator=gen))
    return QuadraticToy.rank_one(n, d, seed), batch_size


@pytest.mark.claim("C2")
@pytest.mark.parametrize("factor", [0.9, 1.2], ids=lambda f: f"lr={f}xT1-threshold")
@pytest.mark.parametrize("offset", range(RANDOM_CASES), ids=lambda k: f"seed={k}")
def test_exact_radius_never_exceeds_theorem1(claim, base_seed, offset, factor):
    """ρ ≤ stabcheck's Theorem-1 value (up to 1e-9 relative, rounding), and where that value is ≤ 1 the
    exact second moment tr S_t from S_0 = I never exceeds tr S_0 over 300 steps (E‖e_t‖² ≤ λ^t‖e_0‖²)."""
    seed = base_seed + 40 + offset
    toy, batch_size = random_case(seed)
    problem = toy.problem(torch.zeros(toy.dim))
    hessians = exact.sample_hessians(problem)
    lr = factor * exact.theorem1_threshold(hessians, batch_size)
    t1 = claim.measure(stabcheck.theorem1, problem, lr=lr, batch_size=batch_size, tol=1e-10)
    rho = exact.mean_square(hessians, lr, batch_size).value
    traces = exact.propagate_second_moment(hessians, lr, batch_size, torch.eye(toy.dim), BOUNDED_STEPS)
    growth = float(traces.max() / traces[0])
    claim.record(measured={"exact rho": Kind.VALUE(rho), "theorem1 value": Kind.THEOREM1(t1.value),
                           "max tr S_t / tr S_0": Kind.VALUE(growth)},
                 expected={"rho at most": t1.value, "bounded if theorem1 value <= 1": t1.value <= 1},
                 seed=seed, dtype="float64", note=f"n={toy.n}, d={toy.dim}, B={batch_size}, lr={lr:.4g}")
    assert rho <= t1.value * (1 + 1e-9), f"exact ρ = {rho} exceeds Theorem 1's {t1.value}"
    if t1.value <= 1:
        assert growth <= 1 + 1e-9, f"Theorem-1 value {t1.value} ≤ 1 but tr S_t grew by {growth}"


# Two rank-one samples in d = 2: f_1 = ½x_1², f_2 = ½(2(cos θ x_1 + sin θ x_2))², θ = 0.5; SGD with B = 1.
COUNTER_THETA = 0.5
COUNTER_STEPS = 60
COUNTER_RUNS = 20_000


@pytest.mark.claim("C2")
def test_theorem1_unstable_but_exactly_stable(claim, base_seed):
    """η halfway (geometrically) between Theorem 1's threshold and the exact one: stabcheck's Theorem-1
    value exceeds 1 ("maybe unstable") while ρ < 1. Started on Theorem 1's top eigenvector, E‖e_1‖²
    really grows by that value, yet the exact second moment then decays as ρ^t, and a 99.9% Monte Carlo
    CI of E‖e_60‖² over 20 000 SGD runs lies below 1."""
    seed = base_seed + 60
    factors = torch.tensor([[[1.0], [0.0]],
                            [[2 * math.cos(COUNTER_THETA)], [2 * math.sin(COUNTER_THETA)]]], dtype=torch.float64)
    toy = QuadraticToy(factors)
    problem = toy.problem(torch.zeros(2))
    hessians = exact.sample_hessians(problem)
    exact_threshold, t1_threshold = exact.mean_square_threshold(hessians, 1), exact.theorem1_threshold(hessians, 1)
    lr = math.sqrt(exact_threshold * t1_threshold)
    t1 = claim.measure(stabcheck.theorem1, problem, lr=lr, batch_size=1, tol=1e-10)
    rho = exact.mean_square(hessians, lr, 1).value
    v = t1.eigen.vector.to(torch.float64)
    traces = exact.propagate_second_moment(hessians, lr, 1, torch.outer(v, v), COUNTER_STEPS)
    run = run_sgd(toy, v, lr, 1, COUNTER_STEPS, runs=COUNTER_RUNS, seed=seed)
    squares = run.final.pow(2).sum(dim=1)
    mean, half = float(squares.mean()), Z * float(squares.std()) / math.sqrt(COUNTER_RUNS)
    claim.record(
        measured={"theorem1 value": Kind.THEOREM1(t1.value), "theorem1 stable": t1.stable, "exact rho": rho,
                  "E norm(e_1)^2 (exact)": float(traces[1]), "E norm(e_T)^2 (exact)": float(traces[-1]),
                  "E norm(e_T)^2 (MC)": mean, "MC CI low": mean - half, "MC CI high": mean + half},
        kinds=dict.fromkeys(["exact rho", "E norm(e_1)^2 (exact)", "E norm(e_T)^2 (exact)", "E norm(e_T)^2 (MC)",
                             "MC CI low", "MC CI high"], Kind.VALUE),
        expected={"theorem1 value above": 1, "exact rho below": 1, "T1 threshold lr": t1_threshold,
                  "exact threshold lr": exact_threshold, "lr": lr},
        seed=seed, dtype="float64",
    )
    assert not t1.stable, f"Theorem 1 calls the case stable (value {t1.value})"
    assert rho < 1, f"the exact criterion calls it unstable (ρ = {rho})"
    assert float(traces[1]) == pytest.approx(t1.value, rel=1e-9), "E‖e_1‖² from Theorem 1's eigenvector ≠ its value"
    assert float(traces[-1]) < rho ** (COUNTER_STEPS - 1), f"tr S_T = {float(traces[-1])} did not decay like ρ^t"
    assert mean + half < 1, f"Monte Carlo E‖e_T‖² = {mean} ± {half} is not below 1"


# ---- (iv) trained nets: the sample-space form at each minimum's own (η, B) ----------------------------
TRAINED_CLAIMS = ("C6", "C3", "C5", "C9")


def sgd_minima(suite) -> list:
    """Every plain SGD or GD minimum (no momentum) of the trained claims' grids, each once."""
    seen = []
    for c in suite.configs(*TRAINED_CLAIMS):
        if not c.momentum and c not in seen:
            seen.append(c)
    return seen


@pytest.mark.claim("C2")
@pytest.mark.cases(trained_config=sgd_minima)
def test_theorem1_in_sample_space_at_trained_minima(claim, suite, measured_minimum, trained_config):
    """At a trained over-parameterised minimum the full-space T has d − nK eigenvalues at 1, so the full
    form cannot certify; the sample-space form decides: μ = η·λmax((1 − p)(c′/n)Γ + p·c′D) ≤ 2. Recorded
    at the minimum's own (η, B): μ, its margin, the verdict and the residual term H − G it leaves out.
    μ(p) ≥ μ(0) = η·λmax(G) ≥ η(a − ‖H − G‖), so μ must not fall below η·a by more than the measured
    residual size (times 1.01 for the solvers' tolerance)."""
    m = measured_minimum(trained_config)
    require_minimum(m)
    t = m.theorem1_sample
    if t is None:
        pytest.skip(f"{trained_config.setup.loss} loss or d ≤ nK: the sample-space form does not apply")
    c = trained_config
    floor = c.lr * (m.a.value - t.residual.size)
    claim.record(measured={**theorem1_entries(m.theorem1, t), "a": m.a.value, "eta a": c.lr * m.a.value},
                 kinds={**kinds.MINIMUM, "eta a": Kind.THEOREM1},
                 expected={"mu at least": floor, "certified if mu_upper <= 2": t.mu_upper <= 2,
                           "neutral dimension at least": t.neutral_dim},
                 seed=c.seed, dtype=m.a.dtype, minimum=m.point())
    assert t.converged, f"the μ solve did not converge (residual {t.eigen.residual:.2e})"
    assert t.mu >= floor / 1.01, f"μ = {t.mu} below η(a − ‖H − G‖) = {floor}"
    assert (t.verdict == "certified stable") is (t.mu_upper <= 2)
