"""A trained minimum's row entries keep one meaning per name: the diagram and the momentum figure read a
minimum's "mu" as its momentum, so no criterion's entry may reuse a name of the minimum's own."""
from types import SimpleNamespace

import pytest

from claims.measured import MeasuredMinimum, measure, theorem1_entries
from claims.profiles import Measurement
from stabcheck.experiments.setups import Setup

from .tiny import make_problem


def _solve(value):
    return SimpleNamespace(value=value, converged=True, iterations=7, residual=1e-5, dtype="float32", device="cpu",
                           engine="factored")


def test_sample_theorem1_entries_do_not_overwrite_the_momentum():
    config = Setup("fnn", "fashion_mnist", 100, "fnn").config(lr=0.1, batch_size=10, seed=0, momentum=0.5)
    minimum = SimpleNamespace(config=config, status="converged",
                              record={"status": "converged", "iterations": 10, "final_loss": 1e-5, "wall_time": 1.0})
    t1 = SimpleNamespace(value=1.2, verdict="not certified", converged=True, sharpness_exceeded=False)
    sample = SimpleNamespace(mu=1.7, margin=0.3, verdict="certified stable", converged=True,
                             residual=SimpleNamespace(size=1e-3))
    m = MeasuredMinimum(minimum, _solve(8.0), _solve(12.0), t1, {}, theorem1_sample=sample)
    point = m.point()
    assert point["mu"] == 0.5, f"the momentum was overwritten: mu = {point['mu']}"
    assert point["theorem1 mu"] == 1.7 and point["theorem1 mu margin"] == 0.3
    assert "mu" not in m.measured() and m.measured()["theorem1 mu verdict"] == "certified stable"


def test_a_profile_that_skips_the_full_form_solves_theorem1_in_sample_space_only():
    problem = make_problem("mlp-tanh", "mse")   # d = 113 > nK: the sample form applies
    minimum = SimpleNamespace(config=SimpleNamespace(lr=0.1, batch_size=2),
                              problem=lambda dtype=None, device=None: problem)
    both = measure(minimum, Measurement(tol=1e-8, maxiter=200), seed=0, device="cpu")
    sample_only = measure(minimum, Measurement(tol=1e-8, maxiter=200, full_theorem1=False), seed=0, device="cpu")
    assert both.theorem1 is not None and sample_only.theorem1 is None and "theorem1" not in sample_only.seconds
    assert sample_only.theorem1_sample.mu == pytest.approx(both.theorem1_sample.mu, rel=1e-10)
    entries = theorem1_entries(sample_only.theorem1, sample_only.theorem1_sample)
    assert "theorem1" not in entries and entries["theorem1 mu"] == sample_only.theorem1_sample.mu
    assert set(theorem1_entries(both.theorem1, both.theorem1_sample)) == set(entries) | {
        "theorem1", "theorem1 verdict", "theorem1 converged"}
    with pytest.raises(ValueError, match="full-form or the sample-form"):
        theorem1_entries(None, None)
