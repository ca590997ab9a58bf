"""Optional: sharpness by curvlinops and PyHessian beside stabcheck's, on the same trained FNN.

Skipped unless those packages are installed (they are never required). Same model, data, loss
(mean MSE) and float32 as ``test_solvers.py``; each method to relative tolerance 1e-4 by its own
rule: stabcheck's Lanczos (certified residual), curvlinops' operator through ARPACK ``eigsh``
(tol = relative eigenvalue accuracy), PyHessian's power iteration (relative change).
"""
import importlib

import pytest
import torch
from torch import nn

import stabcheck

from .support import RESULTS
from .test_solvers import trained  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.perf

TOL = 1e-4


def _record(benchmark, trained, name, run):  # noqa: F811
    reference = stabcheck.sharpness(trained.problem(dtype=torch.float64), tol=1e-10, maxiter=200).eigenvalue
    benchmark.group = "external-sharpness"
    value, products = benchmark.pedantic(run, rounds=3, iterations=1)
    row = {"library": name, "value": value, "products": products,
           "relative_error": abs(value - reference) / reference, "median_s": benchmark.stats.stats.median}
    benchmark.extra_info.update(row)
    RESULTS["external"].append(row)


def test_stabcheck_lanczos(benchmark, trained):  # noqa: F811
    prob = trained.problem()

    def run():
        res = stabcheck.sharpness(prob, tol=TOL)
        return res.value, res.matvecs

    _record(benchmark, trained, "stabcheck (lanczos)", run)


def test_curvlinops(benchmark, trained):  # noqa: F811
    curvlinops = pytest.importorskip("curvlinops")
    from scipy.sparse.linalg import LinearOperator, eigsh

    model = trained.model()
    params = [p for p in model.parameters() if p.requires_grad]
    data = [(trained.dataset.inputs, trained.dataset.targets("mse"))]
    op = curvlinops.HessianLinearOperator(model, nn.MSELoss(), params, data, check_deterministic=False).to_scipy()

    def run():
        count = [0]

        def mv(x):
            count[0] += 1
            return op @ x

        counted = LinearOperator(op.shape, matvec=mv, dtype=op.dtype)
        value = eigsh(counted, k=1, which="LA", tol=TOL, v0=torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0)).numpy())[0][0]
        return float(value), count[0]

    _record(benchmark, trained, "curvlinops (eigsh)", run)


def test_pyhessian(benchmark, trained):  # noqa: F811
    pytest.importorskip("pyhessian")
    ph = importlib.import_module("pyhessian.hessian")  # the module: the package's name `hessian` is the class

    model = trained.model()
    data = (trained.dataset.inputs, trained.dataset.targets("mse"))
    original = ph.hessian_vector_product

    def run():
        count = [0]

        def counted(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)

        ph.hessian_vector_product = counted
        try:
            torch.manual_seed(0)
            values, _ = ph.hessian(model, nn.MSELoss(), data=data, cuda=False).eigenvalues(maxIter=500, tol=TOL)
        finally:
            ph.hessian_vector_product = original
        return float(values[0]), count[0]

    _record(benchmark, trained, "PyHessian (power)", run)
