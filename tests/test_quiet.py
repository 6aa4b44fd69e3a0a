"""The stderr guard drops Kineto's log lines, in any torch build's format, and keeps the rest."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from autograd_cost.core import pick_device
from autograd_cost.quiet import is_native_log_line

KINETO_LINES = [
    "USDT:2026-11-22 05:25:12 5591:5591 SyncActivityProfilerHandler.cpp:52] profiler_start",
    "ERROR:2026-11-22 05:25:12 5591:5591 DeviceProperties.cpp:50] gpuGetDeviceCount failed "
    "with code 35",
    "STAGE:2024-01-02 03:04:05 77:78 ActivityProfilerController.cpp:314] Completed Stage",
    "WARNING:2026-11-22 05:25:12.123 1:2 CuptiActivityApi.cpp:80] CUPTI not found",
]


@pytest.mark.parametrize("line", KINETO_LINES)
def test_kineto_lines_are_recognized(line: str) -> None:
    assert is_native_log_line(line)


@pytest.mark.parametrize("line", [
    "UserWarning: something real",
    "ERROR: the user's own message",
    "Traceback (most recent call last):",
])
def test_other_lines_are_not(line: str) -> None:
    assert not is_native_log_line(line)


def test_profiling_writes_nothing_to_fd_2_but_other_output_passes() -> None:
    """In a subprocess, so that the real file descriptor 2 is what we read."""
    script = textwrap.dedent("""
        import os, torch
        from autograd_cost.quiet import native_log_filtered, quiet_profile
        with quiet_profile("cpu") as prof:
            torch.ones(8).sum()
        prof.key_averages().table(row_limit=3)
        with native_log_filtered():
            os.write(2, b"USDT:2026-11-22 05:25:12 1:1 X.cpp:1] dropped\\n")
            os.write(2, b"kept line\\n")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.stderr == "kept line\n"


def test_pick_device_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGRAD_COST_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")  # the argument wins
    monkeypatch.setenv("AUTOGRAD_COST_DEVICE", "tpu9")
    with pytest.raises(ValueError, match="AUTOGRAD_COST_DEVICE 'tpu9' is not a device"):
        pick_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a GPU-less machine")
def test_pick_device_says_when_cuda_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGRAD_COST_DEVICE", "cuda")
    with pytest.raises(ValueError, match=r"torch\.cuda\.is_available\(\) is False"):
        pick_device()
