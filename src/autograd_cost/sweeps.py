"""Sweeps behind notebook 02: whole training steps, widths, shares, profiler, CSV results."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from autograd_cost.core import (
    LossFn,
    ModelInput,
    make_loss_fn,
    model_loss,
    on_device,
    pick_device,
    synchronize,
    to_device,
)
from autograd_cost.cost import count_flops, saved_activation_bytes
from autograd_cost.freezing import (
    FREEZE_MODES,
    exactly_frozen,
    execution_order,
    freeze_units,
    preserved_state,
    preserved_values,
    units,
    units_to_freeze,
)
from autograd_cost.models import example_input as course_input
from autograd_cost.models import mlp
from autograd_cost.partial import cat_freeze
from autograd_cost.profile import with_ratios
from autograd_cost.timing import Timing, interleaved_backward_samples, summarize_times

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def sgd_momentum(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The default optimizer of the step sweeps: SGD with momentum 0.9 (notebook 02)."""
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def _check_repeats(repeats: int) -> None:
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")


@dataclass(frozen=True)
class StepTiming:
    """Median and IQR of forward, backward, optimizer and step times of a freeze (notebook 02)."""

    forward: Timing
    backward: Timing
    optimizer: Timing
    step: Timing


def _set_frozen(model: nn.Module, names: Sequence[str]) -> None:
    for param in model.parameters():
        param.requires_grad_(True)
    freeze_units(model, names)


def _timed_step(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
) -> tuple[float, float, float]:
    for param in model.parameters():
        param.grad = None
    synchronize(device)
    start = time.perf_counter()
    loss = model_loss(model, example_input, loss_fn)
    synchronize(device)
    forward_end = time.perf_counter()
    if loss.requires_grad:
        loss.backward()
    synchronize(device)
    backward_end = time.perf_counter()
    if optimizer is not None:
        optimizer.step()
    synchronize(device)
    end = time.perf_counter()
    return forward_end - start, backward_end - forward_end, end - backward_end


def interleaved_step_seconds(
    model: nn.Module,
    example_input: ModelInput,
    freeze_sets: list[list[str]],
    loss_fn: LossFn | None = None,
    make_optimizer: OptimizerFactory = sgd_momentum,
    device: torch.device | None = None,
    repeats: int = 10,
) -> list[StepTiming]:
    """Time whole training steps (forward, backward, optimizer) per freeze set, round-robin.

    Taught in notebook 02. Each freeze set gets an optimizer over its trainable parameters
    only, as in real fine-tuning. One untimed round warms up. Parameter values, grads,
    buffers, requires_grad and train/eval mode are restored afterwards.
    """
    if not freeze_sets:
        raise ValueError("freeze_sets is empty; pass at least one list of unit names")
    configs = [(model, list(names)) for names in freeze_sets]
    return interleaved_configs(configs, example_input, loss_fn, make_optimizer, device, repeats)


def interleaved_configs(
    configs: list[tuple[nn.Module, list[str]]],
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    make_optimizer: OptimizerFactory = sgd_momentum,
    device: torch.device | None = None,
    repeats: int = 10,
) -> list[StepTiming]:
    """Round-robin step timing of (model, frozen units) pairs, e.g. two ways to freeze.

    Taught in notebook 02. Every model is restored afterwards, parameter values included.
    """
    _check_repeats(repeats)
    if not configs:
        raise ValueError("configs is empty; pass at least one (model, frozen units) pair")
    device = device or next(configs[0][0].parameters()).device
    samples: list[list[tuple[float, float, float]]] = [[] for _ in configs]
    with ExitStack() as stack:
        for model in {id(m): m for m, _ in configs}.values():
            stack.enter_context(preserved_state(model))
            stack.enter_context(preserved_values(model))
        optimizers = []
        for model, names in configs:
            _set_frozen(model, names)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizers.append(make_optimizer(trainable) if trainable else None)
        for round_ in range(repeats + 1):  # round 0 warms up
            for (model, names), optimizer, bucket in zip(configs, optimizers, samples, strict=True):
                _set_frozen(model, names)
                timed = _timed_step(model, example_input, loss_fn, optimizer, device)
                if round_:
                    bucket.append(timed)
    return [_step_timing(bucket) for bucket in samples]


