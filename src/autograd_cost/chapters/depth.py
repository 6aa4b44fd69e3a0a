"""Notebook 02, sections 1 and 4: reading freeze profiles (prefix vs suffix, time vs FLOPs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from autograd_cost.core import check_choice
from autograd_cost.cost import saved_activation_bytes
from autograd_cost.freezing import FREEZE_MODES, preserved_state
from autograd_cost.profile import with_ratios
from autograd_cost.results import to_frame


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _saved_non_parameters(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    params = list(layer.parameters())
    kept: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not any(_same_storage(tensor, p) for p in params):
            kept.append(tensor)
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(x)
    return kept


def frozen_layer_saves(layers: Sequence[tuple[nn.Module, torch.Tensor]]) -> pd.DataFrame:
    """Does each layer keep its input for backward, weight trainable vs frozen? (notebook 02)

    Takes (layer, input) pairs. The input needs a gradient, as inside a frozen suffix. Two
    rows per layer with `saved_bytes` (saved_activation_bytes: parameters excluded),
    `saved_shapes` (of the saved tensors that are not parameters) and `keeps_input`.
    Each layer's requires_grad is restored.
    """
    rows = []
    for layer, example_input in layers:
        if not isinstance(layer, nn.Module) or not list(layer.parameters()):
            raise ValueError("each layer must be a torch.nn.Module with parameters, e.g. "
                             "nn.Linear(8, 4)")
        if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
            raise ValueError("each input must be a floating-point tensor its layer accepts")
        x = example_input.detach().clone().requires_grad_(True)
        with preserved_state(layer):
            for weight in ("trainable", "frozen"):
                layer.requires_grad_(weight == "trainable")
                kept = _saved_non_parameters(layer, x)
                rows.append({"layer": type(layer).__name__, "weight": weight,
                             "saved_bytes": saved_activation_bytes(layer, x),
                             "keeps_input": any(_same_storage(t, x) for t in kept),
                             "saved_shapes": [tuple(t.shape) for t in kept]})
    return to_frame(rows)


def backward_ops_table(columns: Mapping[str, Mapping[str, tuple[int, int | None]]]) -> pd.DataFrame:
    """Backward ops side by side (say, unfrozen vs a freeze): calls and MFLOP (notebook 02).

    Takes {label: ops.backward_ops(...)}. `counted` says whether the FLOP counter has a
    formula for the op; "-" marks an op a column does not run, or FLOPs that are not counted.
    Counted ops come first, the costliest on top; columns are (label, "calls" or "MFLOP").
    """
    if not columns:
        raise ValueError("columns is empty; pass {label: backward_ops(...)}")
    names = {op for ops in columns.values() for op in ops}
    counted = {op: any(ops[op][1] is not None for ops in columns.values() if op in ops)
               for op in names}

    def order(op: str) -> tuple:
        flops = [ops[op][1] or 0 for ops in columns.values() if op in ops]
        return (not counted[op], -max(flops), op)

    rows = {}
    for op in sorted(names, key=order):
        row = {("counted", ""): "yes" if counted[op] else "no"}
        for label, ops in columns.items():
            calls, flops = ops.get(op, (0, None))
            row[label, "calls"] = calls or "-"
            row[label, "MFLOP"] = f"{flops / 1e6:.1f}" if flops is not None and calls else "-"
        rows[op] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table.rename_axis("backward op")


def row_at(frame: pd.DataFrame, mode: str, freeze_depth: int) -> pd.Series:
    """The profile row of one (mode, freeze depth), with a clear error if missing (notebook 02)."""
    found = frame[(frame["mode"] == mode) & (frame["freeze_depth"] == freeze_depth)]
    if found.empty:
        have = sorted({(m, int(d)) for m, d in zip(frame["mode"], frame["freeze_depth"],
                                                     strict=True) if not pd.isna(d)})
        raise KeyError(f"no row for mode={mode!r}, freeze_depth={freeze_depth}; the rows "
                       f"cover {have}")
    return found.iloc[0]


def half_depth(frame: pd.DataFrame) -> int:
    """Half the number of units of a full profile, rounded down (notebook 02)."""
    return int(frame["freeze_depth"].max()) // 2


TIMING_STATISTICS = {"median": "backward_seconds", "q1": "backward_seconds_q1"}


def time_ratio(frame: pd.DataFrame, mode: str, freeze_depth: int,
               timing: str = "median") -> float:
    """Backward time of a freeze over its mode's unfrozen time, by median or Q1 (notebook 02).

    timing="q1" divides lower quartiles: the faster half of the faster half of the repeats,
    which other programs on a busy machine disturb least.
    """
    key = TIMING_STATISTICS[check_choice("timing", timing, list(TIMING_STATISTICS))]
    base = row_at(frame, mode, 0)[key]
    if not base:
        raise ValueError(f"the unfrozen {mode} row has no {key}; profile with repeats >= 1")
    return float(row_at(frame, mode, freeze_depth)[key] / base)


def time_flop_gap(frame: pd.DataFrame, timing: str = "median") -> pd.Series:
    """Mean and max |time ratio - FLOP ratio| over a profile's partial freezes (notebook 02).

    Freeze depth 0 and the full freeze are left out (their gap is 0 by construction).
    `timing` is "median" or "q1", as in time_ratio.
    """
    ratios = with_ratios(frame)
    full = ratios["freeze_depth"].max()
    partial = ratios[(ratios["freeze_depth"] > 0) & (ratios["freeze_depth"] < full)]
    if partial.empty:
        raise ValueError("no partial freezes (0 < freeze_depth < all units) in this profile")
    gaps = pd.Series([abs(time_ratio(frame, mode, depth, timing) - flop_ratio)
                      for mode, depth, flop_ratio in zip(partial["mode"], partial["freeze_depth"],
                                                         partial["flop_ratio"], strict=True)])
    return pd.Series({"mean": gaps.mean(), "max": gaps.max()})


def half_depth_table(profiles: Mapping[str, pd.DataFrame], timings: bool = True) -> pd.DataFrame:
    """Prefix against suffix at half the freeze depth, per model (notebook 02).

    FLOP and time columns are ratios to the unfrozen model (`with_ratios`); timings=False
    keeps only the deterministic columns.
    """
    rows = []
    for name, frame in profiles.items():
        ratios = with_ratios(frame)
        depth = half_depth(frame)
        prefix, suffix = row_at(ratios, "prefix", depth), row_at(ratios, "suffix", depth)
        row = {"model": name, "freeze depth": f"{depth}/{int(frame['freeze_depth'].max())}",
               "prefix FLOPs": round(prefix["flop_ratio"], 2),
               "suffix FLOPs": round(suffix["flop_ratio"], 2),
               "prefix KiB": round(prefix["saved_activation_bytes"] / 1024, 1),
               "suffix KiB": round(suffix["saved_activation_bytes"] / 1024, 1)}
        if timings:
            row.update({"prefix time": round(prefix["time_ratio"], 2),
                        "suffix time": round(suffix["time_ratio"], 2)})
        rows.append(row)
    return pd.DataFrame(rows)


def with_shares(frame: pd.DataFrame) -> pd.DataFrame:
    """Add frozen-parameter share, backward-FLOP saving and measured time saving (notebook 02).

    The claim "time saved = share of frozen parameters" would put time_saving on
    param_share; the FLOP model puts it on flop_saving. time_saving_q1/_q3 come from the
    row's backward-time quartiles over its mode's unfrozen median.
    """
    ratios = with_ratios(frame)
    unfrozen = ratios["mode"].map(
        ratios[ratios["freeze_depth"] == 0].set_index("mode")["backward_seconds"])
    return ratios.assign(
        param_share=ratios["frozen_params"] / (ratios["trainable_params"]
                                               + ratios["frozen_params"]),
        flop_saving=1 - ratios["flop_ratio"],
        time_saving=1 - ratios["time_ratio"],
        time_saving_q1=1 - ratios["backward_seconds_q3"] / unfrozen,
        time_saving_q3=1 - ratios["backward_seconds_q1"] / unfrozen,
    )


def plot_shares(frame: pd.DataFrame):
    """Measured time saving against frozen-parameter share and against FLOP saving (notebook 02).

    Takes with_shares output; the error bars span the time saving's [Q1, Q3].
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, label in zip(axes, ("param_share", "flop_saving"),
                              ("share of parameters frozen", "share of backward FLOPs removed"),
                              strict=True):
        for mode, marker in zip(FREEZE_MODES, ("o", "s"), strict=True):
            mine = frame[frame["mode"] == mode]
            bars = [list(mine["time_saving"] - mine["time_saving_q1"]),
                    list(mine["time_saving_q3"] - mine["time_saving"])]
            ax.errorbar(mine[key], mine["time_saving"], yerr=bars, fmt=marker, ms=7,
                        capsize=3, label=f"{mode} (Q1-Q3)")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="time saving = share")
        ax.set(xlabel=label, xlim=(-0.05, 1.05), ylim=(-0.3, 1.05))
        ax.legend(fontsize=9)
    axes[0].set(ylabel="measured backward time saving", title="Parameters do not predict time")
    axes[1].set(title="FLOPs do")
    fig.tight_layout()
    return fig
