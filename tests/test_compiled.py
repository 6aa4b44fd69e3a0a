"""Tests of the torch.compile instruments against independent oracles (notebook 09)."""

from __future__ import annotations

import time

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from autograd_cost.chapters.compile import ToggledLayer, compare_compiled, run_schedule
from autograd_cost.compiled import (
    CountingBackend,
    _captured_torch_logs,
    _sanitize_log,
    compiled_step_timings,
    count_compiles,
    partition_recorder,
)
from autograd_cost.cost import saved_activation_bytes
from autograd_cost.models import mlp

ORDER = ["fc1", "fc2", "fc3", "head"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small():
    torch.manual_seed(0)
    return mlp(width=8, depth=3), torch.randn(4, 64)


@pytest.mark.parametrize("freeze_events", [0, 1, 3])
def test_compiles_after_k_freeze_events_match_a_counting_backend(freeze_events):
    model, x = small()
    oracle = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=oracle)
    stages = [ORDER[:k] for k in range(freeze_events + 1)]
    with count_compiles() as log:
        run_schedule(compiled, model, x, stages)
    assert oracle.frame_count == freeze_events + 1
    assert log.frames == oracle.frame_count
    assert log.recompiles == freeze_events
    assert log.limit_hits == 0
    assert all("requires_grad mismatch" in reason for reason in log.reasons)


def test_limit_hit_is_counted_and_its_warning_captured_and_sanitized(capfd):
    model, x = small()
    backend = CountingBackend("aot_eager")
    compiled = torch.compile(model, backend=backend)
    with count_compiles(recompile_limit=2) as log:
        run_schedule(compiled, model, x, [ORDER[:k] for k in range(4)], steps_per_stage=1)
    assert (backend.compiles, log.frames, log.limit_hits) == (2, 2, 1)
    assert backend.calls == 2  # stages 3 and 4 ran eagerly
    assert len(log.warnings) == 1 and "hit config.recompile_limit (2)" in log.warnings[0]
    assert ".py" not in log.warnings[0].replace("docs.pytorch", "")
    assert capfd.readouterr().err == ""


def test_config_restored_on_error():
    before = torch._dynamo.config.recompile_limit
    with pytest.raises(RuntimeError), count_compiles(recompile_limit=1):
        assert torch._dynamo.config.recompile_limit == 1
        raise RuntimeError("boom")
    assert torch._dynamo.config.recompile_limit == before


def test_count_compiles_rejects_a_bad_limit():
    with pytest.raises(ValueError, match="recompile_limit"), count_compiles(recompile_limit=0):
        pass


def test_sanitize_log_drops_paths_lines_and_addresses():
    text = "function: 'inner' (/a/b/torch/x.py:67) at 0x7f00ab see https://docs.pytorch.org/y"
    assert _sanitize_log(text) == ("function: 'inner' (FILE) at 0xADDRESS see "
                                  "https://docs.pytorch.org/y")


def test_captured_logs_are_dropped_from_stderr(capfd):
    import logging
    with _captured_torch_logs() as records:
        logging.getLogger("torch._dynamo.convert_frame").warning("hello %s", 1)
    assert [r.getMessage() for r in records] == ["hello 1"]
    assert capfd.readouterr().err == ""


def test_timer_excludes_compile_time():
    calls = []

    def slow_first() -> None:
        time.sleep(0.2 if not calls else 0.002)
        calls.append(1)

    timing = compiled_step_timings({"step": slow_first}, min_repeats=5, max_repeats=5)["step"]
    assert timing.first_call_seconds >= 0.2
    assert timing.step.median < 0.05
    assert 0.15 < timing.compile_seconds < timing.first_call_seconds
    assert timing.frames_while_timing == 0
    assert timing.amortized_seconds(10) == pytest.approx(
        timing.step.median + timing.compile_seconds / 10)


def test_timer_on_a_real_compile_reports_no_frames_while_timing():
    model, x = small()
    compiled = torch.compile(model, backend="aot_eager")
    timing = compiled_step_timings({"c": lambda: compiled(x).sum().backward()},
                                   min_repeats=3, max_repeats=3)["c"]
    assert timing.frames_while_timing == 0
    assert timing.compile_seconds > timing.step.median


def test_compiled_saved_bytes_match_eager_hand_count_and_partition():
    model, x = small()
    backend, graphs = partition_recorder()
    compiled = torch.compile(model, backend=backend)
    # unfrozen: x (4x64) + three ReLU outputs (4x8) in float32, as eager saves
    assert saved_activation_bytes(compiled, x) == saved_activation_bytes(model, x) \
        == 4 * (4 * 64 + 3 * 4 * 8)
    compiled(x).sum().backward()
    names = [name for name, _, _ in graphs[-1].saved]
    assert sum(n.startswith("relu") for n in names) == 3
    # suffix frozen: the min-cut keeps 1-byte masks for the frozen ReLUs instead
    model.fc3.requires_grad_(False)
    model.head.requires_grad_(False)
    assert saved_activation_bytes(compiled, x) == 4 * (4 * 64 + 4 * 8) + 2 * 4 * 8
    compiled(x).sum().backward()
    dtypes = [dtype for _, _, dtype in graphs[-1].saved]
    assert dtypes.count("bool") == 2


def test_compare_compiled_on_the_toggled_model_matches_eager():
    torch.manual_seed(0)
    eager, twin = ToggledLayer(4), ToggledLayer(4)
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin, backend="aot_eager")
    rows = compare_compiled(eager, compiled, twin, torch.randn(2, 4),
                            [["layer2"], [], ["layer2"], []])
    assert [r.frozen for r in rows] == ["layer2", "-", "layer2", "-"]
    assert all(r.same_grad_is_none and r.grads_allclose for r in rows)
    assert eager.calls == twin.calls == 4


def test_compare_compiled_detects_a_stale_graph():
    torch.manual_seed(0)
    eager, twin = ToggledLayer(4), ToggledLayer(4)
    twin.load_state_dict(eager.state_dict())
    rows = compare_compiled(eager, lambda x: eager(x) * 0 + twin(x).detach(), twin,
                            torch.randn(2, 4), [[]])
    assert not rows[0].same_grad_is_none


def test_speed_backend_avoids_inductor_without_aten_vector_kernels(monkeypatch, capsys):
    from autograd_cost.chapters import compile as chapter

    monkeypatch.setattr(chapter, "inductor_missing", lambda: [])
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert chapter.speed_backend() == "aot_eager"
    assert "without vector kernels" in capsys.readouterr().out
