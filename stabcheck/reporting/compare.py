"""Run-to-run regression: ``python -m stabcheck compare BASELINE_DIR RUN_DIR``.

Reads the ``claims.json`` of two claims runs (:mod:`.runs`), lists every difference (:mod:`.diff`)
with the tolerance of each value's kind (:mod:`.tolerance`, which says where each tolerance comes
from) and prints it (:mod:`.render`). Exit status 1 on a regression, 0 otherwise, 2 on unusable
input (a folder, file, row or option that cannot be used), with one ``error:`` line.
"""
from __future__ import annotations

from pathlib import Path

from .diff import TIME_FLOOR_S, TIME_RATIO, Comparison, compare_runs
from .render import comparison_markdown, comparison_text
from .report import ReportError, write_atomic
from .runs import load_run
from .tolerance import DEFAULT_RTOL, Tolerances, non_negative, parse_rtol_for

__all__ = ["Comparison", "compare_runs", "load_run", "Tolerances", "add_parser", "run_command"]


def add_parser(sub) -> None:
    """The ``compare`` subcommand on the command line's subparsers (values are checked by :func:`run_command`)."""
    c = sub.add_parser("compare", help="regressions between two claims runs (exit 1 on a regression)",
                       description="Compare the claims.json of two claims runs case by case: outcome and verdict "
                                   "changes, measured values beyond the tolerance of their kind, cases added or "
                                   "missing, wall time. Exit status 1 on a regression, 0 otherwise, 2 on bad input.")
    c.add_argument("baseline", help="report folder of the reference run (e.g. reports/reference)")
    c.add_argument("run", help="report folder of the run to check (e.g. reports/run-<time>)")
    c.add_argument("--markdown", metavar="FILE", help="also write the comparison as Markdown (e.g. for a CI job page)")
    c.add_argument("--rtol", default=str(DEFAULT_RTOL),
                   help=f"relative tolerance of the kinds that have no rule of their own (default {DEFAULT_RTOL})")
    c.add_argument("--rtol-for", action="append", default=[], metavar="KIND=RTOL",
                   help="tolerance of a kind of value (e.g. theorem1, sharpness, p-value, loss) or of a quantity "
                        "by name or glob; RTOL 'inf': not compared; repeatable, the first match wins, before the "
                        "rules by kind")
    c.add_argument("--time-ratio", default=str(TIME_RATIO),
                   help=f"report wall times that changed by this factor or more (default {TIME_RATIO:g})")
    c.add_argument("--time-floor", default=str(TIME_FLOOR_S), metavar="SECONDS",
                   help=f"ignore wall times under this on both sides (default {TIME_FLOOR_S:g} s)")
    c.add_argument("--fail-on-time", action="store_true",
                   help="a wall time that grew by --time-ratio counts as a regression (default: report only)")


def _markdown_target(text: str | None) -> Path | None:
    if not text:
        return None
    path = Path(text)
    if path.is_dir():
        raise ReportError(f"--markdown {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise ReportError(f"--markdown {path}: the folder {path.parent} does not exist or is not a folder")
    return path


def run_command(args) -> int:
    """``compare``'s work for parsed arguments: table on stdout, optional Markdown; the exit status.
    Unusable input raises :class:`ReportError` (the command line prints it and exits 2)."""
    tolerances = Tolerances(non_negative(args.rtol, "--rtol"), tuple(parse_rtol_for(t) for t in args.rtol_for))
    markdown = _markdown_target(args.markdown)
    result = compare_runs(load_run(args.baseline), load_run(args.run), tolerances,
                          time_ratio=non_negative(args.time_ratio, "--time-ratio"),
                          time_floor_s=non_negative(args.time_floor, "--time-floor"), fail_on_time=args.fail_on_time)
    if markdown:
        try:
            write_atomic(markdown, comparison_markdown(result))
        except OSError as err:
            raise ReportError(f"--markdown {markdown}: cannot write ({err.strerror or err})") from None
    print(comparison_text(result))
    return result.exit_status
