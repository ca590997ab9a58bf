"""C12 – measurement (PAPER.md §3, §4, Appendix C).

Power iteration for λmax(H) and λmax(Σ) converges within tens of iterations; the per-sample
non-uniformity is the expensive part.

Sections: "toy problems" (here: the problems of C1, C4 and C11, dense float64 ground truth), "trained
nets" (the FNN minima of the batch grid: power iteration and Lanczos side by side) and "independent
cross-check" (one minimum per model family: the a, λmax(Σ) and Theorem-1 value every trained-net claim
uses against recomputations that share nothing with stabcheck's products, engines and solver:
``claims/crosscheck.py``).
"""
import pytest
import torch

import stabcheck
from claims import crosscheck
from claims.measured import require_minimum
from claims.suite import case_id
from stabcheck.curvature.exact import dense_sigma, sample_hessians
from stabcheck.curvature.operators import HessianOperator, SigmaOperator
from stabcheck.curvature.threads import measurement_threads
from stabcheck.experiments.toys import AppendixBToy, OneDimensionalExample, QuadraticToy
from stabcheck.reporting.rows import Kind
from claims.kinds import CROSS_CHECKED

TOL = 1e-3        # the paper's relative tolerance (PAPER.md §3)
MAXITER = 50      # the paper's iteration cap
START_SEEDS = 3   # start vectors v0 ~ N(0, I) per case

# ---- toy problems -----------------------------------------------------------------------------------
TOY_PROBLEMS = {
    "psd-n=8-d=12": lambda seed: QuadraticToy.random_psd(8, 12, 2, seed).problem(torch.zeros(12)),
    "rank-one-n=10-d=30": lambda seed: QuadraticToy.rank_one(10, 30, seed).problem(torch.zeros(30)),
    "c4-x=1": lambda seed: OneDimensionalExample().problem([1.0]),
    "appendix-b-a=0.16": lambda seed: AppendixBToy().problem([0.0, 0.16, 0.16]),
}
QUANTITIES = {  # name: (stabcheck measurement, its eigenvalue's dense ground truth from (H, Σ))
    "H": (stabcheck.sharpness, lambda h, sigma: h),
    "Sigma": (stabcheck.non_uniformity, lambda h, sigma: sigma),
}


def dense_truth(problem):
    hessians = sample_hessians(problem)
    return hessians.mean(0), dense_sigma(hessians)


def power_runs(measure, problem, seed):
    return [measure(problem, method="power", tol=TOL, maxiter=MAXITER, seed=seed + k) for k in range(START_SEEDS)]


@pytest.mark.claim("C12")
@pytest.mark.parametrize("quantity", QUANTITIES)
@pytest.mark.parametrize("name", TOY_PROBLEMS)
def test_power_iteration_converges_on_toys(claim, base_seed, name, quantity):
    """From 3 random starts, power iteration meets the paper's stopping rule (relative change ≤ 1e-3)
    within 50 iterations, and its eigenvalue is within 1e-2 of the dense float64 λmax: the Rayleigh
    quotient's error after a relative change Δ is about Δ·q/(1 − q) for a per-step contraction q, at most
    9Δ while q ≤ 0.9."""
    seed = base_seed + 120
    problem = TOY_PROBLEMS[name](seed)
    measure, pick = QUANTITIES[quantity]
    results = claim.measure(power_runs, measure, problem, seed)
    truth = float(torch.linalg.eigvalsh(pick(*dense_truth(problem))).max())
    errors = [abs(r.eigenvalue - truth) / truth for r in results]
    claim.record(
        measured={"iterations": Kind.ITERATIONS([r.iterations for r in results]),
                  "converged": [r.converged for r in results], "max relative error": Kind.RELATIVE(max(errors)),
                  "eigenvalue": Kind.VALUE(results[0].eigenvalue),
                  "seconds per product": Kind.SECONDS(sum(r.wall_time for r in results) /
                                                      sum(r.matvecs for r in results))},
        expected={"lambda_max (dense)": truth, "iterations at most": MAXITER, "relative error at most": 10 * TOL},
        seed=seed, dtype="float64", note=f"engine {results[0].engine}" if quantity == "Sigma" else "",
    )
    for r, error in zip(results, errors):
        assert r.converged and r.iterations <= MAXITER, f"seed {r.seed}: not converged in {r.iterations} iterations"
        assert error <= 10 * TOL, f"seed {r.seed}: λ = {r.eigenvalue} vs dense {truth} (relative error {error:.2e})"


