"""Units, execution order, prefix/suffix freezing and state restoration."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost import (
    execution_order,
    freeze_prefix,
    freeze_suffix,
    freeze_summary,
    freeze_units,
    frozen,
    mlp,
    preserved_requires_grad,
    preserved_state,
    small_cnn,
    units,
)


class DefinedBackwards(nn.Module):
    """Modules defined in the opposite order to their use; one weight used without forward."""

    def __init__(self):
        super().__init__()
        self.last = nn.Linear(4, 2)
        self.middle = nn.Linear(4, 4)
        self.borrowed = nn.Linear(3, 4)  # its forward is never called
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        x = F.linear(x, self.borrowed.weight)
        return self.last(torch.relu(self.middle(x)))


def test_units_are_the_modules_that_directly_own_parameters():
    assert list(units(mlp(depth=2))) == ["fc1", "fc2", "head"]
    assert list(units(small_cnn())) == ["conv1", "bn1", "conv2", "bn2", "fc", "head"]


def test_order_follows_execution_not_definition():
    model = DefinedBackwards()
    assert list(units(model)) == ["last", "middle", "borrowed", "unused"]
    order = execution_order(model, torch.randn(2, 3))
    assert order == ["borrowed", "middle", "last", "unused"]


def test_execution_order_leaves_batchnorm_statistics_alone():
    model = small_cnn()
    before = model.bn1.running_mean.clone()
    execution_order(model, torch.randn(4, 1, 8, 8))
    assert torch.equal(model.bn1.running_mean, before)
    assert int(model.bn1.num_batches_tracked) == 0


def test_prefix_and_suffix_freeze_the_right_units():
    model = mlp(depth=3)
    order = execution_order(model, torch.randn(2, 64))
    assert freeze_prefix(model, 2, order) == ["fc1", "fc2"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"
    ]
    for p in model.parameters():
        p.requires_grad_(True)
    assert freeze_suffix(model, 1, order) == ["head"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        "head.weight", "head.bias"
    ]


def test_frozen_parameters_get_no_grad():
    model = mlp(depth=3)
    order = execution_order(model, torch.randn(2, 64))
    freeze_prefix(model, 2, order)
    model(torch.randn(5, 64)).sum().backward()
    assert model.fc1.weight.grad is None and model.fc2.bias.grad is None
    assert model.fc3.weight.grad is not None and model.head.weight.grad is not None


@pytest.mark.parametrize("depth", [-1, 5, 99])
def test_depth_out_of_range_names_the_valid_range(depth):
    model = mlp(depth=3)
    order = execution_order(model, torch.randn(2, 64))
    with pytest.raises(ValueError, match=r"valid depths are 0\.\.4"):
        freeze_prefix(model, depth, order)
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_unit_lists_valid_units_and_changes_nothing():
    model = mlp(depth=1)
    with pytest.raises(ValueError, match=r"valid units are \['fc1', 'head'\]"):
        freeze_units(model, ["fc1", "fc9"])
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="not the string"):
        freeze_units(model, "fc1")


def test_frozen_context_restores_requires_grad_even_after_an_error():
    model = mlp(depth=2)
    model.fc2.bias.requires_grad_(False)  # a user's own choice must survive too
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), frozen(model, ["fc1", "head"]):
        assert not model.fc1.weight.requires_grad
        raise RuntimeError("boom")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_preserved_requires_grad_restores_after_error():
    model = mlp(depth=1)
    with pytest.raises(KeyError), preserved_requires_grad(model):
        freeze_units(model, ["fc1", "head"])
        raise KeyError
    assert all(p.requires_grad for p in model.parameters())


def test_preserved_state_restores_grads_buffers_and_mode():
    model = small_cnn()
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    grad = model.conv1.weight.grad
    stats = model.bn1.running_mean.clone()
    model.eval()
    with preserved_state(model):
        model.train()
        model.zero_grad(set_to_none=True)
        model(torch.randn(4, 1, 8, 8)).sum().backward()
    assert model.conv1.weight.grad is grad
    assert torch.equal(model.bn1.running_mean, stats)
    assert not model.training and not model.bn1.training


def test_freeze_summary_counts_parameters_per_unit():
    model = mlp(width=8, depth=1)
    freeze_units(model, ["fc1"])
    rows = freeze_summary(model)
    assert [(r.name, r.trainable, r.frozen) for r in rows] == [
        ("fc1", 0, 64 * 8 + 8),
        ("head", 8 * 10 + 10, 0),
    ]
    text = repr(rows)
    assert "fc1" in text and "total" in text and "520" in text
