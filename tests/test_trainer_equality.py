"""The trainer gives the parameters it gave before it was restructured, bit for bit.

Cached minima are keyed by TRAINER_VERSION, so a change of the trained parameters without a new version
would mix minima of two trainers in one cache. The cases of tests/training_fingerprint.py (train:
SGD, GD with momentum, a callback stop, a divergence, CE with the uniform sampler in float64; the
ensemble's mlp and vmap engines; the minima cache's get and get_many) are trained by the trainer of
``BEFORE`` (extracted with ``git archive`` into a temporary folder and run in a subprocess) and by
this tree's, and must agree in status, iterations, losses and every tensor.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from stabcheck.experiments.data import DataNotFoundError, load_dataset

from tests import training_fingerprint

#: The last commit before the trainer was restructured (train and train_ensemble written apart).
BEFORE = "d737c6b"
REPO = Path(__file__).resolve().parent.parent


def _data_available() -> bool:
    try:
        load_dataset("fashion_mnist", 40, with_test=False, download=False)
    except DataNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def before(tmp_path_factory) -> dict:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the earlier trainer cannot be extracted")
    known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BEFORE}^{{commit}}"], capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {BEFORE} is not in this checkout's history (a shallow clone?)")
    root = tmp_path_factory.mktemp("before")
    archive = root / "tree.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), BEFORE, "stabcheck"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    out = root / "cases.pt"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    script = Path(training_fingerprint.__file__)
    flag = "with-data" if _data_available() else "no-data"
    subprocess.run([sys.executable, str(script), str(out), flag], check=True, env=env, cwd=root)
    return torch.load(out, weights_only=True)


def _same(u: float, v: float) -> bool:
    return u == v or (math.isnan(u) and math.isnan(v))


def test_trained_parameters_equal_those_of_the_earlier_trainer(before):
    now = training_fingerprint.cases(_data_available())
    assert now.keys() == before.keys()
    for case, old in before.items():
        new = now[case]
        assert (new["status"], new["iterations"]) == (old["status"], old["iterations"]), case
        assert _same(new["ema"], old["ema"]) and _same(new["final"], old["final"]), case
        assert torch.equal(new["curve"].nan_to_num(), old["curve"].nan_to_num()), case
        assert new["state"].keys() == old["state"].keys(), case
        for name, tensor in old["state"].items():
            assert torch.equal(new["state"][name], tensor), f"{case}: {name}"
