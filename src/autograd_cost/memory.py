"""What one training step keeps in memory, by category, with and without freezing (notebook 07).

`memory_breakdown` runs one real step (forward, backward, optimizer step) under torch.profiler
and reports parameters, gradients, optimizer state, saved activations, temporaries and the
peak. `estimate_peak` predicts the peak from tensors and hooks alone. The profiler replay, the
table and the plots live in `autograd_cost.memory_timeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from autograd_cost.core import (
    LossFn,
    ModelInput,
    make_loss_fn,
    model_loss,
    on_device,
    placed_inputs,
    synchronize,
)
from autograd_cost.cost import (
    gradient_bytes,
    optimizer_state_bytes,
    saved_activation_bytes,
    storage_bytes,
)
from autograd_cost.freezing import frozen_state, preserved_values, units
from autograd_cost.memory_timeline import (
    PHASES,
    MemoryTimeline,
    memory_profile,
    memory_timeline,
    profiled_phase,
)
from autograd_cost.timing import garbage_collection_paused
from autograd_cost.training import (
    OptimizerFactory,
    make_optimizer,
    resolve_optimizer,
    training_step,
)


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
    `at_end` is the profiler's split after the step, a cross-check of the tensor counts. On
    CUDA, `cuda_peak_increase_bytes` is torch.cuda.max_memory_allocated during the step minus
    the bytes allocated before it, a cross-check of `peak_bytes - timeline.totals()[0]` (the
    caching allocator rounds block sizes up); None on the CPU.
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
    cuda_peak_increase_bytes: int | None = None


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread: temporaries match on any machine (notebook 07)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _measure(model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None,
             factory: OptimizerFactory, device: torch.device) -> tuple[MemoryTimeline, dict]:
    """A warm-up step (creates the optimizer state), then one profiled step."""
    optimizer = make_optimizer(model, factory)
    training_step(model, example_input, loss_fn, optimizer)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    cuda_start = _cuda_reset_peak(device)
    with garbage_collection_paused(collect=False), memory_profile(device.type) as prof:
        training_step(model, example_input, loss_fn, optimizer, phase=profiled_phase)
        synchronize(device)
    counts = {
        "gradients": gradient_bytes(model),
        "optimizer state": 0 if optimizer is None else optimizer_state_bytes(optimizer),
        "cuda peak increase": (None if cuda_start is None
                               else torch.cuda.max_memory_allocated(device) - cuda_start),
    }
    return memory_timeline(prof, device), counts


def _cuda_reset_peak(device: torch.device) -> int | None:
    """On CUDA: reset the allocator's peak and return the bytes allocated now; else None."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def memory_breakdown(
    model: nn.Module,
    example_input: ModelInput,
    frozen: Sequence[str] | None = None,
    optimizer: str | OptimizerFactory = "adam",
    target: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> MemoryBreakdown:
    """Measure the memory of one training step: forward, backward, optimizer step (notebook 07).

    `frozen` has the one meaning of every instrument (`freezing.frozen_state`): None measures
    the model as configured (a PEFT model, say); a list of unit names freezes exactly those
    units and trains the rest. `optimizer` is "sgd", "sgd-momentum",
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
    factory = resolve_optimizer(optimizer)
    device, example_input, loss = placed_inputs(example_input, target, loss_fn, device)
    with _measured_model(model, frozen, device):
        timeline, counts = _measure(model, example_input, loss, factory, device)
        saved = saved_activation_bytes(model, example_input, loss)
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        parameters = storage_bytes(params)
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
        cuda_peak_increase_bytes=counts["cuda peak increase"],
    )


@contextmanager
def _measured_model(model: nn.Module, frozen: Sequence[str] | None,
                    device: torch.device) -> Iterator[None]:
    """On `device`, on one thread, `frozen` as in frozen_state; everything restored after."""
    with on_device(model, device), preserved_values(model), one_thread(), \
            frozen_state(model, frozen):
        yield


# Optimizer state per trainable parameter, in units of the parameter's element size, and
# whether each parameter tensor also gets a float32 step counter.
STATE_PER_PARAMETER = {"sgd": (0, False), "sgd-momentum": (1, False), "adam": (2, True),
                       "adamw": (2, True)}


@dataclass(frozen=True)
class PeakEstimate:
    """The terms of the peak formula, in bytes, from tensors and hooks only (notebook 07).

    peak = parameters + optimizer state
           + max(unsaved inputs + saved activations + 2 x largest activation,   # backward
                 inputs + gradients + optimizer temporaries)                    # optimizer
    """

    parameters_bytes: int
    optimizer_state_bytes: int
    gradients_bytes: int
    inputs_bytes: int
    unsaved_inputs_bytes: int
    saved_activation_bytes: int
    largest_activation_bytes: int
    optimizer_temporary_bytes: int
    backward_bytes: int
    optimizer_bytes: int
    peak_bytes: int


def _input_tensors(example_input: ModelInput) -> list[torch.Tensor]:
    return list(example_input) if isinstance(example_input, tuple) else [example_input]


def _activation_facts(model: nn.Module, example_input: ModelInput,
                      loss_fn: LossFn | None) -> tuple[int, int]:
    """(largest module output that needs a gradient, bytes of inputs that backward saves)."""
    inputs = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
              for t in _input_tensors(example_input)}
    largest = [0]
    saved_inputs: set[int] = set()

    def record_output(module: nn.Module, args: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            largest[0] = max(largest[0], output.untyped_storage().nbytes())

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() in inputs:
            saved_inputs.add(tensor.untyped_storage().data_ptr())
        return tensor

    hooks = [m.register_forward_hook(record_output) for m in model.modules()
             if not list(m.children())]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model_loss(model, example_input, loss_fn)
    finally:
        for hook in hooks:
            hook.remove()
    return largest[0], sum(inputs[ptr] for ptr in saved_inputs)


def estimate_peak(
    model: nn.Module,
    example_input: ModelInput,
    frozen: Sequence[str] | None = None,
    optimizer: str = "adam",
    target: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> PeakEstimate:
    """Predict a training step's peak memory with the notebook's formula (notebook 07).

    Backward peaks while the saved activations are live and the gradient of the largest
    activation flows in and out; the optimizer step peaks with every gradient live plus its
    temporaries: two tensors the size of the largest trainable parameter for Adam and AdamW
    (torch's single-tensor implementation, its default on the CPU), none for SGD. No profiler:
    parameters, gradients and state are counted, activations recorded with hooks.
    """
    if optimizer not in STATE_PER_PARAMETER:
        raise ValueError(f"estimate_peak knows the optimizers {list(STATE_PER_PARAMETER)}, "
                         f"got {optimizer!r}; measure others with memory_breakdown")
    if not isinstance(model, nn.Module) or not units(model):
        raise ValueError("model must be a torch.nn.Module with parameters")
    loss = make_loss_fn(loss_fn, target)
    per_parameter, step_counter = STATE_PER_PARAMETER[optimizer]
    with frozen_state(model, frozen):
        params = list(model.parameters())
        trainable = [p for p in params if p.requires_grad]
        largest, saved_inputs = _activation_facts(model, example_input, loss)
        saved = saved_activation_bytes(model, example_input, loss)
    sizes = [p.numel() * p.element_size() for p in trainable]
    state = per_parameter * sum(sizes) + (4 * len(trainable) if step_counter else 0)
    temporaries = 2 * max(sizes, default=0) if optimizer in ("adam", "adamw") else 0
    inputs = storage_bytes([*_input_tensors(example_input), *model.buffers()])
    parameters = storage_bytes(params)
    backward = inputs - saved_inputs + saved + 2 * largest
    step = inputs + sum(sizes) + temporaries
    return PeakEstimate(
        parameters_bytes=parameters, optimizer_state_bytes=state, gradients_bytes=sum(sizes),
        inputs_bytes=inputs, unsaved_inputs_bytes=inputs - saved_inputs,
        saved_activation_bytes=saved, largest_activation_bytes=largest,
        optimizer_temporary_bytes=temporaries,
        backward_bytes=parameters + state + backward, optimizer_bytes=parameters + state + step,
        peak_bytes=parameters + state + max(backward, step),
    )
