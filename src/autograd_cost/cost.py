"""Measure backward cost: FLOPs, activation bytes saved for backward, and wall time."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from autograd_cost.freezing import ModelInput, freeze_units, preserved_state
from autograd_cost.graph import LossFn, model_loss

DEVICE_ENV = "AUTOGRAD_COST_DEVICE"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the argument, else $AUTOGRAD_COST_DEVICE, else CUDA if present.

    Taught in notebook 00. `make test` sets AUTOGRAD_COST_DEVICE=cpu, so the stored CPU
    outputs are compared on any machine; `make test-cuda` sets it to cuda.
    """
    source = "device argument"
    if device is None and os.environ.get(DEVICE_ENV):
        device, source = os.environ[DEVICE_ENV], DEVICE_ENV
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{source} {device!r} is not a device; use 'cpu', 'cuda' or "
                         f"'cuda:N' ({error})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{source} asks for {device!r}, but torch.cuda.is_available() is "
                         f"False on this machine; use 'cpu'")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"{source} {device!r}: the course runs on 'cpu' or 'cuda' only")
    return chosen


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that a timer reads real work (notebook 02)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Flops:
    """Forward and backward FLOPs of one step, counted by FlopCounterMode (notebook 01)."""

    forward: int
    backward: int


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None,
                              **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode's registry (torch 2.13) knows the CUDA attention kernels but not the CPU one
# that F.scaled_dot_product_attention dispatches to, which it would count as 0 FLOPs. We map
# it to torch's own attention formulas (the two matmuls QK^T and PV, causal mask ignored, as
# torch does for CUDA), per counter rather than globally, so importing this has no effect.
ATTENTION_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _attention_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU attention (notebook 02).

    What it counts: matmuls (mm, addmm, bmm, baddbmm), convolutions and attention, each as
    2 FLOPs per multiply-add. What it does not count: elementwise ops (ReLU, GELU, adding),
    normalization (BatchNorm, LayerNorm), softmax outside attention, pooling, reductions,
    the loss and the optimizer step.
    """
    return FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS)


def count_flops(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None
) -> Flops:
    """Count forward and backward FLOPs with FlopCounterMode, printing nothing (notebook 01)."""
    with preserved_state(model):
        with flop_counter() as forward_counter:
            loss = model_loss(model, example_input, loss_fn)
        backward = 0
        if loss.requires_grad:
            with flop_counter() as backward_counter:
                loss.backward()
            backward = backward_counter.get_total_flops()
    return Flops(forward_counter.get_total_flops(), backward)


def forward_flops(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None
) -> int:
    """FLOPs of the forward pass and loss (notebook 01)."""
    return count_flops(model, example_input, loss_fn).forward


def backward_flops(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None
) -> int:
    """FLOPs of the backward pass under the model's current freeze state (notebook 01)."""
    return count_flops(model, example_input, loss_fn).backward


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    storage = tensor.untyped_storage()
    return (str(tensor.device), storage.data_ptr())


