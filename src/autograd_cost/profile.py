"""Profile a model's backward cost at every freeze depth: the engineer's entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from autograd_cost.core import LossFn, ModelInput, on_device, placed_inputs
from autograd_cost.cost import count_flops, saved_activation_bytes
from autograd_cost.freezing import (
    FREEZE_MODES,
    check_unit_names,
    execution_order,
    frozen_state,
    preserved_state,
    units,
    units_to_freeze,
)
from autograd_cost.timing import interleaved_backward_seconds

# The result schema: one row per measured freeze, as a DataFrame with these columns.
PROFILE_COLUMNS = {
    "mode": "'prefix' or 'suffix' (depth sweep), 'as_is' (requires_grad as configured), "
            "'unfrozen' or 'chosen' (frozen=[...])",
    "freeze_depth": "units frozen from the front (prefix) or back (suffix); <NA> for 'as_is'",
    "frozen_units": "tuple of the units whose parameters are all frozen, in execution order",
    "trainable_params": "parameters with requires_grad=True in that freeze",
    "frozen_params": "parameters with requires_grad=False in that freeze",
    "forward_flops": "FLOPs of forward and loss (cost.count_flops)",
    "backward_flops": "FLOPs of the backward pass (cost.count_flops)",
    "saved_activation_bytes": "bytes the forward saves for backward (cost.saved_activation_bytes)",
    "backward_seconds": "median wall time of the backward (timing.interleaved_backward_seconds)",
    "backward_seconds_iqr": "interquartile range of those samples",
    "backward_seconds_q1": "first quartile",
    "backward_seconds_q3": "third quartile",
}
# Added by profile_freezing(memory=...): one measured training step (notebook 07).
MEMORY_COLUMNS = {
    "peak_bytes": "peak bytes of one step above the bytes allocated before it",
    "gradients_bytes": "bytes of parameter .grad tensors after backward",
    "optimizer_state_bytes": "bytes of optimizer state after the step",
}
# Added by profile_freezing(predict=True): the per-op cost model (notebook 10).
PREDICTED_COLUMNS = {
    "predicted_backward_seconds": "backward seconds the per-op cost model predicts",
    "predicted_compute_seconds": "its part from compute-bound ops (FLOPs / matmul rate)",
    "predicted_memory_seconds": "its part from memory-bound ops (bytes / bandwidth)",
    "predicted_overhead_seconds": "its part from per-op overhead (ops x seconds per op)",
}
ROW_MODES = ("as_is", *FREEZE_MODES)


def _check_modes(modes: Sequence[str]) -> list[str]:
    if isinstance(modes, str):
        modes = [modes]
    bad = [m for m in modes if m not in ROW_MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {bad or modes}; valid modes are {list(ROW_MODES)}")
    return list(modes)


Plan = tuple[str, "int | None", "list[str] | None"]


def _plans(
    order: list[str], modes: Sequence[str], freeze_depths: Sequence[int] | None,
    frozen: Sequence[str] | None,
) -> list[Plan]:
    """(mode, freeze depth, units to freeze or None for as configured) per row, in order."""
    plans: list[Plan] = [("as_is", None, None)] if "as_is" in modes else []
    if frozen is not None:
        chosen = [name for name in order if name in set(frozen)]  # in execution order
        return [*plans, ("unfrozen", 0, []), ("chosen", len(chosen), chosen)]
    sweep = [m for m in modes if m != "as_is"]
    depths = list(range(len(order) + 1)) if freeze_depths is None else list(freeze_depths)
    return [*plans, *((m, d, units_to_freeze(order, m, d)) for m in sweep for d in depths)]


def _key(frozen: list[str] | None) -> tuple[str, ...] | None:
    return None if frozen is None else tuple(frozen)


def _fully_frozen(model: nn.Module, order: list[str]) -> tuple[str, ...]:
    owned = units(model)
    return tuple(n for n in order if not any(p.requires_grad for p in owned[n]))


def profile_freezing(
    model: nn.Module,
    example_input: ModelInput,
    target: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    modes: Sequence[str] = FREEZE_MODES,
    freeze_depths: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    repeats: int | None = None,
    frozen: Sequence[str] | None = None,
    memory: bool | str = False,
    progress: bool = False,
    predict: bool = False,
) -> pd.DataFrame:
    """Backward FLOPs, saved bytes and backward time for each freeze, one row each (notebook 02).

    Returns a DataFrame with PROFILE_COLUMNS (plus MEMORY_COLUMNS with `memory=`). Units are
    frozen in forward-execution order. `modes` picks the rows: "prefix" and "suffix" sweep
    `freeze_depths` (default: all); "as_is" adds one row for the model as configured, its
    requires_grad untouched (a PEFT/LoRA model, say). `frozen=[unit names]` replaces the
    sweep by two rows: the unfrozen model ("unfrozen") and exactly those units frozen, the
    rest trainable ("chosen"). The model is left as it was: requires_grad, .grad, buffers,
    train/eval mode and device are all restored, also on error. `memory=True` (Adam) or an
    optimizer name ("sgd", "sgd-momentum", "adam", "adamw") adds MEMORY_COLUMNS from one
    measured training step (`memory.memory_breakdown`). `progress=True` shows tqdm bars on
    stderr once a phase takes over 2 s (the CLI; a notebook keeps stderr empty).
    `predict=True` adds PREDICTED_COLUMNS from the per-op cost model (`costmodel`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not units(model):
        raise ValueError(f"{type(model).__name__} has no parameters, so there is nothing to freeze")
    modes = _check_modes(modes)
    if frozen is not None:
        check_unit_names(model, frozen)
        if freeze_depths is not None:
            raise ValueError("give either frozen= (one set of units) or freeze_depths= (a "
                             "sweep), not both")
    if repeats is not None and (not isinstance(repeats, int) or repeats < 1):
        raise ValueError(f"repeats must be a positive int or None (adaptive), got {repeats!r}")
    memory_optimizer = _memory_optimizer(memory)
    device, example_input, loss = placed_inputs(example_input, target, loss_fn, device)
    with preserved_state(model), on_device(model, device):
        order = execution_order(model, example_input)
        plans = _plans(order, modes, freeze_depths, frozen)
        distinct = list({_key(f): f for _, _, f in plans}.values())
        costs = {}
        for chosen in _progress(distinct, progress, "counting"):
            costs[_key(chosen)] = _count_columns(model, example_input, chosen, order, loss)
            if memory_optimizer is not None:
                costs[_key(chosen)].update(_memory_columns(
                    model, example_input, chosen, memory_optimizer, loss, device))
            if predict:
                costs[_key(chosen)].update(_predicted_columns(
                    model, example_input, chosen, loss, device))
        rounds = _progress(None, progress, "timing rounds", total=repeats or 30)
        timings = interleaved_backward_seconds(
            model, example_input, distinct, loss, device=device,
            min_repeats=repeats or 5, max_repeats=repeats or 30,
            on_round=None if rounds is None else rounds.update,
        )
        if rounds is not None:
            rounds.close()
        for chosen, timing in zip(distinct, timings, strict=True):
            costs[_key(chosen)].update(
                backward_seconds=timing.median, backward_seconds_iqr=timing.iqr,
                backward_seconds_q1=timing.q1, backward_seconds_q3=timing.q3)
    rows = [{"mode": mode, "freeze_depth": depth, **costs[_key(chosen)]}
            for mode, depth, chosen in plans]
    columns = [*PROFILE_COLUMNS, *(MEMORY_COLUMNS if memory_optimizer else ()),
               *(PREDICTED_COLUMNS if predict else ())]
    frame = pd.DataFrame(rows, columns=columns)
    frame["freeze_depth"] = frame["freeze_depth"].astype("Int64")
    return frame


def _progress(items: Sequence[Any] | None, shown: bool, what: str, total: int | None = None):
    """A tqdm bar on stderr that appears after 2 s, or the bare items (None) when not shown."""
    if not shown:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, total=total, delay=2.0, leave=False, file=sys.stderr)


