"""Notebook 06's experiments against hand counts: bytes, buckets, pitfalls, progressive freezing."""

import matplotlib
import pytest
import torch
import torch.distributed as dist

from autograd_cost.chapters.ddp import (
    DDP_FIXES,
    DDPExperiment,
    DDPResults,
    count_allreduced_bytes,
    ddp_progressive_freeze,
    freeze_after_wrapping,
    measure_step_times,
    run_ddp_experiments,
    time_fixes,
)
from autograd_cost.chapters.ddp_tables import (
    plot_bucket_timeline,
    project_allreduce,
    ring_allreduce_seconds,
    step_times_table,
)
from autograd_cost.launch import ProcessGroupFacts, launch
from autograd_cost.timing import Timing

matplotlib.use("Agg")

# mlp(width=16, depth=3): 64 inputs, 10 outputs. Parameters per unit, counted from the shapes:
FC1, FC2, FC3, HEAD = 64 * 16 + 16, 16 * 16 + 16, 16 * 16 + 16, 16 * 10 + 10
TOTAL = FC1 + FC2 + FC3 + HEAD
TINY = DDPExperiment(width=16, depth=3, batch=8, bucket_cap_mb=0.001)  # cap: 1,048 bytes
# Rebuilt buckets fill in backward order (head first, bias before weight) and close once they
# reach the cap: head+fc3 = 4 x (170 + 272) = 1,768 bytes, fc2 = 1,088, fc1 = 4,160.
BUCKETS = {0: [4 * (HEAD + FC3), 4 * FC2, 4 * FC1], 1: [4 * (HEAD + FC3), 4 * FC2],
           2: [4 * (HEAD + FC3)], 3: [4 * HEAD]}
TRAINABLE = {0: TOTAL, 1: TOTAL - FC1, 2: TOTAL - FC1 - FC2, 3: HEAD}


@pytest.fixture
def single_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_experiment_checks_its_fields_and_gives_each_rank_its_own_batch():
    assert TINY.unit_order() == ["fc1", "fc2", "fc3", "head"]
    inputs0, loss0 = TINY.shard(0)
    inputs1, _ = TINY.shard(1)
    assert inputs0.shape == (8, 64) and not torch.equal(inputs0, inputs1)
    assert torch.equal(inputs0, TINY.shard(0)[0])
    assert loss0(torch.zeros(8, 10)).item() == pytest.approx(torch.log(torch.tensor(10.0)).item())
    with pytest.raises(ValueError, match="width"):
        DDPExperiment(width=0)
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        DDPExperiment(bucket_cap_mb=-1.0)


def test_allreduced_bytes_are_4_per_trainable_parameter(single_process_group):
    rows = count_allreduced_bytes(TINY, [0, 1, 2, 3], rank=0)
    for row in rows:
        expected = 4 * TRAINABLE[row.freeze_depth]
        assert row.trainable_params == TRAINABLE[row.freeze_depth]
        assert row.step1_bytes == row.step2_bytes == row.expected_bytes == expected
        assert row.frozen_units == ("fc1", "fc2", "fc3")[: row.freeze_depth]
        assert row.step1_buckets == 1  # without find_unused_parameters: one bucket in step 1
        assert [b.nbytes for b in row.buckets] == BUCKETS[row.freeze_depth]
        assert row.step2_buckets == len(BUCKETS[row.freeze_depth])
    names = [n for b in rows[0].buckets for n in b.names]
    assert names == ["head.bias", "head.weight", "fc3.bias", "fc3.weight", "fc2.bias",
                     "fc2.weight", "fc1.bias", "fc1.weight"]  # the reverse of forward order


def test_step_times_record_every_bucket(single_process_group):
    rows = measure_step_times(TINY, [0, 2], rank=0, repeats=3)
    assert [r.freeze_depth for r in rows] == [0, 2]
    for row, buckets in zip(rows, (3, 1), strict=True):
        assert len(row.bucket_ready) == len(row.bucket_done) == buckets
        assert all(r <= d for r, d in zip(row.bucket_ready, row.bucket_done, strict=True))
        assert row.backward_ddp.repeats == row.tail.repeats == 3 and row.tail.median >= 0
    table = step_times_table(rows)
    assert list(table.index) == [0, 2] and "tail" in table.columns
    fig = plot_bucket_timeline(rows)
    assert len(fig.axes[0].patches) == 2 + 3 + 1  # one compute bar per depth, one per bucket
    matplotlib.pyplot.close(fig)


def test_fix_times_cover_every_fix(single_process_group):
    times = time_fixes(TINY, rank=0, repeats=2)
    assert list(times) == list(DDP_FIXES) and all(t.repeats == 2 for t in times.values())
    with pytest.raises(ValueError, match="repeats"):
        time_fixes(TINY, rank=0, repeats=0)


def test_freezing_after_wrapping_fails_at_step_2_and_each_fix_runs(single_process_group):
    broken = freeze_after_wrapping(TINY, 0, None)
    assert broken.failed_at_step == 2 and broken.bytes_per_step == (0,)
    assert broken.error.startswith("RuntimeError: Expected to have finished reduction")
    assert freeze_after_wrapping(TINY, 0, "rewrap").bytes_per_step == (4 * (TOTAL - FC1),) * 3
    for fix in ("find_unused_parameters", "static_graph"):
        outcome = freeze_after_wrapping(TINY, 0, fix)
        assert outcome.error is None and outcome.bytes_per_step == (4 * TOTAL,) * 3
        assert outcome.frozen_grad_is_none
    late = freeze_after_wrapping(TINY, 0, "static_graph", steps=4, steps_before_freeze=2)
    assert late.error.startswith("RuntimeError: Expected to have finished reduction")
    with pytest.raises(ValueError, match="valid values"):
        freeze_after_wrapping(TINY, 0, "magic")


