"""Freezing under DistributedDataParallel: the experiments of notebook 06, run on every rank.

Each experiment runs inside the gloo process group that `launch.launch` starts, with the
same arguments on every rank, and returns a dataclass. Every collective runs a fixed number
of times on every rank, so the ranks stay in step.
"""

# No `from __future__ import annotations` here: DDP checks the hook's annotations at runtime.
import gc
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from autograd_cost.core import LossFn, check_choice, check_number, check_positive_int, make_loss_fn
from autograd_cost.freezing import execution_order, freeze_units, prefix_units
from autograd_cost.launch import (
    BarrierClock,
    BucketRecord,
    ByteCounter,
    ProcessGroupFacts,
    after_barrier,
    allreduce_alone,
    attach_byte_counter,
    counting_allreduce_hook,
    expected_allreduce_bytes,
    first_line,
    process_group_facts,
)
from autograd_cost.models import example_input, mlp
from autograd_cost.timing import (
    Seconds,
    Timing,
    interleaved_samples,
    interleaved_seconds,
    summarize_times,
)
from autograd_cost.training import training_step

DDP_FIXES = ("rewrap", "find_unused_parameters", "static_graph")
PROGRESSIVE_STRATEGIES = ("rewrap", "find_unused_parameters")


@dataclass(frozen=True)
class DDPExperiment:
    """The model, each rank's batch and DDP's bucket cap that every rank uses (notebook 06)."""

    width: int = 256
    depth: int = 4  # hidden layers of the course MLP, as in mlp(depth=)
    batch: int = 64
    bucket_cap_mb: float = 0.25

    def __post_init__(self) -> None:
        for name in ("width", "depth", "batch"):
            check_positive_int(name, getattr(self, name))
        check_number("bucket_cap_mb", self.bucket_cap_mb, low=1e-6)

    def model(self) -> nn.Sequential:
        """The same seeded MLP on every rank."""
        return mlp(width=self.width, depth=self.depth)

    def unit_order(self) -> list[str]:
        """The MLP's units in forward-execution order."""
        model = self.model()
        return execution_order(model, example_input(model, batch=2))

    def shard(self, rank: int) -> tuple[torch.Tensor, LossFn]:
        """This rank's own seeded inputs, and cross-entropy against its own seeded labels."""
        model = self.model()
        inputs = example_input(model, batch=self.batch, seed=100 + rank)
        generator = torch.Generator().manual_seed(200 + rank)
        labels = torch.randint(model.head.out_features, (self.batch,), generator=generator)
        return inputs, make_loss_fn(None, labels)


@dataclass(frozen=True)
class AllreduceBytes:
    """Bytes and buckets DDP all-reduced in two steps at one freeze depth (notebook 06)."""

    freeze_depth: int
    frozen_units: tuple[str, ...]
    trainable_params: int
    expected_bytes: int
    step1_bytes: int
    step2_bytes: int
    step1_buckets: int
    step2_buckets: int
    buckets: tuple[BucketRecord, ...] = field(repr=False)  # step 2's, in all-reduce order


def count_allreduced_bytes(
    experiment: DDPExperiment, freeze_depths: Sequence[int], rank: int
) -> list[AllreduceBytes]:
    """Freeze a prefix, wrap in DDP, count the all-reduced bytes of two steps (notebook 06)."""
    inputs, loss_fn = experiment.shard(rank)
    rows = []
    for freeze_depth in freeze_depths:
        model = experiment.model()
        frozen = freeze_units(model, prefix_units(experiment.unit_order(), freeze_depth))
        ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb)  # wrap after freezing
        counter = ByteCounter.for_model(model)
        ddp.register_comm_hook(counter, counting_allreduce_hook)
        sent, buckets = [], []
        for _ in range(2):  # DDP rebuilds its buckets after the first step
            counter.start_step()
            training_step(ddp, inputs, loss_fn)
            sent.append(counter.nbytes)
            buckets.append(len(counter.buckets))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append(AllreduceBytes(freeze_depth, tuple(frozen), trainable,
                                   expected_allreduce_bytes(model), *sent, *buckets,
                                   tuple(counter.buckets)))
    return rows


