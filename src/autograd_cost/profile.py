"""Profile a model's backward cost at every freeze depth: the engineer's entry point."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.cost import (
    count_flops,
    interleaved_backward_seconds,
    pick_device,
    saved_activation_bytes,
)
from autograd_cost.freezing import (
    FREEZE_MODES,
    ModelInput,
    check_unit_names,
    exactly_frozen,
    execution_order,
    preserved_state,
    units,
    units_to_freeze,
)
from autograd_cost.graph import LossFn

ROW_KEYS = (
    "mode",
    "depth",
    "frozen_units",
    "trainable_params",
    "frozen_params",
    "forward_flops",
    "backward_flops",
    "saved_activation_bytes",
    "backward_seconds",
    "backward_seconds_iqr",
    "backward_seconds_q1",
    "backward_seconds_q3",
)
# Added to each row by profile_freezing(memory=...): one training step, measured (notebook 07).
MEMORY_KEYS = ("peak_bytes", "gradients_bytes", "optimizer_state_bytes")


def make_loss_fn(
    loss_fn: Callable[..., torch.Tensor] | None, target: torch.Tensor | None
) -> LossFn | None:
    """Turn (loss_fn, target) into a one-argument loss of the model output (notebook 02).

    With a target but no loss_fn, integer targets get cross-entropy and float targets MSE.
    """
    if target is None:
        return loss_fn
    if loss_fn is None:
        loss_fn = F.cross_entropy if not target.is_floating_point() else F.mse_loss
    chosen = loss_fn
    return lambda output: chosen(output, target)


def _check_modes(modes: Sequence[str]) -> list[str]:
    if isinstance(modes, str):
        modes = [modes]
    bad = [m for m in modes if m not in FREEZE_MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {bad or modes}; valid modes are {list(FREEZE_MODES)}")
    return list(modes)


def _plans(
    order: list[str], modes: Sequence[str], depths: Sequence[int] | None,
    freeze: Sequence[str] | None,
) -> list[tuple[str, int, list[str]]]:
    """(mode, depth, units to freeze) for each row, in row order."""
    if freeze is not None:
        chosen = [name for name in order if name in set(freeze)]  # in execution order
        return [("unfrozen", 0, []), ("chosen", len(chosen), chosen)]
    depths = list(range(len(order) + 1)) if depths is None else list(depths)
    return [(m, d, units_to_freeze(order, m, d)) for m in modes for d in depths]


def to_device(example_input: ModelInput, device: torch.device) -> ModelInput:
    """Move a tensor or a tuple of tensors to `device`, refusing anything else (notebook 02)."""
    if isinstance(example_input, tuple):
        return tuple(t.to(device) for t in example_input)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            "example_input must be a torch.Tensor or a tuple of tensors, "
            f"got {type(example_input).__name__}"
        )
    return example_input.to(device)


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move the model to `device` inside the block and back after (notebook 02)."""
    home = next(model.parameters()).device
    try:
        yield model.to(device)
    finally:
        model.to(home)


