"""Classroom demo: a freeze-depth slider that redraws the graph and the cost bars."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from autograd_cost.core import ModelInput
from autograd_cost.cost import count_flops, saved_activation_bytes
from autograd_cost.freezing import FREEZE_MODES, execution_order, units_to_freeze
from autograd_cost.graph import GraphPicture, draw_freeze
from autograd_cost.timing import backward_seconds

PROJECTOR_FONT = {"font.size": 16, "axes.titlesize": 18, "axes.labelsize": 16}


@dataclass(frozen=True)
class DepthSnapshot:
    """What freezing `freeze_depth` units costs, beside the unfrozen model (notebook 01)."""

    mode: str
    freeze_depth: int
    frozen_units: list[str]
    backward_flops: int
    unfrozen_backward_flops: int
    saved_bytes: int
    unfrozen_saved_bytes: int

    def __str__(self) -> str:
        flop_share = self.backward_flops / self.unfrozen_backward_flops
        byte_share = self.saved_bytes / self.unfrozen_saved_bytes
        frozen = ", ".join(self.frozen_units) or "nothing"
        return (
            f"{self.mode} freeze depth {self.freeze_depth} (frozen: {frozen})\n"
            f"  backward FLOPs {self.backward_flops:,} = {flop_share:.0%} of unfrozen\n"
            f"  saved for backward {self.saved_bytes:,} bytes = {byte_share:.0%} of unfrozen"
        )


def depth_snapshot(
    model: nn.Module, example_input: ModelInput, freeze_depth: int, mode: str = "prefix"
) -> DepthSnapshot:
    """Backward FLOPs and saved bytes at one freeze depth, beside the unfrozen ones."""
    names = units_to_freeze(execution_order(model, example_input), mode, freeze_depth)
    return DepthSnapshot(
        mode, freeze_depth, names,
        count_flops(model, example_input, frozen=names).backward,
        count_flops(model, example_input, frozen=[]).backward,
        saved_activation_bytes(model, example_input, frozen=names),
        saved_activation_bytes(model, example_input, frozen=[]),
    )


def _backward_ms(model: nn.Module, example_input: ModelInput, names: list[str]) -> float:
    return backward_seconds(model, example_input, max_seconds=0.2, frozen=names).median * 1e3


def cost_bars(snapshot: DepthSnapshot, time_ms: float | None = None, unfrozen_ms: float = 0.0):
    """Projector-sized bars: FLOPs, bytes kept for backward, time; % of unfrozen (notebook 01)."""
    import matplotlib.pyplot as plt

    labels = ["backward FLOPs", "bytes kept for backward"]
    values = [
        100 * snapshot.backward_flops / snapshot.unfrozen_backward_flops,
        100 * snapshot.saved_bytes / snapshot.unfrozen_saved_bytes,
    ]
    if time_ms is not None and unfrozen_ms > 0:
        labels.append("backward time\n(last measured)")
        values.append(100 * time_ms / unfrozen_ms)
    with plt.rc_context(PROJECTOR_FONT):
        fig, ax = plt.subplots(figsize=(8, 4))
        bars = ax.barh(labels, values, color=["tab:blue", "tab:green", "tab:orange"][: len(values)])
        ax.bar_label(bars, fmt="%.0f%%", padding=4)
        ax.set(xlim=(0, 125), xlabel="% of the unfrozen model",
               title=f"{snapshot.mode} freeze, freeze depth {snapshot.freeze_depth}")
        ax.invert_yaxis()
        fig.tight_layout()
    return fig


def show_depth(
    model: nn.Module, example_input: ModelInput, freeze_depth: int, mode: str = "prefix"
) -> tuple[GraphPicture, DepthSnapshot]:
    """The demo's non-interactive path: the marked graph and cost snapshot (notebook 01)."""
    snapshot = depth_snapshot(model, example_input, freeze_depth, mode)
    return draw_freeze(model, example_input, snapshot.frozen_units), snapshot


def freeze_depth_slider(model: nn.Module, example_input: ModelInput):
    """A freeze-depth slider that redraws the graph and the cost bars live (notebook 01)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    order = execution_order(model, example_input)
    freeze_depth = widgets.IntSlider(value=0, min=0, max=len(order), description="frozen units",
                                     continuous_update=False,
                                     style={"description_width": "initial"})
    mode = widgets.ToggleButtons(options=list(FREEZE_MODES), description="freeze")
    graph_out, bars_out = widgets.Output(), widgets.Output()
    unfrozen_ms = _backward_ms(model, example_input, [])

    def redraw(_change: object = None) -> None:
        picture, snapshot = show_depth(model, example_input, freeze_depth.value, mode.value)
        time_ms = _backward_ms(model, example_input, snapshot.frozen_units)
        fig = cost_bars(snapshot, time_ms, unfrozen_ms)
        graph_out.outputs, bars_out.outputs = (), ()
        graph_out.append_display_data(picture)
        bars_out.append_display_data(fig)
        plt.close(fig)

    freeze_depth.observe(redraw, names="value")
    mode.observe(redraw, names="value")
    redraw()
    controls, views = widgets.HBox([freeze_depth, mode]), widgets.HBox([graph_out, bars_out])
    return widgets.VBox([controls, views])
