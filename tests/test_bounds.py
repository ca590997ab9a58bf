"""The closed-form bounds of Theorem 1's corollary."""
import math

import pytest

import stabcheck


def test_noise_factor_limits():
    assert stabcheck.noise_factor(10, 1) == 1.0
    assert stabcheck.noise_factor(10, 10) == 0.0
    assert stabcheck.noise_factor(1000, 10) == pytest.approx(990 / (10 * 999))


def test_bounds_values():
    assert stabcheck.sharpness_bound(0.1) == pytest.approx(20.0)
    assert stabcheck.nonuniformity_bound(0.1, 1, 1000) == pytest.approx(10.0)
    assert stabcheck.nonuniformity_bound(0.1, 1000, 1000) == math.inf


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_learning_rate(bad):
    with pytest.raises(ValueError, match="learning rate"):
        stabcheck.sharpness_bound(bad)


@pytest.mark.parametrize("n,b", [(10, 0), (10, 11), (0, 1)])
def test_bad_batch(n, b):
    with pytest.raises(ValueError):
        stabcheck.noise_factor(n, b)
