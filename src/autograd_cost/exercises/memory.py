"""Self-checks for notebook 07's exercises: training state bytes, the crossover batch, the peak."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from autograd_cost.core import ModelInput
from autograd_cost.cost import saved_activation_bytes
from autograd_cost.exercises import check_answer, report, require_int
from autograd_cost.memory import estimate_peak, memory_breakdown
from autograd_cost.models import example_input

PEAK_TOLERANCE = 0.10
MAX_BATCH = 1 << 16


def check_state_bytes(answer: int, model: nn.Module, example: ModelInput,
                      frozen: Sequence[str], optimizer: str = "adam") -> bool:
    """Check predicted gradient + optimizer-state bytes of one step, measured (notebook 07)."""
    require_int(answer)
    measured = memory_breakdown(model, example, frozen=frozen, optimizer=optimizer)
    truth = measured.gradients_bytes + measured.optimizer_state_bytes
    if answer != truth:
        unfrozen = estimate_peak(model, example, frozen=[], optimizer=optimizer)
        counters = 4 * len(list(model.parameters()))  # at most one step counter per tensor
        if answer == unfrozen.gradients_bytes + unfrozen.optimizer_state_bytes:
            return report(False, "", "that counts every parameter: frozen ones get no "
                                     "gradient and no state.")
        if optimizer in ("adam", "adamw") and truth - counters <= answer < truth:
            return report(False, "", "close: Adam also keeps a 4-byte float32 step counter "
                                     "per trainable tensor.")
    return check_answer(answer, truth, f"{truth:,} bytes of gradients and {optimizer} state.",
                        "4 bytes of gradient per trainable parameter, plus what the "
                        "optimizer keeps.")


def crossover_batch(model: nn.Module, optimizer: str = "adam",
                    frozen: Sequence[str] = ()) -> int:
    """Smallest batch whose saved activations reach gradients + optimizer state.

    The model must be a course model, so that `example_input` can build any batch.
    """
    estimate = estimate_peak(model, example_input(model, batch=1), frozen=list(frozen),
                             optimizer=optimizer)
    fixed = estimate.gradients_bytes + estimate.optimizer_state_bytes

    def saved(batch: int) -> int:
        return saved_activation_bytes(model, example_input(model, batch=batch),
                                      frozen=list(frozen))

    low, high = 1, 1
    while saved(high) < fixed:
        if high >= MAX_BATCH:
            raise ValueError(f"saved activations stay below {fixed:,} bytes up to batch "
                             f"{MAX_BATCH}")
        low, high = high, 2 * high
    while low < high:  # saved bytes grow with the batch: bisect for the first that reaches
        middle = (low + high) // 2
        if saved(middle) >= fixed:
            high = middle
        else:
            low = middle + 1
    return high


def check_crossover_batch(answer: int, model: nn.Module, optimizer: str = "adam") -> bool:
    """Check the predicted batch where saved activations reach grads + state (notebook 07)."""
    require_int(answer)
    truth = crossover_batch(model, optimizer)
    return check_answer(answer, truth, f"from batch {truth} on, saved activations weigh at "
                                       "least as much as gradients and optimizer state.",
                        "divide gradient + state bytes by the saved bytes per sample, and "
                        "round up.")


def check_peak_estimate(answer: int, model: nn.Module, example: ModelInput,
                        frozen: Sequence[str] = (), optimizer: str = "adam") -> bool:
    """Check a predicted peak against the measured one, within 10% (notebook 07)."""
    require_int(answer)
    truth = memory_breakdown(model, example, frozen=list(frozen), optimizer=optimizer).peak_bytes
    return check_answer(answer, truth, "within 10% of the measured peak.",
                        "parameters + optimizer state + the larger of the backward and the "
                        "optimizer-step terms.", tolerance=PEAK_TOLERANCE, relative=True)
