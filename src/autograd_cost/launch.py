"""DDP over loopback: launch a gloo process group, count what DDP all-reduces (notebook 06).

Workers are top-level functions of importable modules, because the `spawn` start method
imports them by name. `launch` starts them on the CPU with the gloo backend over 127.0.0.1
only, captures everything they print, and always joins or terminates them. Inside a worker,
`counting_allreduce_hook` does DDP's default all-reduce and records every bucket it sends.
"""

# No `from __future__ import annotations` here: DDP checks the hook's annotations at runtime.

import datetime
import os
import pickle
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from autograd_cost.core import check_number, check_positive_int
from autograd_cost.timing import Seconds

LOOPBACK_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class RankResult:
    """What one worker process returned, and everything it printed (notebook 06)."""

    rank: int
    value: Any
    output: str


@dataclass(frozen=True)
class ProcessGroupFacts:
    """What a worker really runs on: backend, MASTER_ADDR, world size and threads."""

    backend: str
    master_addr: str | None
    world_size: int
    threads: int


class WorkerFailed(RuntimeError):
    """A worker process raised, crashed or returned nothing."""


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_ADDRESS, 0))
        return probe.getsockname()[1]


def loopback_interface() -> str:
    """Name of the loopback network interface: 'lo' on Linux, 'lo0' on macOS."""
    names = [name for _, name in socket.if_nameindex()]
    for candidate in ("lo", "lo0"):
        if candidate in names:
            return candidate
    raise RuntimeError(f"no loopback interface among {names}; gloo needs one for this course")


def _check_launch_args(worker: Callable[..., Any], world_size: int, timeout: float) -> None:
    if not callable(worker):
        raise TypeError(f"worker must be a function, got {type(worker).__name__}")
    module = getattr(worker, "__module__", None)
    if module in (None, "__main__") or "<locals>" in getattr(worker, "__qualname__", "<locals>"):
        raise ValueError(
            "worker must be a top-level function in an importable module (e.g. "
            "autograd_cost.chapters.ddp), not one defined in a notebook or inside a function: "
            "spawned processes import it by name"
        )
    check_positive_int("world_size", world_size)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def _set_worker_environment(rank: int, world_size: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR=LOOPBACK_ADDRESS,
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        GLOO_SOCKET_IFNAME=loopback_interface(),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)


def _redirect_output(path: str) -> None:
    """Send this process's fd 1 and 2 (C++ warnings included) to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)


def _worker_entry(
    worker: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    folder: str,
    group_timeout: float,
    kwargs: dict[str, Any],
) -> None:
    """Run `worker(rank, world_size, **kwargs)` in a gloo group; pickle the outcome to a file."""
    _redirect_output(os.path.join(folder, f"rank{rank}.log"))
    outcome: dict[str, Any] = {"value": None, "error": None}
    try:
        _set_worker_environment(rank, world_size, port)
        dist.init_process_group(
            "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=group_timeout),
        )
        try:
            outcome["value"] = worker(rank, world_size, **kwargs)
        finally:
            dist.destroy_process_group()
    except BaseException:  # reported to the parent as data
        outcome["error"] = traceback.format_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.path.join(folder, f"rank{rank}.tmp"), "wb") as file:
        pickle.dump(outcome, file)
    os.replace(os.path.join(folder, f"rank{rank}.tmp"), os.path.join(folder, f"rank{rank}.pkl"))


def process_group_facts() -> ProcessGroupFacts:
    """What this worker runs on: backend, MASTER_ADDR, world size, threads (notebook 06)."""
    if not dist.is_initialized():
        raise RuntimeError("no process group: call this inside a worker started by launch()")
    return ProcessGroupFacts(
        backend=dist.get_backend(),
        master_addr=os.environ.get("MASTER_ADDR"),
        world_size=dist.get_world_size(),
        threads=torch.get_num_threads(),
    )


def _stop(processes: list[Any], grace: float = 3.0) -> None:
    """Terminate, then kill, every process still alive, and reap them all."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _read_results(folder: str, world_size: int) -> list[RankResult]:
    results, failures = [], []
    for rank in range(world_size):
        log_path = os.path.join(folder, f"rank{rank}.log")
        output = Path(log_path).read_text() if os.path.exists(log_path) else ""
        result_path = os.path.join(folder, f"rank{rank}.pkl")
        if not os.path.exists(result_path):
            failures.append(f"rank {rank} exited without a result; its output:\n{output}")
            continue
        with open(result_path, "rb") as file:
            outcome = pickle.load(file)
        if outcome["error"]:
            failures.append(f"rank {rank} raised:\n{outcome['error']}")
        results.append(RankResult(rank, outcome["value"], output))
    if failures:
        raise WorkerFailed("\n".join(failures))
    return results


