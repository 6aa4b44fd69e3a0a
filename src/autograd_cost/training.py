"""Training instruments: optimizers by name, one training step, and optimizer bookkeeping."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn
from torch.optim import Optimizer

from autograd_cost.core import LossFn, ModelInput, model_loss
from autograd_cost.freezing import preserved_state, preserved_values

OptimizerFactory = Callable[[list[nn.Parameter]], Optimizer]
PhaseMarker = Callable[[str], AbstractContextManager[object]]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
}


def resolve_optimizer(optimizer: str | OptimizerFactory) -> OptimizerFactory:
    """The optimizer factory for a name or a callable(params); clear error otherwise."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers are "
                             f"{list(OPTIMIZERS)} or a callable(params) -> Optimizer")
        return OPTIMIZERS[optimizer]
    if callable(optimizer):
        return optimizer
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)} or a callable(params) -> "
                     f"Optimizer, got {type(optimizer).__name__}")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters with requires_grad=True, in model order."""
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(
    model: nn.Module, optimizer: str | OptimizerFactory = "adam"
) -> Optimizer | None:
    """An optimizer over the trainable parameters only, as in fine-tuning; None if none."""
    factory = resolve_optimizer(optimizer)
    params = trainable_parameters(model)
    if not params:
        return None
    built = factory(params)
    if not isinstance(built, Optimizer):
        raise ValueError(f"the optimizer callable must return a torch.optim.Optimizer, got "
                         f"{type(built).__name__}")
    return built


def _unmarked(name: str) -> AbstractContextManager[object]:
    return nullcontext()


def training_step(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    optimizer: Optimizer | None = None,
    set_to_none: bool = True,
    phase: PhaseMarker = _unmarked,
) -> float:
    """One training step: clear grads, forward and loss, backward, optimizer step (notebook 02).

    Returns the loss. Without an optimizer, the grads of every parameter are cleared and no
    step is taken (a forward + backward). A loss that needs no grad (all frozen) skips the
    backward and the step. `phase(name)` wraps "forward", "backward" and "optimizer", e.g.
    to mark them for torch.profiler (notebook 07). set_to_none=False zeroes grads in place,
    PyTorch's zero_grad default before 2.0 (notebook 03).
    """
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=set_to_none)
    else:
        for param in model.parameters():
            if set_to_none or param.grad is None:
                param.grad = None
            else:
                param.grad.zero_()
    with phase("forward"):
        loss = model_loss(model, example_input, loss_fn)
    if not loss.requires_grad:
        return float(loss.detach())
    with phase("backward"):
        loss.backward()
    value = float(loss.detach())
    del loss  # no activation (not even the loss) outlives backward into the optimizer step
    if optimizer is not None:
        with phase("optimizer"):
            optimizer.step()
    return value


def remove_from_optimizer(optimizer: Optimizer, params: Sequence[torch.Tensor]) -> int:
    """Take `params` out of every param_group and drop their state; return how many."""
    doomed = {id(p) for p in params}
    removed = 0
    for group in optimizer.param_groups:
        kept = [p for p in group["params"] if id(p) not in doomed]
        removed += len(group["params"]) - len(kept)
        group["params"] = kept
    for param in params:
        optimizer.state.pop(param, None)
    return removed


def optimizer_params(optimizer: Optimizer) -> list[torch.Tensor]:
    """Every parameter the optimizer still updates, in param_group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


@contextmanager
def preserved_training(model: nn.Module, optimizer: Optimizer | None = None) -> Iterator[None]:
    """Restore values, grads, buffers, modes and the optimizer's state on exit (notebook 04)."""
    saved = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    with preserved_state(model), preserved_values(model):
        try:
            yield
        finally:
            if optimizer is not None:
                optimizer.load_state_dict(saved)
