"""Self-checks for notebook 02's exercises: FLOP ratios, the step FLOP estimate, FLOP shares."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from autograd_cost.core import ModelInput
from autograd_cost.cost import count_flops
from autograd_cost.exercises import check_answer, report, require_number
from autograd_cost.freezing import check_unit_names, execution_order, units, units_to_freeze

TOLERANCE = 0.01


def _backward_flops(model: nn.Module, example_input: ModelInput, frozen: Sequence[str]) -> int:
    return count_flops(model, example_input, frozen=list(frozen)).backward


def check_flop_ratio(
    answer: float, model: nn.Module, example_input: ModelInput, mode: str, freeze_depth: int
) -> bool:
    """Check a predicted backward-FLOP ratio (frozen / unfrozen) to ±0.01 (notebook 02)."""
    answer = require_number(answer)
    frozen = units_to_freeze(execution_order(model, example_input), mode, freeze_depth)
    truth = (_backward_flops(model, example_input, frozen)
             / _backward_flops(model, example_input, []))
    why = ("a frozen prefix removes weight-gradient AND input-gradient matmuls." if mode == "prefix"
           else "a frozen suffix removes only weight-gradient matmuls; input gradients remain.")
    return check_answer(answer, truth, f"freezing the {mode} of {freeze_depth} units leaves that "
                        "share.", why, tolerance=TOLERANCE)


def check_step_bound(answer: float, model: nn.Module, example_input: ModelInput) -> bool:
    """Check a predicted FLOP estimate (F+B)/F of the best step speedup, ±0.01 (notebook 02)."""
    answer = require_number(answer)
    flops = count_flops(model, example_input, frozen=[])
    truth = (flops.forward + flops.backward) / flops.forward
    return check_answer(answer, truth, "that is the FLOP estimate (F+B)/F of the largest step "
                        "speedup.", "the forward pass is always paid; divide F+B by F.",
                        tolerance=TOLERANCE)


def check_flop_saving(
    answer: float, model: nn.Module, example_input: ModelInput, frozen_units: Sequence[str]
) -> bool:
    """Check a predicted share of backward FLOPs that a freeze removes, to ±0.01 (notebook 02)."""
    answer = require_number(answer)
    check_unit_names(model, frozen_units)
    truth = 1 - (_backward_flops(model, example_input, frozen_units)
                 / _backward_flops(model, example_input, []))
    owned = units(model)
    frozen_params = sum(p.numel() for name in frozen_units for p in owned[name])
    share = frozen_params / sum(p.numel() for p in model.parameters())
    if abs(answer - truth) > TOLERANCE and abs(answer - share) <= TOLERANCE:
        return report(False, "", "that is the share of parameters frozen, not of FLOPs.")
    return check_answer(answer, truth, "that is the share of backward FLOPs this freeze removes.",
                        "count each frozen layer's weight-gradient FLOPs.", tolerance=TOLERANCE)
