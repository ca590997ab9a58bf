"""A comparison of two claims runs as text (standard output) or Markdown (a CI job page)."""
from __future__ import annotations

from .diff import Comparison, Finding
from .tables import table

HEADER = ["claim", "case", "what", "quantity", "baseline", "run", "change"]


def _cells(f: Finding) -> list[str]:
    return [f.claim, f.case, f.kind, f.quantity, f.baseline, f.run, f.detail]


def comparison_text(c: Comparison) -> str:
    out = [f"compare {c.baseline.folder} → {c.run.folder}", c.headline()]
    for title, findings in c.sections():
        if findings:
            out += ["", f"{title} ({len(findings)})", table(HEADER, [_cells(f) for f in findings])]
    return "\n".join(out)


def comparison_markdown(c: Comparison) -> str:
    out = [f"## Claims compared: `{c.baseline.folder}` → `{c.run.folder}`", "", f"**{c.headline()}**", ""]
    for title, findings in c.sections():
        if findings:
            out += [f"### {title}", "", table(HEADER, [_cells(f) for f in findings], markdown=True), ""]
    out += ["<details><summary>Tolerances (overrides first, then by kind)</summary>", "",
            table(["kind or quantity", "tolerance"], [[f"`{k}`", t] for k, t in c.tolerances.describe()],
                  markdown=True)]
    return "\n".join(out + ["", "</details>", ""])
