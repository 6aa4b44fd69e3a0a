"""The per-op cost model: recorded FLOPs and bytes against hand counts and the course counter."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from autograd_cost import example_input, mlp, small_cnn, tiny_transformer
from autograd_cost.cost import count_flops
from autograd_cost.costmodel import (
    COMPUTE_CLASSES,
    MEMORY_CLASSES,
    MachineConstants,
    OpRecord,
    Prediction,
    calibrate,
    op_class,
    predict_seconds,
    record_ops,
)

CONSTANTS = MachineConstants(flops_per_second=1e11, bytes_per_second=1e10, seconds_per_op=5e-6)


def test_bytes_and_flops_of_one_linear_layer_match_hand_counts() -> None:
    layer = nn.Linear(3, 5)
    x = torch.randn(7, 3)
    forward = [r for r in record_ops(layer, x) if r.phase == "forward"]
    addmm = next(r for r in forward if r.op == "addmm")
    assert addmm.flops == 2 * 7 * 3 * 5
    # addmm reads bias (5), input (7x3), weight^T (3x5) and writes 7x5, all float32.
    assert addmm.bytes == 4 * (5 + 7 * 3 + 3 * 5 + 7 * 5)
    assert addmm.module == ""  # the layer is the root: no inner module ran it


def test_elementwise_op_bytes_are_inputs_plus_output() -> None:
    class Double(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    records = record_ops(Double(), torch.randn(4, 6))
    mul = next(r for r in records if r.phase == "forward" and r.op == "mul")
    assert mul.bytes == 3 * 4 * 6 * 4 and mul.flops == 0


@pytest.mark.parametrize("build", [lambda: mlp(width=16, depth=2),
                                   lambda: small_cnn(channels=2, hidden=8),
                                   lambda: tiny_transformer(vocab=16, dim=8, heads=2, blocks=1,
                                                            max_len=6)])
@pytest.mark.parametrize("frozen", [None, "first"])
def test_flop_totals_equal_the_course_counter(build, frozen) -> None:
    model = build()
    x = example_input(model, batch=3)
    if frozen == "first":
        frozen = [next(iter(dict(model.named_parameters()))).rpartition(".")[0]]
    records = record_ops(model, x, frozen=frozen)
    counted = count_flops(model, x, frozen=frozen)
    assert sum(r.flops for r in records if r.phase == "forward") == counted.forward
    assert sum(r.flops for r in records if r.phase == "backward") == counted.backward


def test_backward_ops_are_attributed_to_the_units_that_caused_them() -> None:
    model = mlp(width=8, depth=2)
    records = record_ops(model, example_input(model, batch=2))
    backward_matmuls = {r.module for r in records if r.phase == "backward" and r.op == "mm"}
    assert backward_matmuls == {"fc1", "fc2", "head"}


def test_freezing_the_first_layer_drops_its_weight_gradient_matmul_only() -> None:
    model = mlp(width=8, depth=2)
    x = example_input(model, batch=2)
    unfrozen = [r for r in record_ops(model, x) if r.phase == "backward"]
    frozen = [r for r in record_ops(model, x, frozen=["fc1"]) if r.phase == "backward"]
    assert [r.op for r in unfrozen if r.module == "fc1"] == ["mm", "sum"]
    assert [r for r in frozen if r.module == "fc1"] == []
    assert all(p.requires_grad for p in model.parameters())  # restored


def _op(flops: int, nbytes: int, op: str = "mm", phase: str = "backward") -> OpRecord:
    return OpRecord(op, phase, "", flops, nbytes)


def test_prediction_is_the_roofline_sum_with_overhead() -> None:
    compute_bound = _op(flops=2_000_000, nbytes=400)  # 20 µs of compute vs 0.04 µs of traffic
    memory_bound = _op(flops=0, nbytes=1_000_000, op="add")  # 100 µs of traffic
    predicted = predict_seconds([compute_bound, memory_bound], CONSTANTS)
    assert predicted == Prediction(2e-5, 1e-4, 1e-5, 2)
    assert predicted.seconds == pytest.approx(1.3e-4)
    assert predict_seconds([compute_bound], CONSTANTS, "forward").ops == 0
    with pytest.raises(ValueError, match="valid phases are"):
        predict_seconds([], CONSTANTS, "sideways")


@pytest.mark.parametrize(("op", "cls"), [
    ("mm", "matmul"), ("addmm", "matmul"), ("convolution_backward", "convolution"),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("add", "elementwise"), ("threshold_backward", "elementwise"),
    ("native_batch_norm_backward", "normalization"), ("native_layer_norm", "normalization"),
    ("gelu_backward", "transcendental"), ("_log_softmax", "transcendental"),
    ("embedding_dense_backward", "gather")])
def test_op_class_names_the_class_of_each_op(op: str, cls: str) -> None:
    assert op_class(op) == cls


def test_each_class_uses_its_own_rate_and_memory_classes_ignore_flops() -> None:
    constants = dataclasses.replace(CONSTANTS, class_rates={"convolution": 5e10,
                                                            "normalization": 2e9})
    conv = _op(flops=1_000_000, nbytes=100, op="convolution_backward")  # 20 µs at 50 GFLOP/s
    norm = _op(flops=1_000_000, nbytes=100_000, op="native_layer_norm_backward")  # 50 µs
    predicted = predict_seconds([conv, norm], constants)
    assert predicted.compute_seconds == pytest.approx(2e-5)
    assert predicted.memory_seconds == pytest.approx(5e-5)
    assert constants.rate("matmul") == 1e11 and constants.rate("gather") == 1e10  # fallbacks
    with pytest.raises(ValueError, match="valid classes are"):
        constants.rate("teleport")
    assert list(constants.table()["op class"]) == [*COMPUTE_CLASSES, *MEMORY_CLASSES]


def test_a_backward_call_costs_its_fixed_overhead_once() -> None:
    constants = dataclasses.replace(CONSTANTS, seconds_per_backward=5e-5)
    ops = [_op(0, 0, op="add"), _op(0, 0, op="add")]
    assert predict_seconds(ops, constants).overhead_seconds == pytest.approx(2 * 5e-6 + 5e-5)
    forward = [_op(0, 0, op="add", phase="forward")]
    assert predict_seconds(forward, constants, "forward").overhead_seconds == pytest.approx(5e-6)
    assert predict_seconds([], constants).seconds == 0.0  # nothing to run: no call


def test_aliasing_ops_move_no_bytes() -> None:
    class Project(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight  # 3-D @ 2-D: torch folds the batch with _unsafe_view

    records = record_ops(Project(), torch.randn(2, 3, 4))
    aliasing = [r for r in records if r.op == "_unsafe_view"]
    assert aliasing and all(r.bytes == 0 for r in aliasing)


def test_calibration_reports_a_positive_rate_for_every_class() -> None:
    constants = calibrate("cpu")
    assert all(constants.rate(cls) > 0 for cls in (*COMPUTE_CLASSES, *MEMORY_CLASSES))
    assert constants.seconds_per_op > 0 and constants.seconds_per_backward >= 0
    assert "per backward call" in str(constants)


@pytest.mark.parametrize("field", ["flops", "bytes"])
def test_prediction_is_monotone_in_flops_bytes_and_op_count(field: str) -> None:
    base = [_op(1_000_000, 200_000), _op(10, 50_000, op="add")]
    more = [dataclasses.replace(r, **{field: getattr(r, field) * 3}) for r in base]
    assert predict_seconds(more, CONSTANTS).seconds >= predict_seconds(base, CONSTANTS).seconds
    assert (predict_seconds([*base, _op(0, 0)], CONSTANTS).seconds
            > predict_seconds(base, CONSTANTS).seconds)
    slower = dataclasses.replace(CONSTANTS, seconds_per_op=1e-5)
    assert predict_seconds(base, slower).seconds > predict_seconds(base, CONSTANTS).seconds


def test_profile_predict_adds_the_predicted_columns() -> None:
    from autograd_cost.profile import PREDICTED_COLUMNS, profile_freezing, with_ratios

    model = mlp(width=8, depth=2)
    frame = profile_freezing(model, example_input(model, batch=2), modes=["prefix"],
                             freeze_depths=[0, 1, 3], repeats=1, predict=True)
    assert list(PREDICTED_COLUMNS) == list(frame.columns[-len(PREDICTED_COLUMNS):])
    parts = frame[["predicted_compute_seconds", "predicted_memory_seconds",
                   "predicted_overhead_seconds"]].sum(axis=1)
    assert (parts - frame["predicted_backward_seconds"]).abs().max() < 1e-12
    assert frame["predicted_backward_seconds"].is_monotonic_decreasing
    assert frame["predicted_backward_seconds"].iloc[-1] == 0.0  # everything frozen: no backward
    assert with_ratios(frame)["predicted_ratio"].iloc[0] == 1.0
