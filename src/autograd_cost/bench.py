"""`python -m autograd_cost bench`: how well the per-op cost model predicts backward time.

For each model and every prefix/suffix freeze depth it compares the normalized backward
time (time at that depth / time unfrozen, the median of per-round ratios) with two
predictions: the FLOP-only model (backward FLOPs ratio) and the per-op cost model
(`costmodel`). Three course models are
what the notebook shows; two families the calibration never saw check that it transfers.
A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from autograd_cost.costmodel import MachineConstants, calibrate, uncached_calibration
from autograd_cost.models import example_input, mlp, small_cnn, tiny_transformer
from autograd_cost.profile import profile_freezing, with_ratios
from autograd_cost.timing import interleaved_backward_samples, keep_freed_memory, median_ratio

COURSE_TARGET, OTHER_TARGET, PREDICT_OVERHEAD_TARGET = 0.05, 0.08, 0.30


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input: a ResNet basic block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


def residual_cnn(channels: int = 16, blocks: int = 2, seed: int = 0) -> nn.Sequential:
    """A small ResNet-style conv net with BatchNorm for 8x8 digits."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        *(ResidualBlock(channels) for _ in range(blocks)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


class EncoderClassifier(nn.Module):
    """Token embedding, PyTorch's nn.TransformerEncoder, mean pool, linear head."""

    def __init__(self, vocab: int = 64, dim: int = 64, heads: int = 4, layers: int = 2,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim,
                                           batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


@dataclass(frozen=True)
class BenchModel:
    """A model, its example input and whether the calibration models are its family."""

    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[nn.Module], torch.Tensor]
    course: bool


def bench_models() -> list[BenchModel]:
    """The course's three models, sized as in notebook 02, and two unseen families."""
    return [
        BenchModel("mlp", lambda: mlp(width=512, depth=4),
                   lambda m: example_input(m, batch=128), True),
        BenchModel("cnn", lambda: small_cnn(channels=16, hidden=64),
                   lambda m: example_input(m, batch=64), True),
        BenchModel("transformer",
                   lambda: tiny_transformer(vocab=64, dim=64, heads=4, blocks=2, max_len=32),
                   lambda m: example_input(m, batch=16), True),
        BenchModel("residual_cnn", residual_cnn,
                   lambda m: torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                   False),
        BenchModel("nn.TransformerEncoder", EncoderClassifier,
                   lambda m: torch.randint(0, 64, (16, 32),
                                           generator=torch.Generator().manual_seed(0)),
                   False),
    ]


def per_round_time_ratios(model: nn.Module, example: torch.Tensor, frame: pd.DataFrame,
                          repeats: int, device: str) -> list[float]:
    """Each row's backward time over the unfrozen one, the median of per-round ratios.

    The rows' freezes are timed round-robin (`interleaved_backward_samples`); dividing within
    a round cancels what a round shares (a busy moment, the CPU's clock), which medians of
    each row's own times do not.
    """
    freezes = [list(units) for units in frame["frozen_units"]]
    samples = interleaved_backward_samples(model, example, [[], *freezes], device=device,
                                           min_repeats=repeats, max_repeats=repeats,
                                           max_seconds=30.0)
    by_row = {str(i): row for i, row in enumerate(samples)}
    return [median_ratio(by_row, str(i), "0") for i in range(1, len(samples))]


def prediction_errors(frame: pd.DataFrame, time_ratios: Sequence[float]) -> dict[str, float]:
    """Largest |predicted - measured| normalized backward time over a sweep's rows."""
    ratios = with_ratios(frame)
    measured = pd.Series(list(time_ratios), index=frame.index)
    return {
        "cost_model_error": float((ratios["predicted_ratio"] - measured).abs().max()),
        "flop_model_error": float((ratios["flop_ratio"] - measured).abs().max()),
    }


def error_report(repeats: int = 60, device: str = "cpu") -> pd.DataFrame:
    """One row per bench model: both models' worst error over all prefix and suffix depths."""
    rows = []
    for entry in bench_models():
        model = entry.build()
        example = entry.make_input(model)
        frame = profile_freezing(model, example, device=device, repeats=1, predict=True)
        time_ratios = per_round_time_ratios(model, example, frame, repeats, device)
        rows.append({"model": entry.name, "seen family": entry.course,
                     **prediction_errors(frame, time_ratios),
                     "target": COURSE_TARGET if entry.course else OTHER_TARGET})
    table = pd.DataFrame(rows)
    table["within target"] = table["cost_model_error"] <= table["target"]
    return table


def predict_overhead(repeats: int = 10, device: str = "cpu") -> dict[str, float]:
    """Wall seconds of an 8x1024 MLP sweep without and with predict=True, and the ratio."""
    model = mlp(width=1024, depth=8)
    x = example_input(model, batch=64)
    calibrate(device)  # calibrated once per session: not part of a sweep's extra time
    seconds = {}
    for predict in (False, True, False, True):
        start = time.perf_counter()
        profile_freezing(model, x, device=device, repeats=repeats, predict=predict)
        seconds.setdefault(predict, []).append(time.perf_counter() - start)
    plain, predicted = min(seconds[False]), min(seconds[True])
    return {"sweep_seconds": plain, "with_predict_seconds": predicted,
            "extra_share": predicted / plain - 1}


def run_bench(threads: int = 1, device: str = "cpu") -> str:
    """The whole report as text: constants twice, the error table, the --predict overhead."""
    torch.set_num_threads(threads)
    kept = keep_freed_memory()  # no page faults from buffers freed and reused every backward
    first: MachineConstants = uncached_calibration(device)
    second: MachineConstants = uncached_calibration(device)
    lines = [f"threads: {threads}, device: {device}, torch {torch.__version__}, "
             f"glibc keeps freed memory: {kept}",
             f"calibration run 1: {first}", f"calibration run 2: {second}", ""]
    table = error_report(device=device)
    lines += [table.round(3).to_string(index=False), ""]
    overhead = predict_overhead(device=device)
    lines.append(f"8x1024 MLP sweep: {overhead['sweep_seconds']:.2f} s, with --predict "
                 f"{overhead['with_predict_seconds']:.2f} s: {overhead['extra_share']:+.0%} "
                 f"(target < {PREDICT_OVERHEAD_TARGET:.0%})")
    return "\n".join(lines)
