"""Notebook 03: what moves "frozen" weights and statistics, and a freeze that stops it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils import parameters_to_vector
from torch.optim import Optimizer
from torch.utils._pytree import tree_flatten

from autograd_cost.core import ModelInput, check_choice, check_positive_int, run_model
from autograd_cost.freezing import preserved_state
from autograd_cost.results import to_frame
from autograd_cost.training import (
    OptimizerFactory,
    make_optimizer,
    remove_from_optimizer,
    training_step,
)

# ---------------------------------------------------------------- eval mode


def changes_in_eval(module: nn.Module) -> bool:
    """Whether eval mode changes this module's forward on its own (notebook 03).

    True for Dropout layers (all of torch.nn's), RReLU (random slopes in train mode),
    attention and RNN/LSTM/GRU with dropout, and norms that track running statistics
    (BatchNorm, InstanceNorm with track_running_stats=True). LayerNorm, GroupNorm and a norm
    without running statistics compute the same thing in train and eval mode: False.
    Not detected: a spectral-norm parametrization and custom modules that read self.training.
    """
    if isinstance(module, (_DropoutNd, nn.RReLU)):
        return True
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    if isinstance(module, nn.RNNBase):
        return module.dropout > 0 and module.num_layers > 1
    return isinstance(module, _NormBase) and module.track_running_stats


def eval_candidates(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The modules inside `modules` for which changes_in_eval holds, each once."""
    seen: dict[int, nn.Module] = {}
    for module in modules:
        for child in module.modules():
            if changes_in_eval(child):
                seen.setdefault(id(child), child)
    return list(seen.values())


def eval_changes_output(module: nn.Module, example_input: ModelInput) -> bool:
    """Measured: does the module's output differ between train and eval mode? (notebook 03)

    Both forwards run on the same input with the same random seed (fork_rng, so the global
    generator is untouched) and without autograd; modes and buffers are restored after.
    """
    with preserved_state(module), torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        train_out = run_model(module.train(), example_input)
        torch.manual_seed(0)
        eval_out = run_model(module.eval(), example_input)
    pairs = zip(tree_flatten(train_out)[0], tree_flatten(eval_out)[0], strict=True)
    return any(isinstance(a, torch.Tensor) and not torch.equal(a, b) for a, b in pairs)


def eval_mode_examples() -> dict[str, tuple[nn.Module, ModelInput]]:
    """Common modules, seeded, each with an example input, by display name."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 3 + 1

    with torch.random.fork_rng(devices=[]):  # seeded weights, global generator untouched
        torch.manual_seed(0)
        sequence = randn(5, 2, 8)
        return {
            "BatchNorm2d": (nn.BatchNorm2d(4), randn(8, 4, 3, 3)),
            "InstanceNorm2d(track_running_stats=True)": (
                nn.InstanceNorm2d(4, track_running_stats=True), randn(8, 4, 3, 3)),
            "InstanceNorm2d (default)": (nn.InstanceNorm2d(4), randn(8, 4, 3, 3)),
            "LayerNorm": (nn.LayerNorm(8), randn(4, 8)),
            "GroupNorm": (nn.GroupNorm(2, 4), randn(8, 4, 3, 3)),
            "Dropout(0.1)": (nn.Dropout(0.1), randn(4, 8)),
            "RReLU": (nn.RReLU(), randn(4, 8)),
            "LSTM(num_layers=2, dropout=0.1)": (nn.LSTM(8, 8, num_layers=2, dropout=0.1), sequence),
            "MultiheadAttention(dropout=0.1)": (
                nn.MultiheadAttention(8, 2, dropout=0.1), (sequence, sequence, sequence)),
            "MultiheadAttention(dropout=0.0)": (
                nn.MultiheadAttention(8, 2), (sequence, sequence, sequence)),
        }


def eval_mode_table() -> pd.DataFrame:
    """Per example: does eval mode change the output, does eval_norm switch it? (notebook 03)"""
    rows = [{"module": name, "eval_changes_output": eval_changes_output(module, example),
             "switched_by_eval_norm": bool(eval_candidates([module]))}
            for name, (module, example) in eval_mode_examples().items()]
    return to_frame(rows).set_index("module")


# ---------------------------------------------------------------- freeze()


def _modules_named(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    if isinstance(names, str):
        raise TypeError(f"names must be a list of module names, not the string {names!r}")
    if not names:
        raise ValueError("names is empty: name at least one module to freeze")
    modules = {name: module for name, module in model.named_modules() if name}
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"unknown module(s) {unknown}; valid names are {list(modules)}")
    return [modules[name] for name in names]


def _keep_in_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: a frozen BatchNorm or Dropout runs in eval mode after model.train()."""
    module.train(False)


class Freeze:
    """A freeze that is undone by restore() or by leaving its `with` block (notebook 03).

    Applied when built: requires_grad off and .grad set to None for the parameters of the
    named modules; optionally they leave `optimizer` (param groups and state), and with
    eval_norm=True the layers that eval mode changes (changes_in_eval: BatchNorm running
    statistics, Dropout) run in eval mode, even after a later model.train().
    """

    def __init__(self, model: nn.Module, names: Sequence[str],
                 optimizer: Optimizer | None = None, eval_norm: bool = False) -> None:
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        modules = _modules_named(model, names)
        self.params = list({id(p): p for m in modules for p in m.parameters()}.values())
        self.eval_modules = eval_candidates(modules) if eval_norm else []
        self._flags = [(p, p.requires_grad, p.grad) for p in self.params]
        self._modes = [(m, m.training) for m in self.eval_modules]
        self._optimizer = optimizer
        self._groups: list[tuple[dict, list]] = []
        self._state: dict = {}
        self.removed_from_optimizer = 0  # parameter tensors taken out of the param groups
        self._hooks = [m.register_forward_pre_hook(_keep_in_eval) for m in self.eval_modules]
        for param in self.params:
            param.requires_grad_(False)
            param.grad = None
        for module in self.eval_modules:
            module.train(False)
        if optimizer is not None:
            self._groups = [(group, list(group["params"])) for group in optimizer.param_groups]
            self._state = {p: optimizer.state[p] for p in self.params if p in optimizer.state}
            self.removed_from_optimizer = remove_from_optimizer(optimizer, self.params)

    def restore(self) -> None:
        """Undo the freeze: flags, grads, modes, hooks, optimizer groups and state."""
        for hook in self._hooks:
            hook.remove()
        for param, flag, grad in self._flags:
            param.requires_grad_(flag)
            param.grad = grad
        for module, training in self._modes:
            module.train(training)
        for group, old in self._groups:
            group["params"] = old
        if self._optimizer is not None:
            self._optimizer.state.update(self._state)
        self._hooks, self._groups, self._state = [], [], {}
        self._flags, self._modes, self._optimizer = [], [], None  # a second restore is a no-op

    def __enter__(self) -> Freeze:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def freeze(model: nn.Module, names: Sequence[str], optimizer: Optimizer | None = None,
           eval_norm: bool = False) -> Freeze:
    """Freeze the named modules now; `with freeze(...)` restores everything after (notebook 03)."""
    return Freeze(model, names, optimizer=optimizer, eval_norm=eval_norm)


# ---------------------------------------------------------------- training, for the bugs


def train_on_slices(
    model: nn.Module,
    optimizer: Optimizer | None,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    set_to_none: bool = True,
) -> list[float]:
    """training_step on consecutive slices of (x, y), wrapping around; the losses (notebook 03).

    Cross-entropy loss. set_to_none=False zeroes grads in place, PyTorch's zero_grad default
    before 2.0.
    """
    check_positive_int("steps", steps, low=0)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or not 1 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be an int in 1..{len(x)}, got {batch_size!r}")
    losses = []
    for step in range(steps):
        start = (step * batch_size) % (len(x) - batch_size + 1)
        batch = slice(start, start + batch_size)
        loss_fn = functools.partial(F.cross_entropy, target=y[batch])
        losses.append(training_step(model, x[batch], loss_fn, optimizer, set_to_none))
    return losses


# Optimizers whose state or decay could move a frozen weight, by key; and their titles.
DRIFT_OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}
DRIFT_OPTIMIZER_TITLES = {"sgd": "SGD", "sgd-momentum": "SGD+momentum", "adamw": "AdamW"}
# What happens to the frozen parameters' grads and optimizer entries after a mid-way freeze.
DRIFT_FIXES = {
    "zero_grads": "none (zero grads)",
    "set_to_none": "grads set to None",
    "remove_from_optimizer": "dropped from optimizer",
}


