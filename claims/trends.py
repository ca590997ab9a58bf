"""Statistics over sets of measured minima that several trained-net claims share."""
from __future__ import annotations

import statistics

from scipy import stats

from claims.measured import MeasuredMinimum


def sharpest_found(minima: list[MeasuredMinimum]) -> float:
    """The largest a among these minima (0 for none): a lower bound on the sharpest minimum GD can reach."""
    return max((m.a.value for m in minima), default=0.0)


def monotone_trend(minima: list[MeasuredMinimum], setting: str, rising: bool, alpha: float) -> tuple[dict, list[str]]:
    """Means of a and s per value of a config attribute (``batch_size``, ``momentum``) and Kendall τ.

    The claim holds when both means move strictly in one direction (``rising``: they grow with the
    setting) and the one-sided Kendall test rejects "no trend" at ``alpha``. Returns the measured
    entries for the report row and the failures, empty when the claim holds.
    """
    levels = sorted({getattr(m.config, setting) for m in minima})
    direction = "grows" if rising else "falls"
    measured, failures = {}, []
    for q in ("a", "s"):
        values = [m.a.value if q == "a" else m.s.value for m in minima]
        means = [statistics.fmean(v for m, v in zip(minima, values) if getattr(m.config, setting) == x) for x in levels]
        tau = stats.kendalltau([getattr(m.config, setting) for m in minima], values,
                               alternative="greater" if rising else "less")
        measured |= {f"mean {q} per {setting}": means, f"kendall tau ({setting}, {q})": float(tau.statistic),
                     f"p ({q} {direction} with {setting})": float(tau.pvalue)}
        if not all((x < y) if rising else (x > y) for x, y in zip(means, means[1:])):
            failures.append(f"mean {q} does not move with {setting} as claimed: {levels} → {[round(x, 4) for x in means]}")
        if not tau.pvalue < alpha:
            failures.append(f"{q}: Kendall τ = {tau.statistic:.3f}, one-sided p = {tau.pvalue:.3g} ≥ {alpha}")
    return measured, failures
