"""sweeps: step timing, width sweep, shares, cat freezing, saved inputs, ops, profiler, CSV."""

import csv
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from autograd_cost.cost import count_flops
from autograd_cost.freezing import exactly_frozen, preserved_values, units
from autograd_cost.models import example_input, mlp, small_cnn, tiny_transformer
from autograd_cost.ops import backward_ops, matmul_share, profile_ops
from autograd_cost.profile import profile_freezing, with_ratios
from autograd_cost.results import machine_metadata, project_root, write_results
from autograd_cost.sweeps import (
    cat_freeze_copy,
    fastest_backward_seconds,
    format_backward_ops,
    format_half_depth,
    format_saved_inputs,
    format_shares,
    format_steps,
    format_width_flops,
    format_width_times,
    frozen_layer_saves,
    half_depth,
    interleaved_configs,
    interleaved_step_seconds,
    mean_abs_error,
    pays_off_width,
    plot_shares,
    plot_step_speedups,
    plot_width_sweep,
    row_at,
    step_speedup_bound,
    step_sweep,
    time_flop_gap,
    time_ratio,
    training_step,
    width_sweep,
    with_shares,
    with_step_speedups,
)


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


def test_step_speedup_bound_is_three_when_backward_is_twice_forward():
    assert step_speedup_bound(1.0, 2.0) == 3.0
    assert step_speedup_bound(2, 4, 2) == 4.0
    with pytest.raises(ValueError, match="forward must be positive"):
        step_speedup_bound(0, 1)
    with pytest.raises(ValueError, match="backward must be a non-negative"):
        step_speedup_bound(1, -1)


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
    assert frozen.optimizer.median < unfrozen.optimizer.median
    assert frozen.backward.median < unfrozen.backward.median


def test_interleaved_steps_really_step_the_optimizer_inside():
    model = mlp(width=4, depth=1)
    x = example_input(model, batch=2)
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append([p.detach().clone() for group in self.param_groups
                         for p in group["params"]])
            return super().step(closure)

    interleaved_step_seconds(model, x, [["fc1"]], make_optimizer=lambda ps: Spy(ps, lr=0.1),
                             repeats=1)
    assert len(seen) == 2  # warm-up and one timed round
    assert not torch.equal(seen[0][0], seen[1][0])  # the head moved between steps
    assert len(seen[0]) == 2  # only the head's weight and bias are in the optimizer


def test_interleaved_errors():
    model = mlp(width=4, depth=1)
    x = example_input(model, batch=2)
    with pytest.raises(ValueError, match="freeze_sets is empty"):
        interleaved_step_seconds(model, x, [])
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        interleaved_step_seconds(model, x, [[]], repeats=0)
    with pytest.raises(ValueError, match="configs is empty"):
        interleaved_configs([], x)


def test_step_sweep_flops_match_count_flops_and_model_is_restored():
    model = mlp(width=8, depth=2)
    x = example_input(model, batch=4)
    before = state(model)
    rows = step_sweep(model, x, modes=["prefix", "suffix"], depths=[0, 1, 3], repeats=2)
    assert_same_state(before, state(model))
    assert [(r["mode"], r["depth"]) for r in rows] == [
        (m, d) for m in ("prefix", "suffix") for d in (0, 1, 3)
    ]
    for row in rows:
        with exactly_frozen(model, row["frozen_units"]):
            truth = count_flops(model, x)
        assert (row["forward_flops"], row["backward_flops"]) == (truth.forward, truth.backward)
    assert rows[2]["backward_seconds"] < rows[0]["backward_seconds"]
    with pytest.raises(ValueError, match="valid modes"):
        step_sweep(model, x, modes=["middle"])


def test_with_step_speedups_uses_each_modes_unfrozen_row():
    def row(depth, step):
        return {"mode": "prefix", "depth": depth, "forward_flops": 10, "backward_flops": 20,
                "forward_seconds": 1.0, "backward_seconds": 2.0, "optimizer_seconds": 1.0,
                "step_seconds": step}

    rows = [row(0, 4.0), {**row(1, 2.0), "forward_seconds": 0.8}]
    out = with_step_speedups(rows)
    assert [r["step_speedup"] for r in out] == [1.0, 2.0]
    assert out[1]["flop_bound"] == 3.0 and out[1]["time_bound"] == 4.0 / 0.8
    with pytest.raises(ValueError, match="depth-0"):
        with_step_speedups([row(1, 2.0)])
    assert "speedup" in format_steps(out)