def launch(
    worker: Callable[..., Any],
    world_size: int = 2,
    timeout: float = 60.0,
    group_timeout: float = 20.0,
    **kwargs: Any,
) -> list[RankResult]:
    """Run `worker(rank, world_size, **kwargs)` in `world_size` gloo processes (notebook 06).

    Loopback only (127.0.0.1, a free port), one thread per process, output captured per rank.
    Processes are joined, or terminated after `timeout` seconds, also on error.
    """
    _check_launch_args(worker, world_size, timeout)
    check_number("group_timeout", group_timeout, low=1e-3)
    context = mp.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="autograd_cost_ddp_")
    port = free_loopback_port()
    processes = [
        context.Process(
            target=_worker_entry,
            args=(worker, rank, world_size, port, folder, group_timeout, kwargs),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    started: list[Any] = []  # only started processes can be joined
    try:
        for process in processes:
            process.start()
            started.append(process)
        deadline = time.monotonic() + timeout
        for process in started:
            process.join(max(0.0, deadline - time.monotonic()))
        if any(process.is_alive() for process in started):
            raise TimeoutError(
                f"{world_size} workers did not finish within {timeout} s; they were terminated"
            )
        return _read_results(folder, world_size)
    finally:
        _stop(started)
        shutil.rmtree(folder, ignore_errors=True)


def first_line(error: BaseException) -> str:
    """An exception as 'Type: first sentence of its first line'."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    sentence = line.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {sentence}"


# ---------------------------------------------------------------- counting what DDP sends


@dataclass(frozen=True)
class BucketRecord:
    """One all-reduced gradient bucket: index, bytes, dtype, parameter names (notebook 06)."""

    index: int
    nbytes: int
    dtype: str
    names: tuple[str, ...]
    ready_seconds: float = field(repr=False)  # since the step's clock started


@dataclass
class ByteCounter:
    """State of `counting_allreduce_hook`: every bucket DDP all-reduces (notebook 06)."""

    names: dict[int, str]  # id(parameter) -> its name
    world_size: int
    buckets: list[BucketRecord] = field(default_factory=list)
    done_seconds: dict[int, float] = field(default_factory=dict)
    clock_start: float = field(default_factory=time.perf_counter)

    @classmethod
    def for_model(cls, model: nn.Module) -> "ByteCounter":
        """A counter that names the buckets' parameters of `model` (the module DDP wraps)."""
        names = {id(p): name for name, p in model.named_parameters()}
        return cls(names, dist.get_world_size())

    def start_step(self) -> None:
        """Forget earlier buckets and restart the step clock."""
        self.buckets.clear()
        self.done_seconds.clear()
        self.clock_start = time.perf_counter()

    @property
    def nbytes(self) -> int:
        """Bytes all-reduced since the step started."""
        return sum(b.nbytes for b in self.buckets)


def counting_allreduce_hook(
    state: ByteCounter, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce (sum, divide by world size), recording each bucket (notebook 06)."""
    buffer = bucket.buffer()
    names = tuple(state.names.get(id(p), "?") for p in bucket.parameters())
    state.buckets.append(BucketRecord(bucket.index(), buffer.numel() * buffer.element_size(),
                                      str(buffer.dtype).removeprefix("torch."), names,
                                      time.perf_counter() - state.clock_start))
    world_size, index = state.world_size, bucket.index()

    def finish(done: torch.futures.Future) -> torch.Tensor:
        state.done_seconds[index] = time.perf_counter() - state.clock_start
        return done.value()[0].div_(world_size)

    return dist.all_reduce(buffer, async_op=True).get_future().then(finish)


def attach_byte_counter(ddp: DDP) -> ByteCounter:
    """Register a counting all-reduce hook on a DDP model; return its counter."""
    if not isinstance(ddp, DDP):
        raise TypeError(f"expected a DistributedDataParallel model, got {type(ddp).__name__}")
    counter = ByteCounter.for_model(ddp.module)
    ddp.register_comm_hook(counter, counting_allreduce_hook)
    return counter


def expected_allreduce_bytes(model: nn.Module) -> int:
    """The oracle: bytes of the gradients of the parameters that require grad (notebook 06)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- timing across ranks


def after_barrier(run: Callable[[], object]) -> Callable[[], Seconds]:
    """`run` timed from a barrier, so that every rank starts the sample together."""

    def timed() -> Seconds:
        dist.barrier()
        start = time.perf_counter()
        run()
        return Seconds(time.perf_counter() - start)

    return timed


def allreduce_alone(sizes: Sequence[int]) -> Callable[[], Seconds]:
    """All-reduce float32 buffers of these sizes on their own, timed from a barrier."""
    buffers = [torch.ones(n) for n in sizes]

    def run() -> None:
        for work in [dist.all_reduce(b, async_op=True) for b in buffers]:
            work.wait()

    return after_barrier(run)


class BarrierClock:
    """A `training_step` phase marker: the backward alone, timed from a barrier."""

    def __init__(self, counter: ByteCounter | None = None) -> None:
        self.counter, self.seconds = counter, 0.0

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if name != "backward":
            yield
            return
        dist.barrier()
        if self.counter is not None:
            self.counter.start_step()
        start = time.perf_counter()
        yield
        self.seconds = time.perf_counter() - start
