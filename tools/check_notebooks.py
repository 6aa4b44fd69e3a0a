"""Notebook hygiene for CI: strict nbval can only check what was committed cleanly.

Checks each notebook for: execution top to bottom in one fresh kernel (counts 1..N), no error
outputs, no volatile metadata, no machine paths or memory addresses in outputs, a bounded share
of ignored cells, and the course skeleton (title, What you will learn, Prerequisites, Presenter
notes, Summary, Exercises). Exits non-zero with one line per problem.

Usage: python tools/check_notebooks.py [notebooks/*.ipynb ...]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MAX_IGNORED_SHARE = 0.3
VOLATILE_CELL_KEYS = {"execution", "ExecuteTime", "collapsed", "scrolled"}
ALLOWED_NOTEBOOK_KEYS = {"kernelspec", "language_info"}
REQUIRED_HEADINGS = (
    "What you will learn",
    "Prerequisites",
    "Presenter notes",
    "## Summary",
    "## Exercises",
)
ADDRESS = re.compile(r"\b0x[0-9a-f]{6,}")
MACHINE_PATHS = ("/tmp/", "/home/", "/root/", "/Users/", "site-packages", "C:\\\\")


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _output_problems(cell: dict) -> list[str]:
    problems = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            problems.append(f"an error output ({output.get('ename')})")
        text = json.dumps(output)
        if ADDRESS.search(text):
            problems.append("a memory address in an output")
        if any(path in text for path in MACHINE_PATHS):
            problems.append("a machine path in an output")
    return problems


def check_notebook(path: Path) -> list[str]:
    """Every hygiene problem of one notebook, as readable lines."""
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return [f"{path}: not a readable notebook ({error})"]
    problems: list[str] = []
    extra = set(notebook.get("metadata", {})) - ALLOWED_NOTEBOOK_KEYS
    if extra:
        problems.append(f"volatile notebook metadata {sorted(extra)}")
    counts, ignored, markdown = [], 0, []
    for index, cell in enumerate(notebook.get("cells", [])):
        volatile = VOLATILE_CELL_KEYS & set(cell.get("metadata", {}))
        if volatile:
            problems.append(f"cell {index}: volatile metadata {sorted(volatile)}")
        if cell.get("cell_type") == "markdown":
            markdown.append(_source(cell))
            continue
        if cell.get("cell_type") != "code" or not _source(cell).strip():
            continue
        counts.append(cell.get("execution_count"))
        if "NBVAL_IGNORE_OUTPUT" in _source(cell) or "NBVAL_SKIP" in _source(cell):
            ignored += 1
        problems += [f"cell {index}: {p}" for p in _output_problems(cell)]
    if counts != list(range(1, len(counts) + 1)):
        problems.append(f"not executed top to bottom in a fresh kernel: counts {counts[:8]}...")
    if counts and ignored / len(counts) > MAX_IGNORED_SHARE:
        problems.append(
            f"{ignored} of {len(counts)} code cells ignore their output "
            f"(at most {MAX_IGNORED_SHARE:.0%}); make more of them deterministic"
        )
    cells = notebook.get("cells", [])
    first = cells[0] if cells else {}
    if first.get("cell_type") != "markdown" or not _source(first).lstrip().startswith("# "):
        problems.append("the first cell is not a markdown title ('# NN · ...')")
    text = "\n".join(markdown)
    problems += [f"missing '{h}'" for h in REQUIRED_HEADINGS if h not in text]
    return [f"{path}: {p}" for p in problems]


def main(argv: list[str]) -> int:
    """Check the given notebooks, or every notebooks/*.ipynb; print problems; exit 1 if any."""
    paths = [Path(a) for a in argv] or sorted(Path("notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    problems = [line for path in paths for line in check_notebook(path)]
    for line in problems:
        print(line)
    print(f"{len(paths)} notebook(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
