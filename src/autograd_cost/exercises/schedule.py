"""Self-checks for notebook 05's exercises: freeze schedules, FLOP savings, the optimizer."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from torch import nn

from autograd_cost.chapters.transfer import FreezeSchedule, ProgressiveFreezing
from autograd_cost.exercises import check_answer, report, require_int, require_number
from autograd_cost.freezing import preserved_state, units
from autograd_cost.training import optimizer_params


def check_frozen_count(
    answer: int, schedule: FreezeSchedule, progress: float, num_units: int
) -> bool:
    """Check a predicted number of frozen units at `progress` (notebook 05)."""
    truth = schedule.count(progress, num_units)
    return check_answer(
        require_int(answer), truth, f"{truth} of {num_units} units are frozen at that point.",
        "the fraction is 0 until freeze_start, then grows linearly to freeze_level at the end; "
        "multiply by the number of units and round down.")


def schedule_saving(
    schedule: FreezeSchedule, steps: int, backward_by_depth: Sequence[int], forward: int
) -> float:
    """The FLOP-model saving of `schedule` over `steps` steps, a fraction of one step.

    At step i the freeze depth is d = `schedule.count(i / steps, units)` units, saving
    backward_by_depth[0] - backward_by_depth[d] FLOPs; the mean saving is divided by one
    unfrozen step's FLOPs, forward + backward_by_depth[0].
    """
    if forward < 0 or not backward_by_depth or min(backward_by_depth) < 0:
        raise ValueError("FLOP counts must be non-negative and backward_by_depth non-empty")
    if steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    num_units = len(backward_by_depth) - 1
    depths = [schedule.count(step / steps, num_units) for step in range(steps)]
    full = backward_by_depth[0]
    return statistics.mean(full - backward_by_depth[d] for d in depths) / (forward + full)


def check_expected_saving(
    answer: float,
    schedule: FreezeSchedule,
    steps: int,
    backward_by_depth: Sequence[int],
    forward: int,
    tolerance: float = 0.005,
) -> bool:
    """Check a predicted FLOP-model saving, a fraction of one step's FLOPs (notebook 05)."""
    answer = require_number(answer)
    if answer > 1:
        return report(False, "", "give a fraction between 0 and 1, not a percentage.")
    truth = schedule_saving(schedule, steps, backward_by_depth, forward)
    return check_answer(
        answer, truth, "that is the share of a step's FLOPs the schedule saves.",
        "average, over the steps, the backward FLOPs saved at that step's frozen count, then "
        "divide by one unfrozen step's forward plus backward FLOPs.", tolerance=tolerance)


def check_optimizer_units(
    answer: Sequence[str],
    model: nn.Module,
    order: Sequence[str],
    schedule: FreezeSchedule,
    progress: float,
) -> bool:
    """Check which units the optimizer still updates after update(progress) (notebook 05)."""
    if isinstance(answer, str):
        return report(False, "", "give a list of unit names, not one string.")
    with preserved_state(model):
        for param in model.parameters():
            param.requires_grad_(True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        ProgressiveFreezing(model, optimizer, order, schedule).update(progress)
        held = {id(p) for p in optimizer_params(optimizer)}
        truth = [n for n in order if all(id(p) in held for p in units(model)[n])]
    if sorted(answer) == sorted(truth):
        return report(True, f"the optimizer still updates {len(truth)} units.", "")
    if len(answer) != len(truth):
        hint = f"you listed {len(answer)} units; count again with the schedule's formula."
    else:
        hint = "right number, wrong units: which end of the execution order freezes first?"
    return report(False, "", hint)