# ---------------------------------------------------------------- step times


@dataclass(frozen=True)
class StepTimes:
    """Backward with and without all-reduce, all-reduce alone, bucket times (notebook 06).

    bucket_ready/done: per bucket, median s from backward's start to hand-over/all-reduced.
    """

    freeze_depth: int
    backward_ddp: Timing
    backward_compute: Timing
    allreduce_alone: Timing
    tail: Timing  # last bucket: done - ready
    bucket_ready: tuple[float, ...]
    bucket_done: tuple[float, ...]

    @property
    def hidden_seconds(self) -> float:
        """compute + all-reduce alone - DDP backward: positive when they overlapped."""
        return (self.backward_compute.median + self.allreduce_alone.median
                - self.backward_ddp.median)


def _backward_seconds(ddp: DDP, inputs: torch.Tensor, loss_fn: LossFn, sync: bool,
                      counter: ByteCounter) -> Callable[[], Seconds]:
    """A step whose backward alone is timed: with DDP's all-reduce, or under no_sync()."""
    clock = BarrierClock(counter if sync else None)

    def run() -> Seconds:
        if sync:
            training_step(ddp, inputs, loss_fn, phase=clock)
        else:
            with ddp.no_sync():
                training_step(ddp, inputs, loss_fn, phase=clock)
        return Seconds(clock.seconds)

    return run


def measure_step_times(
    experiment: DDPExperiment, freeze_depths: Sequence[int], rank: int, repeats: int = 9
) -> list[StepTimes]:
    """Backward with and without all-reduce, all-reduce alone, per freeze depth (notebook 06).

    One round-robin timer over all depths and variants, exactly `repeats` rounds on every
    rank (one more untimed). The tail is done - ready of the last bucket, per round.
    """
    check_positive_int("repeats", repeats)
    inputs, loss_fn = experiment.shard(rank)
    runs, counters = {}, []
    for freeze_depth in freeze_depths:
        model = experiment.model()
        freeze_units(model, prefix_units(experiment.unit_order(), freeze_depth))
        ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb)
        counter = attach_byte_counter(ddp)
        for _ in range(2):  # the second step uses the rebuilt buckets
            counter.start_step()
            training_step(ddp, inputs, loss_fn)
        sizes = [b.nbytes // 4 for b in counter.buckets]
        runs[f"{freeze_depth} ddp"] = _backward_seconds(ddp, inputs, loss_fn, True, counter)
        runs[f"{freeze_depth} compute"] = _backward_seconds(ddp, inputs, loss_fn, False, counter)
        runs[f"{freeze_depth} allreduce"] = allreduce_alone(sizes)
        counters.append(counter)
    ready, done = [[] for _ in counters], [[] for _ in counters]

    def record_buckets() -> None:
        for counter, ready_rounds, done_rounds in zip(counters, ready, done, strict=True):
            ready_rounds.append([b.ready_seconds for b in counter.buckets])
            done_rounds.append([counter.done_seconds[b.index] for b in counter.buckets])

    samples = interleaved_samples(runs, "cpu", min_repeats=repeats, max_repeats=repeats,
                                  on_round=record_buckets)
    rows = []
    for i, freeze_depth in enumerate(freeze_depths):
        medians = [tuple(statistics.median(c) for c in zip(*rounds, strict=True))
                   for rounds in (ready[i], done[i])]
        tails = [d[-1] - r[-1] for r, d in zip(ready[i], done[i], strict=True)]
        rows.append(StepTimes(
            freeze_depth, *(summarize_times(samples[f"{freeze_depth} {kind}"])
                            for kind in ("ddp", "compute", "allreduce")),
            summarize_times(tails), *medians))
    return rows


# ---------------------------------------------------------------- pitfalls


def _ddp_error(error: Exception) -> str:
    """DDP's error in one line (run_model reports a forward's RuntimeError as its cause)."""
    cause = error.__cause__
    return first_line(cause if isinstance(cause, RuntimeError) else error)


@dataclass(frozen=True)
class AfterWrapOutcome:
    """Freezing fc1 after wrapping, with one fix or none: error or bytes (notebook 06)."""

    fix: str | None
    error: str | None
    failed_at_step: int | None
    bytes_per_step: tuple[int, ...]
    frozen_grad_is_none: bool


def freeze_after_wrapping(
    experiment: DDPExperiment, rank: int, fix: str | None, steps: int = 3,
    steps_before_freeze: int = 0,
) -> AfterWrapOutcome:
    """Wrap, then freeze fc1: with no fix a step fails; each of DDP_FIXES runs (notebook 06)."""
    if fix is not None:
        check_choice("fix", fix, DDP_FIXES)
    inputs, loss_fn = experiment.shard(rank)
    model = experiment.model()
    options = {fix: True} if fix in ("find_unused_parameters", "static_graph") else {}
    ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb, **options)
    counter = attach_byte_counter(ddp)
    error, failed_at_step, sent = None, None, []
    for step in range(1, steps + 1):
        if step == steps_before_freeze + 1:
            freeze_units(model, ["fc1"])  # freeze after wrapping
            if fix == "rewrap":
                del ddp, counter  # the old wrapper's reducer takes its autograd hooks along
                gc.collect()
                ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb)
                counter = attach_byte_counter(ddp)
        counter.start_step()
        try:
            training_step(ddp, inputs, loss_fn)
        except (RuntimeError, ValueError) as raised:  # DDP's RuntimeError, or caused by it
            error, failed_at_step = _ddp_error(raised), step
            break
        sent.append(counter.nbytes)
    return AfterWrapOutcome(fix, error, failed_at_step, tuple(sent),
                            all(p.grad is None for p in model.fc1.parameters()))


