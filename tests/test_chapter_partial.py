"""Notebook 04's chapter modules: the split and cat layers against nn.Linear, FLOPs and bytes
against hand counts, gradient masks and pins against PyTorch's optimizers, and the tables and
plots against hand-computed medians."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.chapters.partial import (
    CatLinear,
    SplitLinear,
    cat_freeze,
    freeze_cols,
    freeze_rows,
    question_net,
    split_freeze,
)
from autograd_cost.chapters.partial_hooks import (
    frozen_entry_change,
    mask_gradients,
    pin_frozen_rows,
)
from autograd_cost.chapters.partial_measure import RoundRobinTimes, step_memory, surplus_calls
from autograd_cost.cost import count_flops, saved_activation_bytes
from autograd_cost.ops import profile_run
from autograd_cost.timing import summarize_times
from autograd_cost.training import training_step

BATCH, IN, OUT = 6, 7, 5
PLAN = {"linear1": 1, "linear2": 2, "linear3": 1}


def linear(bias=True):
    torch.manual_seed(1)
    return nn.Linear(IN, OUT, bias=bias).double()


def inputs():
    return torch.randn(BATCH, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def net_and_loss():
    model = question_net()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=generator)
    y = torch.randint(2, (20,), generator=generator)
    return model, x, lambda out: F.cross_entropy(out, y)


def planned_rows(model, plan=PLAN):
    """The frozen rows of each planned layer's weight, read straight from the plain model."""
    return {name: model.get_submodule(name).weight.detach()[:rows].clone()
            for name, rows in plan.items()}


# ------------------------------------------------------------------ layers


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
    flops = count_flops(split, torch.randn(BATCH, IN))
    # hand count: 2 FLOPs per multiply-add; the input needs no grad, so only dW remains
    assert flops.forward == 2 * BATCH * IN * OUT
    assert flops.backward == 2 * BATCH * IN * (OUT - frozen)


@pytest.mark.parametrize("frozen", [1, 3, 6])
def test_split_cols_backward_flops_skip_the_frozen_weight_gradient(frozen):
    split = freeze_cols(linear(), frozen).float()
    assert count_flops(split, torch.randn(BATCH, IN)).backward == 2 * BATCH * (IN - frozen) * OUT


def test_cat_linear_matches_and_saves_no_flops():
    reference = linear().float()
    cat = CatLinear(reference, 2)
    x = torch.randn(BATCH, IN)
    torch.testing.assert_close(cat(x), reference(x))
    assert count_flops(cat, x) == count_flops(reference, x)
    torch.testing.assert_close(cat.full_weight(), reference.weight.detach(), rtol=0, atol=0)
    assert cat.frozen_mask()[:2].all() and not cat.frozen_mask()[2:].any()
    assert "frozen rows=2/5" in repr(cat)


def test_builders_match_the_plain_model_and_leave_it_alone():
    model, x, _ = net_and_loss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    built = {"cat": cat_freeze(model, PLAN), "split": split_freeze(model, PLAN)}
    assert isinstance(built["cat"], torch.fx.GraphModule)
    assert isinstance(built["cat"].linear2, CatLinear)
    assert isinstance(built["split"].linear2, SplitLinear)
    for variant in built.values():
        torch.testing.assert_close(variant(x), model(x))
        for name in PLAN:
            torch.testing.assert_close(variant.get_submodule(name).full_weight(),
                                       model.get_submodule(name).weight.detach())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.requires_grad for p in model.parameters())
    assert all(type(m) is nn.Linear for m in model.modules() if m is not model)


