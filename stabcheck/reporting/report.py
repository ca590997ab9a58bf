"""The report of a claims run: ``claims.json`` and ``claims.md``.

``claims.json`` (standard JSON: non-finite numbers as ``"Infinity"``, ``"-Infinity"``, ``"NaN"``,
:mod:`.rows`) holds ``schema``, ``summary`` (one entry per claim: verdict, cases passed of total, the headline
figure beside the paper's), ``stopped`` (why the run stopped early, or empty), ``cases`` (every case
of the run with its outcome, those that did not run included), ``rows`` (one per case that recorded
its measurement, :class:`~.rows.ClaimRow`: measured values with their kinds) and ``benchmarks``. ``claims.md`` shows the summary first, then a table per claim.

A row may carry ``headline``: a list of ``{"what", "ours", "paper"}``, the paper's number or, as a
string, why there is none; the summary shows each ``what`` once.

>>> rows = [{"claim": "C5", "test": "t::a", "case": "a", "outcome": "passed",
...          "headline": [{"what": "mean a at lr=0.1", "ours": 19.2, "paper": 19.6}]}]
>>> cases = [{"claim": "C5", "test": "t::a", "case": "a", "outcome": "passed"},
...          {"claim": "C5", "test": "t::b", "case": "b", "outcome": "not run"}]
>>> [summary_line(s) for s in summarise(rows, cases)]
['C5: partial, 1 of 2 cases passed; mean a at lr=0.1: ours 19.2, paper 19.6']
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..files import write_atomic
from .rows import SCHEMA, ReportError, encode_numbers
from .tables import table

__all__ = ["ReportError", "write_atomic", "write_report", "summarise", "summary_line", "render_markdown"]


NO_PAPER_NUMBER = "paper gives no number"
#: An expected failure: the case failed as its test declares, naming a measured finding (its ``reason``).
XFAILED = "xfailed"
OUTCOMES = ("passed", XFAILED, "failed", "skipped", "not run")


def write_report(folder: Path, rows: list[dict], benchmarks: list[dict], cases: list[dict] | None = None,
                 stopped: str = "") -> Path:
    """Write ``claims.json`` and ``claims.md`` into ``folder``.

    ``cases``: every case of the run, ``{"claim", "test", "case", "outcome"}`` with an outcome in
    :data:`OUTCOMES` (and optionally ``"estimate"``, its estimated cost, for those that did not run);
    by default the cases that recorded a row. ``stopped``: why the run stopped before its end.
    """
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: (_claim_order(r["claim"]), r["test"]))
    cases = sorted(cases if cases is not None else cases_of(rows), key=lambda c: (_claim_order(c["claim"]), c["test"]))
    summary = summarise(rows, cases)
    report = {"schema": SCHEMA, "summary": summary, "stopped": stopped, "cases": cases, "rows": rows,
              "benchmarks": benchmarks}
    write_atomic(folder / "claims.json", json.dumps(encode_numbers(report), indent=1, allow_nan=False))
    write_atomic(folder / "claims.md", render_markdown(rows, benchmarks, summary, cases, stopped))
    return folder


def cases_of(rows: list[dict]) -> list[dict]:
    """The cases of the rows (one per test), as :func:`write_report` takes them."""
    cases = {r["test"]: {"claim": r["claim"], "test": r["test"], "case": r["case"], "outcome": r["outcome"]}
             for r in rows}
    return list(cases.values())


def summarise(rows: list[dict], cases: list[dict]) -> list[dict]:
    """Per claim: verdict (passed / passed with findings / failed / partial / not run), cases passed of total,
    expected failures, headline figures. "passed with findings": every case passed but the expected failures."""
    by_claim: dict[str, list[dict]] = defaultdict(list)
    for c in cases:
        by_claim[c["claim"]].append(c)
    figures: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        for f in r.get("headline", []):
            figures[r["claim"]].setdefault(f["what"], f)
    summary = []
    for claim in sorted(by_claim, key=_claim_order):
        outcomes = [c["outcome"] for c in by_claim[claim]]
        passed, expected, total = outcomes.count("passed"), outcomes.count(XFAILED), len(outcomes)
        verdict = ("failed" if "failed" in outcomes else "passed" if passed == total
                   else "passed with findings" if passed + expected == total
                   else "not run" if passed + expected == 0 else "partial")
        summary.append({"claim": claim, "verdict": verdict, "passed": passed, "expected failures": expected,
                        "total": total, "headline": list(figures[claim].values())})
    return summary


def headline_text(figures: list[dict]) -> str:
    """``what: ours X, paper Y`` per figure; a reason for no paper number is said once at the end."""
    if not figures:
        return NO_PAPER_NUMBER
    reasons = list(dict.fromkeys(f["paper"] for f in figures if isinstance(f["paper"], str)))
    parts = [f"{f['what']}: ours {_fmt(f['ours'])}"
             + ("" if isinstance(f["paper"], str) else f", paper {_fmt(f['paper'])}") for f in figures]
    return "; ".join(parts) + (f" ({'; '.join(reasons)})" if reasons else "")


def summary_headline(entry: dict) -> str:
    """The headline of a summary entry; none for a claim of which no case ran."""
    return "" if entry["verdict"] == "not run" else headline_text(entry["headline"])


def summary_line(entry: dict) -> str:
    """One line of the summary, e.g. ``C6: passed, 3 of 3 cases passed; a, s at B=10: ours [...], paper [...]``."""
    headline = summary_headline(entry)
    return (f"{entry['claim']}: {entry['verdict']}, {passed_text(entry)}" + (f"; {headline}" if headline else ""))


def passed_text(entry: dict) -> str:
    """``3 of 4 cases passed`` and, where there are any, ``, 1 expected failure``."""
    return f"{entry['passed']} of {entry['total']} cases passed" + (
        f", {expected_text(entry)}" if entry.get("expected failures") else "")


def expected_text(entry: dict) -> str:
    """``1 expected failure``, ``2 expected failures``."""
    expected = entry.get("expected failures", 0)
    return f"{expected} expected failure{'s' * (expected != 1)}"


def _claim_order(claim: str) -> tuple[int, str]:
    digits = "".join(c for c in claim if c.isdigit())
    return (int(digits) if digits else 999, claim)


def _fmt(v) -> str:
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return f"[{len(v)} values]" if len(v) > 6 else "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _entries(values: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def render_markdown(rows: list[dict], benchmarks: list[dict], summary: list[dict] | None = None,
                    cases: list[dict] | None = None, stopped: str = "") -> str:
    cases = cases if cases is not None else cases_of(rows)
    summary = summary if summary is not None else summarise(rows, cases)
    by_claim: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_claim[r["claim"]].append(r)
    out = ["# Claim report", ""]
    passed = sum(c["outcome"] == "passed" for c in cases)
    expected = [c for c in cases if c["outcome"] == XFAILED]
    setting = ""
    if rows:
        r0 = rows[0]
        setting = (f" Scale `{r0['scale']}`, device `{r0['device']}`, torch {r0['versions']['torch']}, "
                   f"stabcheck {r0['versions']['stabcheck']}.")
    out += [f"{passed} of {len(cases)} cases passed"
            + (f", {len(expected)} failed as expected, each naming a finding (listed at the end)" if expected else "")
            + f".{setting}", ""]
    not_run = [c for c in cases if c["outcome"] == "not run"]
    if stopped:
        out += [f"**The run stopped early: {stopped}.** {len(not_run)} cases did not run (listed at the end).", ""]
    out += ["## Summary", "", table(["claim", "verdict", "cases passed", "headline: ours vs the paper"],
                                    [[s["claim"], s["verdict"], f"{s['passed']} of {s['total']}" + (
                                        f" ({expected_text(s)})" if s.get("expected failures") else ""),
                                      summary_headline(s) or "—"] for s in summary], markdown=True), ""]
    for claim, group in by_claim.items():
        cells = [[f"`{r['case'] or r['test'].split('::')[-1]}`", _entries(r["measured"]), _entries(r["expected"]),
                  r["outcome"], r.get("duration_s", "")] for r in group]
        out += [f"## {claim}", "", table(["case", "measured", "paper / bound", "verdict", "time (s)"], cells,
                                         markdown=True), ""]
    if not_run:
        out += ["## Cases that did not run", "",
                table(["case", "claim", "estimated cost", "why"],
                      [[f"`{c['test']}`", c["claim"], c.get("estimate", ""), c.get("reason", "")] for c in not_run],
                      markdown=True), ""]
    if expected:
        out += ["## Expected failures (findings)", "",
                table(["case", "claim", "finding"], [[f"`{c['test']}`", c["claim"], c.get("reason", "")]
                                                     for c in expected], markdown=True), ""]
    crashed = [c for c in cases if c["outcome"] == "failed" and c.get("reason")]
    if crashed:
        out += ["## Cases that did not finish", "",
                table(["case", "claim", "why"], [[f"`{c['test']}`", c["claim"], c["reason"]] for c in crashed],
                      markdown=True), ""]
    if benchmarks:
        out += ["## Benchmark timings (pytest-benchmark)", "",
                table(["benchmark", "median (s)", "rounds"],
                      [[f"`{b['name']}`", f"{b['median_s']:.4g}", b["rounds"]] for b in benchmarks], markdown=True), ""]
    return "\n".join(out)
