"""Notebook 04's gradient masks: hooks that zero frozen rows, pinning them, and checking them.

A freeze plan maps a layer's name to the number of leading weight rows to freeze. Each
function here reads a layer's full (out, in) weight: `.full_weight()` where the layer has one
(the cat and split designs of `chapters.partial`), else `.weight`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from autograd_cost.core import LossFn, ModelInput, check_number, check_positive_int
from autograd_cost.training import optimizer_params, preserved_training, training_step

FreezePlan = Mapping[str, int]


def _planned_layers(model: nn.Module, plan: FreezePlan) -> dict[str, nn.Module]:
    """The planned layers, after checking that each has a 2-D weight and valid row count."""
    if not isinstance(plan, Mapping) or not plan:
        raise ValueError(f"plan must be a non-empty mapping of layer names to frozen row "
                         f"counts, got {plan!r}")
    modules = dict(model.named_modules())
    weighted = [n for n, m in modules.items() if isinstance(getattr(m, "weight", None),
                                                            torch.Tensor)]
    unknown = [n for n in plan if n not in weighted]
    if unknown:
        raise ValueError(f"plan names {unknown} are not layers with a weight; valid names are "
                         f"{weighted}")
    layers = {name: modules[name] for name in plan}
    for name, rows in plan.items():
        out_rows = _full_weight(layers[name]).shape[0]
        check_positive_int(f"plan[{name!r}]", rows)
        if rows >= out_rows:
            raise ValueError(f"plan[{name!r}]={rows} must leave a trainable row: valid counts "
                             f"are 1..{out_rows - 1}")
    return layers


def _full_weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.full_weight() if hasattr(layer, "full_weight") else layer.weight
    if weight.dim() != 2:
        raise ValueError(f"a {type(layer).__name__}'s weight must be 2-D, got shape "
                         f"{tuple(weight.shape)}")
    return weight.detach()


def mask_gradients(
    model: nn.Module, plan: FreezePlan, weight_decay: float = 0.0
) -> list[RemovableHandle]:
    """Hooks that zero the planned rows of each layer's weight gradient, in place (notebook 04).

    With weight_decay > 0 each hook first adds L2 decay (weight_decay * weight) to the
    gradient, so the trainable rows are decayed and the frozen ones are not; the optimizer
    must then not decay these weights again. Returns the hooks' handles.
    """
    check_number("weight_decay", weight_decay, low=0.0)
    handles = []
    for name, layer in _planned_layers(model, plan).items():
        weight = layer.weight
        if not weight.requires_grad:
            raise ValueError(f"{name}.weight does not require grad: there is nothing to mask")
        keep = torch.ones_like(weight)
        keep[: plan[name]] = 0

        def hook(grad: torch.Tensor, weight=weight, keep=keep) -> torch.Tensor:
            if weight_decay:
                grad = grad + weight_decay * weight.detach()
            return grad * keep

        handles.append(weight.register_hook(hook))
    return handles


def pin_frozen_rows(optimizer: Optimizer, model: nn.Module, plan: FreezePlan) -> RemovableHandle:
    """After every optimizer step, write the planned rows back to their values now (notebook 04).

    This masks the update itself, so weight decay and momentum cannot move them.
    """
    layers = _planned_layers(model, plan)
    updated = optimizer_params(optimizer)
    missing = [n for n, m in layers.items() if not any(p is m.weight for p in updated)]
    if missing:
        raise ValueError(f"the weights of {missing} are not among the optimizer's parameters")
    kept = [(layers[name].weight, rows, layers[name].weight.detach()[:rows].clone())
            for name, rows in plan.items()]

    def restore(*_: object) -> None:
        with torch.no_grad():
            for weight, rows, values in kept:
                weight[:rows] = values

    return optimizer.register_step_post_hook(restore)


def frozen_entry_change(
    model: nn.Module,
    plan: FreezePlan,
    example_input: ModelInput,
    loss_fn: LossFn,
    steps: int = 50,
    optimizer: Optimizer | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
) -> float:
    """Largest change of any planned (frozen) weight entry after `steps` steps (notebook 04).

    Each step is `training.training_step` with `optimizer`, by default Adam(lr, weight_decay)
    over the trainable parameters. The model and the optimizer's state are restored afterwards.
    """
    layers = _planned_layers(model, plan)
    check_positive_int("steps", steps)
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    with preserved_training(model, optimizer):
        before = {name: _full_weight(layers[name])[:rows].clone() for name, rows in plan.items()}
        for _ in range(steps):
            training_step(model, example_input, loss_fn, optimizer)
        return max((_full_weight(layers[name])[:rows] - before[name]).abs().max().item()
                   for name, rows in plan.items())