def _step_timing(bucket: list[tuple[float, float, float]]) -> StepTiming:
    forward, backward, optimizer = (list(column) for column in zip(*bucket, strict=True))
    steps = [sum(parts) for parts in bucket]
    return StepTiming(
        summarize_times(forward),
        summarize_times(backward),
        summarize_times(optimizer),
        summarize_times(steps),
    )


def _plans(
    model: nn.Module, example_input: ModelInput, modes: Sequence[str], depths: Sequence[int] | None
) -> list[tuple[str, int, list[str]]]:
    if isinstance(modes, str):
        modes = [modes]
    bad = [m for m in modes if m not in FREEZE_MODES]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {bad or modes}; valid modes are {list(FREEZE_MODES)}")
    order = execution_order(model, example_input)
    depths = list(range(len(order) + 1)) if depths is None else list(depths)
    return [(m, d, units_to_freeze(order, m, d)) for m in modes for d in depths]


def step_sweep(
    model: nn.Module,
    example_input: ModelInput,
    target: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    modes: Sequence[str] = ("prefix",),
    depths: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    repeats: int = 10,
    make_optimizer: OptimizerFactory = sgd_momentum,
) -> list[dict[str, Any]]:
    """FLOPs and measured forward/backward/optimizer/step time per (mode, depth) (notebook 02).

    The model is left as it was, parameter values included, also on error.
    """
    if not isinstance(model, nn.Module) or not units(model):
        raise TypeError("model must be a torch.nn.Module with parameters")
    _check_repeats(repeats)
    device = pick_device(device)
    example_input = to_device(example_input, device)
    loss = make_loss_fn(loss_fn, None if target is None else target.to(device))
    with preserved_state(model), on_device(model, device):
        plans = _plans(model, example_input, modes, depths)
        distinct = list({tuple(frozen): frozen for _, _, frozen in plans}.values())
        flops = {}
        for frozen in distinct:
            with exactly_frozen(model, frozen):
                flops[tuple(frozen)] = count_flops(model, example_input, loss)
        timings = interleaved_step_seconds(
            model, example_input, distinct, loss, make_optimizer, device, repeats
        )
        by_set = dict(zip((tuple(f) for f in distinct), timings, strict=True))
    return [_step_row(mode, depth, frozen, flops[tuple(frozen)], by_set[tuple(frozen)])
            for mode, depth, frozen in plans]


def _step_row(mode: str, depth: int, frozen: list[str], flops: Any, t: StepTiming) -> dict:
    return {
        "mode": mode,
        "depth": depth,
        "frozen_units": frozen,
        "forward_flops": flops.forward,
        "backward_flops": flops.backward,
        "forward_seconds": t.forward.median,
        "backward_seconds": t.backward.median,
        "optimizer_seconds": t.optimizer.median,
        "step_seconds": t.step.median,
        "step_seconds_iqr": t.step.iqr,
        "step_seconds_q1": t.step.q1,
        "step_seconds_q3": t.step.q3,
    }


