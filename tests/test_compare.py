"""``python -m stabcheck compare``: regressions between two claims runs, on the committed reference report."""
import json
import math
import shutil
from pathlib import Path

import pytest

from stabcheck.reporting.cli import main
from stabcheck.reporting.diff import compare_runs
from stabcheck.reporting.rows import ClaimRow, Kind, has_numbers, legacy_kind, upgrade_report
from stabcheck.reporting.runs import Run
from stabcheck.reporting.tolerance import KIND_RULES, NOT_NUMBERS, Tolerances

REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "reference" / "claims.json"
MOVED_CASE = "claims/test_c05_gd_edge.py::test_gd_solution_at_the_edge[fnn_gd-lr=0.1-B=n-seed=0]"
FAILED_CASE = ("claims/test_c07_nonuniformity_bound.py::"
               "test_sgd_solution_within_nonuniformity_bound[fnn-lr=0.1-B=20-seed=0]")
MISSING_CASE = "claims/test_c08_correlation.py::test_sharpness_and_nonuniformity_correlate[fnn-fashion_mnist]"
EDGE_CASE = "claims/test_c05_gd_edge.py::test_gd_solution_at_the_edge[fnn_gd-lr=0.2-B=n-seed=0]"


def _copy(tmp_path: Path, name: str, doctor=None) -> Path:
    """A run folder holding the reference's claims.json, changed by ``doctor(rows_by_test, data)``."""
    folder = tmp_path / name
    folder.mkdir()
    data = json.loads(REFERENCE.read_text())
    data.pop("cases", None)  # the doctors edit rows; a budgeted run's case list is made by its own doctor
    if doctor:
        doctor({r["test"]: r for r in data["rows"]}, data)
    (folder / "claims.json").write_text(json.dumps(data))
    return folder


