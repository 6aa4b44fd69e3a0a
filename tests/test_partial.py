"""Partial weight freezing: the split design against the unsplit layer, FLOPs against formulas,
frozen entries against Adam, and the measuring helpers against known inputs."""

import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.cost import count_flops, saved_activation_bytes
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
from autograd_cost.partial import (
    CatLinear,
    SplitLinear,
    adam_decay_outside_hooks,
    cat_freeze,
    freeze_cols,
    freeze_rows,
    frozen_entry_change,
    full_weights,
    gradient_bytes,
    hook_freeze,
    mask_gradient,
    pin_frozen_entries,
    plan_masks,
    plot_step_times,
    question_batch,
    question_net,
    rows_mask,
    sgd_decay_change,
    split_freeze,
    timing_table,
    train_steps,
    training_step,
    whole_freeze,
)
from autograd_cost.timing import summarize_times, thread_seconds

BATCH, IN, OUT = 6, 7, 5
PLAN = {"linear1": 1, "linear2": 2, "linear3": 1}


def linear(bias=True):
    torch.manual_seed(1)
    return nn.Linear(IN, OUT, bias=bias).double()


def inputs():
    return torch.randn(BATCH, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def net_and_loss():
    model = question_net()
    x, y = question_batch()
    return model, x, lambda out: F.cross_entropy(out, y)


SPLITS = [
    ("rows", 2),
    ("rows", [0, 1]),
    ("rows", [3, 4]),
    ("rows", [0, 2, 4]),
    ("cols", 3),
    ("cols", [1, 5, 6]),
    ("cols", [4, 5, 6]),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("axis", "frozen"), SPLITS)
def test_split_matches_unsplit_outputs_and_trainable_gradients(axis, frozen, bias):
    reference = linear(bias)
    split = SplitLinear.from_linear(reference, **{f"frozen_{axis}": frozen})
    x_ref, x_split = inputs().requires_grad_(), inputs().requires_grad_()
    out_ref, out_split = reference(x_ref), split(x_split)
    torch.testing.assert_close(out_split, out_ref)
    upstream = torch.randn_like(out_ref)
    out_ref.backward(upstream)
    out_split.backward(upstream)
    torch.testing.assert_close(x_split.grad, x_ref.grad)
    trainable = split.trainable_index
    expected = reference.weight.grad[trainable] if axis == "rows" else (
        reference.weight.grad[:, trainable])
    torch.testing.assert_close(split.weight.grad, expected)
    if bias:
        torch.testing.assert_close(split.bias.grad, reference.bias.grad)


@pytest.mark.parametrize(("axis", "frozen"), SPLITS)
def test_split_round_trips_to_the_same_linear(axis, frozen):
    reference = linear()
    split = SplitLinear.from_linear(reference, **{f"frozen_{axis}": frozen})
    torch.testing.assert_close(split.full_weight(), reference.weight.detach(), rtol=0, atol=0)
    merged = split.to_linear()
    torch.testing.assert_close(merged.weight, reference.weight, rtol=0, atol=0)
    mask = split.frozen_mask()
    assert mask.sum().item() == split.frozen_weight.numel()
    assert torch.equal(reference.weight.detach()[mask], split.frozen_weight.flatten())


def test_frozen_block_is_a_buffer_not_a_parameter():
    split = freeze_rows(linear(), 2)
    names = dict(split.named_parameters())
    assert set(names) == {"weight", "bias"}
    assert names["weight"].shape == (OUT - 2, IN)
    assert not split.frozen_weight.requires_grad
    assert "frozen_weight" in split.state_dict()


@pytest.mark.parametrize("frozen", [1, 2, 4])
def test_split_rows_backward_flops_skip_the_frozen_weight_gradient(frozen):
    split = freeze_rows(linear(), frozen).float()
    x = torch.randn(BATCH, IN)
    flops = count_flops(split, x)
    assert flops.forward == 2 * BATCH * IN * OUT
    assert flops.backward == 2 * BATCH * IN * (OUT - frozen)


@pytest.mark.parametrize("frozen", [1, 3, 6])
def test_split_cols_backward_flops_skip_the_frozen_weight_gradient(frozen):
    split = freeze_cols(linear(), frozen).float()
    x = torch.randn(BATCH, IN)
    assert count_flops(split, x).backward == 2 * BATCH * (IN - frozen) * OUT


def test_cat_linear_matches_and_saves_no_flops():
    reference = linear().float()
    cat = CatLinear(reference, 2)
    x = torch.randn(BATCH, IN)
    torch.testing.assert_close(cat(x), reference(x))
    assert count_flops(cat, x) == count_flops(reference, x)
    torch.testing.assert_close(cat.full_weight(), reference.weight.detach(), rtol=0, atol=0)
    assert cat.frozen_mask()[:2].all() and not cat.frozen_mask()[2:].any()


def test_builders_match_the_plain_model_and_leave_it_alone():
    model, x, _ = net_and_loss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    built = {
        "cat": cat_freeze(model, PLAN),
        "split": split_freeze(model, PLAN),
        "hook": hook_freeze(model, PLAN),
        "whole": whole_freeze(model, PLAN),
    }
    assert isinstance(built["cat"], torch.fx.GraphModule)
    for variant in built.values():
        torch.testing.assert_close(variant(x), model(x))
        weights = full_weights(variant, list(PLAN))
        for name in PLAN:
            torch.testing.assert_close(weights[name], model.get_submodule(name).weight.detach())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.requires_grad for p in model.parameters())
    assert all(type(m) is not CatLinear for m in model.modules())


