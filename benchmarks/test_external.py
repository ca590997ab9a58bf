"""Optional: sharpness by curvlinops and PyHessian beside stabcheck's, on the same trained FNN.

Skipped unless those packages are installed (they are never required; the ``compare`` extra). Same
model, data, loss (mean MSE) and float32 as ``test_solvers.py``; each method to about 1e-4 of the
float64 reference, by its own rule: stabcheck's Lanczos (certified residual ≤ 1e-4),
curvlinops' operator through ARPACK ``eigsh`` (tol = relative eigenvalue accuracy), PyHessian's
power iteration (relative change ≤ :data:`PYHESSIAN_TOL`). Each round starts from another seed.
``test_end_to_end.py`` runs the same functions on the paper-scale FNN.
"""
import importlib

import numpy as np
import pytest
import torch
from torch import nn

import stabcheck

from .support import RESULTS
from .test_solvers import trained  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.perf

TOL = 1e-4
#: PyHessian stops when its estimate changes by less than this, relatively. At 1e-4 it stopped 1e-3
#: short of the sharpness (power iteration converges like (λ₂/λ₁)^k); 1e-6 reaches 1e-4.
PYHESSIAN_TOL = 1e-6
PYHESSIAN_MAXITER = 1000
SEEDS = (0, 1, 2)


def curvlinops_sharpness(model: nn.Module, inputs, targets, tol: float, seed: int) -> tuple[float, int]:
    """(λ_max of curvlinops' HessianLinearOperator of the mean MSE by ARPACK eigsh, products)."""
    curvlinops = pytest.importorskip("curvlinops")
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = [p for p in model.parameters() if p.requires_grad]
    op = curvlinops.HessianLinearOperator(model, nn.MSELoss(), params, [(inputs, targets)],
                                          check_deterministic=False).to_scipy()
    count = [0]

    def mv(x):
        count[0] += 1
        return op @ x

    counted = LinearOperator(op.shape, matvec=mv, dtype=op.dtype)
    start = np.random.default_rng(seed).standard_normal(op.shape[0]).astype(op.dtype)
    value = eigsh(counted, k=1, which="LA", tol=tol, v0=start)[0][0]
    return float(value), count[0]


def pyhessian_sharpness(model: nn.Module, inputs, targets, tol: float, seed: int) -> tuple[float, int]:
    """(PyHessian's top eigenvalue of the mean MSE by power iteration to relative change ``tol``, products).

    Its start vector comes from torch's global generator, seeded here.
    """
    pytest.importorskip("pyhessian")
    ph = importlib.import_module("pyhessian.hessian")  # the module: the package's name `hessian` is the class
    original = ph.hessian_vector_product
    count = [0]

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    ph.hessian_vector_product = counted
    try:
        torch.manual_seed(seed)
        values, _ = ph.hessian(model, nn.MSELoss(), data=(inputs, targets), cuda=False).eigenvalues(
            maxIter=PYHESSIAN_MAXITER, tol=tol)
    finally:
        ph.hessian_vector_product = original
    return float(values[0]), count[0]


def _record(benchmark, trained, name, run):  # noqa: F811
    reference = stabcheck.sharpness(trained.problem(dtype=torch.float64), tol=1e-10, maxiter=200).eigenvalue
    benchmark.group = "external-sharpness"
    seeds = iter(SEEDS)
    runs = []
    benchmark.pedantic(lambda seed: runs.append(run(seed)), setup=lambda: ((next(seeds),), {}),
                       rounds=len(SEEDS), iterations=1)
    errors = [abs(value - reference) / reference for value, _ in runs]
    row = {"library": name, "value": float(np.median([v for v, _ in runs])),
           "products": int(np.median([k for _, k in runs])), "relative_error": float(np.median(errors)),
           "median_s": benchmark.stats.stats.median}
    benchmark.extra_info.update(row)
    RESULTS["external"].append(row)


def test_stabcheck_lanczos(benchmark, trained):  # noqa: F811
    prob = trained.problem()

    def run(seed):
        res = stabcheck.sharpness(prob, tol=TOL, seed=seed)
        return res.value, res.matvecs

    _record(benchmark, trained, "stabcheck (lanczos)", run)


def test_curvlinops(benchmark, trained):  # noqa: F811
    pytest.importorskip("curvlinops")
    inputs, targets = trained.dataset.inputs, trained.dataset.targets("mse")
    _record(benchmark, trained, "curvlinops (eigsh)",
            lambda seed: curvlinops_sharpness(trained.model(), inputs, targets, TOL, seed))


def test_pyhessian(benchmark, trained):  # noqa: F811
    pytest.importorskip("pyhessian")
    inputs, targets = trained.dataset.inputs, trained.dataset.targets("mse")
    _record(benchmark, trained, "PyHessian (power)",
            lambda seed: pyhessian_sharpness(trained.model(), inputs, targets, PYHESSIAN_TOL, seed))
