"""Command line: ``python -m stabcheck measure`` (a saved model), ``python -m stabcheck report`` (figures)
and ``python -m stabcheck compare`` (regressions between two claims runs)."""
from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from ..curvature import distributed
from ..curvature.problem import ProblemError
from . import compare
from .report import ReportError, write_atomic
from .tables import table

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class CliError(Exception):
    """Bad input on the command line; the message says what to change."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one ``error:`` line (exit status 2), like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# Options that are sequences even when given one value (fnn:widths=32).
SEQUENCE_OPTIONS = ("widths", "channels")


def _parse_arch(spec: str) -> tuple[str, dict]:
    """``fnn:widths=500-500-500`` → ("fnn", {"widths": (500, 500, 500)}); booleans true/false."""
    name, _, rest = spec.partition(":")
    options: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise CliError(f"--arch option {item!r} is not key=value (example: fnn:widths=500-500-500)")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        else:
            try:
                numbers = tuple(int(v) for v in value.split("-"))
            except ValueError:
                raise CliError(f"--arch option {item!r}: expected whole numbers joined by '-'") from None
            options[key] = numbers if key in SEQUENCE_OPTIONS or len(numbers) > 1 else numbers[0]
    return name, options


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _existing_file(path: Path, flag: str) -> Path:
    if path.is_dir():
        raise CliError(f"{flag} {path} is a directory; give the file itself")
    if not path.is_file():
        raise CliError(f"{flag} {path} does not exist")
    return path


def _safe_load(path: Path, flag: str, expected: str):
    """torch.load with weights_only=True: a file is data, never code. torch's own message is not shown
    because it advises weights_only=False, which would run code from a file of unknown origin."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():  # torch words it "Unsupported global" or "unsupported GLOBAL"
            raise CliError(f"{flag} {path} holds Python objects besides tensors and plain containers; stabcheck "
                           f"loads files only as data (torch.load with weights_only=True): save {expected}") from None
        raise CliError(f"{flag} {path} is not a file written by torch.save, or it is damaged: expected {expected}") from None
    except Exception:  # noqa: BLE001 - truncated archive, EOF, bad pickle: all mean the same to the user
        raise CliError(f"{flag} {path} is not a file written by torch.save, or it is damaged: expected {expected}") from None


def load_model(path: Path, arch: str, in_shape, num_classes: int, outputs_from: str = "") -> torch.nn.Module:
    """A state dict saved with torch.save plus ``--arch``; returned in eval mode.

    ``outputs_from`` says where ``num_classes`` came from, for the message when the state dict does not fit.
    """
    from ..experiments.models import build_model

    _existing_file(path, "--model")
    if _is_torchscript(path):
        raise CliError(f"{path} is a TorchScript file: torch.func cannot evaluate TorchScript modules with other "
                       "parameters, so save the model's state dict (torch.save(model.state_dict(), path)) and pass --arch")
    state = _safe_load(path, "--model", "the state dict: torch.save(model.state_dict(), FILE)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CliError(f"--model {path} holds a {type(state).__name__}, not a state dict (names → tensors): "
                       "save it with torch.save(model.state_dict(), FILE)")
    name, options = _parse_arch(arch)
    try:
        model = build_model(name, seed=0, in_shape=in_shape, num_classes=num_classes, **options)
    except ValueError as err:
        raise CliError(f"--arch {arch}: {err}") from err
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        note = f" (the model was built with {num_classes} outputs, {outputs_from})" if outputs_from else ""
        raise CliError(f"the state dict in {path} does not fit --arch {arch}{note}: {mismatch}")
    model.load_state_dict(state)
    return model.eval()