def test_backward_flops_of_each_design_against_the_formula():
    model, x, loss = net_and_loss()
    plain = count_flops(model, x, loss).backward
    batch = x.shape[0]
    weight_grad = {n: 2 * batch * model.get_submodule(n).in_features for n in PLAN}
    saved_by_split = sum(weight_grad[n] * rows for n, rows in PLAN.items())
    saved_by_whole = sum(weight_grad[n] * model.get_submodule(n).out_features for n in PLAN)
    assert count_flops(cat_freeze(model, PLAN), x, loss).backward == plain
    assert count_flops(hook_freeze(model, PLAN), x, loss).backward == plain
    assert count_flops(split_freeze(model, PLAN), x, loss).backward == plain - saved_by_split
    assert count_flops(whole_freeze(model, PLAN), x, loss).backward == plain - saved_by_whole


def test_hook_zeroes_frozen_rows_and_keeps_the_rest():
    model, x, loss = net_and_loss()
    hooked = hook_freeze(model, PLAN)
    loss(model(x)).backward()
    loss(hooked(x)).backward()
    for name, mask in plan_masks(model, PLAN).items():
        grad = hooked.get_submodule(name).weight.grad
        assert torch.all(grad[mask] == 0)
        torch.testing.assert_close(grad[~mask], model.get_submodule(name).weight.grad[~mask])


def test_default_network_has_no_dead_unit():
    model, x, loss = net_and_loss()
    loss(model(x)).backward()
    for name in model.names:
        assert (model.get_submodule(name).weight.grad.abs().sum(dim=1) > 0).all()


def test_gradient_and_saved_bytes():
    model, x, loss = net_and_loss()
    params = sum(p.numel() for p in model.parameters())
    frozen = sum(PLAN[n] * model.get_submodule(n).in_features for n in PLAN)
    assert gradient_bytes(model, x, loss) == 4 * params
    assert gradient_bytes(split_freeze(model, PLAN), x, loss) == 4 * (params - frozen)
    assert gradient_bytes(cat_freeze(model, PLAN), x, loss) == 4 * (params - frozen)
    cat_weights = sum(model.get_submodule(n).weight.numel() for n in ("linear2", "linear3"))
    assert saved_activation_bytes(cat_freeze(model, PLAN), x, loss) >= (
        saved_activation_bytes(model, x, loss) + 4 * cat_weights - 4 * 3 * 3)


