"""Command line: ``python -m stabcheck measure`` (a saved model), ``python -m stabcheck report`` (figures)
and ``python -m stabcheck compare`` (regressions between two claims runs). The parser and the dispatch live
here; each command's work lives in its own module (:mod:`.measure_cli`, :mod:`.figures`, :mod:`.compare`)."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..curvature import distributed
from ..curvature.problem import ProblemError
from . import compare, measure_cli
from .measure_cli import DTYPES, CliError
from .report import ReportError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one ``error:`` line (exit status 2), like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m stabcheck", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="sharpness, non-uniformity and the stability criteria of a saved model",
                       description="Measure a, s, the bounds for the given lr and batch sizes, the Theorem-1 value "
                                   "and its verdict for a saved model on a dataset.")
    m.add_argument("--model", required=True, help="a state dict saved with torch.save(model.state_dict(), FILE)")
    m.add_argument("--arch", required=True, help="model spec for a state dict: fnn:widths=500-500-500 | vgg | resnet:depth=14,width=2,"
                                  "batch_norm=true | resfnn:width=64,blocks=2,batch_norm=false")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", choices=("fashion_mnist", "cifar10", "cifar10_all"),
                     help="a dataset of the paper (first --n training images, original order)")
    src.add_argument("--data-file", help="a torch.save'd dict with 'inputs' and 'targets' tensors")
    m.add_argument("--n", type=int, default=None, help="number of training samples (default: all / 1000 for --data)")
    m.add_argument("--data-dir", default=None, help="torchvision dataset root searched first (env STABCHECK_DATA_DIR)")
    m.add_argument("--loss", choices=("mse", "half_sq", "ce"), default="mse",
                   help="per-sample loss used in training (default mse: the paper's MSELoss on one-hot targets)")
    m.add_argument("--lr", type=float, required=True, help="learning rate η of the SGD/GD run to check")
    m.add_argument("--batch-size", type=int, nargs="+", help="batch sizes B to check (default: n, i.e. GD)")
    m.add_argument("--method", choices=("lanczos", "power"), default="lanczos", help="eigensolver (default lanczos)")
    m.add_argument("--engine", default="auto", help="Σ engine: auto (default), loop, vmap, or another registered one")
    m.add_argument("--form", choices=("auto", "sample", "full"), default="auto",
                   help="Theorem 1 in sample space (mu <= 2; squared-error losses with d > nK) or in parameter "
                        "space (lambda_max(T) <= 1); auto (default) picks sample where it applies")
    m.add_argument("--tol", type=float, default=1e-4, help="relative tolerance of the eigensolver (default 1e-4)")
    m.add_argument("--maxiter", type=int, default=50, help="iteration cap of the eigensolver (default 50)")
    m.add_argument("--seed", type=int, default=0, help="seed of the start vector (default 0)")
    m.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="computation dtype (default float32)")
    m.add_argument("--device", default="cpu", help="torch device (default cpu)")
    m.add_argument("--json", metavar="FILE",
                   help="also write the result as JSON to FILE in an existing folder; '-' writes it to standard "
                        "output and the table to standard error. Infinite values (GD's s bound) are written as null")
    m.add_argument("--quiet", action="store_true", help="no progress messages on standard error")
    m.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under torchrun (each rank holds a share of the samples): seconds a rank waits for the "
                        f"others before it fails with an error (default {distributed.DEFAULT_TIMEOUT_S:g})")

    r = sub.add_parser("report", help="draw the figures of a claims run from its claims.json",
                       description="Regenerate the figures (PNG) of a report folder from its claims.json.")
    r.add_argument("folder", help="report folder holding claims.json (e.g. reports/run-20261126-170000)")
    compare.add_parser(sub)
    w = sub.add_parser("monitor", help="draw a StabilityMonitor log (also while its run goes on)")
    w.add_argument("log", help="the JSON-lines log of StabilityMonitor(log=...)")
    w.add_argument("--out", help="PNG to write (default: the log's name with .png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # torch warns about its own TorchScript internals on import; nothing a user can act on.
    warnings.filterwarnings("ignore", message="`torch.jit", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "measure":
            return measure_cli.run_command(args)
        elif args.command == "compare":
            return compare.run_command(args)
        elif args.command == "monitor":
            from .monitor_figure import draw_log

            print(draw_log(args.log, args.out))
        else:
            from .figures import draw_all

            for path in draw_all(Path(args.folder)):
                print(path)
    # ProblemError: e.g. a non-finite curvature product; DistributedError: another rank failed or timed out
    except (CliError, ReportError, ProblemError, distributed.DistributedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
