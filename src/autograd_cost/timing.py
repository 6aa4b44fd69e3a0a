"""Timing instruments: one round-robin timer that every wall-time measurement uses."""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from autograd_cost.core import LossFn, ModelInput, model_loss, synchronize
from autograd_cost.freezing import frozen_state, set_frozen


class Seconds(float):
    """Seconds a run measured itself, say a backward whose forward is untimed.

    `interleaved_samples` takes a run's return value as its sample only when it is a
    `Seconds`; any other return value (a loss as a float, say) is ignored and the whole call
    is timed. `timed_backward` and `thread_seconds` return it.
    """


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
    """Median and IQR of timing samples (notebook 05)."""
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
    run: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 50,
    max_seconds: float = 2.0,
    tolerance: float = 0.05,
) -> Timing:
    """Warm up, then time `run` until its IQR is within `tolerance` of the median.

    The round-robin timer `interleaved_samples` with a single run: same stopping rule,
    garbage collector paused, CUDA synchronized.
    """
    samples = interleaved_samples({"run": run}, device, warmup_rounds=warmup,
                                  min_repeats=min_repeats, max_repeats=max_repeats,
                                  max_seconds=max_seconds, tolerance=tolerance)
    return summarize_times(samples["run"])


def backward_seconds(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    min_repeats: int = 5,
    max_seconds: float = 2.0,
    frozen: Sequence[str] | None = None,
) -> Timing:
    """Wall time of the backward pass alone: forward untimed, warm-up, median of repeats.

    `frozen` as in `cost.count_flops`. One freeze set of
    `interleaved_backward_samples`.
    """
    samples = interleaved_backward_samples(model, example_input, [frozen], loss_fn, device,
                                           min_repeats=min_repeats, max_seconds=max_seconds)
    return summarize_times(samples[0])


@contextmanager
def garbage_collection_paused(collect: bool = True) -> Iterator[None]:
    """Pause Python's garbage collector while timing, as timeit does.

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
    on_round: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each run, sampled round-robin so drift hits all alike (notebook 02).

    A run that returns `Seconds` reports its own seconds (say, a backward whose forward is
    untimed); for any other return value (None, a loss) the whole call is timed,
    synchronized on CUDA.
    Each round starts one run later than the last (A B C, B C A, C A B, ...), so no run
    always follows the same neighbour. Warm-up rounds are untimed. Rounds stop once every
    IQR is within `tolerance` of its median (after `min_repeats`), after `max_seconds`, or
    at `max_repeats`. Sample i of every
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
        if all(isinstance(r, Seconds) for r in reported):
            elapsed = sum(reported)
        return elapsed / calls_per_sample

    for _ in range(warmup_rounds):
        for run in runs.values():
            sample(run)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    deadline = time.perf_counter() + max_seconds
    with garbage_collection_paused():
        for rounds in range(1, max_repeats + 1):
            start = (rounds - 1) % len(names)
            for name in names[start:] + names[:start]:
                samples[name].append(sample(runs[name]))
            if on_round is not None:
                on_round()
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
    """Median and IQR per run of `interleaved_samples`, with the same options."""
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
    """Seconds of `loss.backward()` alone, synchronized on CUDA."""
    synchronize(device)
    start = time.perf_counter()
    loss.backward()
    synchronize(device)
    return Seconds(time.perf_counter() - start)


def interleaved_backward_samples(
    model: nn.Module,
    example_input: ModelInput,
    freeze_sets: Sequence[Sequence[str] | None],
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    min_repeats: int = 5,
    max_repeats: int = 30,
    max_seconds: float = 10.0,
    tolerance: float = 0.05,
    on_round: Callable[[], object] | None = None,
) -> list[list[float]]:
    """Backward seconds per round for several freeze sets, sampled round-robin (notebook 02).

    A freeze set is a list of unit names (exactly those frozen) or None (the model as the
    user configured it). Each sample runs a fresh, untimed forward under that freeze set;
    one untimed round warms up. Rounds stop once every spread is small or time is up (see
    `interleaved_samples`). The model is restored afterwards, also on error.
    """
    device = device or next(model.parameters()).device
    configured = [(p, p.requires_grad) for p in model.parameters()]

    def backward_under(names: Sequence[str] | None) -> Callable[[], float]:
        def run() -> float:
            if names is None:
                for param, flag in configured:
                    param.requires_grad_(flag)
            else:
                set_frozen(model, names)
            loss = model_loss(model, example_input, loss_fn)
            if not loss.requires_grad:
                return Seconds(0.0)
            for param in model.parameters():
                param.grad = None
            return timed_backward(loss, device)

        return run

    runs = {str(i): backward_under(names) for i, names in enumerate(freeze_sets)}
    with frozen_state(model, None):
        samples = interleaved_samples(runs, device, min_repeats=min_repeats,
                                      max_repeats=max_repeats, max_seconds=max_seconds,
                                      tolerance=tolerance, on_round=on_round)
    return [samples[str(i)] for i in range(len(freeze_sets))]


def interleaved_backward_seconds(
    model: nn.Module,
    example_input: ModelInput,
    freeze_sets: Sequence[Sequence[str] | None],
    loss_fn: LossFn | None = None,
    device: torch.device | None = None,
    min_repeats: int = 5,
    max_repeats: int = 30,
    max_seconds: float = 10.0,
    tolerance: float = 0.05,
    on_round: Callable[[], object] | None = None,
) -> list[Timing]:
    """Median and IQR of `interleaved_backward_samples` per freeze set."""
    samples = interleaved_backward_samples(model, example_input, freeze_sets, loss_fn, device,
                                           min_repeats, max_repeats, max_seconds, tolerance,
                                           on_round)
    return [summarize_times(s) for s in samples]


def thread_seconds(run: Callable[[], object]) -> Callable[[], float]:
    """Wrap `run` so that each call returns the CPU seconds of the calling thread (notebook 04).

    With one intra-op thread a CPU training step runs entirely on the calling thread, so this
    is its wall time on a quiet machine, minus the time slices a busy machine gives other
    processes. `interleaved_samples` takes the returned float as the sample. For CPU work
    only: GPU kernels are not counted. Where the thread clock is coarser than a microsecond
    (on Windows), wall time is returned instead.
    """
    fine = time.get_clock_info("thread_time").resolution <= 1e-6
    clock = time.thread_time if fine else time.perf_counter

    def timed() -> Seconds:
        start = clock()
        run()
        return Seconds(clock() - start)

    return timed


GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory, so that buffers reused every step do not page-fault
    anew. Process-wide: only the CLI's and the bench's own processes do it (README)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = libc.mallopt(GLIBC_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest allowed
    trim_ok = libc.mallopt(GLIBC_M_TRIM_THRESHOLD, 2**30)
    return bool(mmap_ok and trim_ok)
