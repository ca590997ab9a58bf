"""C8 – sharpness and non-uniformity are strongly correlated (PAPER.md §4).

Across the solutions of an (η, B) grid, Pearson r(a, s) > 0.95 in the paper on both datasets, and
s is a small multiple of a. One case per model family (same data and net; the GD runs of the edge
claims may use a tighter tol): every plain (μ = 0) minimum of the C5, C6/C7 and C3 grids — the
FNN on FashionMNIST, and at paper scale also the VGG on CIFAR-10.

Threshold: r ≥ 0.95 at paper scale (the paper's value); r ≥ 0.9 at small scale (the issue's, for
fewer and smaller nets; measured 0.987). The range of s/a is reported, not asserted.
"""
import pytest
from scipy import stats

from claims.trained import Grids, grids, measured_minimum, require_minimum  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow  # trains nets on a cold cache (minutes on the CI CPU)

MIN_R = {"small": 0.9, "paper": 0.95}


def family(config) -> str:
    """Data and net of a config: minima of one family lie in one landscape."""
    s = config.setup
    return f"{s.model}-{s.dataset}"


def families(g: Grids) -> dict[str, list]:
    p = g.profile
    configs = [c for grid in (p.gd_lrs, p.batch, *p.extra_gd_lrs) for c in g.configs(grid)] + g.equal_ratio_configs()
    out: dict[str, list] = {}
    for c in dict.fromkeys(configs):
        out.setdefault(family(c), []).append(c)
    return out


def pytest_generate_tests(metafunc):
    if "family_configs" in metafunc.fixturenames:
        g = Grids.of(metafunc.config)
        groups = families(g)
        metafunc.parametrize("family_configs", g.params(list(groups.values()), list(groups)))


@pytest.mark.claim("C8")
def test_sharpness_and_nonuniformity_correlate(claim, grids, measured_minimum, family_configs):
    """Pearson r(a, s) over the family's grid solutions ≥ 0.9 (small) / 0.95 (paper)."""
    minima = claim.measure(lambda: [measured_minimum(c) for c in family_configs])
    a = [m.a.value for m in minima]
    s = [m.s.value for m in minima]
    r = float(stats.pearsonr(a, s).statistic)
    ratios = [y / x for x, y in zip(a, s)]
    min_r = MIN_R[grids.profile.name]
    claim.record(measured={"r(a, s)": r, "solutions": len(minima), "s/a min": min(ratios), "s/a max": max(ratios),
                           "setups": sorted({c.setup.name for c in family_configs})},
                 expected={"r at least": min_r, "paper r": "> 0.95"},
                 minima=[m.point() for m in minima], grids=grids.describe())
    for m in minima:
        require_minimum(m)
    assert r >= min_r, f"r(a, s) = {r:.4f} < {min_r} over {len(minima)} solutions"
