"""Bad input, round 2, library side: no code from data folders, clear errors for the minima cache's lock
and folder, a Problem that never shares the caller's tensors, integer inputs, and the command line's
messages on unsafe and misfitting model files.

A row per reproduction, named ``<item of the issue>-<what>``; each failed before its fix. The rows
that guard accepted input (a Python 2 era CIFAR batch, integer targets, an embedding's integer
inputs) passed before and must keep passing.
"""
from __future__ import annotations

import os
import pickle
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from stabcheck import Problem, ProblemError
from stabcheck.experiments import minima
from stabcheck.experiments.cifar import read_cifar_batch
from stabcheck.experiments.data import DataRequestError, load_cifar10
from stabcheck.experiments.minima import MinimaCache, MinimaCacheError
from stabcheck.experiments.models import build_model
from stabcheck.experiments.setups import Setup

from .test_bad_input import Behaves, CliRefuses, Raises, Row
from .test_bad_input import test_bad_input as check_row  # round 1's checks of a row

N = 12
TINY = Setup("bad-input", "fashion_mnist", 10, "fnn", (("widths", (4,)),), tol=1e-2, max_iters=30)


class _RunsCode:
    """Unpickling this runs ``touch marker``: what a crafted data file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class Workspace:
    """A saved fnn (widths 6, 3 classes), its data file, a marker file that code from a file would
    create, and pytest's helpers for the feeds."""

    tmp: Path
    capsys: pytest.CaptureFixture
    monkeypatch: pytest.MonkeyPatch

    @property
    def marker(self) -> Path:
        return self.tmp / "code-ran"

    def cli(self, *extra: str, **options: str) -> list[str]:
        """The measure command line on a saved fnn (widths 6, 3 classes) and its data file."""
        given = {"--model": str(self.tmp / "model.pt"), "--arch": "fnn:widths=6", "--data-file": str(self.tmp / "data.pt"),
                 "--lr": "0.5", "--dtype": "float64"}
        given.update({"--" + k.replace("_", "-"): v for k, v in options.items()})
        if "--data" in given:
            del given["--data-file"]
        return ["measure", *[t for kv in given.items() for t in kv], "--quiet", *extra]

    def save(self, name: str, content) -> str:
        torch.save(content, self.tmp / name)
        return str(self.tmp / name)

    def cifar_folder(self, payload) -> Path:
        """A torchvision root whose cifar-10-batches-py files hold ``payload(marker)`` as their data."""
        folder = self.tmp / "root" / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder / name).write_bytes(pickle.dumps({"data": payload(self.marker), "labels": [0] * 4}, protocol=2))
        return folder.parent


@pytest.fixture
def ws(tmp_path, capsys, monkeypatch) -> Workspace:
    monkeypatch.delenv("STABCHECK_DATA_DIR", raising=False)
    torch.save(build_model("fnn", seed=0, in_shape=(1, 4, 4), num_classes=3, widths=(6,)).state_dict(),
               tmp_path / "model.pt")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (N,), generator=g)
    torch.save({"inputs": torch.rand(N, 1, 4, 4, generator=g), "targets": F.one_hot(labels, 3).double()},
               tmp_path / "data.pt")
    return Workspace(tmp_path, capsys, monkeypatch)


# ---- 2. no code from data folders -------------------------------------------------------------
UNSAFE = r"is not a CIFAR-10 batch of plain arrays \(global posix\.system is not allowed\): stabcheck never runs code"


def _cifar_env(ws: Workspace):
    ws.monkeypatch.setenv("STABCHECK_DATA_DIR", str(ws.cifar_folder(_RunsCode)))
    return load_cifar10(4, with_test=False, download=False)


def _python2_cifar_batch_reads(ws: Workspace):
    """The original files were pickled by Python 2's numpy (``numpy.core.multiarray``): read as data."""
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    blob = pickle.dumps({"data": images, "labels": [3, 7], "filenames": [b"a.png", b"b.png"]}, protocol=2)
    path = ws.tmp / "data_batch_1"
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\n_reconstruct" in path.read_bytes()
    x, y = read_cifar_batch(path)
    assert x.shape == (2, 32, 32, 3) and y.tolist() == [3, 7]
    assert np.array_equal(x.transpose(0, 3, 1, 2).reshape(2, 3072), images)


