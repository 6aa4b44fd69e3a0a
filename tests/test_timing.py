"""The one timer: round-robin order, stopping rules, freeze sets, statistics; no speeds."""

import gc
import time

import pytest
import torch

from autograd_cost import mlp
from autograd_cost.timing import (
    Seconds,
    Timing,
    backward_seconds,
    garbage_collection_paused,
    interleaved_backward_samples,
    interleaved_backward_seconds,
    interleaved_samples,
    interleaved_seconds,
    median_ratio,
    summarize_times,
    thread_seconds,
    time_repeats,
    timed_backward,
)


def test_summarize_times_median_and_iqr():
    timing = summarize_times([1.0, 2.0, 3.0, 4.0, 100.0])
    assert timing.median == 3.0
    assert timing.iqr == pytest.approx(2.0)
    assert timing.repeats == 5
    assert summarize_times([0.5]) == Timing(0.5, 0.0, 1, 0.5, 0.5)
    with pytest.raises(ValueError, match="no timing samples"):
        summarize_times([])


def test_summarize_times_gives_quartiles_for_error_bars():
    timing = summarize_times([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (timing.q1, timing.median, timing.q3, timing.iqr) == (2.0, 3.0, 4.0, 2.0)
    assert timing.error_bar() == (1.0, 1.0)
    skewed = summarize_times([1.0, 1.0, 1.0, 2.0, 9.0])
    assert skewed.error_bar() == (0.0, 1.0)


def test_timing_prints_median_and_iqr_in_ms():
    assert str(Timing(0.00125, 0.0005, 7)) == "1.25 ms ± 0.50 ms (IQR, n=7)"
    assert Timing(1.0, 0.0, 1).error_bar() == (0.0, 0.0)  # no quartiles: no bar


def test_time_repeats_stops_early_when_the_spread_is_small():
    calls = []
    timing = time_repeats(lambda: calls.append(1), torch.device("cpu"), warmup=2,
                          min_repeats=5, max_repeats=50, max_seconds=60, tolerance=10.0)
    assert timing.repeats == 5
    assert len(calls) == 2 + 5


def test_interleaved_samples_run_round_robin_and_time_the_whole_call():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    samples = interleaved_samples(runs, "cpu", calls_per_sample=3, min_repeats=4, max_repeats=4)
    assert [len(s) for s in samples.values()] == [4, 4]
    ab, ba = ["a"] * 3 + ["b"] * 3, ["b"] * 3 + ["a"] * 3
    assert calls == ab + ab + ba + ab + ba  # a warm-up round, then 4 rounds, each starting later
    assert all(t > 0 for s in samples.values() for t in s)


def test_runs_that_report_their_own_seconds_are_believed():
    runs = {"a": lambda: Seconds(1.0), "b": lambda: Seconds(3.0)}
    timings = interleaved_seconds(runs, warmup_rounds=0,
                                  min_repeats=3, max_repeats=3)
    assert (timings["a"].median, timings["b"].median) == (1.0, 3.0)
    assert timings["b"].iqr == 0.0 and timings["b"].repeats == 3


def test_interleaving_stops_early_once_spreads_are_small_and_reports_each_round():
    rounds = []
    samples = interleaved_samples({"a": lambda: Seconds(1.0)}, min_repeats=5, max_repeats=50,
                                  on_round=lambda: rounds.append(1))
    assert len(samples["a"]) == len(rounds) == 5


def test_interleaving_stops_at_max_repeats_when_spreads_stay_large():
    values = iter([Seconds(1.0), Seconds(5.0)] * 20)
    samples = interleaved_samples({"a": lambda: next(values)}, warmup_rounds=0,
                                  min_repeats=2, max_repeats=6, max_seconds=60)
    assert samples["a"] == [1.0, 5.0, 1.0, 5.0, 1.0, 5.0]


def test_median_ratio_pairs_samples_by_round():
    assert median_ratio({"x": [2.0, 6.0, 3.0], "y": [1.0, 2.0, 3.0]}, "x", "y") == 2.0
    with pytest.raises(ValueError, match="no samples for"):
        median_ratio({"x": [1.0]}, "x", "z")


def test_interleaving_rejects_bad_options():
    with pytest.raises(ValueError, match="at least one"):
        interleaved_samples({})
    with pytest.raises(ValueError, match="min_repeats <= max_repeats"):
        interleaved_samples({"a": lambda: 1.0}, min_repeats=5, max_repeats=2)


def test_garbage_collection_is_paused_while_timing_and_restored_even_on_error():
    assert gc.isenabled()
    seen = interleaved_samples({"a": lambda: Seconds(gc.isenabled())}, warmup_rounds=0,
                               min_repeats=2, max_repeats=2)
    assert seen["a"] == [0.0, 0.0] and gc.isenabled()
    with pytest.raises(KeyError), garbage_collection_paused():
        raise KeyError
    assert gc.isenabled()


def test_interleaved_backward_samples_measure_each_freeze_set_as_given():
    model, x = mlp(width=8, depth=2), torch.randn(4, 64)
    model.fc1.requires_grad_(False)  # the user's configuration
    seen = []  # (fc1 trains, head trains) in each forward, as the loss sees the model

    def loss_fn(output):
        seen.append((model.fc1.weight.requires_grad, model.head.weight.requires_grad))
        return output.sum()

    samples = interleaved_backward_samples(model, x, [None, [], ["head"]], loss_fn,
                                           min_repeats=3, max_repeats=3)
    assert [len(s) for s in samples] == [3, 3, 3]
    # one warm-up round and three timed rounds, round-robin over the freeze sets, each round
    # starting one set later: None = as configured (fc1 frozen), [] = all trainable,
    # ["head"] = exactly head frozen
    configured, trainable, head_frozen = (False, True), (True, True), (True, False)
    first = [configured, trainable, head_frozen]
    assert seen == first * 2 + [trainable, head_frozen, configured] + [head_frozen, *first[:2]]
    assert not model.fc1.weight.requires_grad and model.head.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_a_fully_frozen_set_has_no_backward_to_time():
    model, x = mlp(width=8, depth=1), torch.randn(2, 64)
    timings = interleaved_backward_seconds(model, x, [["fc1", "head"]], min_repeats=2,
                                           max_repeats=2)
    assert timings[0].median == 0.0 and timings[0].repeats == 2
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="unknown unit"):
        interleaved_backward_samples(model, x, [["fc9"]], min_repeats=1, max_repeats=1)


def test_backward_seconds_takes_the_one_meaning_of_frozen():
    model, x = mlp(width=8, depth=1), torch.randn(2, 64)
    model.head.requires_grad_(False)
    timing = backward_seconds(model, x, min_repeats=2, max_seconds=0.5, frozen=["fc1"])
    assert timing.repeats >= 2 and timing.q1 <= timing.median <= timing.q3
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False]