def time_fixes(experiment: DDPExperiment, rank: int, repeats: int = 9) -> dict[str, Timing]:
    """Full-step time of each fix for a frozen fc1, round-robin over the fixes (notebook 06)."""
    check_positive_int("repeats", repeats)
    inputs, loss_fn = experiment.shard(rank)
    runs = {}
    for fix in DDP_FIXES:
        model = experiment.model()
        if fix == "rewrap":  # a re-wrap wraps the frozen model
            freeze_units(model, ["fc1"])
            ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb)
        else:  # freeze after wrapping with the option
            ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb, **{fix: True})
            freeze_units(model, ["fc1"])
        runs[fix] = after_barrier(lambda ddp=ddp: training_step(ddp, inputs, loss_fn))
    return interleaved_seconds(runs, "cpu", warmup_rounds=2, min_repeats=repeats,
                               max_repeats=repeats)


def _max_replica_gap(model: nn.Module) -> float:
    """Largest parameter difference between this rank and rank 0 (the same on every rank)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    gap = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return gap.item()


@dataclass(frozen=True)
class DivergentFreeze:
    """Only rank 0 froze fc1: DDP's error before wrapping; after, fc1.weight (notebook 06).

    received_vs_*: the gradient DDP wrote vs half of rank 1's, half of this rank's own (max
    abs), and the true average (relative norm).
    """

    error_before_wrap: str | None
    requires_grad: bool
    got_gradient: bool
    moved: bool
    max_replica_gap: float
    received_vs_rank1_half: float | None
    received_vs_own_half: float | None
    received_vs_true_average: float | None


def rank_divergent_freeze(experiment: DDPExperiment, rank: int) -> DivergentFreeze:
    """Only rank 0 freezes fc1: DDP refuses, or silently trains fc1 anyway (notebook 06)."""
    inputs, loss_fn = experiment.shard(rank)
    model = experiment.model()
    if rank == 0:
        freeze_units(model, ["fc1"])  # only rank 0 freezes, before wrapping
    try:
        DDP(model, bucket_cap_mb=experiment.bucket_cap_mb)
        error = None
    except RuntimeError as raised:
        error = first_line(raised)
    model = experiment.model()
    ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb, find_unused_parameters=True)
    weight = model.fc1.weight
    local = torch.autograd.grad(loss_fn(model(inputs)), weight)[0]  # this rank's own, no DDP
    if rank == 0:
        freeze_units(model, ["fc1"])  # only rank 0 freezes, after wrapping
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    before = weight.detach().clone()
    training_step(ddp, inputs, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1))
    received, gaps = weight.grad, (None, None, None)
    if received is not None:
        average = torch.stack(gathered).mean(0)
        gaps = ((received - gathered[1] / 2).abs().max().item(),
                (received - local / 2).abs().max().item(),
                ((received - average).norm() / average.norm()).item())
    return DivergentFreeze(error, weight.requires_grad, received is not None,
                           not torch.equal(before, weight.detach()), _max_replica_gap(model),
                           *gaps)


@dataclass(frozen=True)
class ProgressiveRun:
    """Progressive freezing: bytes and loss per step, final weights (notebook 06)."""

    strategy: str
    bytes_per_step: tuple[int, ...]
    losses: tuple[float, ...]
    max_replica_gap: float
    final_state: dict[str, torch.Tensor] = field(repr=False)


def ddp_progressive_freeze(
    experiment: DDPExperiment, rank: int, strategy: str, schedule: Sequence[int]
) -> ProgressiveRun:
    """Freeze more units as steps go: re-wrap at each change, or find_unused (notebook 06).

    `schedule` holds the freeze depth of each step; it may only grow.
    """
    check_choice("strategy", strategy, PROGRESSIVE_STRATEGIES)
    inputs, loss_fn = experiment.shard(rank)
    model, order = experiment.model(), experiment.unit_order()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    once = strategy == "find_unused_parameters"
    ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb, find_unused_parameters=once)
    counter = attach_byte_counter(ddp)
    current, sent, losses = 0, [], []
    for freeze_depth in schedule:
        if freeze_depth != current:
            freeze_units(model, prefix_units(order, freeze_depth))
            if not once:
                del ddp, counter  # the old wrapper's reducer takes its autograd hooks with it
                gc.collect()
                ddp = DDP(model, bucket_cap_mb=experiment.bucket_cap_mb)
                counter = attach_byte_counter(ddp)
            current = freeze_depth
        counter.start_step()
        losses.append(training_step(ddp, inputs, loss_fn, optimizer))
        sent.append(counter.nbytes)
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return ProgressiveRun(strategy, tuple(sent), tuple(losses), _max_replica_gap(model), state)


@dataclass(frozen=True)
class DDPResults:
    """Everything one rank measured, in the order of the sections (notebook 06)."""

    group: ProcessGroupFacts
    allreduced_bytes: list[AllreduceBytes]
    step_times: list[StepTimes]
    fix_times: dict[str, Timing]
    after_wrap: list[AfterWrapOutcome]
    static_graph_late: AfterWrapOutcome
    divergent: DivergentFreeze
    progressive: list[ProgressiveRun]
    wrap_seconds: Timing  # one DDP construction, as a re-wrap pays it


def run_ddp_experiments(
    rank: int,
    world_size: int,
    experiment: DDPExperiment,
    freeze_depths: Sequence[int],
    schedule: Sequence[int],
    repeats: int = 9,
) -> DDPResults:
    """Every experiment on one rank, so that the process group starts once (notebook 06)."""
    model = experiment.model()
    wrap = after_barrier(lambda: DDP(model, bucket_cap_mb=experiment.bucket_cap_mb))
    return DDPResults(
        group=process_group_facts(),
        allreduced_bytes=count_allreduced_bytes(experiment, freeze_depths, rank),
        step_times=measure_step_times(experiment, freeze_depths, rank, repeats),
        fix_times=time_fixes(experiment, rank, repeats),
        after_wrap=[freeze_after_wrapping(experiment, rank, fix) for fix in (None, *DDP_FIXES)],
        static_graph_late=freeze_after_wrapping(experiment, rank, "static_graph", steps=4,
                                                steps_before_freeze=2),
        divergent=rank_divergent_freeze(experiment, rank),
        progressive=[ddp_progressive_freeze(experiment, rank, strategy, schedule)
                     for strategy in PROGRESSIVE_STRATEGIES],
        wrap_seconds=interleaved_seconds({"wrap": wrap}, "cpu", min_repeats=5,
                                         max_repeats=5)["wrap"],
    )
