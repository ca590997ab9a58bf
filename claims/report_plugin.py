"""The ``claim`` fixture and the hooks that turn a claims run into its report (a pytest plugin the root
conftest loads).

A claim test calls ``claim.measure(fn)`` for its timed measurement (pytest-benchmark when active,
always the row's own wall time too) and ``claim.record(measured=..., expected=...)`` *before* it
asserts, so failing cases are reported as well. Rows travel in ``user_properties`` and so also
reach the controller under pytest-xdist.

At the end of a run (also one stopped by ``--budget``, ``-x`` or Ctrl-C) the plugin writes
``claims.json`` and ``claims.md`` (:mod:`stabcheck.reporting.report`) with every case of the run,
those that did not run included (a case whose xdist worker died: failed, reason "worker crashed"),
then ``benchmark.json`` and the figures, and prints the per-claim summary at the end of pytest's
output. A reused ``--report-dir`` first loses the previous run's outputs; a Ctrl-C while the report
is written leaves what was written and the summary names what was not.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import stabcheck
from claims.options import suite_options
from claims.schedule import claim_of, schedule_of
from stabcheck.reporting.report import XFAILED, summarise, summary_line, write_atomic, write_report
from stabcheck.reporting.rows import ClaimRow, encode_numbers, measured_with_kinds

ROOT = Path(__file__).resolve().parent.parent
REPORT_FILES = "claims.json and claims.md"


class ClaimRecorder:
    def __init__(self, request, benchmark):
        claim_id = claim_of(request.node)
        if claim_id is None:
            raise pytest.UsageError(f"{request.node.nodeid} uses the claim fixture without @pytest.mark.claim('Cn')")
        self._request = request
        self._benchmark = benchmark
        self.claim_id = claim_id
        self.timings: dict[str, float] = {}
        self._measured = False

    def measure(self, fn, *args, name: str = "measure", **kwargs):
        """Run fn(*args, **kwargs) once, timed; the first call goes through pytest-benchmark."""
        start = time.perf_counter()
        if not self._measured:
            self._measured = True
            result = self._benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=1, iterations=1)
        else:
            result = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - start, 4)
        return result

    def record(self, *, measured: dict, expected: dict, kinds: dict | None = None, tag: str = "",
               seed: int | None = None, dtype: str | None = None, note: str = "", **extra):
        """One report row: what we measured beside what the paper says (a value, bound or expectation).

        Every number of ``measured`` carries its kind (:class:`stabcheck.reporting.rows.Kind`): given as
        ``Kind.SHARPNESS(a)``, or named in ``kinds`` (for entries built elsewhere); strings and booleans
        are verdicts. ``tag`` names what the row is for the figures that draw it. ``extra`` fields are
        kept as given, e.g. ``minimum``/``minima`` (measured minima, for the figures) or ``headline``
        (the claim's headline figures beside the paper's, for the summary).
        """
        options = suite_options(self._request.config)
        callspec = getattr(self._request.node, "callspec", None)
        values, value_kinds = measured_with_kinds(measured, kinds)
        row = ClaimRow(
            claim=self.claim_id, test=self._request.node.nodeid, outcome="", case=callspec.id if callspec else "",
            measured=_jsonable(values), kinds=value_kinds, tag=tag,
            extra={"params": {k: _jsonable(v) for k, v in (callspec.params.items() if callspec else [])},
                   "expected": _jsonable(expected), "seed": options.seed if seed is None else seed, "dtype": dtype,
                   "scale": options.scale, "device": options.device, "timings_s": dict(self.timings),
                   "versions": {"stabcheck": stabcheck.__version__, "torch": str(torch.__version__)}, "note": note,
                   **_jsonable(extra)})
        # As JSON text: execnet (xdist) only ships plain builtins.
        self._request.node.user_properties.append(("claim_row", json.dumps(row.as_json(), allow_nan=False)))


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


@pytest.fixture
def claim(request, benchmark) -> ClaimRecorder:
    return ClaimRecorder(request, benchmark)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    claim_id = claim_of(item)
    if claim_id:
        # the claim travels with every report of the case, so the controller knows it under xdist too
        item.user_properties.append(("claim", claim_id))


class ClaimReportPlugin:
    """Collects the cases and rows of a run and writes the report folder at its end (controller only)."""

    def __init__(self, config):
        self.config = config
        self.cases: dict[str, dict] = {}   # nodeid → {"claim", "test", "case", "outcome", "reason"}
        self.rows: list[dict] = []
        self.summary: list[dict] = []
        self.stopped = ""
        self.folder: Path | None = None
        self.figures: list[Path] = []
        self.figure_error = ""
        self.unwritten: list[str] = []   # outputs a Ctrl-C during the writing kept from being written

    def pytest_collection_finish(self, session):
        for item in session.items:
            claim_id = claim_of(item)
            if claim_id:
                callspec = getattr(item, "callspec", None)
                self.cases[item.nodeid] = {"claim": claim_id, "test": item.nodeid,
                                           "case": callspec.id if callspec else "", "outcome": "not run"}

    def pytest_runtest_logreport(self, report):
        props = dict((k, v) for k, v in report.user_properties if k == "claim")
        if "claim" not in props:
            # xdist's report of a worker that died carries no properties: the case is known from its setup
            if report.failed and report.when not in ("setup", "call", "teardown") and report.nodeid in self.cases:
                crash = str(report.longrepr).strip().splitlines()
                self.cases[report.nodeid].update(outcome="failed", reason="worker crashed" + (
                    f": {crash[0]}" if crash else ""))
            return
        case = self.cases.setdefault(report.nodeid, {"claim": props["claim"], "test": report.nodeid,
                                                     "case": report.nodeid.partition("[")[2].rstrip("]"),
                                                     "outcome": "not run"})
        if report.nodeid == schedule_of(self.config).interrupted:
            case["outcome"], case["reason"] = "not run", "interrupted: budget spent"
            return
        if report.when == "call" or report.failed or (report.when == "setup" and report.skipped):
            case["outcome"] = "failed" if report.failed else report.outcome
            if hasattr(report, "wasxfail") and report.skipped:
                case["outcome"], case["reason"] = XFAILED, report.wasxfail   # pytest reports an xfail as a skip
            elif report.skipped:
                case["reason"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if report.when == "call":
            for key, row in report.user_properties:
                if key == "claim_row":
                    self.rows.append(dict(json.loads(row), outcome=case["outcome"],
                                          duration_s=round(report.duration, 4)))

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput") or self.config.option.collectonly or not self.cases:
            return
        schedule = schedule_of(self.config)
        self.stopped = schedule.stopped or (
            "interrupted (Ctrl-C)" if exitstatus == pytest.ExitCode.INTERRUPTED
            else str(session.shouldstop) if session.shouldstop else "")
        cases = list(self.cases.values())
        for case in cases:
            if case["outcome"] == "not run":
                case.setdefault("reason", self.stopped)
                case["estimate"] = schedule.estimates.get(case["test"], "")
        self.summary = summarise(self.rows, cases)
        self.folder = Path(suite_options(self.config).report_dir
                           or ROOT / "reports" / time.strftime("run-%Y%m%d-%H%M%S"))
        steps = [(REPORT_FILES, lambda: write_report(self.folder, self.rows, _benchmark_stats(self.config), cases,
                                                      self.stopped)),
                 ("benchmark.json", lambda: _write_benchmark_json(self.config, self.folder)),
                 ("figures", self._draw_figures)]
        _clear_previous_outputs(self.folder)
        for i, (_, step) in enumerate(steps):
            try:
                step()
            except KeyboardInterrupt:  # Ctrl-C while the report is written: say what was not, exit as interrupted
                self.unwritten = [name for name, _ in steps[i:]]
                session.exitstatus = pytest.ExitCode.INTERRUPTED
                return

    def _draw_figures(self) -> None:
        from stabcheck.reporting.figures import draw_all

        try:
            self.figures = draw_all(self.folder)
        except Exception as err:  # noqa: BLE001 - a figure must not turn a verified claim red
            self.figure_error = f"{type(err).__name__}: {err}"

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter):
        if not self.folder:
            return
        terminalreporter.write_sep("=", "claims summary")
        for entry in self.summary:
            terminalreporter.write_line(summary_line(entry))
        if self.stopped:
            not_run = sum(c["outcome"] == "not run" for c in self.cases.values())
            terminalreporter.write_line(f"the run stopped early: {self.stopped}; {not_run} cases did not run "
                                        "(listed in claims.md)")
        if self.unwritten:
            terminalreporter.write_sep("=", f"claim report in {self.folder} NOT complete")
            terminalreporter.write_line(f"  interrupted (Ctrl-C) while writing it: {', '.join(self.unwritten)} not "
                                        "written" + (f" (redraw the figures with: python -m stabcheck report "
                                                     f"{self.folder})" if REPORT_FILES not in self.unwritten else ""))
            return
        terminalreporter.write_sep("=", f"claim report written to {self.folder}")
        terminalreporter.write_line(f"  claims.json, claims.md and {len(self.figures)} figures "
                                    f"({', '.join(p.name for p in self.figures)})")
        if self.figure_error:
            terminalreporter.write_line(f"  figures failed: {self.figure_error} "
                                        f"(redraw with: python -m stabcheck report {self.folder})")


def _clear_previous_outputs(folder: Path) -> None:
    """A reused report folder loses the previous run's outputs, so none stays beside the new report."""
    from stabcheck.reporting.figures import FIGURES

    for name in ("claims.json", "claims.md", "benchmark.json", *FIGURES):
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()


