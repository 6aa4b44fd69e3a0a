"""Self-checks for notebook 09's exercises: compiles of a freeze schedule, compiled saved bytes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autograd_cost.chapters.compile import run_schedule
from autograd_cost.compiled import count_compiles, partition_recorder
from autograd_cost.core import check_positive_int
from autograd_cost.cost import saved_activation_bytes
from autograd_cost.exercises import check_answer, require_int, require_number
from autograd_cost.freezing import frozen_state
from autograd_cost.models import mlp


def check_schedule_compiles(answer: int, freeze_events: int, recompile_limit: int) -> bool:
    """Check the predicted compiles of a prefix schedule under a recompile limit (notebook 09).

    Measured: an MLP with one unit per stage is compiled (aot_eager) and frozen one more
    unit at each of `freeze_events` events, with Dynamo's counter.
    """
    require_int(answer)
    check_positive_int("freeze_events", freeze_events)
    check_positive_int("recompile_limit", recompile_limit)
    torch.manual_seed(0)
    model = mlp(width=8, depth=freeze_events)
    order = [name for name, child in model.named_children() if isinstance(child, nn.Linear)]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with count_compiles(recompile_limit=recompile_limit) as log:
        run_schedule(compiled, model, torch.randn(4, 64),
                     [order[:k] for k in range(freeze_events + 1)], steps_per_stage=1)
    torch._dynamo.reset()
    return check_answer(answer, log.frames, f"{log.frames} compiles.",
                        "one compile for the start, one per freeze event, but never more "
                        "than the recompile limit allows.")


def check_compiled_saved_bytes(answer: int, model: nn.Module, example: torch.Tensor,
                               frozen: Sequence[str]) -> bool:
    """Check the predicted bytes the compiled (min-cut) step saves for backward (notebook 09)."""
    require_int(answer)
    backend, _ = partition_recorder()
    torch._dynamo.reset()
    with frozen_state(model, frozen), count_compiles():
        truth = saved_activation_bytes(torch.compile(model, backend=backend), example)
        eager = saved_activation_bytes(model, example)
    torch._dynamo.reset()
    if answer == eager and eager != truth:
        return check_answer(answer, truth, "", "that is what eager saves: the partitioner "
                            "keeps 1-byte masks where only a ReLU's sign is needed.")
    return check_answer(answer, truth, f"{truth:,} bytes.",
                        "count the input, the float32 ReLU outputs a trainable weight "
                        "needs, and one byte per element for the other ReLUs.")


def check_break_even(answer: float, eager_ms: float, compiled_ms: float,
                     compile_seconds: float) -> bool:
    """Check the steps after which compiling pays off, within 1 step (notebook 09)."""
    require_number(answer)
    if compiled_ms >= eager_ms:
        raise ValueError("compiled_ms must be below eager_ms, or compiling never pays off")
    truth = compile_seconds * 1e3 / (eager_ms - compiled_ms)
    return check_answer(answer, truth, f"about {truth:,.0f} steps.",
                        "divide the compile time by the time saved per step.", tolerance=1.0)
