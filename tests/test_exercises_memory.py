"""Notebook 07's checkers accept the truth, reject wrong answers, and never print the answer."""

import pytest

from autograd_cost.cost import saved_activation_bytes
from autograd_cost.exercises.memory import (
    check_crossover_batch,
    check_peak_estimate,
    check_state_bytes,
    crossover_batch,
)
from autograd_cost.memory import memory_breakdown
from autograd_cost.models import example_input, mlp


def test_state_bytes_checker(capsys):
    model = mlp(width=16, depth=2)  # fc1 64->16, fc2 16->16, head 16->10
    x = example_input(model, batch=4)
    trainable = 16 * 16 + 16 + 16 * 10 + 10
    truth = 4 * trainable + 8 * trainable + 4 * 4  # grads, two moments, four step counters
    assert check_state_bytes(truth, model, x, ["fc1"])
    assert not check_state_bytes(truth - 16, model, x, ["fc1"])
    assert not check_state_bytes(truth + 1000, model, x, ["fc1"])
    everything = 12 * sum(p.numel() for p in model.parameters()) + 4 * 6
    assert not check_state_bytes(everything, model, x, ["fc1"])
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "step counter" in out and "too high" in out
    assert "frozen ones get no gradient" in out
    assert out.count(f"{truth:,}") == 1  # only in the success line
    assert check_state_bytes(4 * trainable, model, x, ["fc1"], optimizer="sgd")
    with pytest.raises(TypeError, match="answer must be an int"):
        check_state_bytes(1.5, model, x, ["fc1"])


def test_crossover_batch_against_linear_saved_bytes(capsys):
    model = mlp(width=16, depth=2)
    per_sample = 4 * (64 + 16 + 16)  # float32: fc1 keeps x, each ReLU its 16-wide output
    assert saved_activation_bytes(model, example_input(model, batch=7)) == 7 * per_sample
    n = sum(p.numel() for p in model.parameters())
    fixed = 4 * n + 8 * n + 4 * 6
    truth = -(-fixed // per_sample)  # ceiling division
    assert crossover_batch(model) == truth
    assert crossover_batch(model, optimizer="sgd") == -(-4 * n // per_sample)
    assert check_crossover_batch(truth, model)
    assert not check_crossover_batch(truth - 1, model)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "too low" in out and f"{truth - 1}" not in out.split("✅")[0]
    assert all(p.requires_grad for p in model.parameters())


def test_peak_estimate_checker(capsys):
    model = mlp(width=16, depth=2)
    x = example_input(model, batch=8)
    peak = memory_breakdown(model, x, optimizer="adam").peak_bytes
    assert check_peak_estimate(peak, model, x)
    assert check_peak_estimate(int(peak * 1.09), model, x)
    assert not check_peak_estimate(int(peak * 1.2), model, x)
    assert not check_peak_estimate(peak // 2, model, x)
    out = capsys.readouterr().out
    assert "too high" in out and "too low" in out and f"{peak:,}" not in out
