"""Statistics over sets of measured minima that several trained-net claims share."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

from claims.measured import MeasuredMinimum
from stabcheck.reporting.rows import Kind


def sharpest_found(minima: list[MeasuredMinimum]) -> float:
    """The largest a among these minima (0 for none): a lower bound on the sharpest minimum GD can reach."""
    return max((m.a.value for m in minima), default=0.0)


def monotone_trend(minima: list[MeasuredMinimum], setting: str, rising: bool, alpha: float,
                   plateaus: frozenset = frozenset(), no_growth: float = 1.0) -> tuple[dict, list[str]]:
    """Means of a and s per value of a config attribute (``batch_size``, ``momentum``) and Kendall τ.

    The claim holds when both means move strictly in one direction (``rising``: they grow with the
    setting) and the one-sided Kendall test rejects "no trend" at ``alpha``. ``plateaus`` names consecutive
    values (x, y) where the claim expects no move (:func:`edge_plateaus`): there the means may move against
    the claim by the factor ``no_growth`` at most, and Kendall's τ counts both values as one. Returns the
    measured entries for the report row and the failures, empty when the claim holds.
    """
    levels = sorted({getattr(m.config, setting) for m in minima})
    rank = {levels[0]: 0}
    for x, y in zip(levels, levels[1:]):
        rank[y] = rank[x] + ((x, y) not in plateaus)
    direction = "grows" if rising else "falls"
    measured, failures = {}, []
    for q in ("a", "s"):
        values = [m.a.value if q == "a" else m.s.value for m in minima]
        means = [statistics.fmean(v for m, v in zip(minima, values) if getattr(m.config, setting) == x) for x in levels]
        tau = stats.kendalltau([rank[getattr(m.config, setting)] for m in minima], values,
                               alternative="greater" if rising else "less")
        kind = Kind.SHARPNESS if q == "a" else Kind.NONUNIFORMITY
        measured |= {f"mean {q} per {setting}": kind(means), f"kendall tau ({setting}, {q})": Kind.CORRELATION(
                     float(tau.statistic)), f"p ({q} {direction} with {setting})": Kind.P_VALUE(float(tau.pvalue))}
        for (x, y), (low, high) in zip(zip(levels, levels[1:]), zip(means, means[1:])):
            first, second = (low, high) if rising else (high, low)
            if (x, y) in plateaus:
                if first > no_growth * second:
                    failures.append(f"mean {q} at {setting} = {x if rising else y} is {first:.4g}, more than "
                                    f"{no_growth}× its {second:.4g} at {y if rising else x}, where no move is expected")
            elif not first < second:
                failures.append(f"mean {q} does not move with {setting} as claimed between {x} and {y}: "
                                f"{low:.4g} → {high:.4g}")
        if not tau.pvalue < alpha:
            failures.append(f"{q}: Kendall τ = {tau.statistic:.3f}, one-sided p = {tau.pvalue:.3g} ≥ {alpha}")
    if plateaus:
        measured[f"{setting} pairs where no move is expected"] = sorted(plateaus)
    return measured, failures


def edge_plateaus(minima: list[MeasuredMinimum], floor: float) -> frozenset:
    """Consecutive batch sizes (B₁, B₂) of minima at one η where batch size cannot matter: the mean a·η/2 is
    at least ``floor`` at both (GD's edge: the a bound binds, C5) and B₁'s s bound does not bind (the mean s at
    B₂ lies within it, C6), so both select minima of the same box."""
    sizes = sorted({m.config.batch_size for m in minima})
    at = {b: [m for m in minima if m.config.batch_size == b] for b in sizes}
    return frozenset((b1, b2) for b1, b2 in zip(sizes, sizes[1:])
                     if min(statistics.fmean(m.edge_ratio for m in at[b]) for b in (b1, b2)) >= floor
                     and statistics.fmean(m.s.value for m in at[b2]) <= at[b1][0].s_bound)


def standard_error(values: list[float]) -> float:
    """Seed sd/√k of the mean of k values (0 for one value): how far a mean of k seeds scatters.

    >>> round(standard_error([1.0, 2.0, 3.0]), 6)
    0.57735
    """
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def only_edge_of_stability(after: list[float], floor: float, ceiling: float, largest: float) -> bool:
    """Whether a(t)·η/2 after reaching the edge left [floor, ceiling] only upwards, by at most ``largest``, and
    ended inside it: GD at the edge of stability, not a wrong a (10% off moves the end out of the band)."""
    return (bool(after) and all(q >= floor for q in after) and max(after) <= largest
            and floor <= after[-1] <= ceiling)


def mean_outside(mean: float, error: float, floor: float | None, ceiling: float, spread: float) -> str:
    """Why a mean with standard error ``error`` lies beyond its floor or ceiling by more than ``spread``
    standard errors (the floor and ceiling bound the true mean, not one draw of it); empty when it does not.

    >>> mean_outside(0.957, 0.003, 0.96, 1.02, 3.0), mean_outside(1.053, 0.003, 0.96, 1.02, 3.0)[:24]
    ('', '1.053 > 1.02 + 3 × 0.003')
    """
    if mean - spread * error > ceiling:
        return f"{mean:.4g} > {ceiling} + {spread:g} × {error:.2g} (standard error)"
    if floor is not None and mean + spread * error < floor:
        return f"{mean:.4g} < {floor} − {spread:g} × {error:.2g} (standard error)"
    return ""


#: The paper's means are over about 5 runs per setting (PAPER.md §3).
PAPER_RUNS = 5


@dataclass(frozen=True)
class PaperAgreement:
    """Our mean over seeds against the paper's mean of ``PAPER_RUNS`` runs, and the difference allowed."""

    what: str
    ours: float
    paper: float
    tolerance: float
    sd: float          # our seed-to-seed standard deviation

    @property
    def holds(self) -> bool:
        return abs(self.ours - self.paper) <= self.tolerance

    def entries(self) -> dict:
        return {f"{self.what}: ours - paper": Kind.AGREEMENT(self.ours - self.paper),
                f"{self.what}: allowed": Kind.AGREEMENT(self.tolerance), f"{self.what}: seed sd": Kind.AGREEMENT(self.sd)}

    def message(self) -> str:
        return (f"{self.what}: ours {self.ours:.4g} vs the paper's {self.paper:.4g}, difference "
                f"{self.ours - self.paper:+.3g} beyond the {self.tolerance:.3g} allowed (seed sd {self.sd:.3g})")


def paper_agreement(what: str, values: list[float], paper: float, spread: float, floor: float) -> PaperAgreement:
    """|mean(values) − paper| ≤ max(spread·sd·√(1/k + 1/PAPER_RUNS), floor·|paper|).

    sd is the seed-to-seed standard deviation of our k values, taken for the paper's runs too (it gives
    none), so sd·√(1/k + 1/5) is the standard error of the difference of the two means; ``floor`` (a
    fraction of the paper's value) covers what seeds do not vary, the data subset and initialisation.

    >>> paper_agreement("a", [8.0, 8.4, 8.2], 7.9, 3.0, 0.05).holds
    True
    """
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    tolerance = max(spread * sd * math.sqrt(1 / len(values) + 1 / PAPER_RUNS), floor * abs(paper))
    return PaperAgreement(what, statistics.fmean(values), paper, tolerance, sd)
