"""The one training step against a hand-written step, optimizer bookkeeping, and the freezing
contexts it relies on (frozen_state, set_frozen, preserved_values); PyTorch is the oracle."""

import copy

import pytest
import torch
from torch import nn

from autograd_cost import mlp
from autograd_cost.freezing import frozen_state, preserved_values, set_frozen
from autograd_cost.training import (
    OPTIMIZERS,
    make_optimizer,
    optimizer_params,
    preserved_training,
    remove_from_optimizer,
    resolve_optimizer,
    trainable_parameters,
    training_step,
)


def setup():
    return mlp(width=8, depth=2), torch.randn(4, 64)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_step_equals_a_hand_written_step(name):
    model, x = setup()
    model.fc1.requires_grad_(False)
    twin = copy.deepcopy(model)
    optimizer, twin_optimizer = make_optimizer(model, name), make_optimizer(twin, name)
    for _ in range(2):  # the second step runs with optimizer state (momentum, Adam moments)
        loss = training_step(model, x, optimizer=optimizer)
        twin_optimizer.zero_grad(set_to_none=True)
        twin_loss = twin(x).sum()
        twin_loss.backward()
        twin_optimizer.step()
        assert loss == twin_loss.item()
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(mine, theirs)
        assert (mine.grad is None) == (theirs.grad is None)
    assert model.fc1.weight.grad is None  # frozen: no gradient, no update


def test_without_an_optimizer_the_step_is_forward_and_backward():
    model, x = setup()
    before = [p.detach().clone() for p in model.parameters()]
    target = torch.tensor([1, 2, 3, 4])
    loss = training_step(model, x, loss_fn=lambda out: nn.functional.cross_entropy(out, target))
    assert loss == pytest.approx(nn.functional.cross_entropy(model(x), target).item())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    training_step(model, x)  # set_to_none=True: the old grads are dropped, not added to
    twin = copy.deepcopy(model)
    twin.zero_grad(set_to_none=True)
    twin(x).sum().backward()  # one fresh backward
    assert all(torch.equal(p.grad, t.grad)
               for p, t in zip(model.parameters(), twin.parameters(), strict=True))


def test_set_to_none_false_zeroes_the_same_grad_tensors_in_place():
    model, x = setup()
    training_step(model, x)
    held = [p.grad for p in model.parameters()]
    training_step(model, x, set_to_none=False)
    assert all(p.grad is g for p, g in zip(model.parameters(), held, strict=True))
    twin = copy.deepcopy(model)
    twin.zero_grad(set_to_none=True)
    twin(x).sum().backward()
    assert all(torch.equal(p.grad, t.grad)
               for p, t in zip(model.parameters(), twin.parameters(), strict=True))


def test_all_frozen_skips_backward_and_step_and_phases_are_marked_in_order():
    model, x = setup()
    marks = []

    def phase(name):
        marks.append(name)
        return torch.autograd.profiler.record_function(name)

    optimizer = make_optimizer(model, "sgd")
    loss = training_step(model, x, optimizer=optimizer, phase=phase)
    assert marks == ["forward", "backward", "optimizer"] and isinstance(loss, float)
    model.requires_grad_(False)
    marks.clear()
    assert training_step(model, x, optimizer=optimizer, phase=phase) == model(x).sum().item()
    assert marks == ["forward"] and all(p.grad is None for p in model.parameters())


def test_make_optimizer_covers_the_trainable_parameters_only():
    model, _ = setup()
    model.fc1.requires_grad_(False)
    optimizer = make_optimizer(model, "adam")
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer_params(optimizer) == trainable_parameters(model) == [
        model.fc2.weight, model.fc2.bias, model.head.weight, model.head.bias]
    custom = make_optimizer(model, lambda params: torch.optim.SGD(params, lr=0.5))
    assert custom.param_groups[0]["lr"] == 0.5
    model.requires_grad_(False)
    assert make_optimizer(model, "sgd") is None
    with pytest.raises(ValueError, match=r"unknown optimizer 'lion'; valid optimizers are"):
        resolve_optimizer("lion")
    with pytest.raises(ValueError, match="callable"):
        resolve_optimizer(3)
    model.requires_grad_(True)
    with pytest.raises(ValueError, match=r"must return a torch\.optim\.Optimizer"):
        make_optimizer(model, lambda params: "adam")


def test_remove_from_optimizer_drops_parameters_and_their_state():
    model, x = setup()
    optimizer = make_optimizer(model, "adam")
    training_step(model, x, optimizer=optimizer)
    head = [model.head.weight, model.head.bias]
    assert all(p in optimizer.state for p in head)
    assert remove_from_optimizer(optimizer, head) == 2
    assert optimizer_params(optimizer) == [*model.fc1.parameters(), *model.fc2.parameters()]
    assert not any(p in optimizer.state for p in head)
    assert remove_from_optimizer(optimizer, head) == 0
    before = model.head.weight.detach().clone()
    training_step(model, x, optimizer=optimizer)
    assert torch.equal(model.head.weight, before)  # no longer updated


def test_preserved_training_restores_values_grads_and_optimizer_state():
    model, x = setup()
    optimizer = make_optimizer(model, "adam")
    training_step(model, x, optimizer=optimizer)
    values = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    moments = optimizer.state[model.fc1.weight]["exp_avg"].clone()
    with preserved_training(model, optimizer):
        for _ in range(3):
            training_step(model, x, optimizer=optimizer)
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values, strict=True))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert torch.equal(optimizer.state[model.fc1.weight]["exp_avg"], moments)


def test_frozen_state_none_leaves_requires_grad_and_a_list_freezes_exactly_those():
    model, _ = setup()
    model.fc2.requires_grad_(False)  # the user's configuration
    configured = {n: p.requires_grad for n, p in model.named_parameters()}
    with frozen_state(model, None) as names:
        assert names is None
        assert {n: p.requires_grad for n, p in model.named_parameters()} == configured
    with frozen_state(model, ["head"]) as names:
        assert names == ["head"]
        assert {n: p.requires_grad for n, p in model.named_parameters()} == {
            "fc1.weight": True, "fc1.bias": True, "fc2.weight": True, "fc2.bias": True,
            "head.weight": False, "head.bias": False}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == configured
    with pytest.raises(RuntimeError, match="boom"), frozen_state(model, ["fc1"]):
        raise RuntimeError("boom")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == configured
    with pytest.raises(ValueError, match="unknown unit"), frozen_state(model, ["fc9"]):
        pass


def test_set_frozen_and_preserved_values():
    model, x = setup()
    model.fc1.requires_grad_(False)
    assert set_frozen(model, ["head"]) == ["head"]
    assert [p.requires_grad for p in model.parameters()] == [True] * 4 + [False] * 2
    values = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), preserved_values(model):
        training_step(model, x, optimizer=make_optimizer(model, "sgd"))
        assert not torch.equal(model.fc1.weight, values[0])
        raise RuntimeError("boom")
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values, strict=True))
