"""The sample-space Theorem 1 against dense float64 truth at interpolating minima of tiny nets (d > nK).

Planted minima: the targets are the net's own outputs (loss exactly 0). Trained minimum: Gauss–Newton
steps from one-hot targets until the loss is below 1e-14. There every H_i is its Gauss–Newton part,
so μ and 1 + λ must equal the dense restricted μ and λ_max(T) of the true Hessians.
"""
import pytest
import torch
from torch.func import jacrev

import stabcheck
from stabcheck.curvature.gauss_newton import GaussNewton
from stabcheck.curvature.results import CERTIFIED_STABLE, NOT_CERTIFIED, THEOREM1_KEYS

from .tiny import MODELS, dense_curvature, make_problem

TOL = 1e-12
FAMILIES = [(model, loss) for model in MODELS for loss in ("mse", "half_sq")]


def planted(model: str, loss: str) -> stabcheck.Problem:
    """The tiny net at its initial point, with its own outputs as targets: an exact interpolating minimum."""
    p = make_problem(model, loss)
    with torch.no_grad():
        targets = p.forward(p.params, p.inputs)
    return stabcheck.Problem(p.model, p.inputs, targets, loss=loss, dtype=torch.float64)


def trained(model: str, loss: str) -> stabcheck.Problem:
    """Minimum-norm Gauss–Newton steps x ← x − J⁺r from one-hot targets until the loss is below 1e-14."""
    p = make_problem(model, loss)
    net = p.model
    flat = p.flatten(p.params)
    for _ in range(50):
        params = p.unflatten(flat)
        residual = (p.forward(params, p.inputs) - p.targets).reshape(-1)
        if p.loss_value(params) < 1e-16:
            break
        jac = jacrev(lambda f: p.forward(p.unflatten(f), p.inputs).reshape(-1))(flat)
        flat = flat - jac.T @ torch.linalg.solve(jac @ jac.T, residual)
    torch.nn.utils.vector_to_parameters(flat, net.parameters())
    problem = stabcheck.Problem(net, p.inputs, p.targets, loss=loss, dtype=torch.float64)
    assert problem.loss_value() < 1e-14
    return problem


def dense_sample_parts(problem):
    """(c′/n)Γ and c′D as dense nK × nK matrices, and the projector onto the range of Γ."""
    flat = problem.flatten(problem.params)
    jac = jacrev(lambda f: problem.forward(problem.unflatten(f), problem.inputs).reshape(problem.n, -1))(flat)
    k = jac.shape[1]
    rows = jac.reshape(-1, problem.dim)
    gram = rows @ rows.T
    blocks = torch.block_diag(*[jac[i] @ jac[i].T for i in range(problem.n)])
    c = 2.0 / k if problem.loss == "mse" else 1.0
    evals, evecs = torch.linalg.eigh(gram)
    keep = evecs[:, evals > 1e-10 * evals.max()]
    return c / problem.n * gram, c * blocks, keep @ keep.T


def dense_mu(problem, lr, batch_size) -> float:
    """η·λ_max of (1 − p)(c′/n)Γ + p·c′D restricted to the range of Γ."""
    gram, blocks, proj = dense_sample_parts(problem)
    p = stabcheck.noise_factor(problem.n, batch_size)
    return lr * float(torch.linalg.eigvalsh(proj @ ((1 - p) * gram + p * blocks) @ proj)[-1])


def dense_top(problem, lr, batch_size) -> float:
    """λ_max(T) from the dense per-sample Hessians (the true ones, residual term included)."""
    _, h, sigma = dense_curvature(problem)
    a = torch.eye(problem.dim, dtype=h.dtype) - lr * h
    return float(torch.linalg.eigvalsh(a @ a + lr * lr * stabcheck.noise_factor(problem.n, batch_size) * sigma)[-1])


def critical_lr(problem, batch_size) -> float:
    """η at which the dense μ reaches 2."""
    return 2.0 / dense_mu(problem, 1.0, batch_size)


