"""FLOPs and saved bytes against analytic formulas; timing statistics against known samples."""

import pytest
import torch

from autograd_cost import (
    backward_flops,
    count_flops,
    execution_order,
    freeze_prefix,
    freeze_suffix,
    mlp,
    saved_activation_bytes,
    small_cnn,
    time_repeats,
)
from autograd_cost.timing import (
    garbage_collection_paused,
    interleaved_samples,
    interleaved_seconds,
    median_ratio,
    summarize_times,
)

BATCH, IN, WIDTH, DEPTH, OUT = 8, 64, 32, 3, 10
SHAPES = [(IN, WIDTH)] + [(WIDTH, WIDTH)] * (DEPTH - 1) + [(WIDTH, OUT)]  # (in, out) per Linear


def matmul_flops(n_in: int, n_out: int) -> int:
    return 2 * BATCH * n_in * n_out


def expected_backward(trainable: list[bool]) -> int:
    """Weight grads for trainable layers; input grads wherever something earlier needs grad."""
    total = 0
    for i, (n_in, n_out) in enumerate(SHAPES):
        if trainable[i]:
            total += matmul_flops(n_in, n_out)
        if any(trainable[:i]):
            total += matmul_flops(n_in, n_out)
    return total


@pytest.fixture
def model_and_input():
    model = mlp(width=WIDTH, depth=DEPTH)
    x = torch.randn(BATCH, IN)
    return model, x, execution_order(model, x)


def test_forward_flops_are_two_batch_in_out_per_matmul(model_and_input):
    model, x, _ = model_and_input
    assert count_flops(model, x).forward == sum(matmul_flops(i, o) for i, o in SHAPES)


def test_unfrozen_backward_is_twice_forward_minus_the_first_input_grad(model_and_input):
    model, x, _ = model_and_input
    flops = count_flops(model, x)
    assert flops.backward == 2 * flops.forward - matmul_flops(IN, WIDTH)
    assert flops.backward == expected_backward([True] * len(SHAPES))


@pytest.mark.parametrize("depth", range(len(SHAPES) + 1))
def test_prefix_freeze_backward_flops(model_and_input, depth):
    model, x, order = model_and_input
    freeze_prefix(model, depth, order)
    trainable = [i >= depth for i in range(len(SHAPES))]
    assert backward_flops(model, x) == expected_backward(trainable)


@pytest.mark.parametrize("depth", range(len(SHAPES) + 1))
def test_suffix_freeze_backward_flops(model_and_input, depth):
    model, x, order = model_and_input
    freeze_suffix(model, depth, order)
    trainable = [i < len(SHAPES) - depth for i in range(len(SHAPES))]
    assert backward_flops(model, x) == expected_backward(trainable)


def test_prefix_saves_more_than_suffix_at_every_inner_depth(model_and_input):
    model, x, order = model_and_input
    for depth in range(1, len(SHAPES)):
        freeze_prefix(model, depth, order)
        prefix = backward_flops(model, x)
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_suffix(model, depth, order)
        suffix = backward_flops(model, x)
        for p in model.parameters():
            p.requires_grad_(True)
        assert prefix < suffix


def test_counting_leaves_no_grads_behind(model_and_input):
    model, x, _ = model_and_input
    count_flops(model, x)
    assert all(p.grad is None for p in model.parameters())


def expected_saved_bytes(first_trainable: int) -> int:
    """Input of the first trainable Linear, plus each later hidden ReLU output (float32)."""
    if first_trainable >= len(SHAPES):
        return 0
    n_in = SHAPES[first_trainable][0]
    relus_after = DEPTH - first_trainable
    return 4 * BATCH * (n_in + WIDTH * relus_after)


@pytest.mark.parametrize("depth", range(len(SHAPES) + 1))
def test_saved_bytes_follow_the_formula_for_prefix_freezing(model_and_input, depth):
    model, x, order = model_and_input
    freeze_prefix(model, depth, order)
    assert saved_activation_bytes(model, x) == expected_saved_bytes(depth)


