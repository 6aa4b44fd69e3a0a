"""The package's layers, its docs and its docstring tags agree with ARCHITECTURE.md."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "autograd_cost"
MAX_LINES = 420  # "about 400"
# Rank of each layer: a module may import only from layers of lower or equal rank.
LAYERS = {
    "core": 0, "models": 0, "data": 0, "loading": 0,
    "quiet": 1, "freezing": 1, "graph": 2, "cost": 2, "timing": 2, "ops": 3, "results": 1,
    "training": 2, "launch": 3, "memory_timeline": 2, "memory": 3, "compiled": 3, "costmodel": 3,
    "profile": 4, "cli": 5, "bench": 5, "__main__": 6, "demo": 5, "__init__": 5,
    "chapters": 7, "exercises": 8,
}
TAG = re.compile(r"\((?:notebook|nb)s?\.? ?(\d+)[^)]*\)|[Tt]aught in notebook (\d+)")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else path.stem


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("autograd_cost.")}
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_upward_and_no_module_is_too_long(path: Path) -> None:
    layer = layer_of(path)
    assert layer in LAYERS, f"{path.name}: add its layer to LAYERS and ARCHITECTURE.md"
    for name in imported_modules(path):
        target = name.split(".")[1]
        assert LAYERS[target] <= LAYERS[layer], f"{layer} imports {name}, a higher layer"
        assert not layer == target == "chapters", (
            f"a chapter module imports another chapter module: {name}")
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most about 400)"


def test_architecture_lists_every_module_and_only_those() -> None:
    table = [line.split("|")[2] for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines()
             if line.startswith("| ") and line.count("|") >= 4]
    listed = {name for cell in table for name in re.findall(r"`([\w/]+\.py|\w+/)`", cell)}
    actual = {p.name for p in PACKAGE.glob("*.py")} | {
        f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert actual - listed == set(), "modules missing from ARCHITECTURE.md"
    assert {m for m in listed if not m.startswith(("chapters/", "exercises/"))} - actual == set()


def notebook_text(number: str) -> str:
    """The code and prose of notebook `number`, or "" if there is none."""
    found = list((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
    if not found:
        return ""
    cells = json.loads(found[0].read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells)


def tagged_names() -> list[tuple[str, str, str, str]]:
    """(module, name, docstring first line, tag text) for every docstring tag in the package."""
    rows = []
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in [*tree.body, *(n for c in tree.body if isinstance(c, ast.ClassDef)
                                   for n in c.body)]:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            for match in TAG.finditer(doc):
                rows.append((str(path.relative_to(PACKAGE)), node.name, doc, match.group(0)))
    return rows


def test_docstring_tags_have_one_format_and_name_a_notebook_that_uses_the_name() -> None:
    problems = []
    for module, name, _doc, tag in tagged_names():
        where = f"{module}:{name}"
        number = re.search(r"\d+", tag).group(0)
        if not re.fullmatch(r"\(notebook \d\d\)", tag):
            problems.append(f"{where}: tag {tag!r} is not in the form '(notebook NN)'")
            continue
        if name.startswith("_"):
            problems.append(f"{where}: a private name carries a notebook tag")
            continue
        text = notebook_text(number)
        if not text:
            problems.append(f"{where}: names notebook {number}, which does not exist")
        elif not re.search(rf"\b{re.escape(name)}\b", text):
            problems.append(f"{where}: names notebook {number}, which never mentions it")
    assert not problems, "\n".join(problems)