def _npz_with_objects(ws: Workspace):
    folder = ws.tmp / "offline"
    folder.mkdir()
    arrays = {"train_labels": np.array([_RunsCode(ws.marker)], dtype=object), "train_images": np.zeros((1, 32, 32, 3)),
              "train_index": np.zeros(1), "test_labels": np.zeros(1), "test_images": np.zeros((1, 32, 32, 3))}
    np.savez(folder / "cifar10_all_subset.npz", **arrays)
    return load_cifar10(1, with_test=False, offline_dir=folder, download=False)


# ---- 6. the minima cache: lock wait and folder ------------------------------------------------
def _lock_held_elsewhere(ws: Workspace):
    cache = MinimaCache(ws.tmp / "cache", progress=False, lock_timeout=0.3)
    config = TINY.config(lr=0.5, batch_size=None, seed=0)
    (ws.tmp / "cache").mkdir()
    holder = FileLock(str(cache.path(config)) + ".lock")
    taken, release = threading.Event(), threading.Event()

    def hold():  # another thread, its own open file: the lock conflicts as another process's would
        with holder:
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        taken.wait(10)
        cache.get(config)
    finally:
        release.set()
        thread.join()


def _lock_wait_reports_progress(ws: Workspace):
    """Without a timeout the wait goes on, naming the minimum every ``WAIT_REPORT_EVERY`` seconds; here
    the other holder lets go once the waiting process has said so twice."""
    ws.monkeypatch.setattr(minima, "WAIT_REPORT_EVERY", 0.05)
    cache = MinimaCache(ws.tmp / "cache", progress=True)
    config = TINY.config(lr=0.5, batch_size=None, seed=0)
    (ws.tmp / "cache").mkdir()
    holder = FileLock(str(cache.path(config)) + ".lock")
    taken, said = threading.Event(), []

    def hold():
        with holder:
            taken.set()
            for _ in range(1000):  # at most 10 s: a wait that says nothing fails below instead of hanging
                if len(said) >= 2:
                    break
                threading.Event().wait(0.01)

    def record(*args, **kwargs):
        said.append(" ".join(map(str, args)))

    ws.monkeypatch.setattr(minima, "print", record, raising=False)
    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait(10)
    calls = []
    ws.monkeypatch.setattr(cache, "_train_and_store", lambda path, c, dataset: calls.append(c) or "trained")
    assert cache.get(config) == "trained" and calls == [config]
    thread.join()
    assert len(said) >= 2 and all(re.fullmatch(r"\[minima\] waiting for bad-input-lr=0\.5-B=n-seed=0: another process "
                                                r"is training it \(\d+ s so far; lock .*\.pt\.lock\)", line) for line in said)


def _file(ws: Workspace) -> Path:
    path = ws.tmp / "a-file"
    path.write_text("not a folder")
    return path


# ---- 7. Problem -------------------------------------------------------------------------------
def _problem_never_shares(ws: Workspace):
    """Changing the weights or the data in place changes no later answer, in every dtype and device case."""
    g = torch.Generator().manual_seed(0)
    for dtype in (None, torch.float64, torch.float32):  # None: the model's float64, no conversion
        net = nn.Linear(4, 3).double()
        x, y = torch.randn(N, 4, generator=g, dtype=torch.float64), torch.randn(N, 3, generator=g, dtype=torch.float64)
        problem = Problem(net, x, y, dtype=dtype)
        before = problem.loss_value()
        with torch.no_grad():
            net.weight.mul_(3.0)
        x.mul_(2.0)
        y.zero_()
        assert problem.loss_value() == before, dtype


def _integer_targets_of_mse_are_values(ws: Workspace):
    g = torch.Generator().manual_seed(0)
    net, x = nn.Linear(4, 3).double(), torch.randn(N, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (N, 3), generator=g)
    assert Problem(net, x, labels).loss_value() == Problem(net, x, labels.double()).loss_value()


