"""Progressive freezing (Composer/FreezeOut style), a small training loop and feature caching.

Taught in notebook 05. The schedule freezes units in forward-execution order, removes frozen
parameters from the optimizer (and drops their optimizer state), and handles BatchNorm
explicitly: a BatchNorm whose parameters are all frozen is put in eval mode by default, so it
normalizes with its running statistics and stops updating them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.core import ModelInput, synchronize
from autograd_cost.cost import count_flops
from autograd_cost.data import DigitSplit, batch_order
from autograd_cost.freezing import (
    check_unit_names,
    exactly_frozen,
    execution_order,
    freeze_units,
    preserved_requires_grad,
    preserved_state,
    units,
)
from autograd_cost.training import remove_from_optimizer

FROZEN_BN_MODES = ("eval", "train")
TRANSFER_METHODS = ("fine-tune", "freeze", "cache")


def _check_unit_interval(name: str, value: float, include_one: bool = True) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    upper_ok = value <= 1 if include_one else value < 1
    if not (value >= 0 and upper_ok):
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def _check_bn_mode(frozen_bn: str) -> None:
    if frozen_bn not in FROZEN_BN_MODES:
        raise ValueError(f"frozen_bn must be one of {list(FROZEN_BN_MODES)}, got {frozen_bn!r}")


def freeze_fraction(progress: float, freeze_start: float, freeze_level: float) -> float:
    """Fraction of units frozen at `progress`: 0 until freeze_start, then linear (notebook 05).

    It reaches freeze_level at the end of training (progress 1), as in Composer's
    LayerFreezing.
    """
    _check_unit_interval("progress", progress)
    _check_unit_interval("freeze_start", freeze_start, include_one=False)
    _check_unit_interval("freeze_level", freeze_level)
    if progress <= freeze_start:
        return 0.0
    return freeze_level * (progress - freeze_start) / (1 - freeze_start)


def frozen_count(
    progress: float, num_units: int, freeze_start: float, freeze_level: float
) -> int:
    """How many of `num_units` units are frozen at `progress` (rounded down) (notebook 05)."""
    if not isinstance(num_units, int) or isinstance(num_units, bool) or num_units < 0:
        raise ValueError(f"num_units must be a non-negative int, got {num_units!r}")
    fraction = freeze_fraction(progress, freeze_start, freeze_level)
    return min(num_units, math.floor(fraction * num_units + 1e-9))


@dataclass(frozen=True)
class FreezeSchedule:
    """A linear progressive-freezing schedule and its BatchNorm policy (notebook 05).

    frozen_bn="eval": frozen BatchNorm layers normalize with running statistics and stop
    updating them (their output no longer changes). frozen_bn="train": they keep using batch
    statistics and keep updating running statistics; only their affine parameters stop.
    """

    freeze_start: float = 0.1
    freeze_level: float = 1.0
    frozen_bn: str = "eval"

    def __post_init__(self) -> None:
        freeze_fraction(1.0, self.freeze_start, self.freeze_level)  # validates both
        _check_bn_mode(self.frozen_bn)

    def count(self, progress: float, num_units: int) -> int:
        """Units frozen at `progress` for a model with `num_units` units."""
        return frozen_count(progress, num_units, self.freeze_start, self.freeze_level)


NO_FREEZING = FreezeSchedule(freeze_start=0.0, freeze_level=0.0)


def apply_frozen_bn_mode(model: nn.Module, frozen_bn: str = "eval") -> list[str]:
    """Put BatchNorm layers whose parameters are all frozen in eval mode (notebook 05).

    With frozen_bn="train" nothing changes. Returns the names of the layers set to eval.
    """
    _check_bn_mode(frozen_bn)
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
        optimizer: torch.optim.Optimizer,
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
            remove_from_optimizer(self.optimizer, [p for n in newly for p in owned[n]])
            for name in newly:
                for param in owned[name]:
                    param.grad = None
            self.frozen.extend(newly)
        apply_frozen_bn_mode(self.model, self.schedule.frozen_bn)
        return list(self.frozen)


@dataclass
class FitResult:
    """What one training run did: its wall time, steps and frozen units per step (notebook 05)."""

    seconds: float
    steps: int
    frozen_per_step: list[int] = field(default_factory=list)


def _check_positive_int(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    schedule: FreezeSchedule | None = None,
    frozen_bn: str = "eval",
) -> FitResult:
    """Train in place with Adam and cross-entropy on a seeded batch order (notebook 05).

    Only parameters that require grad go to the optimizer. A schedule freezes more units as
    training goes (progress = step / steps); steps with nothing left to train skip backward.
    BatchNorm layers with all parameters frozen follow `frozen_bn` (the schedule's policy
    when a schedule is given). The weights stay trained; requires_grad and train/eval modes
    are restored on exit, also on error.
    """
    _check_positive_int(epochs=epochs, batch_size=batch_size)
    if len(inputs) != len(labels):
        raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing to train: every parameter of the model has requires_grad=False")
    bn_mode = schedule.frozen_bn if schedule is not None else frozen_bn
    _check_bn_mode(bn_mode)
    device = inputs.device
    batches = [b.to(device) for b in batch_order(len(labels), batch_size, epochs, seed)]
    modes = [(m, m.training) for m in model.modules()]
    with preserved_requires_grad(model):
        try:
            return _train_loop(model, inputs, labels, batches, lr, schedule, bn_mode, device)
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
    bn_mode: str,
    device: torch.device,
) -> FitResult:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr) if trainable else None
    freezer = None
    if schedule is not None:
        order = execution_order(model, inputs[:2])
        freezer = ProgressiveFreezing(model, optimizer, order, schedule)
    model.train()
    apply_frozen_bn_mode(model, bn_mode)
    frozen_per_step = []
    synchronize(device)
    start = time.perf_counter()
    for step, index in enumerate(batches):
        if freezer is not None:
            frozen_per_step.append(len(freezer.update(step / len(batches))))
        loss = F.cross_entropy(model(inputs[index]), labels[index])
        if loss.requires_grad and optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    synchronize(device)
    return FitResult(time.perf_counter() - start, len(batches), frozen_per_step)


def forward_floor_seconds(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Wall time of `fit`'s loop with every unit frozen: forward and loss only (notebook 05).

    Same batches and loop as `fit`, every BatchNorm in eval mode, no backward, no optimizer.
    No freezing schedule can train faster, because a frozen unit still runs its forward.
    The model's weights, requires_grad and train/eval modes are left as they were.
    """
    _check_positive_int(epochs=epochs, batch_size=batch_size)
    if len(inputs) != len(labels):
        raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
    batches = [b.to(inputs.device) for b in batch_order(len(labels), batch_size, epochs, seed)]
    with preserved_state(model):
        for param in model.parameters():
            param.requires_grad_(False)
        return _train_loop(model, inputs, labels, batches, 0.0, None, "eval", inputs.device).seconds


