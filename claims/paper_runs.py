"""One report from several budgeted runs of the claims, and the cases those runs have not yet run.

A plan too long for one sitting (``scripts/paper_cpu.sh``) runs as budgeted pytest invocations, each
writing its own report folder under one root; the minima they train stay in the minima cache, so a
later invocation resumes. This module makes the single report of every case that has run:

    python -m claims.paper_runs merge OUT RUN [RUN ...] [--collected IDS]   # claims.json, claims.md, figures
    python -m claims.paper_runs pending RUN [RUN ...] < ids  # the node ids (one a line) no RUN has run
    python -m claims.paper_runs settings REPORT               # per trained setting: ours beside the paper's

``merge`` takes each case from the latest run (in the order given) in which it ran (passed, failed or
skipped), with that run's rows and timings; a case none of them ran stays "not run" with the latest
reason. ``OUT/runs.json`` names the runs and how many cases each contributed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from claims.profiles import PAPER_C5, PAPER_C6

from stabcheck.reporting.runs import load_run
from stabcheck.reporting.report import ReportError, write_atomic, write_report

RAN = ("passed", "xfailed", "failed", "skipped")


def load(folder: Path) -> dict:
    """cases, rows, benchmarks and stopped of a run folder (ReportError naming what is wrong otherwise)."""
    run = load_run(folder)
    data = json.loads((Path(folder) / "claims.json").read_text(encoding="utf-8"))
    return {"cases": list(run.cases.values()), "rows": [row.as_json() for row in run.rows.values()],
            "benchmarks": data.get("benchmarks") or [], "stopped": data.get("stopped") or ""}


def merge(runs: list[Path], collected: set[str] | None = None
          ) -> tuple[list[dict], list[dict], list[dict], str, dict[str, int]]:
    """(rows, benchmarks, cases, stopped, cases taken per run) of the runs, each case from the latest run
    that ran it (else the latest that listed it); with ``collected`` (the node ids the plan has now), only
    those: a case an earlier plan had (e.g. a run left out since) is dropped with its rows."""
    chosen: dict[str, tuple[str, dict]] = {}   # node id -> (run, case)
    reports = {str(run): load(run) for run in runs}
    for run, report in reports.items():
        for case in report["cases"]:
            if collected is not None and case["test"] not in collected:
                continue
            earlier = chosen.get(case["test"])
            if case["outcome"] in RAN or earlier is None or earlier[1]["outcome"] not in RAN:
                chosen[case["test"]] = (run, case)
    rows = [row for run, report in reports.items() for row in report.get("rows", [])
            if chosen.get(row["test"], (None,))[0] == run]
    benchmarks = [b for run, report in reports.items() for b in report.get("benchmarks", [])
                  if chosen.get(b.get("name"), (None,))[0] == run]
    cases = [case for _, case in chosen.values()]
    taken = {run: sum(r == run and c["outcome"] in RAN for r, c in chosen.values()) for run in reports}
    left = sum(c["outcome"] not in RAN for c in cases)
    last_stop = next((r["stopped"] for r in reversed(list(reports.values())) if r.get("stopped")), "")
    stopped = f"{left} case(s) not run yet in {len(runs)} run(s); the last stop: {last_stop}" if left else ""
    return rows, benchmarks, cases, stopped, taken


def write_merged(out: Path, runs: list[Path], collected: set[str] | None = None) -> Path:
    """Write the merged claims.json, claims.md, runs.json and figures into ``out`` (``collected``: see merge)."""
    rows, benchmarks, cases, stopped, taken = merge(runs, collected)
    folder = write_report(Path(out), rows, benchmarks, cases, stopped)
    write_atomic(folder / "runs.json", json.dumps({"runs": taken}, indent=1))
    from stabcheck.reporting.figures import draw_all

    draw_all(folder)
    return folder


def pending(ids: list[str], runs: list[Path]) -> list[str]:
    """The node ids among ``ids`` that none of the runs ran."""
    ran = {c["test"] for run in runs for c in load(run)["cases"] if c["outcome"] in RAN}
    return [i for i in ids if i not in ran]


def minima_points(rows: list[dict]) -> dict[str, dict]:
    """Every trained minimum the rows measured, once (by label; the last row's measurement)."""
    return {p["label"]: p for row in rows for p in row.get("minima") or [] if "label" in p}


def _spread(values: list[float], digits: int = 4) -> str:
    mean = statistics.fmean(values)
    sd = f" ± {statistics.stdev(values):.{digits - 1}g}" if len(values) > 1 else ""
    return f"{mean:.{digits}g}{sd}"


def _range(values: list[float], fmt: str = ".3g") -> str:
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def settings_table(rows: list[dict]) -> str:
    """A markdown table, a line per trained setting (setup, η, B, μ): seeds, mean ± sd of a and s beside the
    paper's means (PAPER.md §4, §6) where it gives them, a·η/2 and s/bound over the seeds, the sample-form
    Theorem 1's μ with how many seeds it certified, and the wall seconds of training (a minimum trained in an
    ensemble shows the whole ensemble's) and of measuring one minimum."""
    settings: dict[tuple, list[dict]] = {}
    for p in minima_points(rows).values():
        settings.setdefault((p["setup"], p["lr"], p["B"] or p["n"], p.get("mu") or 0.0), []).append(p)
    lines = ["| setting | seeds | a: ours / paper | s: ours / paper | a·η/2 | s/bound | μ (certified) | train s | "
             "measure s |", "|---|---|---|---|---|---|---|---|---|"]
    for (setup, lr, b, mu), points in sorted(settings.items()):
        gd = b == points[0]["n"]
        paper_a, paper_s = ((PAPER_C5[k].get(setup, {}).get(lr) for k in ("mean a", "mean s")) if gd and not mu
                            else (None, None))
        paper_as = PAPER_C6["a, s"].get(setup, {}).get((lr, None if gd else b)) if not mu else None
        paper_a, paper_s = paper_as if paper_as else (paper_a, paper_s)
        mus = [p["theorem1 mu"] for p in points if p.get("theorem1 mu") is not None]
        certified = sum(p.get("theorem1 mu verdict") == "certified stable" for p in points)
        measure = [sum(v for v in p["measure s"].values()) for p in points if p.get("measure s")]
        name = f"{setup} {'GD' if gd else 'SGD'} η = {lr:g}" + ("" if gd else f", B = {b}") + (f", μ = {mu:g}" if mu else "")
        lines.append(" | ".join([
            f"| {name}", str(len(points)),
            f"{_spread([p['a'] for p in points])} / {'–' if paper_a is None else f'{paper_a:g}'}",
            f"{_spread([p['s'] for p in points])} / {'–' if paper_s is None else f'{paper_s:g}'}",
            _range([p["a eta/2"] for p in points]), "–" if gd else _range([p["s/bound"] for p in points]),
            f"{_range(mus)} ({certified}/{len(points)})" if mus else "–",
            _range([p["train s"] for p in points], ".0f"), _range(measure, ".0f") if measure else "–"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claims.paper_runs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="one report of every case the runs ran")
    m.add_argument("out", type=Path)
    m.add_argument("runs", type=Path, nargs="+")
    m.add_argument("--collected", type=Path, help="a file of the node ids the plan collects now (one a line): "
                                                  "cases of earlier plans outside it are dropped")
    p = sub.add_parser("pending", help="the node ids on stdin that none of the runs ran")
    p.add_argument("runs", type=Path, nargs="*")
    t = sub.add_parser("settings", help="a markdown table per trained setting of a report, ours beside the paper's")
    t.add_argument("report", type=Path, help="a report folder (its claims.json)")
    args = parser.parse_args(argv)
    try:
        if args.command == "merge":
            collected = None
            if args.collected is not None:
                try:
                    collected = {line.strip() for line in args.collected.read_text().splitlines() if line.strip()}
                except OSError as err:
                    raise ReportError(f"cannot read --collected {args.collected}: {err}") from None
            folder = write_merged(args.out, args.runs, collected)
            print(f"[paper_runs] merged {len(args.runs)} run(s) into {folder}")
        elif args.command == "settings":
            print(settings_table(load(args.report)["rows"]), end="")
        else:
            ids = [line.strip() for line in sys.stdin if line.strip()]
            for node in pending(ids, args.runs):
                print(node)
    except ReportError as err:
        print(f"[paper_runs] {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
