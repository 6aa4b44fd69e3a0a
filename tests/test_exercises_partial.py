"""Notebook 04's checkers accept the truth, reject wrong answers, and never print the answer."""

import pytest

from autograd_cost.exercises.partial import (
    _hook_entries_move,
    _split_backward_flops,
    check_hook_entries_move,
    check_split_backward_flops,
)


def test_split_backward_flops_is_the_trainable_rows_weight_gradient():
    # oracle: d loss / d W_trainable = grad_out[:, trainable].T @ x, 2 FLOPs per multiply-add
    assert _split_backward_flops(8, 6, 2, 4) == 2 * 4 * 8 * (6 - 2)
    assert _split_backward_flops(3, 3, 1, 20) == 2 * 20 * 3 * 2


def test_split_flops_checker(capsys):
    truth = 2 * 4 * 8 * 4
    assert check_split_backward_flops(truth, 8, 6, 2, 4)
    assert not check_split_backward_flops(2 * truth, 8, 6, 2, 4)
    assert not check_split_backward_flops(2 * 4 * 8 * 6, 8, 6, 2, 4)
    assert not check_split_backward_flops(truth + 1, 8, 6, 2, 4)
    assert not check_split_backward_flops(0, 8, 6, 2, 4)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("✅ Correct")
    assert "factor of 2" in lines[1] and "full weight gradient" in lines[2]
    assert lines[3].startswith("❌ Not yet: too high:") and lines[4].startswith(
        "❌ Not yet: too low:")
    assert all(str(truth) not in line for line in lines[1:])


def test_hook_drift_truth_table():
    assert not _hook_entries_move(0.0, 0)  # zero grads from step one: Adam's moments stay zero
    assert _hook_entries_move(0.0, 5)  # momentum from unmasked steps keeps moving them
    assert _hook_entries_move(0.1, 0)  # weight decay is added to the (zero) gradient


def test_hook_checker(capsys):
    assert check_hook_entries_move(False, 0.0, 0)
    assert not check_hook_entries_move(False, 0.1, 0)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "❌ Not yet" in out
    assert "True" not in out and "False" not in out


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: _split_backward_flops(8, 6, 6, 4), "frozen_rows"),
        (lambda: _split_backward_flops(8, 1, 1, 4), "out_features"),
        (lambda: _split_backward_flops(8, 6, 2, 0), "batch"),
        (lambda: check_split_backward_flops(1.5, 8, 6, 2, 4), "an int"),
        (lambda: _hook_entries_move(-1.0, 0), "weight_decay"),
        (lambda: _hook_entries_move(0.0, -1), "unmasked_steps"),
        (lambda: check_hook_entries_move("yes", 0.0, 0), "True or False"),
    ],
)
def test_checkers_reject_bad_input(call, error):
    with pytest.raises((ValueError, TypeError), match=error):
        call()
