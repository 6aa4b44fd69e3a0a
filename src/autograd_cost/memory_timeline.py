"""One training step's memory by category, from torch.profiler's memory profiler; its pictures.

torch.profiler with `profile_memory=True, record_shapes=True, with_stack=True` records every
allocation and free, and its memory profiler (`torch.profiler._memory_profiler`, private in
torch 2.13) labels each tensor PARAMETER, GRADIENT, OPTIMIZER_STATE, ACTIVATION, TEMPORARY,
INPUT or AUTOGRAD_DETAIL, or leaves it unlabelled. Its public export
(`export_memory_timeline`) is deprecated in torch 2.13 and writes a table whose columns follow
a colour table, not the enum, and it merges events that fall in the same microsecond. So this
module reads the private timeline itself, event by event, maps categories by enum member,
and is the only place in the library that touches the private API (pinned by tests). The
table and the pictures of `autograd_cost.memory.MemoryBreakdown` results live here too.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch.profiler import record_function

from autograd_cost.quiet import quiet_profile

# The course's names for the profiler's categories, in the order plots stack them.
CATEGORIES = (
    "parameters",
    "optimizer state",
    "inputs",
    "gradients",
    "activations",
    "autograd detail",
    "temporaries",
    "other",
)
PHASES = ("forward", "backward", "optimizer")
_PHASE_PREFIX = "autograd_cost::"
_PROFILER_LOGGER = "torch.profiler._memory_profiler"


def _category_names() -> dict[object, str]:
    """Profiler Category enum member (None: unlabelled) to the course's name."""
    from torch.profiler._memory_profiler import Category

    return {
        Category.PARAMETER: "parameters",
        Category.OPTIMIZER_STATE: "optimizer state",
        Category.INPUT: "inputs",
        Category.GRADIENT: "gradients",
        Category.ACTIVATION: "activations",
        Category.AUTOGRAD_DETAIL: "autograd detail",
        Category.TEMPORARY: "temporaries",
        None: "other",
    }


@dataclass(frozen=True)
class MemoryTimeline:
    """Live bytes by category after each memory event of one step (notebook 07).

    `live[i][c]` is the bytes of category `CATEGORIES[c]` live after event `i`; `phases[i]`
    names the phase (`forward`, `backward`, `optimizer`, or `setup` outside them) the event
    falls in. Event 0 is the state before the step: tensors that existed already.
    """

    live: tuple[tuple[int, ...], ...]
    phases: tuple[str, ...]

    def totals(self) -> list[int]:
        """Bytes live after each event, all categories together."""
        return [sum(row) for row in self.live]

    def peak_index(self, phase: str | None = None) -> int:
        """The first event at which live bytes are highest, in `phase` if given."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; valid phases are {list(PHASES)}")
        totals = self.totals()
        candidates = [i for i in range(len(totals)) if phase is None or self.phases[i] == phase]
        if not candidates:
            return 0
        return max(candidates, key=lambda i: (totals[i], -i))

    def at(self, index: int) -> dict[str, int]:
        """Bytes live by category after event `index`."""
        return dict(zip(CATEGORIES, self.live[index], strict=True))


@contextmanager
def profiled_phase(name: str) -> Iterator[None]:
    """Mark a phase of the step (forward, backward, optimizer) in the trace."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; valid phases are {list(PHASES)}")
    with record_function(_PHASE_PREFIX + name):
        yield


