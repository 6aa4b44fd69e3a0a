"""The progressive freezing schedule, the training loop and caching, against oracles."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.cost import count_flops
from autograd_cost.data import load_digit_split
from autograd_cost.freezing import exactly_frozen, execution_order, units
from autograd_cost.models import small_cnn
from autograd_cost.schedule import (
    NO_FREEZING,
    FreezeSchedule,
    ProgressiveFreezing,
    accuracy,
    adapt,
    apply_frozen_bn_mode,
    backward_flops_by_depth,
    eval_logits,
    expected_saving,
    fit,
    forward_floor_seconds,
    freeze_fraction,
    frozen_count,
    head_inputs,
    reset_module,
    same_weights,
)
from autograd_cost.training import optimizer_params, remove_from_optimizer


class BackwardsDefined(nn.Module):
    """Defines `late` before `early`, but runs early -> mid -> late."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.late = nn.Linear(8, 3)
        self.mid = nn.Linear(8, 8)
        self.early = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(torch.relu(self.mid(torch.relu(self.early(x)))))


@pytest.fixture(scope="module")
def tiny_split():
    split = load_digit_split(range(3), seed=0)
    return split


# ---------------------------------------------------------------- the linear schedule


@pytest.mark.parametrize(
    "progress, expected",
    [(0.0, 0.0), (0.1, 0.0), (0.55, 0.25), (1.0, 0.5)],
)
def test_freeze_fraction_is_linear_from_start_to_level(progress, expected):
    assert freeze_fraction(progress, freeze_start=0.1, freeze_level=0.5) == pytest.approx(expected)


def test_freeze_fraction_start_middle_end_without_delay():
    values = [freeze_fraction(p, 0.0, 1.0) for p in (0.0, 0.5, 1.0)]
    assert values == pytest.approx([0.0, 0.5, 1.0])


def test_frozen_count_rounds_down_and_is_exact_at_integers():
    assert frozen_count(0.5, 6, 0.0, 1.0) == 3  # 0.5 * 6 exactly, no float shortfall
    assert frozen_count(0.49, 6, 0.0, 1.0) == 2
    assert frozen_count(1.0, 6, 0.0, 1.0) == 6
    assert [FreezeSchedule(0.2, 0.75).count(p, 6) for p in (0.2, 0.6, 1.0)] == [0, 2, 4]
    assert all(NO_FREEZING.count(p / 10, 6) == 0 for p in range(11))


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((1.5, 0.1, 0.5), ValueError, "progress must lie in"),
        ((-0.1, 0.1, 0.5), ValueError, "progress must lie in"),
        ((0.5, 1.0, 0.5), ValueError, r"freeze_start must lie in \[0, 1\)"),
        ((0.5, 0.1, 1.5), ValueError, "freeze_level must lie in"),
        ((0.5, 0.1, float("nan")), TypeError, "freeze_level must be a number"),
        (("half", 0.1, 0.5), TypeError, "progress must be a number"),
    ],
)
def test_bad_schedule_values_are_explained(args, error, message):
    with pytest.raises(error, match=message):
        freeze_fraction(*args)


def test_freeze_schedule_validates_on_construction():
    with pytest.raises(ValueError, match="freeze_level"):
        FreezeSchedule(freeze_start=0.1, freeze_level=2.0)
    with pytest.raises(ValueError, match="frozen_bn must be one of"):
        FreezeSchedule(frozen_bn="frozen")
    with pytest.raises(ValueError, match="num_units"):
        frozen_count(0.5, -1, 0.0, 1.0)


# ---------------------------------------------------------------- the optimizer


def test_optimizer_no_longer_holds_frozen_parameters():
    model = small_cnn(channels=4, hidden=8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    order = execution_order(model, x)
    freezer = ProgressiveFreezing(model, optimizer, order, FreezeSchedule(0.0, 1.0))
    assert freezer.update(0.5) == ["conv1", "bn1", "conv2"]
    frozen_params = [p for name in ["conv1", "bn1", "conv2"] for p in units(model)[name]]
    held = {id(p) for p in optimizer_params(optimizer)}
    assert not any(id(p) in held for p in frozen_params)
    assert not any(p in optimizer.state for p in frozen_params)  # state dropped
    assert len(optimizer.state) == len(held) == 10 - 4
    assert not any(p.requires_grad for p in frozen_params)
    # an optimizer step now leaves the frozen weights exactly where they were
    before = [p.detach().clone() for p in frozen_params]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, frozen_params, strict=True))


def test_freezing_never_unfreezes_and_is_idempotent():
    model = small_cnn(channels=4, hidden=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    order = list(units(model))
    freezer = ProgressiveFreezing(model, optimizer, order, FreezeSchedule(0.0, 1.0))
    assert len(freezer.update(0.7)) == 4
    assert len(freezer.update(0.2)) == 4  # progress going back does not thaw anything
    assert len(optimizer_params(optimizer)) == 10 - 6


def test_remove_from_optimizer_counts_and_uses_identity():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))  # equal values
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9)
    optimizer.state[a]["momentum_buffer"] = torch.ones(3)
    assert remove_from_optimizer(optimizer, [a]) == 1
    assert optimizer_params(optimizer) == [b] and a not in optimizer.state