def test_timed_backward_runs_backward_and_thread_seconds_wraps_a_run():
    weight = torch.ones(3, requires_grad=True)
    seconds = timed_backward((weight * 2).sum(), torch.device("cpu"))
    assert isinstance(seconds, Seconds) and seconds >= 0
    assert torch.equal(weight.grad, torch.full((3,), 2.0))
    calls = []
    timed = thread_seconds(lambda: calls.append(1))
    assert isinstance(timed(), Seconds) and calls == [1]
    samples = interleaved_samples({"a": timed}, warmup_rounds=0, min_repeats=2, max_repeats=2)
    assert len(samples["a"]) == 2 and calls == [1, 1, 1]


def test_only_seconds_count_as_a_runs_own_measurement_a_returned_loss_does_not():
    """A step that returns its loss as a float (training_step does) must still be timed."""
    slow = interleaved_samples({"loss": lambda: (time.sleep(0.01), 123.0)[1]},
                               warmup_rounds=0, min_repeats=2, max_repeats=2)
    assert all(0.009 < s < 5 for s in slow["loss"])  # the sleep, not the 123.0 returned
    own = interleaved_samples({"own": lambda: Seconds(7.0)}, warmup_rounds=0, min_repeats=2,
                              max_repeats=2)
    assert own["own"] == [7.0, 7.0]