def test_suffix_freezing_keeps_every_activation_but_the_frozen_weight_inputs(model_and_input):
    model, x, order = model_and_input
    unfrozen = saved_activation_bytes(model, x)
    freeze_suffix(model, 1, order)  # the head needs no weight grad, but its input is a ReLU output
    assert saved_activation_bytes(model, x) == unfrozen


def test_saved_bytes_exclude_parameters_and_batchnorm_buffers():
    model = small_cnn(channels=2, hidden=4)
    x = torch.randn(2, 1, 8, 8)
    total = saved_activation_bytes(model, x)
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert total > 0
    model.requires_grad_(False)
    assert saved_activation_bytes(model, x) == 0
    assert param_bytes > 0


def test_summarize_times_median_and_iqr():
    timing = summarize_times([1.0, 2.0, 3.0, 4.0, 100.0])
    assert timing.median == 3.0
    assert timing.iqr == pytest.approx(2.0)
    assert timing.repeats == 5
    with pytest.raises(ValueError, match="no timing samples"):
        summarize_times([])


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
    assert calls == (["a"] * 3 + ["b"] * 3) * 5  # one warm-up round, then 4 timed rounds
    assert all(t > 0 for s in samples.values() for t in s)


def test_runs_that_report_their_own_seconds_are_believed():
    timings = interleaved_seconds({"a": lambda: 1.0, "b": lambda: 3.0}, warmup_rounds=0,
                                  min_repeats=3, max_repeats=3)
    assert (timings["a"].median, timings["b"].median) == (1.0, 3.0)
    assert timings["b"].iqr == 0.0 and timings["b"].repeats == 3


def test_interleaving_stops_early_once_spreads_are_small():
    samples = interleaved_samples({"a": lambda: 1.0}, min_repeats=5, max_repeats=50)
    assert len(samples["a"]) == 5


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
    import gc

    assert gc.isenabled()
    seen = interleaved_samples({"a": lambda: float(gc.isenabled())}, warmup_rounds=0,
                               min_repeats=2, max_repeats=2)
    assert seen["a"] == [0.0, 0.0] and gc.isenabled()
    with pytest.raises(KeyError), garbage_collection_paused():
        raise KeyError
    assert gc.isenabled()


def attention_flops(batch: int, heads: int, seq: int, head_dim: int) -> tuple[int, int]:
    """Analytic attention FLOPs: forward QK^T and PV; backward recomputes QK^T, then dP, dV,
    dQ, dK (the flash-attention backward that torch's formula describes): 2 FLOPs per MAC."""
    one_matmul = 2 * batch * heads * seq * seq * head_dim
    return 2 * one_matmul, 5 * one_matmul


def test_attention_is_counted_on_the_cpu() -> None:
    from autograd_cost.cost import flop_counter

    b, h, s, d = 2, 3, 8, 4
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    with flop_counter() as forward_counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    with flop_counter() as backward_counter:
        out.sum().backward()
    assert (forward_counter.get_total_flops(), backward_counter.get_total_flops()) == (
        attention_flops(b, h, s, d)
    )


def test_tiny_transformer_attention_flops_match_the_analytic_count() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from autograd_cost import example_input, tiny_transformer

    batch, dim, heads, blocks, max_len = 4, 32, 4, 2, 16
    model = tiny_transformer(vocab=50, dim=dim, heads=heads, blocks=blocks, max_len=max_len)
    x = example_input(model, batch=batch)
    with FlopCounterMode(display=False) as stock:  # torch's registry alone: attention is 0
        model(x).sum().backward()
    forward, backward = attention_flops(batch, heads, max_len, dim // heads)
    flops = count_flops(model, x)
    assert flops.forward + flops.backward - stock.get_total_flops() == blocks * (
        forward + backward
    )
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        math_forward = count_flops(model, x).forward  # QK^T and PV as two counted bmm
    assert flops.forward == math_forward


def test_summarize_times_gives_quartiles_for_error_bars() -> None:
    timing = summarize_times([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (timing.q1, timing.median, timing.q3, timing.iqr) == (2.0, 3.0, 4.0, 2.0)
    assert timing.error_bar() == (1.0, 1.0)
    skewed = summarize_times([1.0, 1.0, 1.0, 2.0, 9.0])
    assert skewed.error_bar() == (0.0, 1.0)
