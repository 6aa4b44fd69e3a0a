"""Notebook 05's chapter helpers: the freezing schedule, the training loop, against oracles."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.chapters.transfer import (
    FreezeSchedule,
    ProgressiveFreezing,
    accuracy,
    apply_frozen_bn_mode,
    fit,
    same_weights,
)
from autograd_cost.data import batch_order, load_digit_split
from autograd_cost.freezing import execution_order, units
from autograd_cost.models import small_cnn
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


# ---------------------------------------------------------------- the linear schedule


@pytest.mark.parametrize(
    "progress, expected",
    [(0.0, 0.0), (0.1, 0.0), (0.55, 0.25), (1.0, 0.5)],  # 0.5 * (p - 0.1) / 0.9 by hand
)
def test_fraction_is_zero_until_start_then_linear_to_level(progress, expected):
    schedule = FreezeSchedule(freeze_start=0.1, freeze_level=0.5)
    assert schedule.fraction(progress) == pytest.approx(expected)


def test_count_rounds_down_and_is_exact_at_integers():
    straight = FreezeSchedule(freeze_start=0.0, freeze_level=1.0)
    assert straight.count(0.5, 6) == 3  # 0.5 * 6 exactly, no float shortfall
    assert straight.count(0.49, 6) == 2  # floor(2.94)
    assert straight.count(1.0, 6) == 6
    # 0.75 * (p - 0.2) / 0.8 * 6 = 0, 2.25, 4.5 -> 0, 2, 4
    assert [FreezeSchedule(0.2, 0.75).count(p, 6) for p in (0.2, 0.6, 1.0)] == [0, 2, 4]
    none = FreezeSchedule(freeze_start=0.0, freeze_level=0.0)
    assert all(none.count(p / 10, 6) == 0 for p in range(11))
    # notebook 05's table: "to all" at 0.99 freezes floor(0.98.. * 6) = 5, never the head
    assert FreezeSchedule(0.1, 1.0).count(0.99, 6) == 5


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: FreezeSchedule(freeze_start=0.1, freeze_level=2.0), r"freeze_level must lie in"),
        (lambda: FreezeSchedule(freeze_start=1.0), "freeze_start must be below 1"),
        (lambda: FreezeSchedule(freeze_start=-0.1), "freeze_start must lie in"),
        (lambda: FreezeSchedule(freeze_level=float("nan")), "freeze_level must be a finite"),
        (lambda: FreezeSchedule(frozen_bn="frozen"), "valid values are"),
        (lambda: FreezeSchedule().count(1.5, 6), "progress must lie in"),
        (lambda: FreezeSchedule().count("half", 6), "progress must be a finite number"),
        (lambda: FreezeSchedule().count(0.5, -1), "num_units must be an int >= 0"),
    ],
)
def test_bad_schedule_values_are_explained(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ---------------------------------------------------------------- the optimizer


def test_optimizer_no_longer_holds_frozen_parameters():
    model = small_cnn(channels=4, hidden=8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    order = execution_order(model, x)
    freezer = ProgressiveFreezing(model, optimizer, order, FreezeSchedule(0.0, 1.0))
    assert freezer.update(0.5) == ["conv1", "bn1", "conv2"]  # floor(0.5 * 6) = 3
    # hand count: conv1.weight, bn1.weight, bn1.bias, conv2.weight (no conv bias)
    frozen_params = [model.conv1.weight, model.bn1.weight, model.bn1.bias, model.conv2.weight]
    held = {id(p) for p in optimizer_params(optimizer)}
    assert not any(id(p) in held for p in frozen_params)
    assert not any(p in optimizer.state for p in frozen_params)  # state dropped
    assert len(optimizer.state) == len(held) == 10 - 4
    assert not any(p.requires_grad for p in frozen_params)
    assert not model.bn1.training and model.bn2.training  # frozen BatchNorm in eval mode
    # an optimizer step now leaves the frozen weights exactly where they were
    before = [p.detach().clone() for p in frozen_params]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, frozen_params, strict=True))


def test_freezing_never_unfreezes_and_is_idempotent():
    model = small_cnn(channels=4, hidden=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    freezer = ProgressiveFreezing(model, optimizer, list(units(model)), FreezeSchedule(0.0, 1.0))
    assert len(freezer.update(0.7)) == 4  # floor(4.2)
    assert len(freezer.update(0.2)) == 4  # progress going back does not thaw anything
    assert len(optimizer_params(optimizer)) == 10 - 6  # conv1, bn1 (2), conv2, bn2 (2)


def test_remove_from_optimizer_counts_and_uses_identity():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))  # equal values
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9)
    optimizer.state[a]["momentum_buffer"] = torch.ones(3)
    assert remove_from_optimizer(optimizer, [a]) == 1
    assert optimizer_params(optimizer) == [b] and a not in optimizer.state


def test_progressive_freezing_rejects_bad_order_and_schedule():
    model = small_cnn(channels=4, hidden=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every unit exactly once"):
        ProgressiveFreezing(model, optimizer, ["conv1"], FreezeSchedule())
    with pytest.raises(ValueError, match="unknown unit"):
        ProgressiveFreezing(model, optimizer, ["conv9"], FreezeSchedule())
    with pytest.raises(TypeError, match="FreezeSchedule"):
        ProgressiveFreezing(model, optimizer, list(units(model)), (0.1, 1.0))


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
    assert result.steps == 4 and result.frozen_per_step == [0, 0, 1, 2]
    # the first forward is fit's own execution_order probe
    assert seen[-4:] == [(True, True, True), (True, True, True), (False, True, True),
                         (False, False, True)]
    assert all(p.requires_grad for p in model.parameters())  # restored after training


# ---------------------------------------------------------------- the training loop


def hand_written_adam(model, x, y, epochs, batch_size, lr, seed):
    """PyTorch's own loop, the oracle for `fit`."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for index in batch_order(len(y), batch_size, epochs, seed):
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()


