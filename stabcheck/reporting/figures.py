"""Figures of a claims run, drawn from its ``claims.json`` alone (``python -m stabcheck report FOLDER``).

Each figure reads the rows a claim tagged for it (:class:`.rows.Tag`) or the minima rows hold; a figure whose rows are missing from the run (e.g. only
some claims were selected) is skipped with a message rather than drawn empty.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from .monitor_figure import edge
from .report import ReportError
from .rows import Tag, legacy_tag


def _tagged(rows: list[dict], tag: Tag) -> list[dict]:
    """The rows a claim tagged ``tag`` (rows written before tags: by their test, :data:`.rows.LEGACY_TAGS`)."""
    return [r for r in rows if (r.get("tag") or legacy_tag(r["test"])) == tag.value]


def one_dimensional(rows, plt):
    """C4: the landscape f = (f_1 + f_2)/2 with its two minima, and SGD leaving x = 1 for x = 0."""
    from ..experiments.toys import OneDimensionalExample

    found = [r for r in _tagged(rows, Tag.ONE_DIMENSIONAL) if "figure" in r]
    if not found:
        return None
    fig_data = found[0]["figure"]
    toy = OneDimensionalExample()
    import torch

    xs = torch.linspace(-0.6, 1.6, 400, dtype=torch.float64)
    parts = torch.minimum(xs[:, None] ** 2, toy.constants * (xs[:, None] - 1) ** 2)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    ax1.plot(xs, parts.mean(1), "k", lw=2, label="f = (f₁ + f₂)/2")
    for i, c in enumerate(toy.constants.tolist()):
        ax1.plot(xs, parts[:, i], "--", label=f"f{i + 1} = min{{x², {c:g}(x−1)²}}")
    ax1.set(xlabel="x", ylabel="loss", title="C4: two global minima, a = 2 at both", ylim=(0, 0.4))
    ax1.annotate("s = 0", (0, 0), (0.05, 0.08), arrowprops={"arrowstyle": "->"})
    ax1.annotate("s = 1.8", (1, 0), (0.75, 0.12), arrowprops={"arrowstyle": "->"})
    ax1.legend(fontsize=8)
    for path in fig_data["sgd_paths"]:
        ax2.plot(path, lw=1)
    ax2.axhline(1, color="grey", ls=":", label="x = 1 (start 1 + 1e-5)")
    ax2.axhline(0, color="grey", ls="--", label="x = 0")
    steps = [s for s in fig_data["escape_steps"] if s >= 0]   # -1: the run never left
    longest = max((len(p) for p in fig_data["sgd_paths"]), default=1)
    ax2.set(xlabel="iteration", ylabel="x", title=f"SGD, η = 0.7, B = 1 ({len(fig_data['sgd_paths'])} runs)",
            xlim=(0, 2.5 * max(steps) if steps else longest))
    ax2.legend(fontsize=8)
    ax3.hist(steps, bins=30, color="C2")
    ax3.set(xlabel="escape step (first |x − 1| > 0.1)", ylabel="runs", title=f"{len(steps)} SGD runs leave x = 1")
    if steps:
        ax3.axvline(float(np.median(steps)), color="k", ls="--", label=f"median {np.median(steps):.0f}")
        ax3.legend(fontsize=8)
    return fig


def appendix_b(rows, plt):
    """C11 / Figure 10: a1 + a2 along GD and SGD, the fitted functions, the histogram of SGD's ends."""
    found = [r for r in _tagged(rows, Tag.APPENDIX_B) if "figure" in r]
    if not found:
        return None
    d = found[0]["figure"]
    gd_final, sgd_final = np.array(d["gd_final"]), np.array(d["sgd_final"])
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    ax1.plot(d["gd_a_sum"], "k", lw=2, label="GD")
    for i, path in enumerate(d["sgd_a_sum"]):
        ax1.plot(path, lw=1, alpha=0.8, label="SGD (B = 1)" if i == 0 else None)
    ax1.set(xlabel="iteration", ylabel="a1 + a2", title="(a) trajectories, η = 0.5, from (0, 0.1, 0.2)")
    ax1.legend(fontsize=8)
    u = np.linspace(-0.5, 1.5, 200)

    def fitted(p):
        return p[0] + math.sqrt(max(p[1], 0)) * u - math.sqrt(max(p[2], 0)) * u**2

    ax2.plot(u, fitted(gd_final), "k", lw=2, label=f"GD: a1 + a2 = {gd_final[1] + gd_final[2]:.3f}")
    order = np.argsort(sgd_final[:, 1] + sgd_final[:, 2])
    for k in (order[len(order) // 2], order[-1]):
        p = sgd_final[k]
        ax2.plot(u, fitted(p), lw=1, label=f"SGD: a1 + a2 = {p[1] + p[2]:.3f}")
    ax2.plot(u, 0 * u, "grey", ls=":", label="ground truth f* = 0")
    ax2.plot([0, 1], [0, 0], "ko", label="data")
    ax2.set(xlabel="u", ylabel="f(u)", title="(b) fitted functions (flatter = closer to f*)")
    ax2.legend(fontsize=8)
    ax3.hist(sgd_final[:, 1] + sgd_final[:, 2], bins=20, color="C1", label=f"SGD ({len(sgd_final)} runs)")
    ax3.axvline(gd_final[1] + gd_final[2], color="k", lw=2, label="GD")
    ax3.set(xlabel="a1 + a2 at the end", ylabel="runs", title="(c) SGD selects larger a (worse generalisation)")
    ax3.legend(fontsize=8)
    return fig


def _all_minima(rows) -> list[dict]:
    """Every trained minimum the run measured (rows keep them as ``minimum`` or ``minima``), once each;
    ReportError naming a minimum whose numbers cannot be drawn."""
    seen: dict[str, dict] = {}
    for r in rows:
        for m in ([r["minimum"]] if "minimum" in r else []) + r.get("minima", []):
            _check_minimum(m, r["test"])
            seen.setdefault(m["label"], m)
    return list(seen.values())


def _check_minimum(m, test: str) -> None:
    def number(key, positive=False):
        v = m.get(key) if isinstance(m, dict) else None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive
                                                                                               and v >= 0)
        if not ok:
            label = m.get("label", "?") if isinstance(m, dict) else m
            raise ReportError(f"minimum {label} of {test}: {key} = {json.dumps(v)} is not a "
                              f"{'positive' if positive else 'non-negative'} finite number, so the figures cannot "
                              "place it (rerun the claims to rewrite claims.json)")
        return v

    number("a"), number("s"), number("lr", positive=True)
    if number("B", positive=True) > number("n", positive=True) or m["B"] != int(m["B"]) or m["n"] != int(m["n"]):
        raise ReportError(f"minimum {m.get('label', '?')} of {test}: B = {m['B']}, n = {m['n']} are not whole "
                          "numbers with B <= n (rerun the claims to rewrite claims.json)")


def diagram(rows, plt):
    """C3/C6/C7: the sharpness–non-uniformity plane, each (η, B) box and the minima SGD found in it."""
    minima = [m for m in _all_minima(rows) if not m.get("mu") and "resfnn" not in m["setup"] and "resnet" not in m["setup"]]
    if not minima:
        return None
    settings = sorted({(m["lr"], m["B"], m["n"]) for m in minima}, key=lambda t: (t[0], t[1]))
    fig, ax = plt.subplots(figsize=(7.5, 6))
    a_max = max(m["a"] for m in minima)
    s_max = max(m["s"] for m in minima)
    for i, (lr, b, n) in enumerate(settings):
        colour = f"C{i % 10}"
        pts = [m for m in minima if (m["lr"], m["B"], m["n"]) == (lr, b, n)]
        label = f"η = {lr:g}, " + ("GD" if b >= n else f"B = {b}")
        ax.scatter([m["a"] for m in pts], [m["s"] for m in pts], color=colour, s=25, label=label, zorder=3)
        a_side = 2 / lr
        s_side = math.inf if b >= n else math.sqrt(b * (n - 1) / (n - b)) / lr
        if a_side <= 1.5 * a_max:
            ax.plot([a_side, a_side], [0, min(s_side, 1.5 * s_max)], color=colour, ls="--", lw=1)
        if s_side <= 1.5 * s_max:
            ax.plot([0, min(a_side, 1.5 * a_max)], [s_side, s_side], color=colour, ls="--", lw=1)
    ax.set(xlim=(0, 1.3 * a_max), ylim=(0, 1.3 * s_max), xlabel="sharpness a = λmax(H)",
           ylabel="non-uniformity s = λmax(Σ)^½",
           title="Minima found by GD/SGD and their stability boxes (dashed: 2/η and √(B(n−1)/(n−B))/η)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def gd_edge(rows, plt):
    """C5/C14: GD's sharpness against its learning rate, beside the edge 2/η."""
    minima = [m for m in _all_minima(rows) if m["B"] >= m["n"] and "resfnn" not in m["setup"]
              and "resnet" not in m["setup"]]
    if not minima:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lrs = np.geomspace(min(m["lr"] for m in minima) / 1.5, max(m["lr"] for m in minima) * 1.5, 100)
    for i, mu in enumerate(sorted({m.get("mu", 0.0) for m in minima})):
        pts = [m for m in minima if m.get("mu", 0.0) == mu]
        label = "GD" if not mu else f"heavy-ball GD, μ = {mu:g}"
        ax.scatter([m["lr"] for m in pts], [m["a"] for m in pts], s=25, color=f"C{i}", label=label, zorder=3)
        if mu:
            ax.plot(lrs, 2 * (1 + mu) / lrs, color=f"C{i}", ls=":", lw=1, label=f"2(1 + {mu:g})/η")
    ax.plot(lrs, 2 / lrs, "k--", label="2/η (GD's edge)")
    ax.set(xscale="log", yscale="log", xlabel="learning rate η", ylabel="sharpness a of the solution",
           title="C5: GD solutions sit just below 2/η unless the landscape has no sharper minimum")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # log-axis minor labels overlap
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    return fig


def escape(rows, plt):
    """C9: sharpness and training loss after a restart from a GD minimum with new (η′, B′)."""
    found = [r for r in _tagged(rows, Tag.ESCAPE) if "trajectory" in r]
    if not found:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, r in enumerate(found):
        t = r["trajectory"]
        ax1.plot(t["iter"], t["sharpness"], color=f"C{i}", label=r["case"])
        ax2.plot(t["loss every iteration"], color=f"C{i}", lw=1, label=r["case"])
    ax1.set(xlabel="iteration after the restart", ylabel="sharpness a", title="C9: sharpness along the restarted run")
    ax2.set(xlabel="iteration after the restart", ylabel="training loss", yscale="log",
            title="training loss: a transient rise when the minimum is unstable")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return fig


#: File name → drawing function (rows, pyplot) → figure or None when the run lacks its rows.
FIGURES: dict[str, Callable] = {
    "one_dimensional.png": one_dimensional,
    "appendix_b.png": appendix_b,
    "diagram.png": diagram,
    "gd_edge.png": gd_edge,
    "escape.png": escape,
    "edge.png": edge,
}


def draw_all(folder: Path) -> list[Path]:
    """Draw every figure whose rows the run holds into ``folder``; returns the files written."""
    source = Path(folder) / "claims.json"
    if not source.is_file():
        raise ReportError(f"{source} does not exist: give the folder of a claims run (it holds claims.json)")
    try:
        report = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{source} is not a readable claims report (UTF-8 JSON): {err}") from err
    rows = report.get("rows") if isinstance(report, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"claim", "test"} <= r.keys() for r in rows):
        raise ReportError(f"{source} is not a claims report: expected a JSON object whose 'rows' is a list of "
                          "objects with 'claim' and 'test' (as written by a claims run)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in FIGURES.items():
        fig = draw(rows, plt)
        if fig is None:
            continue
        fig.tight_layout()
        try:
            fig.savefig(Path(folder) / name, dpi=90)
        except OSError as err:
            raise ReportError(f"cannot write the figure {Path(folder) / name} ({err.strerror or err}): remove "
                              "what is in its place or give another folder") from None
        finally:
            plt.close(fig)
        written.append(Path(folder) / name)
    return written
