"""Notebook 02, sections 2-3: whole training steps per freeze, and the MLP width sweep."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from autograd_cost.core import (
    LossFn,
    ModelInput,
    check_choice,
    check_number,
    check_positive_int,
    make_loss_fn,
    on_device,
    pick_device,
    synchronize,
    to_device,
)
from autograd_cost.cost import count_flops
from autograd_cost.freezing import (
    FREEZE_MODES,
    execution_order,
    preserved_state,
    preserved_values,
    set_frozen,
    units_to_freeze,
)
from autograd_cost.models import CatLinear, mlp
from autograd_cost.models import example_input as course_input
from autograd_cost.results import to_frame
from autograd_cost.timing import Seconds, Timing, interleaved_samples, summarize_times
from autograd_cost.training import OptimizerFactory, make_optimizer, training_step

PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class StepTiming:
    """Median and IQR of the forward, backward, optimizer and whole-step times (notebook 02)."""

    forward: Timing
    backward: Timing
    optimizer: Timing
    step: Timing


def _phase_clock(parts: dict[str, float], device: torch.device):
    """A `phase` marker for training_step that adds each phase's seconds to `parts`."""

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        synchronize(device)
        start = time.perf_counter()
        yield
        synchronize(device)
        parts[name] += time.perf_counter() - start

    return phase


def interleaved_configs(
    configs: Sequence[tuple[nn.Module, Sequence[str]]],
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    optimizer: str | OptimizerFactory = "sgd-momentum",
    device: torch.device | None = None,
    repeats: int = 10,
) -> list[StepTiming]:
    """Whole training steps of (model, frozen units) pairs, timed round-robin (notebook 02).

    Each pair gets an optimizer over its trainable parameters only, as in fine-tuning, and
    runs `training.training_step`, its phases timed; the rounds come from the course timer
    `timing.interleaved_samples` (one untimed warm-up round, garbage collector paused).
    Every model is restored afterwards, parameter values included.
    """
    check_positive_int("repeats", repeats)
    if not configs:
        raise ValueError("configs is empty; pass at least one (model, frozen units) pair")
    device = device or next(configs[0][0].parameters()).device
    parts: list[list[dict[str, float]]] = [[] for _ in configs]
    with ExitStack() as stack:
        for model in {id(m): m for m, _ in configs}.values():
            stack.enter_context(preserved_state(model))
            stack.enter_context(preserved_values(model))
        optimizers = []
        for model, names in configs:
            set_frozen(model, names)
            optimizers.append(make_optimizer(model, optimizer))

        def step(index: int):
            model, names = configs[index]

            def run() -> float:
                timed = dict.fromkeys(PHASES, 0.0)
                set_frozen(model, names)
                training_step(model, example_input, loss_fn, optimizers[index],
                              phase=_phase_clock(timed, device))
                parts[index].append(timed)
                return Seconds(sum(timed.values()))

            return run

        interleaved_samples({str(i): step(i) for i in range(len(configs))}, device,
                            warmup_rounds=1, min_repeats=repeats, max_repeats=repeats,
                            max_seconds=float("inf"))
    return [_step_timing(bucket[1:]) for bucket in parts]  # bucket[0] is the warm-up


def _step_timing(bucket: list[dict[str, float]]) -> StepTiming:
    columns = [summarize_times([timed[name] for timed in bucket]) for name in PHASES]
    return StepTiming(*columns, summarize_times([sum(t.values()) for t in bucket]))


def interleaved_step_seconds(
    model: nn.Module,
    example_input: ModelInput,
    freeze_sets: Sequence[Sequence[str]],
    loss_fn: LossFn | None = None,
    optimizer: str | OptimizerFactory = "sgd-momentum",
    device: torch.device | None = None,
    repeats: int = 10,
) -> list[StepTiming]:
    """`interleaved_configs` for one model and several freeze sets (notebook 02)."""
    if not freeze_sets:
        raise ValueError("freeze_sets is empty; pass at least one list of unit names")
    configs = [(model, list(names)) for names in freeze_sets]
    return interleaved_configs(configs, example_input, loss_fn, optimizer, device, repeats)


