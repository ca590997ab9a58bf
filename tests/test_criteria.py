"""The criteria's result types: immutable, one meaning per value, honest verdicts and product counts."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import stabcheck
from stabcheck.curvature.results import CERTIFIED_STABLE, NOT_CERTIFIED, UNKNOWN, VERDICTS
from stabcheck.curvature.exact import theorem1_threshold
from stabcheck.curvature.operators import HessianOperator, SigmaOperator, Theorem1Operator
from stabcheck.experiments.toys import QuadraticToy

from .tiny import MODELS, dense_curvature, dense_sigma, make_problem

TOL = 1e-10


@pytest.fixture(scope="module")
def mlp():
    """A tiny float64 MLP and its dense (H_i, H, Σ)."""
    problem = make_problem("mlp-tanh", "mse")
    return problem, *dense_curvature(problem)


@pytest.fixture(scope="module")
def toy():
    """A PSD quadratic toy (every H_i PSD, so T's spectrum is ≥ 0) at its minimum x* = 0."""
    toy = QuadraticToy.random_psd(8, 12, 2, seed=3)
    return toy.problem(torch.zeros(12)), toy.hessians


def dense_theorem1(hessians, lr, batch_size):
    """λ_max{(I − ηH)² + η²pΣ} from dense float64 per-sample Hessians."""
    h = hessians.mean(0)
    a = torch.eye(h.shape[0], dtype=h.dtype) - lr * h
    p = stabcheck.noise_factor(hessians.shape[0], batch_size)
    return float(torch.linalg.eigvalsh(a @ a + lr * lr * p * dense_sigma(hessians))[-1])


def test_results_are_immutable(mlp):
    problem = mlp[0]
    a = stabcheck.sharpness(problem, tol=1e-6)
    s = stabcheck.non_uniformity(problem, tol=1e-6)
    t = stabcheck.theorem1(problem, 0.1, 2, form="full", tol=1e-6, sharpness=a)
    for result, name in ((a.eigen, "value"), (a, "eigen"), (s, "engine"), (t, "lr"), (t, "rayleigh_top")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(result, name, 0.0)
    with pytest.raises(AttributeError):
        a.value = 0.0  # a read-only property
    with pytest.raises(TypeError):
        t.products["hessian"] = 0


def test_values_mean_one_thing(mlp):
    problem, _, h, sigma = mlp
    a_true = float(torch.linalg.eigvalsh(h)[-1])
    s2_true = float(torch.linalg.eigvalsh(sigma)[-1])
    a = stabcheck.sharpness(problem, tol=TOL, maxiter=problem.dim)
    s = stabcheck.non_uniformity(problem, tol=TOL, maxiter=problem.dim)
    assert a.value == a.eigenvalue == a.eigen.value == pytest.approx(a_true, rel=1e-8)
    assert s.eigenvalue == s.eigen.value == pytest.approx(s2_true, rel=1e-8)
    assert s.value == pytest.approx(math.sqrt(s2_true), rel=1e-8)
    assert s.engine in stabcheck.SIGMA_ENGINES
    # The delegated provenance is the solver's.
    for r in (a, s):
        assert (r.converged, r.residual, r.iterations, r.matvecs, r.dtype, r.device, r.seed, r.tol, r.method) == (
            r.eigen.converged, r.eigen.residual, r.eigen.iterations, r.eigen.matvecs, "float64", "cpu", 0, TOL,
            "lanczos")
        assert r.vector is r.eigen.vector and r.wall_time == r.eigen.wall_time


def test_as_dict_is_json_ready(mlp):
    problem = mlp[0]
    a = stabcheck.sharpness(problem, tol=1e-6)
    s = stabcheck.non_uniformity(problem, tol=1e-6)
    t = stabcheck.theorem1(problem, 0.1, 2, form="full", tol=1e-6, sharpness=a)
    for result in (a.eigen, a, s, t):
        d = json.loads(json.dumps(result.as_dict()))
        assert d["value"] == result.value and "vector" not in d
    assert s.as_dict()["eigenvalue"] == s.eigenvalue and s.as_dict()["engine"] == s.engine
    assert t.as_dict()["verdict"] == t.verdict and t.as_dict()["eigen"]["value"] == t.eigen.value


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_theorem1_with_given_sharpness_equals_without_and_saves_its_products(mlp, method):
    problem, his, _, _ = mlp
    lr, batch = 0.3, 2
    a = stabcheck.sharpness(problem, tol=1e-8, maxiter=problem.dim)
    given = stabcheck.theorem1(problem, lr, batch, method=method, form="full", tol=1e-8, maxiter=problem.dim, sharpness=a)
    alone = stabcheck.theorem1(problem, lr, batch, method=method, form="full", tol=1e-8, maxiter=problem.dim)
    assert given.value == pytest.approx(alone.value, rel=1e-12)
    assert given.rayleigh_top == pytest.approx(alone.rayleigh_top, rel=1e-12)
    assert given.sharpness == alone.sharpness == a.value
    assert given.verdict == alone.verdict
    assert alone.products["hessian"] - given.products["hessian"] == a.matvecs > 0
    assert alone.products["sigma"] == given.products["sigma"]
    if method == "lanczos":  # power iteration runs on T, whose eigenvalue-1 cluster it cannot resolve
        assert given.converged and given.value == pytest.approx(dense_theorem1(his, lr, batch), rel=1e-6)


def test_given_sharpness_of_another_problem_is_refused(mlp, toy):
    with pytest.raises(ValueError, match="measured on another problem"):
        stabcheck.theorem1(mlp[0], 0.1, 2, sharpness=stabcheck.sharpness(toy[0]))
    with pytest.raises(TypeError, match="SharpnessResult"):
        stabcheck.theorem1(mlp[0], 0.1, 2, sharpness=stabcheck.sharpness(mlp[0]).eigen)


def test_verdict_certified_stable(toy):
    problem, hessians = toy
    lr = 0.5 * theorem1_threshold(hessians, 1)
    t = stabcheck.theorem1(problem, lr, 1, form="full", tol=TOL)
    assert t.value == pytest.approx(dense_theorem1(hessians, lr, 1), rel=1e-8)
    assert (t.verdict, t.stable, t.converged, t.sharpness_exceeded) == (CERTIFIED_STABLE, True, True, False)


def test_verdict_not_certified_below_the_sharpness_bound(toy):
    """Past Theorem 1's threshold but with a < 2/η: not certified, and nothing proves it unstable."""
    problem, hessians = toy
    lr = 1.2 * theorem1_threshold(hessians, 1)
    t = stabcheck.theorem1(problem, lr, 1, form="full", tol=TOL)
    assert t.sharpness * lr < 2, "the case needs a < 2/η"
    assert t.value == pytest.approx(dense_theorem1(hessians, lr, 1), rel=1e-8) and t.value > 1 + t.stable_tol
    assert (t.verdict, t.stable, t.sharpness_exceeded) == (NOT_CERTIFIED, False, False)


def test_verdict_not_certified_and_sharpness_exceeded(toy):
    problem, hessians = toy
    a = stabcheck.sharpness(problem, tol=TOL)
    t = stabcheck.theorem1(problem, 1.1 * 2 / a.value, problem.n, form="full", tol=TOL, sharpness=a)
    assert (t.verdict, t.stable, t.sharpness_exceeded) == (NOT_CERTIFIED, False, True)
    assert t.rayleigh_top == pytest.approx((1 - 2.2) ** 2, rel=1e-6), "at B = n, vᵀTv = (1 − ηa)²"


def test_verdict_unknown_when_the_solver_stops_early(toy):
    problem, hessians = toy
    lr = 0.5 * theorem1_threshold(hessians, 1)
    t = stabcheck.theorem1(problem, lr, 1, form="full", tol=TOL, maxiter=1)
    assert not t.converged and t.value <= 1 + t.stable_tol
    assert (t.verdict, t.stable) == (UNKNOWN, False)
    assert set(VERDICTS) == {CERTIFIED_STABLE, NOT_CERTIFIED, UNKNOWN}


def test_theorem1_operator_counts_its_parts(mlp):
    problem = mlp[0]
    v = torch.ones(problem.dim, dtype=torch.float64)
    op = Theorem1Operator(problem, 0.1, 2)
    op.matvec(v)
    assert op.products == {"theorem1": 1, "hessian": 2, "sigma": 1}
    op.matmat(torch.stack([v, -v], dim=1))
    assert op.products == {"theorem1": 3, "hessian": 6, "sigma": 3}
    gd = Theorem1Operator(problem, 0.1, problem.n)  # p = 0: Σ is resolved but never applied
    gd.matvec(v)
    assert gd.products == {"theorem1": 1, "hessian": 2, "sigma": 0} and gd.engine == op.engine
    h, s = HessianOperator(problem), SigmaOperator(problem)
    h.matvec(v), s.matvec(v)
    assert h.products == {"hessian": 1} and s.products == {"sigma": 1}


def test_theorem1_result_counts_every_product(mlp):
    problem = mlp[0]
    t = stabcheck.theorem1(problem, 0.1, 2, form="full", tol=1e-6)
    a = stabcheck.sharpness(problem, tol=1e-6)
    # The solve on T, one more T product for rayleigh_top, and the sharpness solve.
    steps = t.matvecs + 1
    assert dict(t.products) == {"hessian": 2 * steps + a.matvecs, "sigma": steps}


def test_unknown_engine_is_refused_even_for_gd(mlp):
    problem = mlp[0]
    with pytest.raises(stabcheck.ProblemError, match="unknown Σ engine"):
        Theorem1Operator(problem, 0.1, problem.n, engine="nope")
    with pytest.raises(stabcheck.ProblemError, match="unknown Σ engine"):
        stabcheck.theorem1(problem, 0.1, problem.n, engine="nope")


@pytest.mark.parametrize("problem_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scipy_dtype", [np.float32, np.float64])
def test_to_scipy_returns_the_dtype_it_documents(toy, problem_dtype, scipy_dtype):
    hessians = toy[1]
    problem = QuadraticToy.from_hessians(hessians).problem(torch.zeros(12), dtype=problem_dtype)
    op = HessianOperator(problem)
    assert (op.dtype, op.device) == (problem_dtype, torch.device("cpu"))
    lin = op.to_scipy(scipy_dtype)
    x = np.linspace(-1, 1, problem.dim)  # float64 in, whatever the problem's dtype
    y = lin.matvec(x)
    assert lin.dtype == y.dtype == np.dtype(scipy_dtype)
    ys = lin.matmat(np.stack([x, 2 * x], axis=1))
    assert ys.dtype == np.dtype(scipy_dtype) and ys.shape == (problem.dim, 2)
    expected = hessians.mean(0) @ torch.as_tensor(x)
    rtol = 1e-12 if problem_dtype == scipy_dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, expected.numpy(), rtol=rtol, atol=rtol * float(expected.abs().max()))
    np.testing.assert_allclose(ys[:, 1], 2 * y, rtol=rtol)


# ---- the H v path of HessianOperator: factored pass 1 or autodiff ---------------------------------
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_sharpness_through_factored_and_autodiff_hvp_agree(model_name, loss):
    problem = make_problem(model_name, loss)
    assert HessianOperator(problem).hvp == "factored", "auto takes the factored H v where it applies"
    factored = stabcheck.sharpness(problem, tol=TOL, maxiter=problem.dim, hvp="factored")
    autodiff = stabcheck.sharpness(problem, tol=TOL, maxiter=problem.dim, hvp="autodiff")
    assert factored.converged and autodiff.converged
    assert abs(factored.value - autodiff.value) <= 1e-10 * abs(autodiff.value)


def test_theorem1_through_factored_and_autodiff_hvp_agree(mlp):
    problem = mlp[0]
    runs = [stabcheck.theorem1(problem, 0.3, 2, form="full", tol=TOL, maxiter=problem.dim, hvp=path)
            for path in ("factored", "autodiff")]
    assert runs[0].verdict == runs[1].verdict
    assert runs[0].value == pytest.approx(runs[1].value, rel=1e-10)
    assert runs[0].rayleigh_top == pytest.approx(runs[1].rayleigh_top, rel=1e-10)


def test_hvp_path_choice_and_refusals(toy):
    problem = toy[0]  # the quadratic toy's model is no Sequential: the factored pass does not apply
    assert HessianOperator(problem).hvp == HessianOperator(problem, "autodiff").hvp == "autodiff"
    with pytest.raises(stabcheck.ProblemError, match="hvp='factored' does not apply to this problem"):
        HessianOperator(problem, "factored")
    with pytest.raises(stabcheck.ProblemError, match="unknown H v path 'fast'"):
        stabcheck.sharpness(problem, hvp="fast")


def _tanh_problem(n: int, dtype, spread: float = 0.0):
    """The tiny tanh MLP on n samples; with ``spread`` > 0, two samples ``spread`` apart (H_1 ≈ H_2)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MODELS["mlp-tanh"]().double().eval()
    x = torch.randn((1, 4), generator=gen, dtype=torch.float64)
    if spread:
        x = torch.cat([x, x + spread * torch.randn((1, 4), generator=gen, dtype=torch.float64)])
    y = torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 3).double()
    return stabcheck.Problem(model, x, y, loss="mse", dtype=dtype)


@pytest.mark.parametrize("engine", ["auto", "loop"])
@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sigma_zero_converges_at_the_rounding_floor(dtype, method, engine):
    # n = 1: H_1 = H, so Σ = 0 exactly, computed as a difference of equal terms (rounding noise).
    from stabcheck.curvature.criteria import SIGMA_NOISE

    prob = _tanh_problem(1, dtype)
    s = stabcheck.non_uniformity(prob, method=method, engine=engine, tol=1e-4)
    a = stabcheck.sharpness(prob).value
    assert s.converged, s
    assert abs(s.eigenvalue) <= SIGMA_NOISE * torch.finfo(dtype).eps * a * a


def _small_sigma_truth(spread: float) -> float:
    return float(torch.linalg.eigvalsh(dense_curvature(_tanh_problem(2, torch.float64, spread))[2])[-1])


@pytest.mark.parametrize("dtype, spread, tol", [(torch.float64, 1e-3, 1e-6), (torch.float32, 0.3, 1e-4)])
def test_small_sigma_keeps_its_relative_tolerance(dtype, spread, tol):
    # Two samples close together: Σ = (H_1 − H_2)²/4 is small but far above the rounding floor, so the
    # floor must not loosen its accuracy.
    s = stabcheck.non_uniformity(_tanh_problem(2, dtype, spread), tol=tol)
    assert s.converged
    assert s.eigenvalue == pytest.approx(_small_sigma_truth(spread), rel=tol)


@pytest.mark.parametrize("spread", [1e-2, 1e-3])
def test_float32_sigma_near_the_floor_is_not_called_converged_wrongly(spread):
    # float32 resolves λ_max(Σ) ≈ 1.5e-4 (1e-2) only to ~1e-3, short of tol; 1.5e-6 (1e-3) lies below the
    # floor. Converged must mean: within tol, or within the floor of a Σ its products cannot tell from 0.
    from stabcheck.curvature.criteria import SIGMA_NOISE

    prob = _tanh_problem(2, torch.float32, spread)
    s = stabcheck.non_uniformity(prob, tol=1e-4)
    atol = SIGMA_NOISE * torch.finfo(torch.float32).eps * stabcheck.sharpness(prob).value ** 2
    truth = _small_sigma_truth(spread)
    assert not s.converged or abs(s.eigenvalue - truth) <= max(1e-4 * truth, 2 * atol)


def test_rounding_floor_does_not_rescue_an_unfinished_solve(mlp):
    # A genuine Σ that misses tol for want of steps stays unconverged.
    problem, *_ = mlp
    assert not stabcheck.non_uniformity(problem, tol=1e-12, maxiter=2).converged
