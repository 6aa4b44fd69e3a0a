"""The DDP instrument: the loopback launcher, the counting comm hook, timing across ranks."""

import multiprocessing
import os
import time

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from autograd_cost.launch import (
    BarrierClock,
    ProcessGroupFacts,
    WorkerFailed,
    after_barrier,
    allreduce_alone,
    attach_byte_counter,
    expected_allreduce_bytes,
    first_line,
    launch,
    process_group_facts,
)
from autograd_cost.models import example_input, mlp

# mlp(width=8, depth=2): fc1 64x8+8, fc2 8x8+8, head 8x10+10 parameters, counted by hand
FC1, FC2, HEAD = 64 * 8 + 8, 8 * 8 + 8, 8 * 10 + 10


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = mlp(width=8, depth=2)
    labels = torch.randint(10, (4,), generator=torch.Generator().manual_seed(rank))
    return example_input(model, batch=4, seed=rank), labels


# ---- workers for the 2-process tests (top-level so that spawn can import them)


def ddp_step_worker(rank: int, world_size: int) -> dict:
    """One DDP step with fc1 frozen before wrapping: counted bytes, names, averaged grads."""
    model = mlp(width=8, depth=2)
    model.fc1.requires_grad_(False)
    ddp = DDP(model, bucket_cap_mb=1e-4)
    counter = attach_byte_counter(ddp)
    counter.start_step()
    inputs, labels = _batch(rank)
    torch.nn.functional.cross_entropy(ddp(inputs), labels).backward()
    print("hello from the worker")  # must be captured, not leak
    return {
        "counted": counter.nbytes,
        "buckets": len(counter.buckets),
        "names": sorted(n for b in counter.buckets for n in b.names),
        "dtypes": {b.dtype for b in counter.buckets},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "facts": process_group_facts(),
        "rank": dist.get_rank(),
        "pid": os.getpid(),
    }


def failing_worker(rank: int, world_size: int) -> None:
    raise ValueError(f"rank {rank} fails on purpose")


def sleeping_worker(rank: int, world_size: int, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_process_ddp_step_counts_the_trainable_gradient_bytes():
    results = launch(ddp_step_worker, world_size=2, timeout=90)
    assert [r.rank for r in results] == [r.value["rank"] for r in results] == [0, 1]
    for result in results:
        value = result.value
        assert value["counted"] == 4 * (FC2 + HEAD)  # fc1 frozen before wrapping: not sent
        assert value["buckets"] == 1  # DDP's first step puts every parameter in one bucket
        assert value["names"] == ["fc2.bias", "fc2.weight", "head.bias", "head.weight"]
        assert value["dtypes"] == {"float32"}
        assert value["facts"] == ProcessGroupFacts("gloo", "127.0.0.1", 2, 1)
        assert "hello from the worker" in result.output
    # DDP averages: each rank's gradient equals the full-batch gradient of the mean loss
    full = mlp(width=8, depth=2)
    inputs, labels = (torch.cat(parts) for parts in zip(_batch(0), _batch(1), strict=True))
    torch.nn.functional.cross_entropy(full(inputs), labels).backward()
    for name, param in full.named_parameters():
        if not name.startswith("fc1"):
            for result in results:
                torch.testing.assert_close(result.value["grads"][name], param.grad)
    assert not any("fc1" in name for name in results[0].value["grads"])
    assert not any(_alive(r.value["pid"]) for r in results)
    assert multiprocessing.active_children() == []


def test_worker_errors_come_back_with_their_traceback():
    with pytest.raises(WorkerFailed, match="rank 1 fails on purpose"):
        launch(failing_worker, world_size=2, timeout=60)
    assert multiprocessing.active_children() == []


def test_timeout_terminates_the_workers():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="terminated"):
        launch(sleeping_worker, world_size=2, timeout=8, seconds=120)
    assert time.monotonic() - start < 30
    assert multiprocessing.active_children() == []


def test_launch_rejects_bad_arguments():
    def local_worker(rank, world_size):
        return rank

    with pytest.raises(ValueError, match="top-level function"):
        launch(local_worker)
    with pytest.raises(ValueError, match="world_size"):
        launch(sleeping_worker, world_size=0)
    with pytest.raises(ValueError, match="timeout"):
        launch(sleeping_worker, timeout=0)
    with pytest.raises(ValueError, match="group_timeout"):
        launch(sleeping_worker, group_timeout=0)
    with pytest.raises(TypeError, match="function"):
        launch("worker")


# ---- in-process tests (a 1-process gloo group)


@pytest.fixture
def single_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_process_group_facts(single_process_group):
    facts = process_group_facts()
    assert facts.backend == "gloo" and facts.world_size == 1
    assert facts.threads == torch.get_num_threads()


def test_process_group_facts_needs_a_group():
    with pytest.raises(RuntimeError, match="no process group"):
        process_group_facts()


def test_counting_hook_sees_every_bucket_and_keeps_the_average(single_process_group):
    model = mlp(width=8, depth=2)
    reference = mlp(width=8, depth=2)
    ddp = DDP(model, bucket_cap_mb=1e-4)  # 104 bytes: every rebuilt bucket holds one unit
    counter = attach_byte_counter(ddp)
    inputs, labels = _batch(0)
    for _ in range(2):
        counter.start_step()
        model.zero_grad()
        torch.nn.functional.cross_entropy(ddp(inputs), labels).backward()
    assert counter.nbytes == 4 * (FC1 + FC2 + HEAD)
    # buckets close once they reach the cap: head.bias+head.weight, fc2.bias+fc2.weight, ...
    assert [b.nbytes for b in counter.buckets] == [4 * HEAD, 4 * FC2, 4 * FC1]
    assert counter.buckets[0].names == ("head.bias", "head.weight")
    assert all(counter.done_seconds[b.index] >= b.ready_seconds >= 0 for b in counter.buckets)
    torch.nn.functional.cross_entropy(reference(inputs), labels).backward()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)  # world size 1: divided by 1


def test_barrier_timers_report_their_own_seconds(single_process_group):
    assert after_barrier(lambda: time.sleep(0.01))() >= 0.01
    assert allreduce_alone([3, 5])() >= 0.0
    model = mlp(width=8, depth=2)
    ddp = DDP(model)
    counter = attach_byte_counter(ddp)
    clock = BarrierClock(counter)
    inputs, labels = _batch(0)
    with clock("forward"):
        loss = torch.nn.functional.cross_entropy(ddp(inputs), labels)
    assert clock.seconds == 0.0  # only the backward is timed
    with clock("backward"):
        loss.backward()
    assert clock.seconds > 0 and counter.nbytes == 4 * (FC1 + FC2 + HEAD)


def test_attach_byte_counter_rejects_plain_modules():
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        attach_byte_counter(mlp(8, 1))


def test_expected_allreduce_bytes_counts_only_trainable_parameters():
    model = mlp(width=8, depth=2)
    model.fc1.requires_grad_(False)
    assert expected_allreduce_bytes(model) == 4 * (FC2 + HEAD)
    assert expected_allreduce_bytes(model.double()) == 8 * (FC2 + HEAD)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        expected_allreduce_bytes("model")


def test_first_line_keeps_type_and_first_sentence():
    error = RuntimeError("Expected to have finished reduction. This error indicates more.\nx")
    assert first_line(error) == "RuntimeError: Expected to have finished reduction"
    assert first_line(ValueError("")) == "ValueError: "