def _count_columns(model: nn.Module, example_input: ModelInput, chosen: list[str] | None,
                   order: list[str], loss: LossFn | None) -> dict[str, Any]:
    """Frozen units, parameter counts, FLOPs and saved bytes of one freeze."""
    with frozen_state(model, chosen):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        frozen_units = _fully_frozen(model, order)
        flops = count_flops(model, example_input, loss)
        saved = saved_activation_bytes(model, example_input, loss)
    return {"frozen_units": frozen_units, "trainable_params": trainable,
            "frozen_params": frozen_params, "forward_flops": flops.forward,
            "backward_flops": flops.backward, "saved_activation_bytes": saved}


def _memory_optimizer(memory: bool | str) -> str | None:
    """The optimizer that `memory=` asks for: None (off), "adam" for True, or the name."""
    from autograd_cost.training import OPTIMIZERS

    if memory is False or memory is None:
        return None
    if memory is True:
        return "adam"
    if isinstance(memory, str) and memory in OPTIMIZERS:
        return memory
    raise ValueError(f"memory must be False, True (Adam) or one of {list(OPTIMIZERS)}, "
                     f"got {memory!r}")


def _memory_columns(model: nn.Module, example_input: ModelInput, frozen: list[str] | None,
                    optimizer: str, loss: LossFn | None,
                    device: torch.device) -> dict[str, int]:
    """Peak, gradient and optimizer-state bytes of one training step."""
    from autograd_cost.memory import memory_breakdown

    measured = memory_breakdown(model, example_input, frozen=frozen, optimizer=optimizer,
                                loss_fn=loss, device=device)
    return {key: getattr(measured, key) for key in MEMORY_COLUMNS}


