"""torch.compile instruments: compile counts, guard-failure reasons, compile-aware timing.

Dynamo logs to stderr; everything here captures those lines and returns them sanitized (no
file paths, line numbers or addresses), so a notebook shows counts and stable text only.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from autograd_cost.core import check_positive_int, synchronize
from autograd_cost.timing import Timing, interleaved_samples, summarize_times

_PATH_AND_LINE = re.compile(r"\(?[^\s'\"()]*[/\\][^\s'\"()]*?\.py\b(?::\d+)?\)?")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+")
_LIMIT_HIT = "recompile limit exceeded"


def _sanitize_log(text: str) -> str:
    """Drop file paths, line numbers and addresses from a Dynamo message."""
    text = _PATH_AND_LINE.sub("(FILE)", text)
    return _ADDRESS.sub("0xADDRESS", text).rstrip()


@dataclass
class CompileLog:
    """What Dynamo compiled inside `count_compiles` (notebook 09).

    frames: graphs compiled, first compiles and recompiles alike (Dynamo's frames "ok"
    counter). recompiles: compiles of a function that already had a compiled version whose
    guard failed. limit_hits: compiles refused because the recompile limit was reached (that
    function then runs eagerly for inputs no cached graph accepts). reasons: the failed guard
    of each recompile; warnings: Dynamo's log lines (WARNING or above); both sanitized.
    """

    frames: int = 0
    recompiles: int = 0
    limit_hits: int = 0
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _metrics() -> list[object]:
    return list(torch._dynamo.utils.get_compilation_metrics())


class _Capture(logging.Filter):
    """A handler filter that records each torch log record once and drops it."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level and not any(r is record for r in self.records):
            self.records.append(record)
        return False


def _torch_loggers() -> list[logging.Logger]:
    names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch."))]
    return [logging.getLogger(n) for n in names]


@contextmanager
def _captured_torch_logs(level: int = logging.WARNING) -> Iterator[list[logging.LogRecord]]:
    """Keep torch's log lines off stderr and collect those at `level` or above.

    Every handler on a torch logger gets a filter that records and drops; a catch-all handler
    on the "torch" logger stands in for Python's last-resort stderr handler. Restored on exit.
    """
    capture = _Capture(level)
    catch_all = logging.NullHandler()
    top = logging.getLogger("torch")
    top.addHandler(catch_all)
    handlers = {h for lg in _torch_loggers() for h in lg.handlers}
    for handler in handlers:
        handler.addFilter(capture)
    try:
        yield capture.records
    finally:
        for handler in handlers:
            handler.removeFilter(capture)
        top.removeHandler(catch_all)


@contextmanager
def count_compiles(recompile_limit: int | None = None) -> Iterator[CompileLog]:
    """Count Dynamo compiles, recompiles and recompile-limit hits in a block (notebook 09).

    Reads Dynamo's counters and compilation metrics as differences from entry, so earlier
    compiles and `torch._dynamo.reset()` do not leak in. `recompile_limit` sets
    `torch._dynamo.config.recompile_limit` (8 by default in torch 2.13) for the block and
    restores it on exit, also on error. The log is filled in on exit.
    """
    if recompile_limit is not None:
        check_positive_int("recompile_limit", recompile_limit)
    config = torch._dynamo.config
    old_limit = config.recompile_limit
    counters = torch._dynamo.utils.counters
    frames_before = counters["frames"]["ok"]
    metrics_before = _metrics()  # kept alive: identities stay unique
    seen = {id(m) for m in metrics_before}
    log = CompileLog()
    try:
        if recompile_limit is not None:
            config.recompile_limit = recompile_limit
        with _captured_torch_logs() as records:
            yield log
    finally:
        config.recompile_limit = old_limit
        frames_now = counters["frames"]["ok"]
        log.frames = frames_now - frames_before if frames_now >= frames_before else frames_now
        for metric in _metrics():
            if id(metric) in seen:
                continue
            failure = str(getattr(metric, "fail_reason", None) or "")
            reason = getattr(metric, "recompile_reason", None)
            if _LIMIT_HIT in failure:
                log.limit_hits += 1
            elif reason and not failure:
                log.recompiles += 1
                log.reasons.append(_sanitize_log(reason))
        log.warnings = [_sanitize_log(r.getMessage()) for r in records]


