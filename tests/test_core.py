"""The core: input checks, device choice, moving inputs, running a model, the loss."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.core import (
    DEVICE_ENV,
    check_choice,
    check_number,
    check_positive_int,
    default_loss,
    make_loss_fn,
    model_loss,
    on_device,
    pick_device,
    run_model,
    to_device,
)


def test_check_positive_int():
    assert check_positive_int("repeats", 3) == 3
    assert check_positive_int("freeze_depth", 0, low=0) == 0
    for bad in (0, -1, True, 2.0, "3", None):
        with pytest.raises(ValueError, match=r"repeats must be an int >= 1, got"):
            check_positive_int("repeats", bad)


def test_check_number():
    assert check_number("lr", 1) == 1.0 and isinstance(check_number("lr", 1), float)
    assert check_number("share", 0.5, low=0, high=1) == 0.5
    for bad in (float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            check_number("lr", bad)
    with pytest.raises(ValueError, match=r"share must lie in \[0, 1\], got 1.5"):
        check_number("share", 1.5, low=0, high=1)
    with pytest.raises(ValueError, match=r"lie in \[-inf, 0\]"):
        check_number("x", 2, high=0)


def test_check_choice():
    assert check_choice("mode", "prefix", ["prefix", "suffix"]) == "prefix"
    with pytest.raises(ValueError, match=r"unknown mode 'middle'; valid values are "
                                         r"\['prefix', 'suffix'\]"):
        check_choice("mode", "middle", ["prefix", "suffix"])


def test_pick_device_argument_environment_and_errors(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "tpu9")
    with pytest.raises(ValueError, match=r"AUTOGRAD_COST_DEVICE 'tpu9' is not a device"):
        pick_device()
    with pytest.raises(ValueError, match="'cpu' or 'cuda' only"):
        pick_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="is_available\\(\\) is False"):
            pick_device("cuda")


def test_to_device_and_on_device():
    pair = (torch.ones(2), torch.zeros(3))
    moved = to_device(pair, torch.device("cpu"))
    assert isinstance(moved, tuple)
    assert all(torch.equal(a, b) for a, b in zip(moved, pair, strict=True))
    with pytest.raises(TypeError, match=r"a torch\.Tensor or a tuple of tensors, got list"):
        to_device([torch.ones(2)], torch.device("cpu"))
    model = nn.Linear(2, 2)
    with on_device(model, torch.device("cpu")) as inside:
        assert inside is model
    assert model.weight.device.type == "cpu"


def test_run_model_and_model_loss_against_pytorch():
    torch.manual_seed(0)
    model, x = nn.Linear(4, 3), torch.randn(5, 4)
    assert torch.equal(run_model(model, x), model(x))
    assert torch.equal(model_loss(model, x), model(x).sum())
    two_inputs = nn.Bilinear(4, 2, 3)
    y = torch.randn(5, 2)
    assert torch.equal(run_model(two_inputs, (x, y)), two_inputs(x, y))
    with pytest.raises(ValueError, match=r"shape \(5, 2\) does not fit the model Linear"):
        run_model(model, y)
    with pytest.raises(TypeError, match="got list"):
        run_model(model, [x])
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar, got shape \(5, 3\)"):
        model_loss(model, x, loss_fn=lambda out: out)


def test_run_model_names_the_shape_only_for_shape_errors():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"shape \(2, 1, 8, 8\) does not fit the model Conv2d"):
        run_model(conv, torch.randn(2, 1, 8, 8))  # 1 channel where 3 are expected
    embedding = nn.Embedding(4, 2)
    with pytest.raises(ValueError, match="does not fit the model Embedding"):
        run_model(embedding, torch.tensor([7]))  # index out of range

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("Expected to have finished reduction in the prior iteration")

    with pytest.raises(RuntimeError, match="finished reduction") as caught:
        run_model(Broken(), torch.randn(2))
    assert caught.type is RuntimeError and caught.value.__cause__ is None  # unchanged


def test_default_loss_sums_in_float32():
    half = torch.full((4,), 0.5, dtype=torch.float16)
    loss = default_loss(half)
    assert loss.dtype == torch.float32 and loss.item() == 2.0


def test_make_loss_fn_picks_cross_entropy_or_mse_by_target():
    torch.manual_seed(0)
    output = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 0])
    assert torch.equal(make_loss_fn(None, labels)(output), F.cross_entropy(output, labels))
    values = torch.randn(4, 3)
    assert torch.equal(make_loss_fn(None, values)(output), F.mse_loss(output, values))
    assert torch.equal(make_loss_fn(F.l1_loss, values)(output), F.l1_loss(output, values))
    assert make_loss_fn(None, None) is None
    assert make_loss_fn(default_loss, None) is default_loss


def test_placed_inputs_moves_input_and_target_and_builds_the_loss():
    from autograd_cost.core import placed_inputs

    x, target = torch.randn(3, 4), torch.tensor([0, 1, 2])
    device, moved, loss = placed_inputs(x, target, None, "cpu")
    assert device == torch.device("cpu") and torch.equal(moved, x)
    logits = torch.randn(3, 5)
    assert torch.equal(loss(logits), torch.nn.functional.cross_entropy(logits, target))
    assert placed_inputs((x, x), None, None, "cpu")[2] is None  # no target: the default loss
