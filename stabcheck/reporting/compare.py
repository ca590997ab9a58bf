"""Run-to-run regression: ``python -m stabcheck compare BASELINE_DIR RUN_DIR``.

Reads the ``claims.json`` of two claims runs and lists, per case (a row's ``test``): outcome
changes, verdict-like entries of ``measured`` (strings, booleans, None, lists that are not all
numbers) that changed, numbers and lists of numbers of ``measured`` that moved beyond their
tolerance, cases and quantities added or missing, and wall-time changes. Every ``measured`` entry is
compared by its type, so new fields need no code here. Exit status 1 on a regression, 0 otherwise.

What counts as a regression: a case that passed and no longer passes (failed, skipped, not run), a
case that newly fails, a case or a measured quantity missing from the run, a number beyond its
tolerance, and a verdict-like change. A verdict-like change in a row whose numbers all stayed within
tolerance is reported as *borderline* instead: the same measurement on the other side of a
threshold (in the two runs below, Theorem 1 at GD's edge went 1.0011 → 0.99998 and its verdict
"unstable (a > 2/eta)" → "stable"). Added cases and quantities, improvements and wall time are reported only
(``--fail-on-time`` makes a slowdown a regression).

Tolerances. A number moved when ``|new − old| > rtol · max(|old|, |new|, scale)``: ``rtol``
relative, ``scale`` the size below which a value counts as zero (lists: also the largest element
of either list, so a list is as accurate as its largest entry). They come from two comparisons:
reports/reference (made on another CPU machine) against a run of the same code on the 2-core
project machine with every minimum retrained, and one minimum retrained there with 1 and 2 threads.

* Measurement alone is reproducible far below any default: float32 Lanczos stops at a relative
  residual of 1e-4 (small scale) or 1e-3 (paper scale), which bounds the eigenvalue's relative
  error; SGD minima that trained alike agree to 1e-7 across the two machines (C3).
* Training is bitwise reproducible on one machine with one thread count, but not across thread
  counts or machines: floating-point reductions run in another order and GD at the edge of
  stability amplifies that. fnn_gd η=0.5 seed 0: a = 3.976 with one thread, 4.024 with two
  (1.2%); across the two machines a moved up to 2.7% and s up to 3.3% (C5, C13).
* Default ``rtol`` 0.04 (``--rtol``): above those 3.3%, 40× the paper-scale solver tolerance,
  and below the 5% move a regression test must catch.
* ``theorem1*``: rtol 0.15, scale 1. The value is read against 1, and at GD's edge (ηa ≈ 2)
  (1 − ηa)² moves 2ηa/|1 − ηa| ≈ 4× as much as a: a's 4% gives about 15%. Measured: 8.1% (C5,
  0.99997 → 1.088) and 0.0575 → 0.0428 for a floor near 0.
* ``p (*`` (p-values): rtol 0.05, scale 1: a probability moves by up to 0.05 (measured 0.015).
* ``*relative*``, ``* vs *`` (relative errors and changes): scale 1; measured 0.0055 at most.
* ``*loss*``: rtol 0.5 (a factor 2). Training stops anywhere below its loss tolerance (final
  losses moved 11%); C9's loss rise after an escape grows exponentially (319 → 189).
* ``*iterations``, ``*products*``, ``*matvecs*`` (counts): rtol 0.25, scale 1: a solver needs a
  few more steps when the minimum moves (power iterations 24 → 26); ±2 of Lanczos's 9–14 is 20%.
* ``* iteration`` (when something happened along a trajectory) and ``final a``: C9 restarts at a
  predicted-unstable point, where the deviation grows 1.09–2.8× per step, so round-off decides
  them: the event iteration is not compared (200 vs 20 measured), the end sharpness gets 0.1
  (moved 4.6%).
* ``*seconds*`` entries are timings, reported with the wall time.

``--rtol-for KEY=VALUE`` (KEY a name or a glob, VALUE a number or ``inf``: not compared) takes
precedence over these rules; the quantity's scale stays. Wall time (``duration_s`` and the
``*seconds*`` entries) is reported when it changed by ``--time-ratio`` (default 2: of the 24
cases over 1 s, 18 differed between the two runs by 0.65–1.4×, the rest by up to 19× where one run
trained a minimum that several cases share, or warmed up, in that case and the other did not) and
either side took ``--time-floor`` seconds (default 1: shorter steps are dominated by scheduling on
a shared machine). Timing statistics are pytest-benchmark's (``--benchmark-autosave``,
``--benchmark-compare``).

>>> tol = Tolerances()
>>> tol.for_quantity("a"), tol.for_quantity("theorem1 floor (1-eta a)^2")
(Tolerance(rtol=0.04, scale=1e-06), Tolerance(rtol=0.15, scale=1.0))
>>> tol.for_quantity("a").allows(20.0, 20.6), tol.for_quantity("a").allows(20.0, 21.0)
(True, False)
>>> Tolerances(overrides=(("theorem1*", 0.01),)).for_quantity("theorem1")
Tolerance(rtol=0.01, scale=1.0)
>>> base = {"rows": [{"claim": "C5", "test": "t::x", "case": "x", "outcome": "passed",
...                   "measured": {"a": 20.0, "verdict": "stable"}, "duration_s": 1.0}]}
>>> run = {"rows": [dict(base["rows"][0], measured={"a": 21.0, "verdict": "stable"})]}
>>> result = compare_runs(Run.from_json(base, "base"), Run.from_json(run, "run"))
>>> [(f.kind, f.quantity, f.detail) for f in result.regressions]
[('moved', 'a', '+5.0% (tol 4%)')]
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .report import ReportError, write_atomic

DEFAULT_RTOL = 0.04
DEFAULT_SCALE = 1e-6        # float32 round-off of an O(1) computation: below this a value is zero
TIME_RATIO = 2.0
TIME_FLOOR_S = 1.0
TIME_PATTERNS = ("*seconds*",)
OUTCOME_OK = "passed"

# (glob on the quantity's name, rtol or None for --rtol, scale); the first match wins. Why: module docstring.
QUANTITY_RULES: tuple[tuple[str, float | None, float], ...] = (
    ("theorem1*", 0.15, 1.0),
    ("p (*", 0.05, 1.0),
    ("*relative*", None, 1.0),
    ("* vs *", None, 1.0),
    ("*loss*", 0.5, DEFAULT_SCALE),
    ("*iterations", 0.25, 1.0),
    ("*products*", 0.25, 1.0),
    ("*matvecs*", 0.25, 1.0),
    ("* iteration", math.inf, 1.0),
    ("final a", 0.1, DEFAULT_SCALE),
)


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
        return abs(new - old) <= self.rtol * max(abs(old), abs(new), self.scale, size)


@dataclass(frozen=True)
class Tolerances:
    """``rtol`` for quantities no rule matches; ``overrides``: (glob, rtol) from ``--rtol-for``, first."""
    rtol: float = DEFAULT_RTOL
    overrides: tuple[tuple[str, float], ...] = ()

    def for_quantity(self, name: str) -> Tolerance:
        rule = next(((rtol, scale) for pattern, rtol, scale in QUANTITY_RULES if _matches(name, pattern)),
                    (None, DEFAULT_SCALE))
        rtol = next((r for pattern, r in self.overrides if _matches(name, pattern)), rule[0])
        return Tolerance(self.rtol if rtol is None else rtol, rule[1])

    def describe(self) -> list[tuple[str, str]]:
        """(quantity pattern, tolerance) in the order they apply, for the report."""
        lines = [(p, f"rtol {_num(r)}") for p, r in self.overrides]
        lines += [(p, f"rtol {_num(self.rtol if r is None else r)}, scale {_num(s)}") for p, r, s in QUANTITY_RULES]
        return lines + [("any other", f"rtol {_num(self.rtol)}, scale {_num(DEFAULT_SCALE)}")]


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def _num(x: float) -> str:
    return "inf (not compared)" if math.isinf(x) else f"{x:g}"


@dataclass(frozen=True)
class Run:
    """One claims run: its cases (test id → case with ``outcome``) and rows (test id → row)."""
    folder: str
    cases: dict[str, dict]
    rows: dict[str, dict]

    @classmethod
    def from_json(cls, data: dict, folder: str) -> "Run":
        """From the parsed ``claims.json`` (rows required; ``cases`` where the writer stored them)."""
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ReportError(f"{folder}: claims.json has no 'rows' list, so it is not a claims run's report "
                              "(give a folder written by 'pytest claims/' or scripts/verify.sh)")
        entries = [*data["rows"], *(data.get("cases") or [])]
        if not all(isinstance(e, dict) and {"claim", "test", "outcome"} <= e.keys() for e in entries):
            raise ReportError(f"{folder}: a row or case of claims.json lacks claim, test or outcome, so it is not "
                              "a claims run's report: rerun the claims to rewrite it")
        rows: dict[str, dict] = {}
        for row in data["rows"]:
            rows[_unique(rows, row["test"])] = row
        cases = {c["test"]: c for c in data.get("cases") or []}
        for key, row in rows.items():
            cases.setdefault(key, {"claim": row["claim"], "test": row["test"], "case": row.get("case", ""),
                                   "outcome": row["outcome"]})
        return cls(str(folder), cases, rows)


def _unique(seen: dict, key: str) -> str:
    """``key``, or ``key #2``, ``#3``, ... when a test recorded more than one row."""
    n, candidate = 1, key
    while candidate in seen:
        n += 1
        candidate = f"{key} #{n}"
    return candidate


