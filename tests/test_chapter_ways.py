"""freeze(), memory accounting, the six ways and the bug demos, against PyTorch oracles."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.chapters.ways import (
    DETACH_HOWS,
    WAYS,
    PartlyDetached,
    WayRow,
    compare_ways,
    draw_way,
    grad_state,
    grad_status,
    interleaved_way_seconds,
    measure_way,
    saved_bytes_by_child,
    saved_bytes_table,
    verdict,
)
from autograd_cost.chapters.ways_drift import (
    DRIFT_FIXES,
    changes_in_eval,
    eval_candidates,
    eval_changes_output,
    eval_mode_examples,
    freeze,
    frozen_drift,
)
from autograd_cost.chapters.ways_drift import train_on_slices as train_steps
from autograd_cost.cost import count_flops, optimizer_state_bytes, saved_activation_bytes
from autograd_cost.cost import gradient_bytes as grad_bytes
from autograd_cost.data import load_digit_images
from autograd_cost.freezing import exactly_frozen, preserved_state, units
from autograd_cost.models import small_cnn
from autograd_cost.timing import Timing

EARLY = ["conv1", "bn1", "conv2", "bn2"]
# The ways under their old one-letter names in this file, so that each test reads as before.
A, B, C, D, E, F_, AE = ("requires_grad_false", "optimizer_excludes", "no_grad_prefix",
                         "inference_mode_prefix", "eval_prefix", "lr_zero_group",
                         "requires_grad_false_eval")


def parameters_of(modules):
    return [p for module in modules for p in module.parameters()]


def named_modules_of(model, names):
    return [model.get_submodule(name) for name in names]


def snapshot(tensors):
    return [t.detach().clone() for t in tensors]


def max_abs_change(tensors, before):
    return max(((t.detach() - b).abs().max().item() for t, b in zip(tensors, before,
                                                                     strict=True)), default=0.0)


def classification_loss(target):
    return lambda out: F.cross_entropy(out, target)


def measured(model, x, y, ways=tuple(WAYS)):
    return {way: measure_way(model, way, EARLY, x, y) for way in ways}


def cnn_and_batch(batch=8):
    model = small_cnn(channels=4, hidden=8)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 8, 8, generator=generator)
    y = torch.randint(10, (batch,), generator=generator)
    return model, x, y


def state_of(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(p.requires_grad, p.grad) for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def assert_same_state(model, before):
    tensors, flags, modes = before
    for key, value in model.state_dict().items():
        assert torch.equal(value, tensors[key]), key
    now = [(p.requires_grad, p.grad) for p in model.parameters()]
    assert [f for f, _ in now] == [f for f, _ in flags]
    assert all(a is b for (_, a), (_, b) in zip(now, flags, strict=True))
    assert [m.training for m in model.modules()] == modes


# ---------------------------------------------------------------- freeze()


def test_freeze_turns_off_requires_grad_and_clears_grads():
    model, x, y = cnn_and_batch()
    F.cross_entropy(model(x), y).backward()
    handle = freeze(model, EARLY)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"{u}.{k}" for u in EARLY for k in ("weight", "bias")} - {
        "conv1.bias", "conv2.bias"
    }
    assert all(p.grad is None for p in handle.params)
    assert model.fc.weight.grad is not None
    handle.restore()
    assert all(p.requires_grad and p.grad is not None for p in model.parameters())


def test_freeze_drops_frozen_parameters_from_every_group_and_state():
    model, x, y = cnn_and_batch()
    optimizer = torch.optim.Adam(
        [{"params": [*model.conv1.parameters(), *model.fc.parameters()]},
         {"params": [*model.bn1.parameters(), *model.head.parameters()], "lr": 0.1}]
    )
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    groups_before = [list(g["params"]) for g in optimizer.param_groups]
    conv1_state = optimizer.state[model.conv1.weight]
    with freeze(model, ["conv1", "bn1"], optimizer=optimizer) as handle:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert not held & {id(p) for p in handle.params}
        assert held == {id(p) for p in [*model.fc.parameters(), *model.head.parameters()]}
        assert all(p not in optimizer.state for p in handle.params)
        assert handle.removed_from_optimizer == 3  # conv1.weight, bn1.weight, bn1.bias
        assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["lr"] == 0.1
    assert [list(g["params"]) for g in optimizer.param_groups] == groups_before
    assert optimizer.state[model.conv1.weight] is conv1_state


def test_frozen_parameters_dropped_from_the_optimizer_do_not_move():
    model, x, y = cnn_and_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    train_steps(model, optimizer, x, y, steps=2, batch_size=4)
    freeze(model, EARLY, optimizer=optimizer)
    frozen = parameters_of(named_modules_of(model, EARLY))
    before = snapshot(frozen)
    train_steps(model, optimizer, x, y, steps=3, batch_size=4, set_to_none=False)
    assert max_abs_change(frozen, before) == 0.0


def test_a_second_restore_changes_nothing():
    model, x, y = cnn_and_batch()
    handle = freeze(model, EARLY)
    handle.restore()
    F.cross_entropy(model(x), y).backward()
    grad = model.conv1.weight.grad
    model.conv1.weight.requires_grad_(False)
    handle.restore()
    assert model.conv1.weight.grad is grad and not model.conv1.weight.requires_grad


def test_freeze_restores_everything_after_an_exception():
    model, x, y = cnn_and_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    model.bn1.eval()
    before = state_of(model)
    groups = [list(g["params"]) for g in optimizer.param_groups]
    buffers = {p: s["momentum_buffer"] for p, s in optimizer.state.items()}
    with pytest.raises(RuntimeError, match="boom"), freeze(
        model, EARLY, optimizer=optimizer, eval_norm=True
    ):
        raise RuntimeError("boom")
    assert_same_state(model, before)
    assert [list(g["params"]) for g in optimizer.param_groups] == groups
    assert all(optimizer.state[p]["momentum_buffer"] is b for p, b in buffers.items())
    model.train()
    model(x)  # no leftover hook keeps bn2 in eval
    assert model.bn2.training


def test_eval_norm_keeps_running_stats_even_after_model_train():
    model, x, _ = cnn_and_batch()
    stats = [model.bn1.running_mean, model.bn2.running_var]
    before = snapshot(stats)
    with freeze(model, EARLY, eval_norm=True) as handle:
        assert set(handle.eval_modules) == {model.bn1, model.bn2}
        model.train()
        model(x)
        assert max_abs_change(stats, before) == 0.0
        assert int(model.bn1.num_batches_tracked) == 0
    model(x)
    assert max_abs_change(stats, before) > 0


def test_without_eval_norm_a_frozen_batchnorm_still_updates_its_stats():
    model, x, _ = cnn_and_batch()
    before = snapshot([model.bn1.running_mean])
    with freeze(model, EARLY):
        model(x)
    assert max_abs_change([model.bn1.running_mean], before) > 0


def _eval_changes_output(module: nn.Module, x: torch.Tensor) -> bool:
    """Oracle: does PyTorch's forward differ between train and eval mode (state restored)?"""
    with preserved_state(module), torch.no_grad():
        torch.manual_seed(0)
        train_out = module.train()(x)
        eval_out = module.eval()(x)
    if isinstance(train_out, tuple):  # RNNs: (output, hidden state)
        train_out, eval_out = train_out[0], eval_out[0]
    return not torch.equal(train_out, eval_out)