@pytest.mark.parametrize("build", [cat_freeze, split_freeze, whole_freeze])
def test_designs_that_keep_frozen_entries_exactly(build):
    model, x, loss = net_and_loss()
    masks = plan_masks(model, PLAN)
    variant = build(model, PLAN)
    assert frozen_entry_change(variant, masks, x, loss, steps=20, weight_decay=0.1) == 0.0


def test_adam_weight_decay_moves_hook_masked_entries_and_pinning_fixes_it():
    model, x, loss = net_and_loss()
    masks = plan_masks(model, PLAN)
    hooked = hook_freeze(model, PLAN)
    assert frozen_entry_change(hooked, masks, x, loss, steps=20) == 0.0
    assert frozen_entry_change(hooked, masks, x, loss, steps=20, weight_decay=0.1) > 0.05
    optimizer = torch.optim.Adam(hooked.parameters(), lr=1e-2, weight_decay=0.1)
    for name, mask in masks.items():
        pin_frozen_entries(optimizer, hooked.get_submodule(name).weight, mask)
    assert frozen_entry_change(hooked, masks, x, loss, steps=20, optimizer=optimizer) == 0.0


def test_momentum_from_before_the_mask_moves_entries():
    model, x, loss = net_and_loss()
    masks = plan_masks(model, PLAN)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_steps(model, optimizer, x, loss, 5)
    for name, mask in masks.items():
        mask_gradient(model.get_submodule(name).weight, mask)
    assert frozen_entry_change(model, masks, x, loss, steps=10, optimizer=optimizer) > 1e-3


def test_decay_in_the_hook_trains_like_the_split_design():
    model, x, loss = net_and_loss()
    hooked, split = hook_freeze(model, PLAN, weight_decay=0.1), split_freeze(model, PLAN)
    optimizer = adam_decay_outside_hooks(hooked, list(PLAN), lr=1e-2, weight_decay=0.1)
    train_steps(hooked, optimizer, x, loss, 20)
    train_steps(split, torch.optim.Adam(split.parameters(), lr=1e-2, weight_decay=0.1), x, loss,
                20)
    trained_hook = full_weights(hooked, model.names)
    trained_split = full_weights(split, model.names)
    for name in model.names:
        torch.testing.assert_close(trained_hook[name], trained_split[name])
    original = model.get_submodule("linear2").weight.detach()
    assert not torch.allclose(trained_split["linear2"], original)


def test_adam_decay_outside_hooks_skips_exactly_the_named_weights():
    model = question_net()
    model.linear4.bias.requires_grad_(False)
    optimizer = adam_decay_outside_hooks(model, ["linear1", "linear2"], lr=0.1, weight_decay=0.2)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    expected = {id(p): 0.0 if name in ("linear1.weight", "linear2.weight") else 0.2
                for name, p in model.named_parameters() if p.requires_grad}
    assert decay == expected
    assert all(g["lr"] == 0.1 for g in optimizer.param_groups)
    with pytest.raises(ValueError, match="not"):
        adam_decay_outside_hooks(model, ["linear9"], lr=0.1, weight_decay=0.2)
    with pytest.raises(ValueError, match="lr > 0"):
        adam_decay_outside_hooks(model, ["linear1"], lr=0.0, weight_decay=0.2)


def test_self_time_share_against_the_profilers_own_totals():
    model, x, loss = net_and_loss()
    prof = profile_run(training_step(model, x, loss))
    totals = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    matmuls = ["aten::mm", "aten::addmm"]
    expected = sum(totals[name] for name in matmuls) / sum(totals.values())
    assert self_time_share(prof, matmuls) == pytest.approx(expected, rel=1e-9)
    assert self_time_share(prof, list(totals)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="none of the ops"):
        self_time_share(prof, ["aten::no_such_op"])
    with pytest.raises(ValueError, match="none of the ops"):
        self_time_share(prof, "aten::mm")


@pytest.mark.skipif(time.get_clock_info("thread_time").resolution > 1e-6,
                    reason="coarse thread clock: thread_seconds falls back to wall time")
