"""The classroom demo: deterministic snapshot, bars, and a slider that redraws."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from autograd_cost import mlp
from autograd_cost.demo import cost_bars, depth_snapshot, freeze_depth_slider, show_depth

BATCH = 4
# mlp(width=8, depth=2): fc1 64 -> 8, fc2 8 -> 8, head 8 -> 10; a matmul costs 2 * B * in * out.
FC1, FC2, HEAD = (2 * BATCH * n * m for n, m in ((64, 8), (8, 8), (8, 10)))


def test_snapshot_matches_hand_counts_and_leaves_the_model_alone():
    model, x = mlp(width=8, depth=2), torch.randn(BATCH, 64)
    model.head.requires_grad_(False)  # the user's own freeze: the snapshot must not keep it
    snap = depth_snapshot(model, x, 2, "prefix")
    assert snap.frozen_units == ["fc1", "fc2"]
    assert snap.backward_flops == HEAD  # only head's weight gradient is left
    assert snap.unfrozen_backward_flops == FC1 + 2 * FC2 + 2 * HEAD  # fc1 needs no input grad
    assert snap.saved_bytes == 4 * BATCH * 8  # head keeps its input, the last ReLU's output
    assert snap.unfrozen_saved_bytes == 4 * BATCH * (64 + 8 + 8)  # x and two ReLU outputs
    assert [p.requires_grad for p in model.parameters()] == [True] * 4 + [False] * 2
    text = str(snap)
    assert "prefix freeze depth 2 (frozen: fc1, fc2)" in text and "% of unfrozen" in text


def test_show_depth_marks_the_frozen_suffix():
    picture, snap = show_depth(mlp(width=8, depth=2), torch.randn(4, 64), 1, "suffix")
    assert snap.frozen_units == ["head"]
    assert "3 removed by freezing" in repr(picture)


def test_bad_mode_and_depth_raise_clear_errors():
    model, x = mlp(width=8, depth=1), torch.randn(2, 64)
    with pytest.raises(ValueError, match="valid modes"):
        depth_snapshot(model, x, 1, "middle")
    with pytest.raises(ValueError, match=r"valid depths are 0\.\.2"):
        depth_snapshot(model, x, 3)
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module"):
        depth_snapshot("model", x, 1)


def test_bars_show_time_only_when_measured():
    snap = depth_snapshot(mlp(width=8, depth=2), torch.randn(4, 64), 1)
    axes = cost_bars(snap).axes[0]
    assert len(axes.patches) == 2
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert labels == ["backward FLOPs", "bytes kept for backward"]
    assert len(cost_bars(snap, time_ms=1.0, unfrozen_ms=2.0).axes[0].patches) == 3


def test_slider_redraws_when_moved():
    model, x = mlp(width=8, depth=2), torch.randn(4, 64)
    box = freeze_depth_slider(model, x)
    freeze_depth, mode = box.children[0].children
    graph_out, bars_out = box.children[1].children
    assert freeze_depth.max == 3 and list(mode.options) == ["prefix", "suffix"]
    freeze_depth.value = 2
    svg = graph_out.outputs[-1]["data"]
    assert "image/svg+xml" in svg and "10 removed by freezing" in svg["text/plain"]
    assert bars_out.outputs and all(p.requires_grad for p in model.parameters())
