"""stabcheck.curvature.exact against brute-force enumeration of every batch, in float64."""
import math

import pytest
import torch

from stabcheck.curvature import exact
from stabcheck.experiments.toys import AppendixBToy, QuadraticToy


ATOL = 1e-12


def random_hessians(n, d, rank, seed):
    return QuadraticToy.random_psd(n, d, rank, seed).hessians


def random_symmetric(n, d, seed):
    m = torch.randn(n, d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return m + m.transpose(1, 2)


def dense_theorem1(h, lr, p):
    """(I − ηH)² + η² p Σ from dense per-sample Hessians."""
    a = torch.eye(h.shape[1], dtype=h.dtype) - lr * h.mean(0)
    return a @ a + lr * lr * p * exact.dense_sigma(h)


@pytest.mark.parametrize("n,batch_size,replace", [
    (3, 1, False), (4, 2, False), (5, 3, False), (6, 6, False), (8, 3, False),
    (3, 1, True), (4, 2, True), (5, 3, True), (6, 4, True),
])
def test_second_moment_closed_form_equals_enumeration(n, batch_size, replace):
    h = random_symmetric(n, 3, seed=n * 10 + batch_size)   # the identity needs no definiteness
    closed = exact.second_moment_matrix(h, 0.3, batch_size, replace)
    enumerated = exact.second_moment_enumerated(h, 0.3, batch_size, replace)
    torch.testing.assert_close(closed, enumerated, rtol=0, atol=ATOL * float(enumerated.abs().max()))


@pytest.mark.parametrize("n,batch_size", [(4, 1), (5, 2), (8, 4), (7, 7)])
def test_expected_square_equals_theorem1_matrix(n, batch_size):
    h = random_hessians(n, 3, 2, seed=n)
    enumerated = exact.expected_square_enumerated(h, 0.7, batch_size)
    closed = dense_theorem1(h, 0.7, exact.batch_noise(n, batch_size))
    torch.testing.assert_close(enumerated, closed, rtol=0, atol=ATOL * float(closed.abs().max()))


def test_with_replacement_noise_is_one_over_b():
    h = random_hessians(4, 2, 1, seed=3)
    enumerated = exact.expected_square_enumerated(h, 0.5, 3, replace=True)
    torch.testing.assert_close(enumerated, dense_theorem1(h, 0.5, 1 / 3), rtol=0, atol=ATOL)


def test_batches_are_all_subsets_or_tuples():
    assert len(exact.batches(8, 3)) == math.comb(8, 3)
    assert len(exact.batches(4, 3, replace=True)) == 4 ** 3
    assert all(len(set(b)) == 3 for b in exact.batches(6, 3))


@pytest.mark.parametrize("seed", range(4))
def test_radius_is_largest_eigenvalue_with_psd_moment(seed):
    h = random_hessians(5, 3, 1, seed)
    res = exact.mean_square(h, 0.8, 2)
    evals = torch.linalg.eigvals(exact.second_moment_enumerated(h, 0.8, 2))
    assert res.value == pytest.approx(float(evals.abs().max()), rel=1e-12)
    assert float(torch.linalg.eigvalsh(res.moment).min()) >= -1e-10   # Krein–Rutman: a PSD eigenvector
    assert res.p == exact.batch_noise(5, 2)


@pytest.mark.parametrize("seed", range(6))
def test_radius_never_exceeds_theorem1_value(seed):
    gen = torch.Generator().manual_seed(seed)
    n, d = int(torch.randint(3, 7, (1,), generator=gen)), int(torch.randint(2, 5, (1,), generator=gen))
    h = random_hessians(n, d, 1, seed)
    for lr in (0.2, 0.6, 1.0, 2.0):
        bound = float(torch.linalg.eigvalsh(dense_theorem1(h, lr, exact.batch_noise(n, 1))).max())
        assert exact.mean_square(h, lr, 1).value <= bound * (1 + 1e-12)


def _bisect_threshold(h, batch_size, replace=False):
    """Largest η with enumerated radius ≤ 1, by bisection (the ground truth of the closed form)."""
    def stable(lr):
        moment_map = exact.second_moment_enumerated(h, lr, batch_size, replace)
        return float(torch.linalg.eigvals(moment_map).abs().max()) <= 1 + 1e-12
    lo, hi = 0.0, 1.0
    while stable(hi):
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize("n,d,rank,batch_size,replace", [
    (4, 3, 2, 1, False), (5, 2, 1, 2, False), (6, 3, 3, 4, False), (4, 4, 1, 1, False), (3, 2, 2, 2, True),
])
def test_threshold_equals_bisection_of_enumerated_radius(n, d, rank, batch_size, replace):
    h = random_hessians(n, d, rank, seed=n + d)
    closed = exact.mean_square_threshold(h, batch_size, replace)
    assert closed == pytest.approx(_bisect_threshold(h, batch_size, replace), rel=1e-9)


def test_threshold_gd_is_two_over_sharpness_and_1d_formula():
    h = random_hessians(5, 3, 2, seed=1)
    a = float(torch.linalg.eigvalsh(h.mean(0)).max())
    assert exact.mean_square_threshold(h, 5) == pytest.approx(2 / a, rel=1e-12)
    c = torch.tensor([0.5, 1.0, 3.0, 0.1], dtype=torch.float64)
    h1 = c.reshape(-1, 1, 1)
    a1, var = float(c.mean()), float(c.var(unbiased=False))
    p = exact.batch_noise(4, 2)
    assert exact.mean_square_threshold(h1, 2) == pytest.approx(2 * a1 / (a1 ** 2 + p * var), rel=1e-12)
    assert exact.theorem1_threshold(h1, 2) == pytest.approx(2 * a1 / (a1 ** 2 + p * var), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_theorem1_threshold_is_where_its_value_crosses_one(seed):
    h = random_hessians(4, 3, 1, seed)
    eta = exact.theorem1_threshold(h, 1)
    assert eta <= exact.mean_square_threshold(h, 1) * (1 + 1e-12)
    for factor, side in ((1 - 1e-6, -1), (1 + 1e-6, 1)):
        value = float(torch.linalg.eigvalsh(dense_theorem1(h, factor * eta, 1.0)).max())
        assert (value - 1) * side > 0


def test_threshold_is_infinite_without_curvature():
    zero = torch.zeros(3, 2, 2, dtype=torch.float64)
    assert exact.mean_square_threshold(zero, 1) == math.inf


def test_propagate_second_moment_matches_enumerated_steps():
    h = random_hessians(4, 2, 1, seed=0)
    a = exact._iteration_matrices(h, 0.9, 2, False)
    s = torch.eye(2, dtype=torch.float64)
    traces = [float(torch.trace(s))]
    for _ in range(5):
        s = (a @ s @ a).mean(0)
        traces.append(float(torch.trace(s)))
    got = exact.propagate_second_moment(h, 0.9, 2, torch.eye(2), steps=5)
    torch.testing.assert_close(got, torch.tensor(traces, dtype=torch.float64), rtol=1e-12, atol=0)


def test_sample_hessians_of_toys():
    toy = QuadraticToy.random_psd(4, 3, 2, seed=0)
    torch.testing.assert_close(exact.sample_hessians(toy.problem(torch.ones(3))), toy.hessians)
    a = 0.3
    his = exact.sample_hessians(AppendixBToy().problem([0.0, a, a]))
    top = torch.linalg.eigvalsh(his)[:, -1]
    torch.testing.assert_close(top, torch.tensor([1.0, 1.0 + 1.0 / (2 * a)], dtype=torch.float64))


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(3, 2), "shape \\(n, d, d\\)"),
    (torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]), "symmetric"),
    (torch.full((1, 1, 1), math.nan), "inf or nan"),
    (torch.zeros(1, exact.MAX_DIM + 1, exact.MAX_DIM + 1), "d ≤"),
])
def test_bad_hessians_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        exact.mean_square(bad, 0.1, 1)


def test_threshold_needs_psd_and_valid_batch():
    with pytest.raises(ValueError, match="positive semi-definite"):
        exact.mean_square_threshold(-torch.eye(2, dtype=torch.float64).expand(2, 2, 2), 1)
    with pytest.raises(ValueError, match="batch size"):
        exact.mean_square(torch.eye(2).expand(3, 2, 2), 0.1, 4)
    with pytest.raises(ValueError, match="learning rate"):
        exact.second_moment_matrix(torch.eye(2).expand(3, 2, 2), -1.0, 1)
