"""The op profiler (ops.py) against torch.profiler's own totals and hand-counted op calls."""

import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.ops import (
    extra_op_seconds,
    extra_ops,
    op_counts,
    profile_run,
    self_seconds_per_call,
    self_time_share,
    surplus_seconds,
    typical_self_seconds,
)


class CatRows(nn.Module):
    """A Linear whose weight is rebuilt by torch.cat of a buffer and a parameter each call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        linear = nn.Linear(4, 3)
        self.register_buffer("frozen", linear.weight.detach()[:1].clone())
        self.weight = nn.Parameter(linear.weight.detach()[1:].clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch.cat((self.frozen, self.weight)), self.bias)


def step_of(model: nn.Module, x: torch.Tensor):
    def run() -> None:
        for param in model.parameters():
            param.grad = None
        model(x).sum().backward()

    return run


def test_profile_run_warms_up_then_profiles_exactly_the_steps(capfd):
    calls = []
    prof = profile_run(lambda: calls.append(torch.ones(2) + 1), warmup=1, steps=3)
    assert len(calls) == 4  # one warm-up call, three profiled
    assert op_counts(prof)["aten::add"] == 3
    assert "profiler_start" not in capfd.readouterr().err
    with pytest.raises(ValueError, match="steps >= 1"):
        profile_run(lambda: None, steps=0)


def test_extra_ops_finds_the_cat_and_its_backward_and_no_extra_matmul():
    x = torch.randn(5, 4)
    plain = nn.Linear(4, 3)
    cat = CatRows()
    extra = extra_ops(op_counts(profile_run(step_of(plain, x))),
                      op_counts(profile_run(step_of(cat, x))))
    # hand count: one torch.cat forward, one CatBackward0 node in backward
    assert extra["aten::cat"] == 1 and extra["CatBackward0"] == 1
    assert "aten::mm" not in extra and "aten::addmm" not in extra
    assert list(extra) == sorted(extra)


def test_self_time_share_against_the_profilers_own_totals():
    x = torch.randn(8, 16)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    prof = profile_run(step_of(model, x))
    totals = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    matmuls = ["aten::mm", "aten::addmm"]
    expected = sum(totals[name] for name in matmuls) / sum(totals.values())
    assert self_time_share(prof, matmuls) == pytest.approx(expected, rel=1e-9)
    assert self_time_share(prof, list(totals)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="none of the ops"):
        self_time_share(prof, ["aten::no_such_op"])
    with pytest.raises(ValueError, match="none of the ops"):
        self_time_share(prof, "aten::mm")


class FakeEvent:
    def __init__(self, name, self_micros):
        self.name, self.self_cpu_time_total = name, self_micros


class FakeProfile:
    def __init__(self, calls):
        self.calls = [FakeEvent(name, micros) for name, micros in calls]

    def events(self):
        return self.calls


def test_extra_op_seconds_charges_only_the_surplus_calls_at_the_median():
    baseline = FakeProfile([("aten::as_strided", 1.0)] * 2 + [("aten::mm", 5.0)])
    # four as_strided calls, one of them preempted (100 µs); two more than the baseline
    variant = FakeProfile([("aten::as_strided", 1.0)] * 3 + [("aten::as_strided", 100.0)]
                          + [("aten::mm", 5.0), ("aten::cat", 3.0), ("aten::cat", 4.0)])
    assert self_seconds_per_call(variant)["aten::as_strided"] == pytest.approx(1e-6)
    charged = extra_op_seconds(baseline, variant)
    assert charged == pytest.approx({"aten::as_strided": 2e-6, "aten::cat": 7e-6})
    assert typical_self_seconds(variant) == pytest.approx((4 * 1.0 + 5.0 + 2 * 3.5) * 1e-6)
    assert surplus_seconds({"aten::cat": 2e-6}, {"aten::cat": 3}) == pytest.approx(
        {"aten::cat": 6e-6})
    with pytest.raises(ValueError, match="no self time per call"):
        surplus_seconds({"aten::cat": 2e-6}, {"aten::mm": 1})
    with pytest.raises(ValueError, match=">= 0"):
        surplus_seconds({"aten::cat": 2e-6}, {"aten::cat": -1})


def test_extra_op_seconds_on_a_real_profile():
    baseline = profile_run(lambda: torch.ones(3) + 1, steps=4)
    variant = profile_run(lambda: (torch.ones(3) + 1) + 1 + 1, steps=4)
    counts = op_counts(variant)
    # hand count: three adds per step against one, over four steps
    assert extra_ops(op_counts(baseline), counts)["aten::add"] == 8 and counts["aten::add"] == 12
    adds = [e.self_cpu_time_total / 1e6 for e in variant.events() if e.name == "aten::add"]
    assert extra_op_seconds(baseline, variant)["aten::add"] == pytest.approx(
        8 * statistics.median(adds))
    assert typical_self_seconds(variant) > 0
