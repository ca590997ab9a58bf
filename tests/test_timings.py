"""The measured seconds of the cost estimates: the data file, its loader and the command that regenerates it."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from claims.profiles import TIMINGS, TimingsError, profile, read_timings, timings, train_key
from claims.timings import SOURCE, main, refresh, write

#: The commit whose claims/profiles.py held the timings in code.
BEFORE = "8f8b783"


def _profiles_at(commit: str) -> str:
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    done = subprocess.run(["git", "-C", str(root), "show", f"{commit}:claims/profiles.py"], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"commit {commit} is not in this checkout ({done.stderr.strip()})")
    return done.stdout


def _costs_in_code(source: str) -> dict[str, tuple[dict, float]]:
    """scale → (train_seconds, measure_seconds) as the profile builders of ``source`` wrote them."""
    out = {}
    for fn in ast.parse(source).body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("_small", "_paper"):
            train = next(ast.literal_eval(n.value) for n in ast.walk(fn) if isinstance(n, ast.Assign)
                         and getattr(n.targets[0], "id", "") == "train_seconds")
            measure = next(ast.literal_eval(k.value) for k in ast.walk(fn)
                           if isinstance(k, ast.keyword) and k.arg == "measure_seconds")
            out[fn.name[1:]] = train, measure
    return out


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_the_data_file_keeps_every_estimate_the_code_held(scale):
    """Every minimum of every plan costs what it cost when the seconds were code, except entries the
    command has since regenerated from the minima cache."""
    train, measure = _costs_in_code(_profiles_at(BEFORE))[scale]
    p = profile(scale)
    fresh = {train_key(e)[1:] for e in read_timings()["train"] if e["measured"].startswith(SOURCE)}
    assert p.measure_seconds == measure
    assert {k: v for k, v in p.train_seconds.items() if k not in fresh} == {
        k: v for k, v in train.items() if k not in fresh}
    configs = p.configs()
    assert any(p.train_cost(c) is not None for c in configs)
    for c in configs:
        key = (c.setup.name, c.lr, None if c.is_gd else c.batch_size, c.momentum)
        if key not in fresh:
            assert p.train_cost(c) == train.get(key), c.label


def _summary(folder: Path, name: str, config, wall: float, ensemble: int = 1, device: str = "cpu") -> None:
    record = {"wall_time": wall, "ensemble": ensemble, "device": device, "threads": 1, "created": "2026-12-06T10:00:00"}
    (folder / f"{name}.json").write_text(json.dumps({"config": config.as_dict(), "label": config.label, **record}))


def test_the_command_writes_the_upper_end_over_seeds_and_keeps_the_rest(tmp_path, capsys):
    path, cache = tmp_path / "timings.json", tmp_path / "cache"
    cache.mkdir()
    shutil.copy(TIMINGS, path)
    before = read_timings(path)
    small = profile("small")
    fnn = small.setups["fnn"]
    _summary(cache, "a", fnn.config(0.1, 2, 0), 30.2)
    _summary(cache, "b", fnn.config(0.1, 2, 1), 41.3)
    _summary(cache, "c", fnn.config(0.1, 2, 2), 900.0, device="cuda:0")  # not a CPU's seconds
    _summary(cache, "d", small.setups["fnn_gd"].config(0.3, None, 0), 60.0, ensemble=3)  # a new setting
    (cache / "e.json").write_text("{}")
    assert main(["--cache-dir", str(cache), "--file", str(path), "--scale", "small"]) == 0
    after = {train_key(e): e for e in read_timings(path)["train"]}
    assert after[("small", "fnn", 0.1, 2, 0.0)]["seconds"] == 42
    assert after[("small", "fnn", 0.1, 2, 0.0)]["measured"].endswith("upper end over seeds [0, 1]")
    assert after[("small", "fnn_gd", 0.3, None, 0.0)]["seconds"] == 20
    untouched = [e for e in before["train"] if train_key(e) != ("small", "fnn", 0.1, 2, 0.0)]
    assert all(after[train_key(e)] == e for e in untouched) and len(after) == len(before["train"]) + 1
    assert read_timings(path)["measure"] == before["measure"]
    assert capsys.readouterr().out.splitlines() == [
        f"skipped {cache / 'e.json'} (not a minimum's summary: KeyError 'config')",
        "small fnn η=0.1 B=2 μ=0: 12 → 42 s", "small fnn_gd η=0.3 B=n μ=0: new, 20 s"]
    # a second run finds nothing new; a paper-scale refresh ignores the small profile's minima
    assert refresh(path, cache, ("small",))[0] == [] and refresh(path, cache, ("paper",))[0] == []


def test_the_command_refuses_a_missing_cache_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--cache-dir", str(tmp_path / "none"), "--file", str(tmp_path / "t.json")])
    assert "no minima cache folder" in capsys.readouterr().err


def test_the_written_file_reads_back_as_it_was(tmp_path):
    doc = read_timings()
    write(tmp_path / "t.json", doc)
    assert read_timings(tmp_path / "t.json") == doc


@pytest.mark.parametrize("text, says", [
    ("{not json", "cannot read the timings file"),
    ('{"train": []}', "must be an object with the lists 'train' and 'measure'"),
    ('{"train": [{"scale": "small"}], "measure": []}', "train entry 0"),
    ('{"train": [], "measure": [{"scale": "small", "seconds": -1, "measured": ""}]}', "seconds ≥ 0"),
    ('{"train": [], "measure": [{"scale": "small", "seconds": 1, "measured": ""}, '
     '{"scale": "small", "seconds": 2, "measured": ""}]}', "twice"),
])
def test_a_malformed_timings_file_is_refused_with_what_to_do(tmp_path, text, says):
    path = tmp_path / "timings.json"
    path.write_text(text)
    with pytest.raises(TimingsError, match=says) as err:
        read_timings(path)
    assert "python -m claims.timings" in str(err.value)


def test_a_scale_without_a_measure_entry_is_refused(tmp_path):
    path = tmp_path / "timings.json"
    write(path, {"train": [], "measure": [{"scale": "small", "seconds": 1.5, "measured": "x"}]})
    assert timings("small", path)["measure_seconds"] == 1.5
    with pytest.raises(TimingsError, match="no measure entry for scale 'paper'"):
        timings("paper", path)
