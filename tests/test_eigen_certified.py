"""Lanczos keeps iterating when its explicit residual check misses the tolerance (issue 6)."""
import torch

from stabcheck import lanczos


def _spectrum(d=80, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q @ torch.diag(torch.tensor([10.0 * 0.9**k for k in range(d)], dtype=torch.float64)) @ q.T


def test_failed_certification_continues_and_is_counted():
    """A matvec that is slightly off on the certification vectors: the Ritz estimate says converged,
    the explicit residual says not yet. Lanczos must go on, count every product, and end certified."""
    A = _spectrum()
    calls = []

    def matvec(v):
        calls.append(1)
        return A @ v

    exact = lanczos(matvec, 80, tol=1e-6, dtype=torch.float64)
    assert exact.converged and exact.matvecs == exact.iterations + 1 == len(calls)

    # Same operator, but the first certification sees a perturbed product (as rounding would do).
    calls.clear()
    steps = exact.iterations

    def flaky(v):
        calls.append(1)
        out = A @ v
        if len(calls) == steps + 1:
            out = out + 1e-3 * torch.ones_like(out) / out.numel() ** 0.5
        return out

    res = lanczos(flaky, 80, tol=1e-6, dtype=torch.float64)
    assert res.converged and res.residual <= 1e-6
    assert res.iterations > steps
    assert res.matvecs == len(calls) == res.iterations + 2
    assert abs(res.value - 10.0) <= 1e-6 * 10.0


def test_uncertifiable_operator_reports_not_converged():
    """A non-symmetric perturbation keeps the true residual above tol: never converged, counts honest."""
    A = _spectrum()
    E = 1e-4 * torch.randn(80, 80, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = []
    res = lanczos(lambda v: calls.append(1) or (A + E) @ v, 80, tol=1e-8, maxiter=40, dtype=torch.float64)
    assert not res.converged and res.residual > 1e-8
    assert res.iterations == 40 and res.matvecs == len(calls) > res.iterations