def solve(problem, lr, batch_size, **kw):
    return stabcheck.theorem1(problem, lr, batch_size, tol=TOL, maxiter=problem.n * 3 + problem.dim, **kw)


@pytest.fixture(scope="module", params=FAMILIES + [("mlp-tanh", "trained-mse")], ids=lambda f: "-".join(f))
def minimum(request):
    model, loss = request.param
    return trained(model, "mse") if loss == "trained-mse" else planted(model, loss)


def test_the_minima_are_over_parameterised_and_interpolating(minimum):
    k = minimum.targets[0].numel()
    assert minimum.dim > minimum.n * k and minimum.loss_value() < 1e-14


@pytest.mark.parametrize("batch_size", [1, 2, 3, "n"])
@pytest.mark.parametrize("factor", [0.5, 0.99, 1.01, 1.5])
def test_mu_and_the_value_equal_the_dense_truth(minimum, batch_size, factor):
    """μ = dense restricted μ (1e-8); the value 1 + max(λ, 0) = dense λ_max(T) (1e-8); verdicts on each side of 2."""
    b = minimum.n if batch_size == "n" else batch_size
    lr = factor * critical_lr(minimum, b)
    t = solve(minimum, lr, b)
    assert t.form == "sample" and t.converged
    assert t.mu == pytest.approx(dense_mu(minimum, lr, b), rel=1e-8)
    assert t.mu == pytest.approx(2 * factor, rel=1e-8) and t.margin == pytest.approx(2 - t.mu, abs=1e-15)
    truth = dense_top(minimum, lr, b)
    assert t.value == pytest.approx(truth, rel=1e-8), (t.value, truth)
    if factor < 1:
        assert t.verdict == CERTIFIED_STABLE and t.excess is None and truth == pytest.approx(1.0, abs=1e-10)
    else:
        assert t.verdict == NOT_CERTIFIED and truth > 1 + 1e-6 and t.excess == pytest.approx(truth - 1, rel=1e-8)
    assert t.neutral_dim == minimum.dim - minimum.n * minimum.targets[0].numel()


def test_just_past_two_is_not_certified(minimum):
    """(η, B) with μ = 2(1 + 1e-6): never certified (the excess over 1 is tiny but proven positive)."""
    lr = (1 + 1e-6) * critical_lr(minimum, 1)
    t = solve(minimum, lr, 1)
    assert t.mu > 2 and t.verdict != CERTIFIED_STABLE and not t.stable


def test_residual_term_vanishes_at_the_minimum(minimum):
    t = solve(minimum, 0.1, 1, residual_steps=minimum.dim)
    scale = float(torch.linalg.eigvalsh(dense_curvature(minimum)[1])[-1])
    assert t.residual.size <= 1e-10 * scale


def test_residual_term_equals_the_dense_h_minus_g_away_from_a_minimum():
    """At a random point of a tiny net, the residual term's extreme eigenvalues are those of dense H − G."""
    problem = make_problem("mlp-tanh", "mse")
    gram_rows = jacrev(lambda f: problem.forward(problem.unflatten(f), problem.inputs).reshape(-1))(
        problem.flatten(problem.params))
    g = (2.0 / 3) / problem.n * gram_rows.T @ gram_rows
    evals = torch.linalg.eigvalsh(dense_curvature(problem)[1] - g)
    t = solve(problem, 0.1, 1, residual_steps=problem.dim)
    assert t.residual.largest == pytest.approx(float(evals[-1]), rel=1e-8)
    assert t.residual.smallest == pytest.approx(float(evals[0]), rel=1e-8)
    assert t.residual.shift(0.1) == pytest.approx(0.2 * float(evals.abs().max()), rel=1e-8)


@pytest.mark.parametrize("model", list(MODELS))
def test_gram_blocks_equal_the_dense_jacobian_blocks(model):
    problem = planted(model, "mse")
    _, blocks, _ = dense_sample_parts(problem)
    k = problem.targets[0].numel()
    dense = torch.stack([blocks[i * k:(i + 1) * k, i * k:(i + 1) * k] for i in range(problem.n)]) / (2.0 / k)
    torch.testing.assert_close(GaussNewton(problem).blocks(), dense, rtol=1e-12, atol=1e-12)


