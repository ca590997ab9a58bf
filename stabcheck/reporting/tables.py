"""The one table renderer of the reports: plain text (aligned columns) or Markdown.

>>> print(table(["case", "a"], [["x", "20.1"], ["long name", "3"]], align="lr"))
case          a
x          20.1
long name     3
>>> print(table(["case", "a|b"], [["x", "1"]], markdown=True))
| case | a\\|b |
|---|---|
| x | 1 |
"""
from __future__ import annotations


def table(header: list[str], rows: list[list], *, markdown: bool = False, align: str = "") -> str:
    """``rows`` under ``header``; every cell shown with ``str``. ``align``: one letter per column, ``l``
    or ``r`` (text only; default left)."""
    cells = [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(_md_cell(c) for c in line) + " |" for line in [header, *cells]]
        return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    align = align.ljust(len(header), "l")
    return "\n".join("  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(line, widths, align)).rstrip()
                     for line in [header, *cells])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
