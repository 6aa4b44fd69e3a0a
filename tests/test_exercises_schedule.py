"""Notebook 05's checkers accept the truth, reject wrong answers, and never print the answer."""

import pytest
import torch

from autograd_cost.exercises.schedule import (
    check_expected_saving,
    check_frozen_count,
    check_optimizer_units,
    schedule_saving,
)
from autograd_cost.freezing import execution_order
from autograd_cost.models import small_cnn
from autograd_cost.schedule import FreezeSchedule, expected_saving


def test_frozen_count_checker(capsys):
    schedule = FreezeSchedule(freeze_start=0.2, freeze_level=0.75)
    assert check_frozen_count(2, schedule, 0.6, 6)  # floor(0.375 * 6)
    assert not check_frozen_count(3, schedule, 0.6, 6)
    assert not check_frozen_count(0, schedule, 0.6, 6)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "too high" in out and "too low" in out


def test_schedule_saving_matches_a_hand_count():
    by_depth, forward = [100, 60, 20, 0], 50
    schedule = FreezeSchedule(freeze_start=0.0, freeze_level=1.0)
    counts = [0, 0, 1, 1, 2, 2]  # floor(3 * step / 6)
    assert schedule_saving(schedule, 6, by_depth, forward) == pytest.approx(
        expected_saving(by_depth, forward, counts)
    )
    assert schedule_saving(schedule, 6, by_depth, forward) == pytest.approx((2 * 40 + 2 * 80)
                                                                            / 6 / 150)


def test_expected_saving_checker(capsys):
    by_depth, forward = [100, 60, 20, 0], 50
    schedule = FreezeSchedule(freeze_start=0.5, freeze_level=1.0)
    truth = schedule_saving(schedule, 100, by_depth, forward)
    assert check_expected_saving(truth + 0.004, schedule, 100, by_depth, forward)
    assert not check_expected_saving(truth + 0.02, schedule, 100, by_depth, forward)
    assert not check_expected_saving(100 * truth, schedule, 100, by_depth, forward)
    out = capsys.readouterr().out
    assert "too high" in out and "not a percentage" in out
    assert f"{truth:.3f}" not in out and f"{truth:.1%}" not in out


def test_optimizer_units_checker(capsys):
    model = small_cnn(channels=4, hidden=8)
    order = execution_order(model, torch.randn(2, 1, 8, 8))
    schedule = FreezeSchedule(freeze_start=0.1, freeze_level=1.0)
    assert check_optimizer_units(["fc", "head"], model, order, schedule, 0.8)
    assert not check_optimizer_units(["conv1", "bn1"], model, order, schedule, 0.8)
    assert not check_optimizer_units(["head"], model, order, schedule, 0.8)
    assert not check_optimizer_units("head", model, order, schedule, 0.8)
    out = capsys.readouterr().out
    assert "which end of the execution order" in out and "you listed 1 units" in out
    assert "not one string" in out
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was
    assert model.training