def _compare(capsys, *args) -> tuple[int, str, str]:
    status = main(["compare", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_reference_names_the_cases_the_tests_doctor():
    tests = {r["test"]: r for r in json.loads(REFERENCE.read_text())["rows"]}
    assert {MOVED_CASE, FAILED_CASE, MISSING_CASE, EDGE_CASE} <= tests.keys()
    assert tests[FAILED_CASE]["outcome"] == "passed" and "a" in tests[MOVED_CASE]["measured"]


def test_two_copies_of_a_run_report_nothing(tmp_path, capsys):
    base = _copy(tmp_path, "base")
    shutil.copytree(base, tmp_path / "run")
    status, out, _ = _compare(capsys, base, tmp_path / "run", "--markdown", tmp_path / "compare.md")
    assert status == 0
    cases = len(json.loads(REFERENCE.read_text())["rows"])
    assert out.splitlines()[1].startswith(f"no regressions: {cases} cases in both, 0 added, 0 missing")
    assert "Regressions" not in out and "Other changes" not in out and "Wall time (report only)" not in out
    assert "**no regressions" in (tmp_path / "compare.md").read_text()


def _doctor(rows, data):
    rows[FAILED_CASE]["outcome"] = "failed"
    rows[MOVED_CASE]["measured"]["a"] *= 1.05
    data["rows"].remove(rows[MISSING_CASE])


@pytest.mark.parametrize("quantity", ["a", "s"])
def test_five_percent_move_of_a_or_s_is_a_regression(tmp_path, capsys, quantity):
    def move(rows, data):
        rows[MOVED_CASE]["measured"][quantity] *= 1.05

    status, out, _ = _compare(capsys, _copy(tmp_path, "base"), _copy(tmp_path, "run", move))
    assert status == 1 and "1 regression:" in out
    assert [line for line in out.splitlines() if " moved " in line and f" {quantity} " in line and "+5.0%" in line]


def test_doctored_copy_reports_verdict_moved_value_and_missing_case(tmp_path, capsys):
    base, run = _copy(tmp_path, "base"), _copy(tmp_path, "run", _doctor)
    status, out, _ = _compare(capsys, base, run, "--markdown", tmp_path / "compare.md")
    assert status == 1
    cases = len(json.loads(REFERENCE.read_text())["rows"])
    assert f"3 regressions: {cases - 1} cases in both, 0 added, 1 missing" in out
    regressions = out.split("Regressions (3)")[1].split("\n\n")[0]
    lines = {line.split()[1]: line for line in regressions.splitlines()[2:]}
    assert lines.keys() == {case.split("::")[1] for case in (MOVED_CASE, FAILED_CASE, MISSING_CASE)}
    assert "outcome" in lines[FAILED_CASE.split("::")[1]] and "failed" in lines[FAILED_CASE.split("::")[1]]
    assert "moved" in lines[MOVED_CASE.split("::")[1]] and "+5.0% (tol 4%)" in lines[MOVED_CASE.split("::")[1]]
    assert "missing case" in lines[MISSING_CASE.split("::")[1]]
    markdown = (tmp_path / "compare.md").read_text()
    assert "### Regressions" in markdown and "+5.0% (tol 4%)" in markdown and "| missing case |" in markdown


def test_rtol_for_a_quantity_lets_its_move_pass(tmp_path, capsys):
    def move(rows, data):
        rows[MOVED_CASE]["measured"]["a"] *= 1.05

    base, run = _copy(tmp_path, "base"), _copy(tmp_path, "run", move)
    assert _compare(capsys, base, run)[0] == 1
    assert _compare(capsys, base, run, "--rtol-for", "a=0.06")[0] == 0
    assert _compare(capsys, base, run, "--rtol", "0.06")[0] == 0
    assert _compare(capsys, base, run, "--rtol-for", "a=0.06", "--rtol-for", "a*=0.01")[0] == 0  # first match wins


def _flip_verdict(rows, data):
    measured = rows[EDGE_CASE]["measured"]
    measured["theorem1 verdict"] = "stable" if measured["theorem1 verdict"] != "stable" else "unstable (a > 2/eta)"


def test_verdict_flip_with_numbers_held_is_borderline_and_with_a_moved_number_a_regression(tmp_path, capsys):
    base = _copy(tmp_path, "base")
    status, out, _ = _compare(capsys, base, _copy(tmp_path, "flip", _flip_verdict))
    assert status == 0 and "borderline" in out and "numbers within tolerance" in out

    def flip_and_move(rows, data):
        _flip_verdict(rows, data)
        rows[EDGE_CASE]["measured"]["s"] *= 1.2

    status, out, _ = _compare(capsys, base, _copy(tmp_path, "flip_move", flip_and_move))
    assert status == 1 and "2 regressions" in out and "borderline" not in out


def test_added_case_improvement_and_new_quantity_are_reported_not_regressions(tmp_path, capsys):
    def older(rows, data):
        rows[FAILED_CASE]["outcome"] = "failed"
        data["rows"].remove(rows[MISSING_CASE])
        del rows[MOVED_CASE]["measured"]["s"]

    status, out, _ = _compare(capsys, _copy(tmp_path, "base", older), _copy(tmp_path, "run"))
    assert status == 0
    assert "added case" in out and "improved" in out and "added quantity" in out


def test_not_run_case_of_a_budgeted_run_is_a_regression(tmp_path, capsys):
    def budget_cut(rows, data):
        data["rows"].remove(rows[MISSING_CASE])
        data["cases"] = [{"claim": r["claim"], "test": r["test"], "case": r["case"], "outcome": r["outcome"]}
                         for r in data["rows"]]
        data["cases"].append({"claim": "C8", "test": MISSING_CASE, "case": "fnn-fashion_mnist", "outcome": "not run",
                              "reason": "budget of 50m spent"})

    status, out, _ = _compare(capsys, _copy(tmp_path, "base"), _copy(tmp_path, "run", budget_cut))
    assert status == 1 and "not run" in out and "budget of 50m spent" in out and "1 regression:" in out


def test_wall_time_is_reported_and_fails_only_with_fail_on_time(tmp_path, capsys):
    def took(seconds):  # a case long enough for its wall time to count (at least 1 s)
        def set_duration(rows, data):
            rows[EDGE_CASE]["duration_s"] = seconds
        return set_duration

    base, run = _copy(tmp_path, "base", took(2.0)), _copy(tmp_path, "run", took(6.0))
    status, out, _ = _compare(capsys, base, run)
    assert status == 0 and "Wall time (report only) (1)" in out and "×3.00" in out
    assert _compare(capsys, base, run, "--time-ratio", "5")[1].count("Wall time") == 0
    assert _compare(capsys, base, run, "--fail-on-time")[0] == 1


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "absent", "does not exist"),
    (lambda p: p, "has no claims.json"),
    (lambda p: (p / "claims.json").write_text("{}") and p, "has no 'rows' list"),
    (lambda p: (p / "claims.json").write_text("{not json") and p, "cannot be read as JSON"),
    (lambda p: (p / "claims.json").write_text('{"rows": [{"test": "t::x"}]}') and p, "lacks claim, test or outcome"),
])
def test_bad_folder_is_an_error_with_status_2(tmp_path, capsys, make, message):
    status, out, err = _compare(capsys, _copy(tmp_path, "base"), make(tmp_path))
    assert status == 2 and out == ""
    assert err.startswith("error: ") and message in err


def test_bad_rtol_for_is_an_error_with_status_2(tmp_path, capsys):
    status, out, err = _compare(capsys, tmp_path, tmp_path, "--rtol-for", "theorem1")
    assert status == 2 and out == "" and err.startswith("error: --rtol-for 'theorem1': expected KIND=RTOL")


def test_rtol_for_a_kind_applies_to_every_value_of_that_kind(tmp_path, capsys):
    def move(rows, data):
        rows[EDGE_CASE]["measured"]["theorem1"] *= 1.10

    base, run = _copy(tmp_path, "base"), _copy(tmp_path, "run", move)
    assert _compare(capsys, base, run)[0] == 0                             # theorem1: 15%
    assert _compare(capsys, base, run, "--rtol-for", "theorem1=0.05")[0] == 1  # the kind's name
    assert _compare(capsys, base, run, "--rtol-for", "sharpness=0.05")[0] == 0  # another kind


