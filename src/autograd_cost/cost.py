"""Counting instruments: FLOPs (FlopCounterMode) and bytes (saved activations, grads, state)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.optim import Optimizer
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from autograd_cost.core import LossFn, ModelInput, model_loss
from autograd_cost.freezing import frozen_state


@dataclass(frozen=True)
class Flops:
    """Forward and backward FLOPs of one step, counted by FlopCounterMode (notebook 01)."""

    forward: int
    backward: int


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward_flops(grad_out, query, key, value, *args, out_shape=None,
                              **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode's registry (torch 2.13) knows the CUDA attention kernels but not the CPU one
# that F.scaled_dot_product_attention dispatches to, which it would count as 0 FLOPs. We map
# it to torch's own attention formulas (the two matmuls QK^T and PV, causal mask ignored, as
# torch does for CUDA), per counter rather than globally, so importing this has no effect.
ATTENTION_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _attention_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU attention (notebook 02).

    What it counts: matmuls (mm, addmm, bmm, baddbmm), convolutions and attention, each as
    2 FLOPs per multiply-add. What it does not count: elementwise ops (ReLU, GELU, adding),
    normalization (BatchNorm, LayerNorm), softmax outside attention, pooling, reductions,
    the loss and the optimizer step.
    """
    return FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS)


def count_flops(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
) -> Flops:
    """Forward and backward FLOPs of one step, counted by FlopCounterMode (notebook 01).

    frozen=None counts the model as configured; a list of unit names counts it with exactly
    those units frozen (`freezing.frozen_state`). The model is restored either way.
    """
    with frozen_state(model, frozen):
        with flop_counter() as forward_counter:
            loss = model_loss(model, example_input, loss_fn)
        backward = 0
        if loss.requires_grad:
            with flop_counter() as backward_counter:
                loss.backward()
            backward = backward_counter.get_total_flops()
    return Flops(forward_counter.get_total_flops(), backward)


def forward_flops(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
) -> int:
    """FLOPs of the forward pass and loss (notebook 02)."""
    return count_flops(model, example_input, loss_fn, frozen).forward


def backward_flops(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
) -> int:
    """FLOPs of the backward pass, as configured or with `frozen` units frozen (notebook 01)."""
    return count_flops(model, example_input, loss_fn, frozen).backward


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    storage = tensor.untyped_storage()
    return (str(tensor.device), storage.data_ptr())


def saved_activation_bytes(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
) -> int:
    """Bytes the forward pass saves for backward, parameters and buffers excluded (notebook 01).

    `frozen` as in `count_flops`. Counted with saved_tensors_hooks; tensors that share storage
    are counted once. Packed tensors are kept alive until the count ends, so a graph freed
    during the forward (e.g. after .detach()) cannot hand its memory, and thus its storage
    key, to a later tensor.
    """
    excluded = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    storages: dict[tuple[str, int], int] = {}
    alive: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        alive.append(tensor)
        key = _storage_key(tensor)
        if key not in excluded:
            storages[key] = max(storages.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    with frozen_state(model, frozen), saved_tensors_hooks(pack, unpack):
        model_loss(model, example_input, loss_fn)
    return sum(storages.values())




def storage_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages among `tensors`; views of one storage count once."""
    sizes: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        sizes[_storage_key(tensor)] = tensor.untyped_storage().nbytes()
    return sum(sizes.values())


def gradient_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters' .grad tensors; a None grad costs nothing (notebook 04)."""
    return storage_bytes([p.grad for p in model.parameters() if p.grad is not None])


def optimizer_state_bytes(optimizer: Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state, step counters included (notebook 07)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
