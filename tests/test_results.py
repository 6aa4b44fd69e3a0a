"""Results: DataFrames from rows, CSV with machine metadata read back by pandas, time units."""

import dataclasses
import platform

import pandas as pd
import pytest
import torch

from autograd_cost.results import (
    format_seconds,
    machine_metadata,
    project_root,
    to_frame,
    write_results,
)

METADATA = ["torch_version", "device", "device_name", "threads", "python"]


@dataclasses.dataclass(frozen=True)
class Row:
    mode: str
    frozen_units: tuple[str, ...]
    backward_flops: int
    hidden: int = dataclasses.field(default=0, repr=False)


def test_to_frame_takes_dicts_or_dataclasses_and_picks_and_renames_columns():
    rows = [Row("prefix", ("fc1", "fc2"), 10), Row("suffix", (), 20)]
    frame = to_frame(rows)
    assert list(frame.columns) == ["mode", "frozen_units", "backward_flops"]  # repr=False: out
    assert frame["frozen_units"].tolist() == ["fc1+fc2", ""]
    titled = to_frame([{"a": 1, "b": 2}, {"a": 3, "b": 4}], columns={"b": "B", "a": "A"})
    assert list(titled.columns) == ["B", "A"] and titled["A"].tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"no column\(s\) \['c'\]"):
        to_frame([{"a": 1}], columns={"c": "C"})
    with pytest.raises(TypeError, match="dict or a dataclass"):
        to_frame([3])


def test_write_results_writes_a_csv_that_pandas_reads_back_with_metadata(tmp_path):
    frame = pd.DataFrame({"mode": ["prefix", "suffix"], "backward_flops": [10, 20],
                          "frozen_units": [("fc1", "fc2"), ()]})
    path = write_results(frame, "headline", device="cpu", folder=tmp_path)
    assert path == tmp_path / "headline.csv"
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back.columns) == ["mode", "backward_flops", "frozen_units", *METADATA]
    assert back["backward_flops"].tolist() == [10, 20]
    assert back["frozen_units"].tolist() == ["fc1+fc2", ""]
    assert set(back["torch_version"]) == {torch.__version__}
    assert set(back["device"]) == {"cpu"} and set(back["threads"]) == {torch.get_num_threads()}
    assert set(back["python"]) == {platform.python_version()}
    rows_path = write_results([{"x": 1}], "from_rows", device="cpu", folder=tmp_path)
    assert pd.read_csv(rows_path)["x"].tolist() == [1]


def test_write_results_refuses_bad_names_and_empty_tables(tmp_path):
    for bad in ("", "../up", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="plain file stem"):
            write_results([{"x": 1}], bad, folder=tmp_path)
    with pytest.raises(ValueError, match="no rows"):
        write_results(pd.DataFrame(), "empty", folder=tmp_path)


def test_machine_metadata_and_project_root(tmp_path):
    meta = machine_metadata("cpu")
    assert list(meta) == METADATA and meta["device"] == "cpu"
    assert meta["threads"] == str(torch.get_num_threads())
    (tmp_path / "pyproject.toml").write_text("")
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    assert project_root(inner) == tmp_path.resolve()


@pytest.mark.parametrize(("seconds", "text"), [
    (2.5, "2.5 s"), (1.0, "1 s"), (123.4, "123 s"), (0.0123, "12.3 ms"), (0.001, "1 ms"),
    (4.56e-6, "4.56 µs"), (0.0, "0 µs"), (2e-9, "0.002 µs"),
])
def test_format_seconds_picks_the_unit(seconds, text):
    assert format_seconds(seconds) == text


def test_format_seconds_refuses_negative_and_nan():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="non-negative"):
            format_seconds(bad)
