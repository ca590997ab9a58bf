"""The performance suite's session: one thread, and a summary of ratios written at the end.

Run (see README.md): ``pytest benchmarks --benchmark-timer=time.process_time
--benchmark-json reports/benchmarks/engines.json``. Besides pytest-benchmark's JSON, the session
writes ``reports/benchmarks/summary.json`` and ``summary.md``: every Σv product as a multiple of
the full-batch H v of the same model and n, peak memory likewise, and the solvers' product counts.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from stabcheck.reporting.tables import table

from .support import RESULTS, THREADS

# STABCHECK_BENCH_REPORT_DIR sends the summary elsewhere (a partial run would overwrite the full one).
REPORT_DIR = Path(os.environ.get("STABCHECK_BENCH_REPORT_DIR",
                                 Path(__file__).resolve().parent.parent / "reports" / "benchmarks"))
_LOAD: dict[str, tuple] = {}


def pytest_configure(config):
    torch.set_num_threads(THREADS)
    _LOAD["start"] = os.getloadavg()


def _product_table(rows: list[dict]) -> list[dict]:
    """One row per (model, n, op) with the ratios to H v of the same (model, n)."""
    hv = {(r["model"], r["n"]): r for r in rows if r["op"] == "hv"}
    entries = []
    for r in rows:
        base = hv.get((r["model"], r["n"]))
        if base is None:
            continue
        entries.append({**r, "time_ratio": r["median_s"] / base["median_s"],
                      "memory_ratio": (r["peak_bytes"] / base["peak_bytes"]) if r["peak_bytes"] else None})
    # The per-sample engines are timed at n ≤ 1000: their cost is n per-sample products, so n = 4000 is 4×.
    for r in [r for r in entries if r["op"] in ("vmap", "loop") and r["n"] == 1000]:
        base = hv.get((r["model"], 4000))
        if base is not None:
            t = 4 * r["median_s"]
            entries.append({**r, "n": 4000, "median_s": t, "time_ratio": t / base["median_s"], "peak_bytes": None,
                          "memory_ratio": None, "extrapolated": "4 × the n = 1000 time"})
    return sorted(entries, key=lambda r: (r["model"], r["n"], ("hv", "factored", "vmap", "loop").index(r["op"])))


def _markdown(summary: dict) -> str:
    lines = [f"Measured {summary['date']} on {summary['machine']}, torch {summary['torch']}, "
             f"{summary['threads']} thread(s), timer {summary['timer']}, load average "
             f"{summary['load_start'][0]:.1f} at start, {summary['load_end'][0]:.1f} at end. Medians.", "",
             table(["model", "n", "product", "median s", "× H v", "peak MB", "× H v peak"],
                   [[r["model"], r["n"], r["op"] + (" (extrapolated)" if r.get("extrapolated") else ""),
                     f"{r['median_s']:.3f}", f"{r['time_ratio']:.2f}",
                     f"{r['peak_bytes'] / 1e6:.1f}" if r["peak_bytes"] else "–",
                     f"{r['memory_ratio']:.2f}" if r["memory_ratio"] else "–"] for r in summary["products"]],
                   markdown=True)]
    if summary["solvers"]:
        lines += ["", table(["quantity", "method", "products", "converged", "residual", "rel. error", "products to 1e-4"],
                            [[r["quantity"], r["method"], r["products"], r["converged"], f"{r['residual']:.1e}",
                              f"{r['relative_error']:.1e}", r["products_to_1e-4"]] for r in summary["solvers"]],
                            markdown=True)]
    if summary["external"]:
        lines += ["", table(["sharpness by", "value", "products", "rel. error", "median s"],
                            [[r["library"], f"{r['value']:.6f}", r["products"], f"{r['relative_error']:.1e}",
                              f"{r['median_s']:.3f}"] for r in summary["external"]], markdown=True)]
    if summary["end_to_end"]:
        lines += ["", table(["quantity", "method", "value", "rel. error", "products", "median s", "note"],
                            [[r["quantity"], r["method"], r["value"],
                              "–" if r["relative_error"] is None else f"{r['relative_error']:.1e}", r["products"],
                              f"{r['median_s']:.2f}", r["note"]] for r in summary["end_to_end"]], markdown=True)]
    if summary["goals"]:
        lines += ["", table(["goal", "measured", "met"],
                            [[g["goal"], g["measured"], "yes" if g["met"] else "no"] for g in summary["goals"]],
                            markdown=True)]
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
    if not any(RESULTS.values()) or session.config.getoption("benchmark_disable", False):
        return
    timer = session.config.getoption("benchmark_timer", None)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} ×{os.cpu_count()} cores",
        "torch": torch.__version__, "threads": THREADS, "timer": str(timer) if timer else "time.perf_counter",
        "load_start": _LOAD.get("start"), "load_end": os.getloadavg(),
        "products": _product_table(RESULTS["products"]), "solvers": RESULTS["solvers"], "external": RESULTS["external"],
        "end_to_end": RESULTS["end_to_end"], "goals": RESULTS["goals"],
    }
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (REPORT_DIR / "summary.md").write_text(_markdown(summary))
