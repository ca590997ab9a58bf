"""Every difference between two claims runs, regressions flagged.

Per case (a row's ``test``): outcome changes, verdicts that changed, numbers that moved beyond the
tolerance of their kind (:mod:`.tolerance`), cases and quantities added or missing, and wall-time
changes. A value of a numeric kind that becomes non-finite, null, a string, a boolean, or a list
holding one, has moved, whatever its tolerance (the reverse too).

A regression: a case that passed and no longer passes (xfailed, failed, skipped, not run), a case that newly
fails, a case or a measured quantity missing from the run (a case that ran but recorded no row
included), two rows of one test in either run, a moved number, and a verdict-like change. A
verdict-like change in a row whose numbers all stayed within tolerance is reported as *borderline*
instead: the same measurement on the other side of a threshold (Theorem 1 at GD's edge went 1.0011
→ 0.99998 between two machines and its verdict "unstable (a > 2/eta)" → "stable"). Added cases and
quantities, improvements and wall time are reported only (``fail_on_time`` makes a slowdown a
regression).

>>> from .runs import Run
>>> base = {"rows": [{"claim": "C5", "test": "t::x", "case": "x", "outcome": "passed",
...                   "measured": {"a": 20.0, "verdict": "stable"}, "duration_s": 1.0}]}
>>> run = {"rows": [dict(base["rows"][0], measured={"a": 21.0, "verdict": "stable"})]}
>>> result = compare_runs(Run.from_json(base, "base"), Run.from_json(run, "run"))
>>> [(f.kind, f.quantity, f.detail) for f in result.regressions]
[('moved', 'a', '+5.0% (tol 4%)')]
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .rows import ClaimRow, Kind, is_number
from .runs import Run
from .tolerance import NOT_NUMBERS, Tolerance, Tolerances

TIME_RATIO = 2.0
TIME_FLOOR_S = 1.0
OUTCOME_OK = "passed"
RAN = ("passed", "xfailed", "failed")


@dataclass(frozen=True)
class Finding:
    """One difference. ``kind``: outcome, moved, verdict, borderline, missing case, added case,
    missing quantity, added quantity, duplicate row, time."""
    kind: str
    regression: bool
    claim: str
    case: str
    quantity: str = ""
    baseline: str = ""
    run: str = ""
    detail: str = ""


@dataclass
class Comparison:
    baseline: Run
    run: Run
    tolerances: Tolerances
    findings: list[Finding] = field(default_factory=list)
    common: int = 0
    wall_s: tuple[float, float] = (0.0, 0.0)   # summed duration_s of the cases both ran

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regression]

    @property
    def exit_status(self) -> int:
        return 1 if self.regressions else 0

    def headline(self) -> str:
        added = sum(f.kind == "added case" for f in self.findings)
        missing = sum(f.kind == "missing case" for f in self.findings)
        n = len(self.regressions)
        old, new = self.wall_s
        ratio = f" (×{new / old:.2f})" if old > 0 else ""
        return (f"{'no regressions' if n == 0 else f'{n} regression' + 's' * (n != 1)}: {self.common} cases in both, "
                f"{added} added, {missing} missing; wall time of the common cases {old:.1f} s → {new:.1f} s{ratio}")

    def sections(self) -> list[tuple[str, list[Finding]]]:
        others = [f for f in self.findings if not f.regression and f.kind != "time"]
        times = [f for f in self.findings if f.kind == "time" and not f.regression]
        return [("Regressions", self.regressions), ("Other changes (not regressions)", others),
                ("Wall time (report only)", times)]


def show(value) -> str:
    """A value as the comparison table shows it."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        text = "[" + ", ".join(show(v) for v in value) + "]"
        return text if len(text) <= 60 else f"[{len(value)} values]"
    return json.dumps(value)


def _numbers(value) -> list[float] | None:
    """The numbers of a number or (nested) list of numbers; None where anything else is in it."""
    if is_number(value):
        return [float(value)]
    if isinstance(value, list):
        flat: list[float] = []
        for v in value:
            inner = _numbers(v)
            if inner is None:
                return None
            flat += inner
        return flat
    return None


def _flatten(measured: dict, prefix: str = "") -> dict:
    """Nested dicts as ``outer/inner`` names."""
    out = {}
    for key, value in measured.items():
        name = f"{prefix}{key}"
        out |= _flatten(value, name + "/") if isinstance(value, dict) else {name: value}
    return out


def _times(row: ClaimRow) -> dict[str, float]:
    """A row's wall times in seconds: ``duration`` (``duration_s``, which holds its ``timings_s``) and
    its values of kind seconds."""
    times = {"duration": row.duration_s} if row.duration_s is not None else {}
    return times | {k: v for k, v in _flatten(row.measured).items() if row.kind(k) == Kind.SECONDS and is_number(v)}


def _case_name(case: dict) -> str:
    return case["test"].split("::")[-1]


