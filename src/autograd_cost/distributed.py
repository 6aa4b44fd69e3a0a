"""Freezing under DistributedDataParallel: a loopback gloo launcher, byte counting, pitfalls.

Taught in notebook 06. Workers are plain functions in this module so that the `spawn` start
method can import them; `launch` starts them on the CPU with the gloo backend over loopback
only, captures everything they print, and always joins or terminates them.
"""

import datetime
import gc
import os
import pickle
import shutil
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from autograd_cost.freezing import execution_order, freeze_units, prefix_units
from autograd_cost.models import example_input, mlp
from autograd_cost.timing import Timing, summarize_times

LOOPBACK_ADDRESS = "127.0.0.1"
DDP_FIXES = ("rewrap", "find_unused_parameters", "static_graph")

# ---------------------------------------------------------------- launcher


@dataclass(frozen=True)
class RankResult:
    """What one worker process returned, and everything it printed (notebook 06)."""

    rank: int
    value: Any
    output: str


class WorkerFailed(RuntimeError):
    """A worker process raised, crashed or returned nothing (notebook 06)."""


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (notebook 06)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_ADDRESS, 0))
        return probe.getsockname()[1]


def loopback_interface() -> str:
    """Name of the loopback network interface ('lo' on Linux, 'lo0' on macOS) (notebook 06)."""
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
            "autograd_cost.distributed), not one defined in a notebook or inside a function: "
            "spawned processes import it by name"
        )
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
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
    log_path = os.path.join(folder, f"rank{rank}.log")
    _redirect_output(log_path)
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


def process_group_facts() -> dict[str, Any]:
    """What this worker really runs on: backend, MASTER_ADDR, world size, threads (notebook 06)."""
    if not dist.is_initialized():
        raise RuntimeError("no process group: call this inside a worker started by launch()")
    return {
        "backend": dist.get_backend(),
        "master_addr": os.environ.get("MASTER_ADDR"),
        "world_size": dist.get_world_size(),
        "threads": torch.get_num_threads(),
    }


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


# ---------------------------------------------------------------- counting what DDP sends


@dataclass(frozen=True)
class BucketRecord:
    """One all-reduced gradient bucket: index, bytes, dtype, parameter names (notebook 06)."""

    index: int
    nbytes: int
    dtype: str
    names: tuple[str, ...]
    ready_seconds: float  # since the step's clock started, when DDP handed the bucket over


@dataclass
class ByteCounter:
    """State for `counting_allreduce_hook`: every bucket DDP all-reduces (notebook 06)."""

    names: dict[int, str]
    world_size: int
    buckets: list[BucketRecord] = field(default_factory=list)
    done_seconds: dict[int, float] = field(default_factory=dict)
    clock_start: float = field(default_factory=time.perf_counter)

    def start_step(self) -> None:
        """Forget earlier buckets and restart the step clock."""
        self.buckets.clear()
        self.done_seconds.clear()
        self.clock_start = time.perf_counter()

    @property
    def nbytes(self) -> int:
        """Bytes all-reduced since the step started."""
        return sum(b.nbytes for b in self.buckets)


