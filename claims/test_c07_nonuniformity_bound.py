"""C7 – SGD solutions respect the non-uniformity bound, nearly tight for small B (PAPER.md §4).

Every SGD solution has s ≤ √(B(n−1)/(n−B))/η; the paper sees s/bound up to ≈ 0.9 for small B and a
rare run a few percent over. Cases: every SGD minimum (B < n, μ = 0) of C6's batch grid and of C3's
equal-η/B pairs, and one case for the tightness at the small-B settings the C7 plan declares
(``expect["tight settings"]``, ``claims/profiles.py``).

Thresholds (``claims/profiles.py``): s ≤ 1.1 × bound, the margin for the paper's "a few percent
over" (in d > 1 the s-bound is empirical, not a theorem); at the tight settings the mean s/bound
reaches the plan's floor for the setup (small: 0.75, paper: 0.56; the VGG 0.33, its published s/bound at
B = 10 being 0.38, not tight), up to 3 standard errors of that mean (the floor bounds the true mean).
"""
import math
import statistics

import pytest

from claims.measured import require_minimum
from claims.suite import case_id
from claims.trends import mean_outside, standard_error
from stabcheck.reporting.rows import Kind
from claims.kinds import MINIMUM

pytestmark = pytest.mark.slow  # trains nets on a cold cache (minutes on the CI CPU)


def sgd_configs(suite) -> list:
    return [c for c in suite.configs("C6", "C3") if not c.is_gd]


def tight_configs(suite) -> dict[str, list]:
    """One case per setup: every SGD minimum of it at the declared tight (η, B) settings."""
    settings = suite.plan("C7").expect["tight settings"].value
    names = "+".join(f"lr={lr:g}-B={b}" for lr, b in settings)
    cases: dict[str, list] = {}
    for c in sgd_configs(suite):
        if (c.lr, c.batch_size) in settings:
            cases.setdefault(f"{c.setup.name}-{names}", []).append(c)
    return cases


@pytest.mark.claim("C7")
@pytest.mark.cases(sgd_config=sgd_configs)
def test_sgd_solution_within_nonuniformity_bound(claim, suite, measured_minimum, sgd_config):
    """s ≤ 1.1 × bound for every SGD solution."""
    over = suite.threshold("C7", "over")
    m = claim.measure(measured_minimum, sgd_config)
    claim.record(measured=m.measured(), kinds=MINIMUM, expected={**m.bounds(), "s/bound at most": over},
                 seed=sgd_config.seed, dtype=m.a.dtype, minimum=m.point(), grids=suite.describe())
    require_minimum(m)
    assert m.s_ratio <= over, (f"{case_id(sgd_config)}: s = {m.s.value:.4g} > {over} × bound {m.s_bound:.4g} "
                               f"(s/bound = {m.s_ratio:.3f})")


@pytest.mark.claim("C7")
@pytest.mark.cases(tight=tight_configs)
def test_bound_nearly_tight_for_small_batches(claim, suite, measured_minimum, tight):
    """At the declared small-B settings the mean s/bound over their minima is at least the plan's floor
    (small 0.75, paper 0.56; the paper's VGG 0.33) up to 3 standard errors of the mean: the paper's 'nearly
    tight' (for the VGG, its published s/bound)."""
    floor = suite.plan("C7").threshold("tight mean", tight[0].setup.name)
    spread = suite.threshold("C7", "mean spread")
    minima = claim.measure(lambda: [measured_minimum(c) for c in tight])
    ratios = [m.s_ratio for m in minima]
    mean, error = statistics.fmean(ratios), standard_error(ratios)
    claim.record(measured={"mean s/bound": Kind.RATIO(mean), "standard error": Kind.RATIO(error),
                           "s/bound per minimum": Kind.RATIO(ratios), "max s/bound": Kind.RATIO(max(ratios)),
                           "minima": [case_id(m.config) for m in minima]},
                 expected={"mean s/bound at least": floor, "standard errors allowed": spread,
                           "paper": "s/bound up to ≈ 0.9 for small B",
                           "settings (lr, B)": suite.plan("C7").expect["tight settings"].value},
                 minima=[m.point() for m in minima], grids=suite.describe())
    for m in minima:
        require_minimum(m)
    outside = mean_outside(mean, error, floor, math.inf, spread)
    assert not outside, (f"the s bound is not nearly tight at small B: mean s/bound = {outside} over "
                         + ", ".join(f"{case_id(m.config)} {r:.3f}" for m, r in zip(minima, ratios)))
