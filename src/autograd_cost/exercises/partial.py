"""Self-checks for notebook 04's exercises: partial freezing, its FLOPs and Adam's drift."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.chapters.partial import freeze_rows, question_net
from autograd_cost.chapters.partial_hooks import frozen_entry_change, mask_gradients
from autograd_cost.core import check_number, check_positive_int
from autograd_cost.cost import count_flops
from autograd_cost.exercises import check_answer, report, require_int
from autograd_cost.training import training_step

QUESTION_PLAN = {"linear1": 1, "linear2": 2, "linear3": 1}


def _split_backward_flops(in_features: int, out_features: int, frozen_rows: int, batch: int) -> int:
    """Backward FLOPs of one row-split Linear on an input that needs no grad."""
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features, low=2)
    check_positive_int("batch", batch)
    check_positive_int("frozen_rows", frozen_rows)
    if frozen_rows >= out_features:
        raise ValueError(f"frozen_rows must be in 1..{out_features - 1}, got {frozen_rows}")
    torch.manual_seed(0)
    layer = freeze_rows(nn.Linear(in_features, out_features), frozen_rows)
    return count_flops(layer, torch.zeros(batch, in_features)).backward


def check_split_backward_flops(
    answer: int, in_features: int, out_features: int, frozen_rows: int, batch: int
) -> bool:
    """Check a predicted backward FLOP count of a row-split Linear (notebook 04)."""
    answer = require_int(answer)
    truth = _split_backward_flops(in_features, out_features, frozen_rows, batch)
    if answer != truth and answer in (2 * truth, truth // 2):
        return report(False, "", "off by a factor of 2: a multiply-add is 2 FLOPs.")
    if answer == 2 * batch * in_features * out_features:
        return report(False, "", "that is the full weight gradient; which rows does the split "
                                 "layer skip?")
    return check_answer(answer, truth, f"{truth:,} backward FLOPs: only the trainable rows' "
                        "gradient.", "the input needs no grad, so only one matmul is left. "
                        "Which one, how big?")


def _hook_entries_move(weight_decay: float, unmasked_steps: int) -> bool:
    """Whether 50 Adam steps move gradient-masked entries of the question's net.

    Adam (lr 0.01) first trains `unmasked_steps` steps without the mask, then the mask goes on.
    """
    check_number("weight_decay", weight_decay, low=0.0)
    check_positive_int("unmasked_steps", unmasked_steps, low=0)
    model = question_net()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(20, 4, generator=generator)
    targets = torch.randint(2, (20,), generator=generator)

    def loss_fn(output: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, targets)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(unmasked_steps):
        training_step(model, inputs, loss_fn, optimizer)
    mask_gradients(model, QUESTION_PLAN)
    return frozen_entry_change(model, QUESTION_PLAN, inputs, loss_fn, 50, optimizer) > 0


def check_hook_entries_move(answer: bool, weight_decay: float, unmasked_steps: int) -> bool:
    """Check a yes/no prediction: do Adam's steps move the hook-masked entries? (notebook 04)"""
    if not isinstance(answer, bool):
        raise TypeError(f"answer must be True or False, got {answer!r}")
    truth = _hook_entries_move(weight_decay, unmasked_steps)
    return report(answer == truth, "that is what 50 Adam steps do to the masked entries.",
                  "a zero gradient is not the only input to Adam's update: look at what "
                  "weight_decay adds to the gradient and what exp_avg remembers from earlier "
                  "steps.")
