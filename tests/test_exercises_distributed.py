"""Notebook 06's checkers accept the truth, reject wrong answers, and never print the answer."""

import pytest

from autograd_cost.exercises.distributed import (
    allreduce_bytes_truth,
    check_allreduce_bytes,
    check_ring_seconds,
)
from autograd_cost.models import mlp


def test_allreduce_bytes_truth_against_layer_shapes():
    # hand count from the shapes: fc3 (128x128 + 128) and the head (128x10 + 10), 4 bytes each
    assert allreduce_bytes_truth(128, 3, 2) == 4 * (128 * 128 + 128 + 128 * 10 + 10)
    assert allreduce_bytes_truth(8, 1, 0) == 4 * sum(p.numel() for p in mlp(8, 1).parameters())


def test_allreduce_bytes_checker(capsys):
    truth = 4 * (32 * 32 + 32 + 32 * 10 + 10)
    assert check_allreduce_bytes(truth, width=32, depth=2, freeze_depth=1)
    everything = 4 * sum(p.numel() for p in mlp(32, 2).parameters())
    assert not check_allreduce_bytes(everything, width=32, depth=2, freeze_depth=1)
    assert not check_allreduce_bytes(truth // 4, width=32, depth=2, freeze_depth=1)
    assert not check_allreduce_bytes(truth + 4, width=32, depth=2, freeze_depth=1)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "not bucketed" in out and "4 bytes" in out
    assert "too high" in out and str(truth) not in out and f"{truth:,}" not in out
    with pytest.raises(TypeError, match="answer must be a number"):
        check_allreduce_bytes("1", 32, 2, 1)
    with pytest.raises(ValueError, match="valid depths"):
        check_allreduce_bytes(1, 32, 2, 9)


def test_ring_seconds_checker(capsys):
    truth = 2 * 15 / 16 * 2e9 / 12.5e9
    assert check_ring_seconds(truth, 2e9, 16, 12.5e9)
    assert not check_ring_seconds(2e9 / 12.5e9, 2e9, 16, 12.5e9)
    assert not check_ring_seconds(truth / 8, 2e9, 16, 12.5e9)
    assert not check_ring_seconds(truth * 3, 2e9, 16, 12.5e9)
    out = capsys.readouterr().out
    assert "2(n-1)/n x the bytes" in out and "bits versus bytes" in out and "too high" in out
    assert f"{truth:.3f}" not in out and f"{truth:.2f}" not in out
    with pytest.raises(TypeError, match="answer must be a number"):
        check_ring_seconds(None, 2e9, 16, 12.5e9)
