"""Self-checks for notebook 03's exercises: optimizer state, momentum drift, cut gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.cost import optimizer_state_bytes
from autograd_cost.exercises import report
from autograd_cost.freezing import preserved_state
from autograd_cost.methods import PartlyDetached, freeze, grad_status


def adam_state_after_freeze(
    model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> tuple[int, int]:
    """(state bytes, tensors with state) of Adam over all parameters after one step (notebook 03).

    The named modules are frozen with requires_grad=False; the model is restored after.
    """
    with preserved_state(model), freeze(model, names):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        return optimizer_state_bytes(optimizer), len(optimizer.state)


def check_adam_state_bytes(
    answer: int, model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> bool:
    """Check a predicted Adam state size after one step, step counters included (notebook 03)."""
    truth, tensors = adam_state_after_freeze(model, names, x, y)
    if answer == truth:
        return report(True, f"{truth:,} bytes of Adam state.", "")
    if answer == truth - 4 * tensors:
        hint = "close: add the 4-byte float32 step counter Adam keeps per parameter tensor."
    else:
        hint = "too high" if answer > truth else "too low"
        hint += ": which parameters get a .grad, and how many float32 moments does Adam keep?"
    return report(False, "", hint)


def momentum_drift(lr: float, momentum: float, first_grad: float, frozen_steps: int) -> float:
    """How far SGD+momentum moves a weight with zero grads after one real step (notebook 03)."""
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
    truth = momentum_drift(lr, momentum, first_grad, frozen_steps)
    if abs(answer - truth) <= 1e-4 * max(abs(truth), 1e-12):
        return report(True, "the momentum buffer keeps pushing, step after step.", "")
    hint = "too high" if answer > truth else "too low"
    hint += ": after the real step the buffer is multiplied by the momentum at every step."
    return report(False, "", hint)


def units_cut_off(
    model: nn.Sequential, section: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> set[str]:
    """Units left with .grad None when `section` runs under no_grad (notebook 03)."""
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
    truth = units_cut_off(model, section, x, y)
    answer = set(answer)
    if answer == truth:
        return report(True, f"exactly those {len(truth)} units are cut off.", "")
    missing, extra = len(truth - answer), len(answer - truth)
    hint = f"{missing} unit(s) missing and {extra} that do get a gradient. "
    hint += "Does a gradient flow backwards through a section that autograd never recorded?"
    return report(False, "", hint)
