"""Both eigensolvers on random symmetric matrices with known spectra."""
import math

import pytest
import torch

from stabcheck import lanczos, power_iteration
from stabcheck.curvature.eigen import top_eigenpair


def known_spectrum(evals, seed=0):
    d = len(evals)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(evals, dtype=torch.float64)) @ q.T


def geometric(d, top, ratio):
    return [top * ratio**k for k in range(d)]


@pytest.mark.parametrize("solver", [lanczos, power_iteration], ids=["lanczos", "power"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psd_spectrum_top_eigenvalue(solver, seed):
    evals = geometric(60, 7.5, 0.8)
    A = known_spectrum(evals, seed)
    res = solver(lambda v: A @ v, 60, tol=1e-10, maxiter=500, seed=seed, dtype=torch.float64)
    assert res.converged, res
    assert res.value == pytest.approx(7.5, rel=1e-6)
    assert abs(float(res.vector @ (A @ res.vector)) - res.value) < 1e-6 * 7.5
    assert res.residual == pytest.approx(float((A @ res.vector - res.value * res.vector).norm()) / 7.5, rel=1e-3, abs=1e-12)


def test_lanczos_finds_largest_algebraic_power_largest_magnitude():
    """Pitfall 4: with a dominant negative eigenvalue, power iteration reports it; Lanczos does not."""
    evals = [-10.0] + geometric(29, 3.0, 0.7)
    A = known_spectrum(evals, 3)
    lz = lanczos(lambda v: A @ v, 30, tol=1e-10, dtype=torch.float64)
    pw = power_iteration(lambda v: A @ v, 30, tol=1e-10, maxiter=1000, dtype=torch.float64)
    assert lz.value == pytest.approx(3.0, rel=1e-8)
    assert pw.value == pytest.approx(-10.0, rel=1e-6)


def test_non_convergence_is_reported_not_hidden():
    # Eigenvalues 1 and 0.999: power iteration needs thousands of steps to separate them.
    evals = [1.0, 0.999] + geometric(38, 0.5, 0.9)
    A = known_spectrum(evals, 4)
    res = power_iteration(lambda v: A @ v, 40, tol=1e-12, maxiter=5, dtype=torch.float64)
    assert not res.converged
    assert res.iterations == 5 and res.matvecs == 5 and len(res.history) == 5
    assert res.residual > 1e-12
    # value, vector and residual describe one pair, also when the solver stops unconverged
    v = res.vector
    assert res.value == pytest.approx(float(v @ (A @ v)), rel=1e-12)
    assert res.residual == pytest.approx(float((A @ v - res.value * v).norm()) / abs(res.value), rel=1e-9)
    lz = lanczos(lambda v: A @ v, 40, tol=1e-14, maxiter=3, dtype=torch.float64)
    assert not lz.converged and lz.iterations == 3 and lz.residual > 1e-14


def test_same_seed_same_result_and_metadata():
    A = known_spectrum(geometric(20, 2.0, 0.6), 5)
    r1 = lanczos(lambda v: A @ v, 20, seed=11, dtype=torch.float64)
    r2 = lanczos(lambda v: A @ v, 20, seed=11, dtype=torch.float64)
    assert r1.value == r2.value and r1.history == r2.history
    d = r1.as_dict()
    assert d["seed"] == 11 and d["dtype"] == "float64" and d["device"] == "cpu" and d["method"] == "lanczos"
    assert "vector" not in d and d["wall_time"] >= 0


def test_zero_operator():
    res = power_iteration(lambda v: 0 * v, 5, dtype=torch.float64)
    assert res.value == 0.0 and res.converged
    lz = lanczos(lambda v: 0 * v, 5, dtype=torch.float64)
    assert lz.value == 0.0 and lz.converged


def test_float32_lanczos_reaches_its_tolerance():
    A = known_spectrum(geometric(200, 40.0, 0.9), 6).float()
    res = lanczos(lambda v: A @ v, 200, tol=1e-4, dtype=torch.float32)
    assert res.converged and res.value == pytest.approx(40.0, rel=1e-4)
    assert res.dtype == "float32"


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "arnoldi"}, "unknown eigensolver"),
    ({"tol": 0.0}, "tol must be positive"),
    ({"maxiter": 0}, "maxiter must be at least 1"),
])
def test_bad_solver_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        top_eigenpair(lambda v: v, 3, **{"method": "lanczos", **kwargs})


def test_lanczos_matvec_count_includes_certification():
    A = known_spectrum(geometric(30, 1.0, 0.5), 7)
    calls = []
    res = lanczos(lambda v: calls.append(1) or A @ v, 30, tol=1e-8, dtype=torch.float64)
    assert res.matvecs == len(calls) == res.iterations + 1
    assert math.isfinite(res.residual)


def test_lanczos_value_is_the_rayleigh_quotient_of_its_vector():
    """Products with rounding noise (as in float32) make the recurrence's Ritz value drift from vᵀAv;
    the value reported is vᵀAv of the certification product, which the residual describes."""
    A = known_spectrum(geometric(60, 5.0, 0.8), 7)
    gen = torch.Generator().manual_seed(0)
    last = {}

    def noisy(v):
        out = A @ v + 1e-5 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        last.update(v=v, out=out)
        return out

    res = lanczos(noisy, 60, tol=1e-3, dtype=torch.float64)
    v, out = last["v"], last["out"]
    assert torch.equal(v, res.vector) and res.converged
    assert res.value == float(v @ out) != res.history[-1]
    assert res.residual * 5.0 == pytest.approx(float((out - res.value * v).norm()), rel=1e-4)  # scale ≈ 5


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_atol_converges_on_an_operator_of_pure_rounding_noise(method):
    # Σ = 0 computed as a difference of equal terms: each product is fresh rounding noise of size 1e-16,
    # consistent with no matrix, so no relative accuracy exists; the absolute floor is met.
    gen = torch.Generator().manual_seed(0)

    def noise(v):
        return torch.randn(v.shape, generator=gen, dtype=v.dtype) * 1e-16 * v.norm()

    solve = lanczos if method == "lanczos" else power_iteration
    assert not solve(noise, 30, tol=1e-4, dtype=torch.float64).converged
    r = solve(noise, 30, tol=1e-4, dtype=torch.float64, atol=1e-13)
    assert r.converged and abs(r.value) <= 1e-13


def test_atol_below_the_spectrum_keeps_the_relative_tolerance():
    A = torch.diag(torch.linspace(1e-6, 1e-3, 40, dtype=torch.float64))
    r = lanczos(lambda v: A @ v, 40, tol=1e-8, maxiter=40, dtype=torch.float64, atol=1e-16)
    assert r.converged and r.value == pytest.approx(1e-3, rel=1e-8)