def test_backward_flops_of_each_design_against_the_formula():
    model, x, loss = net_and_loss()
    plain = count_flops(model, x, loss).backward
    batch = x.shape[0]
    # hand count: a frozen weight row skips 2 * batch * in_features FLOPs of its gradient
    weight_grad = {n: 2 * batch * model.get_submodule(n).in_features for n in PLAN}
    saved_by_split = sum(weight_grad[n] * rows for n, rows in PLAN.items())
    assert count_flops(cat_freeze(model, PLAN), x, loss).backward == plain
    hooked = copy.deepcopy(model)
    mask_gradients(hooked, PLAN)
    assert count_flops(hooked, x, loss).backward == plain
    assert count_flops(split_freeze(model, PLAN), x, loss).backward == plain - saved_by_split


def test_default_network_has_no_dead_unit():
    model, x, loss = net_and_loss()
    loss(model(x)).backward()
    for name in model.names:
        assert (model.get_submodule(name).weight.grad.abs().sum(dim=1) > 0).all()


# ------------------------------------------------------------------ gradient masks and pins


def test_mask_gradients_zero_the_planned_rows_and_keep_the_rest():
    model, x, loss = net_and_loss()
    hooked = copy.deepcopy(model)
    handles = mask_gradients(hooked, PLAN)
    assert len(handles) == len(PLAN)
    loss(model(x)).backward()  # oracle: PyTorch's own gradient of the unmasked model
    loss(hooked(x)).backward()
    for name, rows in PLAN.items():
        grad = hooked.get_submodule(name).weight.grad
        assert torch.all(grad[:rows] == 0)
        torch.testing.assert_close(grad[rows:], model.get_submodule(name).weight.grad[rows:])


def test_mask_gradients_with_decay_add_it_to_the_trainable_rows_only():
    model, x, loss = net_and_loss()
    weight = model.linear2.weight
    loss(model(x)).backward()
    expected = weight.grad + 0.5 * weight.detach()  # L2 decay added to the gradient
    expected[:2] = 0
    model.zero_grad(set_to_none=True)
    mask_gradients(model, {"linear2": 2}, weight_decay=0.5)
    loss(model(x)).backward()
    torch.testing.assert_close(weight.grad, expected)


def test_sgd_decay_moves_masked_entries_as_decay_alone_predicts():
    model, x, loss = net_and_loss()
    mask_gradients(model, PLAN)
    # oracle: a zero gradient plus decay gives w_n = w_0 (1 - lr wd)^n for every masked entry
    largest = max(rows.abs().max().item() for rows in planned_rows(model).values())
    expected = largest * (1 - (1 - 0.05 * 0.1) ** 30)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.1)
    moved = frozen_entry_change(model, PLAN, x, loss, steps=30, optimizer=sgd)
    assert moved == pytest.approx(expected, rel=1e-4) and moved > 0.01
    plain_sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    assert frozen_entry_change(model, PLAN, x, loss, steps=30, optimizer=plain_sgd) == 0.0


def test_adam_weight_decay_moves_masked_entries_and_pinning_fixes_it():
    model, x, loss = net_and_loss()
    mask_gradients(model, PLAN)
    assert frozen_entry_change(model, PLAN, x, loss, steps=20) == 0.0
    assert frozen_entry_change(model, PLAN, x, loss, steps=20, weight_decay=0.1) > 0.05
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.1)
    pin_frozen_rows(optimizer, model, PLAN)
    assert frozen_entry_change(model, PLAN, x, loss, steps=20, optimizer=optimizer) == 0.0


def test_pinning_writes_back_exactly_the_planned_rows_after_a_step():
    model, x, loss = net_and_loss()
    before = {n: model.get_submodule(n).weight.detach().clone() for n in model.names}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pin_frozen_rows(optimizer, model, PLAN)
    training_step(model, x, loss, optimizer)
    for name in model.names:
        after = model.get_submodule(name).weight.detach()
        rows = PLAN.get(name, 0)
        assert torch.equal(after[:rows], before[name][:rows])
        assert not torch.equal(after[rows:], before[name][rows:])


def test_momentum_from_before_the_mask_moves_entries():
    model, x, loss = net_and_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        training_step(model, x, loss, optimizer)
    mask_gradients(model, PLAN)
    assert frozen_entry_change(model, PLAN, x, loss, steps=10, optimizer=optimizer) > 1e-3


