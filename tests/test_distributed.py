"""Notebook 06's DDP library: the loopback launcher, the byte-counting hook, the projection."""

import multiprocessing
import os
import time

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from autograd_cost.distributed import (
    DDP_FIXES,
    Setup,
    WorkerFailed,
    attach_byte_counter,
    bucketed_names,
    expected_allreduce_bytes,
    first_line,
    format_bytes,
    format_step_times,
    freeze_after_wrapping,
    frozen_prefix_model,
    launch,
    measure_bytes,
    measure_step_times,
    process_group_facts,
    progressive_freezing,
    project_allreduce,
    rank_divergent_freeze,
    ring_allreduce_seconds,
    train_step,
    unit_order,
)
from autograd_cost.models import mlp

TINY = Setup(width=16, depth=3, batch=8, bucket_cap_mb=0.001)


# ---- workers for the 2-process tests (top-level so that spawn can import them)


def ddp_step_worker(rank: int, world_size: int, freeze_depth: int) -> dict:
    """One DDP step on a prefix-frozen MLP: counted bytes, oracle, rank and averaged grads."""
    model = frozen_prefix_model(TINY, freeze_depth)
    ddp = DDP(model, bucket_cap_mb=TINY.bucket_cap_mb)
    counter = attach_byte_counter(ddp)
    counter.start_step()
    train_step(ddp, TINY.data(rank))
    print("hello from the worker")  # must be captured, not leak
    return {
        "rank": dist.get_rank(),
        "world_size": world_size,
        "counted": counter.nbytes,
        "expected": expected_allreduce_bytes(model),
        "names": sorted(bucketed_names(counter)),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "master_addr": os.environ["MASTER_ADDR"],
        "pid": os.getpid(),
    }


def failing_worker(rank: int, world_size: int) -> None:
    raise ValueError(f"rank {rank} fails on purpose")


