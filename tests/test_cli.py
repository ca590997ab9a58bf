"""``python -m stabcheck measure``: a saved model's numbers, and clear errors for bad input."""
import json
from pathlib import Path

import pytest
import torch

import stabcheck
from stabcheck.reporting.cli import main
from stabcheck.reporting.rows import upgrade_report
from stabcheck.experiments.models import build_model


@pytest.fixture
def saved(tmp_path):
    model = build_model("fnn", seed=0, in_shape=(1, 4, 4), num_classes=3, widths=(6,))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 4, 4, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (12,), generator=g), 3).float()
    torch.save({"inputs": x, "targets": y}, tmp_path / "data.pt")
    return tmp_path, model, x, y


def _args(tmp_path, *extra):
    return ["measure", "--model", str(tmp_path / "model.pt"), "--arch", "fnn:widths=6",
            "--data-file", str(tmp_path / "data.pt"), "--lr", "0.5", "--dtype", "float64", "--quiet", *extra]


def test_measure_prints_table_and_writes_json_matching_the_library(saved, capsys):
    tmp_path, model, x, y = saved
    out = tmp_path / "result.json"
    assert main(_args(tmp_path, "--batch-size", "1", "12", "--form", "full", "--json", str(out))) == 0
    table = capsys.readouterr().out
    assert "sharpness" in table and "Theorem 1" in table
    result = json.loads(out.read_text())
    prob = stabcheck.Problem(model.eval(), x, y, dtype=torch.float64)
    assert result["sharpness"]["value"] == pytest.approx(stabcheck.sharpness(prob).value, rel=1e-6)
    assert result["non_uniformity"]["value"] == pytest.approx(stabcheck.non_uniformity(prob).value, rel=1e-6)
    assert [r["batch_size"] for r in result["settings"]] == [1, 12]
    assert result["settings"][1]["nonuniformity_bound"] is None  # GD's bound is infinite: JSON null
    # One sweep: GD (the largest B) is solved and is not certified, which decides B = 1 by a bound.
    sgd, gd = result["settings"]
    assert (gd["theorem1_source"], sgd["theorem1_source"], sgd["theorem1"]) == ("solve", "bound", None)
    assert gd["theorem1"] == pytest.approx(stabcheck.theorem1(prob, 0.5, 12, form="full").value, rel=1e-6)
    separate = stabcheck.theorem1(prob, 0.5, 1, form="full")
    assert sgd["theorem1_verdict"] == separate.verdict == "not certified"
    assert sgd["theorem1_lower"] <= separate.value and sgd["theorem1_upper"] is None
    assert f">={sgd['theorem1_lower']:.6f}" in table


def test_measure_prints_the_sample_form_by_default(saved, capsys):
    """d = 123 > nK = 36 at a squared-error loss: the sample form, its μ, margin and residual term."""
    tmp_path, model, x, y = saved
    out = tmp_path / "result.json"
    assert main(_args(tmp_path, "--lr", "0.01", "--batch-size", "1", "2", "12", "--json", str(out))) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    prob = stabcheck.Problem(model.eval(), x, y, dtype=torch.float64)
    alone = {b: stabcheck.theorem1(prob, 0.01, b) for b in (1, 2, 12)}
    rows = {r["batch_size"]: r for r in result["settings"]}
    assert {r["theorem1_form"] for r in rows.values()} == {"sample"}
    for b in (1, 12):
        assert rows[b]["mu"] == pytest.approx(alone[b].mu, rel=1e-6)
        assert rows[b]["margin"] == pytest.approx(2 - alone[b].mu, rel=1e-6)
        assert f"mu={rows[b]['mu']:.6f}" in table
    assert rows[2]["mu"] is None and rows[2]["mu_lower"] <= alone[2].mu <= rows[2]["mu_upper"]
    assert all(r["theorem1_verdict"] == alone[b].verdict for b, r in rows.items())
    assert result["residual"]["size"] == pytest.approx(alone[1].residual.size, rel=1e-6)
    assert "margin" in table and "residual term H - G" in table


@pytest.mark.parametrize("change,message", [
    ({"--arch": "fnn:widths=7"}, "does not fit --arch fnn:widths=7"),
    ({"--arch": "fnn:widths=six"}, "expected whole numbers"),
    ({"--lr": "-1"}, "--lr must be a positive finite number"),
    ({"--model": "missing.pt"}, "does not exist"),
    ({"--data-file": "missing.pt"}, "does not exist"),
])
def test_measure_bad_input_gets_a_clear_error(saved, capsys, change, message):
    tmp_path = saved[0]
    args = _args(tmp_path)
    for flag, value in change.items():
        args[args.index(flag) + 1] = value if flag in ("--arch", "--lr") else str(tmp_path / value)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_measure_refuses_batch_size_outside_range(saved, capsys):
    assert main(_args(saved[0], "--batch-size", "13")) == 2
    assert "--batch-size must lie in [1, n=12]" in capsys.readouterr().err


REFERENCE = Path(__file__).resolve().parent.parent / "reports" / "reference" / "claims.json"


def test_report_finds_the_rows_of_each_figure_by_tag_not_by_test_name(tmp_path, capsys):
    """``report`` draws the reference's six figures; rows that carry their tag keep their figures when
    the tests are renamed (rows without tags are found by the documented test names)."""
    data = upgrade_report(json.loads(REFERENCE.read_text()))
    for row in data["rows"]:
        module, _, name = row["test"].partition("::")
        row["test"] = f"{module}::renamed_{name}"
    (tmp_path / "claims.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == \
        ["appendix_b.png", "diagram.png", "edge.png", "escape.png", "gd_edge.png", "one_dimensional.png"]
