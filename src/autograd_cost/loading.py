"""Load the engineer's own model and example input from command-line specs (README, CLI)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from autograd_cost.core import ModelInput
from autograd_cost.models import MODEL_BUILDERS

INPUT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "long": torch.long}


class SpecError(ValueError):
    """A model or input spec that cannot be used; its message is one line for the user."""


def _module_from_file(path: Path) -> object:
    if not path.is_file():
        raise SpecError(f"no such file {str(path)!r}")
    name = f"_autograd_cost_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"cannot import {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise SpecError(f"importing {str(path)!r} failed: {type(error).__name__}: {error}") \
            from error
    return module


def load_callable(spec: str) -> Callable[..., object]:
    """`package.module:name` or `path/to/file.py:name` to the named object (README, CLI)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise SpecError(f"{spec!r} is not 'package.module:callable' or 'path/to/file.py:callable'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _module_from_file(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:
            raise SpecError(f"cannot import module {where!r}: {type(error).__name__}: {error}") \
                from error
    try:
        target = getattr(module, name)
    except AttributeError:
        raise SpecError(f"{where!r} has no attribute {name!r}") from None
    if not callable(target):
        raise SpecError(f"{spec!r} is a {type(target).__name__}, not a callable")
    return target


def parse_kwargs(text: str | None) -> dict[str, object]:
    """A JSON object of keyword arguments, e.g. '{"width": 128}' (README, CLI)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"--model-kwargs is not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise SpecError(f"--model-kwargs must be a JSON object like '{{\"width\": 128}}', "
                        f"got {text!r}")
    return value


def load_model(spec: str, kwargs: dict[str, object] | None = None) -> nn.Module:
    """A course model name, or a factory/class spec called with `kwargs` (README, CLI)."""
    kwargs = kwargs or {}
    if spec not in MODEL_BUILDERS and ":" not in spec:
        raise SpecError(f"unknown model {spec!r}: use a course model "
                        f"({', '.join(sorted(MODEL_BUILDERS))}) or your own as "
                        "package.module:callable or path/to/file.py:callable")
    factory = MODEL_BUILDERS.get(spec) or load_callable(spec)
    try:
        model = factory(**kwargs)
    except Exception as error:
        raise SpecError(f"calling {spec}(**{kwargs}) failed: {type(error).__name__}: {error}") \
            from error
    if not isinstance(model, nn.Module):
        raise SpecError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if not any(True for _ in model.parameters()):
        raise SpecError(f"{spec} has no parameters, so there is nothing to freeze")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """'16,3,224,224' to (16, 3, 224, 224), positive sizes only (README, CLI)."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SpecError(f"--input-shape must be comma-separated integers like 16,3,224,224, "
                        f"got {text!r}") from None
    if not shape or any(size < 1 for size in shape):
        raise SpecError(f"--input-shape sizes must be positive, got {text!r}")
    return shape


def make_input(
    shape: Sequence[int], dtype: str = "float32", vocab: int | None = None, seed: int = 0
) -> torch.Tensor:
    """A seeded example input: normal floats, or integers below `vocab` (README, CLI)."""
    if dtype not in INPUT_DTYPES:
        raise SpecError(f"unknown input dtype {dtype!r}; valid: {sorted(INPUT_DTYPES)}")
    generator = torch.Generator().manual_seed(seed)
    if dtype == "long":
        if vocab is None or vocab < 1:
            raise SpecError("an integer input (--input-dtype long) needs --vocab N, the "
                            "number of token ids, N >= 1")
        return torch.randint(vocab, tuple(shape), generator=generator)
    return torch.randn(tuple(shape), generator=generator, dtype=INPUT_DTYPES[dtype])


def load_input(spec: str) -> ModelInput:
    """Call `module:callable` and check it returns a tensor or a tuple of them (README, CLI)."""
    factory = load_callable(spec)
    try:
        value = factory()
    except Exception as error:
        raise SpecError(f"calling {spec}() failed: {type(error).__name__}: {error}") from error
    if isinstance(value, list):
        value = tuple(value)
    tensors = value if isinstance(value, tuple) else (value,)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise SpecError(f"{spec} must return a tensor or a tuple of tensors, "
                        f"got {type(value).__name__}")
    return value
