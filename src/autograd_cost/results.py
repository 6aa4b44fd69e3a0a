"""Results as pandas DataFrames: tables for notebooks, CSV for results/, machine metadata."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from autograd_cost.core import pick_device


def machine_metadata(device: str | torch.device | None = None) -> dict[str, str]:
    """Torch version, device, thread count and CPU that a result was measured on."""
    device = pick_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "torch_version": torch.__version__,
        "device": str(device),
        "device_name": name or platform.machine(),
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) with pyproject.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def _as_dict(row: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return {f.name: getattr(row, f.name) for f in dataclasses.fields(row) if f.repr}
    if isinstance(row, Mapping):
        return dict(row)
    raise TypeError(f"a result row must be a dict or a dataclass, got {type(row).__name__}")


def to_frame(rows: Iterable[Any], columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Rows (dicts or dataclasses) as a DataFrame; `columns` picks and renames (notebook 06).

    `columns` maps a row key to its column title, in display order. Lists and tuples in a
    cell are shown joined by "+" (e.g. frozen units), so the table prints on one line each.
    """
    frame = pd.DataFrame([_as_dict(row) for row in rows])
    if columns is not None:
        missing = [key for key in columns if key not in frame.columns]
        if missing:
            raise ValueError(f"no column(s) {missing}; the rows have {list(frame.columns)}")
        frame = frame[list(columns)].rename(columns=dict(columns))
    for name in frame.columns:
        if frame[name].map(lambda v: isinstance(v, (list, tuple))).any():
            frame[name] = frame[name].map(_joined)
    return frame


def _joined(value: Any) -> Any:
    return "+".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def write_results(
    table: pd.DataFrame | Iterable[Any],
    name: str,
    device: str | torch.device | None = None,
    folder: Path | None = None,
) -> Path:
    """Write a table as CSV plus machine metadata columns to results/NAME.csv (notebook 02).

    `table` is a DataFrame or rows for `to_frame`. `folder` defaults to results/ in the
    project root (git-ignored). Returns the path relative to the project root when inside it.
    """
    frame = table if isinstance(table, pd.DataFrame) else to_frame(table)
    if frame.empty:
        raise ValueError("no rows to write")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"name must be a plain file stem such as 'headline_mlp', got {name!r}")
    root = project_root()
    folder = Path(folder) if folder is not None else root / "results"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    frame = frame.copy()
    for column in frame.columns:
        frame[column] = frame[column].map(_joined)
    for key, value in machine_metadata(device).items():
        if key not in frame.columns:
            frame[key] = value
    frame.to_csv(path, index=False)
    resolved = path.resolve()
    return resolved.relative_to(root) if resolved.is_relative_to(root) else resolved


def format_seconds(seconds: float) -> str:
    """A time in the unit that suits it: µs, ms or s, three significant digits."""
    if seconds != seconds or seconds < 0:
        raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} µs"
