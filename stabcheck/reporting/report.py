"""The report of a claims run: ``claims.json`` (one row per test case) and ``claims.md`` (tables)."""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path


class ReportError(ValueError):
    """A report folder or file that cannot be read (the message names it and says what to give)."""


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a report is for everyone to read
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_report(folder: Path, rows: list[dict], benchmarks: list[dict]) -> Path:
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: (_claim_order(r["claim"]), r["test"]))
    write_atomic(folder / "claims.json", json.dumps({"rows": rows, "benchmarks": benchmarks}, indent=1))
    write_atomic(folder / "claims.md", render_markdown(rows, benchmarks))
    return folder


def _claim_order(claim: str) -> tuple[int, str]:
    digits = "".join(c for c in claim if c.isdigit())
    return (int(digits) if digits else 999, claim)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return f"[{len(v)} values]" if len(v) > 6 else "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def render_markdown(rows: list[dict], benchmarks: list[dict]) -> str:
    by_claim: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_claim[r["claim"]].append(r)
    out = ["# Claim report", ""]
    total = len(rows)
    passed = sum(r["outcome"] == "passed" for r in rows)
    if rows:
        r0 = rows[0]
        out += [f"{passed} of {total} cases passed. Scale `{r0['scale']}`, device `{r0['device']}`, "
                f"torch {r0['versions']['torch']}, stabcheck {r0['versions']['stabcheck']}.", ""]
    for claim, group in by_claim.items():
        out += [f"## {claim}", "", "| case | measured | paper / bound | verdict | time (s) |", "|---|---|---|---|---|"]
        for r in group:
            meas = ", ".join(f"{k}={_fmt(v)}" for k, v in r["measured"].items()).replace("|", "\\|")
            exp = ", ".join(f"{k}={_fmt(v)}" for k, v in r["expected"].items()).replace("|", "\\|")
            out.append(f"| `{r['case'] or r['test'].split('::')[-1]}` | {meas} | {exp} | {r['outcome']} | "
                       f"{r.get('duration_s', '')} |")
        out.append("")
    if benchmarks:
        out += ["## Benchmark timings (pytest-benchmark)", "", "| benchmark | median (s) | rounds |", "|---|---|---|"]
        out += [f"| `{b['name']}` | {b['median_s']:.4g} | {b['rounds']} |" for b in benchmarks]
        out.append("")
    return "\n".join(out)
