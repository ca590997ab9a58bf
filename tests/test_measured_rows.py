"""A trained minimum's row entries keep one meaning per name: the diagram and the momentum figure read a
minimum's "mu" as its momentum, so no criterion's entry may reuse a name of the minimum's own."""
from types import SimpleNamespace

from claims.measured import MeasuredMinimum
from stabcheck.experiments.setups import Setup


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
