"""Op-level instruments: torch.profiler runs (stderr kept quiet) and a dispatch-level op log."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.profiler import profile
from torch.utils._python_dispatch import TorchDispatchMode

from autograd_cost.core import LossFn, ModelInput, check_positive_int, model_loss, synchronize
from autograd_cost.cost import flop_counter
from autograd_cost.freezing import frozen_state
from autograd_cost.quiet import quiet_profile


def profile_run(
    run: Callable[[], object],
    warmup: int = 2,
    steps: int = 1,
    device: torch.device | None = None,
) -> profile:
    """Run `steps` times under torch.profiler (CPU, plus CUDA) after a warm-up (notebook 04).

    Kineto's per-profile log lines are kept off stderr; the device is synchronized before and
    after the profiled steps.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = device or torch.device("cpu")
    for _ in range(warmup):
        run()
    synchronize(device)
    with quiet_profile(device.type) as prof:
        for _ in range(steps):
            run()
        synchronize(device)
    return prof


def op_counts(prof: profile) -> Counter[str]:
    """How many times each op or autograd node ran in a profile (notebook 04)."""
    return Counter(event.name for event in prof.events())


def extra_ops(baseline: Counter[str], variant: Counter[str]) -> dict[str, int]:
    """Ops the variant ran more often than the baseline, with the surplus count (notebook 04)."""
    surplus = variant - baseline
    return dict(sorted(surplus.items()))


def self_seconds_per_call(prof: profile) -> dict[str, float]:
    """Median self CPU seconds of one call of each op in a profile (notebook 04).

    The median, not the mean, so that one call the OS preempted does not inflate its op.
    """
    per_call: dict[str, list[float]] = {}
    for event in prof.events():
        per_call.setdefault(event.name, []).append(event.self_cpu_time_total / 1e6)
    return {name: statistics.median(times) for name, times in per_call.items()}


def surplus_seconds(
    per_call: Mapping[str, float], surplus: Mapping[str, int]
) -> dict[str, float]:
    """Self seconds of only the surplus calls: seconds per call * surplus count (notebook 04)."""
    missing = [name for name in surplus if name not in per_call]
    if missing:
        raise ValueError(f"no self time per call for surplus ops {missing}")
    negative = {name: count for name, count in surplus.items() if count < 0}
    if negative:
        raise ValueError(f"surplus call counts must be >= 0, got {negative}")
    return {name: per_call[name] * count for name, count in surplus.items()}


def extra_op_seconds(baseline: profile, variant: profile) -> dict[str, float]:
    """Self CPU seconds of the variant's surplus calls over the baseline, per op (notebook 04).

    Each surplus call is charged its op's median self time per call in the variant, so an op
    that both run (such as as_strided) is charged for its surplus calls only.
    """
    extra = extra_ops(op_counts(baseline), op_counts(variant))
    return surplus_seconds(self_seconds_per_call(variant), extra)


def typical_self_seconds(prof: profile) -> float:
    """Self CPU seconds of a profile, each call charged its op's median per call (notebook 04)."""
    per_call = self_seconds_per_call(prof)
    return sum(per_call[name] * count for name, count in op_counts(prof).items())


def self_time_share(prof: profile, names: Sequence[str]) -> float:
    """Share of a profile's self CPU time spent in the named ops, e.g. the matmuls (notebook 04)."""
    events = list(prof.events())
    ran = {event.name for event in events}
    if isinstance(names, str) or not ran & set(names):
        raise ValueError(f"none of the ops {names!r} ran in this profile; ops that ran: "
                         f"{sorted(ran)}")
    total = sum(event.self_cpu_time_total for event in events)
    if total <= 0:
        raise ValueError("the profile recorded no self CPU time")
    chosen = sum(event.self_cpu_time_total for event in events if event.name in set(names))
    return chosen / total


class _OpLog(TorchDispatchMode):
    """Counts the calls of every op that is not a view, as dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Any] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.calls[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def backward_ops(
    model: nn.Module,
    example_input: ModelInput,
    frozen: Sequence[str] | None = (),
    loss_fn: LossFn | None = None,
) -> dict[str, tuple[int, int | None]]:
    """Every op the backward runs (views left out): calls and counted FLOPs (notebook 02).

    FLOPs come from cost.flop_counter (FlopCounterMode plus CPU attention); they are None
    for an op it has no formula for, which it counts as 0. `frozen` as in `cost.count_flops`
    (default: nothing frozen). The model is left as it was.
    """
    with frozen_state(model, None if frozen is None else list(frozen)):
        loss = model_loss(model, example_input, loss_fn)
        if not loss.requires_grad:
            return {}
        # The log is outside the counter, so it sees the ops the counter really ran.
        with _OpLog() as log, flop_counter() as counter:
            loss.backward()
    flops = counter.get_flop_counts().get("Global", {})
    return {
        str(op).removeprefix("aten."): (
            calls, flops.get(op, 0) if op in counter.flop_registry else None
        )
        for op, calls in log.calls.items()
    }


def profile_ops(
    run: Callable[[], Any], device: torch.device | None = None, steps: int = 10, warmup: int = 3
):
    """Run `run` under torch.profiler and return its key averages, for attribution (notebook 02).

    Sort or print the result with `.table(sort_by="self_cpu_time_total", row_limit=10)`.
    """
    check_positive_int("steps", steps)
    return profile_run(run, warmup=warmup, steps=steps, device=device).key_averages()


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
              "aten::_convolution", "aten::convolution_backward")


def matmul_share(averages: Any, ops: Sequence[str] = MATMUL_OPS) -> float:
    """Share of profiled self CPU time spent inside matmul and convolution ops (notebook 02)."""
    total = sum(event.self_cpu_time_total for event in averages)
    if total <= 0:
        raise ValueError("the profile recorded no CPU time; run more steps")
    inside = sum(event.self_cpu_time_total for event in averages if event.key in ops)
    return inside / total
