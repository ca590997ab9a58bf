"""The ``measure`` command: options checked before any file is read, the model and data loaded
(:mod:`.measure_inputs`), the criteria measured, and the result as a table and JSON.
:mod:`stabcheck.reporting.cli` builds the parser."""
from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch

from ..curvature import distributed
from ..curvature.problem import ProblemError
from .measure_inputs import CliError, load_data, load_model
from .report import write_atomic
from .tables import table

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def run_command(args) -> int:
    """``python -m stabcheck measure``: measure, print the table, write the JSON (``--json``); 0 on success."""
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
    return 0
