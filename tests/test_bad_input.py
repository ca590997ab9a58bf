"""Issue 14: bad input gets a clear error, never a wrong number.

One table: a row per reproduction of the issue, named ``<item>-<what>``, with what is fed and what
must come back. The library raises a specific exception whose message says what is wrong
(:class:`Raises`); the command line exits with status 2 and one ``error:`` line on standard error,
before any curvature is computed when the options alone are wrong (:class:`CliRefuses`); input that
is accepted must give the right number, checked against dense float64 ground truth or the
documented behaviour (:class:`Behaves`).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stabcheck
from stabcheck import Problem, ProblemError
from stabcheck.curvature.eigen import lanczos
from stabcheck.curvature.operators import SigmaOperator
from stabcheck.curvature.problem import CurvatureError
from stabcheck.curvature.threads import measurement_threads
from stabcheck.experiments.minima import MinimaCache
from stabcheck.experiments.models import build_model
from stabcheck.experiments.setups import Setup
from stabcheck.experiments.toys import QuadraticToy
from stabcheck.reporting.cli import main

from .tiny import dense_sample_hessians, dense_sigma

N_ROWS = 12  # samples in the data file of the command-line rows
# The smallest trained minimum: the cache rows only need a real file, not a good minimum.
SMALL = Setup("bad-input", "fashion_mnist", 10, "fnn", (("widths", (4,)),), tol=1e-2, max_iters=30)


@dataclass(frozen=True)
class Raises:
    """The library raises ``error`` with a message matching ``match``."""

    error: type[BaseException]
    match: str


@dataclass(frozen=True)
class CliRefuses:
    """``main(argv)`` exits 2 with one ``error:`` line matching ``match``; with ``before_computation`` no
    curvature is computed first."""

    match: str
    before_computation: bool = True


@dataclass(frozen=True)
class Behaves:
    """The feed runs and asserts the right behaviour itself."""


@dataclass(frozen=True)
class Row:
    id: str
    feed: Callable
    expect: Raises | CliRefuses | Behaves


@dataclass
class Workspace:
    """A saved fnn (widths 6, 3 classes), its one-hot data file, and pytest's helpers for the feeds."""

    tmp: Path
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch

    def argv(self, *extra: str, **replace: str) -> list[str]:
        """The measure command line; ``replace`` swaps an option's value (``data_file="x"`` → --data-file x)."""
        options = {"--model": str(self.tmp / "model.pt"), "--arch": "fnn:widths=6",
                   "--data-file": str(self.tmp / "data.pt"), "--lr": "0.5", "--dtype": "float64"}
        for key, value in replace.items():
            options["--" + key.replace("_", "-")] = value
        return ["measure", *[t for kv in options.items() for t in kv], "--quiet", *extra]

    def file(self, name: str, content) -> str:
        """Write ``content`` (bytes, or any object for torch.save) to ``name``; returns the path."""
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        return str(path)


@pytest.fixture
def ws(tmp_path, capsys, monkeypatch) -> Workspace:
    model = build_model("fnn", seed=0, in_shape=(1, 4, 4), num_classes=3, widths=(6,))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_ROWS, 1, 4, 4, generator=g)
    labels = torch.randint(0, 3, (N_ROWS,), generator=g)
    torch.save({"inputs": x, "targets": F.one_hot(labels, 3).float(), "labels": labels}, tmp_path / "data.pt")
    return Workspace(tmp_path, capsys, monkeypatch)


def run_cli(argv: list[str]) -> int:
    """``main``'s exit status, argparse's own exits included."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _data(n=6, k=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=dtype), torch.randn(n, k, generator=g, dtype=dtype)


def _problem(**kwargs) -> Problem:
    x, y = _data()
    return Problem(nn.Linear(4, 3).double(), x, y, **kwargs)


def _mlp(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), activation, nn.Linear(6, 3)).double().eval()


class FunctionalDropout(nn.Module):
    """Dropout by function, invisible to a module check: random while ``self.training``."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return F.dropout(self.linear(x), 0.3, self.training)


class BatchCentred(nn.Module):
    """Each sample's output depends on the batch mean: f_i is not a function of sample i."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x - x.mean(0))


class SqrtGate(nn.Module):
    """x·√|w| at w = 0: the loss is finite, its second derivative is not."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return x[:, :3] * self.w.abs().sqrt()


