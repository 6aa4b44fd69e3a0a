"""Notebook 10's helpers: prediction tables from profiles, weight-gradient rates, the checker."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
import torch

from autograd_cost.chapters import predict
from autograd_cost.exercises import predict as predict_exercises
from autograd_cost.models import example_input, mlp, small_cnn
from autograd_cost.profile import profile_freezing

matplotlib.use("Agg")


def _profile() -> pd.DataFrame:
    model = mlp(width=16, depth=2)
    return profile_freezing(model, example_input(model, batch=4), repeats=2, predict=True)


def test_prediction_table_parts_add_up_to_the_predicted_ratio_and_keep_prefix_rows() -> None:
    frame = _profile()
    table = predict.prediction_table(frame)
    prefix = frame[frame["mode"] == "prefix"]
    assert list(table.index) == list(prefix["freeze_depth"])
    parts = table[list(predict.PARTS.values())].sum(axis=1)
    assert (parts - table["cost model"]).abs().max() < 1e-9
    flops = prefix["backward_flops"].to_numpy()
    assert list(table["FLOPs"]) == pytest.approx(list(flops / flops[0]))
    assert table["measured"].iloc[0] == 1.0 and table["measured"].iloc[-1] == 0.0


def test_worst_errors_are_the_largest_absolute_differences() -> None:
    table = pd.DataFrame({"measured": [1.0, 0.5, 0.2], "cost model": [1.0, 0.6, 0.1],
                          "FLOPs": [1.0, 0.2, 0.0]})
    errors = predict.worst_errors(table)
    assert errors["cost model"] == pytest.approx(0.1) and errors["FLOPs"] == pytest.approx(0.3)


def test_plot_predicted_parts_draws_one_panel_per_model() -> None:
    table = predict.prediction_table(_profile())
    figure = predict.plot_predicted_parts({"a": table, "b": table})
    assert len(figure.axes) == 2
    matplotlib.pyplot.close(figure)


def test_weight_gradient_rates_count_the_weight_gradient_and_leave_the_model_alone() -> None:
    model = small_cnn(channels=4, hidden=8)
    x = example_input(model, batch=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rates = predict.weight_gradient_rates(model, x, ["conv1", "fc"])
    # analytic: conv1 (1 -> 4 channels, 3x3, 8x8 images) and fc (8 x 4 x 4 -> 8), batch 8
    assert rates.FLOPs["conv1"] == 2 * 8 * 8 * 8 * 4 * 1 * 3 * 3
    assert rates.FLOPs["fc"] == 2 * 8 * (8 * 4 * 4) * 8
    assert (rates["median seconds"] > 0).all() and (rates["GFLOP/s"] > 0).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_checker_accepts_the_cost_models_ratio_and_hints_otherwise(capsys) -> None:
    model = mlp(width=16, depth=3)
    x = example_input(model, batch=4)
    from autograd_cost.costmodel import predict_backward_seconds

    truth = (predict_backward_seconds(model, x, frozen=["fc1"]).seconds
             / predict_backward_seconds(model, x, frozen=[]).seconds)
    assert predict_exercises.check_predicted_ratio(truth + 0.01, model, x, ["fc1"])
    assert not predict_exercises.check_predicted_ratio(truth + 0.2, model, x, ["fc1"])
    assert "too high" in capsys.readouterr().out
    with pytest.raises(TypeError, match="must be a number"):
        predict_exercises.check_predicted_ratio("0.5", model, x, ["fc1"])
