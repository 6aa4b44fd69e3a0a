"""The exercise checkers accept the truth, reject wrong answers, and never print the answer."""

import pytest
import torch

from autograd_cost import mlp
from autograd_cost.exercises.graphs import (
    check_backward_flops,
    check_node_counts,
    check_saved_bytes,
    check_units_order,
)

# mlp(width=8, depth=2) at batch 4: fc1 64 -> 8, fc2 8 -> 8, head 8 -> 10.
FC1, FC2, HEAD = (2 * 4 * n * m for n, m in ((64, 8), (8, 8), (8, 10)))


def setup():
    model = mlp(width=8, depth=2)
    return model, torch.randn(4, 64)


def test_node_counts_checker(capsys):
    model, x = setup()
    # fc1 frozen and x needs no grad: fc1's Addmm and relu1 record nothing; fc2 and head
    # keep Addmm, T and two AccumulateGrad each, relu2 its ReluBackward0, the loss its Sum.
    truth = {"AccumulateGrad": 4, "AddmmBackward0": 2, "ReluBackward0": 1,
             "SumBackward0": 1, "TBackward0": 2}
    assert check_node_counts(truth, model, x, ["fc1"])
    wrong = {**truth, "TBackward0": truth["TBackward0"] + 1}
    assert not check_node_counts(wrong, model, x, ["fc1"])
    out = capsys.readouterr().out
    assert "✅ Correct: 10 nodes" in out and "TBackward0 is too high" in out
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="answer must be an int"):
        check_node_counts({"TBackward0": 2.5}, model, x, ["fc1"])


def test_backward_flops_checker_spots_a_factor_of_two(capsys):
    model, x = setup()
    truth = FC1 + FC2 + FC2 + HEAD  # head frozen: weight grads of fc1, fc2; input grads
    assert check_backward_flops(truth, model, x, ["head"])  # of fc2 and head
    assert not check_backward_flops(truth // 2, model, x, ["head"])
    assert not check_backward_flops(truth + 1, model, x, ["head"])
    out = capsys.readouterr().out
    assert f"✅ Correct: {truth:,} backward FLOPs." in out
    assert "factor of 2" in out and "too high" in out
    assert str(truth + 1) not in out.split("✅")[-1]
    with pytest.raises(TypeError, match="answer must be an int"):
        check_backward_flops(float(truth), model, x, ["head"])


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
