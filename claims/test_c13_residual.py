"""C13 – residual nets (PAPER.md §4).

On a residual net the a–s correlation and the batch-size trend hold. The authors' residual net uses
BatchNorm, and their data break both stability bounds by large factors: the Hessian is taken in
eval mode, a different function from the one trained. So the bounds are asserted only for the
BatchNorm-free variant; for BatchNorm they are measured and recorded as the known exception.

Variants (the grids of the C13 plan, ``claims/profiles.py``): BatchNorm-free and BatchNorm. Small
scale: the fully connected ResidualFNN on FashionMNIST (the conv ResNet is too slow on the CI CPU);
paper scale: the ResNet-14 on CIFAR-10.

* Correlation: Pearson r(a, s) over a variant's solutions ≥ 0.9 (small) / 0.95 (paper), as C8.
* Trend, at each η with several batch sizes: the mean a and the mean s over seeds fall with each
  smaller B, and Kendall's τ between B and each quantity over all solutions is positive at one-sided
  level 0.05 (2-3 seeds per B leave a pairwise t-test without power; τ uses every solution at once).
  Batch size only matters once the s bound binds (C6): where both batch sizes sit at GD's edge (mean
  a·η/2 ≥ 0.94, C5's edge floor) and the smaller one's s bound does not bind (the larger one's mean s
  lies within it), both select minima of the same box. There the means may not grow by more than 5%
  (C6's no-growth margin) and τ counts both batch sizes as one (``claims.trends.edge_plateaus``).
* Bounds, per minimum: BatchNorm-free: a·η/2 ≤ 1.05 (C5's single-solution ceiling) and
  s ≤ 1.1 × bound (C7's margin). BatchNorm: the factor by which each bound is broken is recorded.

Minima: with BatchNorm, SGD's train-mode mini-batch loss stays near 1e-2 while its eval-mode loss
is about 1e-3 (measured: ``reports/README.md``), so those runs end at their iteration cap. They count
as minima when the eval-mode training loss — the function whose Hessian is measured — is at most
5·tol; the status is recorded.
"""

import pytest
from scipy import stats

from claims.measured import require_minimum
from claims.suite import case_id
from claims.trends import edge_plateaus, monotone_trend
from stabcheck.reporting.rows import Kind
from claims.kinds import MINIMUM

pytestmark = pytest.mark.slow  # trains nets on a cold cache (minutes on the CI CPU)


def batch_norm(config) -> bool:
    return dict(config.setup.model_options).get("batch_norm", False)


def require(suite, m) -> None:
    limit = suite.threshold("C13", "bn eval loss") * m.config.setup.tol
    require_minimum(m, limit if batch_norm(m.config) else None)


def variants(suite) -> dict[str, list]:
    groups: dict[str, list] = {}
    for c in suite.configs("C13"):
        groups.setdefault(c.setup.name, []).append(c)
    return groups


def trend_groups(suite) -> dict[str, list]:
    """The configs of each variant at each η with more than one batch size."""
    groups: dict[str, list] = {}
    for c in suite.configs("C13"):
        groups.setdefault(f"{c.setup.name}-lr={c.lr:g}", []).append(c)
    return {k: v for k, v in groups.items() if len({c.batch_size for c in v}) > 1}


def residual_configs(suite) -> list:
    return suite.configs("C13")


@pytest.mark.claim("C13")
@pytest.mark.cases(variant_configs=variants)
def test_residual_sharpness_and_nonuniformity_correlate(claim, suite, measured_minimum, variant_configs):
    """Pearson r(a, s) over the variant's solutions ≥ 0.9 (small) / 0.95 (paper)."""
    min_r = suite.threshold("C13", "min r")
    minima = claim.measure(lambda: [measured_minimum(c) for c in variant_configs])
    r = float(stats.pearsonr([m.a.value for m in minima], [m.s.value for m in minima]).statistic)
    claim.record(measured={"r(a, s)": Kind.CORRELATION(r), "solutions": Kind.COUNT(len(minima))},
                 expected={"r at least": min_r},
                 minima=[m.point() for m in minima], grids=suite.describe())
    for m in minima:
        require(suite, m)
    assert r >= min_r, f"{variant_configs[0].setup.name}: r(a, s) = {r:.4f} < {min_r}"


@pytest.mark.claim("C13")
@pytest.mark.cases(trend_configs=trend_groups)
def test_residual_batch_size_trend(claim, suite, measured_minimum, trend_configs):
    """At one η: mean a and mean s fall with each smaller B; Kendall τ(B, ·) > 0 at one-sided level 0.05.
    Pairs at GD's edge where the smaller B's s bound does not bind: no growth beyond 5%, one level for τ."""
    alpha, no_growth = suite.threshold("C13", "alpha"), suite.threshold("C13", "no growth")
    minima = claim.measure(lambda: [measured_minimum(c) for c in trend_configs])
    sizes = sorted({m.config.batch_size for m in minima})
    plateaus = edge_plateaus(minima, suite.threshold("C13", "edge floor"))
    measured, failures = monotone_trend(minima, "batch_size", rising=True, alpha=alpha, plateaus=plateaus,
                                        no_growth=no_growth)
    claim.record(measured=measured, expected={"B": sizes, "p below": alpha, "edge floor": suite.threshold(
                 "C13", "edge floor"), "no growth at most": no_growth},
                 minima=[m.point() for m in minima], grids=suite.describe())
    for m in minima:
        require(suite, m)
    assert not failures, f"{trend_configs[0].setup.name} at η = {trend_configs[0].lr:g}: " + "; ".join(failures)


@pytest.mark.claim("C13")
@pytest.mark.cases(residual_config=residual_configs)
def test_residual_bounds(claim, suite, measured_minimum, residual_config):
    """BatchNorm-free: a·η/2 ≤ 1.05, s ≤ 1.1 × bound. BatchNorm: the bounds are measured and the
    factors by which they are broken recorded as the known exception."""
    edge_ceiling, s_over = suite.threshold("C13", "edge ceiling"), suite.threshold("C13", "s over")
    m = claim.measure(measured_minimum, residual_config)
    with_bn = batch_norm(residual_config)
    broken = [f"a·η/2 = {m.edge_ratio:.3g}"] * (m.edge_ratio > 1) + [f"s/bound = {m.s_ratio:.3g}"] * (m.s_ratio > 1)
    note = ("known exception (BatchNorm: eval-mode Hessian of a net trained in train mode): "
            + (", ".join(broken) if broken else "no bound broken here")) if with_bn else ""
    claim.record(measured={**m.measured(), "final eval loss": Kind.LOSS(m.minimum.record["final_loss"])}, kinds=MINIMUM,
                 expected={**m.bounds(), "a eta/2 at most": None if with_bn else edge_ceiling,
                           "s/bound at most": None if with_bn else s_over},
                 seed=residual_config.seed, dtype=m.a.dtype, note=note, minimum=m.point(), grids=suite.describe())
    require(suite, m)
    if not with_bn:
        assert m.edge_ratio <= edge_ceiling, (f"{case_id(residual_config)}: a = {m.a.value:.4g}, "
                                              f"a·η/2 = {m.edge_ratio:.3f} > {edge_ceiling}")
        assert m.s_ratio <= s_over, (f"{case_id(residual_config)}: s = {m.s.value:.4g} > {s_over} × bound "
                                     f"{m.s_bound:.4g} (s/bound = {m.s_ratio:.3f})")