# ---- trained nets -----------------------------------------------------------------------------------
# The batch grid's minima of the first seed (GD and SGD at η = 0.1 on the profile's FNN): power
# iteration (the paper's solver) and Lanczos (stabcheck's default) on the trained H and Σ.
def trained_configs(suite) -> list:
    configs = suite.configs("C6")
    first = min(c.seed for c in configs)
    return [c for c in configs if c.seed == first]


def both_solvers(problem, seed):
    out = {}
    for quantity, measure in (("H", stabcheck.sharpness), ("Sigma", stabcheck.non_uniformity)):
        for method in ("power", "lanczos"):
            out[quantity, method] = measure(problem, method=method, tol=TOL, maxiter=MAXITER, seed=seed)
    return out


def power_error_estimate(history) -> float:
    """Relative distance of power iteration's last Rayleigh quotient from its limit, Δ·c/(1 − c), with Δ the
    last change and c the ratio of the last two changes (geometric convergence); inf when c ≥ 1."""
    if len(history) < 3:
        return 0.0
    last, before = abs(history[-1] - history[-2]), abs(history[-2] - history[-3])
    c = last / before if before > 0 else 0.0
    return float("inf") if c >= 1 else last * c / (1 - c) / abs(history[-1])


@pytest.mark.slow
@pytest.mark.claim("C12")
@pytest.mark.cases(trained_config=trained_configs)
def test_power_iteration_converges_on_trained_minima(claim, suite, measured_minimum, trained_minimum, device,
                                                     base_seed, trained_config):
    """On a trained minimum power iteration meets the paper's rule (relative change ≤ 1e-3) within 50
    iterations for H and for Σ (the claim), and its value agrees with Lanczos within its own a-posteriori
    error estimate: for geometric convergence with contraction c (the ratio of its last two changes) the
    Rayleigh quotient is within Δ·c/(1 − c) of its limit, Δ its last change; the bound asserted is the larger
    of 1e-2 and twice that estimate. Where c is close to 1 the rule stops early (measured: Σ of the small GD
    minimum, top eigenvalues 537 and 505: it stopped 5.7% low after 11 iterations) — the paper's stopping rule
    is not a convergence certificate: such a case is reported as an expected failure (xfail) naming the
    quantity, the measured and the predicted error; the Rayleigh bound λ_power ≤ λ_max is asserted always."""
    require_minimum(measured_minimum(trained_config))
    problem = trained_minimum(trained_config).problem(device=device)
    with measurement_threads(device):
        runs = claim.measure(both_solvers, problem, base_seed)
    gaps = {q: abs(runs[q, "power"].eigenvalue - runs[q, "lanczos"].eigenvalue) / runs[q, "lanczos"].eigenvalue
            for q in ("H", "Sigma")}
    predicted = {q: power_error_estimate(runs[q, "power"].history) for q in ("H", "Sigma")}
    claim.record(
        measured={f"{q} {m} iterations": Kind.ITERATIONS(r.iterations) for (q, m), r in runs.items()}
        | {f"{q} {m} converged": r.converged for (q, m), r in runs.items()}
        | {f"{q} power predicted error": Kind.RELATIVE(predicted[q]) for q in ("H", "Sigma")}
        | {"lambda_max(H)": Kind.SHARPNESS(runs["H", "lanczos"].eigenvalue),
           "lambda_max(Sigma)": Kind.NONUNIFORMITY(runs["Sigma", "lanczos"].eigenvalue),
           "power vs lanczos, H": Kind.RELATIVE(gaps["H"]), "power vs lanczos, Sigma": Kind.RELATIVE(gaps["Sigma"]),
           "seconds H": Kind.SECONDS(runs["H", "power"].wall_time),
           "seconds Sigma": Kind.SECONDS(runs["Sigma", "power"].wall_time)},
        expected={"iterations at most": MAXITER, "power vs lanczos at most": 10 * TOL},
        seed=base_seed, dtype=runs["H", "power"].dtype, note=f"Σ engine {runs['Sigma', 'power'].engine}",
        grids=suite.describe())
    for (quantity, method), r in runs.items():
        assert r.converged and r.iterations <= MAXITER, (
            f"{case_id(trained_config)}: {method} on {quantity} not converged after {r.iterations} iterations "
            f"(residual {r.residual:.2e})")
    early = []
    for quantity, gap in gaps.items():
        allowed = max(10 * TOL, 2 * predicted[quantity])
        power, lanczos = runs[quantity, "power"], runs[quantity, "lanczos"]
        assert power.eigenvalue <= lanczos.eigenvalue * (1 + TOL), (  # a Rayleigh quotient never exceeds λ_max
            f"{case_id(trained_config)}: power's {power.eigenvalue:.6g} exceeds Lanczos' {lanczos.eigenvalue:.6g}")
        if gap > allowed:
            early.append(f"{quantity}: {gap:.1%} low after {power.iterations} iterations (own estimate "
                         f"{predicted[quantity]:.1e})")
    if early:
        # A finding against the paper's method, not a library error: its rule stopped early, undetected.
        pytest.xfail("the paper's power iteration stopped early on close top eigenvalues: " + "; ".join(early))