@pytest.mark.parametrize(
    "make, x_shape",
    [
        (lambda: nn.BatchNorm1d(4), (8, 4)),
        (lambda: nn.BatchNorm2d(4), (8, 4, 3, 3)),
        (lambda: nn.BatchNorm1d(4, track_running_stats=False), (8, 4)),
        (lambda: nn.InstanceNorm1d(4), (8, 4, 5)),
        (lambda: nn.InstanceNorm1d(4, track_running_stats=True), (8, 4, 5)),
        (lambda: nn.LayerNorm(4), (8, 4)),
        (lambda: nn.GroupNorm(2, 4), (8, 4)),
        (lambda: nn.Dropout(0.5), (8, 4)),
        (lambda: nn.Dropout2d(0.5), (8, 4, 3, 3)),
        (lambda: nn.AlphaDropout(0.5), (8, 4)),
        (lambda: nn.RReLU(), (8, 4)),
        (lambda: nn.LSTM(4, 4, num_layers=2, dropout=0.5), (5, 2, 4)),
        (lambda: nn.GRU(4, 4, num_layers=2, dropout=0.5), (5, 2, 4)),
        (lambda: nn.GRU(4, 4, num_layers=2), (5, 2, 4)),
        (lambda: nn.RNN(4, 4), (5, 2, 4)),
        (lambda: nn.Linear(4, 4), (8, 4)),
    ],
)
def test_changes_in_eval_matches_what_eval_mode_does(make, x_shape):
    module = make()
    x = torch.randn(*x_shape, generator=torch.Generator().manual_seed(1)) * 3 + 1
    assert changes_in_eval(module) == _eval_changes_output(module, x)


