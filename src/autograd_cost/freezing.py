"""Units, their execution order, and freezing a prefix, a suffix or named units."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from autograd_cost.core import ModelInput, run_model


def units(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Modules that directly own parameters, by name, in definition order (notebook 01)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    owned = {
        name: [p for _, p in module.named_parameters(recurse=False)]
        for name, module in model.named_modules()
    }
    return {name: params for name, params in owned.items() if params}


class _FirstUse(TorchFunctionMode):
    """Records the order in which parameters are first touched by any torch function."""

    def __init__(self, param_ids: set[int]) -> None:
        super().__init__()
        self.param_ids = param_ids
        self.order: list[int] = []
        self._seen: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs or {}))
        for value in flat:
            key = id(value)
            if key in self.param_ids and key not in self._seen:
                self._seen.add(key)
                self.order.append(key)
        return func(*args, **(kwargs or {}))


def execution_order(model: nn.Module, example_input: ModelInput) -> list[str]:
    """Unit names ordered by when the forward pass first uses their parameters (notebook 01)."""
    owned = units(model)
    if not owned:
        raise ValueError(f"{type(model).__name__} has no parameters, so it has no units to freeze")
    owner = {id(p): name for name, params in owned.items() for p in params}
    recorder = _FirstUse(set(owner))
    with preserved_state(model), torch.no_grad(), recorder:
        run_model(model, example_input)
    order: list[str] = []
    for key in recorder.order:
        if owner[key] not in order:
            order.append(owner[key])
    unused = [name for name in owned if name not in order]
    return order + unused


def check_unit_names(model: nn.Module, names: Sequence[str]) -> None:
    """Raise a clear error unless `names` is a list of the model's unit names."""
    if isinstance(names, str):
        raise TypeError(f"names must be a list of unit names, not the string {names!r}")
    valid = list(units(model))
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown unit(s) {unknown}; valid units are {valid}")


def freeze_units(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Set requires_grad=False on the parameters that the named units own."""
    check_unit_names(model, names)
    owned = units(model)
    for name in names:
        for param in owned[name]:
            param.requires_grad_(False)
    return list(names)


def set_frozen(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Make exactly the named units frozen and every other parameter trainable (notebook 02)."""
    check_unit_names(model, names)
    for param in model.parameters():
        param.requires_grad_(True)
    return freeze_units(model, names)


def _check_depth(depth: int, order: Sequence[str]) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if not 0 <= depth <= len(order):
        raise ValueError(
            f"depth {depth} is out of range for a model with {len(order)} units; "
            f"valid depths are 0..{len(order)}"
        )


def prefix_units(order: Sequence[str], depth: int) -> list[str]:
    """The first `depth` units of an execution order (notebook 01)."""
    _check_depth(depth, order)
    return list(order[:depth])


def suffix_units(order: Sequence[str], depth: int) -> list[str]:
    """The last `depth` units of an execution order (notebook 01)."""
    _check_depth(depth, order)
    return list(order[len(order) - depth :])


FREEZE_MODES = ("prefix", "suffix")


def units_to_freeze(order: Sequence[str], mode: str, depth: int) -> list[str]:
    """The units that a prefix or suffix freeze of `depth` units covers."""
    if mode == "prefix":
        return prefix_units(order, depth)
    if mode == "suffix":
        return suffix_units(order, depth)
    raise ValueError(f"unknown mode {mode!r}; valid modes are {list(FREEZE_MODES)}")


def freeze_prefix(model: nn.Module, depth: int, order: Sequence[str]) -> list[str]:
    """Freeze the first `depth` units of `order`, the early layers."""
    return freeze_units(model, prefix_units(order, depth))


def freeze_suffix(model: nn.Module, depth: int, order: Sequence[str]) -> list[str]:
    """Freeze the last `depth` units of `order`, the late layers."""
    return freeze_units(model, suffix_units(order, depth))


@contextmanager
def preserved_requires_grad(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's requires_grad on exit, also on error."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for param, flag in saved:
            param.requires_grad_(flag)


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore requires_grad, .grad, buffers and train/eval mode on exit.

    Inside the block every .grad starts as None, so backward never adds into the user's grads.
    """
    params = list(model.parameters())
    grads = [p.grad for p in params]
    for param in params:
        param.grad = None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    with preserved_requires_grad(model):
        try:
            yield
        finally:
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            with torch.no_grad():
                for buffer, copy in buffers:
                    buffer.copy_(copy)
            for module, training in modes:
                module.train(training)


@contextmanager
def frozen(model: nn.Module, names: Sequence[str]) -> Iterator[list[str]]:
    """Freeze the named units inside the block and restore requires_grad after (notebook 01)."""
    check_unit_names(model, names)
    with preserved_requires_grad(model):
        yield freeze_units(model, names)


@contextmanager
def exactly_frozen(model: nn.Module, names: Sequence[str]) -> Iterator[list[str]]:
    """Inside the block exactly the named units are frozen; state restored after."""
    check_unit_names(model, names)
    with preserved_state(model):
        yield set_frozen(model, names)


@contextmanager
def frozen_state(model: nn.Module, frozen: Sequence[str] | None) -> Iterator[list[str] | None]:
    """The one meaning of `frozen` for every instrument, state restored on exit.

    frozen=None measures the model as the user configured it (requires_grad untouched);
    a list of unit names freezes exactly those units and makes the rest trainable.
    """
    if frozen is None:
        with preserved_state(model):
            yield None
        return
    with exactly_frozen(model, frozen) as names:
        yield names


@contextmanager
def preserved_values(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's values on exit, also on error: optimizer steps change them.

    """
    saved = [(p, p.detach().clone()) for p in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for param, copy_ in saved:
                param.copy_(copy_)


@dataclass(frozen=True)
class UnitRow:
    """One line of a freeze summary: a unit's trainable and frozen counts (notebook 01)."""

    name: str
    kind: str
    trainable: int
    frozen: int


class FreezeSummary(list[UnitRow]):
    """Per-unit trainable and frozen parameter counts that print as a table (notebook 01)."""

    def __repr__(self) -> str:
        header = f"{'unit':<20} {'type':<12} {'trainable':>10} {'frozen':>10}"
        lines = [header, "-" * len(header)]
        lines += [
            f"{r.name:<20} {r.kind:<12} {r.trainable:>10,} {r.frozen:>10,}" for r in self
        ]
        lines.append("-" * len(header))
        total_trainable = sum(r.trainable for r in self)
        total_frozen = sum(r.frozen for r in self)
        lines.append(f"{'total':<33} {total_trainable:>10,} {total_frozen:>10,}")
        return "\n".join(lines)

    __str__ = __repr__


def freeze_summary(model: nn.Module, order: Sequence[str] | None = None) -> FreezeSummary:
    """Trainable and frozen parameters per unit, like Keras' model.summary() (notebook 01)."""
    owned = units(model)
    names = list(order) if order is not None else list(owned)
    check_unit_names(model, names)
    modules = dict(model.named_modules())
    rows = []
    for name in names:
        params = owned[name]
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        rows.append(UnitRow(name, type(modules[name]).__name__, trainable, total - trainable))
    return FreezeSummary(rows)