def test_thread_seconds_counts_cpu_work_not_sleep():
    slept = thread_seconds(lambda: time.sleep(0.05))()
    assert isinstance(slept, float) and 0 <= slept < 0.02  # a sleeping thread uses no CPU
    model, x, loss = net_and_loss()
    worked = thread_seconds(training_step(model, x, loss))()
    assert worked > 0


def test_frozen_entry_change_restores_model_and_optimizer():
    model, x, loss = net_and_loss()
    masks = plan_masks(model, PLAN)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert frozen_entry_change(model, masks, x, loss, steps=3, optimizer=optimizer) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"frozen_rows": 0}, r"1\.\.4"),
        ({"frozen_rows": OUT}, r"1\.\.4"),
        ({"frozen_rows": [5]}, r"valid indices are 0\.\.4"),
        ({"frozen_rows": [1, 1]}, "repeated"),
        ({"frozen_cols": list(range(IN))}, "non-empty"),
        ({"frozen_rows": 1, "frozen_cols": 1}, "exactly one"),
        ({}, "exactly one"),
    ],
)
def test_split_rejects_bad_indices(kwargs, error):
    with pytest.raises(ValueError, match=error):
        SplitLinear.from_linear(linear(), **kwargs)


def test_builders_and_hooks_reject_bad_input():
    model, _, _ = net_and_loss()
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        SplitLinear.from_linear(nn.Conv2d(1, 1, 1), frozen_rows=1)
    with pytest.raises(ValueError, match="valid names are"):
        cat_freeze(model, {"fc1": 1})
    with pytest.raises(ValueError, match="non-empty mapping"):
        split_freeze(model, {})
    with pytest.raises(ValueError, match=r"1\.\.2"):
        hook_freeze(model, {"linear1": 3})
    weight = model.linear1.weight
    with pytest.raises(ValueError, match="bool tensor"):
        mask_gradient(weight, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="not among"):
        pin_frozen_entries(torch.optim.SGD([nn.Parameter(torch.ones(1))]), weight,
                           rows_mask(weight, 1))
    with pytest.raises(ValueError, match="2-D"):
        rows_mask(torch.ones(3), 1)


def test_profile_counts_the_extra_ops_of_the_cat_design(capfd):
    model, x, loss = net_and_loss()
    plain = profile_run(training_step(model, x, loss))
    cat = profile_run(training_step(cat_freeze(model, PLAN), x, loss))
    extra = extra_ops(op_counts(plain), op_counts(cat))
    assert extra["aten::cat"] == len(PLAN)
    assert extra["CatBackward0"] == len(PLAN)
    assert "aten::mm" not in extra and "aten::addmm" not in extra
    assert set(extra_op_seconds(plain, cat)) == set(extra)
    assert "profiler_start" not in capfd.readouterr().err


def test_timing_table_lists_medians_and_ratios():
    samples = {"plain": [1e-3, 2e-3, 3e-3], "cat": [2e-3, 4e-3, 6e-3]}
    table = timing_table(samples, baseline="plain")
    lines = table.splitlines()
    assert lines[1].split()[:3] == ["plain", "2.00", "ms"] and lines[1].endswith("1.00")
    assert lines[2].split()[:3] == ["cat", "4.00", "ms"] and lines[2].endswith("2.00")
    assert "µs" in timing_table({"tiny": [5e-6, 6e-6, 7e-6]})


def test_profile_run_counts_scale_with_steps():
    calls = []
    prof = profile_run(lambda: calls.append(torch.ones(2) + 1), warmup=1, steps=3)
    assert len(calls) == 4 and op_counts(prof)["aten::add"] == 3
    assert "frozen rows=2/5" in repr(CatLinear(linear(), 2))
    with pytest.raises(ValueError, match="steps >= 1"):
        profile_run(lambda: None, steps=0)


