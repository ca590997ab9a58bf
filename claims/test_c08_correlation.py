"""C8 – sharpness and non-uniformity are strongly correlated (PAPER.md §4).

Across the solutions of an (η, B) grid, Pearson r(a, s) > 0.95 in the paper on both datasets, and
s is a small multiple of a. One case per model family (same data and net; the GD runs of the edge
claims may use a tighter tol): every plain (μ = 0) minimum of the C5, C6/C7 and C3 grids — the
FNN on FashionMNIST, and at paper scale also the VGG on CIFAR-10 (the paper's r = 0.988 over 200 VGG
solutions). Where the C8 plan lists grids of its own (paper scale: the grid a CPU trains, GD at small
η left out), one more case per family correlates over those.

Threshold (``claims/profiles.py``, per scale): r ≥ 0.95 at paper scale (the paper's value); r ≥ 0.9
at small scale (fewer and smaller nets). The range of s/a is reported, not asserted. Where the plan declares
a measured disagreement with the paper for a setting (``expect["disagrees with the paper"]``) and r misses
the threshold, the case is an expected failure naming it only if r over the other minima meets it.
"""
from dataclasses import replace

import pytest
from scipy import stats

from claims.measured import require_minimum
from claims.suite import setting_of
from stabcheck.reporting.rows import Kind

pytestmark = pytest.mark.slow  # trains nets on a cold cache (minutes on the CI CPU)


def family(config) -> str:
    """Data and net of a config: minima of one family lie in one landscape."""
    s = config.setup
    return f"{s.model}-{s.dataset}"


def training(config) -> tuple:
    """What decides a minimum apart from the setup's name: two setups with equal rules (``fnn`` and
    ``fnn_gd`` of the small profile) train the same minimum, which must count once in r."""
    return replace(config.setup, name=""), config.lr, config.batch_size, config.momentum, config.seed, config.sampler


def families(suite) -> dict[str, list]:
    """Per family, every minimum of the C5, C6 and C3 grids; where the C8 plan has grids of its own (the
    paper's grid a CPU trains), also those, as a case ``<family>-c8-grid``."""
    out: dict[str, dict] = {}
    for c in suite.configs("C5", "C6", "C3"):
        out.setdefault(family(c), {}).setdefault(training(c), c)
    for c in suite.configs("C8"):
        out.setdefault(f"{family(c)}-c8-grid", {}).setdefault(training(c), c)
    return {name: list(configs.values()) for name, configs in out.items()}


@pytest.mark.claim("C8")
@pytest.mark.cases(family_configs=families)
def test_sharpness_and_nonuniformity_correlate(claim, suite, measured_minimum, family_configs):
    """Pearson r(a, s) over the family's grid solutions ≥ 0.9 (small) / 0.95 (paper)."""
    min_r = suite.threshold("C8", "min r")
    minima = claim.measure(lambda: [measured_minimum(c) for c in family_configs])
    a = [m.a.value for m in minima]
    s = [m.s.value for m in minima]
    r = float(stats.pearsonr(a, s).statistic)
    ratios = [y / x for x, y in zip(a, s)]
    claim.record(measured={"r(a, s)": Kind.CORRELATION(r), "solutions": Kind.COUNT(len(minima)),
                           "s/a min": Kind.RATIO(min(ratios)), "s/a max": Kind.RATIO(max(ratios)),
                           "setups": sorted({c.setup.name for c in family_configs})},
                 expected={"r at least": min_r, "paper r": "> 0.95"},
                 minima=[m.point() for m in minima], grids=suite.describe())
    for m in minima:
        require_minimum(m)
    declared = suite.plan("C8").expect.get("disagrees with the paper")
    findings = declared.value if declared is not None else {}
    found = {key: f for key, f in findings.items() if any(setting_of(m.config) == key for m in minima)}
    if r < min_r and found:
        rest = [m for m in minima if setting_of(m.config) not in found]
        r_rest = float(stats.pearsonr([m.a.value for m in rest], [m.s.value for m in rest]).statistic)
        assert r_rest >= min_r, (f"r(a, s) = {r:.4f} < {min_r} over {len(minima)} solutions, and {r_rest:.4f} "
                                 f"without the declared disagreement's {len(minima) - len(rest)}")
        pytest.xfail(f"declared disagreement with the paper: r(a, s) = {r:.4f} < {min_r} over {len(minima)} "
                     f"solutions, {r_rest:.4f} over the {len(rest)} others; " + "; ".join(found.values()))
    assert r >= min_r, f"r(a, s) = {r:.4f} < {min_r} over {len(minima)} solutions"