def _kind_row(measured: dict, kinds: dict) -> dict:
    return ClaimRow("C0", "claims/t.py::kinds", "passed", measured=measured,
                    kinds={k: v.value for k, v in kinds.items()}).as_json()


def _moved(kind: Kind, value: float, factor: float) -> float:
    """``value`` moved up by ``factor`` × its kind's tolerance (|Δ| = rtol·max(old, new) at factor 1)."""
    rtol = KIND_RULES[kind][0]
    rtol = Tolerances().rtol if rtol is None else rtol
    return value + (1.0 if kind == Kind.COUNT else value * factor * rtol / (1 - rtol))


NUMERIC_KINDS = [k for k in Kind if k not in NOT_NUMBERS]


@pytest.mark.parametrize("kind", NUMERIC_KINDS, ids=[k.value for k in NUMERIC_KINDS])
def test_a_move_beyond_its_kinds_tolerance_is_flagged_in_every_kind(kind):
    """Every numeric kind: a move of 1.5× its tolerance is a regression, and one of half of it is not;
    the kinds that are not compared (inf) stay silent at any move."""
    value = 3.0   # above every kind's scale
    rtol = KIND_RULES[kind][0]

    def compared(new):
        base = Run.from_json({"rows": [_kind_row({"x": value}, {"x": kind})]}, "base")
        run = Run.from_json({"rows": [_kind_row({"x": new}, {"x": kind})]}, "run")
        return [f.kind for f in compare_runs(base, run).regressions]

    if rtol is not None and math.isinf(rtol):
        assert compared(value * 100) == []
        return
    assert compared(_moved(kind, value, 1.5)) == ["moved"]
    assert compared(_moved(kind, value, 0.5) if kind != Kind.COUNT else value) == []


def test_no_reference_value_falls_back_to_a_default_kind():
    """Every value of reports/reference has the kind meant for it: rows with kinds name one for every
    value, and the names of rows without kinds are all in the documented map (rows.LEGACY_KINDS), which
    gives the values that once fell to a default by their glob the kind meant for them."""
    rows = json.loads(REFERENCE.read_text())["rows"]
    unmapped, disagree = [], []
    for row in rows:
        for name, value in row["measured"].items():
            legacy = legacy_kind(name)
            if "kinds" in row:
                assert name in row["kinds"], f"{row['test']}: {name} has no kind"
                if legacy is not None and legacy.value != row["kinds"][name]:
                    disagree.append((name, legacy.value, row["kinds"][name]))
            elif legacy is None or (legacy == Kind.VERDICT) == has_numbers(value) and value != []:
                unmapped.append((row["claim"], name))
    assert not unmapped and not disagree, (unmapped, disagree)
    intended = {"final a in window": Kind.RESTART_SHARPNESS, "loss peak iteration": Kind.EVENT,
                "iterations to re-converge": Kind.ITERATIONS, "new theorem1": Kind.THEOREM1, "a": Kind.SHARPNESS,
                "s": Kind.NONUNIFORMITY, "a: uHu, per-sample products": Kind.SHARPNESS, "p": Kind.SETTING,
                "p (a smaller at B=2)": Kind.P_VALUE, "matvecs": Kind.PRODUCTS, "final loss": Kind.LOSS}
    assert {name: legacy_kind(name) for name in intended} == intended


def test_reference_upgraded_to_kinds_is_standard_json_and_compares_clean(tmp_path, capsys):
    """An old report rewritten with kinds (rows.upgrade_report) is standard JSON, every row carries its kinds,
    and it compares with the original without a regression: the name->kind map loses nothing."""
    def refuse(constant):
        raise ValueError(f"{constant} is not standard JSON")

    upgraded = json.dumps(upgrade_report(json.loads(REFERENCE.read_text())), allow_nan=False)
    rows = json.loads(upgraded, parse_constant=refuse)["rows"]
    assert all(set(r["measured"]) <= set(r["kinds"]) for r in rows)
    folder = tmp_path / "upgraded"
    folder.mkdir()
    (folder / "claims.json").write_text(upgraded)
    status, out, _ = _compare(capsys, REFERENCE.parent, folder)
    assert status == 0 and "Other changes" not in out, out


def test_an_expected_failure_recorded_as_a_skip_by_an_older_plugin_reads_as_one():
    """The reference's C12 expected failure was written as "skipped" with pytest's traceback: it loads as
    "xfailed", case and row, its reason the finding's message."""
    from stabcheck.reporting.runs import load_run

    run = load_run(REFERENCE.parent)
    (test,) = [k for k, c in run.cases.items() if c["outcome"] == "xfailed"]
    assert "test_c12_measurement.py::test_power_iteration_converges" in test
    assert run.rows[test].outcome == "xfailed"
    reason = run.cases[test]["reason"]
    assert reason and "Traceback" not in reason and "XFailed" not in reason and "\n" not in reason