def test_changes_in_eval_for_attention_follows_its_dropout():
    assert changes_in_eval(nn.MultiheadAttention(4, 2, dropout=0.1))
    assert not changes_in_eval(nn.MultiheadAttention(4, 2))


@pytest.mark.parametrize(
    "make, x_shape",
    [
        (lambda: nn.BatchNorm1d(4), (8, 4)),
        (lambda: nn.LayerNorm(4), (8, 4)),
        (lambda: nn.Dropout(0.5), (8, 4)),
        (lambda: nn.LSTM(4, 4, num_layers=2, dropout=0.5), (5, 2, 4)),
        (lambda: nn.Linear(4, 4), (8, 4)),
    ],
)
def test_eval_changes_output_agrees_with_the_oracle_and_restores_everything(make, x_shape):
    module = make()
    x = torch.randn(*x_shape, generator=torch.Generator().manual_seed(1)) * 3 + 1
    expected = _eval_changes_output(module, x)  # seeds the global generator itself
    before, rng = state_of(module), torch.get_rng_state()
    assert eval_changes_output(module, x) == expected
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is untouched
    assert_same_state(module, before)


def test_eval_mode_examples_are_switched_exactly_when_eval_changes_them():
    examples = eval_mode_examples()
    measured = {name: eval_changes_output(m, x) for name, (m, x) in examples.items()}
    assert measured == {name: bool(eval_candidates([m])) for name, (m, _) in examples.items()}
    assert set(measured.values()) == {True, False}
    assert measured["BatchNorm2d"] and not measured["LayerNorm"]
    first, second = eval_mode_examples(), eval_mode_examples()
    assert torch.equal(first["RReLU"][1], second["RReLU"][1])  # the same inputs every call


