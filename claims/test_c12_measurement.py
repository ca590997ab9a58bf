"""C12 – measurement (PAPER.md §3, §4, Appendix C).

Power iteration for λmax(H) and λmax(Σ) converges within tens of iterations; the per-sample
non-uniformity is the expensive part.

Sections: "toy problems" (here: the problems of C1, C4 and C11, dense float64 ground truth) and
"trained nets" (the FNN minima of the batch grid: power iteration and Lanczos side by side).
"""
import pytest
import torch

import stabcheck
from claims.measured import cpu_threads, require_minimum
from claims.suite import case_id
from stabcheck.curvature.exact import sample_hessians
from stabcheck.experiments.toys import AppendixBToy, OneDimensionalExample, QuadraticToy

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
    h = hessians.mean(0)
    centred = hessians - h
    return h, (centred @ centred).mean(0)


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
        measured={"iterations": [r.iterations for r in results], "converged": [r.converged for r in results],
                  "max relative error": max(errors), "eigenvalue": results[0].eigenvalue,
                  "seconds per product": sum(r.wall_time for r in results) / sum(r.matvecs for r in results)},
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


@pytest.mark.slow
@pytest.mark.claim("C12")
@pytest.mark.cases(trained_config=trained_configs)
def test_power_iteration_converges_on_trained_minima(claim, suite, measured_minimum, trained_minimum, device,
                                                     base_seed, trained_config):
    """On a trained minimum power iteration meets the paper's rule (relative change ≤ 1e-3) within 50
    iterations for H and for Σ, and agrees with Lanczos to 1e-2: the power iterate's Rayleigh-quotient
    error is at most about 9× its last relative change while the per-step contraction stays ≤ 0.9."""
    require_minimum(measured_minimum(trained_config))
    problem = trained_minimum(trained_config).problem(device=device)
    with cpu_threads(device):
        runs = claim.measure(both_solvers, problem, base_seed)
    gaps = {q: abs(runs[q, "power"].eigenvalue - runs[q, "lanczos"].eigenvalue) / runs[q, "lanczos"].eigenvalue
            for q in ("H", "Sigma")}
    claim.record(
        measured={f"{q} {m} iterations": r.iterations for (q, m), r in runs.items()}
        | {f"{q} {m} converged": r.converged for (q, m), r in runs.items()}
        | {"lambda_max(H)": runs["H", "lanczos"].eigenvalue, "lambda_max(Sigma)": runs["Sigma", "lanczos"].eigenvalue,
           "power vs lanczos, H": gaps["H"], "power vs lanczos, Sigma": gaps["Sigma"],
           "seconds H": runs["H", "power"].wall_time, "seconds Sigma": runs["Sigma", "power"].wall_time},
        expected={"iterations at most": MAXITER, "power vs lanczos at most": 10 * TOL},
        seed=base_seed, dtype=runs["H", "power"].dtype, note=f"Σ engine {runs['Sigma', 'power'].engine}",
        grids=suite.describe())
    for (quantity, method), r in runs.items():
        assert r.converged and r.iterations <= MAXITER, (
            f"{case_id(trained_config)}: {method} on {quantity} not converged after {r.iterations} iterations "
            f"(residual {r.residual:.2e})")
    for quantity, gap in gaps.items():
        assert gap <= 10 * TOL, f"{case_id(trained_config)}: power and Lanczos differ by {gap:.2e} on {quantity}"
