"""The core every instrument builds on: model inputs, the loss, the device and input checks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

ModelInput = torch.Tensor | tuple[torch.Tensor, ...]
LossFn = Callable[[torch.Tensor], torch.Tensor]
DEVICE_ENV = "AUTOGRAD_COST_DEVICE"


def check_positive_int(name: str, value: object, low: int = 1) -> int:
    """Raise a clear ValueError unless `value` is an int >= `low` (notebook 00)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def check_number(name: str, value: object, low: float | None = None,
                 high: float | None = None) -> float:
    """Raise a clear ValueError unless `value` is a finite number in [low, high] (notebook 00)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must lie in {bounds}, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, valid: Sequence[object]) -> object:
    """Raise a clear ValueError unless `value` is one of `valid` (notebook 00)."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values are {list(valid)}")
    return value


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the argument, else $AUTOGRAD_COST_DEVICE, else CUDA if present.

    `make test` sets AUTOGRAD_COST_DEVICE=cpu, so the stored CPU
    outputs are compared on any machine; `make test-cuda` sets it to cuda.
    """
    source = "device argument"
    if device is None and os.environ.get(DEVICE_ENV):
        device, source = os.environ[DEVICE_ENV], DEVICE_ENV
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{source} {device!r} is not a device; use 'cpu', 'cuda' or "
                         f"'cuda:N' ({error})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{source} asks for {device!r}, but torch.cuda.is_available() is "
                         f"False on this machine; use 'cpu'")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"{source} {device!r}: the course runs on 'cpu' or 'cuda' only")
    return chosen


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels so that a timer reads real work (notebook 02)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(example_input: ModelInput, device: torch.device) -> ModelInput:
    """Move a tensor or a tuple of tensors to `device`, refusing anything else."""
    if isinstance(example_input, tuple):
        return tuple(t.to(device) for t in example_input)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            "example_input must be a torch.Tensor or a tuple of tensors, "
            f"got {type(example_input).__name__}"
        )
    return example_input.to(device)


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move the model to `device` inside the block and back after."""
    home = next(model.parameters()).device
    try:
        yield model.to(device)
    finally:
        model.to(home)


# Words of PyTorch's errors for an input that does not fit (a shape, a size, an index).
_SHAPE_WORDS = ("shape", "size", "dimension", "channels", "index out of range", "must match")


def run_model(model: nn.Module, example_input: ModelInput) -> torch.Tensor:
    """Call the model on a tensor or tuple of tensors; clear error if it does not fit.

    Errors about the input's shape become a ValueError that names the shape; any other
    error of the model's forward propagates unchanged.
    """
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError(
            "example_input must be a torch.Tensor or a tuple of tensors, "
            f"got {type(example_input).__name__}"
        )
    try:
        return model(*inputs)
    except (RuntimeError, IndexError, ValueError) as error:
        if not any(word in str(error).lower() for word in _SHAPE_WORDS):
            raise  # not about the input's shape: the model's own error, unchanged
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise ValueError(
            f"example input of shape {shapes} does not fit the model "
            f"{type(model).__name__}: {error}"
        ) from error


def default_loss(output: torch.Tensor) -> torch.Tensor:
    """The loss used when none is given: the sum of the output (notebook 01)."""
    return output.float().sum()


def model_loss(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None
) -> torch.Tensor:
    """Run the model and reduce its output to a scalar loss (notebook 01)."""
    loss = (loss_fn or default_loss)(run_model(model, example_input))
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    return loss


def make_loss_fn(
    loss_fn: Callable[..., torch.Tensor] | None, target: torch.Tensor | None
) -> LossFn | None:
    """Turn (loss_fn, target) into a one-argument loss of the model output.

    With a target but no loss_fn, integer targets get cross-entropy and float targets MSE.
    """
    if target is None:
        return loss_fn
    if loss_fn is None:
        loss_fn = F.cross_entropy if not target.is_floating_point() else F.mse_loss
    chosen = loss_fn
    return lambda output: chosen(output, target)


def placed_inputs(
    example_input: ModelInput,
    target: torch.Tensor | None,
    loss_fn: Callable[..., torch.Tensor] | None,
    device: str | torch.device | None,
) -> tuple[torch.device, ModelInput, LossFn | None]:
    """The device to measure on, the input and target moved there, and the loss."""
    chosen = pick_device(device)
    if target is not None:
        target = target.to(chosen)
    return chosen, to_device(example_input, chosen), make_loss_fn(loss_fn, target)
