"""The CI files say what the README promises: .ci/run runs make test, the workflow runs .ci/run
on every supported Python."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ci_run_calls_make_test_and_a_simulated_cpu() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "make test " in script
    assert "ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default" in script
    assert "make test-notebooks" in script


def test_workflow_runs_ci_on_python_310_to_313_on_push_and_pull_request() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads on: as True
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert job["strategy"]["matrix"]["python"] == ["3.10", "3.11", "3.12", "3.13"]
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert "bash .ci/run" in commands
    assert "whl/cpu" in commands  # the small CPU build of torch, not the 5 GB CUDA one
