"""The exercise checkers accept the truth, reject wrong answers, and never print the answer."""

import torch

from autograd_cost import count_flops, mlp, node_counts
from autograd_cost.core import model_loss
from autograd_cost.exercises.graphs import (
    check_backward_flops,
    check_node_counts,
    check_saved_bytes,
    check_units_order,
)
from autograd_cost.freezing import exactly_frozen


def setup():
    model = mlp(width=8, depth=2)
    return model, torch.randn(4, 64)


def test_node_counts_checker(capsys):
    model, x = setup()
    with exactly_frozen(model, ["fc1"]):
        truth = node_counts(model_loss(model, x))
    assert check_node_counts(truth, model, x, ["fc1"])
    wrong = {**truth, "TBackward0": truth["TBackward0"] + 1}
    assert not check_node_counts(wrong, model, x, ["fc1"])
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "TBackward0 is too high" in out
    assert all(p.requires_grad for p in model.parameters())


def test_backward_flops_checker_spots_a_factor_of_two(capsys):
    model, x = setup()
    with exactly_frozen(model, ["head"]):
        truth = count_flops(model, x).backward
    assert check_backward_flops(truth, model, x, ["head"])
    assert not check_backward_flops(truth // 2, model, x, ["head"])
    assert not check_backward_flops(truth + 1, model, x, ["head"])
    out = capsys.readouterr().out
    assert "factor of 2" in out and "too high" in out
    assert str(truth + 1) not in out.split("✅")[-1]


def test_saved_bytes_checker(capsys):
    model, x = setup()
    assert check_saved_bytes(4 * 4 * (8 + 8), model, x, ["fc1"])  # fc2's input + one ReLU output
    assert not check_saved_bytes(0, model, x, ["fc1"])
    assert "too low" in capsys.readouterr().out


def test_units_order_checker(capsys):
    model, x = setup()
    assert check_units_order(["fc1", "fc2", "head"], model, x)
    assert not check_units_order(["fc1", "head", "fc2"], model, x)
    assert not check_units_order(["fc1"], model, x)
    out = capsys.readouterr().out
    assert "entry 1 (counting from 0) is wrong" in out and "exactly once" in out