def _state_mismatch(expected: dict, state: dict) -> str:
    """One clause on how ``state`` differs from the model's own state dict ``expected`` ('' if it fits)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} is {tuple(state[k].shape)} where the model has {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = [f"{len(missing)} tensor(s) missing (first {missing[0]!r})" if missing else "",
             f"{len(unexpected)} unexpected (first {unexpected[0]!r})" if unexpected else "",
             f"{len(shapes)} of another shape (first: {shapes[0]})" if shapes else ""]
    return ", ".join(p for p in parts if p)


def load_data(args) -> tuple[torch.Tensor, torch.Tensor, tuple, int, str]:
    """(inputs, targets for --loss, one sample's input shape, number of classes, where that number came from)."""
    if args.data_file:
        return _load_data_file(Path(args.data_file), args.loss, args.n)
    from ..experiments.data import DataNotFoundError, DataRequestError, load_dataset

    try:
        ds = load_dataset(args.data, args.n, data_dir=args.data_dir, with_test=False)
    except (DataNotFoundError, DataRequestError) as err:
        raise CliError(str(err)) from err
    return ds.inputs, ds.targets(args.loss), tuple(ds.inputs.shape[1:]), ds.num_classes, ""


def _load_data_file(path: Path, loss: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor, tuple, int, str]:
    expected = "a dict with 'inputs' and 'targets' tensors: torch.save({'inputs': x, 'targets': y}, FILE)"
    blob = _safe_load(_existing_file(path, "--data-file"), "--data-file", expected)
    if not isinstance(blob, dict):
        raise CliError(f"--data-file {path} holds a {type(blob).__name__}, not {expected}")
    if "inputs" not in blob or "targets" not in blob:
        raise CliError(f"--data-file {path} must hold {expected}; found keys {sorted(map(str, blob))}")
    x, y = blob["inputs"], blob["targets"]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.ndim == 0 or y.ndim == 0:
        raise CliError(f"--data-file {path}: 'inputs' and 'targets' must be tensors with the samples along dimension 0")
    if x.shape[0] != y.shape[0]:
        raise CliError(f"--data-file {path} holds {x.shape[0]} inputs but {y.shape[0]} targets")
    if n is not None and n > x.shape[0]:
        raise CliError(f"--n {n} asks for more samples than --data-file {path} holds ({x.shape[0]})")
    if n is not None:
        x, y = x[:n], y[:n]
    # The output size is read from the targets, so they must be of the kind --loss takes.
    if loss == "ce":
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
            raise CliError(f"--loss ce needs integer class labels of shape (n,) as 'targets'; --data-file {path} "
                           f"holds {y.dtype} targets of shape {tuple(y.shape)}: use --loss mse for one-hot or "
                           "real-valued targets, or store the labels")
        return x, y, tuple(x.shape[1:]), int(y.max()) + 1, f"the largest label + 1 in --data-file {path}"
    if not y.is_floating_point():
        raise CliError(f"--loss {loss} needs real-valued targets (one-hot rows for classification); --data-file "
                       f"{path} holds {y.dtype} targets of shape {tuple(y.shape)}: use --loss ce for integer "
                       "labels, or store one-hot targets")
    k = y.shape[1] if y.ndim > 1 else 1
    return x, y, tuple(x.shape[1:]), k, f"the width of the targets in --data-file {path}"


def check_measure_args(args) -> None:
    """Refuse bad options before any file is read or anything is computed."""
    from ..curvature.engines import SIGMA_ENGINES
    from ..curvature.problem import check_device

    for flag, value in (("--lr", args.lr), ("--tol", args.tol)):
        if not (value > 0 and math.isfinite(value)):
            raise CliError(f"{flag} must be a positive finite number, got {value}")
    if args.maxiter < 1:
        raise CliError(f"--maxiter must be at least 1, got {args.maxiter}")
    if args.n is not None and args.n < 1:
        raise CliError(f"--n must be at least 1, got {args.n}")
    if any(b < 1 for b in args.batch_size or ()):
        raise CliError(f"--batch-size values must be at least 1, got {args.batch_size}")
    if args.engine != "auto" and args.engine not in SIGMA_ENGINES:
        raise CliError(f"--engine {args.engine!r} is not a Σ engine; choose auto or one of {sorted(SIGMA_ENGINES)}")
    try:
        check_device(args.device)
    except ProblemError as err:
        raise CliError(f"--device {args.device}: {err}") from None
    if args.json and args.json != "-":
        check_json_target(Path(args.json))


def check_json_target(path: Path) -> None:
    """The --json file must be creatable: not a directory, in an existing folder that takes new files."""
    if path.is_dir():
        raise CliError(f"--json {path} is a directory; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"--json {path}: the folder {folder} does not exist (create it first; measure creates no folders)")
    try:  # the only reliable test (permissions, read-only mounts, root): create a file there
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise CliError(f"--json {path}: cannot write in {folder} ({err.strerror or err})") from None


def json_ready(value):
    """``value`` with every non-finite float replaced by None, so it is standard JSON (null for ∞).

    >>> json_ready({"bound": float("inf"), "xs": [1.0, float("nan")]})
    {'bound': None, 'xs': [1.0, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def measure(args) -> dict:
    from .. import (Problem, ProblemError, non_uniformity, nonuniformity_bound, sharpness, sharpness_bound,
                    theorem1_batch_sizes)

    try:  # under torchrun: join the other ranks (before the Problem: a CUDA rank takes its own GPU)
        group = distributed.init(args.device, timeout_s=args.dist_timeout)
    except ValueError as err:
        raise CliError(f"--dist-timeout: {err}") from None
    x, y, in_shape, k, outputs_from = load_data(args)
    model = load_model(Path(args.model), args.arch, in_shape, k, outputs_from)
    try:
        prob = distributed.shard(Problem(model, x, y, loss=args.loss, dtype=DTYPES[args.dtype], device=args.device),
                                 group)
    except ProblemError as err:
        raise CliError(str(err)) from err
    batches = sorted(set(args.batch_size or [prob.n]))
    bad = [b for b in batches if not 1 <= b <= prob.n]
    if bad:
        raise CliError(f"--batch-size must lie in [1, n={prob.n}], got {bad}")
    opts = dict(method=args.method, tol=args.tol, maxiter=args.maxiter, seed=args.seed)
    quiet = args.quiet or distributed.rank() != 0
    progress = (lambda msg: print(msg, file=sys.stderr)) if not quiet else (lambda msg: None)
    progress(f"[measure] n={prob.n}, d={prob.dim}, loss={args.loss}, dtype={args.dtype}, device={args.device}")
    a = sharpness(prob, **opts)
    progress(f"[measure] sharpness a = {a.value:.6g} ({a.matvecs} products, converged={a.converged})")
    s = non_uniformity(prob, engine=args.engine, **opts)
    progress(f"[measure] non-uniformity s = {s.value:.6g} ({s.matvecs} products, engine={s.engine}, converged={s.converged})")
    rows = []
    # One sweep: Theorem 1 is solved at some B only; the others are decided by bounds from those solves.
    try:
        sweep = theorem1_batch_sizes(prob, args.lr, batches, form=args.form, sharpness=a, engine=args.engine, **opts)
    except ProblemError as err:
        raise CliError(f"--form {args.form}: {err}") from err
    progress(f"[measure] Theorem 1 solved at B = {list(sweep.solved)} ({dict(sweep.products)} products)")
    residual = None
    for t1 in sweep:
        b = t1.batch_size
        s_bound = nonuniformity_bound(args.lr, b, prob.n)
        mu = getattr(t1, "mu", None)
        mu_upper = getattr(t1, "mu_upper", None)
        if t1.form == "sample" and t1.solved:  # the residual term (a full-form result's is the solver's)
            residual = t1.residual
        rows.append({
            "batch_size": b, "sharpness_bound": sharpness_bound(args.lr), "nonuniformity_bound": s_bound,
            "a_within_bound": a.value <= sharpness_bound(args.lr), "s_within_bound": s.value <= s_bound,
            "theorem1": t1.value, "theorem1_form": t1.form, "theorem1_source": t1.source,
            "theorem1_lower": t1.lower, "theorem1_upper": t1.upper, "theorem1_stable": t1.stable,
            "theorem1_converged": t1.converged if t1.solved else None,
            "theorem1_verdict": t1.verdict, "sharpness_exceeded": t1.sharpness_exceeded,
            "mu": mu, "mu_lower": getattr(t1, "mu_lower", None), "mu_upper": mu_upper,
            "margin": None if t1.form != "sample" else 2.0 - (mu if mu is not None else mu_upper),
        })
    return {
        "model": args.model, "n": prob.n, "dim": prob.dim, "loss": args.loss, "lr": args.lr,
        "training_loss": prob.loss_value(), "sharpness": a.as_dict(), "non_uniformity": s.as_dict(),
        "settings": rows, "residual": None if residual is None else residual.as_dict(), "mode": "eval",
        "processes": distributed.world_size(),
    }


def _theorem1_cell(row: dict) -> str:
    """A solved value, or the bound that decided the verdict of a batch size that was not solved: λmax(T)
    in the full form, μ in the sample form."""
    if row["theorem1_form"] == "sample":
        return f"mu={row['mu']:.6f}" if row["mu"] is not None else f"mu<={row['mu_upper']:.6f}"
    if row["theorem1_source"] == "solve":
        return f"{row['theorem1']:.6f}"
    if row["theorem1_verdict"] == "not certified":
        return f">={row['theorem1_lower']:.6f}"
    return f"<={row['theorem1_upper']:.6f}"


def _table(result: dict) -> str:
    a, s = result["sharpness"], result["non_uniformity"]
    lines = [
        f"model {result['model']}  n={result['n']}  d={result['dim']}  loss={result['loss']}  "
        f"training loss={result['training_loss']:.4g}  lr={result['lr']}",
        f"sharpness       a = {a['value']:.6g}   (converged={a['converged']}, residual={a['residual']:.1e}, {a['matvecs']} products)",
        f"non-uniformity  s = {s['value']:.6g}   (converged={s['converged']}, residual={s['residual']:.1e}, "
        f"{s['matvecs']} products, engine={s['engine']})",
        "",
    ]
    cells = [[r["batch_size"], f"{r['sharpness_bound']:.4g}", r["a_within_bound"],
              "inf" if math.isinf(r["nonuniformity_bound"]) else f"{r['nonuniformity_bound']:.4g}",
              r["s_within_bound"], r["theorem1_form"], _theorem1_cell(r),
              "" if r["margin"] is None else f"{r['margin']:.4f}", r["theorem1_verdict"]] for r in result["settings"]]
    lines.append(table(["B", "2/lr", "a ok", "s bound", "s ok", "form", "Theorem 1", "margin", "verdict"], cells,
                       align="rrrrrrrrr"))
    if any(r["theorem1_form"] == "sample" for r in result["settings"]):
        lines.append("sample form: mu = eta*lambda_max((1-p)(c'/n)Gamma + p c'D) <= 2 certifies Theorem 1 at the "
                     "interpolation limit; margin = 2 - mu")
    res = result.get("residual")
    if res is not None:
        lines.append(f"residual term H - G (left out of the sample form): |H - G| >= {res['size']:.3g} "
                     f"(eigenvalues {res['smallest']:.3g} .. {res['largest']:.3g}, {res['steps']} Lanczos steps)")
    return "\n".join(lines)


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
            if args.data and args.n is None:
                args.n = 1000
            check_measure_args(args)
            result = measure(args)
            if distributed.rank() != 0:  # every rank holds the same result; rank 0 alone reports it
                return 0
            print(_table(result), file=sys.stderr if args.json == "-" else sys.stdout)
            text = json.dumps(json_ready(result), indent=1, allow_nan=False)
            if args.json == "-":
                print(text)
            elif args.json:
                try:
                    write_atomic(Path(args.json), text)
                except OSError as err:
                    raise CliError(f"--json {args.json}: cannot write ({err.strerror or err})") from None
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
