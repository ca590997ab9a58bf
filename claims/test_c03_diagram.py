"""C3 – the sharpness–non-uniformity diagram (PAPER.md §1 Corollary, §4).

Minima reachable by SGD(η, B) lie in the box [0, 2/η] × [0, √(B(n−1)/(n−B))/η]: η shrinks both sides,
B only the s side; the s side tends to √B/η as n → ∞; GD (B = n) has no s bound. Settings with equal
η/B therefore have different boxes and select different minima (the one with larger η is flatter).

Sections: "the box: formulas" (CPU, exact) and "trained nets" (equal-η/B pairs of SGD minima: the C3
plan of ``claims/profiles.py``, small: (η, B) = (0.1, 2) vs (0.5, 10); paper: (0.1, 10) vs (0.5, 50)).
"""
import math

import pytest
import torch

import stabcheck
from stabcheck.reporting.rows import Kind
from claims.measured import require_minimum
from claims.suite import case_id
from stabcheck.curvature.criteria import NOT_CERTIFIED
from stabcheck.experiments.toys import QuadraticToy

N = 1000


def box(lr, batch_size, n=N):
    """(a side, s side) of the stability box."""
    return stabcheck.sharpness_bound(lr), stabcheck.nonuniformity_bound(lr, batch_size, n)


# ---- the box: formulas ---------------------------------------------------------------------------
@pytest.mark.claim("C3")
@pytest.mark.parametrize("batch_size", [1, 10, 100], ids=lambda b: f"B={b}-n=1000")
def test_learning_rate_shrinks_both_sides(claim, batch_size):
    """Over η = 0.01 … 1 both sides fall strictly and exactly as 1/η (η·side constant to 1e-12)."""
    lrs = [0.01, 0.05, 0.1, 0.5, 1.0]
    sides = claim.measure(lambda: [box(lr, batch_size) for lr in lrs])
    a_sides, s_sides = zip(*sides)
    s_times_lr = math.sqrt(batch_size * (N - 1) / (N - batch_size))
    claim.record(measured={"a side": Kind.SETTING(a_sides), "s side": Kind.SETTING(s_sides)},
                 expected={"lr": lrs, "a side x lr": 2.0, "s side x lr": s_times_lr})
    assert all(x > y for x, y in zip(a_sides, a_sides[1:])), f"a side not decreasing in η: {a_sides}"
    assert all(x > y for x, y in zip(s_sides, s_sides[1:])), f"s side not decreasing in η: {s_sides}"
    for lr, a_side, s_side in zip(lrs, a_sides, s_sides):
        assert a_side * lr == pytest.approx(2.0, rel=1e-12)
        assert s_side * lr == pytest.approx(s_times_lr, rel=1e-12)


@pytest.mark.claim("C3")
@pytest.mark.parametrize("lr", [0.05, 0.5], ids=lambda lr: f"lr={lr}-n=1000")
def test_batch_size_moves_only_the_s_side(claim, lr):
    """Over B = 1 … 999 the s side rises strictly while the a side stays 2/η."""
    sizes = [1, 2, 10, 100, 500, 999]
    sides = claim.measure(lambda: [box(lr, b) for b in sizes])
    a_sides, s_sides = zip(*sides)
    claim.record(measured={"a side": Kind.SETTING(a_sides), "s side": Kind.SETTING(s_sides)},
                 expected={"B": sizes, "a side": 2 / lr})
    assert len(set(a_sides)) == 1 and a_sides[0] == pytest.approx(2 / lr), f"a side depends on B: {a_sides}"
    assert all(x < y for x, y in zip(s_sides, s_sides[1:])), f"s side not increasing in B: {s_sides}"


@pytest.mark.claim("C3")
@pytest.mark.parametrize("batch_size", [1, 4, 16], ids=lambda b: f"B={b}")
def test_s_side_tends_to_sqrt_b_over_lr(claim, batch_size):
    """η·s-side/√B = √((n−1)/(n−B)) → 1: within (B−1)/n of 1 (its first-order size) and shrinking in n;
    1e-12 absorbs rounding."""
    lr, sizes = 0.1, [10 ** 2, 10 ** 4, 10 ** 6]
    ratios = claim.measure(lambda: [stabcheck.nonuniformity_bound(lr, batch_size, n) * lr / math.sqrt(batch_size)
                                    for n in sizes])
    claim.record(measured={"s side x lr / sqrt(B)": Kind.SETTING(ratios)}, expected={"n": sizes, "limit": 1.0})
    for n, ratio in zip(sizes, ratios):
        assert 1 - 1e-12 <= ratio <= 1 + (batch_size - 1) / n + 1e-12, f"n={n}: η·side/√B = {ratio}"
    assert ratios == sorted(ratios, reverse=True)


