"""What one training step keeps in memory, by category, with and without freezing (notebook 07).

`memory_breakdown` runs one real step (forward, backward, optimizer step) under torch.profiler
and reports parameters, gradients, optimizer state, saved activations, temporaries and the
peak. The profiler replay lives in `autograd_cost.memory_timeline`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from autograd_cost.cost import (
    pick_device,
    saved_activation_bytes,
    synchronize,
)
from autograd_cost.freezing import ModelInput, exactly_frozen, preserved_state, units
from autograd_cost.graph import LossFn, model_loss
from autograd_cost.memory_timeline import (
    CATEGORIES,
    COLORS,
    PHASES,
    MemoryTimeline,
    byte_unit,
    memory_profile,
    memory_timeline,
    profiled_phase,
)
from autograd_cost.profile import make_loss_fn, on_device, to_device

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes of one training step by category, measured (notebook 07).

    Totals, counted from the tensors themselves: `parameters_bytes` (trainable and frozen),
    `gradients_bytes` (every .grad after backward), `optimizer_state_bytes` (every tensor in
    the optimizer's state after its step, step counters included) and `saved_activation_bytes`
    (saved_tensors_hooks, as `cost.saved_activation_bytes`). At the moment of the peak, from
    the profiler: `temporary_bytes` (its TEMPORARY and AUTOGRAD_DETAIL labels: buffers inside
    one op and the gradients backward passes between nodes) and `other_bytes` (no label, e.g.
    Adam's per-parameter temporaries). `peak_bytes` is the most bytes live at once, and
    `at_peak` splits it by category; `phase_peaks` is the most bytes live in each phase;
    `at_end` is the profiler's split after the step, a cross-check of the tensor counts.
    """

    parameters_bytes: int
    gradients_bytes: int
    optimizer_state_bytes: int
    saved_activation_bytes: int
    temporary_bytes: int
    other_bytes: int
    peak_bytes: int
    peak_phase: str
    at_peak: dict[str, int]
    phase_peaks: dict[str, int]
    at_end: dict[str, int]
    trainable_params: int
    frozen_params: int
    timeline: MemoryTimeline = field(repr=False, compare=False)