def test_sweep_solves_the_extremes_and_bounds_the_rest(minimum):
    """Every B's verdict equals its own call's; a bound's μ interval holds the dense μ; chord ≤ 2 certifies."""
    sizes = list(range(1, minimum.n + 1))
    lr = 0.9 * critical_lr(minimum, 1)
    sweep = stabcheck.theorem1_batch_sizes(minimum, lr, sizes, tol=TOL, maxiter=minimum.dim)
    assert sweep.solved == (1, minimum.n)
    for r in sweep:
        truth = dense_mu(minimum, lr, r.batch_size)
        assert r.verdict == CERTIFIED_STABLE == solve(minimum, lr, r.batch_size).verdict
        if r.solved:
            assert r.mu == pytest.approx(truth, rel=1e-8)
        else:
            assert r.mu_lower <= truth * (1 + 1e-10) and truth <= r.mu_upper * (1 + 1e-10) and r.value is None
            assert list(r.as_dict())[:len(THEOREM1_KEYS)] == list(THEOREM1_KEYS)


def test_sweep_solves_where_the_chord_does_not_certify(minimum):
    lr = 1.1 * critical_lr(minimum, 1)
    sweep = stabcheck.theorem1_batch_sizes(minimum, lr, [1, 2, minimum.n], tol=TOL, maxiter=minimum.dim)
    for r in sweep:
        alone = solve(minimum, lr, r.batch_size)
        assert r.verdict == alone.verdict and (r.solved or r.verdict == CERTIFIED_STABLE)
    assert sweep.result(1).verdict == NOT_CERTIFIED


def test_forms_and_their_refusals():
    ce = make_problem("mlp-relu", "ce")
    assert stabcheck.theorem1(ce, 0.1, 1).form == "full"
    with pytest.raises(stabcheck.ProblemError, match="form='full'"):
        stabcheck.theorem1(ce, 0.1, 1, form="sample")
    with pytest.raises(ValueError, match="form must be one of"):
        stabcheck.theorem1(ce, 0.1, 1, form="dense")
    mse = planted("mlp-tanh", "mse")
    assert stabcheck.theorem1(mse, 0.1, 1).form == "sample"
    assert stabcheck.theorem1(mse, 0.1, 1, form="full").form == "full"


def test_every_theorem1_result_answers_one_protocol():
    mse = planted("mlp-tanh", "mse")
    for t in (stabcheck.theorem1(mse, 0.1, 1), stabcheck.theorem1(mse, 0.1, 1, form="full")):
        d = t.as_dict()
        assert list(d)[:len(THEOREM1_KEYS)] == list(THEOREM1_KEYS) and d["solved"] and d["value"] == t.value
        assert t.lower <= t.value <= t.upper and isinstance(t.converged, bool)


class Wrapped(torch.nn.Module):
    """The same net outside a Sequential: the products go through autodiff instead of the layer factors."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("model", ["mlp-relu", "mlp-tanh"])
def test_layer_factors_and_autodiff_give_the_same_products(model):
    problem = planted(model, "mse")
    other = stabcheck.Problem(Wrapped(problem.model), problem.inputs, problem.targets, loss="mse",
                              dtype=torch.float64)
    fast, slow = GaussNewton(problem), GaussNewton(other)
    assert (fast.engine, slow.engine) == ("factors", "autodiff")
    u = torch.randn(problem.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn(problem.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fast.blocks(), slow.blocks(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.gram(u), slow.gram(u), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.jvp(problem.unflatten(v)), slow.jvp(other.unflatten(v)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(problem.flatten(fast.vjp(u)), other.flatten(slow.vjp(u)), rtol=1e-12, atol=1e-12)
    assert solve(problem, 0.3, 1).mu == pytest.approx(solve(other, 0.3, 1).mu, rel=1e-10)