def step_sweep(
    model: nn.Module,
    example_input: ModelInput,
    target: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    modes: Sequence[str] = ("prefix",),
    freeze_depths: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    repeats: int = 10,
    optimizer: str | OptimizerFactory = "sgd-momentum",
) -> pd.DataFrame:
    """FLOPs and forward/backward/optimizer/step times per (mode, freeze depth) (notebook 02).

    One row per freeze; times are medians, the step's IQR and quartiles have their own
    columns. The model is left as it was, parameter values included, also on error.
    """
    for mode in [modes] if isinstance(modes, str) else modes:
        check_choice("mode", mode, FREEZE_MODES)
    check_positive_int("repeats", repeats)
    device = pick_device(device)
    example_input = to_device(example_input, device)
    loss = make_loss_fn(loss_fn, None if target is None else target.to(device))
    with preserved_state(model), on_device(model, device):
        order = execution_order(model, example_input)
        depths = range(len(order) + 1) if freeze_depths is None else freeze_depths
        plans = [(m, d, units_to_freeze(order, m, d)) for m in modes for d in depths]
        distinct = list({tuple(frozen): frozen for *_, frozen in plans}.values())
        timings = interleaved_step_seconds(model, example_input, distinct, loss, optimizer,
                                           device, repeats)
        by_set = {tuple(f): (count_flops(model, example_input, loss, frozen=f), t)
                  for f, t in zip(distinct, timings, strict=True)}
    rows = []
    for mode, depth, frozen in plans:
        flops, t = by_set[tuple(frozen)]
        rows.append({"mode": mode, "freeze_depth": depth, "frozen_units": tuple(frozen),
                     "forward_flops": flops.forward, "backward_flops": flops.backward,
                     "forward_seconds": t.forward.median, "backward_seconds": t.backward.median,
                     "optimizer_seconds": t.optimizer.median, "step_seconds": t.step.median,
                     "step_seconds_iqr": t.step.iqr, "step_seconds_q1": t.step.q1,
                     "step_seconds_q3": t.step.q3})
    return pd.DataFrame(rows)


def with_step_speedups(frame: pd.DataFrame) -> pd.DataFrame:
    """Add each row's step speedup over its mode's unfrozen step, and two bounds (notebook 02).

    flop_bound is the FLOP estimate (F+B)/F of the unfrozen step; time_bound is the unfrozen
    step time over the fastest forward measured in that mode, (F+B+O)/F_min in seconds.
    step_speedup_q1/_q3 divide the unfrozen median by the row's step Q3/Q1.
    """
    base = frame[frame["freeze_depth"] == 0].set_index("mode")
    if frame.empty or set(base.index) != set(frame["mode"]):
        raise ValueError("speedups need a freeze-depth-0 (unfrozen) row for every mode")
    unfrozen = frame["mode"].map(base["step_seconds"])
    fastest_forward = frame.groupby("mode")["forward_seconds"].transform("min")
    return frame.assign(
        step_speedup=unfrozen / frame["step_seconds"],
        step_speedup_q1=unfrozen / frame["step_seconds_q3"],
        step_speedup_q3=unfrozen / frame["step_seconds_q1"],
        flop_bound=frame["mode"].map(
            (base["forward_flops"] + base["backward_flops"]) / base["forward_flops"]),
        time_bound=unfrozen / fastest_forward,
    )


def step_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Milliseconds of forward, backward, optimizer and step, speedup and bound (notebook 02)."""
    shown = {"forward_seconds": "fwd ms", "backward_seconds": "bwd ms",
             "optimizer_seconds": "opt ms", "step_seconds": "step ms"}
    table = frame[["mode", "freeze_depth"]].copy()
    for key, title in shown.items():
        table[title] = (frame[key] * 1e3).round(2)
    return table.assign(speedup=frame["step_speedup"].round(2),
                        bound=frame["time_bound"].round(2))


def _quartile_bars(frame: pd.DataFrame, key: str) -> list[list[float]]:
    """matplotlib's yerr: distances from each value down to its Q1 and up to its Q3."""
    return [list(frame[key] - frame[f"{key}_q1"]), list(frame[f"{key}_q3"] - frame[key])]