@pytest.mark.claim("C3")
def test_gd_has_no_s_side(claim):
    """B = n: p = 0 and the s side is infinite, so Theorem 1 for GD is (1 − ηa)² whatever s is: on the 1-D
    toy h = (0.2, 3.8) (a = 2, s = 1.8 > the B = 1 side 1/η) at η = 0.8, GD is stable and SGD (B = 1) not.
    Tolerance 1e-9: Lanczos in d = 1 is exact up to rounding."""
    lr, toy = 0.8, QuadraticToy.from_curvatures([0.2, 3.8])
    problem = toy.problem(torch.zeros(1))
    gd = claim.measure(stabcheck.theorem1, problem, lr=lr, batch_size=2, tol=1e-10)
    sgd = stabcheck.theorem1(problem, lr=lr, batch_size=1, tol=1e-10)
    a = stabcheck.sharpness(problem).value
    claim.record(measured={"s side (B=n)": Kind.SETTING(stabcheck.nonuniformity_bound(lr, 2, 2)),
                           "p": Kind.SETTING(stabcheck.noise_factor(2, 2)),
                           "theorem1 GD": Kind.THEOREM1(gd.value), "theorem1 SGD B=1": Kind.THEOREM1(sgd.value)},
                 expected={"s side (B=n)": math.inf, "p": 0.0, "(1 - eta a)^2": (1 - lr * a) ** 2})
    assert stabcheck.nonuniformity_bound(lr, 2, 2) == math.inf and stabcheck.noise_factor(2, 2) == 0.0
    assert gd.value == pytest.approx((1 - lr * a) ** 2, abs=1e-9)
    assert gd.converged and sgd.converged, "the Theorem-1 solves must converge before their verdicts count"
    assert gd.stable and sgd.verdict == NOT_CERTIFIED, (f"GD {gd.value} ({gd.verdict}), "
                                                        f"SGD(B=1) {sgd.value} ({sgd.verdict})")


@pytest.mark.claim("C3")
def test_equal_lr_over_b_gives_nested_boxes(claim):
    """η/B = 0.01 for (η, B) = (0.01, 1), (0.05, 5), (0.1, 10): the boxes differ and the larger η's box
    lies strictly inside the smaller η's (both sides smaller): η/B alone does not fix the box."""
    settings = [(0.01, 1), (0.05, 5), (0.1, 10)]
    boxes = claim.measure(lambda: [box(lr, b) for lr, b in settings])
    claim.record(measured={"boxes (a side, s side)": Kind.SETTING(boxes)}, expected={"(lr, B)": settings, "nested": True})
    for (a_small_lr, s_small_lr), (a_large_lr, s_large_lr) in zip(boxes, boxes[1:]):
        assert a_large_lr < a_small_lr and s_large_lr < s_small_lr, f"boxes not nested: {boxes}"


def two_point_toy(a, s, n):
    """1-D toy with mean curvature a and population std s: one h_i = a + s√(n−1), the others a − s/√(n−1)."""
    root = math.sqrt(n - 1)
    return QuadraticToy.from_curvatures([a + s * root] + [a - s / root] * (n - 1))


@pytest.mark.claim("C3")
@pytest.mark.parametrize("batch_size", [1, 4], ids=lambda b: f"lr=0.5-B={b}-n=10")
def test_box_sides_are_where_theorem1_reaches_one_in_d1(claim, batch_size):
    """In d = 1 the box is Theorem 1 itself: on 1-D toys built with (a, s) = (2/η, 0) and (1/η, s side),
    stabcheck measures those a and s and a Theorem-1 value of 1; 1% further out the value exceeds 1.
    Tolerance 1e-9: Lanczos in d = 1 is exact up to rounding."""
    lr, n = 0.5, 10
    s_side = stabcheck.nonuniformity_bound(lr, batch_size, n)
    corners = {"a corner": (2 / lr, 0.0), "s corner": (1 / lr, s_side)}
    outside = {"a corner": (2.02 / lr, 0.0), "s corner": (1 / lr, 1.01 * s_side)}
    measured, values = {}, {}
    for name, (a, s) in corners.items():
        problem = two_point_toy(a, s, n).problem(torch.zeros(1))
        t1 = claim.measure(stabcheck.theorem1, problem, lr=lr, batch_size=batch_size, tol=1e-10, name=name)
        measured[name] = (stabcheck.sharpness(problem).value, stabcheck.non_uniformity(problem).value, t1.value)
        values[name + " 1% out"] = stabcheck.theorem1(two_point_toy(*outside[name], n).problem(torch.zeros(1)),
                                                      lr=lr, batch_size=batch_size, tol=1e-10).value
    claim.record(measured={**{f"{k} (a, s, T1)": Kind.VALUE(v) for k, v in measured.items()},
                           **{k: Kind.THEOREM1(v) for k, v in values.items()}},
                 expected={"a corner (a, s, T1)": (2 / lr, 0.0, 1.0), "s corner (a, s, T1)": (1 / lr, s_side, 1.0),
                           "1% out above": 1.0}, dtype="float64")
    for name, (a, s) in corners.items():
        got_a, got_s, t1 = measured[name]
        assert got_a == pytest.approx(a, abs=1e-9), f"{name}: a = {got_a}, built with {a}"
        assert got_s == pytest.approx(s, abs=1e-9), f"{name}: s = {got_s}, built with {s}"
        assert t1 == pytest.approx(1.0, abs=1e-9), f"{name}: Theorem-1 value {t1}, expected 1 on the box edge"
    assert all(v > 1 + 1e-3 for v in values.values()), f"outside the box Theorem 1 still says stable: {values}"


# ---- trained nets -------------------------------------------------------------------------------
# Pairs with equal η/B trained from the same seed; the minima come from the run's shared cache.
def equal_ratio_pairs(suite) -> dict:
    """id → (smaller-η config, larger-η config): the C3 plan's settings grouped by (setup, η/B, seed)."""
    groups: dict[tuple, list] = {}
    for c in suite.configs("C3"):
        groups.setdefault((c.setup.name, round(c.lr / c.batch_size, 12), c.seed), []).append(c)
    pairs = {}
    for group in groups.values():
        small_lr, large_lr = sorted(group, key=lambda c: c.lr)
        pairs[f"{small_lr.setup.name}-lr={small_lr.lr:g}-B={small_lr.batch_size}-vs-lr={large_lr.lr:g}"
              f"-B={large_lr.batch_size}-seed={small_lr.seed}"] = (small_lr, large_lr)
    return pairs


@pytest.mark.slow
@pytest.mark.claim("C3")
@pytest.mark.cases(ratio_pair=equal_ratio_pairs)
def test_equal_lr_over_b_larger_lr_selects_flatter_minimum(claim, suite, measured_minimum, ratio_pair):
    """Same η/B, same seed: the run with the larger η ends at the smaller sharpness a, and each minimum
    lies in its own box (a ≤ 1.05·2/η, s ≤ 1.1·bound: C5's per-solution and C7's margins, since GD and
    SGD stop somewhere on their edge-of-stability oscillation)."""
    small_lr, large_lr = ratio_pair
    edge_ceiling, s_over = suite.threshold("C3", "edge ceiling"), suite.threshold("C3", "s over")
    m_small, m_large = claim.measure(lambda: [measured_minimum(c) for c in (small_lr, large_lr)])
    claim.record(
        measured={"a (smaller lr)": Kind.SHARPNESS(m_small.a.value), "a (larger lr)": Kind.SHARPNESS(m_large.a.value),
                  "s (smaller lr)": Kind.NONUNIFORMITY(m_small.s.value),
                  "s (larger lr)": Kind.NONUNIFORMITY(m_large.s.value),
                  "a eta/2": Kind.RATIO([m_small.edge_ratio, m_large.edge_ratio]),
                  "s/bound": Kind.RATIO([m_small.s_ratio, m_large.s_ratio])},
        expected={"a (larger lr) below a (smaller lr)": True, "2/eta": [m_small.a_bound, m_large.a_bound],
                  "s bound": [m_small.s_bound, m_large.s_bound]},
        seed=small_lr.seed, dtype=m_small.a.dtype, minima=[m_small.point(), m_large.point()],
        grids=suite.describe())
    for m in (m_small, m_large):
        require_minimum(m)
        assert m.edge_ratio <= edge_ceiling, (f"{case_id(m.config)}: a·η/2 = {m.edge_ratio:.3f} > {edge_ceiling}: "
                                              "outside its box")
        assert m.s_ratio <= s_over, f"{case_id(m.config)}: s/bound = {m.s_ratio:.3f} > {s_over}: outside its box"
    assert m_large.a.value < m_small.a.value, (
        f"equal η/B = {small_lr.lr / small_lr.batch_size:g}: η = {large_lr.lr:g} reached a = {m_large.a.value:.4g}, "
        f"not flatter than η = {small_lr.lr:g} with a = {m_small.a.value:.4g}")