def compare_runs(baseline: Run, run: Run, tolerances: Tolerances = Tolerances(), *, time_ratio: float = TIME_RATIO,
                 time_floor_s: float = TIME_FLOOR_S, fail_on_time: bool = False) -> Comparison:
    """Every difference between two runs, regressions flagged (see the module docstring)."""
    result = Comparison(baseline, run, tolerances)
    found = result.findings
    for which, side in (("baseline", baseline), ("run", run)):
        for test in side.duplicates:
            case = side.cases[test]
            found.append(Finding("duplicate row", True, case["claim"], _case_name(case),
                                 detail=f"the {which} holds two rows of this test: an error in that run"))
    old_wall = new_wall = 0.0
    for key, old_case in baseline.cases.items():
        claim, name = old_case["claim"], _case_name(old_case)
        new_case = run.cases.get(key)
        if new_case is None:
            found.append(Finding("missing case", True, claim, name, baseline=old_case["outcome"], run="absent"))
            continue
        result.common += 1
        old_out, new_out = old_case["outcome"], new_case["outcome"]
        if old_out != new_out:
            worse = old_out == OUTCOME_OK or new_out == "failed"
            found.append(Finding("outcome", worse, claim, name, "outcome", old_out, new_out,
                                 new_case.get("reason", "") or ("improved" if new_out == OUTCOME_OK else "")))
        old_row, new_row = baseline.rows.get(key), run.rows.get(key)
        if old_row is not None and new_row is None and new_out in RAN:
            found.append(Finding("missing quantity", True, claim, name, "(every measured value)", "recorded",
                                 "absent", f"the case {new_out} but recorded no row"))
        if old_row is None or new_row is None:
            continue  # a case without a row (skipped, not run): its outcome says all
        found += _compare_measured(claim, name, old_row, new_row, tolerances)
        old_t, new_t = _times(old_row), _times(new_row)
        old_wall += old_t.get("duration", 0.0)
        new_wall += new_t.get("duration", 0.0)
        for what in old_t.keys() & new_t.keys():
            a, b = old_t[what], new_t[what]
            if max(a, b) >= time_floor_s and (min(a, b) == 0 or max(a, b) / min(a, b) >= time_ratio):
                ratio = f"×{b / a:.2f}" if a > 0 else "from 0"
                found.append(Finding("time", fail_on_time and b > a, claim, name, what, f"{a:.3g} s", f"{b:.3g} s",
                                     ratio))
    for key, new_case in run.cases.items():
        if key not in baseline.cases:
            found.append(Finding("added case", False, new_case["claim"], _case_name(new_case), baseline="absent",
                                 run=new_case["outcome"]))
    result.wall_s = (old_wall, new_wall)
    return result


def _compare_measured(claim: str, case: str, old_row: ClaimRow, new_row: ClaimRow,
                      tolerances: Tolerances) -> list[Finding]:
    old, new = _flatten(old_row.measured), _flatten(new_row.measured)
    numeric: list[Finding] = []      # numbers beyond tolerance, or no longer numbers
    verdicts: list[tuple] = []       # (quantity, old, new) of verdict-like entries that changed
    other: list[Finding] = []
    held = 0                         # numbers present on both sides
    for name in sorted(old.keys() | new.keys()):
        kind = old_row.kind(name) or new_row.kind(name) or Kind.VERDICT
        if kind == Kind.SECONDS:
            continue
        if name not in new:
            other.append(Finding("missing quantity", True, claim, case, name, show(old[name]), "absent"))
            continue
        if name not in old:
            other.append(Finding("added quantity", False, claim, case, name, "absent", show(new[name])))
            continue
        a, b = old[name], new[name]
        if kind in NOT_NUMBERS:
            if a != b:
                verdicts.append((name, a, b))
            continue
        held += 1
        moved = _moved(a, b, tolerances.lookup(name, kind))
        if moved:
            numeric.append(Finding("moved", True, claim, case, name, show(a), show(b), moved))
    # a verdict flip among numbers that all held still is a threshold crossing, not a regression
    borderline = held > 0 and not numeric
    changed = [Finding("borderline" if borderline else "verdict", not borderline, claim, case, name, show(a),
                       show(b), "numbers within tolerance" if borderline else "") for name, a, b in verdicts]
    return sorted(numeric + changed + other, key=lambda f: f.quantity)


def _moved(old, new, tol: Tolerance) -> str:
    """Empty when within tolerance, else what moved, e.g. ``+5.0% (tol 4%)``, ``[2]: -7.1% (tol 4%)`` or
    ``not a number: null``."""
    if math.isinf(tol.rtol):
        return ""
    xs, ys = _numbers(old), _numbers(new)
    if xs is None or ys is None:
        return "" if old == new else f"not a number: {show(old if xs is None else new)}"
    if isinstance(old, list) != isinstance(new, list) or len(xs) != len(ys):
        return f"shape {show(old)} → {show(new)}"
    size = max((abs(v) for v in xs + ys if math.isfinite(v)), default=0.0) if isinstance(old, list) else 0.0
    for i, (a, b) in enumerate(zip(xs, ys)):
        if not tol.allows(a, b, size):
            where = f"[{i}]: " if isinstance(old, list) else ""
            if math.isfinite(a) and math.isfinite(b) and a != 0:
                return f"{where}{(b - a) / abs(a):+.1%} (tol {tol.rtol:.0%})"
            return f"{where}{a:g} → {b:g} (tol {tol.rtol:g})"
    return ""