# ---------------------------------------------------------------- execution order


def test_freeze_order_is_execution_order_not_definition_order():
    model = BackwardsDefined()
    x = torch.randn(2, 4)
    assert list(units(model)) == ["late", "mid", "early"]  # definition order
    order = execution_order(model, x)
    assert order == ["early", "mid", "late"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    freezer = ProgressiveFreezing(model, optimizer, order, FreezeSchedule(0.0, 1.0))
    assert freezer.update(0.34) == ["early"]
    assert not model.early.weight.requires_grad and model.late.weight.requires_grad


def test_fit_freezes_in_execution_order():
    model = BackwardsDefined()
    x, y = torch.randn(16, 4), torch.randint(3, (16,))
    seen = []
    hook = model.late.register_forward_pre_hook(
        lambda m, args: seen.append(
            tuple(layer.weight.requires_grad for layer in (model.early, model.mid, model.late))
        )
    )
    result = fit(model, x, y, epochs=1, batch_size=4, schedule=FreezeSchedule(0.0, 1.0))
    hook.remove()
    # 4 steps at progress 0, .25, .5, .75: floor(3p) units frozen
    assert result.frozen_per_step == [0, 0, 1, 2]
    # the first forward is fit's own execution_order probe
    steps = seen[-4:]
    assert steps == [(True, True, True), (True, True, True), (False, True, True),
                     (False, False, True)]
    assert all(p.requires_grad for p in model.parameters())  # restored after training


def test_progressive_freezing_rejects_bad_order_and_schedule():
    model = small_cnn(channels=4, hidden=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every unit exactly once"):
        ProgressiveFreezing(model, optimizer, ["conv1"], FreezeSchedule())
    with pytest.raises(ValueError, match="unknown unit"):
        ProgressiveFreezing(model, optimizer, ["conv9"], FreezeSchedule())
    with pytest.raises(TypeError, match="FreezeSchedule"):
        ProgressiveFreezing(model, optimizer, list(units(model)), (0.1, 1.0))


# ---------------------------------------------------------------- BatchNorm


def test_frozen_batchnorm_eval_mode_keeps_running_stats():
    model = small_cnn(channels=4, hidden=8)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))
    for param in [*model.conv1.parameters(), *model.bn1.parameters()]:
        param.requires_grad_(False)
    mean_before = model.bn1.running_mean.clone()
    bn2_before = model.bn2.running_mean.clone()
    fit(model, x, y, epochs=1, batch_size=8, frozen_bn="eval")
    assert torch.equal(model.bn1.running_mean, mean_before)  # eval mode: not updated
    assert not torch.equal(model.bn2.running_mean, bn2_before)  # trainable: updated
    assert model.training and model.bn1.training  # modes restored after fit


def test_frozen_batchnorm_train_mode_keeps_updating():
    model = small_cnn(channels=4, hidden=8)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))
    for param in model.bn1.parameters():
        param.requires_grad_(False)
    before = model.bn1.running_mean.clone()
    fit(model, x, y, epochs=1, batch_size=8, frozen_bn="train")
    assert not torch.equal(model.bn1.running_mean, before)
    assert apply_frozen_bn_mode(model, "eval") == ["bn1"] and not model.bn1.training
    with pytest.raises(ValueError, match="frozen_bn"):
        apply_frozen_bn_mode(model, "off")


# ---------------------------------------------------------------- training loop and caching


