"""Notebook 05's checkers accept the truth, reject wrong answers, and never print the answer."""

import pytest
import torch

from autograd_cost.chapters.transfer import FreezeSchedule
from autograd_cost.exercises.schedule import (
    check_expected_saving,
    check_frozen_count,
    check_optimizer_units,
    schedule_saving,
)
from autograd_cost.freezing import execution_order
from autograd_cost.models import small_cnn


def test_frozen_count_checker(capsys):
    schedule = FreezeSchedule(freeze_start=0.2, freeze_level=0.75)
    assert check_frozen_count(2, schedule, 0.6, 6)  # floor(0.75 * 0.4 / 0.8 * 6) = floor(2.25)
    assert not check_frozen_count(3, schedule, 0.6, 6)
    assert not check_frozen_count(0, schedule, 0.6, 6)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "too high" in out and "too low" in out
    with pytest.raises(TypeError, match="must be an int"):
        check_frozen_count(2.0, schedule, 0.6, 6)


def test_schedule_saving_matches_a_hand_count():
    by_depth, forward = [100, 60, 20, 0], 50
    schedule = FreezeSchedule(freeze_start=0.0, freeze_level=1.0)
    # steps 0..5 at progress i/6: floor(3 * i / 6) = 0, 0, 1, 1, 2, 2 units frozen, saving
    # 0, 0, 40, 40, 80, 80 FLOPs: mean 40 of a 150-FLOP step
    assert schedule_saving(schedule, 6, by_depth, forward) == pytest.approx(40 / 150)
    assert schedule_saving(FreezeSchedule(0.0, 0.0), 6, by_depth, forward) == 0
    with pytest.raises(ValueError, match="non-negative"):
        schedule_saving(schedule, 6, by_depth, -1)


def test_expected_saving_checker(capsys):
    by_depth, forward = [100, 60, 20, 0], 50
    schedule = FreezeSchedule(freeze_start=0.5, freeze_level=1.0)
    # step i freezes floor(6 * (i/100 - 0.5)) units: 0 up to i = 66, 1 for i = 67..83
    # (17 steps, 40 FLOPs saved each), 2 for i = 84..99 (16 steps, 80 each)
    hand = (17 * 40 + 16 * 80) / 100 / 150
    truth = schedule_saving(schedule, 100, by_depth, forward)
    assert truth == pytest.approx(hand)
    assert check_expected_saving(truth + 0.004, schedule, 100, by_depth, forward)
    assert not check_expected_saving(truth + 0.02, schedule, 100, by_depth, forward)
    assert not check_expected_saving(truth - 0.02, schedule, 100, by_depth, forward)
    assert not check_expected_saving(100 * truth, schedule, 100, by_depth, forward)
    out = capsys.readouterr().out
    assert "too high" in out and "too low" in out and "not a percentage" in out
    assert f"{truth:.3f}" not in out and f"{truth:.1%}" not in out


def test_optimizer_units_checker(capsys):
    model = small_cnn(channels=4, hidden=8)
    order = execution_order(model, torch.randn(2, 1, 8, 8))
    schedule = FreezeSchedule(freeze_start=0.1, freeze_level=1.0)
    # at 0.8: floor((0.8 - 0.1) / 0.9 * 6) = 4 frozen, fc and head still train
    assert check_optimizer_units(["fc", "head"], model, order, schedule, 0.8)
    assert not check_optimizer_units(["conv1", "bn1"], model, order, schedule, 0.8)
    assert not check_optimizer_units(["head"], model, order, schedule, 0.8)
    assert not check_optimizer_units("head", model, order, schedule, 0.8)
    out = capsys.readouterr().out
    assert "which end of the execution order" in out and "you listed 1 units" in out
    assert "not one string" in out
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was
    assert model.training
