"""Shared fixtures: small seeded course models and their inputs."""

import pytest
import torch

from autograd_cost import example_input, mlp, small_cnn, tiny_transformer


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["mlp", "cnn", "transformer"])
def course_model(request):
    """Each course model with a small seeded input batch."""
    builders = {
        "mlp": lambda: mlp(width=16, depth=3),
        "cnn": lambda: small_cnn(channels=4, hidden=8),
        "transformer": lambda: tiny_transformer(vocab=16, dim=16, heads=2, blocks=2, max_len=8),
    }
    model = builders[request.param]()
    return model, example_input(model, batch=4)