def test_fit_rejects_bad_input():
    model = small_cnn(channels=4, hidden=8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    with pytest.raises(ValueError, match="differ in length"):
        fit(model, x, y[:4], epochs=1)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        fit(model, x, y, epochs=0)
    with exactly_frozen(model, list(units(model))), pytest.raises(
        ValueError, match="nothing to train"
    ):
        fit(model, x, y, epochs=1)


def test_fit_matches_a_hand_written_adam_loop():
    x, y = torch.randn(12, 1, 8, 8), torch.randint(10, (12,))
    ours, reference = small_cnn(channels=4, hidden=8), small_cnn(channels=4, hidden=8)
    fit(ours, x, y, epochs=2, batch_size=5, lr=0.01, seed=7)
    from autograd_cost.data import batch_order

    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    reference.train()
    for index in batch_order(12, 5, 2, seed=7):
        optimizer.zero_grad()
        F.cross_entropy(reference(x[index]), y[index]).backward()
        optimizer.step()
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_forward_floor_runs_fits_batches_forward_only_and_restores_the_model():
    model = small_cnn(channels=4, hidden=8).train()
    model.conv2.weight.requires_grad_(False)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(10, (12,))
    snapshot = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    seen, bn_modes = [], []
    model.bn1.register_forward_hook(lambda module, args, output: bn_modes.append(module.training))
    handle = model.register_forward_hook(
        lambda module, args, output: seen.append((len(args[0]), output.requires_grad))
    )
    seconds = forward_floor_seconds(model, x, y, epochs=2, batch_size=5, seed=3)
    handle.remove()
    from autograd_cost.data import batch_order

    expected_sizes = [len(b) for b in batch_order(12, 5, 2, seed=3)]  # fit's batches
    assert [size for size, _ in seen] == expected_sizes
    assert not any(requires for _, requires in seen)  # no graph: nothing is trained
    assert bn_modes == [False] * len(expected_sizes)  # frozen BatchNorm in eval mode
    assert isinstance(seconds, float) and seconds > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key])  # weights and running stats unchanged
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and model.bn1.training
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="differ in length"):
        forward_floor_seconds(model, x, y[:4], epochs=1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        forward_floor_seconds(model, x, y, epochs=1, batch_size=0)


def test_eval_logits_are_the_eval_mode_outputs_and_restore_mode():
    model = small_cnn(channels=4, hidden=8).train()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    logits = eval_logits(model, x)
    torch.testing.assert_close(logits, expected)
    assert not logits.requires_grad and model.training


def test_accuracy_matches_argmax_and_restores_mode():
    model = small_cnn(channels=4, hidden=8).train()
    x, y = torch.randn(20, 1, 8, 8), torch.randint(10, (20,))
    with torch.no_grad():
        expected = (model.eval()(x).argmax(1) == y).float().mean().item()
    model.train()
    assert accuracy(model, x, y) == pytest.approx(expected)
    assert model.training
    with pytest.raises(ValueError, match="equally many"):
        accuracy(model, x, y[:3])


def test_head_inputs_are_the_backbone_output():
    model = small_cnn(channels=4, hidden=8).train()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()[:-1](x)
    model.train()
    torch.testing.assert_close(head_inputs(model, x), expected)
    assert model.training
    with pytest.raises(ValueError, match="unknown head module"):
        head_inputs(model, x, head="classifier")


def test_adapt_freeze_and_cache_train_the_same_head(tiny_split):
    pretrained = small_cnn(channels=4, hidden=8)
    snapshot = copy.deepcopy(pretrained.state_dict())
    frozen_model, frozen_run = adapt(pretrained, tiny_split, "freeze", epochs=2)
    cached_model, cached_run = adapt(pretrained, tiny_split, "cache", epochs=2)
    torch.testing.assert_close(frozen_model.head.weight, cached_model.head.weight)
    assert frozen_run.accuracy == pytest.approx(cached_run.accuracy)
    torch.testing.assert_close(frozen_model.conv1.weight, pretrained.conv1.weight)
    tuned, _ = adapt(pretrained, tiny_split, "fine-tune", epochs=1)
    assert not torch.equal(tuned.conv1.weight, pretrained.conv1.weight)
    for key, value in pretrained.state_dict().items():
        assert torch.equal(value, snapshot[key])  # the pretrained model is untouched
    with pytest.raises(ValueError, match="valid methods"):
        adapt(pretrained, tiny_split, "distill", epochs=1)


def test_reset_module_is_seeded_and_leaves_global_rng_alone():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    reset_module(a, seed=1)
    reset_module(b, seed=1)
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(torch.rand(1), expected_next)
    with pytest.raises(TypeError, match="reset_parameters"):
        reset_module(nn.ReLU())


# ---------------------------------------------------------------- the FLOP model


def test_backward_flops_by_depth_matches_count_flops():
    model = small_cnn(channels=4, hidden=8)
    x = torch.randn(4, 1, 8, 8)
    order = execution_order(model, x)
    by_depth = backward_flops_by_depth(model, x, order)
    assert len(by_depth) == len(order) + 1 and by_depth[-1] == 0
    assert by_depth[0] == count_flops(model, x).backward
    with exactly_frozen(model, order[:3]):
        assert by_depth[3] == count_flops(model, x).backward
    assert by_depth == sorted(by_depth, reverse=True)


def test_expected_saving_is_the_mean_saving_over_a_step():
    by_depth = [100, 60, 20, 0]
    # steps frozen 0, 1, 2, 3 units: saved 0, 40, 80, 100 -> mean 55; step = 50 + 100
    assert expected_saving(by_depth, 50, [0, 1, 2, 3]) == pytest.approx(55 / 150)
    assert expected_saving(by_depth, 50, [0, 0]) == 0.0
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        expected_saving(by_depth, 50, [4])
    with pytest.raises(ValueError, match="empty"):
        expected_saving(by_depth, 50, [])
    with pytest.raises(ValueError, match="non-negative"):
        expected_saving(by_depth, -1, [0])




# ---------------------------------------------------------------- bit-identical weights


def test_same_weights_is_torch_equal_on_every_parameter_and_buffer():
    model = small_cnn(seed=0)
    twin = copy.deepcopy(model)
    assert same_weights(model, twin)
    with torch.no_grad():
        twin.bn1.running_mean[0] += 1e-7  # a buffer alone differs
    assert not same_weights(model, twin)
    assert not same_weights(model, small_cnn(seed=1))
    assert same_weights(small_cnn(seed=3), small_cnn(seed=3))


def test_same_weights_rejects_models_of_different_structure():
    with pytest.raises(ValueError, match="differ in structure"):
        same_weights(small_cnn(seed=0), nn.Linear(2, 2))
