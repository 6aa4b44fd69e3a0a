"""The quiz checker: right answers pass, misses name the notebook, bad input is explained."""

from pathlib import Path

import pytest
import torch
from torch import nn

from autograd_cost import count_flops, execution_order, mlp
from autograd_cost.exercises.quiz import QUESTIONS, check_quiz, show_quiz
from autograd_cost.freezing import exactly_frozen, prefix_units, suffix_units

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_all_right(capsys):
    assert check_quiz({n: q.answer for n, q in QUESTIONS.items()})
    assert f"✅ Correct: all {len(QUESTIONS)} answers right." in capsys.readouterr().out


def test_misses_point_to_the_teaching_notebook_without_the_answer(capsys):
    answers = {n: q.answer for n, q in QUESTIONS.items()}
    answers[2] = "a"
    del answers[5]
    assert not check_quiz(answers)
    out = capsys.readouterr().out
    assert f"2 of {len(QUESTIONS)} to revisit" in out
    assert "Q2: see 01_which_nodes_exist" in out and "Q5: see 04_partial_weight_freeze" in out
    assert "None" not in out


def test_bad_answers_raise():
    with pytest.raises(ValueError, match=r"question number 9; valid values are \[1, 2, 3, 4, 5, "
                                         r"6, 7, 8\]"):
        check_quiz({9: "a"})
    with pytest.raises(ValueError, match=r"answer to Q1 'z'; valid values are \['a', 'b', 'c'\]"):
        check_quiz({1: "z"})
    with pytest.raises(ValueError, match=r"answer to Q7 'c'; valid values are \['a', 'b'\]"):
        check_quiz({7: "C"})  # letters are case-insensitive, but must be one of Q7's


def test_show_quiz_prints_every_question(capsys):
    show_quiz()
    assert capsys.readouterr().out.count("Q") >= len(QUESTIONS)


def test_every_referenced_notebook_exists():
    missing = [q.notebook for q in QUESTIONS.values()
               if not (NOTEBOOKS / f"{q.notebook}.ipynb").exists()]
    assert not missing, f"the quiz points to notebooks that do not exist: {missing}"


def test_q2_answer_is_what_pytorch_does_to_a_frozen_parameters_grad():
    """PyTorch is the oracle: backward leaves a frozen parameter's .grad as it was."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.randn(5, 4)
    model(x).sum().backward()
    old = model[0].weight.grad.clone()
    model[0].requires_grad_(False)
    model(x).sum().backward()
    assert torch.equal(model[0].weight.grad, old)  # unchanged: neither zeroed nor None
    fresh = nn.Linear(4, 3).requires_grad_(False)
    fresh(x.requires_grad_()).sum().backward()
    assert fresh.weight.grad is None  # None only because it was None before
    q2 = QUESTIONS[2]
    assert "unchanged" in q2.options[q2.answer]


def _backward_flops_left(model, names):
    x = torch.randn(4, model.fc1.in_features)
    with exactly_frozen(model, names):
        return count_flops(model, x).backward


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_q1_answer_holds_for_equal_widths_and_needs_that_scope(depth):
    """count_flops is the oracle: equal widths, the first half saves more; a wide head flips it."""
    square = mlp(width=16, depth=2 * depth - 1, in_features=16, out_features=16)
    order = execution_order(square, torch.randn(4, 16))
    half = len(order) // 2
    first = _backward_flops_left(square, prefix_units(order, half))
    last = _backward_flops_left(square, suffix_units(order, half))
    assert first < last  # fewer backward FLOPs left: the first half saved more
    q1 = QUESTIONS[1]
    assert q1.options[q1.answer] == "the first half" and "same width" in q1.text
    wide_head = mlp(width=16, depth=3, out_features=1000)
    order = execution_order(wide_head, torch.randn(4, 64))
    assert _backward_flops_left(wide_head, suffix_units(order, 2)) < _backward_flops_left(
        wide_head, prefix_units(order, 2))  # so Q1 must say "the same width"


def test_q8_adam_bytes_per_parameter_match_pytorch():
    """Q8's answer, checked with torch.optim.Adam: 16 bytes trainable, 4 frozen (float32)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()

    def nbytes(t):
        return t.numel() * t.element_size()

    for param in model.parameters():
        state = optimizer.state.get(param, {})
        moments = sum(nbytes(v) for k, v in state.items() if k != "step")
        grad = 0 if param.grad is None else nbytes(param.grad)
        per_parameter = (nbytes(param) + grad + moments) / param.numel()
        assert per_parameter == (16 if param.requires_grad else 4)
    assert QUESTIONS[8].options[QUESTIONS[8].answer] == "16 trainable, 4 frozen"