class CountingBackend:
    """A torch.compile backend counting its compiles and its graphs' calls (notebook 09).

    Wraps a named backend (default "aot_eager"); `calls` counts the
    forward calls that ran compiled code, so steps that fell back to eager do not count.
    """

    def __init__(self, backend: str = "aot_eager") -> None:
        self.backend = torch._dynamo.lookup_backend(backend)
        self.compiles = 0
        self.calls = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        self.compiles += 1
        compiled = self.backend(gm, example_inputs)

        def run(*args: object) -> object:
            self.calls += 1
            return compiled(*args)

        return run


@dataclass(frozen=True)
class PartitionedGraphs:
    """AOTAutograd's forward and backward graphs after the min-cut partition (notebook 09).

    saved: (name, shape, dtype) of each tensor the forward hands to the backward, in the
    backward graph's input order; ops: aten ops of each graph, counted by name.
    """

    saved: list[tuple[str, tuple[int, ...], str]]
    forward_ops: dict[str, int]
    backward_ops: dict[str, int]


def _op_counts(gm: torch.fx.GraphModule) -> dict[str, int]:
    counts = Counter(str(n.target).removeprefix("aten.").removesuffix(".default")
                     for n in gm.graph.nodes if n.op == "call_function")
    return dict(sorted(counts.items()))


def partition_recorder() -> tuple[Callable, list[PartitionedGraphs]]:
    """A backend like "aot_eager_decomp_partition" that records each partition (notebook 09).

    Inductor's decompositions and min-cut partitioner, no code generation: returns the
    backend and a list that gets one `PartitionedGraphs` per compiled graph once its
    backward has been compiled (at the first backward call).
    """
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[PartitionedGraphs] = []
    forwards: list[dict[str, int]] = []

    def forward_compiler(gm: torch.fx.GraphModule, _inputs: list) -> Callable:
        forwards.append(_op_counts(gm))
        return make_boxed_func(gm.forward)

    def backward_compiler(gm: torch.fx.GraphModule, _inputs: list) -> Callable:
        saved = []
        for node in gm.graph.nodes:
            if node.op == "placeholder" and not node.name.startswith("tangents"):
                value = node.meta.get("val")
                if isinstance(value, torch.Tensor):
                    saved.append((node.name, tuple(int(s) for s in value.shape),
                                  str(value.dtype).removeprefix("torch.")))
        graphs.append(PartitionedGraphs(saved, forwards[-1] if forwards else {},
                                        _op_counts(gm)))
        return make_boxed_func(gm.forward)

    def decompositions() -> object:
        from torch._inductor.compile_fx import select_decomp_table
        return select_decomp_table()

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler,
                           decompositions=decompositions,
                           partition_fn=min_cut_rematerialization_partition)
    return backend, graphs


@dataclass(frozen=True)
class CompiledTiming:
    """A compiled step's steady time and its one-off compile time, apart (notebook 09).

    first_call_seconds: the first call (compiles); step: steady calls after warm-up, from the
    round-robin timer; compile_seconds = first call - median step (at least 0); frames:
    graphs compiled during the timed rounds (0 means compile time stayed out of `step`).
    """

    first_call_seconds: float
    compile_seconds: float
    step: Timing
    frames_while_timing: int

    def amortized_seconds(self, steps: int) -> float:
        """Seconds per step when the compile time is spread over `steps` steps."""
        check_positive_int("steps", steps)
        return self.step.median + self.compile_seconds / steps


def compiled_step_timings(runs: Mapping[str, Callable[[], object]],
                          device: torch.device | str = "cpu",
                          **options: float) -> dict[str, CompiledTiming]:
    """Time each step's first call (compile) alone, then all steps round-robin (notebook 09).

    `options` go to `timing.interleaved_samples` (min_repeats, max_seconds, ...). A run that
    is not compiled gets compile_seconds near 0. Dynamo logs are captured, never printed.
    """
    if not runs:
        raise ValueError("runs must name at least one step")
    first: dict[str, float] = {}
    with _captured_torch_logs():
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            first[name] = time.perf_counter() - start
        with count_compiles() as log:
            samples = interleaved_samples(runs, device, **options)
    result = {}
    for name, seconds in first.items():
        step = summarize_times(samples[name])
        result[name] = CompiledTiming(seconds, max(seconds - step.median, 0.0), step, log.frames)
    return result