def test_sgd_weight_decay_moves_hook_masked_entries_as_decay_alone_predicts():
    model, x, loss = net_and_loss()
    masks = plan_masks(model, PLAN)
    hooked = hook_freeze(model, PLAN)
    # oracle: a zero gradient plus decay gives w_n = w_0 (1 - lr wd)^n for every masked entry
    largest = max(model.get_submodule(n).weight.detach()[m].abs().max().item()
                  for n, m in masks.items())
    expected = largest * (1 - (1 - 0.05 * 0.1) ** 30)
    assert sgd_decay_change(hooked, masks, lr=0.05, weight_decay=0.1, steps=30) == (
        pytest.approx(expected, rel=1e-12))
    sgd = torch.optim.SGD(hooked.parameters(), lr=0.05, weight_decay=0.1)
    moved = frozen_entry_change(hooked, masks, x, loss, steps=30, optimizer=sgd)
    assert moved == pytest.approx(expected, rel=1e-4) and moved > 0.01
    plain_sgd = torch.optim.SGD(hooked.parameters(), lr=0.05)
    assert frozen_entry_change(hooked, masks, x, loss, steps=30, optimizer=plain_sgd) == 0.0
    assert sgd_decay_change(hooked, masks, lr=0.05, weight_decay=0.0, steps=30) == 0.0
    with pytest.raises(ValueError, match="weight_decay >= 0"):
        sgd_decay_change(hooked, masks, lr=0.05, weight_decay=-1.0, steps=3)


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
    assert extra_ops(op_counts(baseline), counts)["aten::add"] == 8 and counts["aten::add"] == 12
    adds = [e.self_cpu_time_total / 1e6 for e in variant.events() if e.name == "aten::add"]
    assert extra_op_seconds(baseline, variant)["aten::add"] == pytest.approx(
        8 * statistics.median(adds))
    assert typical_self_seconds(variant) > 0


def test_plot_step_times_draws_medians_quartiles_and_flop_predictions():
    samples = {"small": {"plain": [1e-6, 2e-6, 4e-6, 5e-6], "split": [6e-6, 7e-6, 8e-6]},
               "large": {"plain": [0.010, 0.012, 0.011], "split": [0.009, 0.010, 0.008]}}
    flops = {"small": {"plain": 100, "split": 80}, "large": {"plain": 1000, "split": 600}}
    fig = plot_step_times(samples, flops)
    assert len(fig.axes) == 2
    small, large = fig.axes
    assert [t.get_text() for t in small.get_yticklabels()] == ["plain", "split"]
    plain = summarize_times(samples["small"]["plain"])
    widths = [bar.get_width() for bar in small.patches]
    assert widths == pytest.approx([plain.median * 1e6, 7.0])
    diamonds = small.lines[-1].get_xdata()
    assert list(diamonds) == pytest.approx([plain.median * 1e6, plain.median * 1e6 * 0.8])
    assert list(large.lines[-1].get_xdata()) == pytest.approx([11.0, 6.6])  # ms
    assert "µs" in small.get_xlabel() and "ms" in large.get_xlabel()
    low, high = plain.error_bar()
    segments = small.collections[0].get_segments()  # the error bars, one per design
    assert segments[0][0][0] == pytest.approx((plain.median - low) * 1e6)
    assert segments[0][1][0] == pytest.approx((plain.median + high) * 1e6)
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.parametrize(
    ("samples", "flops", "error"),
    [
        ({}, {}, "non-empty panels"),
        ({"a": {"plain": [1.0]}}, {"b": {"plain": 1}}, "same non-empty panels"),
        ({"a": {"cat": [1.0]}}, {"a": {"cat": 1}}, "'plain' must be a design"),
        ({"a": {"plain": [1.0], "cat": [1.0]}}, {"a": {"plain": 1}}, "every design needs FLOPs"),
        ({"a": {"plain": []}}, {"a": {"plain": 1}}, "empty samples"),
    ],
)
def test_plot_step_times_rejects_bad_input(samples, flops, error):
    with pytest.raises(ValueError, match=error):
        plot_step_times(samples, flops)
