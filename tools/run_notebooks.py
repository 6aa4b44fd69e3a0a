"""Re-execute course notebooks in a fresh kernel, in place, then strip volatile metadata.

Usage:
    python tools/run_notebooks.py                      # every notebooks/*.ipynb, sorted
    python tools/run_notebooks.py notebooks/01_x.ipynb [more.ipynb | a_directory ...]

Each notebook runs in a new `python3` kernel of *this* Python environment, with the working
directory set to the notebook's own folder (as in JupyterLab and nbval), at most
--cell-timeout seconds per cell. Outputs and execution counts (renumbered 1..N) are kept;
cell metadata `execution`, `collapsed`, `scrolled`, `ExecuteTime` are dropped, and notebook
metadata is reduced to `kernelspec` plus `language_info.name`. A notebook that raises is
left unchanged on disk.

Prints the wall time per notebook; exits non-zero if any notebook raised or took longer
than --budget seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import ipykernel.kernelspec
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

REPO = Path(__file__).resolve().parent.parent
CELL_METADATA_DROP = ("execution", "collapsed", "scrolled", "ExecuteTime")
DEFAULT_KERNELSPEC = {
    "name": "python3",
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
}


class CurrentEnvKernelSpecManager(KernelSpecManager):
    """Always hands out ipykernel of the running interpreter, whatever kernelspecs are installed."""

    def get_kernel_spec(self, kernel_name: str):  # every name maps to this env
        return self.kernel_spec_class(
            resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
        )


class CurrentEnvKernelManager(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _default_kernel_spec_manager(self) -> KernelSpecManager:
        return CurrentEnvKernelSpecManager(data_dir=self.data_dir)


def strip(nb: nbformat.NotebookNode) -> None:
    """Keep outputs; renumber execution counts 1..N; drop volatile metadata."""
    kernelspec = nb.metadata.get("kernelspec") or DEFAULT_KERNELSPEC
    language = nb.metadata.get("language_info", {}).get("name", "python")
    nb.metadata = nbformat.from_dict(
        {"kernelspec": kernelspec, "language_info": {"name": language}}
    )
    count = 0
    for cell in nb.cells:
        for key in CELL_METADATA_DROP:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            continue  # empty cells are not executed
        count += 1
        cell.execution_count = count
        for output in cell.outputs:
            if output.output_type == "execute_result":
                output.execution_count = count


def run_one(path: Path, cell_timeout: int) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name="python3",
        kernel_manager_class=CurrentEnvKernelManager,
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        # Quiet the kernel's own start-up warnings (e.g. "running over TCP without
        # encryption"); errors raised in cells are reported regardless.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    client.execute()
    strip(nb)
    nbformat.validate(nb)
    nbformat.write(nb, path)


def collect(args: list[str]) -> list[Path]:
    if not args:
        return sorted((REPO / "notebooks").glob("*.ipynb"))
    paths: list[Path] = []
    for arg in args:
        p = Path(arg).resolve()
        if p.is_dir():
            paths.extend(sorted(p.glob("*.ipynb")))
        elif p.suffix == ".ipynb" and p.is_file():
            paths.append(p)
        else:
            raise SystemExit(f"error: not a notebook or folder: {arg}")
    return paths


def show(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks or folders (default: notebooks/)")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds per cell (120)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per notebook (30)")
    opts = parser.parse_args(argv)

    paths = collect(opts.notebooks)
    if not paths:
        print("error: no notebooks found", file=sys.stderr)
        return 1

    # Kernels inherit this environment: let them pick Jupyter's inline matplotlib backend,
    # exactly as in JupyterLab, so stored outputs match what learners see.
    os.environ.pop("MPLBACKEND", None)

    failures: list[str] = []
    for path in paths:
        start = time.perf_counter()
        try:
            run_one(path, opts.cell_timeout)
        except Exception as exc:
            wall = time.perf_counter() - start
            print(f"{wall:7.1f} s  {show(path)}  FAILED (file left unchanged)", flush=True)
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            failures.append(f"{show(path)}: raised {type(exc).__name__}")
            continue
        wall = time.perf_counter() - start
        slow = wall > opts.budget
        note = f"  TOO SLOW (budget {opts.budget:g} s)" if slow else ""
        print(f"{wall:7.1f} s  {show(path)}{note}", flush=True)
        if slow:
            failures.append(f"{show(path)}: took {wall:.1f} s > {opts.budget:g} s")

    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"\nOK: {len(paths)} notebook(s) executed and stripped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
