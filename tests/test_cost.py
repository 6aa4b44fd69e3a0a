"""FLOPs and bytes against analytic formulas and hand counts (timing: test_timing.py)."""

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
)
from autograd_cost.cost import gradient_bytes, optimizer_state_bytes, storage_bytes

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
    model = small_cnn(channels=2, hidden=4)  # conv1 1->2, conv2 2->4, fc 64->4, head 4->10
    x = torch.randn(2, 1, 8, 8)
    floats = {  # what each backward node keeps, by hand from the shapes (float32, batch 2)
        "conv1: the input x": 2 * 1 * 8 * 8,
        "bn1: its input (conv1's output)": 2 * 2 * 8 * 8,
        "bn1: batch mean and inverse std": 2 + 2,
        "relu1: its output (also conv2's input, counted once)": 2 * 2 * 8 * 8,
        "bn2: its input (conv2's output)": 2 * 4 * 8 * 8,
        "bn2: batch mean and inverse std": 4 + 4,
        "relu2: its output (also the pool's input)": 2 * 4 * 8 * 8,
        "fc: its input (the pooled, flattened output)": 2 * 4 * 4 * 4,
        "relu3: its output (also head's input)": 2 * 4,
    }
    pool_indices = 8 * (2 * 4 * 4 * 4)  # max_pool2d keeps int64 indices of the maxima
    # Neither weights (kept by conv, bn, fc, head) nor BatchNorm's running statistics count.
    assert saved_activation_bytes(model, x) == 4 * sum(floats.values()) + pool_indices
    model.requires_grad_(False)
    assert saved_activation_bytes(model, x) == 0


def test_frozen_none_counts_as_configured_and_a_list_freezes_exactly_those(model_and_input):
    model, x, order = model_and_input
    model.get_submodule(order[0]).requires_grad_(False)  # the user's own freeze
    configured = [p.requires_grad for p in model.parameters()]
    assert backward_flops(model, x) == expected_backward([False, True, True, True])
    assert count_flops(model, x, frozen=None).backward == expected_backward(
        [False, True, True, True])
    assert count_flops(model, x, frozen=[order[-1]]).backward == expected_backward(
        [True, True, True, False])  # exactly the head: the user's fc1 freeze is lifted
    assert count_flops(model, x, frozen=[]).backward == expected_backward([True] * 4)
    unfrozen_bytes = 4 * BATCH * (IN + DEPTH * WIDTH)  # x and each ReLU output
    assert saved_activation_bytes(model, x, frozen=[]) == unfrozen_bytes
    assert saved_activation_bytes(model, x) == 4 * BATCH * DEPTH * WIDTH  # fc1 keeps no x
    assert [p.requires_grad for p in model.parameters()] == configured
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="unknown unit"):
        count_flops(model, x, frozen=["fc9"])


def test_storage_gradient_and_optimizer_state_bytes():
    weight = torch.zeros(3, 5)
    assert storage_bytes([weight, weight[0], weight.t()]) == 3 * 5 * 4  # views count once
    assert storage_bytes([weight, torch.zeros(2, dtype=torch.float64)]) == 60 + 16
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    assert gradient_bytes(model) == 0  # no .grad yet
    model[0].requires_grad_(False)
    model(torch.ones(1, 4)).sum().backward()
    assert gradient_bytes(model) == 4 * (3 * 2 + 2)  # the second Linear's weight and bias
    adam = torch.optim.Adam(model[1].parameters())
    assert optimizer_state_bytes(adam) == 0  # state appears at the first step
    adam.step()
    # exp_avg and exp_avg_sq per parameter, plus a float32 step counter per tensor
    assert optimizer_state_bytes(adam) == 2 * 4 * (3 * 2 + 2) + 4 * 2
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        optimizer_state_bytes("adam")


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