def _baseline_row(frame: pd.DataFrame, mode: str) -> pd.Series:
    """The row a row of `mode` is compared with: its own depth 0, else the unfrozen model."""
    own = frame[(frame["mode"] == mode) & (frame["freeze_depth"] == 0)]
    if mode in FREEZE_MODES and len(own):
        return own.iloc[0]
    unfrozen = frame[frame["frozen_params"] == 0]
    if not len(unfrozen):
        raise ValueError(f"ratios for mode {mode!r} need a row with nothing frozen; profile "
                         "with a prefix or suffix sweep from depth 0, or with frozen=[...]")
    return unfrozen.iloc[0]


def _predicted_columns(model: nn.Module, example_input: ModelInput, frozen: list[str] | None,
                       loss: LossFn | None, device: torch.device) -> dict[str, float]:
    """The per-op cost model's backward seconds and their split."""
    from autograd_cost.costmodel import calibrate, predict_backward_seconds

    predicted = predict_backward_seconds(model, example_input, loss, frozen, calibrate(device))
    return {"predicted_backward_seconds": predicted.seconds,
            "predicted_compute_seconds": predicted.compute_seconds,
            "predicted_memory_seconds": predicted.memory_seconds,
            "predicted_overhead_seconds": predicted.overhead_seconds}


