"""The backward graph: stable names, counts, removed nodes (PyTorch is the oracle), SVG."""

import re

import pytest
import torch
from torch import nn

from autograd_cost import (
    backward_nodes,
    draw_freeze,
    draw_graph,
    execution_order,
    freeze_units,
    mlp,
    model_loss,
    node_counts,
    removed_nodes,
    units,
)
from autograd_cost.freezing import prefix_units, suffix_units
from autograd_cost.graph import saved_tensors


def test_unfrozen_mlp_graph_has_the_expected_nodes():
    model = mlp(width=8, depth=2)
    loss = model_loss(model, torch.randn(3, 64))
    assert node_counts(loss) == {
        "AccumulateGrad": 6, "AddmmBackward0": 3, "ReluBackward0": 2,
        "SumBackward0": 1, "TBackward0": 3,
    }
    nodes = backward_nodes(loss, dict(model.named_parameters()))
    assert nodes[0].name == "SumBackward0#0" and nodes[0].inputs == ("AddmmBackward0#0",)
    params = sorted(n.parameter for n in nodes if n.kind == "AccumulateGrad")
    assert params == sorted(name for name, _ in model.named_parameters())


def _survivor_counts(loss, removed):
    names = {n.name: n.kind for n in backward_nodes(loss)}
    counts = {}
    for name, kind in names.items():
        if name not in removed:
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


@pytest.mark.parametrize("which", ["prefix", "suffix"])
def test_removed_nodes_match_the_graph_pytorch_builds_when_frozen(course_model, which):
    """Predicting removals on the unfrozen graph must agree with PyTorch's frozen graph."""
    model, x = course_model
    order = execution_order(model, x)
    pick = prefix_units if which == "prefix" else suffix_units
    for depth in range(1, len(order)):
        names = pick(order, depth)
        frozen = [p for n in names for p in units(model)[n]]
        unfrozen_loss = model_loss(model, x)
        predicted = _survivor_counts(unfrozen_loss, set(removed_nodes(unfrozen_loss, frozen)))
        freeze_units(model, names)
        assert node_counts(model_loss(model, x)) == predicted, (which, depth)
        model.requires_grad_(True)


def test_first_trainable_layer_after_a_frozen_prefix_needs_no_input_gradient():
    model = mlp(width=8, depth=2)
    freeze_units(model, ["fc1"])
    nodes = backward_nodes(model_loss(model, torch.randn(3, 64)), dict(model.named_parameters()))
    fc2 = [n for n in nodes if n.kind == "AddmmBackward0"][-1]
    assert fc2.inputs[1] is None  # addmm(bias, input, weight.T): the input slot is cut
    head_bias = next(n for n in nodes if n.parameter == "head.bias")
    assert (head_bias.name, head_bias.kind, head_bias.inputs) == (
        "AccumulateGrad#0", "AccumulateGrad", ())


def test_nodes_make_a_dataframe_with_one_row_per_node():
    import pandas as pd

    model = mlp(width=8, depth=2)
    loss = model_loss(model, torch.randn(3, 64))
    table = pd.DataFrame(backward_nodes(loss, dict(model.named_parameters())))
    assert list(table.columns) == ["name", "kind", "parameter", "inputs"]
    assert table["kind"].value_counts().to_dict() == node_counts(loss)


def test_suffix_freeze_keeps_backward_nodes_but_drops_weight_gradient_leaves():
    model = mlp(width=8, depth=2)
    x = torch.randn(3, 64)
    loss = model_loss(model, x)
    removed = removed_nodes(loss, list(model.head.parameters()))
    kinds = sorted(n.split("#")[0] for n in removed)
    assert kinds == ["AccumulateGrad", "AccumulateGrad", "TBackward0"]


def test_prefix_freeze_removes_the_whole_early_subgraph():
    model = mlp(width=8, depth=2)
    loss = model_loss(model, torch.randn(3, 64))
    removed = removed_nodes(loss, list(model.fc1.parameters()))
    kinds = sorted(n.split("#")[0] for n in removed)
    assert kinds == ["AccumulateGrad", "AccumulateGrad", "AddmmBackward0", "ReluBackward0",
                     "TBackward0"]


def test_two_renders_give_identical_svg_without_memory_ids():
    model = mlp(width=8, depth=2)
    x = torch.randn(3, 64)
    first = draw_freeze(model, x, ["fc1"]).svg()
    second = draw_freeze(mlp(width=8, depth=2), x, ["fc1"]).svg()
    assert first == second
    titles = re.findall(r"<title>(.*?)</title>", first)
    assert titles[0] == "%3"  # the graph itself; every node and edge is named n<k>
    assert all(re.fullmatch(r"n\d+(&#45;&gt;n\d+)?", t) for t in titles[1:])


