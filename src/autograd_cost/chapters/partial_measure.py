"""Notebook 04's measurements: step times against a baseline, surplus op calls, step memory.

The timing itself is `timing.interleaved_samples`, the op profile `ops.profile_run`, the
counting `cost`; this module only tabulates, attributes and plots what they return.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
from torch import nn
from torch.profiler import profile

from autograd_cost.core import LossFn, ModelInput
from autograd_cost.cost import gradient_bytes, saved_activation_bytes
from autograd_cost.freezing import preserved_state
from autograd_cost.ops import extra_op_seconds, extra_ops, op_counts, typical_self_seconds
from autograd_cost.results import format_seconds
from autograd_cost.timing import median_ratio, summarize_times
from autograd_cost.training import training_step


@dataclass(frozen=True)
class RoundRobinTimes:
    """Seconds per call of runs sampled in the same rounds, against a baseline (notebook 04).

    `samples` is what `timing.interleaved_samples` returns. `ratio(name)` is the median over
    rounds of name's time over the baseline's in the same round, so drift cancels.
    """

    samples: Mapping[str, list[float]]
    baseline: str | None = "plain"

    def __post_init__(self) -> None:
        if not self.samples or any(not values for values in self.samples.values()):
            raise ValueError("samples must map each run name to a non-empty list of seconds")
        if self.baseline is not None and self.baseline not in self.samples:
            raise ValueError(f"baseline {self.baseline!r} is not a run; runs are "
                             f"{list(self.samples)}")

    def median(self, name: str) -> float:
        """The median seconds of one run (notebook 04)."""
        return statistics.median(self.samples[name])

    def ratio(self, name: str) -> float:
        """Median over rounds of time(name) / time(baseline) in the same round (notebook 04)."""
        if self.baseline is None:
            raise ValueError("these step times have no baseline to divide by")
        return median_ratio(self.samples, name, self.baseline)

    def table(self) -> pd.DataFrame:
        """Median, IQR and (with a baseline) the median ratio per run (notebook 04)."""
        rows = []
        for name, values in self.samples.items():
            timing = summarize_times(list(values))
            row = {"run": name, "median": format_seconds(timing.median),
                   "IQR": format_seconds(timing.iqr)}
            if self.baseline is not None:
                row[f"/ {self.baseline}"] = round(self.ratio(name), 2)
            rows.append(row)
        return pd.DataFrame(rows).set_index("run")

    def plot(self, ax, step_flops: Mapping[str, int], title: str = "", legend: bool = True):
        """Median per run with [Q1, Q3] whiskers, and where FLOPs put it (notebook 04).

        The diamond is the baseline's median times the run's step FLOPs over the baseline's:
        where the bar would end if time followed FLOPs. Draws on the matplotlib `ax`.
        """
        names = list(self.samples)
        missing = [n for n in names if n not in step_flops]
        if self.baseline is None or missing or step_flops[self.baseline] <= 0:
            raise ValueError(f"need a baseline and positive baseline FLOPs, and FLOPs for every "
                             f"run; missing FLOPs for {missing}")
        timings = [summarize_times(list(self.samples[name])) for name in names]
        base = self.median(self.baseline)
        scale, unit = (1e6, "µs") if base < 1e-3 else (1e3, "ms")
        rows = list(range(len(names)))
        low, high = zip(*(t.error_bar() for t in timings), strict=True)
        ax.barh(rows, [t.median * scale for t in timings], color="tab:blue", alpha=0.6,
                xerr=[[v * scale for v in low], [v * scale for v in high]], capsize=4,
                ecolor="dimgray", label="measured median, whisker [Q1, Q3]")
        ax.plot([base * scale * step_flops[n] / step_flops[self.baseline] for n in names], rows,
                "D", color="tab:red", label="if time followed FLOPs")
        ax.set_yticks(rows, names)
        ax.invert_yaxis()
        ax.set(xlabel=f"time per training step ({unit})", title=title)
        if legend:
            ax.legend(loc="best", fontsize=9)
        return ax


@dataclass(frozen=True)
class SurplusCalls:
    """The op calls a variant's profile has beyond a baseline's, and their cost (notebook 04).

    `seconds` charges each surplus call its op's median self CPU time per call in the variant.
    """

    counts: dict[str, int]
    seconds: dict[str, float]
    variant_calls: int
    variant_seconds: float

    @property
    def call_share(self) -> float:
        """The surplus calls' share of all the variant's op calls (notebook 04)."""
        return sum(self.counts.values()) / self.variant_calls

    @property
    def time_share(self) -> float:
        """The surplus calls' share of the variant's self CPU time, per-op medians (notebook 04)."""
        return sum(self.seconds.values()) / self.variant_seconds


def surplus_calls(baseline: profile, variant: profile) -> SurplusCalls:
    """Which ops the variant runs more often than the baseline, and at what cost (notebook 04)."""
    variant_counts = op_counts(variant)
    return SurplusCalls(
        counts=extra_ops(op_counts(baseline), variant_counts),
        seconds=extra_op_seconds(baseline, variant),
        variant_calls=sum(variant_counts.values()),
        variant_seconds=typical_self_seconds(variant),
    )


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step keeps for parameter gradients and for backward (notebook 04).

    `gradient_bytes` is the storage the .grad tensors keep alive (`cost.gradient_bytes`);
    `gradient_tensor_bytes` only their own elements. They differ when a .grad is a slice of a
    larger gradient, as behind torch.cat.
    """

    gradient_bytes: int
    gradient_tensor_bytes: int
    saved_activation_bytes: int


def step_memory(
    model: nn.Module, example_input: ModelInput, loss_fn: LossFn | None = None
) -> StepMemory:
    """Gradient bytes after one backward and saved-activation bytes of a step (notebook 04).

    Built on `cost.gradient_bytes` and `cost.saved_activation_bytes`; grads are restored.
    """
    with preserved_state(model):
        training_step(model, example_input, loss_fn)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        held, own = gradient_bytes(model), sum(grad.nbytes for grad in grads)
    return StepMemory(held, own, saved_activation_bytes(model, example_input, loss_fn))