def test_eval_norm_switches_only_dropout_and_running_stat_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Dropout(0.5),
                          nn.GroupNorm(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x = torch.randn(16, 4)
    assert eval_candidates([model]) == [model[2], model[4]]
    with freeze(model, ["0", "1", "2", "3", "4"], eval_norm=True):
        model.train()
        assert torch.equal(model(x), model(x))  # dropout is off, BatchNorm uses running stats
        assert model[1].training and model[3].training  # LayerNorm, GroupNorm left alone
        assert not model[2].training and not model[4].training
    assert model[2].training and model[4].training


def test_freeze_rejects_bad_input():
    model, _, _ = cnn_and_batch()
    with pytest.raises(TypeError, match="not the string"):
        freeze(model, "conv1")
    with pytest.raises(ValueError, match="valid names"):
        freeze(model, ["conv9"])
    with pytest.raises(ValueError, match="empty"):
        freeze(model, [])
    with pytest.raises(TypeError, match="Optimizer"):
        freeze(model, ["conv1"], optimizer=[model.conv1.weight])


# ---------------------------------------------------------------- memory


def test_adam_state_is_two_float32_moments_per_trainable_element_plus_step_counters():
    model, x, y = cnn_and_batch()
    optimizer = torch.optim.Adam(model.parameters())
    with freeze(model, EARLY):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        trainable = [p for p in model.parameters() if p.requires_grad]
        expected = 2 * 4 * sum(p.numel() for p in trainable) + 4 * len(trainable)
        assert optimizer_state_bytes(optimizer) == expected
        assert set(optimizer.state) == set(trainable)


def test_sgd_without_momentum_keeps_no_state_and_bad_input_is_rejected():
    model, x, y = cnn_and_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert optimizer_state_bytes(optimizer) == 0
    with pytest.raises(TypeError, match="Optimizer"):
        optimizer_state_bytes(model)


def test_grad_bytes_and_grad_states():
    model, x, y = cnn_and_batch()
    assert grad_bytes(model) == 0
    with freeze(model, EARLY):
        F.cross_entropy(model(x), y).backward()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert grad_bytes(model) == 4 * trainable
        status = grad_status(model)
    assert status == {"conv1": "None", "bn1": "None", "conv2": "None", "bn2": "None",
                      "fc": "non-zero", "head": "non-zero"}
    model.head.weight.grad.zero_()
    model.head.bias.grad.zero_()
    assert grad_state(list(model.head.parameters())) == "zero"


# ---------------------------------------------------------------- no_grad / inference_mode


@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "detach"])
def test_partly_detached_gives_the_same_output_and_cuts_gradients(how):
    model, x, y = cnn_and_batch()
    model.eval()
    net = PartlyDetached(model, ["fc"], how)
    assert torch.allclose(net(x), model(x))
    F.cross_entropy(net(x), y).backward()
    assert grad_status(model) == {u: "None" for u in ["conv1", "bn1", "conv2", "bn2", "fc"]} | {
        "head": "non-zero"
    }


@pytest.mark.parametrize("how", [None, *DETACH_HOWS])
def test_saved_bytes_by_child_adds_up_to_saved_activation_bytes(how):
    model, x, y = cnn_and_batch()
    net = model if how is None else PartlyDetached(model, EARLY, how)
    before = state_of(model)
    saved = saved_bytes_by_child(net, x, classification_loss(y))
    assert_same_state(model, before)
    assert saved.total == saved_activation_bytes(net, x, classification_loss(y))
    assert list(saved.by_child) == [name for name, _ in model.named_children()] + ["loss"]
    cut = saved_activation_bytes(PartlyDetached(model, EARLY, "no_grad"), x, classification_loss(y))
    if how == "detach":  # the early graph is recorded, then dropped during the forward
        assert saved.total > cut and saved.held == cut
        assert saved.by_child["conv1"] > 0 and saved.by_child["relu2"] == 0
    else:
        assert saved.held == saved.total
    if how in ("no_grad", "inference_mode"):
        assert all(saved.by_child[name] == 0 for name in EARLY)


def test_saved_bytes_by_child_names_the_saving_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = torch.randn(5, 4)
    saved = saved_bytes_by_child(model, x, lambda out: out.sum())
    # Linear saves its input (the weight needs it); ReLU saves its output, 5 x 3 floats
    assert saved.by_child == {"0": x.untyped_storage().nbytes(), "1": 5 * 3 * 4, "loss": 0}
    table = saved_bytes_table({"plain": model, "again": model}, x, lambda out: out.sum())
    assert list(table.columns) == ["plain", "again"]
    assert table.loc["0", "plain"] == x.untyped_storage().nbytes()
    assert table.loc["1", "again"] == 5 * 3 * 4
    assert table.loc["total", "plain"] == saved.total


