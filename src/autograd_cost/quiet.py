"""Keep native log lines off stderr: the one guard every profiler and compile call goes through.

Kineto (behind torch.profiler) writes lines such as

    USDT:2026-11-22 05:25:12 5591:5591 SyncActivityProfilerHandler.cpp:52] profiler_start
    ERROR:2026-11-22 05:25:12 5591:5591 DeviceProperties.cpp:50] gpuGetDeviceCount failed ...

straight to file descriptor 2, whatever KINETO_LOG_LEVEL says; the second comes from a CUDA
build of torch on a machine without a GPU. In a notebook any stderr output fails nbval, and a
sanitizer cannot help: the output exists. So the guard points fd 2 at a temporary file while
the block runs, then writes back every line that is not such a log line.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from torch.profiler import ProfilerActivity, profile

# LEVEL:YYYY-MM-DD HH:MM:SS pid:tid File.cpp:line] message  (Kineto's logger, any level)
NATIVE_LOG_LINE = re.compile(
    r"^[A-Z]+:\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)? \d+:\d+ [\w./-]+:\d+\] "
)


def is_native_log_line(line: str) -> bool:
    """True for a Kineto log line, which the guard drops (notebook 04)."""
    return NATIVE_LOG_LINE.match(line) is not None


@contextmanager
def native_log_filtered() -> Iterator[None]:
    """Drop Kineto's log lines from fd 2 while the block runs; anything else passes."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not is_native_log_line(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def profiler_activities(device_type: str = "cpu") -> list[ProfilerActivity]:
    """CPU, plus CUDA when the device is a GPU: what torch.profiler should record."""
    activities = [ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    return activities


@contextmanager
def quiet_profile(device_type: str = "cpu", **options: object) -> Iterator[profile]:
    """torch.profiler.profile with Kineto's log lines kept off stderr (notebook 04).

    `options` go to torch.profiler.profile (record_shapes=, profile_memory=, ...).
    """
    with native_log_filtered(), profile(activities=profiler_activities(device_type),
                                        **options) as prof:
        yield prof