# No `from __future__ import annotations` here: DDP checks this hook's annotations at runtime.
def counting_allreduce_hook(
    state: ByteCounter, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce (sum, divide by world size), recording each bucket (nb 06)."""
    buffer = bucket.buffer()
    names = tuple(state.names.get(id(p), "?") for p in bucket.parameters())
    state.buckets.append(
        BucketRecord(
            bucket.index(),
            buffer.numel() * buffer.element_size(),
            str(buffer.dtype).removeprefix("torch."),
            names,
            time.perf_counter() - state.clock_start,
        )
    )
    world_size, index = state.world_size, bucket.index()

    def finish(done: torch.futures.Future) -> torch.Tensor:
        state.done_seconds[index] = time.perf_counter() - state.clock_start
        return done.value()[0].div_(world_size)

    return dist.all_reduce(buffer, async_op=True).get_future().then(finish)


def attach_byte_counter(ddp: DDP) -> ByteCounter:
    """Register a counting all-reduce hook on a DDP model and return its counter (notebook 06)."""
    if not isinstance(ddp, DDP):
        raise TypeError(f"expected a DistributedDataParallel model, got {type(ddp).__name__}")
    names = {id(p): name for name, p in ddp.module.named_parameters()}
    counter = ByteCounter(names, dist.get_world_size())
    ddp.register_comm_hook(counter, counting_allreduce_hook)
    return counter


def expected_allreduce_bytes(model: nn.Module) -> int:
    """Oracle: bytes of the gradients of the parameters that require grad (notebook 06)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def bucketed_names(counter: ByteCounter) -> list[str]:
    """Parameter names in the last step's buckets, in all-reduce order (notebook 06)."""
    return [name for bucket in counter.buckets for name in bucket.names]


# ---------------------------------------------------------------- training steps


@dataclass(frozen=True)
class Setup:
    """The model, batch and bucket size every rank uses (notebook 06)."""

    width: int = 256
    depth: int = 4
    batch: int = 64
    bucket_cap_mb: float = 0.25

    def model(self) -> nn.Sequential:
        """The same seeded MLP on every rank."""
        return mlp(width=self.width, depth=self.depth)

    def data(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's shard: its own seeded inputs and labels."""
        model = self.model()
        inputs = example_input(model, batch=self.batch, seed=100 + rank)
        generator = torch.Generator().manual_seed(200 + rank)
        labels = torch.randint(model.head.out_features, (self.batch,), generator=generator)
        return inputs, labels


def unit_order(setup: Setup) -> list[str]:
    """The MLP's units in forward-execution order (notebook 06)."""
    model = setup.model()
    return execution_order(model, example_input(model, batch=2))


def frozen_prefix_model(setup: Setup, freeze_depth: int) -> nn.Sequential:
    """A fresh MLP with the first `freeze_depth` units frozen (notebook 06)."""
    model = setup.model()
    freeze_units(model, prefix_units(unit_order(setup), freeze_depth))
    return model


def wrap(model: nn.Module, setup: Setup, **options: Any) -> DDP:
    """DDP on the CPU with the setup's bucket size (notebook 06)."""
    return DDP(model, bucket_cap_mb=setup.bucket_cap_mb, **options)


def rewrap(ddp: DDP | None, model: nn.Module, setup: Setup) -> DDP:
    """Drop the old wrapper (its reducer's hooks go with it), then wrap again (notebook 06)."""
    del ddp
    gc.collect()
    return wrap(model, setup)


def train_step(ddp: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """One forward and backward with cross-entropy; returns the loss (notebook 06)."""
    inputs, labels = batch
    for param in ddp.parameters():
        param.grad = None
    loss = F.cross_entropy(ddp(inputs), labels)
    loss.backward()
    return loss.item()


def first_line(error: BaseException) -> str:
    """An exception as 'Type: first sentence of its first line' (notebook 06)."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    sentence = line.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {sentence}"


# ---------------------------------------------------------------- experiments (run on every rank)


def measure_bytes(setup: Setup, freeze_depths: Sequence[int], rank: int) -> list[dict[str, Any]]:
    """Bytes DDP all-reduces per step at each prefix freeze depth, with the oracle (nb 06).

    Also the number of buckets in each of the two steps: DDP (without find_unused_parameters)
    puts every parameter in one bucket for the first step, then rebuilds its buckets.
    """
    batch = setup.data(rank)
    rows = []
    for freeze_depth in freeze_depths:
        model = frozen_prefix_model(setup, freeze_depth)
        ddp = wrap(model, setup)
        counter = attach_byte_counter(ddp)
        per_step, buckets_per_step = [], []
        for _ in range(2):  # DDP rebuilds its buckets after the first step
            counter.start_step()
            train_step(ddp, batch)
            per_step.append(counter.nbytes)
            buckets_per_step.append(len(counter.buckets))
        rows.append(
            {
                "freeze_depth": freeze_depth,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "expected_bytes": expected_allreduce_bytes(model),
                "bytes_per_step": per_step,
                "buckets_per_step": buckets_per_step,
                "buckets": list(counter.buckets),
            }
        )
    return rows


def _timed(run: Callable[[], None]) -> float:
    dist.barrier()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _comm_only(sizes: Sequence[int], dtype: torch.dtype) -> Callable[[], None]:
    buffers = [torch.ones(n, dtype=dtype) for n in sizes]

    def run() -> None:
        works = [dist.all_reduce(b, async_op=True) for b in buffers]
        for work in works:
            work.wait()

    return run


def _backward_runner(
    ddp: DDP, batch: tuple[torch.Tensor, torch.Tensor], sync: bool, counter: ByteCounter
) -> Callable[[], None]:
    """A step whose backward alone is timed (forward untimed), with or without all-reduce."""
    inputs, labels = batch
    elapsed: list[float] = []

    def run() -> None:
        for param in ddp.parameters():
            param.grad = None
        if sync:
            loss = F.cross_entropy(ddp(inputs), labels)
            dist.barrier()
            counter.start_step()
            start = time.perf_counter()
            loss.backward()
        else:
            with ddp.no_sync():
                loss = F.cross_entropy(ddp(inputs), labels)
                dist.barrier()
                start = time.perf_counter()
                loss.backward()
        elapsed.append(time.perf_counter() - start)

    run.elapsed = elapsed  # type: ignore[attr-defined]
    return run


def _column_medians(rows: list[list[float]]) -> list[float]:
    return [statistics.median(column) for column in zip(*rows, strict=True)]


def measure_step_times(
    setup: Setup, freeze_depths: Sequence[int], rank: int, repeats: int = 9
) -> list[dict[str, Any]]:
    """Backward time with and without all-reduce, and all-reduce alone, per depth (nb 06).

    Rounds are interleaved over depths and every rank runs the same fixed number of them.
    hidden = compute + all-reduce alone - synchronized backward: positive when they overlap.
    tail = when the last bucket's all-reduce finished - when DDP handed it over (per round).
    """
    batch = setup.data(rank)
    plans = []
    for freeze_depth in freeze_depths:
        ddp = wrap(frozen_prefix_model(setup, freeze_depth), setup)
        counter = attach_byte_counter(ddp)
        train_step(ddp, batch)  # builds the final buckets
        counter.start_step()
        train_step(ddp, batch)
        sizes = [b.nbytes // 4 for b in counter.buckets]
        plans.append(
            {
                "ddp": ddp,
                "counter": counter,
                "synced": _backward_runner(ddp, batch, True, counter),
                "local": _backward_runner(ddp, batch, False, counter),
                "comm": _comm_only(sizes, torch.float32),
                "comm_samples": [],
                "ready": [],
                "done": [],
                "tail": [],
            }
        )
    for round_ in range(repeats + 1):  # round 0 warms up
        for plan in plans:
            plan["synced"]()
            counter = plan["counter"]
            plan["ready"].append([b.ready_seconds for b in counter.buckets])
            plan["done"].append([counter.done_seconds[b.index] for b in counter.buckets])
            plan["tail"].append(plan["done"][-1][-1] - plan["ready"][-1][-1])
            plan["local"]()
            plan["comm_samples"].append(_timed(plan["comm"]))
            if round_ == 0:
                for key in ("synced", "local"):
                    plan[key].elapsed.clear()
                plan["comm_samples"].clear()
                for key in ("ready", "done", "tail"):
                    plan[key].clear()
    rows = []
    for freeze_depth, plan in zip(freeze_depths, plans, strict=True):
        synced = summarize_times(plan["synced"].elapsed)
        local = summarize_times(plan["local"].elapsed)
        comm = summarize_times(plan["comm_samples"])
        rows.append(
            {
                "freeze_depth": freeze_depth,
                "backward_ddp": synced,
                "backward_compute": local,
                "allreduce_alone": comm,
                "hidden_seconds": local.median + comm.median - synced.median,
                "bucket_ready": _column_medians(plan["ready"]),
                "bucket_done": _column_medians(plan["done"]),
                "tail": summarize_times(plan["tail"]),
            }
        )
    return rows


def freeze_after_wrapping(setup: Setup, rank: int, fix: str | None, steps: int = 3) -> dict:
    """Wrap, then freeze the first unit: no fix fails; each fix in DDP_FIXES runs (nb 06).

    'rewrap' wraps again after freezing; 'find_unused_parameters' and 'static_graph' pass
    that option to the first wrap. Returns the error (if any), bytes and the step it stopped.
    """
    if fix is not None and fix not in DDP_FIXES:
        raise ValueError(f"unknown fix {fix!r}; valid fixes are None or {list(DDP_FIXES)}")
    batch = setup.data(rank)
    model = setup.model()
    options = {fix: True} if fix in ("find_unused_parameters", "static_graph") else {}
    ddp = wrap(model, setup, **options)
    freeze_units(model, unit_order(setup)[:1])
    if fix == "rewrap":
        ddp = rewrap(ddp, model, setup)
    counter = attach_byte_counter(ddp)
    outcome: dict[str, Any] = {"fix": fix, "error": None, "failed_at_step": None, "bytes": []}
    for step in range(1, steps + 1):
        counter.start_step()
        try:
            train_step(ddp, batch)
        except RuntimeError as error:
            outcome.update(error=first_line(error), failed_at_step=step)
            break
        outcome["bytes"].append(counter.nbytes)
    outcome["frozen_grad_is_none"] = all(p.grad is None for p in model.fc1.parameters())
    return outcome


def freeze_after_steps_static_graph(setup: Setup, rank: int) -> dict[str, Any]:
    """static_graph=True, two steps, then freeze the first unit: the graph changed (nb 06)."""
    batch = setup.data(rank)
    model = setup.model()
    ddp = wrap(model, setup, static_graph=True)
    train_step(ddp, batch)
    train_step(ddp, batch)
    freeze_units(model, unit_order(setup)[:1])
    try:
        train_step(ddp, batch)
        train_step(ddp, batch)
    except RuntimeError as error:
        return {"error": first_line(error)}
    return {"error": None}


def time_fixes(setup: Setup, rank: int, repeats: int = 9) -> dict[str, Timing | int]:
    """Step time and bytes of each working fix for one frozen unit, interleaved (nb 06)."""
    batch = setup.data(rank)
    wrapped = {}
    for fix in DDP_FIXES:
        model = setup.model()
        options = {fix: True} if fix != "rewrap" else {}
        ddp = wrap(model, setup, **options)
        freeze_units(model, unit_order(setup)[:1])
        wrapped[fix] = rewrap(ddp, model, setup) if fix == "rewrap" else ddp
        del ddp
        train_step(wrapped[fix], batch)
        train_step(wrapped[fix], batch)
    samples: dict[str, list[float]] = {fix: [] for fix in DDP_FIXES}
    for _ in range(repeats):
        for fix, ddp in wrapped.items():
            samples[fix].append(_timed(lambda ddp=ddp: train_step(ddp, batch)))
    return {fix: summarize_times(s) for fix, s in samples.items()}


def _replicas_agree(model: nn.Module) -> float:
    """Largest parameter difference between this rank and rank 0 (same on every rank)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    gap = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return gap.item()


def _local_gradient(model: nn.Module, name: str, batch: tuple[torch.Tensor, torch.Tensor]):
    """This rank's own gradient of parameter `name` (no DDP, the unit made trainable)."""
    parameter = dict(model.named_parameters())[name]
    flag = parameter.requires_grad
    parameter.requires_grad_(True)
    inputs, labels = batch
    gradient = torch.autograd.grad(F.cross_entropy(model(inputs), labels), parameter)[0]
    parameter.requires_grad_(flag)
    return gradient


def rank_divergent_freeze(setup: Setup, rank: int, after_wrap: bool) -> dict[str, Any]:
    """Only rank 0 freezes the first unit: DDP refuses, or silently trains it anyway (nb 06).

    Before wrapping, DDP's constructor compares the ranks' trainable parameters. After
    wrapping (with find_unused_parameters=True so the step runs), one step shows what each
    rank's copy of the weight receives, compared with its own gradient, rank 1's gradient
    and the true average, and whether the SGD step moved it.
    """
    batch = setup.data(rank)
    model = setup.model()
    first = unit_order(setup)[:1]
    if not after_wrap:
        if rank == 0:
            freeze_units(model, first)
        try:
            wrap(model, setup)
        except RuntimeError as error:
            return {"error": first_line(error)}
        return {"error": None}
    ddp = wrap(model, setup, find_unused_parameters=True)
    if rank == 0:
        freeze_units(model, first)
    name = f"{first[0]}.weight"
    local = _local_gradient(model, name, batch)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    before = dict(model.named_parameters())[name].detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(ddp, batch)
    received = dict(model.named_parameters())[name].grad
    optimizer.step()
    after = dict(model.named_parameters())[name].detach()
    result = {"error": None, "requires_grad": dict(model.named_parameters())[name].requires_grad,
              "got_gradient": received is not None, "moved": not torch.equal(before, after),
              "max_replica_gap": _replicas_agree(model)}
    if received is not None:
        true_average = torch.stack(gathered).mean(0)
        result["received_vs_rank1_half"] = (received - gathered[1] / 2).abs().max().item()
        result["received_vs_own_half"] = (received - local / 2).abs().max().item()
        result["received_vs_true_average"] = (
            (received - true_average).norm() / true_average.norm()
        ).item()
    return result


def progressive_freezing(
    setup: Setup, rank: int, strategy: str, schedule: Sequence[int]
) -> dict[str, Any]:
    """Freeze more units as steps go: re-wrap at each change, or find_unused once (nb 06).

    Returns bytes per step, the losses, the largest gap between replicas and the final
    state_dict (cloned), so that the two strategies' models can be compared.
    """
    if strategy not in ("rewrap", "find_unused_parameters"):
        raise ValueError(
            f"unknown strategy {strategy!r}; valid are 'rewrap', 'find_unused_parameters'"
        )
    batch = setup.data(rank)
    model = setup.model()
    order = unit_order(setup)
    once = strategy == "find_unused_parameters"
    ddp = wrap(model, setup, find_unused_parameters=True) if once else None
    counter = attach_byte_counter(ddp) if once else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    current, per_step, losses = -1, [], []
    for freeze_depth in schedule:
        if freeze_depth != current:
            freeze_units(model, prefix_units(order, freeze_depth))
            if not once:
                counter = None
                ddp = rewrap(ddp, model, setup)
                counter = attach_byte_counter(ddp)
            current = freeze_depth
        counter.start_step()
        losses.append(train_step(ddp, batch))
        optimizer.step()
        per_step.append(counter.nbytes)
    return {
        "bytes": per_step,
        "losses": losses,
        "max_replica_gap": _replicas_agree(model),
        "state": {name: value.detach().clone() for name, value in model.state_dict().items()},
    }


def progressive_cost(setup: Setup, rank: int, schedule: Sequence[int]) -> dict[str, Any]:
    """Both progressive strategies, plus the time one re-wrap costs (notebook 06)."""
    results = {
        strategy: progressive_freezing(setup, rank, strategy, schedule)
        for strategy in ("rewrap", "find_unused_parameters")
    }
    model = setup.model()
    samples = [_timed(lambda: wrap(model, setup)) for _ in range(5)]
    results["wrap_seconds"] = summarize_times(samples)
    return results


def course_experiments(
    rank: int,
    world_size: int,
    setup: Setup,
    freeze_depths: Sequence[int],
    schedule: Sequence[int],
    repeats: int = 9,
) -> dict[str, Any]:
    """Every measurement of notebook 06, in one process group so it starts only once."""
    return {
        "group": process_group_facts(),
        "bytes": measure_bytes(setup, freeze_depths, rank),
        "times": measure_step_times(setup, freeze_depths, rank, repeats),
        "fix_times": time_fixes(setup, rank, repeats),
        "after_wrap": {
            str(fix): freeze_after_wrapping(setup, rank, fix) for fix in (None, *DDP_FIXES)
        },
        "static_graph_late": freeze_after_steps_static_graph(setup, rank),
        "divergent_before_wrap": rank_divergent_freeze(setup, rank, after_wrap=False),
        "divergent_after_wrap": rank_divergent_freeze(setup, rank, after_wrap=True),
        "progressive": progressive_cost(setup, rank, schedule),
    }


# ---------------------------------------------------------------- scale on paper


def _check_positive_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def ring_allreduce_seconds(nbytes: float, world_size: int, bytes_per_second: float) -> float:
    """Bandwidth-only ring all-reduce time: 2(n-1)/n x bytes / bandwidth per direction (nb 06)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, float)) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative number, got {nbytes!r}")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    _check_positive_number("bytes_per_second", bytes_per_second)
    return 2 * (world_size - 1) / world_size * nbytes / bytes_per_second


def project_allreduce(
    total_params: float,
    frozen_fractions: Sequence[float],
    bytes_per_param: float,
    world_size: int,
    links: dict[str, float],
) -> list[dict[str, Any]]:
    """All-reduce time per step for each frozen share of a model, on each link (notebook 06).

    `links` maps a link name to its bandwidth in bytes per second per direction (a ring
    sends and receives at once), e.g. 450e9 for H100 NVLink 4, whose 900 GB/s is both ways.
    """
    _check_positive_number("total_params", total_params)
    _check_positive_number("bytes_per_param", bytes_per_param)
    if not links:
        raise ValueError("links must name at least one bandwidth, e.g. {'NVLink 4': 450e9}")
    bad = [f for f in frozen_fractions if not 0 <= f <= 1]
    if bad:
        raise ValueError(f"frozen fractions must lie in [0, 1], got {bad}")
    rows = []
    for fraction in frozen_fractions:
        nbytes = total_params * (1 - fraction) * bytes_per_param
        row = {"frozen_fraction": fraction, "allreduce_bytes": nbytes}
        for link, bandwidth in links.items():
            row[link] = ring_allreduce_seconds(nbytes, world_size, bandwidth)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- tables


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(f"{c:>{w}}" for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def format_bytes(rows: Sequence[dict[str, Any]], order: Sequence[str]) -> str:
    """Counted all-reduce bytes per depth next to the oracle (notebook 06)."""
    table = []
    for r in rows:
        first, second = r["bytes_per_step"]
        table.append([
            str(r["freeze_depth"]),
            ",".join(order[: r["freeze_depth"]]) or "-",
            f"{r['trainable_params']:,}",
            f"{first:,}",
            f"{second:,}",
            f"{r['expected_bytes']:,}",
            f"{second / r['trainable_params']:g}",
        ])
    columns = ["depth", "frozen", "trainable", "step 1 bytes", "step 2 bytes", "4 x trainable",
               "bytes/param"]
    return _table(columns, table)


def format_buckets(row: dict[str, Any]) -> str:
    """The buckets DDP all-reduced in one step, in the order it sent them (notebook 06)."""
    table = [
        [str(b.index), f"{b.nbytes:,}", b.dtype, " ".join(b.names)] for b in row["buckets"]
    ]
    return _table(["bucket", "bytes", "dtype", "parameters"], table)


def _ms(timing: Timing) -> str:
    return f"{timing.median * 1e3:.2f} ± {timing.iqr * 1e3:.2f}"


def format_step_times(rows: Sequence[dict[str, Any]]) -> str:
    """Backward with DDP, compute alone, all-reduce alone, hidden part, last bucket (nb 06)."""
    table = [
        [
            str(r["freeze_depth"]),
            _ms(r["backward_ddp"]),
            _ms(r["backward_compute"]),
            _ms(r["allreduce_alone"]),
            f"{r['hidden_seconds'] * 1e3:+.2f}",
            f"{r['bucket_ready'][-1] * 1e3:.2f}" if r["bucket_ready"] else "-",
            f"{r['bucket_done'][-1] * 1e3:.2f}" if r["bucket_done"] else "-",
            _ms(r["tail"]),
        ]
        for r in rows
    ]
    columns = ["depth", "DDP backward ms", "compute only ms", "all-reduce alone ms",
               "hidden ms", "last ready ms", "last done ms", "tail ms"]
    return _table(columns, table)


def format_projection(rows: Sequence[dict[str, Any]], links: Sequence[str]) -> str:
    """The scale-on-paper table: bytes and all-reduce milliseconds per link (notebook 06)."""
    table = [
        [f"{r['frozen_fraction']:.0%}", f"{r['allreduce_bytes'] / 1e9:.2f}"]
        + [f"{r[link] * 1e3:.2f}" for link in links]
        for r in rows
    ]
    return _table(["frozen", "GB per step", *(f"{link} ms" for link in links)], table)


def plot_timeline(rows: Sequence[dict[str, Any]], compute_key: str = "backward_compute"):
    """One bar per depth: backward compute, then each bucket from ready to done (notebook 06)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.9 * len(rows) + 1.5))
    for y, r in enumerate(rows):
        ax.barh(y + 0.2, r[compute_key].median * 1e3, height=0.3, color="tab:blue",
                label="backward compute alone" if y == 0 else None)
        for i, (ready, done) in enumerate(zip(r["bucket_ready"], r["bucket_done"], strict=True)):
            ax.barh(y - 0.2, (done - ready) * 1e3, left=ready * 1e3, height=0.3,
                    color=f"C{i + 1}", alpha=0.7, edgecolor="k")
            ax.text(ready * 1e3, y - 0.2, f"b{i}", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [f"depth {r['freeze_depth']}" for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="ms since backward started",
           title="Buckets: all-reduce from ready to done (median over steps)")
    ax.legend(loc="lower right", fontsize=10)
    fig.tight_layout()
    return fig