class WithSpareLayer(nn.Module):
    """A parameter the forward never uses (its rows of H_i are zero)."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 2)

    def forward(self, x):
        return torch.tanh(self.used(x))


# ---- behaviours (item 1, 2, 5, 6, 7) ---------------------------------------------------------------
def frozen_parameters_are_constants(ws):
    net = _mlp(nn.Tanh())
    for p in net[2].parameters():
        p.requires_grad_(False)
    x, y = _data(8)
    trainable, every = Problem(net, x, y), Problem(net, x, y, parameters="all")
    assert trainable.frozen == ("2.weight", "2.bias") and (trainable.dim, every.dim) == (30, 51)
    his_all = dense_sample_hessians(every)
    block = his_all[:, :30, :30]  # the first layer's rows and columns: what SGD moves
    torch.testing.assert_close(dense_sample_hessians(trainable), block, rtol=1e-12, atol=1e-12)
    a_block = float(torch.linalg.eigvalsh(block.mean(0))[-1])
    a_all = float(torch.linalg.eigvalsh(his_all.mean(0))[-1])
    assert a_all > 1.1 * a_block  # counting the frozen layer would change the answer
    assert stabcheck.sharpness(trainable, tol=1e-10).value == pytest.approx(a_block, rel=1e-8)
    assert stabcheck.sharpness(every, tol=1e-10).value == pytest.approx(a_all, rel=1e-8)
    sigma_block = float(torch.linalg.eigvalsh(dense_sigma(block))[-1])
    assert stabcheck.non_uniformity(trainable, tol=1e-10).eigenvalue == pytest.approx(sigma_block, rel=1e-8)


def inplace_leaky_relu_auto_equals_loop(ws):
    x, y = _data()
    problem = Problem(_mlp(nn.LeakyReLU(0.1, inplace=True)), x, y)
    auto = stabcheck.non_uniformity(problem, engine="auto", tol=1e-10)
    loop = stabcheck.non_uniformity(problem, engine="loop", tol=1e-10)
    assert auto.eigenvalue == pytest.approx(loop.eigenvalue, rel=1e-8)
    dense = float(torch.linalg.eigvalsh(dense_sigma(dense_sample_hessians(problem)))[-1])
    assert loop.eigenvalue == pytest.approx(dense, rel=1e-8)


def loop_engine_takes_unused_parameters(ws):
    torch.manual_seed(0)
    x, y = _data()
    problem = Problem(WithSpareLayer().double(), x, y)
    sigma = SigmaOperator(problem, "loop").to_dense()
    torch.testing.assert_close(sigma, dense_sigma(dense_sample_hessians(problem)), rtol=1e-8, atol=1e-12)
    spare = slice(problem.numels[0] + problem.numels[1], problem.dim)
    assert bool((sigma[spare] == 0).all()) and bool(sigma[:spare.start, :spare.start].abs().max() > 0)


def _damaged_cache_file_is_retrained(damage: Callable[[Path], None], what: str):
    def feed(ws):
        cache = MinimaCache(ws.tmp / "cache", progress=False)
        config = SMALL.config(lr=0.5, batch_size=None, seed=0)
        first = cache.get(config)
        damage(first.path)
        pattern = rf"minima cache file {re.escape(str(first.path))} {what}; deleting it and training the minimum again"
        with pytest.warns(RuntimeWarning, match=pattern):
            again = cache.get(config)
        assert not again.from_cache and (cache.hits, cache.misses) == (0, 2)
        assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
        assert MinimaCache(ws.tmp / "cache", progress=False).get(config).from_cache  # the new file reads back
    return feed


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _drop_config(path: Path) -> None:
    blob = torch.load(path, weights_only=True)
    del blob["config"]
    torch.save(blob, path)


def stale_temporaries_are_removed(ws):
    root = ws.tmp / "cache"
    config = SMALL.config(lr=0.5, batch_size=None, seed=0)
    key = MinimaCache(root, progress=False).get(config).key
    stale = [root / f".{key}.pt.999999.tmp", root / f".{key}.ckpt.999999.tmp"]
    other = root / ".0123456789abcdef01234567.pt.999999.tmp"  # another key: its writer may be running
    for path in (*stale, other):
        path.write_bytes(b"half a file")
    assert MinimaCache(root, progress=False).get(config).from_cache
    assert not any(p.exists() for p in stale) and other.exists()


def json_writes_null_for_infinity(ws):
    out = ws.tmp / "result.json"
    assert run_cli(ws.argv("--json", str(out), "--batch-size", "1", str(N_ROWS))) == 0
    result = _strict_json(out.read_text())
    bounds = [r["nonuniformity_bound"] for r in result["settings"]]
    assert bounds[0] == pytest.approx(1 / 0.5) and bounds[1] is None  # B = 1: √(B(n−1)/(n−B))/η = 1/η; B = n: ∞


def json_to_stdout_is_pure_json(ws):
    ws.capsys.readouterr()
    assert run_cli(ws.argv("--json", "-")) == 0
    captured = ws.capsys.readouterr()
    assert _strict_json(captured.out)["n"] == N_ROWS
    assert "Theorem 1" in captured.err  # the table went to standard error


def zero_sigma_is_solved_exactly(ws):
    h = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    problem = QuadraticToy.from_hessians(h.expand(4, 3, 3)).problem(torch.zeros(3))  # H_i = H: Σ = 0
    for method in ("lanczos", "power"):
        s = stabcheck.non_uniformity(problem, method=method)
        assert (s.value, s.residual, s.converged) == (0.0, 0.0, True), method
    r = lanczos(torch.zeros_like, 5, dtype=torch.float64)
    assert (r.value, r.residual, r.converged) == (0.0, 0.0, True)


def measurement_runs_with_one_cpu_thread(ws):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with measurement_threads("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with measurement_threads("cuda"):  # not a CPU measurement: left alone
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---- command-line feeds ---------------------------------------------------------------------------
def _unwritable_folder(tmp: Path) -> Path:
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    for folder in (locked, Path("/sys")):  # root ignores modes; /sys refuses new files even to root
        try:
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
        except OSError:
            return folder
    pytest.skip("no folder here refuses new files")


def _claims_folder(ws, content: bytes) -> list[str]:
    folder = ws.tmp / "run"
    folder.mkdir()
    (folder / "claims.json").write_bytes(content)
    return ["report", str(folder)]


def _needs_no_cuda(ws):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    return ws.argv(device="cuda")


class _PythonObject:
    """Something a safe load must not unpickle."""


ROWS = [
    # 1. silent wrong answers
    Row("1-cli-negative-n", lambda ws: ws.argv("--n", "-3"), CliRefuses(r"--n must be at least 1, got -3")),
    Row("1-cli-n-beyond-the-data", lambda ws: ws.argv("--n", "500"),
        CliRefuses(rf"--n 500 asks for more samples than --data-file .*data\.pt holds \({N_ROWS}\)")),
    Row("1-frozen-parameters-are-constants", frozen_parameters_are_constants, Behaves()),
    Row("1-no-trainable-parameter", lambda ws: Problem(nn.Linear(4, 3).requires_grad_(False), *_data(k=3, dtype=torch.float32)),
        Raises(ProblemError, r"no trainable parameter \(all 2 have requires_grad=False\).*parameters='all'")),
    Row("1-functional-dropout-in-train-mode", lambda ws: Problem(FunctionalDropout(), *_data(dtype=torch.float32)),
        Raises(ProblemError, r"output is random: two forwards of the same 4 samples differ.*call model\.eval\(\)")),
    Row("1-batch-dependent-forward", lambda ws: Problem(BatchCentred().eval(), *_data(dtype=torch.float32)),
        Raises(ProblemError, r"depends on the other samples of its batch.*would depend on chunk_size")),
    Row("1-fractional-batch-size", lambda ws: stabcheck.theorem1(_problem(), lr=0.1, batch_size=2.5),
        Raises(TypeError, r"batch size must be a whole number, got 2\.5 \(float\)")),
    Row("1-bool-batch-size", lambda ws: stabcheck.theorem1(_problem(), lr=0.1, batch_size=True),
        Raises(TypeError, r"batch size must be a whole number, got True \(bool\)")),
    Row("1-infinite-tol", lambda ws: stabcheck.sharpness(_problem(), tol=math.inf),
        Raises(ValueError, r"tol must be positive and finite, got inf")),
    Row("1-complex-inputs", lambda ws: Problem(nn.Linear(4, 3), _data()[0].to(torch.complex64), _data()[1]),
        Raises(ProblemError, r"the inputs' dtype is complex \(torch\.complex64\)")),
    Row("1-complex-targets", lambda ws: Problem(nn.Linear(4, 3), _data()[0], _data()[1].to(torch.complex64)),
        Raises(ProblemError, r"the targets' dtype is complex")),
    Row("1-complex-dtype", lambda ws: _problem(dtype=torch.complex64),
        Raises(ProblemError, r"dtype must be a real floating-point torch dtype")),
    # 2. engines
    Row("2-inplace-leaky-relu-auto-equals-loop", inplace_leaky_relu_auto_equals_loop, Behaves()),
    Row("2-loop-engine-unused-parameter", loop_engine_takes_unused_parameters, Behaves()),
    # 4. tracebacks instead of one error line
    Row("4-cli-lr-nan", lambda ws: ws.argv(lr="nan"), CliRefuses(r"--lr must be a positive finite number, got nan")),
    Row("4-cli-lr-inf", lambda ws: ws.argv(lr="inf"), CliRefuses(r"--lr must be a positive finite number, got inf")),
    Row("4-cli-tol-zero", lambda ws: ws.argv("--tol", "0"), CliRefuses(r"--tol must be a positive finite number, got 0\.0")),
    Row("4-cli-maxiter-zero", lambda ws: ws.argv("--maxiter", "0"), CliRefuses(r"--maxiter must be at least 1, got 0")),
    Row("4-cli-unknown-engine", lambda ws: ws.argv("--engine", "fast"),
        CliRefuses(r"--engine 'fast' is not a Σ engine; choose auto or one of \[")),
    Row("4-cli-cuda-without-cuda", _needs_no_cuda, CliRefuses(r"--device cuda: .*CUDA is not available here")),
    Row("4-cli-json-unwritable", lambda ws: ws.argv("--json", str(_unwritable_folder(ws.tmp) / "r.json")),
        CliRefuses(r"--json .*r\.json: cannot write in ")),
    Row("4-cli-json-is-a-directory", lambda ws: ws.argv("--json", str(ws.tmp)), CliRefuses(r"--json .* is a directory")),
    Row("4-cli-garbage-data-file", lambda ws: ws.argv(data_file=ws.file("junk.pt", os.urandom(256))),
        CliRefuses(r"--data-file .*junk\.pt is not a file written by torch\.save, or it is damaged")),
    Row("4-cli-list-data-file", lambda ws: ws.argv(data_file=ws.file("list.pt", [torch.zeros(3)])),
        CliRefuses(r"--data-file .*list\.pt holds a list, not a dict with 'inputs' and 'targets'")),
    Row("4-cli-inputs-with-inf", lambda ws: ws.argv(data_file=ws.file("inf.pt", {
        "inputs": torch.full((N_ROWS, 1, 4, 4), math.inf), "targets": torch.eye(3)[torch.arange(N_ROWS) % 3]})),
        CliRefuses(rf"the inputs of {N_ROWS} samples hold non-finite values")),
    Row("4-report-not-utf8", lambda ws: _claims_folder(ws, b"\xff\xfe{\x00"),
        CliRefuses(r"claims\.json is not a readable claims report \(UTF-8 JSON\)")),
    Row("4-report-json-list", lambda ws: _claims_folder(ws, b"[]"),
        CliRefuses(r"claims\.json is not a claims report: expected a JSON object whose 'rows'")),
    Row("4-non-finite-curvature-with-finite-loss",
        lambda ws: stabcheck.sharpness(Problem(SqrtGate().double(), *_data())),
        Raises(CurvatureError, r"H v is not finite \(3 of 3 entries\) although the loss is finite")),
    # 5. unclear messages
    Row("5-truncated-cache-file", _damaged_cache_file_is_retrained(_truncate, r"cannot be read \(\w+\)"), Behaves()),
    Row("5-cache-file-without-config", _damaged_cache_file_is_retrained(_drop_config, r"lacks the entries \['config'\]"),
        Behaves()),
    Row("5-cli-garbage-model", lambda ws: ws.argv(model=ws.file("junk.pt", os.urandom(256))),
        CliRefuses(r"--model .*junk\.pt is not a file written by torch\.save, or it is damaged")),
    Row("5-cli-model-with-python-objects", lambda ws: ws.argv(model=ws.file("obj.pt", {"w": _PythonObject()})),
        CliRefuses(r"--model .*obj\.pt holds Python objects besides tensors.*weights_only=True")),
    Row("5-cli-model-is-a-directory", lambda ws: ws.argv(model=str(ws.tmp)), CliRefuses(r"--model .* is a directory")),
    Row("5-cli-ce-loss-on-one-hot-targets", lambda ws: ws.argv("--loss", "ce"),
        CliRefuses(r"--loss ce needs integer class labels of shape \(n,\).*holds torch\.float32 targets of shape \(12, 3\)")),
    Row("5-cli-mse-loss-on-labels", lambda ws: ws.argv(data_file=ws.file("labels.pt", {
        "inputs": torch.rand(N_ROWS, 1, 4, 4), "targets": torch.arange(N_ROWS) % 3})),
        CliRefuses(r"--loss mse needs real-valued targets .*holds torch\.int64 targets")),
    # 6. output formats
    Row("6-json-null-for-infinite-bound", json_writes_null_for_infinity, Behaves()),
    Row("6-json-to-stdout-is-pure-json", json_to_stdout_is_pure_json, Behaves()),
    Row("6-json-parent-must-exist", lambda ws: ws.argv("--json", str(ws.tmp / "missing" / "r.json")),
        CliRefuses(r"--json .*r\.json: the folder .*missing does not exist")),
    # 7. minor
    Row("7-cli-unknown-engine-at-gd", lambda ws: ws.argv("--engine", "fast", "--batch-size", str(N_ROWS)),
        CliRefuses(r"--engine 'fast' is not a Σ engine")),
    Row("7-unknown-engine-at-gd", lambda ws: stabcheck.theorem1(_problem(), 0.1, 6, engine="fast"),
        Raises(ProblemError, r"unknown Σ engine 'fast'")),
    Row("7-fractional-maxiter", lambda ws: stabcheck.sharpness(_problem(), maxiter=10.0),
        Raises(TypeError, r"maxiter must be a whole number of iterations, got 10\.0 \(float\)")),
    Row("7-fractional-chunk-size", lambda ws: _problem(chunk_size=2.5),
        Raises(ProblemError, r"chunk_size must be a positive whole number of samples, got 2\.5")),
    Row("7-cli-fractional-maxiter", lambda ws: ws.argv("--maxiter", "1.5"),
        CliRefuses(r"argument --maxiter: invalid int value: '1\.5' \(see .* --help\)")),
    Row("7-zero-sigma-is-converged", zero_sigma_is_solved_exactly, Behaves()),
    Row("7-stale-temporaries-removed-under-the-lock", stale_temporaries_are_removed, Behaves()),
    Row("7-measurement-runs-with-one-cpu-thread", measurement_runs_with_one_cpu_thread, Behaves()),
]


def _no_computation(*args, **kwargs):
    raise AssertionError("the command computed curvature before refusing its input")


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row, ws):
    expect = row.expect
    if isinstance(expect, Raises):
        with pytest.raises(expect.error, match=expect.match):
            row.feed(ws)
    elif isinstance(expect, CliRefuses):
        argv = row.feed(ws)
        if expect.before_computation:
            for name in ("sharpness", "non_uniformity", "theorem1"):
                ws.monkeypatch.setattr(stabcheck, name, _no_computation)
        ws.capsys.readouterr()
        code = run_cli(argv)
        err = ws.capsys.readouterr().err
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert re.search(expect.match, lines[0]), lines[0]
        assert "weights_only=False" not in err and "will likely succeed" not in err  # never advise unsafe loading
    else:
        row.feed(ws)


def test_every_item_of_the_issue_has_a_row():
    assert {r.id.split("-")[0] for r in ROWS} == {"1", "2", "4", "5", "6", "7"}
    assert len({r.id for r in ROWS}) == len(ROWS)


# ---- claims runs and their reports: compare, report, the claims' pytest options -------------------
ROOT = Path(__file__).resolve().parent.parent
PASSED_ROW = {"claim": "C5", "test": "claims/t.py::x", "case": "x", "outcome": "passed",
              "measured": {"a": 20.0, "s": 5.0, "a per seed": [0.05]}}


@dataclass(frozen=True)
class CompareSays:
    """``compare BASE RUN`` exits with ``status``; 1: the regression table names ``match``; 2: one ``error:``
    line matching ``match``."""

    status: int
    match: str


@dataclass(frozen=True)
class PytestRefuses:
    """A claims run with these options stops at start-up with pytest's usage error (exit 4) matching ``match``."""

    match: str


