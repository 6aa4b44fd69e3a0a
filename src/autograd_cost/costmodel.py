"""A per-op cost model: roofline (compute or memory traffic) plus a per-op overhead.

Every op of forward and backward is recorded with a TorchDispatchMode, the mechanism
FlopCounterMode uses: its FLOPs (the course's counter registry, attention included), the
bytes of its tensor inputs and outputs, and the module that ran it (torch's ModuleTracker,
which follows modules into backward). An op is predicted to take

    max(FLOPs / matmul rate, bytes / bandwidth) + overhead per op

and a pass the sum over its ops. The three constants are calibrated on this machine by
micro-benchmarks timed with the course's round-robin timer (`calibrate`), once per session.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.module_tracker import ModuleTracker

from autograd_cost.core import LossFn, ModelInput, model_loss, pick_device
from autograd_cost.cost import flop_counter
from autograd_cost.freezing import frozen_state
from autograd_cost.timing import interleaved_seconds

PHASES = ("forward", "backward")


@dataclass(frozen=True)
class OpRecord:
    """One op as dispatched: phase, module, FLOPs and bytes read + written."""

    op: str
    phase: str
    module: str
    flops: int
    bytes: int


def _tensor_bytes(values: object) -> int:
    flat, _ = tree_flatten(values)
    return sum(v.numel() * v.element_size() for v in flat if isinstance(v, torch.Tensor))


def _innermost(parents: set[str]) -> str:
    """The deepest module name ModuleTracker reports, without the root's class name."""
    named = sorted((p for p in parents if p != "Global"), key=lambda p: p.count("."))
    if not named:
        return ""
    return named[-1].partition(".")[2] if "." in named[-1] else ""


class _OpRecorder(TorchDispatchMode):
    """Records every non-view op with its FLOPs, bytes and module."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.phase = "forward"
        self.records: list[OpRecord] = []
        self.registry = flop_counter().flop_registry  # the course counter's, attention included

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        packet = func.overloadpacket
        formula = self.registry.get(packet)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        self.records.append(OpRecord(
            op=str(packet).removeprefix("aten."), phase=self.phase,
            module=_innermost(self.tracker.parents), flops=flops,
            bytes=_tensor_bytes((args, kwargs)) + _tensor_bytes(out)))
        return out


def record_ops(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
) -> list[OpRecord]:
    """Every op of one forward and backward, with FLOPs, bytes and module.

    `frozen` as in `cost.count_flops`: None for the model as configured, or exactly these
    units frozen. The model is restored afterwards.
    """
    tracker = ModuleTracker()
    with frozen_state(model, frozen), tracker:
        recorder = _OpRecorder(tracker)
        with recorder:
            loss = model_loss(model, example_input, loss_fn)
            recorder.phase = "backward"
            if loss.requires_grad:
                loss.backward()
    return recorder.records


@dataclass(frozen=True)
class MachineConstants:
    """The cost model's three constants, calibrated on this machine."""

    flops_per_second: float
    bytes_per_second: float
    seconds_per_op: float

    def __str__(self) -> str:
        return (f"matmul {self.flops_per_second / 1e9:.1f} GFLOP/s, memory "
                f"{self.bytes_per_second / 1e9:.1f} GB/s, overhead "
                f"{self.seconds_per_op * 1e6:.1f} µs per op")


CALIBRATION_MATMUL = (128, 1024, 1024)  # (n, k, m): a batch of 128 through a 1024-wide layer
CALIBRATION_ELEMENTS = 1 << 20  # an elementwise op over 1 Mi float32 values (4 MiB each)


def _calibration_runs(device: torch.device) -> dict[str, object]:
    n, k, m = CALIBRATION_MATMUL
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, k, generator=generator).to(device)
    b = torch.randn(k, m, generator=generator).to(device)
    x = torch.randn(CALIBRATION_ELEMENTS, generator=generator).to(device)
    y, out = torch.randn_like(x), torch.empty_like(x)
    tiny = torch.ones(1, device=device)
    return {
        "matmul": lambda: torch.mm(a, b),
        "elementwise": lambda: torch.add(x, y, out=out),
        "tiny": lambda: torch.add(tiny, tiny),
    }


@functools.cache
def _calibrate(device: torch.device) -> MachineConstants:
    runs = _calibration_runs(device)
    timings = interleaved_seconds(runs, device, calls_per_sample=20, min_repeats=7,
                                  max_repeats=15, max_seconds=3.0)
    n, k, m = CALIBRATION_MATMUL
    overhead = timings["tiny"].median
    flops_per_second = 2 * n * k * m / max(timings["matmul"].median - overhead, 1e-9)
    traffic = 3 * CALIBRATION_ELEMENTS * 4
    bytes_per_second = traffic / max(timings["elementwise"].median - overhead, 1e-9)
    return MachineConstants(flops_per_second, bytes_per_second, overhead)


def uncached_calibration(device: str | torch.device | None = None) -> MachineConstants:
    """Calibrate anew, bypassing the session cache: two runs show the constants' spread."""
    return _calibrate.__wrapped__(pick_device(device))


def calibrate(device: str | torch.device | None = None) -> MachineConstants:
    """Time a matmul, an elementwise op and a tiny op; cached for the session.

    Micro-benchmarks, not a fit: the matmul rate of a 128x1024 @ 1024x1024 mm, the
    bandwidth of adding two 1 Mi-element float32 tensors (12 MiB moved), and the time of
    one op on a 1-element tensor (dispatch overhead), each the median of round-robin rounds.
    """
    return _calibrate(pick_device(device))


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds of a pass, split into compute, memory traffic and overhead."""

    compute_seconds: float
    memory_seconds: float
    overhead_seconds: float
    ops: int

    @property
    def seconds(self) -> float:
        """The predicted total: compute-bound + memory-bound + overhead seconds."""
        return self.compute_seconds + self.memory_seconds + self.overhead_seconds


def predict_seconds(records: Sequence[OpRecord], constants: MachineConstants,
                    phase: str = "backward") -> Prediction:
    """Sum of max(FLOPs / rate, bytes / bandwidth) + overhead over one phase."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; valid phases are {list(PHASES)}")
    compute = memory = 0.0
    ops = [r for r in records if r.phase == phase]
    for record in ops:
        compute_time = record.flops / constants.flops_per_second
        memory_time = record.bytes / constants.bytes_per_second
        if compute_time >= memory_time:
            compute += compute_time
        else:
            memory += memory_time
    return Prediction(compute, memory, len(ops) * constants.seconds_per_op, len(ops))


def predict_backward_seconds(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
    constants: MachineConstants | None = None,
) -> Prediction:
    """Predicted backward seconds of a model under a freeze, from its recorded ops."""
    device = next(model.parameters()).device
    records = record_ops(model, example_input, loss_fn, frozen)
    return predict_seconds(records, constants or calibrate(device), "backward")