def test_partly_detached_rejects_bad_input():
    model, _, _ = cnn_and_batch()
    with pytest.raises(ValueError, match="valid values"):
        PartlyDetached(model, ["fc"], "no_autograd")
    with pytest.raises(TypeError, match="Sequential"):
        PartlyDetached(nn.Linear(2, 2), ["weight"])
    with pytest.raises(ValueError, match="valid names"):
        PartlyDetached(model, ["fc9"])


# ---------------------------------------------------------------- the six ways


def test_cheap_ways_count_the_same_flops_as_requires_grad_false():
    model, x, y = cnn_and_batch()
    before = state_of(model)
    rows = measured(model, x, y)
    assert_same_state(model, before)

    def loss_fn(out):
        return F.cross_entropy(out, y)

    full = count_flops(model, x, loss_fn).backward
    with exactly_frozen(model, EARLY):
        frozen = count_flops(model, x, loss_fn).backward
    assert frozen < full
    for way in (A, C, D, AE):
        assert rows[way].backward_flops == frozen
        assert rows[way].grads["conv1"] == "None"
    for way in (B, E, F_):
        assert rows[way].backward_flops == full
        assert rows[way].grads["conv1"] == "non-zero"


def test_way_rows_measure_state_memory_and_movement():
    model, x, y = cnn_and_batch()
    rows = measured(model, x, y)
    numel = {name: sum(p.numel() for p in params) for name, params in units(model).items()}
    trainable = numel["fc"] + numel["head"]
    everything = sum(numel.values())
    tensors = len(list(model.parameters()))
    assert rows[A].adam_state_bytes == 8 * trainable + 4 * 4  # fc and head: 4 tensors
    assert rows[B].adam_state_bytes == 8 * trainable + 4 * 4
    assert rows[F_].adam_state_bytes == 8 * everything + 4 * tensors
    assert rows[A].grad_bytes == 4 * trainable and rows[B].grad_bytes == 4 * everything
    assert rows[E].frozen_weight_change > 0 and rows[E].running_stats_change == 0
    assert rows[F_].frozen_weight_change == 0 and rows[B].frozen_weight_change == 0
    assert rows[A].running_stats_change > 0 and rows[AE].running_stats_change == 0
    assert rows[A].saved_bytes < rows[B].saved_bytes
    for way in (A, C, D, AE):  # given every parameter, state only for fc and head
        assert (rows[way].adam_tensors, rows[way].adam_state_tensors) == (tensors, 4)
    assert (rows[B].adam_tensors, rows[B].adam_state_tensors) == (4, 4)
    assert (rows[F_].adam_tensors, rows[F_].adam_state_tensors) == (tensors, tensors)
    batch_stats = 2 * 4 * (model.bn1.num_features + model.bn2.num_features)
    assert rows[B].saved_bytes - rows[E].saved_bytes == batch_stats  # BN's mean and 1/std


def test_draw_way_keeps_exactly_the_nodes_the_way_builds():
    model, x, y = cnn_and_batch()
    rows = measured(model, x, y, ways=[A, B])
    cheap = repr(draw_way(model, A, EARLY, x, y))
    full = repr(draw_way(model, B, EARLY, x, y))
    assert cheap.endswith(f"{rows[A].graph_nodes} kept")
    assert full == f"autograd graph: {rows[B].graph_nodes} backward nodes"


def test_verdict_and_the_comparison_table():
    model, x, y = cnn_and_batch()
    rows = list(measured(model, x, y).values())
    cheapest = min(r.backward_flops for r in rows)
    verdicts = {r.way: verdict(r, cheapest) for r in rows}
    assert verdicts[AE] == "cheap and fully frozen"
    assert verdicts[E] == "not a freeze: weights move"
    assert verdicts[B] == verdicts[F_] == "frozen, but full backward cost"
    assert verdicts[A] == "cheap, but BN stats drift"
    assert isinstance(rows[0], WayRow)
    table = compare_ways(model, EARLY, x, y)
    assert list(table.index) == list(WAYS) and list(table["how"]) == list(WAYS.values())
    assert list(table["verdict"]) == [verdicts[way] for way in WAYS]
    assert all(name in table.columns for name in units(model))  # each unit's .grad state
    assert table.loc[B, "conv1"] == "non-zero" and table.loc[A, "conv1"] == "None"


