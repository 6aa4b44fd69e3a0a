"""Self-checks for notebook 06's exercises: DDP all-reduce bytes and ring all-reduce time."""

from __future__ import annotations

import math

from autograd_cost.distributed import expected_allreduce_bytes, ring_allreduce_seconds
from autograd_cost.exercises import report
from autograd_cost.freezing import execution_order, freeze_units, prefix_units
from autograd_cost.models import example_input, mlp


def _check_number(answer: float) -> None:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise TypeError(f"answer must be a number, got {type(answer).__name__}")


def allreduce_bytes_truth(width: int, depth: int, freeze_depth: int) -> int:
    """Bytes DDP all-reduces per step for mlp(width, depth) with a frozen prefix (notebook 06)."""
    model = mlp(width=width, depth=depth)
    order = execution_order(model, example_input(model, batch=2))
    freeze_units(model, prefix_units(order, freeze_depth))
    return expected_allreduce_bytes(model)


def check_allreduce_bytes(answer: int, width: int, depth: int, freeze_depth: int) -> bool:
    """Check predicted all-reduce bytes per step for a prefix-frozen MLP (notebook 06)."""
    _check_number(answer)
    truth = allreduce_bytes_truth(width, depth, freeze_depth)
    if answer == truth:
        return report(True, "DDP all-reduces exactly that many gradient bytes per step.", "")
    model = mlp(width=width, depth=depth)
    everything = sum(p.numel() * p.element_size() for p in model.parameters())
    if answer == everything:
        return report(False, "", "that counts every parameter; frozen ones are not bucketed.")
    if answer * 4 == truth:
        return report(False, "", "that is a count of numbers; each float32 gradient is 4 bytes.")
    hint = "too high" if answer > truth else "too low"
    return report(False, "", f"{hint}: add weights and biases of the units left trainable.")


def check_ring_seconds(
    answer: float, nbytes: float, world_size: int, bytes_per_second: float
) -> bool:
    """Check a predicted ring all-reduce time within 1% (notebook 06)."""
    _check_number(answer)
    truth = ring_allreduce_seconds(nbytes, world_size, bytes_per_second)
    if math.isclose(answer, truth, rel_tol=0.01):
        return report(True, "that is the bandwidth term of a ring all-reduce.", "")
    if math.isclose(answer, nbytes / bytes_per_second, rel_tol=0.01):
        return report(
            False, "", "each rank sends (and receives) 2(n-1)/n x the bytes over its link, not 1x."
        )
    if any(math.isclose(answer, truth * factor, rel_tol=0.01) for factor in (8, 1 / 8)):
        return report(False, "", "mind bits versus bytes: 100 Gb/s is 12.5 GB/s.")
    hint = "too high" if answer > truth else "too low"
    return report(False, "", f"{hint}: time = 2(n-1)/n x bytes / (bytes per second).")