def test_width_sweep_flop_saving_matches_the_matmul_count():
    rows = width_sweep([2, 5], depth=3, batch=3, repeats=1)
    for row in rows:
        w = row["width"]
        unfrozen = 64 * w + 2 * w * w + 2 * w * w + 2 * 10 * w  # fc1 W; fc2, fc3, head W+I
        frozen = w * w + 2 * 10 * w  # fc3 W only (its input is frozen); head W+I
        assert row["flop_saving"] == pytest.approx(1 - frozen / unfrozen)
        assert row["frozen_units"] == ["fc1", "fc2"]
        assert row["params"] == sum(p.numel() for p in mlp(width=w, depth=3).parameters())
        forward = 2 * 3 * (64 * w + 2 * w * w + 10 * w)  # batch 3, 2 FLOPs per multiply-add
        assert row["unfrozen_step_flops"] == forward + 2 * 3 * unfrozen
        assert row["cat_freeze_saving"] < 1
        for key in ("backward_saving", "step_saving", "cat_freeze_saving"):
            assert row[f"{key}_q1"] <= row[key] <= row[f"{key}_q3"]
    assert "FLOP saving" in format_width_flops(rows) and "cat saving" in format_width_times(rows)
    with pytest.raises(ValueError, match="widths must be"):
        width_sweep(3)


def test_with_shares_and_mean_abs_error():
    model = mlp(width=8, depth=2)
    rows = with_shares(profile_freezing(model, example_input(model, batch=4), repeats=1))
    total = sum(p.numel() for p in model.parameters())
    for row in rows:
        assert row["param_share"] == pytest.approx(row["frozen_params"] / total)
        assert row["flop_saving"] == pytest.approx(1 - row["flop_ratio"])
        assert row["time_saving"] == pytest.approx(1 - row["time_ratio"])
    assert "param share" in format_shares(rows)
    assert mean_abs_error([0.0, 1.0], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="equally long"):
        mean_abs_error([1.0], [1.0, 2.0])


def test_cat_freeze_copy_saves_no_backward_flops_and_leaves_the_original():
    model = mlp(width=6, depth=2)
    x = example_input(model, batch=4)
    before = state(model)
    split = cat_freeze_copy(model, 0.5)
    assert_same_state(before, state(model))
    assert all(isinstance(m, nn.Linear) for m in model.modules() if hasattr(m, "weight"))
    assert split.fc1.frozen_weight.shape == (3, 64) and split.head.weight.shape == (5, 6)
    torch.testing.assert_close(split(x), model(x))
    assert count_flops(split, x).backward == count_flops(model, x).backward
    with pytest.raises(ValueError, match="fraction must be"):
        cat_freeze_copy(model, 1.5)
    with pytest.raises(ValueError, match="no nn\\.Linear"):
        cat_freeze_copy(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_preserved_values_restores_after_an_error():
    model = mlp(width=4, depth=1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError), preserved_values(model):
        with torch.no_grad():
            model.fc1.weight.add_(1.0)
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_matmul_share_on_known_events():
    events = [SimpleNamespace(key="aten::mm", self_cpu_time_total=30.0),
              SimpleNamespace(key="aten::addmm", self_cpu_time_total=10.0),
              SimpleNamespace(key="aten::add_", self_cpu_time_total=60.0)]
    assert matmul_share(events) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="no CPU time"):
        matmul_share([])


def test_profile_ops_attributes_a_training_step(capfd):
    model = mlp(width=16, depth=1)
    before = state(model)
    with preserved_values(model):
        averages = profile_ops(training_step(model, example_input(model, batch=4)), steps=2)
    keys = {event.key for event in averages}
    assert "ActivityProfiler" not in capfd.readouterr().err  # Kineto's log lines stay hidden
    assert {"aten::addmm", "aten::mm"} <= keys
    assert 0 < matmul_share(averages) < 1
    assert all(torch.equal(a, b) for a, b in zip(before[0], model.parameters(), strict=True))
    with pytest.raises(ValueError, match="steps must be"):
        profile_ops(lambda: None, steps=0)


