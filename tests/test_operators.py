"""H, H_i, Σ and the Theorem-1 matrix against dense float64 ground truth on tiny models."""
import numpy as np
import pytest
import torch

import stabcheck
from stabcheck.curvature.engines import SIGMA_ENGINES
from stabcheck.curvature.operators import HessianOperator, SigmaOperator, Theorem1Operator
from stabcheck.curvature.products import sample_hvp

from .tiny import MODELS, dense_curvature, make_problem

CASES = [(m, loss) for m in MODELS for loss in ("mse", "ce")]
IDS = [f"{m}-{loss}" for m, loss in CASES]
RTOL = 1e-6


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    problem = make_problem(*request.param)
    his, h, sigma = dense_curvature(problem)
    return problem, his, h, sigma


def _vec(problem, seed=1):
    return torch.randn(problem.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_hessian_vector_product(case):
    problem, _, h, _ = case
    v = _vec(problem)
    torch.testing.assert_close(HessianOperator(problem).matvec(v), h @ v, rtol=RTOL, atol=1e-10)


def test_every_sample_hvp_and_their_mean(case):
    problem, his, h, _ = case
    v = _vec(problem)
    vd = problem.unflatten(v)
    per_sample = [problem.flatten(sample_hvp(problem, problem.params, problem.inputs[i], problem.targets[i], vd))
                  for i in range(problem.n)]
    for i, hv in enumerate(per_sample):
        torch.testing.assert_close(hv, his[i] @ v, rtol=RTOL, atol=1e-10)
    torch.testing.assert_close(torch.stack(per_sample).mean(0), HessianOperator(problem).matvec(v), rtol=RTOL, atol=1e-10)


@pytest.mark.parametrize("engine", sorted(SIGMA_ENGINES))
def test_sigma_vector_product_every_engine(case, engine):
    problem, _, _, sigma = case
    v = _vec(problem)
    torch.testing.assert_close(SigmaOperator(problem, engine).matvec(v), sigma @ v, rtol=RTOL, atol=1e-10)


@pytest.fixture(scope="module")
def sigma_columns(case):
    """Σ assembled column by column from the centred operator (the matrix the solvers see)."""
    return SigmaOperator(case[0], "vmap", centred=True).to_dense()


def test_sigma_centred_and_uncentred_agree_in_float64(case, sigma_columns):
    problem, _, _, sigma = case
    torch.testing.assert_close(sigma_columns, sigma, rtol=1e-8, atol=1e-10)
    centred, uncentred = SigmaOperator(problem, "vmap"), SigmaOperator(problem, "vmap", centred=False)
    for seed in range(3):
        v = _vec(problem, seed)
        torch.testing.assert_close(centred.matvec(v), uncentred.matvec(v), rtol=1e-8, atol=1e-10)


def test_sigma_is_positive_semidefinite(sigma_columns):
    dense = sigma_columns
    torch.testing.assert_close(dense, dense.T, rtol=1e-8, atol=1e-10)
    evals = torch.linalg.eigvalsh((dense + dense.T) / 2)
    assert evals.min() >= -1e-9 * evals.abs().max(), f"λmin(Σ) = {evals.min():.3e} < 0"


def test_top_eigenvalues_match_dense(case):
    problem, _, h, sigma = case
    a_true = torch.linalg.eigvalsh(h)[-1].item()
    s2_true = torch.linalg.eigvalsh(sigma)[-1].item()
    a = stabcheck.sharpness(problem, tol=1e-8, maxiter=problem.dim)
    s = stabcheck.non_uniformity(problem, tol=1e-8, maxiter=problem.dim)
    assert a.converged and s.converged
    assert a.value == pytest.approx(a_true, rel=RTOL)
    assert s.eigenvalue == pytest.approx(s2_true, rel=RTOL)
    assert s.value == pytest.approx(s2_true ** 0.5, rel=RTOL)


@pytest.mark.parametrize("lr,batch", [(0.5, 1), (0.5, 3), (2.0, 6)], ids=["lr=0.5-B=1", "lr=0.5-B=3", "lr=2-B=n"])
def test_theorem1_matrix_and_value(case, lr, batch):
    problem, _, h, sigma = case
    p = stabcheck.noise_factor(problem.n, batch)
    eye = torch.eye(problem.dim, dtype=torch.float64)
    t = (eye - lr * h) @ (eye - lr * h) + lr * lr * p * sigma
    v = _vec(problem)
    torch.testing.assert_close(Theorem1Operator(problem, lr, batch).matvec(v), t @ v, rtol=RTOL, atol=1e-10)
    torch.testing.assert_close(Theorem1Operator(problem, lr, batch, excess=True).matvec(v), t @ v - v,
                               rtol=RTOL, atol=1e-10)
    expected = torch.linalg.eigvalsh(t)[-1].item()
    result = stabcheck.theorem1(problem, lr, batch, form="full", tol=1e-9, maxiter=problem.dim)
    assert result.value == pytest.approx(expected, rel=RTOL, abs=1e-9)
    assert result.rayleigh_top <= expected + 1e-9, "rayleigh_top must be a lower bound (a Rayleigh quotient)"
    assert result.converged and result.stable == (expected <= 1 + result.stable_tol)


def test_scipy_linear_operator(case):
    problem, _, h, _ = case
    op = HessianOperator(problem).to_scipy()
    v = _vec(problem)
    assert op.shape == (problem.dim, problem.dim) and op.dtype == np.float64
    torch.testing.assert_close(torch.as_tensor(op.matvec(v.numpy())), h @ v, rtol=RTOL, atol=1e-10)
    vs = torch.stack([v, _vec(problem, 2)], dim=1)
    torch.testing.assert_close(torch.as_tensor(op.matmat(vs.numpy())), h @ vs, rtol=RTOL, atol=1e-10)


def _every_operator(problem) -> dict:
    ops = {"H-autodiff": HessianOperator(problem, "autodiff"), "H-factored": HessianOperator(problem, "factored"),
           "T": Theorem1Operator(problem, 0.5, 3), "T-excess": Theorem1Operator(problem, 0.5, 3, excess=True)}
    for engine in SIGMA_ENGINES:
        ops[f"Σ-{engine}"] = SigmaOperator(problem, engine)
        ops[f"Σ-{engine}-uncentred"] = SigmaOperator(problem, engine, centred=False)
    return ops


@pytest.mark.parametrize("name", sorted(_every_operator(make_problem("mlp-relu", "mse"))))
def test_matmat_batches_the_columns(case, name, monkeypatch):
    """matmat: one product traced by vmap for all columns (a loop where vmap cannot trace the product,
    the loop engine's autograd), equal to a loop of matvecs and to the dense matrix, k products counted."""
    problem, _, h, sigma = case
    eye = torch.eye(problem.dim, dtype=torch.float64)
    p = stabcheck.noise_factor(problem.n, 3)
    t = (eye - 0.5 * h) @ (eye - 0.5 * h) + 0.25 * p * sigma
    dense = {"H": h, "Σ": sigma, "T": t - eye if name == "T-excess" else t}[name[0]]
    op = _every_operator(problem)[name]
    vs = torch.stack([_vec(problem, seed) for seed in range(4)], dim=1)
    calls = []
    traced = op._apply
    monkeypatch.setattr(op, "_apply", lambda v: calls.append(1) or traced(v))
    got = op.matmat(vs)
    assert op.batchable == ("loop" not in name)
    assert len(calls) == (1 if op.batchable else 4)
    assert op.products == {"H": {"hessian": 4}, "Σ": {"sigma": 4}, "T": {"theorem1": 4, "hessian": 8, "sigma": 4}}[name[0]]
    columns = torch.stack([op.matvec(col) for col in vs.T], dim=1)
    torch.testing.assert_close(got, columns, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, dense @ vs, rtol=RTOL, atol=1e-10)


def test_unequal_chunks_are_weighted_per_sample():
    """Pitfall 2: a last chunk smaller than the others must not be over-weighted."""
    problem = make_problem("mlp-tanh", "mse", n=7)
    _, h, _ = dense_curvature(problem)
    problem.chunk_size = 3  # chunks of 3, 3, 1 samples
    v = _vec(problem)
    torch.testing.assert_close(HessianOperator(problem).matvec(v), h @ v, rtol=RTOL, atol=1e-10)


def test_operator_counts_products():
    problem = make_problem("mlp-relu", "mse")
    op = HessianOperator(problem)
    res = stabcheck.curvature.eigen.lanczos(op.matvec, problem.dim, tol=1e-6, dtype=torch.float64)
    assert op.matvecs == res.matvecs