@pytest.mark.parametrize("build", [cat_freeze, split_freeze])
def test_designs_that_keep_frozen_entries_exactly(build):
    model, x, loss = net_and_loss()
    variant = build(model, PLAN)
    assert frozen_entry_change(variant, PLAN, x, loss, steps=20, weight_decay=0.1) == 0.0
    assert frozen_entry_change(model, PLAN, x, loss, steps=20, weight_decay=0.1) > 0.01


def test_decay_in_the_hook_trains_like_the_split_design():
    model, x, loss = net_and_loss()
    hooked, split = copy.deepcopy(model), split_freeze(model, PLAN)
    mask_gradients(hooked, PLAN, weight_decay=0.1)
    weights = [hooked.get_submodule(n).weight for n in PLAN]
    others = [p for p in hooked.parameters() if all(p is not w for w in weights)]
    hook_adam = torch.optim.Adam([{"params": weights, "weight_decay": 0.0},
                                  {"params": others, "weight_decay": 0.1}], lr=1e-2)
    split_adam = torch.optim.Adam(split.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(20):
        training_step(hooked, x, loss, hook_adam)
        training_step(split, x, loss, split_adam)
    for name in PLAN:
        torch.testing.assert_close(hooked.get_submodule(name).weight.detach(),
                                   split.get_submodule(name).full_weight())
    assert not torch.allclose(split.linear2.full_weight(), model.linear2.weight.detach())


def test_frozen_entry_change_restores_model_and_optimizer():
    model, x, loss = net_and_loss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert frozen_entry_change(model, PLAN, x, loss, steps=3, optimizer=optimizer) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------ bad input


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
    model, x, loss = net_and_loss()
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        SplitLinear.from_linear(nn.Conv2d(1, 1, 1), frozen_rows=1)
    with pytest.raises(TypeError, match="an int"):
        CatLinear(model.linear1, [0])
    with pytest.raises(ValueError, match="valid names are"):
        cat_freeze(model, {"fc1": 1})
    with pytest.raises(ValueError, match="non-empty mapping"):
        split_freeze(model, {})
    with pytest.raises(ValueError, match=r"1\.\.2"):
        split_freeze(model, {"linear1": 3})
    with pytest.raises(ValueError, match=r"1\.\.2"):
        mask_gradients(model, {"linear1": 3})
    with pytest.raises(ValueError, match="valid names are"):
        mask_gradients(model, {"linear9": 1})
    with pytest.raises(ValueError, match="weight_decay"):
        mask_gradients(model, PLAN, weight_decay=-1.0)
    with pytest.raises(ValueError, match="not among"):
        pin_frozen_rows(torch.optim.SGD([nn.Parameter(torch.ones(1))]), model, PLAN)
    with pytest.raises(ValueError, match="steps"):
        frozen_entry_change(model, PLAN, x, loss, steps=0)
    with pytest.raises(ValueError, match="widths"):
        question_net(widths=())


# ------------------------------------------------------------------ measuring


def test_step_times_table_and_ratios_against_hand_values():
    times = RoundRobinTimes({"plain": [1e-3, 2e-3, 3e-3], "cat": [2e-3, 6e-3, 6e-3]})
    assert times.median("cat") == 6e-3
    assert times.ratio("cat") == pytest.approx(2.0)  # per-round ratios 2, 3, 2: median 2
    table = times.table()
    assert list(table.columns) == ["median", "IQR", "/ plain"]
    assert table.loc["plain", "median"] == "2 ms" and table.loc["cat", "/ plain"] == 2.0
    assert table.loc["plain", "IQR"] == "1 ms"  # quartiles 1.5 ms and 2.5 ms
    no_baseline = RoundRobinTimes({"run": [5e-6]}, baseline=None).table()
    assert list(no_baseline.columns) == ["median", "IQR"]
    with pytest.raises(ValueError, match="baseline"):
        RoundRobinTimes({"run": [1.0]})
    with pytest.raises(ValueError, match="non-empty"):
        RoundRobinTimes({"plain": []})


def test_step_times_plot_draws_medians_quartiles_and_flop_predictions():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = RoundRobinTimes({"plain": [1e-6, 2e-6, 4e-6, 5e-6], "split": [6e-6, 7e-6, 8e-6, 9e-6]})
    large = RoundRobinTimes({"plain": [0.010, 0.012, 0.011], "split": [0.009, 0.010, 0.008]})
    fig, (left, right) = plt.subplots(1, 2)
    small.plot(left, {"plain": 100, "split": 80}, "small")
    large.plot(right, {"plain": 1000, "split": 600}, "large", legend=False)
    assert [t.get_text() for t in left.get_yticklabels()] == ["plain", "split"]
    plain = summarize_times([1e-6, 2e-6, 4e-6, 5e-6])  # median 3 µs
    assert [bar.get_width() for bar in left.patches] == pytest.approx([3.0, 7.5])
    assert list(left.lines[-1].get_xdata()) == pytest.approx([3.0, 3.0 * 0.8])
    assert list(right.lines[-1].get_xdata()) == pytest.approx([11.0, 6.6])  # ms
    assert "µs" in left.get_xlabel() and "ms" in right.get_xlabel()
    low, high = plain.error_bar()
    segments = left.collections[0].get_segments()  # the error bars, one per design
    assert segments[0][0][0] == pytest.approx((plain.median - low) * 1e6)
    assert segments[0][1][0] == pytest.approx((plain.median + high) * 1e6)
    with pytest.raises(ValueError, match="FLOPs"):
        small.plot(left, {"plain": 100})
    plt.close(fig)


def test_surplus_calls_of_the_cat_design_against_hand_counts():
    model, x, loss = net_and_loss()
    cat = cat_freeze(model, PLAN)
    plain_profile = profile_run(lambda: training_step(model, x, loss), steps=2)
    cat_profile = profile_run(lambda: training_step(cat, x, loss), steps=2)
    surplus = surplus_calls(plain_profile, cat_profile)
    # hand count: one cat forward and one CatBackward0 per planned layer and step
    assert surplus.counts["aten::cat"] == surplus.counts["CatBackward0"] == 2 * len(PLAN)
    assert "aten::mm" not in surplus.counts and "aten::addmm" not in surplus.counts
    assert set(surplus.seconds) == set(surplus.counts)
    all_calls = sum(1 for _ in cat_profile.events())
    assert surplus.call_share == pytest.approx(sum(surplus.counts.values()) / all_calls)
    assert 0 < surplus.time_share < 1


def test_step_memory_against_hand_counted_bytes():
    model, x, loss = net_and_loss()
    params = sum(p.numel() for p in model.parameters())
    frozen = sum(PLAN[n] * model.get_submodule(n).in_features for n in PLAN)
    plain, split, cat = (step_memory(m, x, loss) for m in
                         (model, split_freeze(model, PLAN), cat_freeze(model, PLAN)))
    assert plain.gradient_bytes == plain.gradient_tensor_bytes == 4 * params
    assert split.gradient_bytes == split.gradient_tensor_bytes == 4 * (params - frozen)
    # cat's grads are the trainable rows' slices of each full gradient: small tensors, whose
    # storage is the full weight gradient's
    assert cat.gradient_tensor_bytes == 4 * (params - frozen)
    assert cat.gradient_bytes == 4 * params
    assert all(p.grad is None for p in model.parameters())  # grads restored
    cat_weights = sum(model.get_submodule(n).weight.numel() for n in ("linear2", "linear3"))
    assert cat.saved_activation_bytes == saved_activation_bytes(cat_freeze(model, PLAN), x, loss)
    assert cat.saved_activation_bytes - plain.saved_activation_bytes == 4 * cat_weights
