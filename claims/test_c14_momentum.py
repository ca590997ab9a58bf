"""C14 – momentum (PAPER.md §4; in the authors' code and data).

Heavy-ball GD with momentum μ (v ← μv + ∇f, x ← x − ηv) is linearly stable at x* iff
a ≤ 2(1 + μ)/η, and lands at a ≈ 2(1 + μ)/η; with SGD, a and s fall as μ grows.

* Heavy-ball GD (the ``momentum_gd`` grid): every solution a ≤ 1.05·2(1+μ)/η, and the mean over seeds
  at each (η, μ) ≤ 1.02·2(1+μ)/η — C5's ceilings, for the same reason (GD stops inside its edge
  oscillation). In the edge regime a ≥ 0.85·2(1+μ)/η; the regime by C5's rule: GD or heavy ball at
  another setting of the same setup reached a minimum sharper than 2(1+μ)/η.
* SGD (the ``momentum_sgd`` grid, fixed η and B): the mean a and the mean s over seeds fall with each
  larger μ, and Kendall's τ between μ and each over all solutions is negative at one-sided level
  0.05 (3 seeds per μ leave a pairwise t-test without power; τ uses every solution at once).

Theorem 1 in the rows is plain SGD's (μ = 0) at the same (η, B), for reference only.
"""
import statistics

import pytest

from claims.trained import (Grids, case_id, grids, measured_minimum, monotone_trend, require_minimum,  # noqa: F401 (fixtures)
                            sharpest_found)

pytestmark = pytest.mark.slow  # trains nets on a cold cache (minutes on the CI CPU)

SINGLE_CEILING = 1.05
MEAN_CEILING = 1.02
EDGE_FLOOR = 0.85
ALPHA = 0.05


def heavy_ball_bound(config) -> float:
    return 2 * (1 + config.momentum) / config.lr


def full_batch_configs(g: Grids, setup: str) -> list:
    """GD and heavy-ball GD minima on one setup (C5's and C14's grids)."""
    p = g.profile
    configs = g.configs(p.momentum_gd) + g.configs(p.gd_lrs)
    return [c for c in dict.fromkeys(configs) if c.setup.name == setup]


def hb_groups(g: Grids) -> dict[str, list]:
    groups: dict[str, list] = {}
    for c in g.configs(g.profile.momentum_gd):
        groups.setdefault(f"{c.setup.name}-lr={c.lr:g}-mu={c.momentum:g}", []).append(c)
    return groups


def pytest_generate_tests(metafunc):
    g = Grids.of(metafunc.config)
    if "hb_config" in metafunc.fixturenames:
        metafunc.parametrize("hb_config", g.config_params(g.configs(g.profile.momentum_gd)))
    if "hb_group" in metafunc.fixturenames:
        groups = hb_groups(g)
        metafunc.parametrize("hb_group", g.params(list(groups.values()), list(groups)))
    if "sgd_momentum_configs" in metafunc.fixturenames:
        configs = g.configs(g.profile.momentum_sgd)
        c = configs[0]
        metafunc.parametrize("sgd_momentum_configs", g.params([configs], [f"{c.setup.name}-lr={c.lr:g}-B={c.batch_size}"]))


def regime(g: Grids, measured_minimum, config) -> tuple[bool, float]:
    """(edge regime?, sharpest full-batch minimum of the setup at another (η, μ))."""
    others = [c for c in full_batch_configs(g, config.setup.name) if (c.lr, c.momentum) != (config.lr, config.momentum)]
    sharpest = sharpest_found([measured_minimum(c) for c in others])
    return sharpest > heavy_ball_bound(config), sharpest


@pytest.mark.claim("C14")
def test_heavy_ball_gd_at_its_edge(claim, grids, measured_minimum, hb_config):
    """a ≤ 1.05·2(1+μ)/η; in the edge regime a ≥ 0.85·2(1+μ)/η."""
    m = claim.measure(measured_minimum, hb_config)
    bound = heavy_ball_bound(hb_config)
    ratio = m.a.value / bound
    edge, sharpest = regime(grids, measured_minimum, hb_config)
    claim.record(measured={**m.measured(), "a/(2(1+mu)/eta)": ratio, "regime": "edge" if edge else "landscape-limited",
                           "sharpest full-batch minimum elsewhere": sharpest},
                 expected={"2(1+mu)/eta": bound, **m.bounds(), "ratio at most": SINGLE_CEILING,
                           "ratio at least": EDGE_FLOOR if edge else None},
                 seed=hb_config.seed, dtype=m.a.dtype, minimum=m.point(), grids=grids.describe())
    require_minimum(m)
    assert ratio <= SINGLE_CEILING, (f"{case_id(hb_config)}: a = {m.a.value:.4g} > {SINGLE_CEILING} × 2(1+μ)/η = "
                                     f"{SINGLE_CEILING * bound:.4g} (ratio {ratio:.3f})")
    if edge:
        assert ratio >= EDGE_FLOOR, (f"{case_id(hb_config)}: edge regime (a = {sharpest:.4g} found elsewhere) but "
                                     f"a = {m.a.value:.4g} is {ratio:.3f} of 2(1+μ)/η = {bound:.4g} (< {EDGE_FLOOR})")


@pytest.mark.claim("C14")
def test_heavy_ball_gd_mean_sharpness(claim, grids, measured_minimum, hb_group):
    """Mean a over seeds at each (η, μ) ≤ 1.02·2(1+μ)/η."""
    minima = claim.measure(lambda: [measured_minimum(c) for c in hb_group])
    bound = heavy_ball_bound(hb_group[0])
    ratio = statistics.fmean(m.a.value for m in minima) / bound
    claim.record(measured={"mean a": ratio * bound, "mean a/(2(1+mu)/eta)": ratio, "a per seed": [m.a.value for m in minima]},
                 expected={"2(1+mu)/eta": bound, "ratio at most": MEAN_CEILING},
                 minima=[m.point() for m in minima], grids=grids.describe())
    for m in minima:
        require_minimum(m)
    assert ratio <= MEAN_CEILING, f"mean a = {ratio * bound:.4g} is {ratio:.3f} × 2(1+μ)/η > {MEAN_CEILING}"


@pytest.mark.claim("C14")
def test_sgd_sharpness_and_nonuniformity_fall_with_momentum(claim, grids, measured_minimum, sgd_momentum_configs):
    """Mean a and mean s fall with each larger μ; Kendall τ(μ, ·) < 0 at one-sided level 0.05."""
    minima = claim.measure(lambda: [measured_minimum(c) for c in sgd_momentum_configs])
    momenta = sorted({m.config.momentum for m in minima})
    measured, failures = monotone_trend(minima, "momentum", rising=False, alpha=ALPHA)
    lr = sgd_momentum_configs[0].lr
    claim.record(measured=measured, expected={"mu": momenta, "p below": ALPHA,
                                              "2(1+mu)/eta per mu": [2 * (1 + mu) / lr for mu in momenta]},
                 minima=[m.point() for m in minima], grids=grids.describe(),
                 note="theorem1 in the minima is plain SGD's (mu = 0), for reference")
    for m in minima:
        require_minimum(m)
    assert not failures, "; ".join(failures)
