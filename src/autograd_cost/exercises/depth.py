"""Self-checks for notebook 02's exercises: FLOP ratios, the step FLOP estimate, FLOP shares."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from autograd_cost.core import ModelInput
from autograd_cost.exercises import report
from autograd_cost.freezing import execution_order, units, units_to_freeze
from autograd_cost.sweeps import count_flops_under, step_speedup_bound

TOLERANCE = 0.01


def _check_number(answer: float) -> None:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise TypeError(f"answer must be a number, got {type(answer).__name__}")


def check_flop_ratio(
    answer: float, model: nn.Module, example_input: ModelInput, mode: str, depth: int
) -> bool:
    """Check a predicted backward-FLOP ratio (frozen / unfrozen) to ±0.01 (notebook 02)."""
    _check_number(answer)
    frozen = units_to_freeze(execution_order(model, example_input), mode, depth)
    truth = (count_flops_under(model, example_input, frozen).backward
             / count_flops_under(model, example_input, []).backward)
    if abs(answer - truth) <= TOLERANCE:
        return report(True, f"freezing the {mode} of {depth} units leaves that share.", "")
    hint = "too high" if answer > truth else "too low"
    if mode == "prefix":
        hint += ": a frozen prefix removes weight-gradient AND input-gradient matmuls."
    else:
        hint += ": a frozen suffix removes only weight-gradient matmuls; input gradients remain."
    return report(False, "", hint)


def check_step_bound(answer: float, model: nn.Module, example_input: ModelInput) -> bool:
    """Check a predicted FLOP estimate (F+B)/F of the best step speedup, ±0.01 (notebook 02)."""
    _check_number(answer)
    flops = count_flops_under(model, example_input, [])
    truth = step_speedup_bound(flops.forward, flops.backward)
    if abs(answer - truth) <= TOLERANCE:
        return report(True, "that is the FLOP estimate (F+B)/F of the largest step speedup.", "")
    hint = "too high" if answer > truth else "too low"
    return report(False, "", hint + ": the forward pass is always paid; divide F+B by F.")


def check_flop_saving(
    answer: float, model: nn.Module, example_input: ModelInput, frozen_units: Sequence[str]
) -> bool:
    """Check a predicted share of backward FLOPs that a freeze removes, to ±0.01 (notebook 02)."""
    _check_number(answer)
    truth = 1 - (count_flops_under(model, example_input, frozen_units).backward
                 / count_flops_under(model, example_input, []).backward)
    if abs(answer - truth) <= TOLERANCE:
        return report(True, "that is the share of backward FLOPs this freeze removes.", "")
    owned = units(model)
    frozen_params = sum(p.numel() for name in frozen_units for p in owned[name])
    share = frozen_params / sum(p.numel() for p in model.parameters())
    if abs(answer - share) <= TOLERANCE:
        return report(False, "", "that is the share of parameters frozen, not of FLOPs.")
    hint = "too high" if answer > truth else "too low"
    return report(False, "", hint + ": count each frozen layer's weight-gradient FLOPs.")