def _uint8_inputs(ws: Workspace):
    return Problem(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), torch.randint(0, 256, (N, 1, 4, 4), dtype=torch.uint8),
                   torch.randn(N, 3))


def _embedding_takes_integer_inputs(ws: Workspace):
    """Integer inputs stay integers: a model that looks them up measures as before."""
    net = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2)).double()
    tokens = torch.randint(0, 5, (N, 2), generator=torch.Generator().manual_seed(0))
    problem = Problem(net, tokens, torch.zeros(N, 2, dtype=torch.float64))
    assert problem.inputs.dtype == torch.int64 and problem.loss_value() > 0


ROWS = [
    Row("2-cifar-pickle-runs-os-system-data-dir",
        lambda ws: load_cifar10(4, with_test=False, data_dir=ws.cifar_folder(_RunsCode), download=False),
        Raises(DataRequestError, UNSAFE)),
    Row("2-cifar-pickle-runs-os-system-env", _cifar_env, Raises(DataRequestError, UNSAFE)),
    Row("2-cifar-pickle-runs-os-system-cli",
        lambda ws: ws.cli(data="cifar10", data_dir=str(ws.cifar_folder(_RunsCode)), arch="fnn:widths=6"),
        CliRefuses(UNSAFE)),
    Row("2-cifar-python2-batch-still-reads", _python2_cifar_batch_reads, Behaves()),
    Row("2-npz-with-objects", _npz_with_objects,
        Raises(DataRequestError, r"the npz files in .*offline hold Python objects .*plain arrays only")),
    Row("6-lock-wait-timeout-names-the-minimum", _lock_held_elsewhere,
        Raises(MinimaCacheError, r"gave up after \d+ s waiting for minimum bad-input-lr=0\.5-B=n-seed=0 \(\w+\.pt\): "
                                 r"another process holds its lock .* and is training it")),
    Row("6-lock-wait-without-timeout-reports-progress", _lock_wait_reports_progress, Behaves()),
    Row("6-cache-dir-is-a-file", lambda ws: MinimaCache(_file(ws)),
        Raises(MinimaCacheError, r"the minima cache folder .*a-file is a file; pass a folder")),
    Row("6-cache-dir-under-a-file", lambda ws: MinimaCache(_file(ws) / "minima"),
        Raises(MinimaCacheError, r"the minima cache folder .*a-file/minima lies below the file .*a-file; pass a folder")),
    Row("7-problem-never-shares-the-callers-tensors", _problem_never_shares, Behaves()),
    Row("7-uint8-inputs", _uint8_inputs,
        Raises(ProblemError, r"the inputs are torch\.uint8 and the model's forward fails on them \(.*\); convert them "
                             r"to floating point .* inputs\.float\(\) / 255")),
    Row("7-cli-uint8-inputs", lambda ws: ws.cli(data_file=ws.save("u8.pt", {
        "inputs": torch.randint(0, 256, (N, 1, 4, 4), dtype=torch.uint8), "targets": torch.eye(3)[torch.arange(N) % 3]})),
        CliRefuses(r"the inputs are torch\.uint8 and the model's forward fails on them")),
    Row("7-integer-mse-targets-are-their-values", _integer_targets_of_mse_are_values, Behaves()),
    Row("7-embedding-takes-integer-inputs", _embedding_takes_integer_inputs, Behaves()),
    Row("7-cli-model-runs-os-system", lambda ws: ws.cli(model=ws.save("evil.pt", {"w": _RunsCode(ws.marker)})),
        CliRefuses(r"--model .*evil\.pt holds Python objects besides tensors")),
    Row("7-cli-state-dict-mismatch-one-sentence", lambda ws: ws.cli(arch="fnn:widths=7"),
        CliRefuses(r"does not fit --arch fnn:widths=7 \(the model was built with 3 outputs, .*\): 3 of another shape "
                   r"\(first: 1\.weight is \(6, 16\) where the model has \(7, 16\)\)$")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_library(row, ws):
    check_row(row, ws)
    assert not ws.marker.exists(), "code from a data or model file ran"