@contextmanager
def memory_profiler_quiet() -> Iterator[None]:
    """Keep the memory profiler's warnings and log lines out of the caller."""
    logger = logging.getLogger(_PROFILER_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextmanager
def memory_profile(device_type: str = "cpu") -> Iterator[object]:
    """torch.profiler set up for memory categories, silent on stderr."""
    with memory_profiler_quiet(), quiet_profile(
        device_type, profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        yield prof


def _phase_windows(memory_profile_result: object) -> list[tuple[int, int, str]]:
    """(start ns, end ns, phase) of each phase marked with `profiled_phase`."""
    windows = []
    for event in memory_profile_result._op_tree.sorted_nodes:
        if event.name.startswith(_PHASE_PREFIX):
            phase = event.name[len(_PHASE_PREFIX):]
            windows.append((event.start_time_ns, event.end_time_ns, phase))
    return windows


def _phase_of(time_ns: int, windows: list[tuple[int, int, str]]) -> str:
    for start, end, phase in windows:
        if start <= time_ns <= end:
            return phase
    return "setup"


def memory_timeline(prof: object, device: str | torch.device = "cpu") -> MemoryTimeline:
    """Replay the profiler's memory events for one device, by category.

    Events are taken one by one in the profiler's order (time, then create before destroy),
    so no two events are merged, unlike the deprecated export that buckets by microsecond.
    """
    from torch.profiler._memory_profiler import Action, TensorKey

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with memory_profiler_quiet():
        result = prof._memory_profile()
        events = result.timeline
        categories = result._categories
    names = _category_names()
    column = {name: i for i, name in enumerate(CATEGORIES)}
    windows = _phase_windows(result)

    def slot(key: object, version: int) -> int:
        category = categories.get(key, version) if isinstance(key, TensorKey) else None
        return column[names[category]]

    current = [0] * len(CATEGORIES)
    live: list[tuple[int, ...]] = []
    phases: list[str] = []
    started = False
    for time_ns, action, (key, version), size in events:
        if key.device != device:
            continue
        if action == Action.PREEXISTING:
            current[slot(key, version)] += size
            continue
        if not started:  # one point for the state before the step
            live.append(tuple(current))
            phases.append("setup")
            started = True
        if action == Action.CREATE:
            current[slot(key, version)] += size
        elif action == Action.INCREMENT_VERSION:
            current[slot(key, version)] -= size
            current[slot(key, version + 1)] += size
        elif action == Action.DESTROY:
            current[slot(key, version)] -= size
        else:
            raise ValueError(f"unknown memory action {action}")
        live.append(tuple(current))
        phases.append(_phase_of(time_ns, windows))
    if not started:
        live.append(tuple(current))
        phases.append("setup")
    return MemoryTimeline(tuple(live), tuple(phases))


# torch.profiler's own colours for its categories, so the pictures look familiar.
COLORS = {
    "parameters": "darkgreen",
    "optimizer state": "goldenrod",
    "inputs": "black",
    "gradients": "mediumblue",
    "activations": "red",
    "autograd detail": "royalblue",
    "temporaries": "mediumpurple",
    "other": "grey",
}


def byte_unit(largest: int) -> tuple[int, str]:
    """(divisor, name) of the unit in which to plot byte counts up to `largest`."""
    if largest >= 2**20:
        return 2**20, "MiB"
    if largest >= 2**10:
        return 2**10, "KiB"
    return 1, "bytes"


def plot_memory_timeline(timelines: Mapping[str, object], path: str | None = None,
                         title: str = "", columns: int | None = None):
    """Stacked live memory by category over one step, one panel per setting (notebook 07).

    `timelines` maps a label to a MemoryTimeline or to anything with a `.timeline` (a
    MemoryBreakdown). The x axis counts memory events (allocations and frees), so the
    picture does not depend on the machine's speed; dotted lines mark the phases. Panels wrap
    after `columns` (default: one row).
    """
    import matplotlib.pyplot as plt

    if not timelines:
        raise ValueError("timelines must map at least one label to a timeline")
    series = {label: getattr(t, "timeline", t) for label, t in timelines.items()}
    bad = [label for label, t in series.items() if not isinstance(t, MemoryTimeline)]
    if bad:
        raise ValueError(f"not a MemoryTimeline or MemoryBreakdown: {bad}")
    columns = len(series) if columns is None else columns
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive int, got {columns!r}")
    rows = -(-len(series) // columns)
    divisor, unit = byte_unit(max(max(t.totals()) for t in series.values()))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows + 0.3),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(series):]:
        ax.set_visible(False)
    for ax, (label, timeline) in zip(axes.flat, series.items(), strict=False):
        steps = range(len(timeline.live))
        stacks = [[row[c] / divisor for row in timeline.live] for c in range(len(CATEGORIES))]
        ax.stackplot(steps, stacks, labels=CATEGORIES, step="post",
                     colors=[COLORS[c] for c in CATEGORIES], alpha=0.85)
        for i in range(1, len(timeline.phases)):
            if timeline.phases[i] != timeline.phases[i - 1] and timeline.phases[i] in PHASES:
                ax.axvline(i, color="black", linestyle=":", linewidth=1)
                ax.text(i, 0, " " + timeline.phases[i], rotation=90, va="bottom", fontsize=8)
        ax.set(title=label, xlabel="memory event")
    for row in axes:
        row[0].set_ylabel(f"live memory ({unit})")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.88, 0.95 if title else 1))
    if title:
        fig.suptitle(title)
    if path:
        fig.savefig(path, dpi=120)
    return fig


# The table's columns: MemoryBreakdown field -> column title.
BREAKDOWN_COLUMNS = {
    "trainable_params": "trainable",
    "parameters_bytes": "params",
    "gradients_bytes": "grads",
    "optimizer_state_bytes": "optim state",
    "saved_activation_bytes": "saved act",
    "temporary_bytes": "temporary",
    "other_bytes": "other",
    "peak_bytes": "peak",
    "peak_phase": "peak in",
}


def breakdown_table(breakdowns: Mapping[str, Any]) -> pd.DataFrame:
    """Breakdowns as a DataFrame, one row per setting, counts in bytes (notebook 07)."""
    if not breakdowns:
        raise ValueError("breakdowns must map at least one label to a MemoryBreakdown")
    rows = [{title: getattr(b, key) for key, title in BREAKDOWN_COLUMNS.items()}
            for b in breakdowns.values()]
    return pd.DataFrame(rows, index=pd.Index(list(breakdowns), name="setting"))


def plot_memory_breakdown(breakdowns: Mapping[str, Any], path: str | None = None,
                          title: str = ""):
    """One stacked bar per setting: what is live at the peak, by category (notebook 07)."""
    import matplotlib.pyplot as plt

    if not breakdowns:
        raise ValueError("breakdowns must map at least one label to a MemoryBreakdown")
    divisor, unit = byte_unit(max(b.peak_bytes for b in breakdowns.values()))
    fig, ax = plt.subplots(figsize=(1.6 * len(breakdowns) + 3.5, 4))
    labels = list(breakdowns)
    bottoms = [0.0] * len(labels)
    for category in CATEGORIES:
        heights = [b.at_peak[category] / divisor for b in breakdowns.values()]
        if not any(heights):
            continue
        ax.bar(labels, heights, bottom=bottoms, color=COLORS[category], label=category)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set(ylabel=f"live at the peak ({unit})", title=title or "Memory at the peak of one step")
    ax.tick_params(axis="x", labelsize=8)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], names[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig
