"""Notebook 10's plumbing: predicted parts against measured backward time, per freeze depth."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn

from autograd_cost.cost import flop_counter
from autograd_cost.profile import with_ratios
from autograd_cost.timing import interleaved_seconds

PARTS = {"predicted_compute_seconds": "compute-bound ops",
         "predicted_memory_seconds": "memory-bound ops",
         "predicted_overhead_seconds": "overhead"}


def prediction_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per prefix depth: measured, cost-model and FLOP ratios and the predicted parts (notebook 10).

    `frame` is a `profile_freezing(..., predict=True)` sweep. The parts are shares of the
    unfrozen model's predicted time, so they add up to the predicted ratio.
    """
    ratios = with_ratios(frame[frame["mode"] == "prefix"])
    base = ratios["predicted_backward_seconds"].iloc[0]
    table = pd.DataFrame({"freeze depth": ratios["freeze_depth"],
                          "measured": ratios["time_ratio"],
                          "cost model": ratios["predicted_ratio"],
                          "FLOPs": ratios["flop_ratio"]})
    for column, name in PARTS.items():
        table[name] = ratios[column] / base
    return table.set_index("freeze depth")


def worst_errors(table: pd.DataFrame) -> pd.Series:
    """Largest |prediction - measured| over depths: cost model and FLOPs (notebook 10)."""
    return pd.Series({model: (table[model] - table["measured"]).abs().max()
                      for model in ("cost model", "FLOPs")})


def plot_predicted_parts(tables: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Stacked predicted parts per depth, the measured ratio and the FLOP line (notebook 10)."""
    figure, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), squeeze=False)
    for axis, (name, table) in zip(axes[0], tables.items(), strict=True):
        depths = list(table.index)
        bottom = pd.Series(0.0, index=table.index)
        for part, color in zip(PARTS.values(), ("tab:blue", "tab:orange", "tab:gray"),
                               strict=True):
            axis.bar(depths, table[part], bottom=bottom, color=color, alpha=0.7, label=part)
            bottom = bottom + table[part]
        axis.plot(depths, table["measured"], "ko-", label="measured")
        axis.plot(depths, table["FLOPs"], "r--", label="FLOPs only")
        axis.set(title=name, xlabel="prefix freeze depth", ylabel="backward time / unfrozen")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def weight_gradient_rates(model: nn.Module, example_input: torch.Tensor,
                          names: Sequence[str], device: torch.device | None = None
                          ) -> pd.DataFrame:
    """FLOPs, median seconds and GFLOP/s of each named layer's weight gradient, timed alone.

    Each layer's input is captured in one forward; then only the gradient of its output
    with respect to its weight is taken, round-robin (notebook 10). The time includes one
    autograd call. A copy of the model runs, so the model (its BatchNorm statistics too) is
    not changed.
    """
    model = copy.deepcopy(model)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: inputs.__setitem__(name, args[0].detach()))
        for name in names]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    runs, flops = {}, {}
    for name in names:
        layer = model.get_submodule(name)
        output = layer(inputs[name])
        grad = torch.ones_like(output)
        runs[name] = (lambda output=output, grad=grad, weight=layer.weight:
                      torch.autograd.grad(output, weight, grad, retain_graph=True))
        with flop_counter() as counter:
            runs[name]()
        flops[name] = counter.get_total_flops()
    timings = interleaved_seconds(runs, device or example_input.device, calls_per_sample=10,
                                  min_repeats=7, max_repeats=15, max_seconds=2.0)
    return pd.DataFrame({"FLOPs": flops,
                         "median seconds": {n: t.median for n, t in timings.items()},
                         "GFLOP/s": {n: flops[n] / t.median / 1e9 for n, t in timings.items()}})