def test_write_results_csv_with_metadata(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert project_root() == tmp_path
    rows = [{"mode": "prefix", "depth": 1, "frozen_units": ["fc1", "fc2"], "x": 0.5}]
    path = write_results(rows, "demo", device="cpu")
    assert str(path) == os.path.join("results", "demo.csv")
    with (tmp_path / path).open() as handle:
        read = list(csv.DictReader(handle))
    meta = machine_metadata("cpu")
    assert read[0]["frozen_units"] == "fc1+fc2" and read[0]["x"] == "0.5"
    assert read[0]["torch_version"] == torch.__version__ == meta["torch_version"]
    assert read[0]["device"] == "cpu" and read[0]["threads"] == str(torch.get_num_threads())
    with pytest.raises(ValueError, match="plain file stem"):
        write_results(rows, "../escape")
    with pytest.raises(ValueError, match="no rows"):
        write_results([], "demo")


def test_half_depth_rows_and_table():
    model = mlp(width=8, depth=3)
    rows = with_ratios(profile_freezing(model, example_input(model, batch=4), repeats=1))
    assert half_depth(rows) == 2
    assert row_at(rows, "suffix", 2)["frozen_units"] == ["fc3", "head"]
    with pytest.raises(KeyError, match="no row for mode='prefix', depth=9"):
        row_at(rows, "prefix", 9)
    deterministic = format_half_depth({"mlp": rows}, timings=False)
    assert "2/4" in deterministic and "time" not in deterministic
    assert "pre time" in format_half_depth({"mlp": rows})


def test_pays_off_width_needs_every_larger_width_to_pay():
    rows = [{"width": w, "flop_saving": 0.8, "backward_saving": s}
            for w, s in [(3, 0.3), (64, 0.7), (128, 0.5), (512, 0.75)]]
    assert pays_off_width(rows) == 512
    assert pays_off_width(rows, fraction=0.65) == 512
    assert pays_off_width(rows, fraction=0.5) == 64
    assert pays_off_width([{"width": 3, "flop_saving": 1.0, "backward_saving": 0.0}]) is None
    with pytest.raises(ValueError, match="fraction must be"):
        pays_off_width(rows, fraction=0)


def test_frozen_layer_saves_matches_what_autograd_saves():
    linear, conv = nn.Linear(8, 4), nn.Conv2d(3, 2, 3, padding=1)
    linear.bias.requires_grad_(False)  # a mixed state, to check it is restored
    x, image = torch.randn(5, 8), torch.randn(2, 3, 6, 6)
    rows = frozen_layer_saves(linear, x) + frozen_layer_saves(conv, image)
    assert [(r["layer"], r["weight"], r["keeps_input"]) for r in rows] == [
        ("Linear", "trainable", True), ("Linear", "frozen", False),
        ("Conv2d", "trainable", True), ("Conv2d", "frozen", True),
    ]
    image_bytes = 2 * 3 * 6 * 6 * 4
    assert [r["saved_bytes"] for r in rows] == [5 * 8 * 4, 0, image_bytes, image_bytes]
    assert rows[0]["saved_shapes"] == [(5, 8)] and rows[1]["saved_shapes"] == []
    assert rows[3]["saved_shapes"] == [(2, 3, 6, 6)]
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
    table = format_saved_inputs(rows)
    assert "keeps its input" in table and "(2, 3, 6, 6)" in table
    with pytest.raises(ValueError, match="layer must be"):
        frozen_layer_saves(nn.ReLU(), x)
    with pytest.raises(ValueError, match="floating-point"):
        frozen_layer_saves(linear, torch.ones(5, 8, dtype=torch.long))


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
    with exactly_frozen(model, ["conv1", "bn1", "conv2"]):
        assert sum(f for _, f in convs_frozen.values() if f) == count_flops(model, x).backward
    assert backward_ops(model, x, list(units(model))) == {}
    table = format_backward_ops({"unfrozen": unfrozen, "convs frozen": convs_frozen})
    lines = table.splitlines()
    assert lines[2].startswith("convolution_backward") and "yes" in lines[2]
    assert ["native_batch_norm_backward", "no", "2", "-", "1", "-"] in [
        line.split() for line in lines]
    with pytest.raises(ValueError, match="columns is empty"):
        format_backward_ops({})


def test_backward_ops_count_cpu_attention():
    model = tiny_transformer(vocab=16, dim=16, heads=2, blocks=1, max_len=8)
    x = example_input(model, batch=2)
    ops = backward_ops(model, x)
    attention = ops["_scaled_dot_product_flash_attention_for_cpu_backward"]
    assert attention[0] == 1 and attention[1] > 0
    assert ops["native_layer_norm_backward"][1] is None
    assert sum(f for _, f in ops.values() if f) == count_flops(model, x).backward


def test_time_flop_gap_leaves_out_the_trivial_ends():
    def row(depth, seconds, q1, flop_ratio):
        return {"mode": "prefix", "depth": depth, "backward_seconds": seconds,
                "backward_seconds_q1": q1, "flop_ratio": flop_ratio}

    rows = [row(0, 2.0, 1.0, 1.0), row(1, 1.4, 0.6, 0.5), row(2, 0.4, 0.2, 0.3), row(3, 0, 0, 0)]
    gap = time_flop_gap(rows)  # time ratios 0.7 and 0.2 against FLOP ratios 0.5 and 0.3
    assert gap["mean"] == pytest.approx(0.15) and gap["max"] == pytest.approx(0.2)
    q1_gap = time_flop_gap(rows, timing="q1")  # Q1 ratios 0.6 and 0.2
    assert q1_gap["mean"] == pytest.approx(0.1) and q1_gap["max"] == pytest.approx(0.1)
    assert time_ratio(rows, "prefix", 1, timing="q1") == pytest.approx(0.6)
    with pytest.raises(ValueError, match="no partial freezes"):
        time_flop_gap([row(0, 1.0, 1.0, 1.0), row(1, 0, 0, 0)])
    with pytest.raises(ValueError, match="timing must be one of"):
        time_ratio(rows, "prefix", 1, timing="mean")
    with pytest.raises(ValueError, match="has no backward_seconds"):
        time_ratio([row(0, 0.0, 0.0, 1.0), row(1, 0.0, 0.0, 0.5)], "prefix", 1)


def test_plots_draw_quartile_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.container import ErrorbarContainer

    def bars(fig):
        return [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]

    model = mlp(width=8, depth=2)
    x = example_input(model, batch=4)
    steps = with_step_speedups(step_sweep(model, x, repeats=3))
    for row in steps:
        assert row["step_speedup_q1"] <= row["step_speedup"] <= row["step_speedup_q3"]
    assert len(bars(plot_step_speedups(steps))) == 1
    shares = with_shares(profile_freezing(model, x, repeats=3))
    for row in shares:
        assert row["time_saving_q1"] <= row["time_saving"] + 1e-12
        assert row["time_saving"] <= row["time_saving_q3"] + 1e-12
    assert len(bars(plot_shares(shares))) == 4
    wide = width_sweep([2, 4], depth=2, batch=2, repeats=3)
    assert len(bars(plot_width_sweep(wide))) == 3
    matplotlib.pyplot.close("all")


def test_fastest_backward_seconds_is_a_minimum_and_restores_the_model():
    model = small_cnn(channels=2, hidden=4)
    x = example_input(model, batch=4)
    before = state(model)
    everything = ["conv1", "bn1", "conv2", "bn2", "fc", "head"]
    unfrozen, convs, frozen = fastest_backward_seconds(
        model, x, [[], ["conv1", "bn1", "conv2"], everything], rounds=5)
    assert_same_state(before, state(model))
    assert frozen == 0.0 and convs > 0 and unfrozen > 0
    with pytest.raises(ValueError, match="repeats must be"):
        fastest_backward_seconds(model, x, [[]], rounds=0)
    with pytest.raises(ValueError, match="freeze_sets is empty"):
        fastest_backward_seconds(model, x, [])


def test_fastest_backward_seconds_takes_the_minimum_of_the_timed_rounds(monkeypatch):
    reported = iter([0.9, 0.5, 0.2, 0.7])  # the first is the untimed warm-up round
    monkeypatch.setattr("autograd_cost.timing.timed_backward", lambda loss, device: next(reported))
    model = mlp(width=4, depth=1)
    assert fastest_backward_seconds(model, example_input(model, batch=2), [[]], rounds=3) == [0.2]