def plot_step_speedups(frame: pd.DataFrame, title: str = ""):
    """Step speedup against freeze depth, the FLOP estimate and the timed bound (notebook 02)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, color in zip(FREEZE_MODES, ("tab:blue", "tab:orange"), strict=True):
        mine = frame[frame["mode"] == mode]
        if len(mine):
            ax.errorbar(mine["freeze_depth"], mine["step_speedup"],
                        yerr=_quartile_bars(mine, "step_speedup"), fmt="o-", color=color,
                        capsize=3, label=f"{mode}: measured step speedup (Q1-Q3)")
    ax.axhline(frame["flop_bound"].iloc[0], color="gray", ls="--",
               label="FLOP estimate (F+B)/F")
    ax.axhline(frame["time_bound"].iloc[0], color="black", ls=":",
               label="bound: unfrozen step / fastest forward")
    ax.set(xlabel="frozen units", ylabel="step time unfrozen / frozen",
           title=title or "A whole step cannot beat the forward pass")
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def cat_freeze_copy(model: nn.Module, fraction: float = 0.5) -> nn.Module:
    """A copy of `model` with every Linear's first `fraction` of rows frozen via cat (notebook 02).

    The forum question's way to freeze part of a layer, taken apart in notebook 04. The
    number of frozen rows is rounded down; the original model is not changed. Autograd still
    computes the gradient of each whole concatenated weight, so no matmul is saved.
    """
    check_number("fraction", fraction, 0, 1)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to freeze in part")
    copied = copy.deepcopy(model)
    for name in names:
        linear = copied.get_submodule(name)
        parent, _, child = name.rpartition(".")
        split = CatLinear(linear, int(linear.out_features * fraction))
        setattr(copied.get_submodule(parent) if parent else copied, child, split)
    return copied


def width_sweep(
    widths: Sequence[int],
    depth: int = 3,
    batch: int = 64,
    repeats: int = 10,
    device: str | torch.device | None = None,
    optimizer: str | OptimizerFactory = "sgd-momentum",
) -> pd.DataFrame:
    """Per MLP width: FLOP-predicted and measured saving of freezing the first half (notebook 02).

    The model is mlp(width, depth) (depth = hidden layers); the freeze covers the first half
    of its units (rounded down). Savings are 1 - frozen / unfrozen for backward FLOPs,
    backward time and step time (medians), with `_q1`/`_q3` columns from the frozen run's
    quartiles. cat_freeze_saving is the step saving of the forum question's way instead
    (cat_freeze_copy, half the rows of every layer); negative means slower.
    unfrozen_step_flops is the unfrozen step's forward plus backward FLOPs.
    """
    if isinstance(widths, int) or not widths:
        raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
    device = pick_device(device)
    rows = []
    for width in widths:
        model = mlp(width=width, depth=depth).to(device)
        x = course_input(model, batch=batch).to(device)
        order = execution_order(model, x)
        frozen = order[: len(order) // 2]
        full, part = (count_flops(model, x, frozen=names) for names in ([], frozen))
        configs = [(model, []), (model, frozen), (cat_freeze_copy(model), [])]
        unfrozen, halved, cat = interleaved_configs(configs, x, None, optimizer, device,
                                                    repeats)
        rows.append({
            "width": width, "params": sum(p.numel() for p in model.parameters()),
            "frozen_units": frozen, "flop_saving": 1 - part.backward / full.backward,
            **_savings("backward_saving", halved.backward, unfrozen.backward),
            **_savings("step_saving", halved.step, unfrozen.step),
            **_savings("cat_freeze_saving", cat.step, unfrozen.step),
            "unfrozen_step_flops": full.forward + full.backward,
            "unfrozen_step_seconds": unfrozen.step.median,
            "frozen_step_seconds": halved.step.median,
        })
    return to_frame(rows)


def _savings(key: str, frozen: Timing, unfrozen: Timing) -> dict[str, float]:
    # A saving 1 - t / base falls as t rises, so the frozen run's Q3 gives the saving's Q1.
    return {key: 1 - frozen.median / unfrozen.median,
            f"{key}_q1": 1 - frozen.q3 / unfrozen.median,
            f"{key}_q3": 1 - frozen.q1 / unfrozen.median}


def width_time_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The measured part of a width sweep: unfrozen step time and the savings (notebook 02)."""
    return pd.DataFrame({
        "width": frame["width"], "step ms": (frame["unfrozen_step_seconds"] * 1e3).round(3),
        "bwd saving": frame["backward_saving"].round(2),
        "step saving": frame["step_saving"].round(2),
        "cat saving": frame["cat_freeze_saving"].round(2)})


def pays_off_width(frame: pd.DataFrame, fraction: float = 0.8) -> int | None:
    """The smallest width from which on every backward saving pays off, or None (notebook 02).

    Paying off means the measured backward saving reaches `fraction` of the FLOP prediction.
    """
    check_number("fraction", fraction, 0, 1)
    if fraction == 0:
        raise ValueError("fraction must lie in (0, 1], got 0")
    ordered = frame.sort_values("width")
    pays = ordered["backward_saving"] >= fraction * ordered["flop_saving"]
    from_here = pays[::-1].cummin()[::-1]  # True where this and every larger width pays
    return int(ordered["width"][from_here].iloc[0]) if from_here.any() else None


def plot_width_sweep(frame: pd.DataFrame):
    """Predicted and measured saving of freezing against MLP width, log scale (notebook 02)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(frame["width"], frame["flop_saving"], "k--", label="backward FLOP saving")
    for key, fmt, label in (("backward_saving", "o-", "measured backward saving"),
                            ("step_saving", "s-", "measured step saving"),
                            ("cat_freeze_saving", "^-",
                             "step saving, half rows frozen via torch.cat")):
        ax.errorbar(frame["width"], frame[key], yerr=_quartile_bars(frame, key), fmt=fmt,
                    capsize=3, label=f"{label} (Q1-Q3)")
    ax.axhline(0, color="gray", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="MLP width (log scale)", ylabel="saving = 1 - frozen / unfrozen",
           title="Freezing the first half: saving against width")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig
