"""Regenerate the training seconds of ``claims/timings.json`` from the minima cache's records.

    python -m claims.timings [--cache-dir DIR] [--scale small|paper] [--file PATH]

Each cached minimum has a ``<key>.json`` summary beside it (its config and training record). A summary
whose setup is a profile's setup, trained on a CPU with the epoch sampler, measures its setting: the
entry becomes the upper end of ``wall_time`` over the setting's seeds, in whole seconds up (a member
of an ensemble run of k minima counts wall_time / k, its share). Entries without a fresh measurement,
and the ``measure`` entries, are kept. The command prints what changed.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

from claims.profiles import PROFILES, TIMINGS, profile, read_timings, train_key
from stabcheck.experiments.minima import default_cache_dir
from stabcheck.files import write_atomic

SOURCE = "minima cache"


def measured_entries(cache_dir: Path, scales: tuple[str, ...]) -> tuple[dict[tuple, dict], list[str]]:
    """Training entries (keyed as :func:`~claims.profiles.train_key`) measured by the summaries in
    ``cache_dir``, and a line per summary that could not be read (skipped)."""
    setups = {json.dumps(asdict(s)): (scale, s) for scale in scales for s in profile(scale).setups.values()}
    found: dict[tuple, list[dict]] = {}
    skipped = []
    for path in sorted(Path(cache_dir).glob("*.json")):
        try:
            summary = json.loads(path.read_text())
            config = summary["config"]
            scale, setup = setups.get(json.dumps(config["setup"]), (None, None))
            if setup is None or summary["device"] != "cpu" or config["sampler"] != "epoch":
                continue
            batch = None if config["batch_size"] == setup.n else config["batch_size"]
            key = train_key({"scale": scale, "setup": setup.name, "lr": config["lr"], "batch_size": batch,
                             "momentum": config["momentum"]})
            found.setdefault(key, []).append(_measurement(summary))
        except (OSError, ValueError, KeyError, TypeError) as err:
            skipped.append(f"skipped {path} (not a minimum's summary: {type(err).__name__} {err})")
    return {key: _entry(key, summaries) for key, summaries in found.items()}, skipped


def _measurement(summary: dict) -> dict:
    """What an entry needs of a summary (a member of an ensemble run of k minima: wall_time / k)."""
    return {"seconds": summary["wall_time"] / summary["ensemble"], "seed": summary["config"]["seed"],
            "date": summary["created"][:10], "threads": summary["threads"]}


def _entry(key: tuple, measurements: list[dict]) -> dict:
    seconds = max(m["seconds"] for m in measurements)
    seeds = sorted(m["seed"] for m in measurements)
    dates = sorted(m["date"] for m in measurements)
    threads = sorted({m["threads"] for m in measurements})
    span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    scale, setup, lr, batch, momentum = key
    return {"scale": scale, "setup": setup, "lr": lr, "batch_size": batch, "momentum": momentum,
            "seconds": math.ceil(seconds), "measured": f"{SOURCE}, {span}: wall s, CPU, threads {threads}, "
                                                        f"upper end over seeds {seeds}"}


def refresh(path: Path, cache_dir: Path, scales: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Rewrite the timings file at ``path`` with the cache's measurements; returns a line per change and
    a line per skipped summary."""
    doc = read_timings(path)
    fresh, skipped = measured_entries(cache_dir, scales)
    changes, train = [], []
    for entry in doc["train"]:
        new = fresh.pop(train_key(entry), None)
        if new is not None and new["seconds"] != entry["seconds"]:
            changes.append(f"{_name(new)}: {entry['seconds']} → {new['seconds']} s")
        train.append(new or entry)
    for key in sorted(fresh, key=repr):
        changes.append(f"{_name(fresh[key])}: new, {fresh[key]['seconds']} s")
        train.append(fresh[key])
    write(path, {"train": train, "measure": doc["measure"]})
    return changes, skipped


def _name(entry: dict) -> str:
    batch = "n" if entry["batch_size"] is None else entry["batch_size"]
    return f"{entry['scale']} {entry['setup']} η={entry['lr']:g} B={batch} μ={entry['momentum']:g}"


def write(path: Path, doc: dict) -> None:
    """Standard JSON with one entry a line, so that a regeneration diffs line by line."""
    parts = [f'"{part}": [\n' + ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in doc[part]) + "\n]"
             for part in ("train", "measure")]
    write_atomic(path, "{\n" + ",\n".join(parts) + "\n}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=default_cache_dir(),
                        help="minima cache (default: STABCHECK_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, /stabcheck/minima)")
    parser.add_argument("--scale", choices=tuple(PROFILES), action="append",
                        help="only this scale's entries (repeatable; default: every scale)")
    parser.add_argument("--file", type=Path, default=TIMINGS, help=f"the timings file (default: {TIMINGS})")
    args = parser.parse_args(argv)
    if not Path(args.cache_dir).is_dir():
        parser.error(f"no minima cache folder {args.cache_dir}; pass --cache-dir or set STABCHECK_CACHE_DIR")
    changes, skipped = refresh(args.file, Path(args.cache_dir), tuple(args.scale or PROFILES))
    print("\n".join(skipped + (changes or ["no training seconds changed"])), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