# ---- independent cross-check of the measurements every trained-net claim uses --------------------------
TRAINED_CLAIMS = ("C6", "C3", "C13", "C5", "C14", "C9")


def family(config) -> str:
    """Model and data: one landscape, one Σ engine."""
    return f"{config.setup.model}-{config.setup.dataset}"


def cross_check_configs(suite) -> dict:
    """One trained minimum per model family of this run: its first SGD minimum (μ = 0) in the order of
    the claims' grids (C6's smallest B first), or its first minimum when it has no SGD one."""
    chosen: dict = {}
    for c in suite.configs(*TRAINED_CLAIMS):
        current = chosen.get(family(c))
        if current is None or (current.is_gd or current.momentum) and not (c.is_gd or c.momentum):
            chosen[family(c)] = c
    return {f"{name}-{case_id(c)}": c for name, c in chosen.items()}


def converged_theorem1(suite, m, device, seed):
    """The minimum's full-form Theorem-1 solve, or where it stopped unconverged at the profile's cap or the
    profile did not solve it, the same solve with the C12 plan's ``theorem1 maxiter`` (a cluster of
    eigenvalues at 1 needs more steps)."""
    if m.theorem1 is not None and (m.theorem1.converged or theorem1_cap(suite) is None):
        return m.theorem1
    how, c = suite.profile.measurement, m.config
    return stabcheck.theorem1(m.minimum.problem(device=device), lr=c.lr, batch_size=c.batch_size, tol=how.tol,
                              maxiter=theorem1_cap(suite) or how.maxiter, seed=seed, sharpness=m.a, form="full")


def theorem1_cap(suite) -> int | None:
    cap = suite.plan("C12").thresholds.get("theorem1 maxiter")
    return None if cap is None else int(cap.value)


def cross_check(m, t1, curv, device, seed):
    """Every independent recomputation of a, λmax(Σ) and the Theorem-1 value ``t1`` (claims/crosscheck.py),
    and the gap between stabcheck's H u and the full-batch double back-propagation at a's vector."""
    at_a, at_s, at_t = (crosscheck.quotients(curv, r.vector) for r in (m.a, m.s, t1))
    u = crosscheck.unit(m.a.vector, curv)
    h_u = curv.hessian_product(u)
    problem = m.minimum.problem(dtype=torch.float64, device=device)
    stabcheck_h = HessianOperator(problem)
    arpack_h = crosscheck.second_solver(stabcheck_h.matvec, problem.dim, seed)
    arpack_s = crosscheck.second_solver(SigmaOperator(problem, "loop").matvec, problem.dim, seed)
    c = m.config
    vectors = {"H u: stabcheck's product (float64) vs full-batch double back-propagation":
               crosscheck.vector_gap(stabcheck_h.matvec(u.to(problem.dtype)), h_u)}
    return {"a": (m.a.value, {"uHu, per-sample products": at_a.h,
                              "uHu, full-batch double back-propagation": float(u @ h_u),
                              "ARPACK on H (float64)": arpack_h.value}),
            "lambda_max(Sigma)": (m.s.eigenvalue, {"uSu, per-sample products": at_s.sigma,
                                                   "ARPACK on Sigma, loop engine (float64)": arpack_s.value}),
            "theorem1 solve": (t1.eigen.value + t1.shift, {"uTu, per-sample products": at_t.theorem1(c.lr, t1.p)}),
            "theorem1 at a's vector": (t1.rayleigh_top, {"uTu, per-sample products": at_a.theorem1(c.lr, t1.p)}),
            }, vectors, {"ARPACK H products": arpack_h.products, "ARPACK Sigma products": arpack_s.products,
                         "seconds ARPACK H": arpack_h.seconds, "seconds ARPACK Sigma": arpack_s.seconds,
                         "theorem1 steps": t1.eigen.iterations, "H engine": stabcheck_h.hvp}


