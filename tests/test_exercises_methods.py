"""Notebook 03's checkers accept the truth, reject wrong answers, and never print the answer."""

import torch

from autograd_cost.data import load_digit_images
from autograd_cost.exercises.methods import (
    adam_state_after_freeze,
    check_adam_state_bytes,
    check_momentum_drift,
    check_units_cut_off,
    momentum_drift,
    units_cut_off,
)
from autograd_cost.models import small_cnn


def setup():
    x, y = load_digit_images(16)
    return small_cnn(channels=4, hidden=8), x, y


def test_adam_state_oracle_and_checker(capsys):
    model, x, y = setup()
    names = ["conv1", "bn1", "conv2", "bn2", "fc"]
    truth, tensors = adam_state_after_freeze(model, names, x, y)
    head = model.head.weight.numel() + model.head.bias.numel()
    assert (truth, tensors) == (2 * 4 * head + 4 * 2, 2)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert check_adam_state_bytes(truth, model, names, x, y)
    assert not check_adam_state_bytes(truth - 8, model, names, x, y)
    assert not check_adam_state_bytes(truth + 1, model, names, x, y)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "step counter" in out and "too high" in out
    assert f"{truth + 1:,}" not in out


def test_momentum_drift_is_the_geometric_series():
    lr, momentum, grad, steps = 0.1, 0.9, 2.0, 10
    expected = lr * grad * sum(momentum**k for k in range(1, steps + 1))
    assert abs(momentum_drift(lr, momentum, grad, steps) - expected) < 1e-12
    assert momentum_drift(lr, 0.0, grad, steps) == 0.0


def test_momentum_checker(capsys):
    truth = momentum_drift(0.1, 0.9, 1.0, 10)
    assert check_momentum_drift(truth, 0.1, 0.9, 1.0, 10)
    assert not check_momentum_drift(0.0, 0.1, 0.9, 1.0, 10)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "too low" in out and f"{truth:.3f}" not in out


def test_units_cut_off_oracle_and_checker(capsys):
    model, x, y = setup()
    assert units_cut_off(model, ["bn2"], x, y) == {"conv1", "bn1", "conv2", "bn2"}
    assert units_cut_off(model, ["head"], x, y) == {"conv1", "bn1", "conv2", "bn2", "fc", "head"}
    assert all(p.grad is None for p in model.parameters())
    assert check_units_cut_off({"conv1", "bn1", "conv2", "bn2"}, model, ["bn2"], x, y)
    assert not check_units_cut_off({"bn2"}, model, ["bn2"], x, y)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "3 unit(s) missing" in out
    assert "conv1" not in out
    assert torch.is_grad_enabled()
