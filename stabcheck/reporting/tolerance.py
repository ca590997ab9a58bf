"""How far a measured value may move between two claims runs, by its kind (:class:`~.rows.Kind`).

A number moved when ``|new − old| > rtol · max(|old|, |new|, scale)``: ``rtol`` relative, ``scale``
the size below which a value counts as zero (lists: also the largest element of either list, so a
list is as accurate as its largest entry). The rules come from two comparisons: reports/reference
(made on another CPU machine) against a run of the same code on the 2-core project machine with
every minimum retrained, and one minimum retrained there with 1 and 2 threads.

* Measurement alone is reproducible far below any default: float32 Lanczos stops at a relative
  residual of 1e-3 (small scale) or 1e-4 (paper scale; ``Measurement.tol`` of the profiles), which
  bounds the eigenvalue's relative error; SGD minima that trained alike agree to 1e-7 across the two machines (C3).
* Training is bitwise reproducible on one machine with one thread count, but not across thread
  counts or machines: floating-point reductions run in another order and GD at the edge of
  stability amplifies that. fnn_gd η=0.5 seed 0: a = 3.976 with one thread, 4.024 with two
  (1.2%); across the two machines a moved up to 2.7% and s up to 3.3% (C5, C13).
* Default ``rtol`` 0.04 (``--rtol``; sharpness, non-uniformity, ratios, relative errors,
  correlations, fractions, accuracies, toy values): above those 3.3%, 40× the small scale's solver tolerance,
  and below the 5% move a regression test must catch.
* theorem1: rtol 0.15, scale 1. The value is read against 1, and at GD's edge (ηa ≈ 2)
  (1 − ηa)² moves 2ηa/|1 − ηa| ≈ 4× as much as a: a's 4% gives about 15%. Measured: 8.1% (C5,
  0.99997 → 1.088) and 0.0575 → 0.0428 for a floor near 0.
* p-value: rtol 0.05, scale 1: a probability moves by up to 0.05 (measured 0.015).
* relative error, correlation, fraction, accuracy: scale 1 (read on the scale of 1); measured
  0.0055 at most.
* loss and growth: rtol 0.5 (a factor 2). Training stops anywhere below its loss tolerance (final
  losses moved 11%); C9's loss rise after an escape grows exponentially (319 → 189).
* iteration and product counts: rtol 0.25, scale 1: a solver needs a few more steps when the
  minimum moves (power iterations 24 → 26); ±2 of Lanczos's 9–14 is 20%.
* event iteration (when something happened along a trajectory) and sharpness after an unstable
  restart: C9 restarts at a predicted-unstable point, where the deviation grows 1.09–2.8× per
  step, so round-off decides them: the event iteration is not compared (200 vs 20 measured), the
  end sharpness gets 0.1 (moved 4.6%).
* count: exact (rtol 0); setting (learning rates, batch sizes and the bounds computed from them):
  rtol 1e-9, float round-off.
* paper agreement (our mean minus the paper's, the difference allowed, the seed spread): not
  compared; the mean itself is compared under its own kind.
* seconds: timings, reported with the wall time.

``--rtol-for KEY=VALUE`` (KEY a kind, a name or a glob on names; VALUE a number or ``inf``: not
compared) takes precedence over these rules; the value's scale stays.

>>> from .rows import Kind
>>> tol = Tolerances()
>>> tol.lookup("a", Kind.SHARPNESS), tol.lookup("theorem1 floor", Kind.THEOREM1)
(Tolerance(rtol=0.04, scale=1e-06), Tolerance(rtol=0.15, scale=1.0))
>>> tol.lookup("a", Kind.SHARPNESS).allows(20.0, 20.6), tol.lookup("a", Kind.SHARPNESS).allows(20.0, 21.0)
(True, False)
>>> Tolerances(overrides=(("theorem1", 0.01),)).lookup("new theorem1", Kind.THEOREM1)
Tolerance(rtol=0.01, scale=1.0)
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from .report import ReportError
from .rows import Kind

DEFAULT_RTOL = 0.04
DEFAULT_SCALE = 1e-6        # float32 round-off of an O(1) computation: below this a value is zero

# kind → (rtol, or None for --rtol; scale). Why: module docstring.
KIND_RULES: dict[Kind, tuple[float | None, float]] = {
    Kind.SHARPNESS: (None, DEFAULT_SCALE),
    Kind.NONUNIFORMITY: (None, DEFAULT_SCALE),
    Kind.RATIO: (None, DEFAULT_SCALE),
    Kind.VALUE: (None, DEFAULT_SCALE),
    Kind.RELATIVE: (None, 1.0),
    Kind.CORRELATION: (None, 1.0),
    Kind.FRACTION: (None, 1.0),
    Kind.ACCURACY: (None, 1.0),
    Kind.THEOREM1: (0.15, 1.0),
    Kind.P_VALUE: (0.05, 1.0),
    Kind.LOSS: (0.5, DEFAULT_SCALE),
    Kind.GROWTH: (0.5, DEFAULT_SCALE),
    Kind.ITERATIONS: (0.25, 1.0),
    Kind.PRODUCTS: (0.25, 1.0),
    Kind.RESTART_SHARPNESS: (0.1, DEFAULT_SCALE),
    Kind.EVENT: (math.inf, 1.0),
    Kind.AGREEMENT: (math.inf, 1.0),
    Kind.COUNT: (0.0, 1.0),
    Kind.SETTING: (1e-9, DEFAULT_SCALE),
}
NOT_NUMBERS = (Kind.VERDICT, Kind.SECONDS)   # compared for equality, and reported with the wall time


class ToleranceError(ReportError):
    """A tolerance that cannot be read (``--rtol-for`` or ``--rtol``)."""


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    scale: float

    def allows(self, old: float, new: float, size: float = 0.0) -> bool:
        """Whether old → new is within tolerance (``size``: a larger size floor, e.g. a list's largest entry)."""
        if math.isnan(old) or math.isnan(new):
            return math.isnan(old) and math.isnan(new)
        if old == new:  # equal infinities too
            return True
        if math.isinf(old) or math.isinf(new):
            return math.isinf(self.rtol)
        return abs(new - old) <= self.rtol * max(abs(old), abs(new), self.scale, size)


@dataclass(frozen=True)
class Tolerances:
    """``rtol`` for the kinds whose rule defers to it; ``overrides``: (kind, name or glob; rtol) from
    ``--rtol-for``, the first match wins."""
    rtol: float = DEFAULT_RTOL
    overrides: tuple[tuple[str, float], ...] = ()

    def lookup(self, name: str, kind: Kind) -> Tolerance:
        rule_rtol, scale = KIND_RULES[kind]
        rtol = next((r for key, r in self.overrides if _names(key, name, kind)), rule_rtol)
        return Tolerance(self.rtol if rtol is None else rtol, scale)

    def describe(self) -> list[tuple[str, str]]:
        """(kind or name, tolerance) in the order they apply, for the report."""
        lines = [(key, f"rtol {_num(r)}") for key, r in self.overrides]
        return lines + [(kind.value, f"rtol {_num(self.rtol if r is None else r)}, scale {_num(s)}")
                        for kind, (r, s) in KIND_RULES.items()]


def _names(key: str, name: str, kind: Kind) -> bool:
    return key.lower() == kind.value or fnmatch.fnmatchcase(name.lower(), key.lower())


def _num(x: float) -> str:
    return "inf (not compared)" if math.isinf(x) else f"{x:g}"


def non_negative(text: str, what: str) -> float:
    """A number ≥ 0 or ``inf`` from the command line; :class:`ToleranceError` otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise ToleranceError(f"{what}: expected a number ≥ 0 or 'inf', got {text!r}")
    return value


def parse_rtol_for(text: str) -> tuple[str, float]:
    """``KEY=VALUE`` of ``--rtol-for`` → (KEY, VALUE); KEY a kind, a name or a glob.

    >>> parse_rtol_for("theorem1=0.05"), parse_rtol_for("left at iteration=inf")
    (('theorem1', 0.05), ('left at iteration', inf))
    """
    key, eq, value = text.rpartition("=")
    if not eq or not key:
        raise ToleranceError(f"--rtol-for {text!r}: expected KIND=RTOL or QUANTITY=RTOL with RTOL a number ≥ 0 "
                             "or 'inf' (example: --rtol-for theorem1=0.05)")
    return key, non_negative(value, f"--rtol-for {text!r}")
