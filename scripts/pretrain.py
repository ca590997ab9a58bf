"""Train the minima of a profile's plans into the minima cache ahead of a claims run, within a budget.

    python scripts/pretrain.py --scale paper --setup vgg --budget 1h30m [--claims C5 C6] [--lr 0.1] [--cache-dir DIR]

Settings go cheapest first by the profile's measured training seconds (unmeasured ones last); the
seeds of one setting are asked for together (``MinimaCache.get_many``). A minimum already cached
costs nothing, so a second call resumes; a GD run stopped by the budget resumes from its
checkpoint. The budget is checked between settings: a setting that starts runs to its end.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from claims.options import parse_duration  # noqa: E402
from claims.profiles import profile  # noqa: E402
from stabcheck.experiments.minima import MinimaCache, default_cache_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="paper", choices=("small", "paper"))
    parser.add_argument("--setup", action="append", help="only these setups (repeatable; default: all)")
    parser.add_argument("--claims", nargs="*", default=[], help="only these claims' grids (default: all)")
    parser.add_argument("--lr", type=float, action="append", help="only these learning rates (repeatable)")
    parser.add_argument("--gd", choices=("only", "skip", "any"), default="any", help="GD settings only / never")
    parser.add_argument("--budget", default="1h", help="stop starting new settings after this long (e.g. 90m)")
    parser.add_argument("--cache-dir", default=default_cache_dir(),
                        help="minima cache (default: STABCHECK_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, /stabcheck/minima)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    p = profile(args.scale)
    configs = [c for c in p.configs(*args.claims)
               if (not args.setup or c.setup.name in args.setup) and (not args.lr or c.lr in args.lr)
               and (args.gd != "only" or c.is_gd) and (args.gd != "skip" or not c.is_gd)]
    settings: dict = {}
    for c in configs:
        settings.setdefault(c.with_(seed=0), []).append(c)
    order = sorted(settings, key=lambda s: (p.train_cost(s) is None, p.train_cost(s) or 0.0))
    cache = MinimaCache(args.cache_dir, data_dir=args.data_dir)
    budget, start = parse_duration(args.budget), time.monotonic()
    print(f"[pretrain] {len(configs)} minima in {len(settings)} settings, budget {args.budget}, cache {args.cache_dir}",
          flush=True)
    for setting in order:
        spent = time.monotonic() - start
        if spent > budget:
            print(f"[pretrain] budget spent after {spent:.0f} s; left: {setting.label} and later", flush=True)
            return 0
        t0 = time.monotonic()
        minima = cache.get_many(settings[setting])
        print(f"[pretrain] {setting.label.rpartition('-seed')[0]}: "
              + ", ".join(f"seed {m.config.seed} {m.status} {m.record['iterations']} it" for m in minima)
              + f" ({time.monotonic() - t0:.0f} s)", flush=True)
    print(f"[pretrain] done in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
