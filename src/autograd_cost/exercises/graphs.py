"""Self-checks for notebook 01's exercises: graphs, node counts, FLOPs and saved bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from autograd_cost.core import ModelInput, model_loss
from autograd_cost.cost import count_flops, saved_activation_bytes
from autograd_cost.exercises import check_answer, report, require_int
from autograd_cost.freezing import execution_order, frozen_state
from autograd_cost.graph import node_counts


def check_node_counts(
    answer: Mapping[str, int],
    model: nn.Module,
    example_input: ModelInput,
    frozen_units: Sequence[str],
) -> bool:
    """Check a predicted count of backward nodes per type after freezing (notebook 01)."""
    if not isinstance(answer, Mapping):
        raise TypeError(f"answer must be a dict of node type -> count, got "
                        f"{type(answer).__name__}")
    for count in answer.values():
        require_int(count)
    with frozen_state(model, frozen_units):
        truth = node_counts(model_loss(model, example_input))
    wrong = sorted(k for k in set(truth) | set(answer) if truth.get(k, 0) != answer.get(k, 0))
    if not wrong:
        return report(True, f"{sum(truth.values())} nodes, every type counted right.", "")
    directions = []
    for kind in wrong:
        guess, real = answer.get(kind, 0), truth.get(kind, 0)
        directions.append(f"{kind} is too {'high' if guess > real else 'low'}")
    hint = "; ".join(directions) + ". Which nodes still lead to a trainable leaf?"
    return report(False, "", hint)


def check_backward_flops(
    answer: int,
    model: nn.Module,
    example_input: ModelInput,
    frozen_units: Sequence[str],
) -> bool:
    """Check a predicted backward FLOP count for a freeze (notebook 01)."""
    require_int(answer)
    truth = count_flops(model, example_input, frozen=frozen_units).backward
    if truth and answer != truth and answer in (2 * truth, truth // 2):
        return report(False, "", "off by a factor of 2: a multiply-add counts as 2 FLOPs, "
                                 "each matmul once.")
    return check_answer(answer, truth, f"{truth:,} backward FLOPs.",
                        "count, per Linear, a weight-gradient matmul if it is trainable and an "
                        "input-gradient matmul if anything before it is trainable.")


def check_saved_bytes(
    answer: int,
    model: nn.Module,
    example_input: ModelInput,
    frozen_units: Sequence[str],
) -> bool:
    """Check a predicted number of activation bytes saved for backward (notebook 01)."""
    require_int(answer)
    truth = saved_activation_bytes(model, example_input, frozen=frozen_units)
    return check_answer(answer, truth, f"{truth:,} bytes saved for backward.",
                        "which tensors does each backward node need to keep?")


def check_units_order(answer: Sequence[str], model: nn.Module, example_input: ModelInput) -> bool:
    """Check a predicted forward-execution order of a model's units (notebook 01)."""
    truth = execution_order(model, example_input)
    if list(answer) == truth:
        return report(True, "that is the order the forward pass uses the parameters.", "")
    if sorted(answer) != sorted(truth):
        return report(False, "", f"list each of the {len(truth)} units exactly once.")
    first_wrong = next(i for i, (a, t) in enumerate(zip(answer, truth, strict=True)) if a != t)
    hint = f"entry {first_wrong} (counting from 0) is wrong; any before it are right."
    return report(False, "", hint)
