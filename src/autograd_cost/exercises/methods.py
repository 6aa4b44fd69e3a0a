"""Self-checks for notebook 03's exercises: optimizer state, momentum drift, cut gradients."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.chapters.ways import PartlyDetached, grad_status
from autograd_cost.cost import optimizer_state_bytes
from autograd_cost.exercises import check_answer, report, require_int, require_number
from autograd_cost.freezing import exactly_frozen, preserved_state, preserved_values
from autograd_cost.training import training_step


def adam_state_after_freeze(
    model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> tuple[int, int]:
    """(state bytes, tensors with state) of Adam over all parameters after one step.

    Exactly the named units are frozen with requires_grad=False; the model, values included,
    is restored after.
    """
    with exactly_frozen(model, names), preserved_values(model):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        training_step(model, x, functools.partial(F.cross_entropy, target=y), optimizer)
        return optimizer_state_bytes(optimizer), len(optimizer.state)


def check_adam_state_bytes(
    answer: int, model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> bool:
    """Check a predicted Adam state size after one step, step counters included (notebook 03)."""
    answer = require_int(answer)
    truth, tensors = adam_state_after_freeze(model, names, x, y)
    if answer == truth - 4 * tensors and answer != truth:
        return report(False, "", "close: add the 4-byte float32 step counter Adam keeps per "
                                 "parameter tensor.")
    return check_answer(answer, truth, f"{truth:,} bytes of Adam state.",
                        "which parameters get a .grad, and how many float32 moments does Adam "
                        "keep?")


def momentum_drift(lr: float, momentum: float, first_grad: float, frozen_steps: int) -> float:
    """How far SGD+momentum moves a weight with zero grads after one real step."""
    weight = nn.Parameter(torch.zeros((), dtype=torch.float64))
    optimizer = torch.optim.SGD([weight], lr=lr, momentum=momentum)
    weight.grad = torch.tensor(first_grad, dtype=torch.float64)
    optimizer.step()
    start = weight.item()
    for _ in range(frozen_steps):
        weight.grad = torch.zeros((), dtype=torch.float64)
        optimizer.step()
    return abs(weight.item() - start)


def check_momentum_drift(
    answer: float, lr: float, momentum: float, first_grad: float, frozen_steps: int
) -> bool:
    """Check a predicted drift of a 'frozen' weight under SGD with momentum (notebook 03)."""
    answer = require_number(answer)
    truth = momentum_drift(lr, momentum, first_grad, frozen_steps)
    return check_answer(answer, truth, "the momentum buffer keeps pushing, step after step.",
                        "after the real step the buffer is multiplied by the momentum at every "
                        "step.", tolerance=1e-4, relative=True)


def units_cut_off(
    model: nn.Sequential, section: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> set[str]:
    """Units left with .grad None when `section` runs under no_grad."""
    with preserved_state(model):
        loss = F.cross_entropy(PartlyDetached(model, section, "no_grad")(x), y)
        if loss.requires_grad:
            loss.backward()
        return {name for name, state in grad_status(model).items() if state == "None"}


def check_units_cut_off(
    answer: set[str],
    model: nn.Sequential,
    section: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
) -> bool:
    """Check which units get no gradient when a section runs under no_grad (notebook 03)."""
    if isinstance(answer, str) or not isinstance(answer, (set, frozenset, list, tuple)):
        raise TypeError(f"answer must be a set of unit names, got {type(answer).__name__}")
    truth = units_cut_off(model, section, x, y)
    answer = set(answer)
    if answer == truth:
        return report(True, f"exactly those {len(truth)} units are cut off.", "")
    missing, extra = len(truth - answer), len(answer - truth)
    hint = f"{missing} unit(s) missing and {extra} that do get a gradient. "
    hint += "Does a gradient flow backwards through a section that autograd never recorded?"
    return report(False, "", hint)
