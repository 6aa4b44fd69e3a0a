"""chapters.depth and chapters.depth_steps (notebook 02) against hand counts and PyTorch."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from autograd_cost.chapters import depth_steps
from autograd_cost.chapters.depth import (
    backward_ops_table,
    frozen_layer_saves,
    half_depth,
    half_depth_table,
    plot_shares,
    row_at,
    time_flop_gap,
    time_ratio,
    with_shares,
)
from autograd_cost.chapters.depth_steps import (
    cat_freeze_copy,
    interleaved_configs,
    interleaved_step_seconds,
    pays_off_width,
    plot_step_speedups,
    plot_width_sweep,
    step_sweep,
    step_table,
    width_sweep,
    width_time_table,
    with_step_speedups,
)
from autograd_cost.cost import count_flops
from autograd_cost.freezing import units
from autograd_cost.models import example_input, mlp, small_cnn, tiny_transformer
from autograd_cost.ops import backward_ops, matmul_share, profile_ops
from autograd_cost.profile import profile_freezing
from autograd_cost.training import training_step


def state(model):
    return (
        [p.detach().clone() for p in model.parameters()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        [m.training for m in model.modules()],
    )


def assert_same_state(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert a[1] == b[1] and a[4] == b[4]
    assert all(x is y for x, y in zip(a[2], b[2], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a[3], b[3], strict=True))


def linear_flops(batch, n_in, n_out):
    """One matmul of an nn.Linear: 2 FLOPs per multiply-add (the analytic oracle)."""
    return 2 * batch * n_in * n_out


def mlp_backward_flops(batch, width, frozen):
    """Backward FLOPs of mlp(width, depth=2) by hand: a trainable weight costs its weight-
    gradient matmul; a layer costs an input-gradient matmul if anything before it trains."""
    layers = [("fc1", 64, width), ("fc2", width, width), ("head", width, 10)]
    total, earlier_trains = 0, False
    for name, n_in, n_out in layers:
        if name not in frozen:
            total += linear_flops(batch, n_in, n_out)
        if earlier_trains:
            total += linear_flops(batch, n_in, n_out)
        earlier_trains = earlier_trains or name not in frozen
    return total


def test_mlp_backward_flops_oracle_agrees_with_the_counter():
    model, x = mlp(width=8, depth=2), torch.randn(4, 64)
    for frozen in ([], ["fc1"], ["head"], ["fc1", "fc2"], ["fc2", "head"]):
        assert count_flops(model, x, frozen=frozen).backward == mlp_backward_flops(4, 8, frozen)


def test_interleaved_steps_restore_values_and_skip_frozen_work():
    model = small_cnn(channels=2, hidden=4)
    model.fc.requires_grad_(False)
    model.eval()
    x = example_input(model, batch=4)
    before = state(model)
    everything = ["conv1", "bn1", "conv2", "bn2", "fc", "head"]
    unfrozen, frozen = interleaved_step_seconds(model, x, [[], everything], repeats=3)
    assert_same_state(before, state(model))
    assert unfrozen.step.repeats == frozen.step.repeats == 3
    assert frozen.optimizer.median == frozen.backward.median == 0.0  # nothing to run
    assert unfrozen.optimizer.median > 0 and unfrozen.backward.median > 0
    assert frozen.step.median == pytest.approx(frozen.forward.median)


def test_interleaved_steps_really_step_the_optimizer_inside():
    model = mlp(width=4, depth=1)
    x = example_input(model, batch=2)
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append([p.detach().clone() for group in self.param_groups
                         for p in group["params"]])
            return super().step(closure)

    interleaved_step_seconds(model, x, [["fc1"]], optimizer=lambda ps: Spy(ps, lr=0.1),
                             repeats=1)
    assert len(seen) == 2  # warm-up and one timed round
    assert not torch.equal(seen[0][0], seen[1][0])  # the head moved between steps
    assert len(seen[0]) == 2  # only the head's weight and bias are in the optimizer


def test_interleaved_configs_run_on_the_course_timer(monkeypatch):
    calls = []
    real = depth_steps.interleaved_samples

    def spy(runs, device, **options):
        calls.append(options)
        return real(runs, device, **options)

    monkeypatch.setattr(depth_steps, "interleaved_samples", spy)
    model = mlp(width=4, depth=1)
    timings = interleaved_configs([(model, []), (cat_freeze_copy(model), [])],
                                  example_input(model, batch=2), repeats=4)
    assert len(calls) == 1 and calls[0]["min_repeats"] == calls[0]["max_repeats"] == 4
    assert calls[0]["warmup_rounds"] == 1
    assert [t.step.repeats for t in timings] == [4, 4]


def test_interleaved_errors():
    model = mlp(width=4, depth=1)
    x = example_input(model, batch=2)
    with pytest.raises(ValueError, match="freeze_sets is empty"):
        interleaved_step_seconds(model, x, [])
    with pytest.raises(ValueError, match="repeats must be an int"):
        interleaved_step_seconds(model, x, [[]], repeats=0)
    with pytest.raises(ValueError, match="configs is empty"):
        interleaved_configs([], x)
    with pytest.raises(ValueError, match="unknown unit"):
        interleaved_step_seconds(model, x, [["nope"]], repeats=1)


def test_step_sweep_flops_match_the_matmul_count_and_model_is_restored():
    model = mlp(width=8, depth=2)
    x = example_input(model, batch=4)
    before = state(model)
    frame = step_sweep(model, x, modes=["prefix", "suffix"], freeze_depths=[0, 1, 3], repeats=2)
    assert_same_state(before, state(model))
    assert list(zip(frame["mode"], frame["freeze_depth"], strict=True)) == [
        (m, d) for m in ("prefix", "suffix") for d in (0, 1, 3)]
    forward = linear_flops(4, 64, 8) + linear_flops(4, 8, 8) + linear_flops(4, 8, 10)
    assert (frame["forward_flops"] == forward).all()
    for frozen, backward in zip(frame["frozen_units"], frame["backward_flops"], strict=True):
        assert backward == mlp_backward_flops(4, 8, frozen)
    assert frame["frozen_units"].iloc[4] == ("head",)
    assert frame["backward_seconds"].iloc[2] == 0.0 < frame["backward_seconds"].iloc[0]
    with pytest.raises(ValueError, match="valid values"):
        step_sweep(model, x, modes=["middle"])


def test_with_step_speedups_uses_each_modes_unfrozen_row():
    frame = pd.DataFrame({
        "mode": ["prefix", "prefix"], "freeze_depth": [0, 1], "forward_flops": [10, 10],
        "backward_flops": [20, 20], "forward_seconds": [1.0, 0.8],
        "backward_seconds": [2.0, 1.0], "optimizer_seconds": [1.0, 0.2],
        "step_seconds": [4.0, 2.0], "step_seconds_q1": [3.0, 1.0],
        "step_seconds_q3": [5.0, 2.5]})
    out = with_step_speedups(frame)
    assert list(out["step_speedup"]) == [1.0, 2.0]
    assert list(out["step_speedup_q1"]) == [4.0 / 5.0, 4.0 / 2.5]
    assert list(out["step_speedup_q3"]) == [4.0 / 3.0, 4.0 / 1.0]
    assert list(out["flop_bound"]) == [3.0, 3.0]  # (F+B)/F = (10+20)/10
    assert list(out["time_bound"]) == [4.0 / 0.8, 4.0 / 0.8]
    with pytest.raises(ValueError, match="freeze-depth-0"):
        with_step_speedups(frame[frame["freeze_depth"] == 1])
    table = step_table(out)
    assert list(table.columns) == ["mode", "freeze_depth", "fwd ms", "bwd ms", "opt ms",
                                   "step ms", "speedup", "bound"]
    assert list(table["step ms"]) == [4000.0, 2000.0]


def test_width_sweep_flop_saving_matches_the_matmul_count():
    frame = width_sweep([2, 5], depth=3, batch=3, repeats=1)
    for _, row in frame.iterrows():
        w = row["width"]
        unfrozen = 64 * w + 2 * w * w + 2 * w * w + 2 * 10 * w  # fc1 W; fc2, fc3, head W+I
        frozen = w * w + 2 * 10 * w  # fc3 W only (its input is frozen); head W+I
        assert row["flop_saving"] == pytest.approx(1 - frozen / unfrozen)
        assert row["frozen_units"] == "fc1+fc2"
        assert row["params"] == 64 * w + w + 2 * (w * w + w) + 10 * w + 10
        forward = 2 * 3 * (64 * w + 2 * w * w + 10 * w)  # batch 3, 2 FLOPs per multiply-add
        assert row["unfrozen_step_flops"] == forward + 2 * 3 * unfrozen
        for key in ("backward_saving", "step_saving", "cat_freeze_saving"):
            assert row[f"{key}_q1"] <= row[key] <= row[f"{key}_q3"]
    assert list(width_time_table(frame).columns) == ["width", "step ms", "bwd saving",
                                                     "step saving", "cat saving"]
    with pytest.raises(ValueError, match="widths must be"):
        width_sweep(3)


def test_with_shares_against_hand_counted_parameters_and_matmul_flops():
    model = mlp(width=8, depth=2)
    x = torch.randn(4, 64)
    shares = with_shares(profile_freezing(model, x, repeats=1))
    params = {"fc1": 64 * 8 + 8, "fc2": 8 * 8 + 8, "head": 8 * 10 + 10}  # weight + bias
    total = sum(params.values())
    unfrozen = mlp_backward_flops(4, 8, [])
    for _, row in shares.iterrows():
        frozen = row["frozen_units"]
        assert row["param_share"] == pytest.approx(sum(params[n] for n in frozen) / total)
        saving = 1 - mlp_backward_flops(4, 8, frozen) / unfrozen
        assert row["flop_saving"] == pytest.approx(saving)
    head = row_at(shares, "suffix", 1)
    assert head["param_share"] == pytest.approx(90 / 682)
    assert head["flop_saving"] == pytest.approx(linear_flops(4, 8, 10) / unfrozen)
    base = row_at(shares, "prefix", 0)["backward_seconds"]
    for _, row in shares.iterrows():
        assert row["time_saving"] == pytest.approx(1 - row["backward_seconds"] / base)
        assert row["time_saving_q1"] <= row["time_saving"] + 1e-12
        assert row["time_saving"] <= row["time_saving_q3"] + 1e-12


def test_cat_freeze_copy_saves_no_backward_flops_and_leaves_the_original():
    model = mlp(width=6, depth=2)
    x = example_input(model, batch=4)
    before = state(model)
    split = cat_freeze_copy(model, 0.5)
    assert_same_state(before, state(model))
    assert all(isinstance(m, nn.Linear) for m in model.modules() if hasattr(m, "weight"))
    assert split.fc1.frozen_weight.shape == (3, 64) and split.head.weight.shape == (5, 6)
    assert split.fc1.weight.requires_grad and not split.fc1.frozen_weight.requires_grad
    torch.testing.assert_close(split(x), model(x))
    assert count_flops(split, x).backward == count_flops(model, x).backward
    with pytest.raises(ValueError, match="fraction must lie in"):
        cat_freeze_copy(model, 1.5)
    with pytest.raises(ValueError, match="no nn\\.Linear"):
        cat_freeze_copy(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_matmul_share_on_known_events():
    events = [SimpleNamespace(key="aten::mm", self_cpu_time_total=30.0),
              SimpleNamespace(key="aten::addmm", self_cpu_time_total=10.0),
              SimpleNamespace(key="aten::add_", self_cpu_time_total=60.0)]
    assert matmul_share(events) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no CPU time"):
        matmul_share([])


def test_profile_ops_attributes_a_training_step(capfd):
    model = mlp(width=16, depth=1)
    x = example_input(model, batch=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    averages = profile_ops(lambda: training_step(model, x, optimizer=optimizer), steps=2)
    keys = {event.key for event in averages}
    assert "ActivityProfiler" not in capfd.readouterr().err  # Kineto's log lines stay hidden
    assert {"aten::addmm", "aten::mm"} <= keys
    assert 0 < matmul_share(averages) < 1
    with pytest.raises(ValueError, match="steps must be"):
        profile_ops(lambda: None, steps=0)


def test_half_depth_rows_and_table():
    model = mlp(width=8, depth=3)
    x = torch.randn(4, 64)
    frame = profile_freezing(model, x, repeats=1)
    assert half_depth(frame) == 2
    assert row_at(frame, "suffix", 2)["frozen_units"] == ("fc3", "head")
    with pytest.raises(KeyError, match="no row for mode='prefix', freeze_depth=9"):
        row_at(frame, "prefix", 9)
    table = half_depth_table({"mlp": frame}, timings=False)
    assert list(table.columns) == ["model", "freeze depth", "prefix FLOPs", "suffix FLOPs",
                                   "prefix KiB", "suffix KiB"]
    # hand count, batch 4, width 8: prefix fc1+fc2 leaves fc3 W and head W+I
    w, unfrozen = 8, 64 * 8 + 2 * 2 * 8 * 8 + 2 * 8 * 10
    assert table["freeze depth"][0] == "2/4"
    assert table["prefix FLOPs"][0] == round((w * w + 2 * w * 10) / unfrozen, 2)
    assert table["suffix FLOPs"][0] == round((64 * 8 + 2 * 8 * 8 + 8 * 8 + 8 * 10) / unfrozen, 2)
    assert table["prefix KiB"][0] == round(2 * 4 * 8 * 4 / 1024, 1)  # relu2, relu3 outputs
    assert "prefix time" in half_depth_table({"mlp": frame}).columns


def test_pays_off_width_needs_every_larger_width_to_pay():
    frame = pd.DataFrame({"width": [3, 64, 128, 512], "flop_saving": 0.8,
                          "backward_saving": [0.3, 0.7, 0.5, 0.75]})
    assert pays_off_width(frame) == 512
    assert pays_off_width(frame, fraction=0.65) == 512
    assert pays_off_width(frame, fraction=0.5) == 64
    assert pays_off_width(frame.iloc[::-1]) == 512  # order of rows does not matter
    none = pd.DataFrame({"width": [3], "flop_saving": [1.0], "backward_saving": [0.0]})
    assert pays_off_width(none) is None
    with pytest.raises(ValueError, match="fraction must lie in"):
        pays_off_width(frame, fraction=0)


def test_frozen_layer_saves_matches_what_autograd_saves():
    linear, conv = nn.Linear(8, 4), nn.Conv2d(3, 2, 3, padding=1)
    linear.bias.requires_grad_(False)  # a mixed state, to check it is restored
    x, image = torch.randn(5, 8), torch.randn(2, 3, 6, 6)
    table = frozen_layer_saves([(linear, x), (conv, image)])
    assert list(zip(table["layer"], table["weight"], table["keeps_input"], strict=True)) == [
        ("Linear", "trainable", True), ("Linear", "frozen", False),
        ("Conv2d", "trainable", True), ("Conv2d", "frozen", True),
    ]
    image_bytes = 2 * 3 * 6 * 6 * 4
    assert list(table["saved_bytes"]) == [5 * 8 * 4, 0, image_bytes, image_bytes]
    assert list(table["saved_shapes"]) == ["(5, 8)", "", "(2, 3, 6, 6)", "(2, 3, 6, 6)"]
    assert [p.requires_grad for p in linear.parameters()] == [True, False]
    # The oracle: the tensors PyTorch's own backward nodes hold, with the weight frozen.
    leaf = x.clone().requires_grad_(True)
    linear.requires_grad_(False)
    assert linear(leaf).grad_fn._saved_mat1 is None  # addmm keeps no input
    linear.requires_grad_(True)
    assert torch.equal(linear(leaf).grad_fn._saved_mat1, leaf)
    conv.requires_grad_(False)
    image_leaf = image.clone().requires_grad_(True)
    assert conv(image_leaf).grad_fn._saved_input is image_leaf  # the conv keeps its input
    with pytest.raises(ValueError, match="layer must be"):
        frozen_layer_saves([(nn.ReLU(), x)])
    with pytest.raises(ValueError, match="floating-point"):
        frozen_layer_saves([(linear, torch.ones(5, 8, dtype=torch.long))])


def test_backward_ops_add_up_to_count_flops_and_name_what_is_not_counted():
    model = small_cnn(channels=4, hidden=8)
    x = example_input(model, batch=4)
    before = state(model)
    unfrozen = backward_ops(model, x)
    convs_frozen = backward_ops(model, x, ["conv1", "bn1", "conv2"])
    assert_same_state(before, state(model))
    assert sum(f for _, f in unfrozen.values() if f) == count_flops(model, x).backward
    assert unfrozen["convolution_backward"][0] == 2 and unfrozen["mm"][1] > 0
    for op in ("native_batch_norm_backward", "threshold_backward",
               "max_pool2d_with_indices_backward"):
        assert unfrozen[op][1] is None  # FlopCounterMode has no formula for these
    assert "convolution_backward" not in convs_frozen
    assert convs_frozen["native_batch_norm_backward"][0] == 1  # bn2's backward still runs
    assert "t" not in unfrozen and "detach" not in unfrozen  # views are left out
    frozen_flops = count_flops(model, x, frozen=["conv1", "bn1", "conv2"]).backward
    assert sum(f for _, f in convs_frozen.values() if f) == frozen_flops
    assert backward_ops(model, x, list(units(model))) == {}
    table = backward_ops_table({"unfrozen": unfrozen, "convs frozen": convs_frozen})
    assert table.index[0] == "convolution_backward" and table["counted"].iloc[0] == "yes"
    assert list(table.loc["native_batch_norm_backward"]) == ["no", 2, "-", 1, "-"]
    assert table.loc["convolution_backward", ("convs frozen", "calls")] == "-"
    assert table.loc["mm", ("unfrozen", "MFLOP")] == f"{unfrozen['mm'][1] / 1e6:.1f}"
    with pytest.raises(ValueError, match="columns is empty"):
        backward_ops_table({})


def test_backward_ops_count_cpu_attention():
    model = tiny_transformer(vocab=16, dim=16, heads=2, blocks=1, max_len=8)
    x = example_input(model, batch=2)
    ops = backward_ops(model, x)
    attention = ops["_scaled_dot_product_flash_attention_for_cpu_backward"]
    assert attention[0] == 1 and attention[1] > 0
    assert ops["native_layer_norm_backward"][1] is None
    assert sum(f for _, f in ops.values() if f) == count_flops(model, x).backward


def hand_profile(seconds, q1s, flops):
    """A prefix profile by hand: freeze depths 0.., backward seconds, Q1s and FLOPs."""
    n = len(seconds)
    return pd.DataFrame({"mode": "prefix", "freeze_depth": pd.array(range(n), dtype="Int64"),
                         "backward_seconds": seconds, "backward_seconds_q1": q1s,
                         "backward_flops": flops, "saved_activation_bytes": 1,
                         "frozen_params": range(n)})


def test_time_flop_gap_leaves_out_the_trivial_ends():
    frame = hand_profile([2.0, 1.4, 0.4, 0.0], [1.0, 0.6, 0.2, 0.0], [10, 5, 3, 0])
    gap = time_flop_gap(frame)  # time ratios 0.7 and 0.2 against FLOP ratios 0.5 and 0.3
    assert gap["mean"] == pytest.approx(0.15) and gap["max"] == pytest.approx(0.2)
    q1_gap = time_flop_gap(frame, timing="q1")  # Q1 ratios 0.6 and 0.2
    assert q1_gap["mean"] == pytest.approx(0.1) and q1_gap["max"] == pytest.approx(0.1)
    assert time_ratio(frame, "prefix", 1, timing="q1") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no partial freezes"):
        time_flop_gap(hand_profile([1.0, 0.0], [1.0, 0.0], [4, 0]))
    with pytest.raises(ValueError, match="valid values"):
        time_ratio(frame, "prefix", 1, timing="mean")
    with pytest.raises(ValueError, match="has no backward_seconds"):
        time_ratio(hand_profile([0.0, 0.0], [0.0, 0.0], [4, 0]), "prefix", 1)


def test_plots_draw_quartile_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import ErrorbarContainer

    def bars(fig):
        return [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]

    model = mlp(width=8, depth=2)
    x = example_input(model, batch=4)
    steps = with_step_speedups(step_sweep(model, x, repeats=3))
    assert (steps["step_speedup_q1"] <= steps["step_speedup"]).all()
    assert (steps["step_speedup"] <= steps["step_speedup_q3"]).all()
    assert len(bars(plot_step_speedups(steps))) == 1
    assert len(bars(plot_shares(with_shares(profile_freezing(model, x, repeats=3))))) == 4
    assert len(bars(plot_width_sweep(width_sweep([2, 4], depth=2, batch=2, repeats=3)))) == 3
    matplotlib.pyplot.close("all")