def test_unknown_way_is_rejected():
    model, x, y = cnn_and_batch()
    with pytest.raises(ValueError, match="valid values"):
        compare_ways(model, EARLY, x, y, ways=["z"])
    with pytest.raises(ValueError, match="valid values"):
        compare_ways(model, EARLY, x, y, ways=["a"])  # the old one-letter keys are gone


def test_interleaved_way_seconds_gives_one_timing_per_way():
    model, x, y = cnn_and_batch()
    before = state_of(model)
    timings = interleaved_way_seconds(model, EARLY, x, y, ways=[A, B], repeats=3)
    assert list(timings) == [A, B]
    assert all(isinstance(t, Timing) and t.repeats == 3 and t.median > 0 for t in timings.values())
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="repeats"):
        interleaved_way_seconds(model, EARLY, x, y, repeats=0)


# ---------------------------------------------------------------- bug demos


def test_frozen_drift_happens_only_with_state_and_zero_grads():
    x, y = load_digit_images(128)

    def build():
        return small_cnn(channels=4, hidden=8)

    def drift(name, fix):
        return frozen_drift(build, name, fix, EARLY, x, y, steps=3)

    bug, to_none, dropped = DRIFT_FIXES
    assert drift("sgd", bug) == 0.0
    assert drift("sgd-momentum", bug) > 0 and drift("adamw", bug) > 0
    for name in ("sgd-momentum", "adamw"):
        assert drift(name, to_none) == 0.0 and drift(name, dropped) == 0.0
    with pytest.raises(ValueError, match="valid values"):
        frozen_drift(build, "sgd", "pray", EARLY, x, y)
    with pytest.raises(ValueError, match="valid values"):
        frozen_drift(build, "LBFGS", bug, EARLY, x, y)


def test_grads_left_out_of_the_optimizer_sum_over_steps():
    model, x, y = cnn_and_batch(batch=4)
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.0)  # nothing moves
    model.eval()
    one = torch.autograd.grad(F.cross_entropy(model(x), y), model.conv1.weight)[0]
    train_steps(model, optimizer, x, y, steps=3, batch_size=4)
    assert torch.allclose(model.conv1.weight.grad, 3 * one, atol=1e-6)


def test_train_steps_returns_losses_and_checks_input():
    model, x, y = cnn_and_batch()
    losses = train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, 2, 4)
    assert len(losses) == 2 and all(isinstance(v, float) for v in losses)
    with pytest.raises(ValueError, match="batch_size"):
        train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, 2, 99)
    with pytest.raises(ValueError, match="steps"):
        train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, -1)


def test_digit_images_are_scaled_8x8_images():
    x, y = load_digit_images(10)
    assert x.shape == (10, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.tolist() == list(range(10))
    assert len(load_digit_images()[1]) == 1797
    with pytest.raises(ValueError, match="count"):
        load_digit_images(0)


def test_saved_bytes_count_graphs_freed_during_the_forward_exactly():
    """cost.saved_activation_bytes keeps packed tensors alive, so freed memory is not reused."""
    from torch.autograd.graph import saved_tensors_hooks

    from autograd_cost.cost import saved_activation_bytes

    model, x, y = cnn_and_batch(batch=32)
    net = PartlyDetached(model, EARLY, "detach")
    packed = []
    with saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        F.cross_entropy(net(x), y)
    owned = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in packed}
    expected = sum(n for ptr, n in storages.items() if ptr not in owned)
    counts = {saved_activation_bytes(net, x, lambda out: F.cross_entropy(out, y)) for _ in range(5)}
    assert counts == {expected}
