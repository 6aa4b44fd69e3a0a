"""Notebook 02's checkers accept the truth, reject wrong answers, and never print the answer."""

import pytest

from autograd_cost.cost import count_flops
from autograd_cost.exercises.depth import check_flop_ratio, check_flop_saving, check_step_bound
from autograd_cost.models import example_input, mlp, small_cnn


def backward_under(model, x, names):
    return count_flops(model, x, frozen=names).backward


def test_flop_ratio_checker_against_the_matmul_count(capsys):
    model = mlp(width=16, depth=4)
    x = example_input(model, batch=8)
    w, b = 16, 8
    unfrozen = 2 * b * (64 * w + 3 * 2 * w * w + 2 * w * 10)
    prefix_3 = 2 * b * (w * w + 2 * w * 10)
    assert prefix_3 / unfrozen == pytest.approx(backward_under(model, x, ["fc1", "fc2", "fc3"])
                                                / backward_under(model, x, []))
    assert check_flop_ratio(prefix_3 / unfrozen, model, x, "prefix", 3)
    assert not check_flop_ratio(prefix_3 / unfrozen + 0.1, model, x, "prefix", 3)
    assert not check_flop_ratio(0.0, model, x, "suffix", 1)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "too high" in out and "weight-gradient" in out
    assert f"{prefix_3 / unfrozen:.2f}" not in out
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="answer must be a number"):
        check_flop_ratio("0.5", model, x, "prefix", 1)


def test_step_bound_checker(capsys):
    model = mlp(width=8, depth=2)
    x = example_input(model, batch=4)
    flops = count_flops(model, x)
    truth = (flops.forward + flops.backward) / flops.forward
    assert check_step_bound(truth, model, x)
    assert not check_step_bound(truth + 0.5, model, x)
    out = capsys.readouterr().out
    assert "too high" in out and f"{truth:.2f}" not in out
    assert "FLOP estimate" in out


def test_flop_saving_checker_spots_the_parameter_share(capsys):
    model = small_cnn(channels=4, hidden=64)
    x = example_input(model, batch=4)
    names = ["fc", "head"]
    truth = 1 - backward_under(model, x, names) / backward_under(model, x, [])
    share = (sum(p.numel() for n in names for p in getattr(model, n).parameters())
             / sum(p.numel() for p in model.parameters()))
    assert abs(share - truth) > 0.1
    assert check_flop_saving(truth, model, x, names)
    assert not check_flop_saving(share, model, x, names)
    assert not check_flop_saving(truth + 0.2, model, x, names)
    out = capsys.readouterr().out
    assert "share of parameters frozen, not of FLOPs" in out and "too high" in out
    assert f"{truth:.2f}" not in out
    # Oracle by hand (batch 4, 8x8 images, 3x3 kernels, 2 FLOPs per multiply-add): only the
    # weight-gradient matmuls of fc (128 -> 64) and head (64 -> 10) go.
    conv1, conv2 = 2 * 4 * 64 * (1 * 9 * 4), 2 * 4 * 64 * (4 * 9 * 8)
    fc, head = 2 * 4 * 128 * 64, 2 * 4 * 64 * 10
    assert truth == pytest.approx((fc + head) / (conv1 + 2 * conv2 + 2 * fc + 2 * head))
    with pytest.raises(ValueError, match="unknown unit"):
        check_flop_saving(0.5, model, x, ["nope"])