def test_removed_nodes_are_drawn_dashed_and_counted_in_the_summary():
    model = mlp(width=8, depth=2)
    picture = draw_freeze(model, torch.randn(3, 64), ["fc1"])
    assert repr(picture) == (
        "autograd graph: 15 backward nodes, 5 removed by freezing (dashed), 10 kept"
    )
    assert picture.dot.source.count("style=dashed") > 5


@pytest.mark.parametrize("which", ["prefix", "suffix"])
def test_draw_freeze_keeps_the_nodes_pytorch_builds_when_frozen(course_model, which):
    """The solid nodes of the picture, by type, are what PyTorch records with the units frozen."""
    model, x = course_model
    order = execution_order(model, x)
    pick = prefix_units if which == "prefix" else suffix_units
    for depth in range(len(order)):
        names = pick(order, depth)
        picture = draw_freeze(model, x, names)
        assert len(picture.nodes) == sum(node_counts(model_loss(model, x)).values())
        for param in model.parameters():
            param.requires_grad_(True)
        freeze_units(model, names)
        assert picture.kept_counts() == node_counts(model_loss(model, x))
        for param in model.parameters():
            param.requires_grad_(True)


def test_unfrozen_picture_keeps_every_node():
    model = mlp(width=4, depth=1)
    loss = model_loss(model, torch.randn(2, 64))
    picture = draw_graph(loss)
    assert picture.removed == () and picture.kept_counts() == node_counts(loss)


def test_draw_freeze_leaves_the_model_as_it_was():
    model = mlp(width=8, depth=2)
    model.fc2.requires_grad_(False)
    draw_freeze(model, torch.randn(3, 64), ["fc1"])
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False, True, True]
    assert all(p.grad is None for p in model.parameters())


def test_draw_graph_of_an_unfrozen_loss_has_plain_summary():
    model = mlp(width=4, depth=1)
    picture = draw_graph(model_loss(model, torch.randn(2, 64)))
    assert repr(picture) == "autograd graph: 10 backward nodes"


def test_draw_freeze_rejects_unknown_units():
    with pytest.raises(ValueError, match="valid units are"):
        draw_freeze(mlp(depth=1), torch.randn(2, 64), ["fc7"])


def test_saved_tensors_of_a_frozen_linear_drop_the_input_but_a_frozen_conv_keeps_it():
    """PyTorch is the oracle: addmm saves its input only for the weight gradient."""
    linear, conv = nn.Linear(16, 4), nn.Conv2d(3, 5, 3)
    x, image = torch.randn(8, 16), torch.randn(2, 3, 8, 8)
    assert saved_tensors(linear, x) == {"input": (8, 16), "weight": (4, 16)}
    conv_saved = {"input": (2, 3, 8, 8), "weight": (5, 3, 3, 3)}
    assert saved_tensors(conv, image) == conv_saved
    linear.requires_grad_(False)
    conv.requires_grad_(False)
    assert saved_tensors(linear, x) == {"weight": (4, 16)}  # grad_input = grad @ W needs no x
    assert saved_tensors(conv, image) == conv_saved
    assert not any(p.requires_grad for p in [*linear.parameters(), *conv.parameters()])
    assert saved_tensors(nn.ReLU(), x) == {"output": (8, 16)}  # ReLU's gradient needs its output


def test_saved_tensors_leave_the_layer_alone_and_reject_bad_input():
    norm = nn.BatchNorm1d(4)
    saved = saved_tensors(norm, torch.randn(8, 4))
    assert saved["input"] == (8, 4) and "other" in saved
    assert int(norm.num_batches_tracked) == 0 and norm.running_mean.abs().sum() == 0
    with pytest.raises(ValueError, match=r"must be a torch\.nn\.Module"):
        saved_tensors("layer", torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"floating-point torch\.Tensor"):
        saved_tensors(norm, torch.ones(2, 4, dtype=torch.long))


def test_counting_and_the_cli_import_without_the_drawing_stack():
    import subprocess
    import sys

    blocked = (
        "import sys\n"
        "sys.modules['torchviz'] = None  # None in sys.modules: 'import torchviz' raises\n"
        "sys.modules['graphviz'] = None\n"
        "import autograd_cost.cost, autograd_cost.cli, autograd_cost.profile\n"
        "import autograd_cost.graph as graph\n"
        "import torch\n"
        "loss = torch.ones(2, requires_grad=True).sum()\n"
        "print(graph.node_counts(loss))\n"
        "try:\n"
        "    graph.draw_graph(loss)\n"
        "except ImportError:\n"
        "    print('drawing needs torchviz')\n"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'AccumulateGrad': 1, 'SumBackward0': 1}",
                                        "drawing needs torchviz"]
