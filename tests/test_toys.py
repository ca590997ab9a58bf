"""stabcheck.experiments.toys: the toys' closed-form gradients against autograd of their torch models, and the simulators."""
import math
from collections import Counter

import pytest
import torch
from torch.func import grad

from stabcheck.experiments.toys import AppendixBToy, OneDimensionalExample, QuadraticToy, exit_steps, run_sgd, sample_batches

TOYS = {
    "psd": lambda: QuadraticToy.random_psd(5, 4, 2, seed=0),
    "rank-one": lambda: QuadraticToy.rank_one(3, 6, seed=1),
    "one-dimensional": OneDimensionalExample,
    "appendix-b": AppendixBToy,
}
POINTS = {  # points where every branch of the toy is exercised
    "psd": [[0.3, -1.0, 2.0, 0.5]],
    "rank-one": [[1.0, 0.0, -2.0, 0.5, 0.1, 3.0]],
    "one-dimensional": [[0.0], [0.1], [0.5], [1.0], [1.3], [-2.0], [4.0]],
    "appendix-b": [[0.0, 0.1, 0.2], [0.3, 0.5, 0.05], [-1.0, 2.0, 1.0]],
}


def autograd_sample_grads(toy, point):
    problem = toy.problem(point)
    flat = problem.flatten(problem.params)
    return torch.stack([
        grad(lambda f: problem.single_loss(problem.unflatten(f), problem.inputs[i], problem.targets[i]))(flat)
        for i in range(problem.n)
    ])


@pytest.mark.parametrize("name", TOYS)
def test_closed_form_gradients_equal_autograd_of_the_model(name):
    toy = TOYS[name]()
    points = torch.tensor(POINTS[name], dtype=torch.float64)
    every_sample = torch.arange(toy.n).expand(len(points), toy.n)
    closed = toy.sample_grads(points, every_sample)
    for k, point in enumerate(points):
        torch.testing.assert_close(closed[k], autograd_sample_grads(toy, point), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", TOYS)
def test_vectorised_loss_equals_the_problem_loss(name):
    toy = TOYS[name]()
    points = torch.tensor(POINTS[name], dtype=torch.float64)
    expected = torch.tensor([toy.problem(point).loss_value() for point in points], dtype=torch.float64)
    torch.testing.assert_close(toy.loss_values(points), expected, rtol=1e-12, atol=1e-300)


def test_one_dimensional_loss_is_min_of_quadratics():
    toy = OneDimensionalExample()
    for x in (-0.5, 0.2, 0.7, 1.0, 3.0):
        f = [min(x * x, c * (x - 1) ** 2) for c in (0.1, 1.9)]
        assert toy.problem([x]).loss_value() == pytest.approx(sum(f) / 2, rel=1e-14, abs=1e-300)


def test_appendix_b_loss_and_global_minima():
    toy = AppendixBToy()
    a0, a1, a2 = 0.2, 0.5, 0.1
    f1 = 0.5 * a0 ** 2
    f2 = 0.5 * (a0 + math.sqrt(a1) - math.sqrt(a2)) ** 2
    assert toy.problem([a0, a1, a2]).loss_value() == pytest.approx((f1 + f2) / 2, rel=1e-14)
    assert toy.problem([0.0, 0.7, 0.7]).loss_value() == 0.0


def test_quadratic_toy_constructors():
    h = QuadraticToy.random_psd(3, 4, 2, seed=0).hessians
    torch.testing.assert_close(QuadraticToy.from_hessians(h).hessians, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(QuadraticToy.from_curvatures([0.5, 2.0]).hessians.reshape(-1),
                               torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert QuadraticToy.rank_one(3, 6, seed=0).factors.shape == (3, 6, 1)


def test_gd_on_a_quadratic_is_the_linear_recursion():
    toy = QuadraticToy.random_psd(4, 3, 2, seed=2)
    start = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    run = run_sgd(toy, start, lr=0.4, batch_size=4, steps=10)
    step = torch.eye(3, dtype=torch.float64) - 0.4 * toy.hessians.mean(0)
    torch.testing.assert_close(run.final[0], torch.linalg.matrix_power(step, 10) @ start, rtol=1e-12, atol=1e-14)


def test_sgd_step_uses_the_batch_mean_hessian():
    toy = QuadraticToy.random_psd(5, 3, 1, seed=4)
    start = torch.tensor([0.3, 0.2, -1.0], dtype=torch.float64)
    run = run_sgd(toy, start, lr=0.5, batch_size=2, steps=1, seed=7)
    batch = sample_batches(5, 2, 1, torch.Generator().manual_seed(7))[0]
    expected = start - 0.5 * toy.hessians[batch].mean(0) @ start
    torch.testing.assert_close(run.final[0], expected, rtol=1e-12, atol=1e-14)


def test_batches_are_uniform_subsets_without_replacement():
    draws = sample_batches(4, 2, 60000, torch.Generator().manual_seed(0))
    assert bool((draws[:, 0] != draws[:, 1]).all())
    counts = Counter(tuple(sorted(b)) for b in draws.tolist())
    assert len(counts) == 6
    # 6 subsets, 10000 expected each: 5 standard deviations is about 460
    assert max(abs(c - 10000) for c in counts.values()) < 460


def test_runs_are_reproducible_from_the_seed():
    toy = OneDimensionalExample()
    a = run_sgd(toy, [1.0 + 1e-5], 0.7, 1, 100, runs=20, seed=3)
    b = run_sgd(toy, [1.0 + 1e-5], 0.7, 1, 100, runs=20, seed=3)
    c = run_sgd(toy, [1.0 + 1e-5], 0.7, 1, 100, runs=20, seed=4)
    assert torch.equal(a.path, b.path)
    assert not torch.equal(a.path, c.path)
    assert a.path.shape == (101, 20, 1)


def test_appendix_b_projection_clips_and_counts():
    x, clipped = AppendixBToy().project(torch.tensor([[-1.0, -0.1, 0.2], [0.0, 0.3, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([[-1.0, 0.0, 0.2], [0.0, 0.3, 0.0]], dtype=torch.float64))
    assert clipped.tolist() == [1, 1]


def test_exit_steps():
    toy = QuadraticToy.from_curvatures([0.0])     # f ≡ 0: runs stay where they start
    run = run_sgd(toy, torch.tensor([[0.0], [5.0]]), 0.1, 1, 3, runs=2)
    run.path[2, 0, 0] = 2.0
    assert exit_steps(run, [0.0], 1.0).tolist() == [2, 0]
    assert exit_steps(run, [0.0], 10.0).tolist() == [-1, -1]


@pytest.mark.parametrize("call,match", [
    (lambda: run_sgd(OneDimensionalExample(), [1.0, 2.0], 0.1, 1, 5), "start must have shape"),
    (lambda: run_sgd(OneDimensionalExample(), [1.0], 0.1, 3, 5), "batch size"),
    (lambda: run_sgd(OneDimensionalExample(), [1.0], 0.0, 1, 5), "learning rate"),
    (lambda: QuadraticToy(torch.zeros(3, 2)), "shape \\(n, d, r\\)"),
    (lambda: QuadraticToy.from_curvatures([1.0, -1.0]), "non-negative"),
    (lambda: QuadraticToy.from_hessians(-torch.eye(2).expand(2, 2, 2)), "positive semi-definite"),
    (lambda: AppendixBToy().problem([0.0, 0.0, 0.1]), "a1 and a2 must be positive"),
    (lambda: OneDimensionalExample((0.1, -1.0)), "must be positive"),
    (lambda: OneDimensionalExample().problem([1.0, 2.0]), "has 1 coordinates"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
