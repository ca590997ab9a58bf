"""Reading a claims run for ``compare``: its cases and rows, every malformed entry refused by name."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .report import XFAILED
from .rows import ClaimRow, ReportError


@dataclass(frozen=True)
class Run:
    """One claims run: its cases (test id → case with ``outcome``), rows (test id → row), and the tests
    that recorded more than one row (an error in the run, which ``compare`` reports)."""
    folder: str
    cases: dict[str, dict]
    rows: dict[str, ClaimRow]
    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data, folder: str) -> "Run":
        """From the parsed ``claims.json`` (rows required; ``cases`` where the writer stored them)."""
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ReportError(f"{folder}: claims.json has no 'rows' list, so it is not a claims run's report "
                              "(give a folder written by 'pytest claims/' or scripts/verify.sh)")
        cases_data = data.get("cases") or []
        if not isinstance(cases_data, list):
            raise ReportError(f"{folder}: claims.json's 'cases' is a {type(cases_data).__name__}, not a list")
        for entry in [*data["rows"], *cases_data]:
            if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("claim", "test", "outcome"))):
                raise ReportError(f"{folder}: a row or case of claims.json lacks claim, test or outcome as strings "
                                  f"({str(entry)[:80]}), so it is not a claims run's report: rerun the claims to "
                                  "rewrite it")
        cases_data = [legacy_xfail(c) for c in cases_data]
        xfailed = {c["test"] for c in cases_data if c["outcome"] == XFAILED}
        rows: dict[str, ClaimRow] = {}
        duplicates: list[str] = []
        for entry in data["rows"]:
            row = ClaimRow.from_json(entry, folder)
            if row.test in xfailed:
                row = dataclasses.replace(row, outcome=XFAILED)
            if row.test in rows:
                duplicates.append(row.test)
            else:
                rows[row.test] = row
        cases = {c["test"]: c for c in cases_data}
        for key, row in rows.items():
            cases.setdefault(key, {"claim": row.claim, "test": row.test, "case": row.case, "outcome": row.outcome})
        return cls(str(folder), cases, rows, tuple(dict.fromkeys(duplicates)))


def legacy_xfail(case: dict) -> dict:
    """A case as this stabcheck records it: runs written before the ``xfailed`` outcome recorded an expected
    failure as "skipped" with pytest's traceback (ending in "XFailed") as its reason; that reason's message
    is the finding.

    >>> legacy_xfail({"test": "t", "outcome": "skipped", "reason": "  x = 1\\nE   _pytest.outcomes.XFailed: "
    ...               "a finding\\nE   , measured\\n\\nt.py:3: XFailed"})["reason"]
    'a finding , measured'
    """
    reason = case.get("reason")
    if case["outcome"] != "skipped" or not isinstance(reason, str) or not reason.rstrip().endswith(": XFailed"):
        return case
    message = " ".join(line[1:].strip() for line in reason.splitlines() if line.startswith("E "))
    return {**case, "outcome": XFAILED, "reason": message.partition("XFailed: ")[2] or message}


def load_run(folder: str | Path) -> Run:
    """The run in ``folder`` (its ``claims.json``); :class:`ReportError` naming what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"report folder {folder} does not exist (give the folder of a claims run, "
                          "e.g. reports/reference or reports/run-<time>)")
    path = folder / "claims.json"
    if not path.is_file():
        raise ReportError(f"{folder} has no claims.json, so it is not a claims run's report "
                          "(give a folder written by 'pytest claims/' or scripts/verify.sh)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ReportError(f"{path} cannot be read as JSON ({reason}); rerun the claims to rewrite it") from None
    return Run.from_json(data, str(folder))