def load_run(folder: str | Path) -> Run:
    """The run in ``folder`` (its ``claims.json``); ReportError naming what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist (give the folder of a claims run, "
                          "e.g. reports/reference or reports/run-<time>)")
    path = folder / "claims.json"
    if not path.is_file():
        raise ReportError(f"{folder} has no claims.json, so it is not a claims run's report "
                          "(give a folder written by 'pytest claims/' or scripts/verify.sh)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path} cannot be read as JSON ({err}); rerun the claims to rewrite it") from err
    return Run.from_json(data, str(folder))


@dataclass(frozen=True)
class Finding:
    """One difference. ``kind``: outcome, moved, verdict, borderline, missing case, added case,
    missing quantity, added quantity, time."""
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

    def _sections(self) -> list[tuple[str, list[Finding]]]:
        others = [f for f in self.findings if not f.regression and f.kind != "time"]
        times = [f for f in self.findings if f.kind == "time" and not f.regression]
        return [("Regressions", self.regressions), ("Other changes (not regressions)", others),
                ("Wall time (report only)", times)]

    def text(self) -> str:
        out = [f"compare {self.baseline.folder} → {self.run.folder}", self.headline()]
        for title, findings in self._sections():
            if findings:
                out += ["", f"{title} ({len(findings)})", _text_table(findings)]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"## Claims compared: `{self.baseline.folder}` → `{self.run.folder}`", "",
               f"**{self.headline()}**", ""]
        for title, findings in self._sections():
            if findings:
                out += [f"### {title}", "", "| claim | case | what | quantity | baseline | run | change |",
                        "|---|---|---|---|---|---|---|"]
                out += ["| " + " | ".join(_md_cell(c) for c in _cells(f)) + " |" for f in findings]
                out.append("")
        out += ["<details><summary>Tolerances (first match applies)</summary>", "", "| quantity | tolerance |",
                "|---|---|"]
        out += [f"| `{p}` | {t} |" for p, t in self.tolerances.describe()]
        return "\n".join(out + ["", "</details>", ""])


def _cells(f: Finding) -> list[str]:
    return [f.claim, f.case, f.kind, f.quantity, f.baseline, f.run, f.detail]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _text_table(findings: list[Finding]) -> str:
    rows = [["claim", "case", "what", "quantity", "baseline", "run", "change"]] + [_cells(f) for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
        return text if len(text) <= 60 else f"[{len(value)} values]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(value) -> list[float] | None:
    """The numbers of a number or (nested) list of numbers; None for anything verdict-like."""
    if _is_number(value):
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


def _is_time(name: str) -> bool:
    return any(_matches(name, p) for p in TIME_PATTERNS)


def _times(row: dict) -> dict[str, float]:
    """A row's wall times in seconds: ``duration`` (``duration_s``, which holds its ``timings_s``) and
    the ``*seconds*`` entries of ``measured``."""
    times = {"duration": row["duration_s"]} if _is_number(row.get("duration_s")) else {}
    return times | {k: v for k, v in _flatten(row.get("measured") or {}).items() if _is_time(k) and _is_number(v)}


def _case_name(case: dict) -> str:
    return case["test"].split("::")[-1]



def compare_runs(baseline: Run, run: Run, tolerances: Tolerances = Tolerances(), *, time_ratio: float = TIME_RATIO,
                 time_floor_s: float = TIME_FLOOR_S, fail_on_time: bool = False) -> Comparison:
    """Every difference between two runs, regressions flagged (see the module docstring)."""
    result = Comparison(baseline, run, tolerances)
    found = result.findings
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
        if old_row is None or new_row is None:
            continue  # a case without a row (skipped, not run): its outcome says all
        found += _compare_measured(claim, name, old_row.get("measured") or {}, new_row.get("measured") or {},
                                   tolerances)
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


def _compare_measured(claim: str, case: str, old: dict, new: dict, tolerances: Tolerances) -> list[Finding]:
    old, new = _flatten(old), _flatten(new)
    numeric: list[Finding] = []      # numbers beyond tolerance
    verdicts: list[tuple] = []       # (quantity, old, new) of verdict-like entries that changed
    other: list[Finding] = []
    for name in old.keys() | new.keys():
        if _is_time(name):
            continue
        if name not in new:
            other.append(Finding("missing quantity", True, claim, case, name, _show(old[name]), "absent"))
            continue
        if name not in old:
            other.append(Finding("added quantity", False, claim, case, name, "absent", _show(new[name])))
            continue
        a, b = old[name], new[name]
        xs, ys = _numbers(a), _numbers(b)
        if xs is None or ys is None:
            if a != b:
                verdicts.append((name, a, b))
            continue
        moved = _moved(xs, ys, tolerances.for_quantity(name), isinstance(a, list))
        if moved:
            numeric.append(Finding("moved", True, claim, case, name, _show(a), _show(b), moved))
    # a verdict flip among numbers that all held still is a threshold crossing, not a regression
    has_numbers = any(_numbers(v) is not None for k, v in old.items() if k in new and not _is_time(k))
    borderline = has_numbers and not numeric
    changed = [Finding("borderline" if borderline else "verdict", not borderline, claim, case, name, _show(a),
                       _show(b), "numbers within tolerance" if borderline else "") for name, a, b in verdicts]
    return sorted(numeric + changed + other, key=lambda f: f.quantity)


def _moved(xs: list[float], ys: list[float], tol: Tolerance, is_list: bool) -> str:
    """Empty when within tolerance, else what moved, e.g. ``+5.0% (tol 4%)`` or ``[2]: -7.1% (tol 4%)``."""
    if len(xs) != len(ys):
        return f"length {len(xs)} → {len(ys)}"
    if math.isinf(tol.rtol):
        return ""
    size = max((abs(v) for v in xs + ys if math.isfinite(v)), default=0.0) if is_list else 0.0
    for i, (a, b) in enumerate(zip(xs, ys)):
        if not tol.allows(a, b, size):
            where = f"[{i}]: " if is_list else ""
            if math.isfinite(a) and math.isfinite(b) and a != 0:
                return f"{where}{(b - a) / abs(a):+.1%} (tol {tol.rtol:.0%})"
            return f"{where}{a:g} → {b:g} (tol {tol.rtol:.0%})"
    return ""


def parse_rtol_for(text: str) -> tuple[str, float]:
    """``KEY=VALUE`` of ``--rtol-for`` → (KEY, VALUE); VALUE a number ≥ 0 or ``inf``.

    >>> parse_rtol_for("theorem1*=0.05"), parse_rtol_for("left at iteration=inf")
    (('theorem1*', 0.05), ('left at iteration', inf))
    """
    key, eq, value = text.rpartition("=")
    try:
        rtol = float(value)
    except ValueError:
        rtol = math.nan
    if not eq or not key or not rtol >= 0:
        raise argparse.ArgumentTypeError(f"--rtol-for {text!r}: expected QUANTITY=RTOL with RTOL a number ≥ 0 or "
                                         "'inf' (example: --rtol-for 'theorem1*=0.05')")
    return key, rtol


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}")
    return value


def add_parser(sub) -> None:
    """The ``compare`` subcommand on the command line's subparsers."""
    c = sub.add_parser("compare", help="regressions between two claims runs (exit 1 on a regression)",
                       description="Compare the claims.json of two claims runs case by case: outcome and verdict "
                                   "changes, measured values beyond tolerance, cases added or missing, wall time. "
                                   "Exit status 1 on a regression, 0 otherwise, 2 on bad input.")
    c.add_argument("baseline", help="report folder of the reference run (e.g. reports/reference)")
    c.add_argument("run", help="report folder of the run to check (e.g. reports/run-<time>)")
    c.add_argument("--markdown", metavar="FILE", help="also write the comparison as Markdown (e.g. for a CI job page)")
    c.add_argument("--rtol", type=_non_negative, default=DEFAULT_RTOL,
                   help=f"relative tolerance of quantities that no per-quantity rule matches (default {DEFAULT_RTOL})")
    c.add_argument("--rtol-for", type=parse_rtol_for, action="append", default=[], metavar="QUANTITY=RTOL",
                   help="tolerance of one quantity of 'measured' (a name or a glob; RTOL 'inf': not compared); "
                        "repeatable, before the built-in rules")
    c.add_argument("--time-ratio", type=_non_negative, default=TIME_RATIO,
                   help=f"report wall times that changed by this factor or more (default {TIME_RATIO:g})")
    c.add_argument("--time-floor", type=_non_negative, default=TIME_FLOOR_S, metavar="SECONDS",
                   help=f"ignore wall times under this on both sides (default {TIME_FLOOR_S:g} s)")
    c.add_argument("--fail-on-time", action="store_true",
                   help="a wall time that grew by --time-ratio counts as a regression (default: report only)")


def run_command(args) -> int:
    """``compare``'s work for parsed arguments: table on stdout, optional Markdown; the exit status."""
    result = compare_runs(load_run(args.baseline), load_run(args.run),
                          Tolerances(args.rtol, tuple(args.rtol_for)), time_ratio=args.time_ratio,
                          time_floor_s=args.time_floor, fail_on_time=args.fail_on_time)
    print(result.text())
    if args.markdown:
        write_atomic(Path(args.markdown), result.markdown())
    return result.exit_status
