"""Bad input to Theorem 1 gets a clear error, never a silent wrong answer.

Each refusal row failed before the check it tests existed: a sharpness of another problem of the
same d was used as this problem's a (and made ``sharpness_exceeded`` say True), and ``stable_tol`` =
∞ or a slack of 0.5 and more was accepted, certifying values far above 1. One row keeps the check
from refusing what is right: the float32 problem with the a of its float64 copy.
"""
import math

import pytest
import torch
from torch import nn

import stabcheck


def _problem(seed: int, loss: str = "ce") -> stabcheck.Problem:
    """Tiny float64 problems; cross-entropy keeps them on the full form, whose value uses a."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 2, (6,), generator=gen)
    y = labels if loss == "ce" else nn.functional.one_hot(labels, 2).double()
    return stabcheck.Problem(net, x, y, loss=loss, dtype=torch.float64)


def _scaled(seed: int) -> stabcheck.Problem:
    """The same net and d as _problem(seed), with inputs ×30: a far larger a."""
    p = _problem(seed)
    return stabcheck.Problem(p.model, 30 * p.inputs, p.targets, loss="ce", dtype=torch.float64)


@pytest.mark.parametrize("call", [
    lambda p, a: stabcheck.theorem1(p, 0.1, 2, sharpness=a),
    lambda p, a: stabcheck.theorem1(p, 0.1, 2, sharpness=a, form="full"),
    lambda p, a: stabcheck.theorem1_batch_sizes(p, 0.1, [2, 6], sharpness=a),
], ids=["theorem1", "theorem1-full", "sweep"])
@pytest.mark.parametrize("other", [lambda: _scaled(0), lambda: _problem(1)], ids=["scaled-data", "other-weights"])
def test_sharpness_of_another_problem_of_the_same_dimension_is_refused(call, other):
    problem, foreign = _problem(0), other()
    assert foreign.dim == problem.dim
    with pytest.raises(ValueError, match="measured on another problem"):
        call(problem, stabcheck.sharpness(foreign))


def test_sharpness_of_a_float64_copy_of_the_same_problem_is_accepted():
    """The float32 problem and its float64 copy are one problem (measure's float64 retry passes a across)."""
    p32 = _problem(0, "mse")
    p32 = stabcheck.Problem(p32.model.float(), p32.inputs.float(), p32.targets.float(), loss="mse")
    p64 = stabcheck.Problem(p32.model, p32.inputs, p32.targets, loss="mse", dtype=torch.float64)
    t = stabcheck.theorem1(p32, 0.1, 2, sharpness=stabcheck.sharpness(p64))
    assert t.sharpness == stabcheck.sharpness(p64).value


@pytest.mark.parametrize("stable_tol", [math.inf, 0.5, 3.0])
@pytest.mark.parametrize("call", [
    lambda p, tol: stabcheck.theorem1(p, 0.1, 2, stable_tol=tol),
    lambda p, tol: stabcheck.theorem1_batch_sizes(p, 0.1, [2, 6], stable_tol=tol),
], ids=["theorem1", "sweep"])
def test_stable_tol_must_be_finite_and_small(call, stable_tol):
    with pytest.raises(ValueError, match=r"stable_tol must be a finite number in \[0, 0.5\)"):
        call(_problem(0), stable_tol)


def test_infinite_stable_tol_no_longer_certifies_a_proven_instability():
    """The reproduction: η far past 2/a with stable_tol = ∞ was "certified stable" beside sharpness_exceeded."""
    problem = _problem(0)
    a = stabcheck.sharpness(problem, tol=1e-8)
    with pytest.raises(ValueError, match="stable_tol"):
        stabcheck.theorem1(problem, 3 / a.value, 6, sharpness=a, stable_tol=math.inf)
    t = stabcheck.theorem1(problem, 3 / a.value, 6, sharpness=a)
    assert t.sharpness_exceeded and t.verdict == "not certified"
