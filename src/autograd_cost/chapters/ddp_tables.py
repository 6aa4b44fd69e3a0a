"""Notebook 06 on screen and on paper: the step-time table, the bucket timeline, the projection.

Rows are the dataclasses of `chapters.ddp` (read by attribute, so this module imports no
other chapter); tables are pandas DataFrames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from autograd_cost.core import check_number, check_positive_int
from autograd_cost.timing import Timing


def _ms(timing: Timing) -> str:
    return f"{timing.median * 1e3:.2f} ± {timing.iqr * 1e3:.2f}"


def step_times_table(rows: Sequence[Any]) -> pd.DataFrame:
    """Step times per freeze depth in ms, median ± IQR, from `StepTimes` rows (notebook 06)."""
    return pd.DataFrame([{
        "freeze depth": r.freeze_depth,
        "DDP backward": _ms(r.backward_ddp),
        "compute only": _ms(r.backward_compute),
        "all-reduce alone": _ms(r.allreduce_alone),
        "hidden": round(r.hidden_seconds * 1e3, 2),
        "last bucket ready": round(r.bucket_ready[-1] * 1e3, 2),
        "last bucket done": round(r.bucket_done[-1] * 1e3, 2),
        "tail": _ms(r.tail),
    } for r in rows]).set_index("freeze depth")


def plot_bucket_timeline(rows: Sequence[Any]):
    """A bar per freeze depth: backward compute, each bucket from ready to done (notebook 06)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.9 * len(rows) + 1.5))
    for y, r in enumerate(rows):
        ax.barh(y + 0.2, r.backward_compute.median * 1e3, height=0.3, color="tab:blue",
                label="backward compute alone" if y == 0 else None)
        for i, (ready, done) in enumerate(zip(r.bucket_ready, r.bucket_done, strict=True)):
            ax.barh(y - 0.2, (done - ready) * 1e3, left=ready * 1e3, height=0.3,
                    color=f"C{i + 1}", alpha=0.7, edgecolor="k")
            ax.text(ready * 1e3, y - 0.2, f"b{i}", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [f"freeze depth {r.freeze_depth}" for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="ms since backward started",
           title="Buckets: all-reduce from ready to done (median over steps)")
    ax.legend(loc="lower right", fontsize=10)
    fig.tight_layout()
    return fig


def ring_allreduce_seconds(nbytes: float, world_size: int, bytes_per_second: float) -> float:
    """Bandwidth-only ring all-reduce: 2(n-1)/n x bytes / bandwidth per direction (notebook 06)."""
    check_number("nbytes", nbytes, low=0)
    check_positive_int("world_size", world_size)
    check_number("bytes_per_second", bytes_per_second, low=1e-12)
    return 2 * (world_size - 1) / world_size * nbytes / bytes_per_second


def project_allreduce(
    total_params: float,
    frozen_fractions: Sequence[float],
    bytes_per_param: float,
    world_size: int,
    links: Mapping[str, float],
) -> pd.DataFrame:
    """All-reduce GB and ms per step for each frozen share of a model, per link (notebook 06).

    `links` maps a link name to its bandwidth in bytes per second per direction (a ring
    sends and receives at once), e.g. 450e9 for H100 NVLink 4, whose 900 GB/s is both ways.
    Indexed by the frozen share ("50%"); columns "GB per step" and "<link> ms" per link.
    """
    check_number("total_params", total_params, low=1)
    check_number("bytes_per_param", bytes_per_param, low=1e-12)
    if not links:
        raise ValueError("links must name at least one bandwidth, e.g. {'NVLink 4': 450e9}")
    for fraction in frozen_fractions:
        check_number("a frozen fraction", fraction, low=0, high=1)
    rows = []
    for fraction in frozen_fractions:
        nbytes = total_params * (1 - fraction) * bytes_per_param
        row = {"frozen": f"{fraction:.0%}", "GB per step": nbytes / 1e9}
        for link, bandwidth in links.items():
            row[f"{link} ms"] = ring_allreduce_seconds(nbytes, world_size, bandwidth) * 1e3
        rows.append(row)
    return pd.DataFrame(rows).set_index("frozen")