def frozen_drift(
    build: Callable[[], nn.Module],
    optimizer: str,
    fix: str,
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 10,
) -> float:
    """Train, freeze `names` mid-way, train on: how far do the frozen weights move?

    The freeze sets requires_grad=False; `fix` (a DRIFT_FIXES key) decides what happens to
    the grads and the optimizer. The model is built on x's device.
    """
    check_choice("optimizer", optimizer, list(DRIFT_OPTIMIZERS))
    check_choice("fix", fix, list(DRIFT_FIXES))
    model = build().to(x.device)
    trainer = make_optimizer(model, DRIFT_OPTIMIZERS[optimizer])
    train_on_slices(model, trainer, x, y, steps)
    frozen = list({id(p): p for m in _modules_named(model, names)
                   for p in m.parameters()}.values())
    if fix == "remove_from_optimizer":
        remove_from_optimizer(trainer, frozen)
    for param in frozen:
        param.requires_grad_(False)
        param.grad = torch.zeros_like(param) if fix == "zero_grads" else None
    before = parameters_to_vector(frozen)
    train_on_slices(model, trainer, x, y, steps, set_to_none=fix != "zero_grads")
    return (parameters_to_vector(frozen) - before).abs().max().item()


def frozen_drift_table(
    build: Callable[[], nn.Module], names: Sequence[str], x: torch.Tensor, y: torch.Tensor,
    steps: int = 10,
) -> pd.DataFrame:
    """frozen_drift for every optimizer (rows) and fix (columns), by title (notebook 03)."""
    drifts = {DRIFT_FIXES[fix]: {DRIFT_OPTIMIZER_TITLES[name]: frozen_drift(build, name, fix,
                                                                           names, x, y, steps)
                                 for name in DRIFT_OPTIMIZERS}
              for fix in DRIFT_FIXES}
    table = pd.DataFrame(drifts)
    table.index.name = "optimizer"
    return table