def test_progressive_strategies_train_the_same_weights(single_process_group):
    schedule = [0, 1, 1, 2]
    rewrap, once = (ddp_progressive_freeze(TINY, 0, s, schedule)
                    for s in ("rewrap", "find_unused_parameters"))
    assert rewrap.bytes_per_step == (4 * TOTAL, 4 * (TOTAL - FC1), 4 * (TOTAL - FC1),
                                     4 * (TOTAL - FC1 - FC2))
    assert once.bytes_per_step == (4 * TOTAL,) * 4
    assert rewrap.losses == once.losses
    assert all(torch.equal(rewrap.final_state[k], once.final_state[k]) for k in once.final_state)
    initial = TINY.model().state_dict()  # fc1 trained one step, fc2 two, head all four
    assert not torch.equal(initial["head.weight"], rewrap.final_state["head.weight"])
    with pytest.raises(ValueError, match="valid values"):
        ddp_progressive_freeze(TINY, 0, "magic", schedule)


def test_two_ranks_run_every_experiment():
    results = launch(run_ddp_experiments, world_size=2, timeout=120, experiment=TINY,
                     freeze_depths=[0, 3], schedule=[0, 1], repeats=2)
    rank0, rank1 = (r.value for r in results)
    assert isinstance(rank0, DDPResults)
    assert rank0.group == ProcessGroupFacts("gloo", "127.0.0.1", 2, 1)
    assert [r.step2_bytes for r in rank1.allreduced_bytes] == [4 * TOTAL, 4 * HEAD]
    divergent0, divergent1 = rank0.divergent, rank1.divergent
    # before wrapping: rank 0 has 3 trainable units x 2 tensors, rank 1 all 4 units x 2
    assert "Rank 0 has 6 params, while rank 1 has inconsistent 8 params" in (
        divergent0.error_before_wrap)
    # after wrapping: fc1 trains on both ranks with half of rank 1's gradient
    assert not divergent0.requires_grad and divergent1.requires_grad
    assert divergent0.got_gradient and divergent0.moved and divergent1.moved
    assert divergent0.received_vs_rank1_half == divergent1.received_vs_own_half == 0.0
    assert divergent0.max_replica_gap == 0.0
    assert divergent0.received_vs_true_average > 0.0
    assert rank0.after_wrap[0].failed_at_step == 2
    assert [run.bytes_per_step for run in rank0.progressive] == [
        (4 * TOTAL, 4 * (TOTAL - FC1)), (4 * TOTAL, 4 * TOTAL)]
    assert "Traceback" not in results[0].output  # the expected errors are data, not crashes


def test_ring_allreduce_formula():
    assert ring_allreduce_seconds(1e9, 2, 1e9) == pytest.approx(1.0)
    assert ring_allreduce_seconds(4e9, 8, 12.5e9) == pytest.approx(2 * 7 / 8 * 4e9 / 12.5e9)
    assert ring_allreduce_seconds(1e9, 1, 1e9) == 0.0
    for bad, match in (((1e9, 0, 1e9), "world_size"), ((1e9, 2, 0), "bytes_per_second"),
                       ((-1, 2, 1e9), "nbytes")):
        with pytest.raises(ValueError, match=match):
            ring_allreduce_seconds(*bad)


def test_projection_scales_with_the_trainable_share():
    links = {"net": 12.5e9, "nvlink": 450e9}  # bytes per second, per direction
    table = project_allreduce(1e9, [0, 0.5, 1], 4, world_size=8, links=links)
    assert list(table.index) == ["0%", "50%", "100%"]
    assert list(table["GB per step"]) == [4.0, 2.0, 0.0]
    assert table.loc["0%", "net ms"] == pytest.approx(2 * 7 / 8 * 4e9 / 12.5e9 * 1e3)  # 560 ms
    assert table.loc["50%", "net ms"] == pytest.approx(280.0)
    assert table.loc["0%", "nvlink ms"] == pytest.approx(560.0 / 36)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        project_allreduce(1e9, [1.5], 4, 8, links)
    with pytest.raises(ValueError, match="links"):
        project_allreduce(1e9, [0.5], 4, 8, {})


def test_step_times_table_shows_medians_and_iqrs_in_ms():
    class Row:  # the fields of a StepTimes row
        freeze_depth = 1
        backward_ddp = Timing(0.004, 0.001, 5)
        backward_compute = Timing(0.002, 0.0005, 5)
        allreduce_alone = Timing(0.003, 0.001, 5)
        tail = Timing(0.001, 0.0002, 5)
        hidden_seconds = 0.002 + 0.003 - 0.004
        bucket_ready, bucket_done = (0.0005, 0.0015), (0.002, 0.003)

    table = step_times_table([Row()])
    assert table.loc[1, "DDP backward"] == "4.00 ± 1.00"
    assert table.loc[1, "hidden"] == 1.0 and table.loc[1, "last bucket done"] == 3.0
