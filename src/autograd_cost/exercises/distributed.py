"""Self-checks for notebook 06's exercises: DDP all-reduce bytes and ring all-reduce time."""

from __future__ import annotations

import math

from autograd_cost.chapters.ddp_tables import ring_allreduce_seconds
from autograd_cost.exercises import check_answer, report, require_number
from autograd_cost.freezing import execution_order, freeze_units, prefix_units
from autograd_cost.launch import expected_allreduce_bytes
from autograd_cost.models import example_input, mlp


def allreduce_bytes_truth(width: int, depth: int, freeze_depth: int) -> int:
    """Bytes DDP all-reduces per step for mlp(width, depth) with a frozen prefix."""
    model = mlp(width=width, depth=depth)
    order = execution_order(model, example_input(model, batch=2))
    freeze_units(model, prefix_units(order, freeze_depth))
    return expected_allreduce_bytes(model)


def check_allreduce_bytes(answer: int, width: int, depth: int, freeze_depth: int) -> bool:
    """Check predicted all-reduce bytes per step for a prefix-frozen MLP (notebook 06)."""
    answer = require_number(answer)
    truth = allreduce_bytes_truth(width, depth, freeze_depth)
    everything = sum(p.numel() * p.element_size() for p in mlp(width=width, depth=depth)
                     .parameters())
    if answer != truth and answer == everything:
        return report(False, "", "that counts every parameter; frozen ones are not bucketed.")
    if answer != truth and answer * 4 == truth:
        return report(False, "", "that is a count of numbers; each float32 gradient is 4 bytes.")
    return check_answer(answer, truth, "DDP all-reduces exactly that many gradient bytes per step.",
                        "add weights and biases of the units left trainable.")


def check_ring_seconds(
    answer: float, nbytes: float, world_size: int, bytes_per_second: float
) -> bool:
    """Check a predicted ring all-reduce time within 1% (notebook 06)."""
    answer = require_number(answer)
    truth = ring_allreduce_seconds(nbytes, world_size, bytes_per_second)
    close = [math.isclose(answer, value, rel_tol=0.01) for value in
             (truth, nbytes / bytes_per_second, truth * 8, truth / 8)]
    if not close[0] and close[1]:
        return report(
            False, "", "each rank sends (and receives) 2(n-1)/n x the bytes over its link, not 1x."
        )
    if not close[0] and (close[2] or close[3]):
        return report(False, "", "mind bits versus bytes: 100 Gb/s is 12.5 GB/s.")
    return check_answer(answer, truth, "that is the bandwidth term of a ring all-reduce.",
                        "time = 2(n-1)/n x bytes / (bytes per second).", tolerance=0.01,
                        relative=True)