def eval_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's outputs in eval mode, without grad; the model is restored (notebook 05)."""
    with preserved_state(model), torch.no_grad():
        model.eval()
        return model(inputs)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of `inputs` classified right, in eval mode; the model is restored (nb 05)."""
    if len(inputs) != len(labels) or not len(labels):
        raise ValueError(f"need equally many inputs and labels, got {len(inputs)} and "
                         f"{len(labels)}")
    predictions = eval_logits(model, inputs).argmax(dim=1)
    return (predictions == labels).float().mean().item()


def head_inputs(model: nn.Module, inputs: torch.Tensor, head: str = "head") -> torch.Tensor:
    """Cache what the `head` module receives: one eval-mode forward, no grad (notebook 05)."""
    modules = dict(model.named_modules())
    if head not in modules or head == "":
        valid = [n for n in modules if n]
        raise ValueError(f"unknown head module {head!r}; valid modules are {valid}")
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())

    handle = modules[head].register_forward_pre_hook(grab)
    try:
        with preserved_state(model), torch.no_grad():
            model.eval()
            model(inputs)
    finally:
        handle.remove()
    return captured[0]


def same_weights(model: nn.Module, other: nn.Module) -> bool:
    """True when two models hold bit-identical parameters and buffers (notebook 05)."""
    mine, theirs = model.state_dict(), other.state_dict()
    if list(mine) != list(theirs):
        raise ValueError(f"the models differ in structure: {list(mine)} against {list(theirs)}")
    return all(
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        for a, b in zip(mine.values(), theirs.values(), strict=True)
    )


@dataclass(frozen=True)
class RunResult:
    """Test accuracy and training wall time of one variant (notebook 05)."""

    name: str
    accuracy: float
    seconds: float


def backbone_units(model: nn.Module, head: str = "head") -> list[str]:
    """Every unit except the head's, i.e. the part transfer learning freezes (notebook 05)."""
    names = list(units(model))
    if head not in names:
        raise ValueError(f"unknown head unit {head!r}; valid units are {names}")
    return [n for n in names if n != head]