def profile_freezing(
    model: nn.Module,
    example_input: ModelInput,
    target: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    modes: Sequence[str] = FREEZE_MODES,
    depths: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    repeats: int | None = None,
    freeze: Sequence[str] | None = None,
    memory: bool | str = False,
) -> list[dict[str, Any]]:
    """Backward FLOPs, saved bytes and backward time for each (mode, depth) (notebook 02).

    Units are frozen in forward-execution order. With `freeze=[unit names]` there is no sweep:
    two rows compare the unfrozen model (mode "unfrozen") with exactly those units frozen and
    the rest trainable (mode "chosen", depth = number of units). The model is left as it was:
    requires_grad, .grad, buffers, train/eval mode and device are all restored, also on error.
    `memory=True` (Adam) or an optimizer name ("sgd", "sgd-momentum", "adam", "adamw") adds
    MEMORY_KEYS to each row from one measured training step (`memory.memory_breakdown`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not units(model):
        raise ValueError(f"{type(model).__name__} has no parameters, so there is nothing to freeze")
    modes = _check_modes(modes)
    if freeze is not None:
        check_unit_names(model, freeze)
        if depths is not None:
            raise ValueError("give either freeze= (one set of units) or depths= (a sweep), "
                             "not both")
    if repeats is not None and (not isinstance(repeats, int) or repeats < 1):
        raise ValueError(f"repeats must be a positive int or None (adaptive), got {repeats!r}")
    memory_optimizer = _memory_optimizer(memory)
    device = pick_device(device)
    example_input = to_device(example_input, device)
    if target is not None:
        target = target.to(device)
    loss = make_loss_fn(loss_fn, target)
    with preserved_state(model), on_device(model, device):
        order = execution_order(model, example_input)
        plans = _plans(order, modes, depths, freeze)
        distinct = list({tuple(frozen): frozen for _, _, frozen in plans}.values())
        costs, memory_costs = {}, {}
        for frozen in distinct:
            with exactly_frozen(model, frozen):
                flops = count_flops(model, example_input, loss)
                saved = saved_activation_bytes(model, example_input, loss)
            costs[tuple(frozen)] = {
                "forward_flops": flops.forward,
                "backward_flops": flops.backward,
                "saved_activation_bytes": saved,
            }
            if memory_optimizer is not None:
                memory_costs[tuple(frozen)] = _memory_columns(
                    model, example_input, frozen, memory_optimizer, loss, device)
        timings = interleaved_backward_seconds(
            model,
            example_input,
            distinct,
            loss,
            device=device,
            min_repeats=repeats or 5,
            max_repeats=repeats or 30,
        )
        for frozen, timing in zip(distinct, timings, strict=True):
            costs[tuple(frozen)]["backward_seconds"] = timing.median
            costs[tuple(frozen)]["backward_seconds_iqr"] = timing.iqr
            costs[tuple(frozen)]["backward_seconds_q1"] = timing.q1
            costs[tuple(frozen)]["backward_seconds_q3"] = timing.q3
        owned = units(model)
        total = sum(p.numel() for p in model.parameters())
        rows = []
        for mode, depth, frozen in plans:
            frozen_params = sum(p.numel() for name in frozen for p in owned[name])
            rows.append(
                {
                    "mode": mode,
                    "depth": depth,
                    "frozen_units": frozen,
                    "trainable_params": total - frozen_params,
                    "frozen_params": frozen_params,
                    **costs[tuple(frozen)],
                    **memory_costs.get(tuple(frozen), {}),
                }
            )
    return rows


def _memory_optimizer(memory: bool | str) -> str | None:
    """The optimizer that `memory=` asks for: None (off), "adam" for True, or the name."""
    from autograd_cost.memory import OPTIMIZERS

    if memory is False or memory is None:
        return None
    if memory is True:
        return "adam"
    if isinstance(memory, str) and memory in OPTIMIZERS:
        return memory
    raise ValueError(f"memory must be False, True (Adam) or one of {list(OPTIMIZERS)}, "
                     f"got {memory!r}")


def _memory_columns(model: nn.Module, example_input: ModelInput, frozen: list[str],
                    optimizer: str, loss: LossFn | None,
                    device: torch.device) -> dict[str, int]:
    """Peak, gradient and optimizer-state bytes of one training step (notebook 07)."""
    from autograd_cost.memory import memory_breakdown

    measured = memory_breakdown(model, example_input, frozen=frozen, optimizer=optimizer,
                                loss_fn=loss, device=device)
    return {key: getattr(measured, key) for key in MEMORY_KEYS}


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each row's backward time and FLOPs relative to the unfrozen model (notebook 02)."""
    base = {r["mode"]: r for r in rows if r["depth"] == 0}
    if "chosen" in {r["mode"] for r in rows} and "unfrozen" in base:
        base["chosen"] = base["unfrozen"]
    if set(base) != {r["mode"] for r in rows}:
        raise ValueError("ratios need a depth-0 (unfrozen) row for every mode")
    out = []
    for row in rows:
        ref = base[row["mode"]]
        out.append(
            {
                **row,
                "time_ratio": row["backward_seconds"] / ref["backward_seconds"],
                "flop_ratio": row["backward_flops"] / ref["backward_flops"],
                "memory_ratio": row["saved_activation_bytes"] / ref["saved_activation_bytes"],
            }
        )
    return out