def sleeping_worker(rank: int, world_size: int, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def pitfalls_worker(rank: int, world_size: int) -> dict:
    outcomes = {str(fix): freeze_after_wrapping(TINY, rank, fix) for fix in (None, *DDP_FIXES)}
    outcomes["divergent"] = rank_divergent_freeze(TINY, rank, after_wrap=True)
    outcomes["group"] = process_group_facts()
    return outcomes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- 2-process tests


def test_two_process_ddp_step_counts_the_trainable_gradient_bytes():
    freeze_depth = 2
    results = launch(ddp_step_worker, world_size=2, timeout=90, freeze_depth=freeze_depth)
    assert [r.rank for r in results] == [0, 1]
    oracle_model = frozen_prefix_model(TINY, freeze_depth)
    trainable = [(n, p) for n, p in oracle_model.named_parameters() if p.requires_grad]
    oracle = sum(p.numel() * p.element_size() for _, p in trainable)
    assert oracle == 4 * sum(p.numel() for _, p in trainable)
    for result in results:
        value = result.value
        assert value["counted"] == value["expected"] == oracle
        assert value["names"] == sorted(n for n, _ in trainable)
        assert value["master_addr"] == "127.0.0.1" and value["world_size"] == 2
        assert "hello from the worker" in result.output
    # DDP averages: each rank's gradient equals the full-batch gradient of the mean loss
    full_model = frozen_prefix_model(TINY, freeze_depth)
    batches = [TINY.data(rank) for rank in range(2)]
    inputs = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    torch.nn.functional.cross_entropy(full_model(inputs), labels).backward()
    for name, param in full_model.named_parameters():
        if param.requires_grad:
            for result in results:
                torch.testing.assert_close(result.value["grads"][name], param.grad)
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


def test_pitfalls_fail_then_each_fix_runs():
    results = launch(pitfalls_worker, world_size=2, timeout=90)
    model = TINY.model()
    full = expected_allreduce_bytes(model)
    first = unit_order(TINY)[0]
    without_first = full - sum(4 * p.numel() for p in getattr(model, first).parameters())
    for result in results:
        outcomes = result.value
        assert outcomes["None"]["failed_at_step"] == 2
        assert outcomes["None"]["error"].startswith(
            "RuntimeError: Expected to have finished reduction in the prior iteration")
        assert outcomes["rewrap"]["bytes"] == [without_first] * 3
        assert outcomes["find_unused_parameters"]["bytes"] == [full] * 3
        assert outcomes["static_graph"]["bytes"] == [full] * 3
        assert all(outcomes[str(fix)]["frozen_grad_is_none"] for fix in (None, *DDP_FIXES))
        # only rank 0 froze fc1 after wrapping: both ranks get half of rank 1's gradient
        divergent = outcomes["divergent"]
        assert divergent["got_gradient"] and divergent["moved"]
        assert divergent["received_vs_rank1_half"] == 0.0
        assert divergent["max_replica_gap"] == 0.0
        assert divergent["requires_grad"] is (result.rank != 0)
        assert outcomes["group"] == {
            "backend": "gloo", "master_addr": "127.0.0.1", "world_size": 2, "threads": 1}
        assert "Traceback" not in result.output  # the expected error is data, not a crash
    assert results[1].value["divergent"]["received_vs_own_half"] == 0.0


# ---- in-process tests (a 1-process gloo group)


@pytest.fixture
def single_process_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_counting_hook_in_one_process_and_bucket_order(single_process_group):
    rows = measure_bytes(TINY, [0, 1, 3], rank=0)
    model = TINY.model()
    for row in rows:
        prefix = unit_order(TINY)[: row["freeze_depth"]]
        frozen = sum(p.numel() for name in prefix for p in getattr(model, name).parameters())
        expected = 4 * (sum(p.numel() for p in model.parameters()) - frozen)
        assert row["bytes_per_step"] == [expected, expected] == [row["expected_bytes"]] * 2
    names = [n for b in rows[0]["buckets"] for n in b.names]
    assert names[0].startswith("head") and names[-1].startswith("fc1")  # reverse forward order
    assert sorted(n for b in rows[2]["buckets"] for n in b.names) == ["head.bias", "head.weight"]
    assert "bytes/param" in format_bytes(rows, unit_order(TINY))
    # without find_unused_parameters, step 1 uses one bucket; step 2 uses the rebuilt ones
    assert [row["buckets_per_step"] for row in rows] == [
        [1, len(row["buckets"])] for row in rows]
    assert rows[0]["buckets_per_step"][1] > 1


def test_process_group_facts(single_process_group):
    facts = process_group_facts()
    assert facts["backend"] == "gloo" and facts["world_size"] == 1
    assert facts["threads"] == torch.get_num_threads()


def test_process_group_facts_needs_a_group():
    with pytest.raises(RuntimeError, match="no process group"):
        process_group_facts()


def test_step_times_report_last_bucket_and_tail(single_process_group):
    rows = measure_step_times(TINY, [0, 2], rank=0, repeats=3)
    for row in rows:
        assert len(row["bucket_ready"]) == len(row["bucket_done"]) >= 1
        assert row["tail"].median >= 0 and row["tail"].repeats == 3
        assert row["bucket_ready"][-1] <= row["bucket_done"][-1]
    assert "tail ms" in format_step_times(rows)


def test_progressive_strategies_end_with_the_same_weights(single_process_group):
    schedule = [0, 1, 1, 2]
    runs = {s: progressive_freezing(TINY, 0, s, schedule)
            for s in ("rewrap", "find_unused_parameters")}
    rewrap, once = runs["rewrap"], runs["find_unused_parameters"]
    assert rewrap["losses"] == once["losses"]
    assert rewrap["state"].keys() == once["state"].keys()
    assert all(torch.equal(rewrap["state"][k], once["state"][k]) for k in rewrap["state"])
    assert rewrap["bytes"][0] == once["bytes"][0] > rewrap["bytes"][-1]
    # the weights moved: the returned state is the trained one, not the initial one
    initial = TINY.model().state_dict()
    assert not torch.equal(initial["head.weight"], rewrap["state"]["head.weight"])


def test_attach_byte_counter_rejects_plain_modules():
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        attach_byte_counter(mlp(8, 1))


def test_expected_allreduce_bytes_counts_only_trainable_parameters():
    model = mlp(width=8, depth=2)
    model.fc1.requires_grad_(False)
    assert expected_allreduce_bytes(model) == 4 * (8 * 8 + 8 + 8 * 10 + 10)
    assert expected_allreduce_bytes(model.double()) == 8 * (8 * 8 + 8 + 8 * 10 + 10)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        expected_allreduce_bytes("model")


def test_launch_rejects_bad_arguments():
    def local_worker(rank, world_size):
        return rank

    with pytest.raises(ValueError, match="top-level function"):
        launch(local_worker)
    with pytest.raises(ValueError, match="world_size"):
        launch(sleeping_worker, world_size=0)
    with pytest.raises(ValueError, match="timeout"):
        launch(sleeping_worker, timeout=0)
    with pytest.raises(TypeError, match="function"):
        launch("worker")


def test_first_line_keeps_type_and_first_sentence():
    error = RuntimeError("Expected to have finished reduction. This error indicates more.\nx")
    assert first_line(error) == "RuntimeError: Expected to have finished reduction"
    assert first_line(ValueError("")) == "ValueError: "


def test_ring_allreduce_formula():
    assert ring_allreduce_seconds(1e9, 2, 1e9) == pytest.approx(1.0)
    assert ring_allreduce_seconds(4e9, 8, 12.5e9) == pytest.approx(2 * 7 / 8 * 4e9 / 12.5e9)
    assert ring_allreduce_seconds(1e9, 1, 1e9) == 0.0
    with pytest.raises(ValueError, match="world_size"):
        ring_allreduce_seconds(1e9, 0, 1e9)
    with pytest.raises(ValueError, match="bytes_per_second"):
        ring_allreduce_seconds(1e9, 2, 0)
    with pytest.raises(ValueError, match="nbytes"):
        ring_allreduce_seconds(-1, 2, 1e9)


def test_projection_scales_with_the_trainable_share():
    links = {"net": 12.5e9, "nvlink": 450e9}  # bytes per second, per direction
    rows = project_allreduce(1e9, [0, 0.5, 1], 4, world_size=8, links=links)
    assert rows[0]["allreduce_bytes"] == 4e9
    assert rows[1]["net"] == pytest.approx(rows[0]["net"] / 2)
    assert rows[2]["nvlink"] == 0.0
    assert rows[0]["net"] == pytest.approx(2 * 7 / 8 * 4e9 / 12.5e9)
    assert rows[0]["nvlink"] == pytest.approx(rows[0]["net"] / 36)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        project_allreduce(1e9, [1.5], 4, 8, links)
    with pytest.raises(ValueError, match="links"):
        project_allreduce(1e9, [0.5], 4, 8, {})


def test_freeze_after_wrapping_rejects_unknown_fix():
    with pytest.raises(ValueError, match="valid fixes"):
        freeze_after_wrapping(TINY, 0, "magic")