def step_speedup_bound(forward: float, backward: float, optimizer: float = 0.0) -> float:
    """(F + B + O) / F: a step's cost over its forward pass, never removed (notebook 02).

    In seconds, with F the cheapest forward of any freeze, it bounds the step speedup. In
    FLOPs (optimizer=0) it gives the FLOP estimate (F+B)/F, about 3 when B = 2F.
    """
    for name, value in (("forward", forward), ("backward", backward), ("optimizer", optimizer)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if forward == 0:
        raise ValueError("forward must be positive: the bound divides by the forward cost")
    return (forward + backward + optimizer) / forward


def with_step_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each step row's speedup over its mode's unfrozen step and the two bounds (notebook 02).

    flop_bound is the FLOP estimate (F+B)/F; time_bound is the unfrozen step time over the fastest
    forward pass measured in that mode, (F+B+O)/F in seconds: no step beats its forward pass.
    step_speedup_q1/_q3 divide the unfrozen median by the row's step Q3/Q1 (the row's own
    middle half of repeats), or equal the speedup where a row has no quartiles.
    """
    base = {r["mode"]: r for r in rows if r["depth"] == 0}
    if not rows or set(base) != {r["mode"] for r in rows}:
        raise ValueError("speedups need a depth-0 (unfrozen) row for every mode")
    fastest = {mode: min(r["forward_seconds"] for r in rows if r["mode"] == mode) for mode in base}
    out = []
    for row in rows:
        ref = base[row["mode"]]
        slow = row.get("step_seconds_q3") or row["step_seconds"]
        fast = row.get("step_seconds_q1") or row["step_seconds"]
        out.append({
            **row,
            "step_speedup": ref["step_seconds"] / row["step_seconds"],
            "step_speedup_q1": ref["step_seconds"] / slow,
            "step_speedup_q3": ref["step_seconds"] / fast,
            "flop_bound": step_speedup_bound(ref["forward_flops"], ref["backward_flops"]),
            "time_bound": ref["step_seconds"] / fastest[row["mode"]],
        })
    return out


def _half_prefix(model: nn.Module, example_input: ModelInput) -> list[str]:
    order = execution_order(model, example_input)
    return order[: len(order) // 2]


def width_sweep(
    widths: Sequence[int],
    depth: int = 3,
    batch: int = 64,
    repeats: int = 10,
    device: str | torch.device | None = None,
    make_optimizer: OptimizerFactory = sgd_momentum,
) -> list[dict[str, Any]]:
    """Per MLP width: FLOP-predicted and measured saving of freezing the first half (notebook 02).

    The model is mlp(width, depth); the freeze covers the first half of its units (rounded
    down). Savings are 1 - frozen / unfrozen for backward FLOPs, backward time and step time
    (medians), with `_q1`/`_q3` keys from the frozen run's quartiles. cat_freeze_saving is the
    step saving of the forum question's way instead: half of every layer's rows frozen and
    re-joined with torch.cat (cat_freeze_copy); negative means slower. unfrozen_step_flops
    is the unfrozen step's forward plus backward FLOPs.
    """
    if isinstance(widths, int) or not widths:
        raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
    device = pick_device(device)
    rows = []
    for width in widths:
        model = mlp(width=width, depth=depth).to(device)
        x = course_input(model, batch=batch).to(device)
        frozen = _half_prefix(model, x)
        full, part = (count_flops_under(model, x, names) for names in ([], frozen))
        configs = [(model, []), (model, frozen), (cat_freeze_copy(model), [])]
        unfrozen, halved, cat = interleaved_configs(
            configs, x, None, make_optimizer, device, repeats
        )
        rows.append({
            "width": width,
            "params": sum(p.numel() for p in model.parameters()),
            "frozen_units": frozen,
            "flop_saving": 1 - part.backward / full.backward,
            **_savings("backward_saving", halved.backward, unfrozen.backward),
            **_savings("step_saving", halved.step, unfrozen.step),
            **_savings("cat_freeze_saving", cat.step, unfrozen.step),
            "unfrozen_step_flops": full.forward + full.backward,
            "unfrozen_step_seconds": unfrozen.step.median,
            "frozen_step_seconds": halved.step.median,
        })
    return rows


def _savings(key: str, frozen: Timing, unfrozen: Timing) -> dict[str, float]:
    # A saving 1 - t / base falls as t rises, so the frozen run's Q3 gives the saving's Q1.
    high = frozen.median if frozen.q3 is None else frozen.q3
    low = frozen.median if frozen.q1 is None else frozen.q1
    return {
        key: 1 - frozen.median / unfrozen.median,
        f"{key}_q1": 1 - high / unfrozen.median,
        f"{key}_q3": 1 - low / unfrozen.median,
    }


def count_flops_under(model: nn.Module, example_input: ModelInput, frozen: Sequence[str]):
    """count_flops with exactly the named units frozen; the model is restored (notebook 02)."""
    with exactly_frozen(model, frozen):
        return count_flops(model, example_input)


def frozen_layer_saves(layer: nn.Module, example_input: torch.Tensor) -> list[dict[str, Any]]:
    """Does `layer` keep its input for backward, weight trainable vs frozen? (notebook 02)

    The input needs a gradient, as it does inside a frozen suffix. One row per weight state
    with `saved_bytes` (saved_activation_bytes: parameters excluded), `saved_shapes` (of the
    saved tensors that are not parameters) and `keeps_input`. requires_grad is restored.
    """
    if not isinstance(layer, nn.Module) or not list(layer.parameters()):
        raise ValueError("layer must be a torch.nn.Module with parameters, e.g. nn.Linear(8, 4)")
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise ValueError("example_input must be a floating-point tensor the layer accepts")
    x = example_input.detach().clone().requires_grad_(True)
    rows = []
    with preserved_state(layer):
        for weight in ("trainable", "frozen"):
            layer.requires_grad_(weight == "trainable")
            kept = _saved_non_parameters(layer, x)
            rows.append({
                "layer": type(layer).__name__,
                "weight": weight,
                "saved_bytes": saved_activation_bytes(layer, x),
                "saved_shapes": [tuple(t.shape) for t in kept],
                "keeps_input": any(_same_storage(t, x) for t in kept),
            })
    return rows


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


def format_saved_inputs(rows: list[dict[str, Any]]) -> str:
    """A table of frozen_layer_saves rows: who keeps its input for backward (notebook 02)."""
    lines = [f"{'layer':<8}  {'weight':<9}  {'saved bytes':>11}  {'keeps its input':>15}  "
             "saved tensors (parameters excluded)"]
    for r in rows:
        shapes = ", ".join(str(s) for s in r["saved_shapes"]) or "-"
        lines.append(f"{r['layer']:<8}  {r['weight']:<9}  {r['saved_bytes']:>11,}  "
                     f"{r['keeps_input']!s:>15}  {shapes}")
    return "\n".join(lines)


def format_backward_ops(columns: dict[str, dict[str, tuple[int, int | None]]]) -> str:
    """Backward ops side by side (e.g. unfrozen vs a freeze): calls and MFLOP (notebook 02).

    `counted` says whether the FLOP counter has a formula for the op; "-" marks an op a
    column does not run, or FLOPs that are not counted.
    """
    if not columns:
        raise ValueError("columns is empty; pass {label: backward_ops(...)}")
    names = {op for ops in columns.values() for op in ops}
    counted = {op: any(ops[op][1] is not None for ops in columns.values() if op in ops)
               for op in names}

    def order(op: str) -> tuple:
        flops = [ops[op][1] or 0 for ops in columns.values() if op in ops]
        return (not counted[op], -max(flops), op)

    width = max(len("backward op"), *(len(op) for op in names))
    groups = [max(len(label), 15) for label in columns]
    lines = [" " * (width + 11) + "  ".join(f"{label:>{g}}" for label, g in zip(columns, groups,
                                                                              strict=True)),
             f"{'backward op':<{width}}  {'counted':<7}  "
             + "  ".join(f"{'calls':>{g - 8}}  {'MFLOP':>6}" for g in groups)]
    for op in sorted(names, key=order):
        cells = []
        for ops, g in zip(columns.values(), groups, strict=True):
            calls, flops = ops.get(op, (0, None))
            shown = f"{flops / 1e6:.1f}" if flops is not None and calls else "-"
            cells.append(f"{calls or '-':>{g - 8}}  {shown:>6}")
        lines.append(f"{op:<{width}}  {'yes' if counted[op] else 'no':<7}  " + "  ".join(cells))
    return "\n".join(lines)


TIMING_STATISTICS = {"median": "backward_seconds", "q1": "backward_seconds_q1"}


def time_ratio(rows: list[dict[str, Any]], mode: str, depth: int, timing: str = "median") -> float:
    """Backward time of (mode, depth) over its mode's unfrozen time, by median or Q1 (notebook 02).

    timing="q1" divides lower quartiles: the faster half of the faster half of the repeats,
    which other programs on a busy machine disturb least.
    """
    if timing not in TIMING_STATISTICS:
        raise ValueError(f"timing must be one of {list(TIMING_STATISTICS)}, got {timing!r}")
    key = TIMING_STATISTICS[timing]
    base = row_at(rows, mode, 0)[key]
    if not base:
        raise ValueError(f"the unfrozen {mode} row has no {key}; profile with repeats >= 1")
    return row_at(rows, mode, depth)[key] / base


def fastest_backward_seconds(
    model: nn.Module,
    example_input: ModelInput,
    freeze_sets: list[list[str]],
    loss_fn: LossFn | None = None,
    rounds: int = 30,
    device: str | torch.device | None = None,
) -> list[float]:
    """The fastest backward time of each freeze set over `rounds` round-robin rounds (notebook 02).

    On a busy machine the minimum is the run that other programs disturbed least (the argument
    of Python's timeit docs). Each sample runs a fresh, untimed forward; one round warms up.
    The model is left as it was, on its own device.
    """
    _check_repeats(rounds)
    if not freeze_sets:
        raise ValueError("freeze_sets is empty; pass at least one list of unit names")
    device = pick_device(device)
    example_input = to_device(example_input, device)

    with on_device(model, device):
        samples = interleaved_backward_samples(model, example_input, freeze_sets, loss_fn,
                                               device, min_repeats=rounds, max_repeats=rounds,
                                               max_seconds=float("inf"))
    return [min(s) for s in samples]


def time_flop_gap(rows: list[dict[str, Any]], timing: str = "median") -> dict[str, float]:
    """Mean and max |time ratio - FLOP ratio| over the partial freezes of a profile (notebook 02).

    Takes with_ratios rows; depth 0 and the full freeze are left out (their gap is 0 by
    construction). `timing` is "median" or "q1", as in time_ratio.
    """
    full = max(r["depth"] for r in rows)
    partial = [r for r in rows if 0 < r["depth"] < full]
    if not partial:
        raise ValueError("no partial freezes (0 < depth < all units) in these rows")
    gaps = [abs(time_ratio(rows, r["mode"], r["depth"], timing) - r["flop_ratio"])
            for r in partial]
    return {"mean": statistics.fmean(gaps), "max": max(gaps)}


def with_shares(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add frozen-parameter share, backward-FLOP saving and measured time saving (notebook 02).

    Takes profile_freezing rows; the claim "time saved = share of frozen parameters" would
    put time_saving on param_share, the FLOP model puts it on flop_saving. time_saving_q1/_q3
    come from the row's backward-time quartiles over its mode's unfrozen median.
    """
    out = []
    ratios = with_ratios(rows)
    base = {r["mode"]: r["backward_seconds"] for r in ratios if r["depth"] == 0}
    for row in ratios:
        total = row["trainable_params"] + row["frozen_params"]
        seconds = row["backward_seconds"]
        q1, q3 = row.get("backward_seconds_q1"), row.get("backward_seconds_q3")
        out.append({
            **row,
            "param_share": row["frozen_params"] / total,
            "flop_saving": 1 - row["flop_ratio"],
            "time_saving": 1 - row["time_ratio"],
            "time_saving_q1": 1 - (seconds if q3 is None else q3) / base[row["mode"]],
            "time_saving_q3": 1 - (seconds if q1 is None else q1) / base[row["mode"]],
        })
    return out


def _quartile_bars(rows: list[dict[str, Any]], key: str) -> list[list[float]]:
    # matplotlib's yerr: distances from each value down to its Q1 and up to its Q3.
    values = [r[key] for r in rows]
    low = [v - r.get(f"{key}_q1", v) for v, r in zip(values, rows, strict=True)]
    high = [r.get(f"{key}_q3", v) - v for v, r in zip(values, rows, strict=True)]
    return [low, high]


def mean_abs_error(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute difference between a prediction and a measurement (notebook 02)."""
    if len(predicted) != len(measured) or not predicted:
        raise ValueError(
            f"need two equally long, non-empty sequences, got {len(predicted)} and {len(measured)}"
        )
    return statistics.fmean(abs(p - m) for p, m in zip(predicted, measured, strict=True))


def cat_freeze_copy(model: nn.Module, fraction: float = 0.5) -> nn.Module:
    """A copy of `model` with every Linear's first `fraction` of rows frozen via cat (notebook 02).

    The forum question's way to freeze part of a layer (partial.cat_freeze, notebook 04). The
    number of frozen rows is rounded down; the original model is not changed. Autograd still
    computes the gradient of each whole concatenated weight, so no matmul is saved.
    """
    valid = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not valid or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    plan = {
        name: int(module.out_features * fraction)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }
    if not plan:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to freeze in part")
    return cat_freeze(model, plan)


def training_step(
    model: nn.Module,
    example_input: ModelInput,
    make_optimizer: OptimizerFactory = sgd_momentum,
) -> Callable[[], None]:
    """A closure doing one forward, backward and optimizer step, for profiling (notebook 02).

    It changes the model's values; wrap its use in preserved_values/preserved_state.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable) if trainable else None

    def step() -> None:
        for param in model.parameters():
            param.grad = None
        loss = model_loss(model, example_input)
        if loss.requires_grad:
            loss.backward()
        if optimizer is not None:
            optimizer.step()

    return step


def row_at(rows: list[dict[str, Any]], mode: str, depth: int) -> dict[str, Any]:
    """The profile row of one (mode, depth), with a clear error if it is missing (notebook 02)."""
    for row in rows:
        if row["mode"] == mode and row["depth"] == depth:
            return row
    have = sorted({(r["mode"], r["depth"]) for r in rows})
    raise KeyError(f"no row for mode={mode!r}, depth={depth}; the rows cover {have}")


def half_depth(rows: list[dict[str, Any]]) -> int:
    """Half the number of units of a full profile, rounded down (notebook 02)."""
    return max(r["depth"] for r in rows) // 2


def format_half_depth(profiles: dict[str, list[dict[str, Any]]], timings: bool = True) -> str:
    """Prefix against suffix at half depth per model; timings=False keeps deterministic columns.

    Taught in notebook 02. Takes rows that went through with_ratios.
    """
    columns = ["model", "depth", "pre FLOP", "suf FLOP", "pre KiB", "suf KiB"]
    if timings:
        columns += ["pre time", "suf time"]
    lines = ["  ".join(f"{c:>11}" for c in columns)]
    for name, rows in profiles.items():
        depth = half_depth(rows)
        units_total = max(r["depth"] for r in rows)
        pre, suf = row_at(rows, "prefix", depth), row_at(rows, "suffix", depth)
        cells = [name, f"{depth}/{units_total}", f"{pre['flop_ratio']:.2f}",
                 f"{suf['flop_ratio']:.2f}", f"{pre['saved_activation_bytes'] / 1024:.1f}",
                 f"{suf['saved_activation_bytes'] / 1024:.1f}"]
        if timings:
            cells += [f"{pre['time_ratio']:.2f}", f"{suf['time_ratio']:.2f}"]
        lines.append("  ".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def format_steps(rows: list[dict[str, Any]]) -> str:
    """Forward, backward, optimizer and step milliseconds with speedups (notebook 02)."""
    columns = ["mode", "depth", "fwd ms", "bwd ms", "opt ms", "step ms", "speedup", "bound"]
    lines = ["  ".join(f"{c:>8}" for c in columns)]
    for r in rows:
        cells = [r["mode"], r["depth"]] + [
            f"{r[k] * 1e3:.2f}"
            for k in ("forward_seconds", "backward_seconds", "optimizer_seconds", "step_seconds")
        ] + [f"{r['step_speedup']:.2f}", f"{r['time_bound']:.2f}"]
        lines.append("  ".join(f"{c:>8}" for c in cells))
    return "\n".join(lines)


def plot_step_speedups(rows: list[dict[str, Any]], title: str = ""):
    """Measured step speedup against depth, the FLOP estimate and the timed bound (notebook 02)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, color in zip(FREEZE_MODES, ("tab:blue", "tab:orange"), strict=True):
        mine = [r for r in rows if r["mode"] == mode]
        if mine:
            ax.errorbar([r["depth"] for r in mine], [r["step_speedup"] for r in mine],
                        yerr=_quartile_bars(mine, "step_speedup"), fmt="o-", color=color,
                        capsize=3, label=f"{mode}: measured step speedup (Q1-Q3)")
    ax.axhline(rows[0]["flop_bound"], color="gray", ls="--", label="FLOP estimate (F+B)/F")
    ax.axhline(rows[0]["time_bound"], color="black", ls=":",
               label="bound: unfrozen step / fastest forward")
    ax.set(xlabel="frozen units", ylabel="step time unfrozen / frozen", title=title or
           "A whole step cannot beat the forward pass")
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def format_width_flops(rows: list[dict[str, Any]]) -> str:
    """The deterministic part of a width sweep: parameters and FLOP saving (notebook 02)."""
    lines = [f"{'width':>6}  {'params':>9}  {'frozen units':>14}  {'FLOP saving':>11}"]
    for r in rows:
        lines.append(f"{r['width']:>6}  {r['params']:>9,}  {'+'.join(r['frozen_units']):>14}  "
                     f"{r['flop_saving']:>11.2f}")
    return "\n".join(lines)


def format_width_times(rows: list[dict[str, Any]]) -> str:
    """The measured part of a width sweep: step times and savings (notebook 02)."""
    columns = ["width", "step ms", "bwd saving", "step saving", "cat saving"]
    lines = ["  ".join(f"{c:>11}" for c in columns)]
    for r in rows:
        cells = [r["width"], f"{r['unfrozen_step_seconds'] * 1e3:.3f}",
                 f"{r['backward_saving']:.2f}", f"{r['step_saving']:.2f}",
                 f"{r['cat_freeze_saving']:.2f}"]
        lines.append("  ".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def pays_off_width(rows: list[dict[str, Any]], fraction: float = 0.8) -> int | None:
    """Smallest width from which on the measured backward saving reaches `fraction` of the
    FLOP prediction, or None (notebook 02)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    ordered = sorted(rows, key=lambda r: r["width"])
    for i, row in enumerate(ordered):
        if all(r["backward_saving"] >= fraction * r["flop_saving"] for r in ordered[i:]):
            return row["width"]
    return None


def plot_width_sweep(rows: list[dict[str, Any]]):
    """Predicted and measured saving of freezing against MLP width, log scale (notebook 02)."""
    import matplotlib.pyplot as plt

    widths = [r["width"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(widths, [r["flop_saving"] for r in rows], "k--", label="backward FLOP saving")
    for key, fmt, label in (("backward_saving", "o-", "measured backward saving"),
                            ("step_saving", "s-", "measured step saving"),
                            ("cat_freeze_saving", "^-",
                             "step saving, half rows frozen via torch.cat")):
        ax.errorbar(widths, [r[key] for r in rows], yerr=_quartile_bars(rows, key), fmt=fmt,
                    capsize=3, label=f"{label} (Q1-Q3)")
    ax.axhline(0, color="gray", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="MLP width (log scale)", ylabel="saving = 1 - frozen / unfrozen",
           title="Freezing the first half: saving against width")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def format_shares(rows: list[dict[str, Any]]) -> str:
    """Frozen-parameter share against backward-FLOP saving per (mode, depth) (notebook 02)."""
    lines = [f"{'mode':>7}  {'depth':>5}  {'edge unit':>12}  {'param share':>11}  "
             f"{'FLOP saving':>11}"]
    for r in rows:
        frozen = r["frozen_units"] or ["-"]
        edge = frozen[-1] if r["mode"] == "prefix" else frozen[0]
        lines.append(f"{r['mode']:>7}  {r['depth']:>5}  {edge:>12}  "
                     f"{r['param_share']:>11.2f}  {r['flop_saving']:>11.2f}")
    return "\n".join(lines)


def plot_shares(rows: list[dict[str, Any]]):
    """Measured time saving against frozen-parameter share and against FLOP saving (notebook 02)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, label in zip(axes, ("param_share", "flop_saving"),
                              ("share of parameters frozen", "share of backward FLOPs removed"),
                              strict=True):
        for mode, marker in zip(FREEZE_MODES, ("o", "s"), strict=True):
            mine = [r for r in rows if r["mode"] == mode]
            ax.errorbar([r[key] for r in mine], [r["time_saving"] for r in mine],
                        yerr=_quartile_bars(mine, "time_saving"), fmt=marker, ms=7,
                        capsize=3, label=f"{mode} (Q1-Q3)")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="time saving = share")
        ax.set(xlabel=label, xlim=(-0.05, 1.05), ylim=(-0.3, 1.05))
        ax.legend(fontsize=9)
    axes[0].set(ylabel="measured backward time saving", title="Parameters do not predict time")
    axes[1].set(title="FLOPs do")
    fig.tight_layout()
    return fig
