"""The notebook hygiene check flags each kind of problem and passes a clean notebook."""

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_notebooks.py"
spec = importlib.util.spec_from_file_location("check_notebooks", TOOL)
check_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_notebooks)

SKELETON = (
    "# 01 · Title\n**What you will learn**\n**Prerequisites**\n> **Presenter notes.**\n"
    "## Summary\n## Exercises"
)


def notebook(tmp_path, cells, metadata=None):
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": metadata or {"kernelspec": {}},
                                "nbformat": 4, "nbformat_minor": 5}))
    return path


def code(count, source="1 + 1", outputs=(), metadata=None):
    return {"cell_type": "code", "execution_count": count, "source": source,
            "outputs": list(outputs), "metadata": metadata or {}}


def markdown(text=SKELETON):
    return {"cell_type": "markdown", "source": text, "metadata": {}}


def test_clean_notebook_passes(tmp_path):
    path = notebook(tmp_path, [markdown(), code(1), code(2)])
    assert check_notebooks.check_notebook(path) == []


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ([markdown(), code(1), code(3)], "not executed top to bottom"),
        ([markdown(), code(1), code(None)], "not executed top to bottom"),
        ([markdown(), code(1, outputs=[{"output_type": "error", "ename": "KeyError"}])],
         "an error output (KeyError)"),
        ([markdown(), code(1, outputs=[{"output_type": "stream", "text": "<f at 0x7f12ab34cd>"}])],
         "a memory address"),
        ([markdown(), code(1, outputs=[{"output_type": "stream", "text": "/tmp/x.py"}])],
         "a machine path"),
        ([markdown(), code(1, metadata={"execution": {}})], "volatile metadata"),
        ([markdown(), code(1, "# NBVAL_IGNORE_OUTPUT\nt()"), code(2)], "ignore their output"),
        ([markdown("# Title only"), code(1)], "missing 'What you will learn'"),
        ([code(1), markdown()], "the first cell is not a markdown title"),
    ],
)
def test_each_problem_is_reported(tmp_path, cells, expected):
    problems = check_notebooks.check_notebook(notebook(tmp_path, cells))
    assert any(expected in p for p in problems), problems


def test_volatile_notebook_metadata_is_reported(tmp_path):
    path = notebook(tmp_path, [markdown(), code(1)], {"kernelspec": {}, "widgets": {}})
    assert any("volatile notebook metadata ['widgets']" in p
               for p in check_notebooks.check_notebook(path))


def test_main_exit_code(tmp_path, capsys):
    good = notebook(tmp_path, [markdown(), code(1)])
    assert check_notebooks.main([str(good)]) == 0
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    assert check_notebooks.main([str(bad)]) == 1
    assert "not a readable notebook" in capsys.readouterr().out