def reset_module(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialize a module's parameters from `seed`, leaving the global RNG alone (nb 05)."""
    if not hasattr(module, "reset_parameters"):
        raise TypeError(f"{type(module).__name__} has no reset_parameters(); pass a layer "
                        "such as nn.Linear")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.reset_parameters()
    return module


def adapt(
    pretrained: nn.Module,
    split: DigitSplit,
    method: str,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    head: str = "head",
) -> tuple[nn.Module, RunResult]:
    """Adapt a copy of `pretrained` to `split` by one transfer method (notebook 05).

    The head is re-initialized from `seed` first (a new task gets a new head: the
    pretrained head is confidently wrong on new classes). "fine-tune" trains every unit;
    "freeze" freezes the backbone (BatchNorm in eval mode) and trains the head; "cache"
    runs the backbone once to cache the head's inputs and trains the head on them.
    The timed part includes the caching pass. `pretrained` is untouched.
    """
    if method not in TRANSFER_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {list(TRANSFER_METHODS)}")
    model = copy.deepcopy(pretrained)
    backbone = backbone_units(model, head)
    reset_module(dict(model.named_modules())[head], seed)
    device = split.train_x.device
    if method == "fine-tune":
        seconds = fit(model, split.train_x, split.train_y, epochs, batch_size, lr, seed).seconds
    elif method == "freeze":
        with exactly_frozen(model, backbone):
            model.train()
            seconds = fit(model, split.train_x, split.train_y, epochs, batch_size, lr, seed).seconds
    else:
        synchronize(device)
        start = time.perf_counter()
        features = head_inputs(model, split.train_x, head)
        synchronize(device)
        cache_seconds = time.perf_counter() - start
        head_module = dict(model.named_modules())[head]
        seconds = cache_seconds + fit(
            head_module, features, split.train_y, epochs, batch_size, lr, seed
        ).seconds
    return model, RunResult(method, accuracy(model, split.test_x, split.test_y), seconds)


def train_with_schedule(
    model: nn.Module,
    split: DigitSplit,
    schedule: FreezeSchedule,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
) -> tuple[FitResult, float]:
    """Train `model` in place under a freezing schedule; return the run and test accuracy.

    Taught in notebook 05.
    """
    result = fit(model, split.train_x, split.train_y, epochs, batch_size, lr, seed, schedule)
    return result, accuracy(model, split.test_x, split.test_y)


def backward_flops_by_depth(
    model: nn.Module,
    example_input: ModelInput,
    order: Sequence[str],
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[int]:
    """Backward FLOPs with the first k units of `order` frozen, for k = 0..len(order) (nb 05)."""
    check_unit_names(model, order)
    return [
        count_flops_frozen(model, example_input, order[:depth], loss_fn)
        for depth in range(len(order) + 1)
    ]


def count_flops_frozen(
    model: nn.Module,
    example_input: ModelInput,
    names: Sequence[str],
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Backward FLOPs with exactly the named units frozen (notebook 05)."""
    with exactly_frozen(model, names):
        return count_flops(model, example_input, loss_fn).backward


def expected_saving(
    backward_by_depth: Sequence[int], forward: int, frozen_per_step: Sequence[int]
) -> float:
    """FLOP-model saving of a schedule: mean backward FLOPs saved / one step's FLOPs (nb 05).

    A step's FLOPs are the unfrozen forward plus backward; the optimizer update is ignored.
    """
    if not frozen_per_step:
        raise ValueError("frozen_per_step is empty: train with a schedule first")
    if forward < 0 or not backward_by_depth or min(backward_by_depth) < 0:
        raise ValueError("FLOP counts must be non-negative and backward_by_depth non-empty")
    bad = [k for k in frozen_per_step if not 0 <= k < len(backward_by_depth)]
    if bad:
        raise ValueError(f"frozen counts {sorted(set(bad))} are outside "
                         f"0..{len(backward_by_depth) - 1}")
    full = backward_by_depth[0]
    saved = sum(full - backward_by_depth[k] for k in frozen_per_step) / len(frozen_per_step)
    return saved / (forward + full)
