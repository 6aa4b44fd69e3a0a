"""Self-checks for notebook 04's exercises: partial freezing, its FLOPs and Adam's drift."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.cost import count_flops
from autograd_cost.exercises import report
from autograd_cost.partial import (
    freeze_rows,
    frozen_entry_change,
    hook_freeze,
    plan_masks,
    question_batch,
    question_net,
    train_steps,
)


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")


def split_backward_flops(in_features: int, out_features: int, frozen_rows: int, batch: int) -> int:
    """Backward FLOPs of one row-split Linear on an input that needs no grad (notebook 04)."""
    _check_count("in_features", in_features, 1, 1 << 16)
    _check_count("out_features", out_features, 2, 1 << 16)
    _check_count("frozen_rows", frozen_rows, 1, out_features - 1)
    _check_count("batch", batch, 1, 1 << 16)
    torch.manual_seed(0)
    layer = freeze_rows(nn.Linear(in_features, out_features), frozen_rows)
    return count_flops(layer, torch.zeros(batch, in_features)).backward


def check_split_backward_flops(
    answer: int, in_features: int, out_features: int, frozen_rows: int, batch: int
) -> bool:
    """Check a predicted backward FLOP count of a row-split Linear (notebook 04)."""
    truth = split_backward_flops(in_features, out_features, frozen_rows, batch)
    if answer == truth:
        return report(True, f"{truth:,} backward FLOPs: only the trainable rows' gradient.", "")
    if answer in (2 * truth, truth // 2):
        hint = "off by a factor of 2: a multiply-add is 2 FLOPs."
    elif answer == 2 * batch * in_features * out_features:
        hint = "that is the full weight gradient; which rows does the split layer skip?"
    else:
        hint = "too high" if answer > truth else "too low"
        hint += ": the input needs no grad, so only one matmul is left. Which one, how big?"
    return report(False, "", hint)


def hook_entries_move(weight_decay: float, unmasked_steps: int) -> bool:
    """Whether 50 Adam steps move gradient-masked entries of the question's net (notebook 04).

    The optimizer first trains `unmasked_steps` steps without the mask, then the mask goes on.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    _check_count("unmasked_steps", unmasked_steps, 0, 1000)
    model = question_net()
    inputs, targets = question_batch()

    def loss_fn(output: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, targets)

    plan = {"linear1": 1, "linear2": 2, "linear3": 1}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    train_steps(model, optimizer, inputs, loss_fn, unmasked_steps)
    hooked = hook_freeze(model, plan)
    state = optimizer.state_dict()
    optimizer = torch.optim.Adam(hooked.parameters(), lr=1e-2, weight_decay=weight_decay)
    optimizer.load_state_dict(state)
    change = frozen_entry_change(hooked, plan_masks(model, plan), inputs, loss_fn, 50, optimizer)
    return change > 0


def check_hook_entries_move(answer: bool, weight_decay: float, unmasked_steps: int) -> bool:
    """Check a yes/no prediction: do Adam's steps move the hook-masked entries? (notebook 04)"""
    if not isinstance(answer, bool):
        raise TypeError(f"answer must be True or False, got {answer!r}")
    truth = hook_entries_move(weight_decay, unmasked_steps)
    if answer == truth:
        return report(True, "that is what 50 Adam steps do to the masked entries.", "")
    hint = "a zero gradient is not the only input to Adam's update: look at what "
    hint += "weight_decay adds to the gradient and what exp_avg remembers from earlier steps."
    return report(False, "", hint)
