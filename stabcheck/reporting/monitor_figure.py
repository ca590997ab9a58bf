"""Figures of the stability monitor (:mod:`stabcheck.experiments.monitor`): a log drawn again
(``python -m stabcheck monitor LOG.jsonl``, also while its run still writes it) and C5's ``edge.png``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .report import ReportError
from .rows import Tag


def read_log(path: str | Path) -> tuple[dict, list[dict]]:
    """(the monitor's settings, its checks) from a JSON-lines log; a last line without its newline (a
    write under way) is left out."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path} does not exist: give the JSON-lines log a StabilityMonitor(log=...) writes")
    settings, checks = {}, []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # the part after the last newline is unfinished
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}, line {number} is not JSON ({err.msg}): is this a monitor log?") from None
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind == "monitor":
            settings = record
        elif kind == "check":
            checks.append(record)
        else:
            raise ReportError(f"{path}, line {number} is neither a monitor header nor a check: is this a monitor log?")
    if not checks:
        raise ReportError(f"{path} holds no check yet: the monitor writes one every 'every' steps")
    return settings, checks


def _series(checks: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(c["iteration"], c[key]) for c in checks if c.get(key) is not None]
    return [t for t, _ in pts], [v for _, v in pts]


def draw(settings: dict, checks: list[dict], plt):
    """a and s against iteration with 2/η and the s bound; the training loss beside them."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, colour, bound in (("a", "C0", "a_bound"), ("s", "C1", "s_bound")):
        t, v = _series(checks, key)
        if not t:
            continue
        ax1.plot(t, v, "o-", ms=3, color=colour, label=f"{key} ({checks[-1]['measured_on']})")
        edge = checks[-1].get(bound)
        if edge is not None and math.isfinite(edge):
            label = "2/η" if key == "a" else "√(B(n−1)/(n−B))/η"
            ax1.axhline(edge, color=colour, ls="--", lw=1, label=label)
    lr, batch = settings.get("lr", "?"), settings.get("batch_size", "?")
    ax1.set(xlabel="iteration", ylabel="a, s", title=f"stability along the run (η = {lr}, B = {batch})")
    ax1.legend(fontsize=8)
    t, loss = _series(checks, "loss")
    ax2.plot(t, loss, "k.-", ms=3)
    ax2.set(xlabel="iteration", ylabel="training loss", yscale="log" if loss and min(loss) > 0 else "linear",
            title="training loss at the checks")
    return fig


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_log(path: str | Path, out: str | Path | None = None) -> Path:
    """Draw a monitor log into ``out`` (default: the log's name with ``.png``); returns the file written."""
    settings, checks = read_log(path)
    out = Path(out) if out is not None else Path(path).with_suffix(".png")
    plt = _pyplot()
    fig = draw(settings, checks, plt)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def edge(rows, plt):
    """C5: GD's sharpness a(t) along a run from initialisation, with 2/η (the rows with a ``trajectory``)."""
    found = [r for r in rows if r.get("tag") == Tag.EDGE.value and "trajectory" in r]
    if not found:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(found):
        traj, bound = r["trajectory"], r["expected"]["2/eta"]
        ax.plot(traj["iteration"], traj["a"], color=f"C{i}", lw=1.2, label=f"a(t), {r['case']}")
        ax.axhline(bound, color=f"C{i}", ls="--", lw=1, label=f"2/η = {bound:.3g}")
    ax.set(xlabel="iteration", ylabel="sharpness a", title="C5: GD sharpens until a reaches 2/η, then stays there")
    ax.legend(fontsize=8)
    return fig
