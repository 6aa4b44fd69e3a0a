"""Notebook 05: a Composer-style progressive freezing schedule and the small training loop.

The schedule freezes units in forward-execution order, removes frozen parameters from the
optimizer (and drops their optimizer state), and handles BatchNorm explicitly: a BatchNorm
whose parameters are all frozen is put in eval mode by default, so it normalizes with its
running statistics and stops updating them. `fit` is the training loop of the notebook's
transfer and progressive-freezing runs; each step is `training.training_step`.

The schedule stays a chapter helper, not an instrument: only notebook 05 trains under it
(notebook 06's DDP schedule is a list of freeze depths and shares no code with it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.core import check_choice, check_number, check_positive_int
from autograd_cost.data import batch_order
from autograd_cost.freezing import (
    check_unit_names,
    execution_order,
    freeze_units,
    preserved_requires_grad,
    preserved_state,
    units,
)
from autograd_cost.training import make_optimizer, remove_from_optimizer, training_step

FROZEN_BN_MODES = ("eval", "train")


@dataclass(frozen=True)
class FreezeSchedule:
    """A linear progressive-freezing schedule and its BatchNorm policy (notebook 05).

    The fraction of units frozen is 0 until `freeze_start`, then grows linearly to
    `freeze_level` at the end of training (progress 1), as in Composer's LayerFreezing.
    frozen_bn="eval": frozen BatchNorm layers normalize with running statistics and stop
    updating them (their output no longer changes). frozen_bn="train": they keep using batch
    statistics and keep updating running statistics; only their affine parameters stop.
    """

    freeze_start: float = 0.1
    freeze_level: float = 1.0
    frozen_bn: str = "eval"

    def __post_init__(self) -> None:
        check_number("freeze_start", self.freeze_start, 0.0, 1.0)
        if self.freeze_start == 1:
            raise ValueError("freeze_start must be below 1 (freezing must start before the "
                             "end of training), got 1")
        check_number("freeze_level", self.freeze_level, 0.0, 1.0)
        check_choice("frozen_bn", self.frozen_bn, FROZEN_BN_MODES)

    def fraction(self, progress: float) -> float:
        """The fraction of units frozen at `progress` in [0, 1] of training."""
        check_number("progress", progress, 0.0, 1.0)
        if progress <= self.freeze_start:
            return 0.0
        return self.freeze_level * (progress - self.freeze_start) / (1 - self.freeze_start)

    def count(self, progress: float, num_units: int) -> int:
        """Units frozen at `progress` for a model with `num_units` units (rounded down)."""
        check_positive_int("num_units", num_units, low=0)
        # the 1e-9 keeps exact products (0.5 * 6 = 3) from rounding down to 2 in floating point
        return min(num_units, math.floor(self.fraction(progress) * num_units + 1e-9))


def apply_frozen_bn_mode(model: nn.Module, frozen_bn: str = "eval") -> list[str]:
    """Put BatchNorm layers whose parameters are all frozen in eval mode; return their names.

    With frozen_bn="train" nothing changes. Used by `fit` and `ProgressiveFreezing`.
    """
    check_choice("frozen_bn", frozen_bn, FROZEN_BN_MODES)
    if frozen_bn == "train":
        return []
    switched = []
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not any(
            p.requires_grad for p in params
        ):
            module.eval()
            switched.append(name)
    return switched


class ProgressiveFreezing:
    """Freeze units in execution order as training progresses, Composer-style (notebook 05).

    `update(progress)` freezes the first `schedule.count(progress, n)` units of `order`
    (never unfreezing), sets their requires_grad to False, removes their parameters from the
    optimizer's param_groups, drops their optimizer state and applies the BatchNorm policy.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        order: Sequence[str],
        schedule: FreezeSchedule,
    ) -> None:
        if not isinstance(schedule, FreezeSchedule):
            raise TypeError(f"schedule must be a FreezeSchedule, got {type(schedule).__name__}")
        check_unit_names(model, order)
        if sorted(order) != sorted(units(model)):
            raise ValueError(f"order must list every unit exactly once: {sorted(units(model))}")
        self.model = model
        self.optimizer = optimizer
        self.order = list(order)
        self.schedule = schedule
        self.frozen: list[str] = []

    def update(self, progress: float) -> list[str]:
        """Freeze up to the schedule's count at `progress`; return all frozen units."""
        target = self.schedule.count(progress, len(self.order))
        newly = self.order[len(self.frozen) : target]
        if newly:
            freeze_units(self.model, newly)
            owned = units(self.model)
            params = [p for name in newly for p in owned[name]]
            if self.optimizer is not None:
                remove_from_optimizer(self.optimizer, params)
            for param in params:
                param.grad = None
            self.frozen.extend(newly)
        apply_frozen_bn_mode(self.model, self.schedule.frozen_bn)
        return list(self.frozen)


