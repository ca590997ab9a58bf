"""The cache of trained minima: miss then hit, keys, atomic files, the fixtures, and pytest-xdist safety."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

import stabcheck
from stabcheck.experiments import minima
from stabcheck.experiments.minima import MinimaCache, cache_key
from stabcheck.experiments.setups import Setup

ROOT = Path(__file__).resolve().parent.parent
TINY = Setup("tiny", "fashion_mnist", 20, "fnn", (("widths", (8,)),), tol=1e-2, max_iters=400)


def test_miss_then_hit_gives_the_same_minimum(tmp_path):
    config = TINY.config(lr=0.5, batch_size=None, seed=0)
    first = MinimaCache(tmp_path, progress=False).get(config)
    assert not first.from_cache and first.status in ("converged", "max_iters")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == \
        [f"{first.key}.json", f"{first.key}.pt"]  # no temporary file left behind
    cache = MinimaCache(tmp_path, progress=False)
    second = cache.get(config)
    assert second.from_cache and (cache.hits, cache.misses) == (1, 0)
    assert second.record == first.record and second.loss_curve == first.loss_curve
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    summary = json.loads((tmp_path / f"{first.key}.json").read_text())
    assert summary["label"] == "tiny-lr=0.5-B=n-seed=0" and summary["seed"] == 0 and summary["dtype"] == "float32"


def test_seeds_of_one_sgd_setting_train_together_as_each_alone(tmp_path):
    """get_many trains the missing seeds of an SGD setting in one ensemble, bit-identical to get (B·8·10 = 400
    multiply-adds in the last layer: the ensemble's condition for equality); GD goes through get."""
    sgd = [TINY.config(lr=0.5, batch_size=5, seed=s) for s in (0, 1, 2)]
    gd = TINY.config(lr=0.5, batch_size=None, seed=0)
    together = MinimaCache(tmp_path / "together", progress=False).get_many([*sgd, gd])
    alone = [MinimaCache(tmp_path / "alone", progress=False).get(c) for c in [*sgd, gd]]
    assert [m.config for m in together] == [*sgd, gd]
    assert [m.record["ensemble"] for m in together] == [3, 3, 3, 1]
    for a, b in zip(alone, together):
        assert (a.key, a.status, a.record["iterations"], a.loss_curve) == (b.key, b.status, b.record["iterations"],
                                                                         b.loss_curve)
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    again = MinimaCache(tmp_path / "together", progress=False)
    assert [m.from_cache for m in again.get_many(sgd)] == [True] * 3 and again.misses == 0


def test_problem_of_a_minimum_is_ready_to_measure(tmp_path):
    m = MinimaCache(tmp_path, progress=False).get(TINY.config(lr=0.5, batch_size=5, seed=1))
    prob = m.problem(dtype=torch.float64)
    assert prob.n == 20 and prob.loss == "mse" and not m.model().training
    assert prob.loss_value() == pytest.approx(m.record["final_loss"], rel=1e-4, abs=1e-7)
    assert stabcheck.sharpness(prob, tol=1e-3).value > 0


def test_key_changes_with_every_setting(monkeypatch):
    base = TINY.config(lr=0.5, batch_size=None, seed=0)
    variants = [base.with_(lr=0.4), base.with_(batch_size=5), base.with_(momentum=0.5), base.with_(seed=1),
                base.with_(sampler="uniform"), Setup(**{**TINY.__dict__, "tol": 1e-3}).config(0.5, None, 0)]
    keys = {cache_key(base)} | {cache_key(v) for v in variants}
    keys |= {cache_key(base, device="cuda"), cache_key(base, dtype="float64")}
    assert len(keys) == len(variants) + 3
    old = cache_key(base)
    monkeypatch.setattr(minima, "TRAINER_VERSION", "test-bump")
    assert cache_key(base) != old


def test_changed_trainer_version_is_a_miss(tmp_path, monkeypatch):
    config = TINY.config(lr=0.5, batch_size=None, seed=2)
    MinimaCache(tmp_path, progress=False).get(config)
    monkeypatch.setattr(minima, "TRAINER_VERSION", "test-bump")
    cache = MinimaCache(tmp_path, progress=False)
    assert not cache.get(config).from_cache and cache.misses == 1


def test_fixture_factory_holds_each_minimum(trained_minimum):
    m = trained_minimum(TINY.config(lr=0.5, batch_size=None, seed=0))
    assert trained_minimum(m.config) is m  # held for the session


@pytest.mark.slow
def test_two_xdist_workers_train_a_minimum_once(tmp_path):
    """Both workers of ``pytest -n 2 --dist each`` ask for the same minimum: one trains, one loads."""
    pytest.importorskip("xdist")
    scratch = Path(tempfile.mkdtemp(prefix="xdist-check-", dir=_scratch_root()))
    try:
        out = tmp_path / "out"
        out.mkdir()
        (scratch / "test_inner_minimum.py").write_text(textwrap.dedent(f"""
            import json, os
            from stabcheck.experiments.setups import Setup

            def test_same_minimum(trained_minimum):
                setup = Setup("xdist", "fashion_mnist", 20, "fnn", (("widths", (8,)),), tol=1e-2, max_iters=400)
                m = trained_minimum(setup.config(lr=0.5, batch_size=None, seed=0))
                payload = {{"from_cache": m.from_cache, "key": m.key,
                            "state": {{k: v.tolist() for k, v in m.state.items()}}}}
                with open(os.path.join({str(out)!r}, str(os.getpid()) + ".json"), "w") as fh:
                    json.dump(payload, fh)
        """))
        env = {**os.environ, "STABCHECK_CACHE_DIR": str(tmp_path / "cache")}
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "each", "-p", "no:cacheprovider",
             "--cache-dir", str(tmp_path / "cache"), str(scratch / "test_inner_minimum.py")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        results = [json.loads(p.read_text()) for p in out.glob("*.json")]
        assert len(results) == 2, run.stdout[-2000:]
        assert sorted(r["from_cache"] for r in results) == [False, True]
        assert results[0]["key"] == results[1]["key"] and results[0]["state"] == results[1]["state"]
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch_root() -> Path:
    # The inner run must sit under the repository so that the root conftest and fixtures/ load.
    root = ROOT / ".cache" / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_labels_are_the_test_ids_of_the_reference_report():
    """One label format: every id in reports/reference that names a trained minimum is that config's label."""
    import re

    from claims.suite import case_id

    pattern = re.compile(r"([a-z_0-9]+)-lr=([0-9.e-]+)-B=(n|[0-9]+)(?:-mu=([0-9.]+))?-seed=([0-9]+)")
    cases = json.loads((ROOT / "reports" / "reference" / "claims.json").read_text())["cases"]
    found = [m for c in cases for m in [pattern.match(c["test"].partition("[")[2])] if m]
    assert len(found) >= 20
    for m in found:
        name, lr, batch, mu, seed = m.groups()
        setup = Setup(name, "fashion_mnist", 100, "fnn")
        config = setup.config(float(lr), None if batch == "n" else int(batch), int(seed), float(mu or 0))
        assert config.label == case_id(config) == m.group(0)


def _fake_dataset(name: str, n: int):
    """Zeros of the shape of ``name``'s images: what building the nets needs, no data files."""
    from stabcheck.experiments.data import Dataset

    shape, classes = ((3, 32, 32), 2) if name == "cifar10" else ((3, 32, 32), 10) if name == "cifar10_all" \
        else ((1, 28, 28), 10)
    return Dataset(name, torch.zeros(n, *shape), torch.arange(n) % classes, None, None, classes, tuple(range(classes)),
                   "fake")


def test_a_cold_small_scale_run_trains_each_distinct_minimum_once(tmp_path, monkeypatch):
    """Every claim of the small profile asks for its minima as the claims' fixtures do (the seeds of a
    setting together, then each config); the trainers are stubs that count, so nothing trains for real."""
    from claims.profiles import profile
    from claims.suite import Suite
    from stabcheck.experiments.sgd import TrainRecord

    trained: list[str] = []
    ensembles: list[int] = []
    cache = MinimaCache(tmp_path, progress=False)

    def record(net, config_like) -> TrainRecord:
        return TrainRecord("converged", 1, 0.0, 0.0, config_like["lr"], config_like["batch_size"], 0, 0.0, "epoch",
                           1e-4, 1, config_like["seed"], "mse", "float32", "cpu", 0.0, 1, "stub",
                           state={k: v.clone() for k, v in net.state_dict().items()})

    def fake_train(net, inputs, targets, **kw):
        trained.append(cache.path(current[id(net)]).stem)
        return record(net, kw)

    def fake_ensemble(nets, inputs, targets, *, seeds, **kw):
        ensembles.append(len(nets))
        out = []
        for net, seed in zip(nets, seeds):
            trained.append(cache.path(current[id(net)]).stem)
            out.append(record(net, {**kw, "seed": seed}))
        return out

    current: dict[int, object] = {}  # id(net) → the config it was built for
    real_build = minima.build_for

    def build_for(config, dataset):
        net = real_build(config, dataset)
        current[id(net)] = config
        return net

    monkeypatch.setattr(minima, "train", fake_train)
    monkeypatch.setattr(minima, "train_ensemble", fake_ensemble)
    monkeypatch.setattr(minima, "build_for", build_for)
    monkeypatch.setattr(minima, "dataset_for", lambda config, data_dir=None: _fake_dataset(config.setup.dataset,
                                                                                               config.setup.n))
    suite = Suite(profile("small"), 0, None)
    claims = list(suite.profile.plans)
    configs = [c for claim in claims for c in suite.configs(claim)]
    settings: dict = {}
    for c in dict.fromkeys(configs):
        settings.setdefault(c.with_(seed=0), []).append(c)
    asked: set = set()
    for c in configs:  # claim by claim, as claims/conftest.py's measured_minimum asks
        if c.with_(seed=0) not in asked:
            asked.add(c.with_(seed=0))
            cache.get_many(settings[c.with_(seed=0)])
        cache.get(c)
    keys = {cache.path(c).stem for c in configs}
    distinct = {json.dumps(minima.training_fields(c), sort_keys=True) for c in configs}  # what trains
    assert sorted(trained) == sorted(keys) and len(trained) == len(distinct)  # each minimum trained, and once
    assert len(set(configs)) > len(distinct)  # some configs share a minimum (fnn and fnn_gd): a real dedupe
    assert cache.misses == len(keys) and ensembles  # the seeds of SGD settings trained together, too