def saved_activation_bytes(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None
) -> int:
    """Bytes the forward pass saves for backward, parameters and buffers excluded (notebook 01).

    Counted with saved_tensors_hooks; tensors that share storage are counted once. Packed
    tensors are kept alive until the count ends, so a graph freed during the forward (e.g.
    after .detach()) cannot hand its memory, and thus its storage key, to a later tensor.
    """
    excluded = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    storages: dict[tuple[str, int], int] = {}
    alive: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        alive.append(tensor)
        key = _storage_key(tensor)
        if key not in excluded:
            storages[key] = max(storages.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    with preserved_state(model), saved_tensors_hooks(pack, unpack):
        model_loss(model, example_input, loss_fn)
    return sum(storages.values())


@dataclass(frozen=True)
class Timing:
    """Median, interquartile range and quartiles of repeated wall times, in s (notebook 02).

    The IQR (interquartile range) is Q3 - Q1: the middle half of the samples lies in
    [q1, q3]. It is a spread that one slow outlier cannot inflate.
    """

    median: float
    iqr: float
    repeats: int
    q1: float | None = None
    q3: float | None = None

    def __str__(self) -> str:
        return f"{self.median * 1e3:.2f} ms ± {self.iqr * 1e3:.2f} ms (IQR, n={self.repeats})"

    def error_bar(self) -> tuple[float, float]:
        """Distances from the median down to Q1 and up to Q3, for matplotlib's xerr/yerr."""
        low = self.median if self.q1 is None else self.q1
        high = self.median if self.q3 is None else self.q3
        return (self.median - low, high - self.median)


def summarize_times(samples: list[float]) -> Timing:
    """Median and IQR of timing samples (notebook 02)."""
    if not samples:
        raise ValueError("no timing samples to summarize")
    if len(samples) == 1:
        return Timing(samples[0], 0.0, 1, samples[0], samples[0])
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(statistics.median(samples), q3 - q1, len(samples), q1, q3)


def _spread_is_small(samples: list[float], min_repeats: int, tolerance: float) -> bool:
    if len(samples) < min_repeats:
        return False
    timing = summarize_times(samples)
    return timing.iqr <= tolerance * timing.median


def time_repeats(
    run: Callable[[], None],
    device: torch.device,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 50,
    max_seconds: float = 2.0,
    tolerance: float = 0.05,
) -> Timing:
    """Warm up, then time `run` until the IQR is within `tolerance` of the median (notebook 02)."""
    for _ in range(warmup):
        run()
    synchronize(device)
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < max_repeats:
        start = time.perf_counter()
        run()
        synchronize(device)
        samples.append(time.perf_counter() - start)
        if _spread_is_small(samples, min_repeats, tolerance):
            break
        if len(samples) >= min_repeats and time.perf_counter() > deadline:
            break
    return summarize_times(samples)


def backward_seconds(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    min_repeats: int = 5,
    max_seconds: float = 2.0,
) -> Timing:
    """Wall time of the backward pass alone: forward untimed, warm-up, median of repeats.

    Taught in notebook 02. Gradients are set to None before each backward, as in training.
    """
    device = device or next(model.parameters()).device
    with preserved_state(model):
        loss = model_loss(model, example_input, loss_fn)
        if not loss.requires_grad:
            return Timing(0.0, 0.0, 0)
        params = list(model.parameters())

        def run() -> None:
            for param in params:
                param.grad = None
            loss.backward(retain_graph=True)

        return time_repeats(run, device, min_repeats=min_repeats, max_seconds=max_seconds)


@contextmanager
def garbage_collection_paused(collect: bool = True) -> Iterator[None]:
    """Pause Python's garbage collector while timing, as timeit does (notebook 02).

    collect=False skips the initial gc.collect(), which is slow, when only a collection at a
    random moment must be avoided (memory_breakdown, notebook 07).
    """
    was_enabled = gc.isenabled()
    if collect:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def interleaved_samples(
    runs: Mapping[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    calls_per_sample: int = 1,
    warmup_rounds: int = 1,
    min_repeats: int = 5,
    max_repeats: int = 30,
    max_seconds: float = 10.0,
    tolerance: float = 0.05,
) -> dict[str, list[float]]:
    """Seconds per call of each run, sampled round-robin so drift hits all alike (notebook 02).

    A run that returns a float reports its own seconds (say, a backward whose forward is
    untimed); for any other return value the whole call is timed, synchronized on CUDA.
    Warm-up rounds are untimed. Rounds stop once every IQR is within `tolerance` of its
    median (after `min_repeats`), after `max_seconds`, or at `max_repeats`. Sample i of every
    run is from round i, so per-round ratios (`median_ratio`) cancel drift.
    """
    if not runs:
        raise ValueError("runs must name at least one callable")
    if calls_per_sample < 1 or warmup_rounds < 0 or not 1 <= min_repeats <= max_repeats:
        raise ValueError(
            "need calls_per_sample >= 1, warmup_rounds >= 0 and 1 <= min_repeats <= "
            f"max_repeats, got {calls_per_sample}, {warmup_rounds}, {min_repeats}, {max_repeats}"
        )
    device = torch.device(device)

    def sample(run: Callable[[], object]) -> float:
        synchronize(device)
        start = time.perf_counter()
        reported = [run() for _ in range(calls_per_sample)]
        synchronize(device)
        elapsed = time.perf_counter() - start
        if all(isinstance(r, float) for r in reported):
            elapsed = sum(reported)
        return elapsed / calls_per_sample

    for _ in range(warmup_rounds):
        for run in runs.values():
            sample(run)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    deadline = time.perf_counter() + max_seconds
    with garbage_collection_paused():
        for rounds in range(1, max_repeats + 1):
            for name, run in runs.items():
                samples[name].append(sample(run))
            if rounds >= min_repeats and (
                time.perf_counter() > deadline
                or all(_spread_is_small(s, min_repeats, tolerance) for s in samples.values())
            ):
                break
    return samples


def interleaved_seconds(
    runs: Mapping[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    **options: float,
) -> dict[str, Timing]:
    """Median and IQR per run of `interleaved_samples`, with the same options (notebook 02)."""
    return {name: summarize_times(s) for name, s in interleaved_samples(runs, device,
                                                                        **options).items()}


def median_ratio(samples: Mapping[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of time(name) / time(baseline) within a round (notebook 04)."""
    missing = [n for n in (name, baseline) if n not in samples]
    if missing:
        raise ValueError(f"no samples for {missing}; have {sorted(samples)}")
    pairs = zip(samples[name], samples[baseline], strict=True)
    return statistics.median(a / b for a, b in pairs)


def timed_backward(loss: torch.Tensor, device: torch.device) -> float:
    """Seconds of `loss.backward()` alone, synchronized on CUDA (notebook 02)."""
    synchronize(device)
    start = time.perf_counter()
    loss.backward()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_backward_samples(
    model: nn.Module,
    example_input: ModelInput,
    freeze_sets: list[list[str]],
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    min_repeats: int = 5,
    max_repeats: int = 30,
    max_seconds: float = 10.0,
    tolerance: float = 0.05,
) -> list[list[float]]:
    """Backward seconds per round for several freeze sets, sampled round-robin (notebook 02).

    Each sample runs a fresh, untimed forward under that freeze set; one untimed round warms
    up. Rounds stop once every spread is small or time is up (see `interleaved_samples`).
    """
    device = device or next(model.parameters()).device

    def backward_under(names: list[str]) -> Callable[[], float]:
        def run() -> float:
            for param in model.parameters():
                param.requires_grad_(True)
            freeze_units(model, names)
            loss = model_loss(model, example_input, loss_fn)
            if not loss.requires_grad:
                return 0.0
            for param in model.parameters():
                param.grad = None
            return timed_backward(loss, device)

        return run

    runs = {str(i): backward_under(list(names)) for i, names in enumerate(freeze_sets)}
    with preserved_state(model):
        samples = interleaved_samples(runs, device, min_repeats=min_repeats,
                                      max_repeats=max_repeats, max_seconds=max_seconds,
                                      tolerance=tolerance)
    return [samples[str(i)] for i in range(len(freeze_sets))]


def interleaved_backward_seconds(
    model: nn.Module,
    example_input: ModelInput,
    freeze_sets: list[list[str]],
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    min_repeats: int = 5,
    max_repeats: int = 30,
    max_seconds: float = 10.0,
    tolerance: float = 0.05,
) -> list[Timing]:
    """Median and IQR of `interleaved_backward_samples` per freeze set (notebook 02)."""
    samples = interleaved_backward_samples(model, example_input, freeze_sets, loss_fn, device,
                                           min_repeats, max_repeats, max_seconds, tolerance)
    return [summarize_times(s) for s in samples]
