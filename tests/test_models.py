"""The model builders are seeded, deterministic and validate their arguments."""

import pytest
import torch
from torch import nn

from autograd_cost import build_model, example_input, mlp, small_cnn, tiny_transformer


@pytest.mark.parametrize("builder", [mlp, small_cnn, tiny_transformer])
def test_same_seed_gives_identical_parameters(builder):
    a, b = builder(seed=3), builder(seed=3)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_different_seed_gives_different_parameters():
    assert not torch.equal(mlp(seed=0).fc1.weight, mlp(seed=1).fc1.weight)


def test_example_input_fits_each_course_model(course_model):
    model, x = course_model
    out = model(x)
    assert out.shape[0] == 4


def test_example_input_is_seeded():
    model = small_cnn()
    assert torch.equal(example_input(model, 2, seed=5), example_input(model, 2, seed=5))
    assert example_input(model, 2).shape == (2, 1, 8, 8)
    assert example_input(mlp(), 3).shape == (3, 64)
    assert example_input(tiny_transformer(), 2).dtype == torch.int64


def test_mlp_shape_follows_width_and_depth():
    model = mlp(width=32, depth=4)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (64, 32), (32, 32), (32, 32), (32, 32), (32, 10)
    ]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_sizes_raise_a_clear_error(bad):
    with pytest.raises(ValueError, match="width must be a positive integer"):
        mlp(width=bad)


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid models are \['cnn', 'mlp', 'transformer'\]"):
        build_model("resnet")


def test_example_input_rejects_foreign_models():
    with pytest.raises(TypeError, match="build the input yourself"):
        example_input(torch.nn.LSTM(3, 3))


def test_cat_linear_matches_the_linear_and_its_gradient_rows():
    from autograd_cost.models import CatLinear

    torch.manual_seed(0)
    linear, x = nn.Linear(4, 5), torch.randn(3, 4)
    cat = CatLinear(linear, frozen_rows=2)
    torch.testing.assert_close(cat(x), linear(x))
    cat(x).sum().backward()
    linear(x).sum().backward()
    torch.testing.assert_close(cat.weight.grad, linear.weight.grad[2:])
    torch.testing.assert_close(cat.bias.grad, linear.bias.grad)
    assert not cat.frozen_weight.requires_grad and cat.weight.shape == (3, 4)