@dataclass
class FitResult:
    """What one `fit` run did: its steps and the units frozen at each step."""

    steps: int
    frozen_per_step: list[int] = field(default_factory=list)


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    schedule: FreezeSchedule | None = None,
) -> FitResult:
    """Train in place with Adam and cross-entropy on a seeded batch order (notebook 05).

    Only parameters that require grad go to the optimizer. A schedule freezes more units as
    training goes (progress = step / steps); BatchNorm layers with all parameters frozen
    follow its `frozen_bn` policy (eval mode without a schedule). Each step is
    `training.training_step`, which skips backward and optimizer when nothing trains: with
    every parameter frozen, `fit` runs forward and loss only: the forward floor.
    The weights stay trained; requires_grad and train/eval modes are restored on exit.
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    if schedule is not None and not isinstance(schedule, FreezeSchedule):
        raise TypeError(f"schedule must be a FreezeSchedule or None, got "
                        f"{type(schedule).__name__}")
    if len(inputs) != len(labels):
        raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
    batches = [b.to(inputs.device) for b in batch_order(len(labels), batch_size, epochs, seed)]
    modes = [(m, m.training) for m in model.modules()]
    with preserved_requires_grad(model):
        try:
            return _train_loop(model, inputs, labels, batches, lr, schedule)
        finally:
            for module, training in modes:
                module.train(training)


def _train_loop(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batches: list[torch.Tensor],
    lr: float,
    schedule: FreezeSchedule | None,
) -> FitResult:
    optimizer = make_optimizer(model, lambda params: torch.optim.Adam(params, lr=lr))
    freezer = None
    if schedule is not None:
        order = execution_order(model, inputs[:2])
        freezer = ProgressiveFreezing(model, optimizer, order, schedule)
    model.train()
    apply_frozen_bn_mode(model, schedule.frozen_bn if schedule is not None else "eval")
    frozen_per_step = []
    for step, index in enumerate(batches):
        if freezer is not None:
            frozen_per_step.append(len(freezer.update(step / len(batches))))
        target = labels[index]
        training_step(model, inputs[index], lambda out, t=target: F.cross_entropy(out, t),
                      optimizer)
    return FitResult(len(batches), frozen_per_step)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of `inputs` classified right, in eval mode, model restored (notebook 05)."""
    if len(inputs) != len(labels) or not len(labels):
        raise ValueError(f"need equally many inputs and labels (at least one), got "
                         f"{len(inputs)} and {len(labels)}")
    with preserved_state(model), torch.no_grad():
        predictions = model.eval()(inputs).argmax(dim=1)
    return (predictions == labels).float().mean().item()


def same_weights(model: nn.Module, other: nn.Module) -> bool:
    """True when two models hold bit-identical parameters and buffers (notebook 05)."""
    mine, theirs = model.state_dict(), other.state_dict()
    if list(mine) != list(theirs):
        raise ValueError(f"the models differ in structure: {list(mine)} against {list(theirs)}")
    return all(
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        for a, b in zip(mine.values(), theirs.values(), strict=True)
    )
