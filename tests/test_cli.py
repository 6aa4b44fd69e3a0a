"""The command line on a model it has never seen: loaded from a file or an import path, listed,
profiled as a sweep or one chosen set, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autograd_cost import profile_freezing
from autograd_cost.loading import SpecError, make_input, parse_kwargs, parse_shape

USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, width: int = 16):
            super().__init__()
            self.head = nn.Linear(width, 3)          # defined first, runs last
            self.body = nn.Linear(8, width)
            self.stem = nn.Conv1d(2, 2, 3, padding=1)

        def forward(self, x):
            h = self.stem(x).flatten(1)
            return self.head(torch.relu(self.body(h)))


    def example():
        return torch.randn(5, 2, 4)


    def broken():
        raise RuntimeError("factory exploded")


    class NoParameters(nn.Module):
        def forward(self, x):
            return x
""")
TIMING_KEYS = {"backward_seconds", "backward_seconds_iqr", "backward_seconds_q1",
               "backward_seconds_q3"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    (folder / "usernet.py").write_text(USER_MODULE)
    (folder / "broken_import.py").write_text("import no_such_package_here\n")
    return folder


def cli(workdir: Path, *args: str, script: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process from `workdir`, as an engineer would."""
    if script:
        command = [str(Path(sys.executable).with_name("autograd-cost")), *args]
    else:
        command = [sys.executable, "-m", "autograd_cost", *args]
    env = {**os.environ, "AUTOGRAD_COST_DEVICE": "cpu", "MPLBACKEND": "Agg"}
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env,
                          timeout=120)


def test_units_lists_a_file_model_in_forward_order(workdir: Path) -> None:
    done = cli(workdir, "units", "--model", "usernet.py:Net", "--input-shape", "5,2,4")
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()[2:5]]
    assert names == ["stem", "body", "head"]  # execution order, not definition order
    assert "Conv1d" in done.stdout and "total" in done.stdout


def test_console_script_imports_from_the_current_directory(workdir: Path) -> None:
    done = cli(workdir, "units", "--model", "usernet:Net", "--model-kwargs", '{"width": 4}',
               "--input", "usernet:example", "--json", script=True)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["name"], r["trainable"]) for r in rows] == [("stem", 14), ("body", 36),
                                                            ("head", 15)]


def test_profile_json_equals_the_python_api_timings_aside(workdir: Path) -> None:
    done = cli(workdir, "profile", "--model", "usernet:Net", "--input-shape", "5,2,4",
               "--repeats", "2", "--json", "--plot", "sweep.png")
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(workdir))
    try:
        from usernet import Net
    finally:
        sys.path.remove(str(workdir))
    api = profile_freezing(Net(), make_input((5, 2, 4)), repeats=2, device="cpu")

    def deterministic(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    api_rows = json.loads(api.to_json(orient="records"))
    assert deterministic(json.loads(done.stdout)) == deterministic(api_rows)
    assert (workdir / "sweep.png").stat().st_size > 0


def test_freeze_profiles_exactly_that_set_against_unfrozen(workdir: Path) -> None:
    done = cli(workdir, "profile", "--model", "usernet.py:Net", "--input-shape", "5,2,4",
               "--freeze", "head,stem", "--repeats", "2", "--json", "--plot", "set.png")
    assert done.returncode == 0, done.stderr
    unfrozen, chosen = json.loads(done.stdout)
    assert (unfrozen["mode"], unfrozen["frozen_units"]) == ("unfrozen", [])
    assert (chosen["mode"], chosen["freeze_depth"], chosen["frozen_units"]) == (
        "chosen", 2, ["stem", "head"])  # listed in execution order
    assert chosen["trainable_params"] == 8 * 16 + 16  # only body trains
    assert chosen["backward_flops"] < unfrozen["backward_flops"]
    assert (workdir / "set.png").stat().st_size > 0


BAD_INPUTS = {
    "module does not import": (["--model", "broken_import:Net", "--input-shape", "2"],
                               "cannot import module 'broken_import'"),
    "file does not exist": (["--model", "missing.py:Net", "--input-shape", "2"],
                            "no such file 'missing.py'"),
    "callable fails": (["--model", "usernet:broken", "--input-shape", "2"],
                       "failed: RuntimeError: factory exploded"),
    "input shape rejected": (["--model", "usernet:Net", "--input-shape", "5,3,4"],
                             "does not fit the model Net"),
    "no parameters": (["--model", "usernet:NoParameters", "--input-shape", "2"],
                      "has no parameters"),
    "unknown unit": (["--model", "usernet:Net", "--input-shape", "5,2,4", "--freeze", "neck"],
                     "unknown unit(s) ['neck']; valid units are ['head', 'body', 'stem']"),
    "no input for own model": (["--model", "usernet:Net"], "needs an example input"),
    "bad kwargs": (["--model", "usernet:Net", "--model-kwargs", "[1]", "--input-shape", "2"],
                   "must be a JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_and_exit_2(workdir: Path, case: str) -> None:
    args, message = BAD_INPUTS[case]
    done = cli(workdir, "profile", *args, "--repeats", "1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_the_model_s_own_error_is_quoted(workdir: Path) -> None:
    done = cli(workdir, "units", "--model", "usernet:Net", "--input-shape", "5,3,4")
    assert done.returncode == 2
    assert "expected input[5, 3, 4] to have 2 channels" in done.stderr


def test_specs_parse_or_say_what_is_valid() -> None:
    assert parse_shape("16,3,8,8") == (16, 3, 8, 8)
    assert parse_kwargs('{"width": 4}') == {"width": 4}
    with pytest.raises(SpecError, match="comma-separated integers"):
        parse_shape("16x3")
    with pytest.raises(SpecError, match="positive"):
        parse_shape("0,3")
    with pytest.raises(SpecError, match="needs --vocab"):
        make_input((2, 3), "long")
    tokens = make_input((2, 3), "long", vocab=7)
    assert tokens.dtype == torch.long and int(tokens.max()) < 7
    assert torch.equal(make_input((2, 3)), make_input((2, 3)))  # seeded