def test_fit_matches_a_hand_written_adam_loop():
    x, y = torch.randn(12, 1, 8, 8), torch.randint(10, (12,))
    ours, reference = small_cnn(channels=4, hidden=8), small_cnn(channels=4, hidden=8)
    result = fit(ours, x, y, epochs=2, batch_size=5, lr=0.01, seed=7)
    hand_written_adam(reference, x, y, epochs=2, batch_size=5, lr=0.01, seed=7)
    assert result.steps == 6 and result.frozen_per_step == []  # 3 batches (5, 5, 2) x 2 epochs
    for a, b in zip(ours.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_fit_with_a_frozen_backbone_matches_the_hand_written_loop_in_eval_batchnorm():
    x, y = torch.randn(12, 1, 8, 8), torch.randint(10, (12,))
    ours, reference = small_cnn(channels=4, hidden=8), small_cnn(channels=4, hidden=8)
    for model in (ours, reference):
        model.requires_grad_(False)
        model.head.requires_grad_(True)
    fit(ours, x, y, epochs=2, batch_size=5, lr=0.01, seed=1)
    reference.train()
    reference.bn1.eval(), reference.bn2.eval()  # what frozen_bn="eval" means
    hand = torch.optim.Adam(reference.head.parameters(), lr=0.01)
    for index in batch_order(12, 5, 2, seed=1):
        hand.zero_grad()
        F.cross_entropy(reference(x[index]), y[index]).backward()
        hand.step()
    for a, b in zip(ours.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(ours.bn1.running_mean, torch.zeros(4))  # eval mode: never updated
    assert ours.training and ours.bn1.training  # modes restored after fit


def test_fit_with_everything_frozen_runs_forward_only_on_fits_batches():
    model = small_cnn(channels=4, hidden=8).train().requires_grad_(False)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(10, (12,))
    snapshot = copy.deepcopy(model.state_dict())
    seen, bn_modes = [], []
    model.bn1.register_forward_hook(lambda module, args, output: bn_modes.append(module.training))
    model.register_forward_hook(
        lambda module, args, output: seen.append((len(args[0]), output.requires_grad)))
    result = fit(model, x, y, epochs=2, batch_size=5, seed=3)
    expected_sizes = [5, 5, 2, 5, 5, 2]  # 12 images in batches of 5, twice
    assert result.steps == 6
    assert [size for size, _ in seen] == expected_sizes
    assert not any(requires for _, requires in seen)  # no graph: nothing is trained
    assert bn_modes == [False] * 6  # frozen BatchNorm in eval mode
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key])  # weights and running stats unchanged
    assert model.training and model.bn1.training
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_frozen_batchnorm_train_policy_keeps_updating_running_stats():
    model = small_cnn(channels=4, hidden=8)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))
    model.bn1.requires_grad_(False)
    before = model.bn1.running_mean.clone()
    fit(model, x, y, epochs=1, batch_size=8, schedule=FreezeSchedule(0.0, 0.0, "train"))
    assert not torch.equal(model.bn1.running_mean, before)
    assert apply_frozen_bn_mode(model, "eval") == ["bn1"] and not model.bn1.training
    assert apply_frozen_bn_mode(model, "train") == []
    with pytest.raises(ValueError, match="valid values"):
        apply_frozen_bn_mode(model, "off")


def test_fit_rejects_bad_input():
    model = small_cnn(channels=4, hidden=8)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(10, (8,))
    with pytest.raises(ValueError, match="differ in length"):
        fit(model, x, y[:4], epochs=1)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        fit(model, x, y, epochs=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        fit(model, x, y, epochs=1, batch_size=0)
    with pytest.raises(TypeError, match="FreezeSchedule"):
        fit(model, x, y, epochs=1, schedule=0.5)


def test_freeze_and_cache_train_the_same_head():
    """Notebook 05's claim: training the head on cached backbone outputs is the same run."""
    split = load_digit_split(range(3), seed=0)
    pretrained = small_cnn(channels=4, hidden=8)
    frozen, cached = copy.deepcopy(pretrained), copy.deepcopy(pretrained)
    frozen.requires_grad_(False)
    frozen.head.requires_grad_(True)
    fit(frozen, split.train_x, split.train_y, epochs=2)
    with torch.no_grad():
        features = cached.eval()[:-1](split.train_x)
    fit(cached.head, features, split.train_y, epochs=2)
    torch.testing.assert_close(frozen.head.weight, cached.head.weight)
    assert accuracy(frozen, split.test_x, split.test_y) == pytest.approx(
        accuracy(cached, split.test_x, split.test_y), abs=2 / len(split.test_y))
    assert torch.equal(frozen.conv1.weight, pretrained.conv1.weight)


# ---------------------------------------------------------------- accuracy and weights


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


def test_same_weights_is_torch_equal_on_every_parameter_and_buffer():
    model = small_cnn(seed=0)
    twin = copy.deepcopy(model)
    assert same_weights(model, twin)
    with torch.no_grad():
        twin.bn1.running_mean[0] += 1e-7  # a buffer alone differs
    assert not same_weights(model, twin)
    assert not same_weights(model, small_cnn(seed=1))
    assert same_weights(small_cnn(seed=3), small_cnn(seed=3))
    with pytest.raises(ValueError, match="differ in structure"):
        same_weights(small_cnn(seed=0), nn.Linear(2, 2))