def with_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Add backward time, FLOPs and saved bytes relative to the unfrozen model (notebook 02).

    Adds time_ratio, flop_ratio and memory_ratio (and predicted_ratio when the frame has
    PREDICTED_COLUMNS). Each row is compared with the depth-0 row
    of its own mode; "as_is" and "chosen" rows with a row that has nothing frozen.
    """
    out = frame.copy()
    bases = {mode: _baseline_row(frame, mode) for mode in frame["mode"].unique()}
    for column, key in (("time_ratio", "backward_seconds"), ("flop_ratio", "backward_flops"),
                        ("memory_ratio", "saved_activation_bytes")):
        out[column] = [row[key] / bases[row["mode"]][key] for _, row in frame.iterrows()]
    if "predicted_backward_seconds" in frame.columns:
        key = "predicted_backward_seconds"
        out["predicted_ratio"] = [row[key] / bases[row["mode"]][key]
                                  for _, row in frame.iterrows()]
    return out


DISPLAY_COLUMNS = {
    "mode": "mode", "freeze_depth": "freeze depth", "trainable_params": "trainable",
    "forward_flops": "fwd FLOPs", "backward_flops": "bwd FLOPs",
    "saved_activation_bytes": "saved bytes", "gradients_bytes": "grad bytes",
    "optimizer_state_bytes": "state bytes", "peak_bytes": "peak bytes",
}


def profile_table(frame: pd.DataFrame, timings: bool = True) -> pd.DataFrame:
    """The profile for reading: short titles, times in ms; timings=False keeps only the
    deterministic columns (notebook 01)."""
    shown = {key: title for key, title in DISPLAY_COLUMNS.items() if key in frame.columns}
    table = frame[list(shown)].rename(columns=shown)
    if timings:
        table = table.assign(**{"bwd ms": (frame["backward_seconds"] * 1e3).round(2),
                                "IQR ms": (frame["backward_seconds_iqr"] * 1e3).round(2)})
        if "predicted_backward_seconds" in frame.columns:
            table["predicted ms"] = (frame["predicted_backward_seconds"] * 1e3).round(2)
    return table


def _quartile_bars(rows: pd.DataFrame, base: float) -> list[list[float]]:
    """Error bars from Q1 to Q3 (not centred on the median), relative to `base`."""
    return [list((rows["backward_seconds"] - rows["backward_seconds_q1"]) / base),
            list((rows["backward_seconds_q3"] - rows["backward_seconds"]) / base)]


def plot_profile(frame: pd.DataFrame, path: str | None = None, title: str = ""):
    """Backward time (measured) and FLOPs (predicted) against freeze depth, plus saved memory.

    Rows that are not part of a sweep ("as_is", "unfrozen",
    "chosen") are drawn as bars instead. Returns the matplotlib figure; saves it when `path`
    is given.
    """
    import matplotlib.pyplot as plt

    ratios = with_ratios(frame)
    fig, (cost_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if not ratios["mode"].isin(FREEZE_MODES).all():
        _plot_bars(ratios, cost_ax, memory_ax)
        return _finish(fig, path, title)
    for mode, color in zip(FREEZE_MODES, ("tab:blue", "tab:orange"), strict=True):
        mine = ratios[ratios["mode"] == mode]
        if mine.empty:
            continue
        base = _baseline_row(frame, mode)["backward_seconds"]
        cost_ax.errorbar(mine["freeze_depth"], mine["time_ratio"],
                         yerr=_quartile_bars(mine, base), fmt="o-", color=color, capsize=3,
                         label=f"{mode}: measured time (Q1-Q3)")
        cost_ax.plot(mine["freeze_depth"], mine["flop_ratio"], "--", color=color,
                     label=f"{mode}: FLOP prediction")
        memory_ax.plot(mine["freeze_depth"], mine["saved_activation_bytes"] / 2**20, "o-",
                       color=color, label=mode)
    top = max(1.1, 1.05 * ratios["time_ratio"].max())
    cost_ax.set(xlabel="frozen units", ylabel="backward cost / unfrozen", ylim=(0, top),
                title="Backward cost vs freeze depth")
    memory_ax.set(xlabel="frozen units", ylabel="MiB saved for backward",
                  title="Saved activations vs freeze depth")
    cost_ax.legend(fontsize=8)
    memory_ax.legend(fontsize=8)
    return _finish(fig, path, title)


def _plot_bars(ratios: pd.DataFrame, cost_ax, memory_ax) -> None:
    """One bar pair per row (measured time, backward FLOPs), for rows outside a sweep."""
    labels = [m if pd.isna(d) or m in ("unfrozen", "chosen") else f"{m} {d}"
              for m, d in zip(ratios["mode"], ratios["freeze_depth"], strict=True)]
    base = _baseline_row(ratios, "chosen")["backward_seconds"]
    positions = list(range(len(ratios)))
    cost_ax.bar([p - 0.2 for p in positions], ratios["time_ratio"], width=0.4,
                yerr=_quartile_bars(ratios, base), capsize=4, label="measured time (Q1-Q3)")
    cost_ax.bar([p + 0.2 for p in positions], ratios["flop_ratio"], width=0.4,
                label="backward FLOPs")
    cost_ax.set(xticks=positions, xticklabels=labels, ylabel="backward cost / unfrozen",
                title="Backward cost of each freeze")
    memory_ax.bar(positions, ratios["saved_activation_bytes"] / 2**20)
    memory_ax.set(xticks=positions, xticklabels=labels, ylabel="MiB saved for backward",
                  title="Saved activations")
    cost_ax.legend(fontsize=8)


def _finish(fig, path: str | None, title: str):
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