def format_profile(rows: list[dict[str, Any]], timings: bool = True) -> str:
    """A table of profile rows; timings=False keeps deterministic columns only (notebook 01)."""
    columns = ["mode", "depth", "trainable", "fwd FLOPs", "bwd FLOPs", "saved bytes"]
    memory = bool(rows) and all(key in rows[0] for key in MEMORY_KEYS)
    if memory:
        columns += ["grad bytes", "state bytes", "peak bytes"]
    if timings:
        columns += ["bwd ms", "IQR ms"]
    table = []
    for r in rows:
        cells = [
            r["mode"],
            str(r["depth"]),
            f"{r['trainable_params']:,}",
            f"{r['forward_flops']:,}",
            f"{r['backward_flops']:,}",
            f"{r['saved_activation_bytes']:,}",
        ]
        if memory:
            cells += [f"{r[key]:,}" for key in ("gradients_bytes", "optimizer_state_bytes",
                                               "peak_bytes")]
        if timings:
            seconds, iqr = r["backward_seconds"], r["backward_seconds_iqr"]
            cells += [f"{seconds * 1e3:.2f}", f"{iqr * 1e3:.2f}"]
        table.append(cells)
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(f"{c:>{w}}" for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def plot_profile(rows: list[dict[str, Any]], path: str | None = None, title: str = ""):
    """Backward time (measured) and FLOPs (predicted) against depth, plus saved memory.

    Taught in notebook 02. Returns the matplotlib figure; saves it when `path` is given.
    """
    import matplotlib.pyplot as plt

    ratios = with_ratios(rows)
    fig, (cost_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if any(r["mode"] == "chosen" for r in ratios):
        _plot_chosen(ratios, cost_ax, memory_ax)
        return _finish(fig, path, title)
    for mode, color in zip(FREEZE_MODES, ("tab:blue", "tab:orange"), strict=True):
        mine = [r for r in ratios if r["mode"] == mode]
        if not mine:
            continue
        depths = [r["depth"] for r in mine]
        base = next(r["backward_seconds"] for r in mine if r["depth"] == 0)
        # Bars span the interquartile range [Q1, Q3], which need not be centred on the median.
        below = [(r["backward_seconds"] - r["backward_seconds_q1"]) / base for r in mine]
        above = [(r["backward_seconds_q3"] - r["backward_seconds"]) / base for r in mine]
        cost_ax.errorbar(depths, [r["time_ratio"] for r in mine], yerr=[below, above],
                         fmt="o-", color=color, capsize=3, label=f"{mode}: measured time (Q1-Q3)")
        cost_ax.plot(depths, [r["flop_ratio"] for r in mine], "--", color=color,
                     label=f"{mode}: FLOP prediction")
        memory_ax.plot(depths, [r["saved_activation_bytes"] / 2**20 for r in mine], "o-",
                       color=color, label=mode)
    top = max(1.1, *(1.05 * r["time_ratio"] for r in ratios))
    cost_ax.set(xlabel="frozen units", ylabel="backward cost / unfrozen", ylim=(0, top),
                title="Backward cost vs freeze depth")
    memory_ax.set(xlabel="frozen units", ylabel="MiB saved for backward",
                  title="Saved activations vs freeze depth")
    cost_ax.legend(fontsize=8)
    memory_ax.legend(fontsize=8)
    return _finish(fig, path, title)


def _plot_chosen(ratios: list[dict[str, Any]], cost_ax, memory_ax) -> None:
    """Bars for the unfrozen model against one chosen frozen set (`freeze=`)."""
    labels = ["unfrozen", "chosen set"]
    base = ratios[0]["backward_seconds"]
    below = [(r["backward_seconds"] - r["backward_seconds_q1"]) / base for r in ratios]
    above = [(r["backward_seconds_q3"] - r["backward_seconds"]) / base for r in ratios]
    positions = range(len(ratios))
    cost_ax.bar([p - 0.2 for p in positions], [r["time_ratio"] for r in ratios], width=0.4,
                yerr=[below, above], capsize=4, label="measured time (Q1-Q3)")
    cost_ax.bar([p + 0.2 for p in positions], [r["flop_ratio"] for r in ratios], width=0.4,
                label="backward FLOPs")
    cost_ax.set(xticks=list(positions), xticklabels=labels, ylabel="backward cost / unfrozen",
                title="Backward cost of the chosen freeze")
    memory_ax.bar(list(positions), [r["saved_activation_bytes"] / 2**20 for r in ratios])
    memory_ax.set(xticks=list(positions), xticklabels=labels, ylabel="MiB saved for backward",
                  title="Saved activations")
    cost_ax.legend(fontsize=8)


def _finish(fig, path: str | None, title: str):
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
