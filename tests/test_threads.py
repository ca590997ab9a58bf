"""The measurement thread policy: a criterion runs with one CPU thread and restores the count it changed."""
import pytest
import torch

import stabcheck
from stabcheck.curvature.engines import SIGMA_ENGINES, SigmaEngine
from stabcheck.curvature.threads import torch_threads

from .tiny import make_problem


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _spy_engine(seen: list, fail: bool = False) -> SigmaEngine:
    """The vmap engine, recording the thread count of every product (and failing at the first if asked)."""
    def apply(problem, v, centred):
        seen.append(torch.get_num_threads())
        if fail:
            raise RuntimeError("engine failed")
        return SIGMA_ENGINES["vmap"](problem, v, centred)

    return SigmaEngine("spy", apply)


def test_a_criterion_runs_with_one_thread_and_restores_the_count(two_threads):
    problem, seen = make_problem("mlp-tanh", "mse"), []
    stabcheck.non_uniformity(problem, engine=_spy_engine(seen), tol=1e-6)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_a_failing_criterion_restores_the_count(two_threads):
    problem, seen = make_problem("mlp-tanh", "mse"), []
    with pytest.raises(RuntimeError, match="engine failed"):
        stabcheck.theorem1(problem, 0.1, 2, form="full", engine=_spy_engine(seen, fail=True), tol=1e-6)
    assert seen == [1]
    assert torch.get_num_threads() == 2


def test_torch_threads_nests_and_leaves_other_devices_alone(two_threads):
    with torch_threads(1):
        with torch_threads(3):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1
        with torch_threads(None), torch_threads(4, "cuda"):
            assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="positive integer or None, got True"):
        with torch_threads(True):
            pass
