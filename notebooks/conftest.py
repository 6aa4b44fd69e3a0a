"""nbval time budget: fail the run when one notebook takes longer than NOTEBOOK_BUDGET_S.

Every notebook must run in at most 30 s on a 2-core CPU (README). pytest reports a duration
for each cell's setup, call and teardown; their sum per notebook is its time under nbval.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

_seconds: dict[str, float] = defaultdict(float)


def _budget() -> float:
    return float(os.environ.get("NOTEBOOK_BUDGET_S", "30"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    notebook, _, cell = report.nodeid.partition("::")
    if notebook.endswith(".ipynb") and cell:
        _seconds[notebook] += report.duration


def _over_budget() -> dict[str, float]:
    return {nb: s for nb, s in _seconds.items() if s > _budget()}


def pytest_terminal_summary(terminalreporter) -> None:
    if not _seconds:
        return
    terminalreporter.section(f"notebook times (budget {_budget():.0f} s each)")
    for notebook, seconds in sorted(_seconds.items()):
        flag = "  OVER BUDGET" if seconds > _budget() else ""
        terminalreporter.write_line(f"{seconds:6.1f} s  {notebook}{flag}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _over_budget() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