def cost_kind(name: str, value):
    """A cross-check's cost entry with its kind: seconds, solver steps, products; strings are verdicts."""
    if isinstance(value, str):
        return value
    kind = Kind.SECONDS if name.startswith("seconds") else Kind.ITERATIONS if name.endswith("steps") else Kind.PRODUCTS
    return kind(value)


@pytest.mark.slow
@pytest.mark.claim("C12")
@pytest.mark.cases(cross_config=cross_check_configs)
def test_measurements_agree_with_independent_recomputations(claim, suite, measured_minimum, device, base_seed,
                                                            cross_config):
    """What every trained-net claim measures is right, not only self-consistent: on one trained minimum per
    model family, the reported a, λmax(Σ) (from the Σ engine ``auto`` chose) and Theorem-1 value equal (to
    1e-4 relative) uᵀHu, uᵀΣu and uᵀTu at their own vectors from per-sample products written in the
    claims (torch.func, float64), uᵀHu and the whole vector H u from a full-batch double back-propagation
    (torch.autograd, float64: exact at the point, where a finite difference crosses ReLU kinks), and λmax
    by a second solver (ARPACK, float64) on H and on Σ with the ``loop`` engine; 1e-4 is 50× the largest
    disagreement measured on the small FNN (2e-6) and 1000× below the 10% error a claim must catch. A
    Theorem-1 solve that stopped unconverged at the profile's cap is solved again with the C12 plan's
    ``theorem1 maxiter`` (paper: 300) before it is compared, and must converge."""
    limit = suite.threshold("C12", "cross-check")
    m = measured_minimum(cross_config)
    require_minimum(m)
    curv = crosscheck.IndependentCurvature(m.minimum, device)
    with measurement_threads(device):
        t1 = converged_theorem1(suite, m, device, base_seed)
        checks, vectors, cost = claim.measure(cross_check, m, t1, curv, device, base_seed)
    gaps = {f"{quantity} vs {how}": crosscheck.relative_gap(reported, other)
            for quantity, (reported, others) in checks.items() for how, other in others.items()} | vectors
    claim.record(
        measured={**{f"reported {q}": CROSS_CHECKED[q](reported) for q, (reported, _) in checks.items()},
                  **{f"{q}: {how}": CROSS_CHECKED[q](other) for q, (_, others) in checks.items()
                     for how, other in others.items()},
                  **{f"gap {k}": Kind.RELATIVE(v) for k, v in gaps.items()}, "max gap": Kind.RELATIVE(max(gaps.values())),
                  **{k: cost_kind(k, v) for k, v in cost.items()},
                  "sigma engine": m.s.engine, "theorem1 verdict": t1.verdict, "theorem1 converged": t1.converged},
        expected={"relative gap at most": limit, "theorem1 steps at most (retry)": theorem1_cap(suite)},
        seed=base_seed, dtype="float64", minimum=m.point(), grids=suite.describe(),
        note=f"reported: Lanczos, {m.a.dtype}, Σ engine {m.s.engine}")
    assert t1.converged, f"{case_id(cross_config)}: the Theorem-1 solve did not converge in {t1.eigen.iterations} steps"
    wrong = {k: f"{v:.2e}" for k, v in gaps.items() if not v <= limit}
    assert not wrong, (f"{case_id(cross_config)} (Σ engine {m.s.engine}): the reported measurements differ from "
                       f"their independent recomputations by more than {limit:g} relative: {wrong}; "
                       + "; ".join(f"{q}: reported {r:.6g} vs " + ", ".join(f"{h} {o:.6g}" for h, o in others.items())
                                   for q, (r, others) in checks.items()))
