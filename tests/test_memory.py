"""memory_breakdown against independent counts: gradients, optimizer state, saved bytes, peak."""

import warnings

import matplotlib
import pytest
import torch
from torch import nn

from autograd_cost.cost import optimizer_state_bytes, saved_activation_bytes
from autograd_cost.freezing import exactly_frozen, execution_order, prefix_units, suffix_units
from autograd_cost.memory import estimate_peak, memory_breakdown
from autograd_cost.memory_timeline import (
    CATEGORIES,
    PHASES,
    breakdown_table,
    memory_profile,
    memory_timeline,
    plot_memory_breakdown,
    plot_memory_timeline,
    profiled_phase,
)
from autograd_cost.models import example_input, mlp, small_cnn, tiny_transformer
from autograd_cost.training import OPTIMIZERS, resolve_optimizer

matplotlib.use("Agg")

FLOAT32 = 4


def tiny(name):
    if name == "mlp":
        model = mlp(width=16, depth=3)
    elif name == "cnn":
        model = small_cnn(channels=4, hidden=8)
    else:
        model = tiny_transformer(vocab=16, dim=16, heads=2, blocks=2, max_len=8)
    return model, example_input(model, batch=4)


def freeze_set(model, x, how):
    order = execution_order(model, x)
    if how == "prefix":
        return prefix_units(order, 2)
    if how == "suffix":
        return suffix_units(order, 2)
    return []


def direct_counts(model, names):
    """Trainable parameters and bytes of parameters, counted from the tensors themselves."""
    frozen = {id(p) for name, m in model.named_modules() if name in names
              for p in m.parameters(recurse=False)}
    params = list(model.parameters())
    trainable = [p for p in params if id(p) not in frozen]
    return trainable, sum(p.numel() * p.element_size() for p in params)


@pytest.mark.parametrize("how", ["unfrozen", "prefix", "suffix"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_breakdown_matches_independent_counts(name, optimizer, how):
    model, x = tiny(name)
    names = freeze_set(model, x, how)
    trainable, param_bytes = direct_counts(model, names)
    n_trainable = sum(p.numel() for p in trainable)
    result = memory_breakdown(model, x, frozen=names, optimizer=optimizer)

    assert result.trainable_params == n_trainable
    assert result.parameters_bytes == param_bytes
    assert result.gradients_bytes == FLOAT32 * n_trainable
    if optimizer == "adam":  # exp_avg and exp_avg_sq per parameter, one float32 step each
        assert result.optimizer_state_bytes == 2 * FLOAT32 * n_trainable + FLOAT32 * len(trainable)
    else:
        assert result.optimizer_state_bytes == 0
    with exactly_frozen(model, names):
        assert result.saved_activation_bytes == saved_activation_bytes(model, x)
    # The profiler's labels at the end of the step agree with the tensor counts.
    assert result.at_end["parameters"] == param_bytes
    assert result.at_end["gradients"] == result.gradients_bytes
    assert result.at_end["optimizer state"] == result.optimizer_state_bytes
    # The peak holds at least parameters, all gradients and the optimizer state.
    floor = param_bytes + FLOAT32 * n_trainable + result.optimizer_state_bytes
    assert result.peak_bytes >= floor
    assert result.peak_bytes == sum(result.at_peak.values()) == max(result.timeline.totals())
    assert result.peak_bytes == max(result.phase_peaks.values())
    assert result.peak_phase in PHASES
    # At the end of the forward pass every saved tensor is live at once.
    assert result.phase_peaks["forward"] >= (param_bytes + result.optimizer_state_bytes
                                             + result.saved_activation_bytes)
    assert result.temporary_bytes == (result.at_peak["temporaries"]
                                      + result.at_peak["autograd detail"])
    assert result.other_bytes == result.at_peak["other"]


def test_frozen_parameters_need_no_gradient_or_state():
    model, x = tiny("mlp")
    order = execution_order(model, x)
    full = memory_breakdown(model, x, frozen=[], optimizer="adam")
    half = memory_breakdown(model, x, frozen=prefix_units(order, 2), optimizer="adam")
    frozen_params = sum(p.numel() for n in prefix_units(order, 2)
                        for p in dict(model.named_modules())[n].parameters())
    assert half.frozen_params == frozen_params
    assert full.gradients_bytes - half.gradients_bytes == FLOAT32 * frozen_params
    assert full.optimizer_state_bytes - half.optimizer_state_bytes == (
        2 * FLOAT32 * frozen_params + FLOAT32 * 4)  # two frozen units: 4 tensors, 4 step counters
    assert half.parameters_bytes == full.parameters_bytes


@pytest.mark.parametrize(("optimizer", "per_param", "per_tensor"),
                         [("sgd", 0, 0), ("sgd-momentum", 4, 0), ("adam", 8, 4),
                          ("adamw", 8, 4)])
def test_optimizer_state_per_trainable_parameter(optimizer, per_param, per_tensor):
    model, x = tiny("mlp")
    result = memory_breakdown(model, x, optimizer=optimizer)
    n = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    assert result.optimizer_state_bytes == per_param * n + per_tensor * tensors


def test_optimizer_callable_and_state_bytes():
    model, x = tiny("mlp")
    built = []

    def rmsprop(params):
        built.append(torch.optim.RMSprop(params, lr=0.01))
        return built[-1]

    result = memory_breakdown(model, x, optimizer=rmsprop)
    n = sum(p.numel() for p in model.parameters())
    assert result.optimizer_state_bytes == optimizer_state_bytes(built[0])
    assert result.optimizer_state_bytes == FLOAT32 * n + FLOAT32 * len(list(model.parameters()))


def test_frozen_none_measures_the_model_as_configured():
    model, x = tiny("mlp")
    model.fc1.requires_grad_(False)  # as a PEFT library would leave it
    as_configured = memory_breakdown(model, x)
    assert as_configured == memory_breakdown(model, x, frozen=["fc1"])
    assert not model.fc1.weight.requires_grad and model.fc2.weight.requires_grad


def test_all_frozen_runs_forward_only():
    model, x = tiny("mlp")
    result = memory_breakdown(model, x, frozen=execution_order(model, x))
    assert result.gradients_bytes == result.optimizer_state_bytes == 0
    assert result.saved_activation_bytes == 0
    assert set(result.phase_peaks) == {"forward"}


def snapshot(model):
    return {
        "values": {n: p.detach().clone() for n, p in model.named_parameters()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone()
                  for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
    }


def assert_same(before, after):
    for key in ("flags", "modes"):
        assert before[key] == after[key]
    for key in ("values", "buffers"):
        assert all(torch.equal(before[key][n], after[key][n]) for n in before[key])
    for n, grad in before["grads"].items():
        assert (grad is None) == (after["grads"][n] is None)
        assert grad is None or torch.equal(grad, after["grads"][n])


def test_model_comes_back_unchanged():
    model, x = tiny("cnn")
    model.fc.requires_grad_(False)
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    model.bn2.eval()
    threads = torch.get_num_threads()
    before = snapshot(model)
    memory_breakdown(model, x, frozen=["conv1"], optimizer="adam")
    assert_same(before, snapshot(model))
    assert torch.get_num_threads() == threads
    assert next(model.parameters()).device.type == "cpu"


def test_model_comes_back_unchanged_on_error():
    model, x = tiny("mlp")
    before = snapshot(model)
    calls = []

    def failing_loss(output):
        calls.append(1)
        if len(calls) == 2:  # the warm-up step has changed the values by now
            raise RuntimeError("boom")
        return output.sum()

    with pytest.raises(RuntimeError, match="boom"):
        memory_breakdown(model, x, loss_fn=failing_loss, optimizer="sgd")
    assert_same(before, snapshot(model))


def test_target_and_loss_fn():
    model, x = tiny("mlp")
    target = torch.arange(4) % 10
    with_target = memory_breakdown(model, x, target=target, optimizer="sgd")
    assert with_target.gradients_bytes == FLOAT32 * sum(p.numel() for p in model.parameters())
    mse = memory_breakdown(model, x, target=torch.zeros(4, 10), optimizer="sgd")
    assert mse.gradients_bytes == with_target.gradients_bytes


def test_bad_input_says_what_is_valid():
    model, x = tiny("mlp")
    with pytest.raises(ValueError, match=r"unknown optimizer 'lion'.*'sgd'.*'adamw'.*callable"):
        memory_breakdown(model, x, optimizer="lion")
    with pytest.raises(ValueError, match="callable"):
        resolve_optimizer(3)
    with pytest.raises(ValueError, match=r"must return a torch\.optim\.Optimizer"):
        memory_breakdown(model, x, optimizer=lambda params: "adam")
    with pytest.raises(TypeError, match=r"not the string 'fc1'"):
        memory_breakdown(model, x, frozen="fc1")
    with pytest.raises(TypeError, match=r"not the string 'fc1'"):
        estimate_peak(model, x, frozen="fc1")
    with pytest.raises(ValueError, match="unknown unit"):
        memory_breakdown(model, x, frozen=["fc9"])
    with pytest.raises(ValueError, match="has no parameters"):
        memory_breakdown(nn.ReLU(), x)
    with pytest.raises(ValueError, match=r"torch\.nn\.Module"):
        memory_breakdown("model", x)
    with pytest.raises(ValueError, match="does not fit the model"):
        memory_breakdown(model, torch.ones(4, 3))
    assert set(OPTIMIZERS) == {"sgd", "sgd-momentum", "adam", "adamw"}


def test_deterministic_and_independent_of_thread_count():
    model, x = tiny("transformer")
    threads = torch.get_num_threads()
    first = memory_breakdown(model, x)
    try:
        torch.set_num_threads(2)
        second = memory_breakdown(model, x)
    finally:
        torch.set_num_threads(threads)
    assert first == second
    assert first.timeline.live == second.timeline.live


def test_no_warning_and_no_stderr(capfd):
    model, x = tiny("mlp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        memory_breakdown(model, x)
    assert caught == []
    assert capfd.readouterr().err == ""


def test_timeline_replay_pins_the_private_profiler():
    from torch.profiler._memory_profiler import (
        _CATEGORY_TO_INDEX,
        Category,
        MemoryProfileTimeline,
    )

    from autograd_cost.memory_timeline import _category_names

    names = _category_names()
    assert set(names) == {*Category, None}  # every category of this torch has a name
    assert sorted(names.values()) == sorted(CATEGORIES)

    model, x = tiny("mlp")
    optimizer = torch.optim.Adam(model.parameters())
    model(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with memory_profile() as prof:
        with profiled_phase("forward"):
            loss = model(x).sum()
        with profiled_phase("backward"):
            loss.backward()
        with profiled_phase("optimizer"):
            optimizer.step()
    timeline = memory_timeline(prof)
    end = timeline.at(len(timeline.live) - 1)
    n = sum(p.numel() for p in model.parameters())
    assert end["parameters"] == end["gradients"] == FLOAT32 * n
    assert end["optimizer state"] == optimizer_state_bytes(optimizer)
    assert timeline.phases[0] == "setup"
    assert [p for i, p in enumerate(timeline.phases) if i == 0 or p != timeline.phases[i - 1]] \
        == ["setup", *PHASES]
    # The deprecated export's columns follow its colour table; its final state is ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    for category, index in _CATEGORY_TO_INDEX.items():
        assert sizes[-1][index + 1] == end[names[category]]
    # It merges events within a microsecond, so its peak can only be lower than ours.
    assert max(sum(row) for row in sizes) <= max(timeline.totals())
    with pytest.raises(ValueError, match="valid phases"):
        timeline.peak_index("step")


def test_table_and_plots():
    model, x = tiny("mlp")
    results = {"unfrozen": memory_breakdown(model, x, optimizer="sgd"),
               "prefix 2": memory_breakdown(model, x, frozen=["fc1", "fc2"], optimizer="sgd")}
    table = breakdown_table(results)
    assert list(table.index) == ["unfrozen", "prefix 2"] and table.index.name == "setting"
    assert list(table.columns) == ["trainable", "params", "grads", "optim state", "saved act",
                                   "temporary", "other", "peak", "peak in"]
    n_params = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in [*model.fc1.parameters(), *model.fc2.parameters()])
    assert table["trainable"].tolist() == [n_params, n_params - frozen]  # counted by hand
    assert table["grads"].tolist() == [FLOAT32 * n_params, FLOAT32 * (n_params - frozen)]
    assert table["peak"].tolist() == [r.peak_bytes for r in results.values()]
    assert table["peak in"].tolist() == ["backward", "backward"]  # SGD: no optimizer state
    assert str(table) == str(breakdown_table(results))  # a plain, deterministic repr
    fig = plot_memory_breakdown(results)
    assert len(fig.axes[0].patches) >= 2
    fig = plot_memory_timeline(results)
    assert len(fig.axes) == 2
    fig = plot_memory_timeline({**results, "third": results["unfrozen"]}, columns=2)
    assert [ax.get_visible() for ax in fig.axes] == [True, True, True, False]
    with pytest.raises(ValueError, match="columns must be a positive int"):
        plot_memory_timeline(results, columns=0)
    with pytest.raises(ValueError, match="at least one"):
        breakdown_table({})
    with pytest.raises(ValueError, match="not a MemoryTimeline"):
        plot_memory_timeline({"x": 3})


def wide_net(batch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.LayerNorm(256), nn.Linear(256, 256),
                        nn.Tanh(), nn.Linear(256, 10))
    return net, torch.randn(batch, 32)


def test_estimate_terms_against_counts():
    model, x = tiny("mlp")  # 64 -> 16 -> 16 -> 16 -> 10, batch 4
    n = sum(p.numel() for p in model.parameters())
    estimate = estimate_peak(model, x, optimizer="adam")
    assert estimate.parameters_bytes == estimate.gradients_bytes == FLOAT32 * n
    assert estimate.optimizer_state_bytes == 2 * FLOAT32 * n + FLOAT32 * 8
    assert estimate.inputs_bytes == x.numel() * FLOAT32
    assert estimate.unsaved_inputs_bytes == 0  # fc1 trains, so it saves x
    assert estimate.largest_activation_bytes == 4 * 16 * FLOAT32
    assert estimate.optimizer_temporary_bytes == 2 * 64 * 16 * FLOAT32  # fc1.weight is largest
    assert estimate.saved_activation_bytes == saved_activation_bytes(model, x)
    assert estimate.peak_bytes == max(estimate.backward_bytes, estimate.optimizer_bytes)
    frozen = estimate_peak(model, x, frozen=["fc1"], optimizer="sgd")
    assert frozen.unsaved_inputs_bytes == x.numel() * FLOAT32
    assert frozen.optimizer_state_bytes == frozen.optimizer_temporary_bytes == 0
    assert frozen.optimizer_bytes == (frozen.parameters_bytes + frozen.inputs_bytes
                                      + frozen.gradients_bytes)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="knows the optimizers"):
        estimate_peak(model, x, optimizer="lion")


@pytest.mark.parametrize("batch", [16, 1024])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_estimate_within_ten_percent_where_one_phase_dominates(batch, optimizer):
    model, x = wide_net(batch)
    for names in ([], ["0"], ["5"]):
        measured = memory_breakdown(model, x, frozen=names, optimizer=optimizer).peak_bytes
        estimated = estimate_peak(model, x, frozen=names, optimizer=optimizer).peak_bytes
        assert abs(estimated / measured - 1) <= 0.10, (names, estimated, measured)


def test_profile_freezing_memory_option_adds_measured_columns():
    from autograd_cost.profile import (
        MEMORY_COLUMNS,
        PROFILE_COLUMNS,
        profile_freezing,
        profile_table,
    )

    model, x = tiny("mlp")
    plain = profile_freezing(model, x, repeats=1, modes=["prefix"])
    assert list(plain.columns) == list(PROFILE_COLUMNS)
    assert "peak bytes" not in profile_table(plain).columns
    rows = profile_freezing(model, x, repeats=1, modes=["prefix"], memory=True)
    assert list(rows.columns) == [*PROFILE_COLUMNS, *MEMORY_COLUMNS]
    order = execution_order(model, x)
    for _, row in rows.iterrows():
        measured = memory_breakdown(model, x, frozen=prefix_units(order, row["freeze_depth"]))
        assert row["gradients_bytes"] == FLOAT32 * row["trainable_params"]
        assert (row["peak_bytes"], row["optimizer_state_bytes"]) == (
            measured.peak_bytes, measured.optimizer_state_bytes)
    sgd = profile_freezing(model, x, repeats=1, frozen=["fc1"], memory="sgd")
    assert sgd["optimizer_state_bytes"].tolist() == [0, 0]
    assert "peak bytes" in profile_table(sgd, timings=False).columns
    with pytest.raises(ValueError, match=r"memory must be False, True \(Adam\) or one of"):
        profile_freezing(model, x, repeats=1, memory="lion")


def test_cli_memory_flag(capsys):
    import json

    from autograd_cost.cli import main

    assert main(["profile", "--model", "mlp", "--width", "8", "--depth", "2", "--batch", "4",
                 "--repeats", "1", "--mode", "prefix", "--memory", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["optimizer_state_bytes"] == 2 * FLOAT32 * r["trainable_params"]
               + FLOAT32 * 2 * (3 - r["freeze_depth"])  # two tensors per trainable unit
               for r in rows)
    assert main(["profile", "--model", "mlp", "--width", "8", "--depth", "2", "--batch", "4",
                 "--repeats", "1", "--mode", "suffix", "--memory", "sgd"]) == 0
    assert "peak bytes" in capsys.readouterr().out


def test_cpu_has_no_cuda_cross_check():
    model, x = tiny("mlp")
    assert memory_breakdown(model, x, optimizer="sgd").cuda_peak_increase_bytes is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_peak_agrees_with_the_allocator():
    model, x = tiny("mlp")
    result = memory_breakdown(model, x, device="cuda")
    increase = result.peak_bytes - result.timeline.totals()[0]
    assert result.cuda_peak_increase_bytes >= increase
    assert result.cuda_peak_increase_bytes <= increase + 512 * len(result.timeline.live)
    assert next(model.parameters()).device.type == "cpu"