def _run_folder(ws, name: str, data) -> str:
    folder = ws.tmp / name
    folder.mkdir()
    (folder / "claims.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return str(folder)


def _compare_doctored(change, base_change=None):
    """compare's argv for the passed row above against a copy changed by ``change(row, data)``."""
    def feed(ws):
        base, run = json.loads(json.dumps(PASSED_ROW)), json.loads(json.dumps(PASSED_ROW))
        base_data, run_data = {"rows": [base]}, {"rows": [run]}
        if base_change:
            base_change(base, base_data)
        change(run, run_data)
        return ["compare", _run_folder(ws, "base", base_data), _run_folder(ws, "run", run_data)]
    return feed


def _set(key, value):
    def change(row, data):
        row["measured"][key] = value
    return change


def _drop_row_keep_case(row, data):
    data["cases"] = [{k: row[k] for k in ("claim", "test", "case", "outcome")}]
    data["rows"] = []


def _add_failed_twin(row, data):
    data["rows"].append(dict(row, outcome="failed", measured=dict(row["measured"], a=60.0)))


def _malformed(row_change):
    def feed(ws):
        run = json.loads(json.dumps(PASSED_ROW))
        row_change(run)
        return ["compare", _run_folder(ws, "base", {"rows": [PASSED_ROW]}), _run_folder(ws, "run", {"rows": [run]})]
    return feed


def _markdown_under_a_file(ws):
    folder = _run_folder(ws, "base", {"rows": [PASSED_ROW]})
    return ["compare", folder, folder, "--markdown", ws.file("plain", b"x") + "/compare.md"]


def _deeply_nested(ws):
    folder = _run_folder(ws, "base", {"rows": [PASSED_ROW]})
    return ["compare", folder, _run_folder(ws, "run", "[" * 100_000 + "]" * 100_000)]


def _report_of(minimum_change=None, figure=None):
    """report's argv for a run whose one minimum is changed by ``minimum_change``."""
    def feed(ws):
        minimum = {"label": "fnn-lr=0.1-B=10-seed=0", "setup": "fnn", "lr": 0.1, "B": 10, "n": 100, "mu": 0.0,
                   "a": 15.0, "s": 20.0}
        if minimum_change:
            minimum_change(minimum)
        rows = [dict(PASSED_ROW, minimum=minimum)]
        if figure:
            rows.append(figure)
        folder = _run_folder(ws, "run", json.dumps({"rows": rows}))
        return ["report", folder]
    return feed


def _minimum_with(key, value):
    def change(m):
        m[key] = value
    return change


def _no_escape_is_drawn(ws):
    one_dimensional = {"claim": "C4", "test": "claims/t.py::escape", "outcome": "passed", "measured": {},
                       "tag": "one-dimensional escape", "figure": {"sgd_paths": [[1.0, 1.0, 1.0]], "escape_steps": []}}
    folder = _run_folder(ws, "run", {"rows": [one_dimensional]})
    assert run_cli(["report", folder]) == 0, ws.capsys.readouterr().err
    assert (Path(folder) / "one_dimensional.png").is_file()


def _figure_path_is_a_directory(ws):
    argv = _report_of()(ws)
    (Path(argv[1]) / "diagram.png").mkdir()
    return argv


def _inner_claims_run(ws, test_source: str, *args: str):
    """A claims run (the project's root conftest) of ``test_source`` in its own folder; its result and report."""
    folder = ws.tmp / "inner"
    folder.mkdir(exist_ok=True)
    (folder / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (folder / "test_inner.py").write_text(test_source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | {"PYTHONPATH": str(ROOT)}
    plugins = () if "-n" in args else ("-p", "no:xdist")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins, "-q", "test_inner.py",
                             "--report-dir", str(folder / "report"), *args], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=600)
    return result, folder / "report"


ONE_CASE = '''
import pytest
from stabcheck.reporting.rows import Kind

@pytest.mark.claim("C1")
def test_one(claim, device):
    claim.record(measured={"x": Kind.VALUE(1.0), "bound": Kind.SETTING(float("inf"))}, expected={"y": float("nan")})
'''


def _pytest_args(*args):
    def feed(ws):
        (ws.tmp / "plain").write_text("x")
        return [a.replace("FILE", str(ws.tmp / "plain")) for a in args]
    return feed


def _report_is_standard_json(ws):
    result, report = _inner_claims_run(ws, ONE_CASE)
    assert result.returncode == 0, result.stdout[-2000:]
    data = _strict_json((report / "claims.json").read_text())
    assert data["rows"][0]["measured"]["bound"] == "Infinity" and data["rows"][0]["expected"]["y"] == "NaN"
    from stabcheck.reporting.runs import load_run

    assert load_run(report).rows[data["rows"][0]["test"]].measured["bound"] == math.inf


def _reused_report_folder_loses_the_previous_outputs(ws):
    report = ws.tmp / "inner" / "report"
    report.mkdir(parents=True)
    for stale in ("benchmark.json", "escape.png", "diagram.png"):
        (report / stale).write_text("previous run")
    (report / "notes.txt").write_text("the user's own")
    result, report = _inner_claims_run(ws, ONE_CASE, "--benchmark-disable")
    assert result.returncode == 0, result.stdout[-2000:]
    assert sorted(p.name for p in report.iterdir()) == ["claims.json", "claims.md", "notes.txt"]


CRASH = '''
import os, signal
import pytest
from stabcheck.reporting.rows import Kind

@pytest.mark.claim("C1")
@pytest.mark.parametrize("x", [1, 2])
def test_fine(claim, x):
    claim.record(measured={"x": Kind.VALUE(x)}, expected={})

@pytest.mark.claim("C2")
def test_worker_dies(claim):
    os.kill(os.getpid(), signal.SIGKILL)
'''


def _crashed_worker_is_a_failed_case(ws):
    result, report = _inner_claims_run(ws, CRASH, "-n", "2")
    assert result.returncode == 1, result.stdout[-2000:]
    cases = {c["test"].split("::")[1]: c for c in json.loads((report / "claims.json").read_text())["cases"]}
    crashed = cases["test_worker_dies"]
    assert crashed["outcome"] == "failed" and crashed["reason"].startswith("worker crashed"), crashed
    assert [s["verdict"] for s in json.loads((report / "claims.json").read_text())["summary"]] == ["passed", "failed"]
    assert "Cases that did not finish" in (report / "claims.md").read_text()


CTRL_C_AT_THE_END = '''
import os, signal, time
import pytest
import stabcheck.reporting.figures as figures
from stabcheck.reporting.rows import Kind


def ctrl_c(folder):  # the user's Ctrl-C arrives while the figures are drawn
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)


figures.draw_all = ctrl_c


@pytest.mark.claim("C1")
def test_last(claim):
    claim.measure(lambda: 1)
    claim.record(measured={"x": Kind.VALUE(1)}, expected={})
'''


def _ctrl_c_after_the_last_test_says_what_was_not_written(ws):
    result, report = _inner_claims_run(ws, CTRL_C_AT_THE_END)
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.INTERRUPTED and "Traceback" not in out, out[-3000:]
    assert (report / "claims.json").is_file() and (report / "benchmark.json").is_file()
    assert "NOT complete" in out and "figures not written" in out, out[-3000:]


RUN_ROWS = [
    # compare: every non-number, missing or duplicated entry is what it is
    Row("compare-a-becomes-infinite", _compare_doctored(_set("a", math.inf)), CompareSays(1, r"moved\s+a\s+20 .*inf")),
    Row("compare-a-was-infinite", _compare_doctored(_set("a", 20.0), _set("a", math.inf)), CompareSays(1, r"moved\s+a ")),
    Row("compare-a-becomes-null", _compare_doctored(_set("a", None)), CompareSays(1, r"moved\s+a .*not a number: null")),
    Row("compare-a-becomes-a-string", _compare_doctored(_set("a", "20")), CompareSays(1, r"moved\s+a .*not a number")),
    Row("compare-a-becomes-true", _compare_doctored(_set("a", True)), CompareSays(1, r"moved\s+a .*not a number: true")),
    Row("compare-list-entry-becomes-null", _compare_doctored(_set("a per seed", [None])),
        CompareSays(1, r"moved\s+a per seed .*not a number: \[null\]")),
    Row("compare-row-gone-case-passed", _compare_doctored(_drop_row_keep_case),
        CompareSays(1, r"missing quantity .*the case passed but recorded no row")),
    Row("compare-second-row-of-one-test", _compare_doctored(_add_failed_twin),
        CompareSays(1, r"x\s+duplicate row .*the run holds two rows of this test")),
    Row("compare-measured-is-a-list", _malformed(lambda r: r.update(measured=[1.0])),
        CompareSays(2, r"row claims/t\.py::x: 'measured' is a list, not an object")),
    Row("compare-outcome-is-an-int", _malformed(lambda r: r.update(outcome=1)),
        CompareSays(2, r"lacks claim, test or outcome as strings")),
    Row("compare-outcome-is-null", _malformed(lambda r: r.update(outcome=None)),
        CompareSays(2, r"lacks claim, test or outcome as strings")),
    Row("compare-markdown-under-a-file", _markdown_under_a_file,
        CompareSays(2, r"--markdown .*compare\.md: the folder .*plain does not exist or is not a folder")),
    Row("compare-json-nested-too-deep", _deeply_nested, CompareSays(2, r"cannot be read as JSON \(nested too deeply\)")),
    Row("report-json-is-standard", _report_is_standard_json, Behaves()),
    # the claims' options, checked at start-up
    Row("options-device-banana", _pytest_args("--device", "banana"), PytestRefuses(r"--device banana: 'banana' is not a torch device")),
    Row("options-device-upper-case-cuda", _pytest_args("--device", "CUDA"), PytestRefuses(r"--device CUDA: 'CUDA' is not a torch device")),
    Row("options-device-mps", _pytest_args("--device", "mps"), PytestRefuses(r"--device mps: ")),
    Row("options-device-meta", _pytest_args("--device", "meta"), PytestRefuses(r"--device meta: device 'meta' holds no values")),
    Row("options-report-dir-is-a-file", _pytest_args("--report-dir", "FILE"), PytestRefuses(r"--report-dir .*plain is a file, not a folder")),
    Row("options-report-dir-under-a-file", _pytest_args("--report-dir", "FILE/r"), PytestRefuses(r"--report-dir .*plain/r lies under the file")),
    Row("options-cache-dir-is-a-file", _pytest_args("--cache-dir", "FILE"), PytestRefuses(r"--cache-dir .*plain is a file, not a folder")),
    Row("options-cache-dir-under-a-file", _pytest_args("--cache-dir", "FILE/c"), PytestRefuses(r"--cache-dir .*plain/c lies under the file")),
    Row("options-budget-beyond-the-timer", _pytest_args("--budget", "99999999999999999999h"), PytestRefuses(r"--budget: .* longer than a year")),
    Row("options-seeds-superscript-digit", _pytest_args("--seeds-per-setting", "³"), PytestRefuses(r"--seeds-per-setting .* must be a positive integer, got '³'")),
    # runs reported as what they are
    Row("run-reused-report-dir-loses-the-previous-outputs", _reused_report_folder_loses_the_previous_outputs, Behaves()),
    Row("run-crashed-worker-is-a-failed-case", _crashed_worker_is_a_failed_case, Behaves()),
    Row("run-ctrl-c-after-the-last-test", _ctrl_c_after_the_last_test_says_what_was_not_written, Behaves()),
    # report: a clear error or the right figure
    Row("report-a-is-nan", _report_of(_minimum_with("a", math.nan)), CliRefuses(r"minimum fnn-lr=0\.1-B=10-seed=0 of .*: a = NaN is not")),
    Row("report-a-is-infinite", _report_of(_minimum_with("a", math.inf)), CliRefuses(r": a = Infinity is not a non-negative finite number")),
    Row("report-a-is-null", _report_of(_minimum_with("a", None)), CliRefuses(r": a = null is not a non-negative finite number")),
    Row("report-lr-zero", _report_of(_minimum_with("lr", 0)), CliRefuses(r": lr = 0 is not a positive finite number")),
    Row("report-b-null", _report_of(_minimum_with("B", None)), CliRefuses(r": B = null is not a positive finite number")),
    Row("report-no-run-escaped", _no_escape_is_drawn, Behaves()),
    Row("report-figure-path-is-a-directory", _figure_path_is_a_directory,
        CliRefuses(r"cannot write the figure .*diagram\.png \(Is a directory\)")),
]


@pytest.mark.parametrize("row", RUN_ROWS, ids=[r.id for r in RUN_ROWS])
def test_bad_run_input(row, ws):
    expect = row.expect
    if isinstance(expect, CompareSays):
        argv = row.feed(ws)
        ws.capsys.readouterr()
        code = run_cli(argv)
        out, err = ws.capsys.readouterr()
        assert code == expect.status, out + err
        if code == 2:
            lines = err.strip().splitlines()
            assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
            assert re.search(expect.match, lines[0]), lines[0]
        else:
            assert re.search(expect.match, out.split("Regressions")[1]), out
    elif isinstance(expect, PytestRefuses):
        result, _ = _inner_claims_run(ws, ONE_CASE, *row.feed(ws))
        assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout[-2000:] + result.stderr[-2000:]
        assert "ERROR: " in result.stderr and re.search(expect.match, result.stderr), result.stderr[-2000:]
        assert "Traceback" not in result.stdout + result.stderr
    else:
        test_bad_input(row, ws)