def resolve_optimizer(optimizer: str | OptimizerFactory) -> OptimizerFactory:
    """The optimizer factory for a name or a callable(params); clear error otherwise (nb 07)."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers are "
                             f"{list(OPTIMIZERS)} or a callable(params) -> Optimizer")
        return OPTIMIZERS[optimizer]
    if callable(optimizer):
        return optimizer
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)} or a callable(params) -> "
                     f"Optimizer, got {type(optimizer).__name__}")


def _build_optimizer(factory: OptimizerFactory, params: list[nn.Parameter]):
    built = factory(params)
    if not isinstance(built, torch.optim.Optimizer):
        raise ValueError(f"the optimizer callable must return a torch.optim.Optimizer, got "
                         f"{type(built).__name__}")
    return built


@contextmanager
def preserved_values(model: nn.Module) -> Iterator[None]:
    """Restore parameter values on exit, also on error: optimizer steps change them (nb 07)."""
    copies = [(p, p.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for param, copy in copies:
                param.copy_(copy)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread: temporaries then match on any machine (nb 07)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection at a random moment of the step (no gc.collect: it is slow)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _storage_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of distinct storages among `tensors`."""
    sizes = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        sizes[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(sizes.values())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in an optimizer's state, step counters included (notebook 07)."""
    tensors = [value for state in optimizer.state.values() for value in state.values()
               if isinstance(value, torch.Tensor)]
    return _storage_bytes(tensors)


def _training_step(model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None,
                   optimizer: torch.optim.Optimizer | None, marked: bool) -> None:
    """zero_grad (to None), forward, backward, optimizer step; phases marked if asked."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        if marked:
            with profiled_phase(name):
                yield
        else:
            yield

    with phase("forward"):
        loss = model_loss(model, example_input, loss_fn)
    if optimizer is None or not loss.requires_grad:
        return
    with phase("backward"):
        loss.backward()
    del loss
    with phase("optimizer"):
        optimizer.step()


def _measure(model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None,
             factory: OptimizerFactory, device: torch.device) -> tuple[MemoryTimeline, dict]:
    """A warm-up step (creates the optimizer state), then one profiled step."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _build_optimizer(factory, trainable) if trainable else None
    _training_step(model, example_input, loss_fn, optimizer, marked=False)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    with _collector_paused(), memory_profile(device.type) as prof:
        _training_step(model, example_input, loss_fn, optimizer, marked=True)
        synchronize(device)
    counts = {
        "gradients": _storage_bytes([p.grad for p in model.parameters() if p.grad is not None]),
        "optimizer state": 0 if optimizer is None else optimizer_state_bytes(optimizer),
    }
    return memory_timeline(prof, device), counts


def _check_frozen(model: nn.Module, frozen: Sequence[str] | None) -> None:
    if frozen is None:
        return
    if isinstance(frozen, str):
        raise ValueError(f"frozen must be a list of unit names or None, not the string "
                         f"{frozen!r}; valid units are {list(units(model))}")


def memory_breakdown(
    model: nn.Module,
    example_input: ModelInput,
    frozen: Sequence[str] | None = None,
    optimizer: str | OptimizerFactory = "adam",
    target: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> MemoryBreakdown:
    """Measure the memory of one training step: forward, backward, optimizer step (nb 07).

    `frozen=None` measures the model as configured (a PEFT model, say); a list of unit names
    freezes exactly those units and trains the rest. `optimizer` is "sgd", "sgd-momentum",
    "adam", "adamw" or a callable(params) -> Optimizer, given the trainable parameters. A
    warm-up step creates the optimizer state first, so the measured step is a steady one. The
    step runs on one intra-op thread, so peak and temporaries do not depend on the machine's
    core count. The model comes back as it was: requires_grad, .grad, parameter values,
    buffers, train/eval mode and device, also on error.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not units(model):
        raise ValueError(f"{type(model).__name__} has no parameters, so no training step")
    _check_frozen(model, frozen)
    factory = resolve_optimizer(optimizer)
    device = pick_device(device)
    example_input = to_device(example_input, device)
    if target is not None:
        target = target.to(device)
    loss = make_loss_fn(loss_fn, target)
    with _measured_model(model, frozen, device):
        timeline, counts = _measure(model, example_input, loss, factory, device)
        saved = saved_activation_bytes(model, example_input, loss)
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        parameters = _storage_bytes(params)
    peak = timeline.peak_index()
    at_peak = timeline.at(peak)
    return MemoryBreakdown(
        parameters_bytes=parameters,
        gradients_bytes=counts["gradients"],
        optimizer_state_bytes=counts["optimizer state"],
        saved_activation_bytes=saved,
        temporary_bytes=at_peak["temporaries"] + at_peak["autograd detail"],
        other_bytes=at_peak["other"],
        peak_bytes=sum(at_peak.values()),
        peak_phase=timeline.phases[peak],
        at_peak=at_peak,
        phase_peaks={phase: timeline.totals()[timeline.peak_index(phase)] for phase in PHASES
                     if phase in timeline.phases},
        at_end=timeline.at(len(timeline.live) - 1),
        trainable_params=trainable,
        frozen_params=sum(p.numel() for p in params) - trainable,
        timeline=timeline,
    )


@contextmanager
def _measured_model(model: nn.Module, frozen: Sequence[str] | None,
                    device: torch.device) -> Iterator[None]:
    """On `device` with exactly `frozen` frozen inside; state, values, device restored after."""
    with on_device(model, device), preserved_state(model), preserved_values(model), \
            one_thread():
        if frozen is None:
            yield
        else:
            with exactly_frozen(model, list(frozen)):
                yield


BREAKDOWN_COLUMNS = (
    ("trainable", "trainable_params"),
    ("params", "parameters_bytes"),
    ("grads", "gradients_bytes"),
    ("optim state", "optimizer_state_bytes"),
    ("saved act", "saved_activation_bytes"),
    ("temporary", "temporary_bytes"),
    ("other", "other_bytes"),
    ("peak", "peak_bytes"),
)


def format_breakdown(breakdowns: Mapping[str, MemoryBreakdown]) -> str:
    """A table of breakdowns, one row per setting, bytes with thousands separators (nb 07)."""
    if not breakdowns:
        raise ValueError("breakdowns must map at least one label to a MemoryBreakdown")
    header = ["setting", *(name for name, _ in BREAKDOWN_COLUMNS), "peak in"]
    rows = [[label, *(f"{getattr(b, key):,}" for _, key in BREAKDOWN_COLUMNS), b.peak_phase]
            for label, b in breakdowns.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        rest = (f"{c:>{w}}" for c, w in zip(cells[1:-1], widths[1:-1], strict=True))
        return "  ".join([first, *rest, f"{cells[-1]:<{widths[-1]}}"]).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def plot_memory_breakdown(breakdowns: Mapping[str, MemoryBreakdown], path: str | None = None,
                          title: str = ""):
    """One stacked bar per setting: what is live at the step's peak, by category (nb 07)."""
    import matplotlib.pyplot as plt

    if not breakdowns:
        raise ValueError("breakdowns must map at least one label to a MemoryBreakdown")
    divisor, unit = byte_unit(max(b.peak_bytes for b in breakdowns.values()))
    fig, ax = plt.subplots(figsize=(1.6 * len(breakdowns) + 3.5, 4))
    labels = list(breakdowns)
    bottoms = [0.0] * len(labels)
    for category in CATEGORIES:
        heights = [b.at_peak[category] / divisor for b in breakdowns.values()]
        if not any(heights):
            continue
        ax.bar(labels, heights, bottom=bottoms, color=COLORS[category], label=category)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set(ylabel=f"live at the peak ({unit})", title=title or "Memory at the peak of one step")
    ax.tick_params(axis="x", labelsize=8)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], names[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