def _benchmark_session(config):
    """pytest-benchmark's session when it measured something (it is disabled under xdist)."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return None
    return session


def _finished_benchmarks(config) -> list:
    """The benchmarks that hold data: an interrupted test leaves one without."""
    session = _benchmark_session(config)
    return [b for b in session.benchmarks if b.stats is not None and b.stats.data] if session else []


def _benchmark_stats(config) -> list[dict]:
    return [{"name": b.fullname, "median_s": b.stats.median, "mean_s": b.stats.mean, "min_s": b.stats.min,
             "rounds": b.stats.rounds} for b in _finished_benchmarks(config)]


def _write_benchmark_json(config, folder: Path) -> None:
    """pytest-benchmark's own JSON (as --benchmark-json writes it) beside claims.json."""
    benchmarks = _finished_benchmarks(config)
    if not benchmarks:
        return
    session = _benchmark_session(config)
    output = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=benchmarks, include_data=False,
        machine_info=session.get_machine_info(), commit_info={})
    # params may be objects (default=str); non-finite statistics as strings, so the file is standard JSON
    write_atomic(folder / "benchmark.json", json.dumps(encode_numbers(json.loads(json.dumps(output, default=str))),
                                                       indent=1, allow_nan=False))


def pytest_configure(config):
    config.pluginmanager.register(ClaimReportPlugin(config), "stabcheck-claim-report")
