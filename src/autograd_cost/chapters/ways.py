"""Notebook 03: the ways to freeze side by side: what each builds, computes, saves and keeps."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.optim import Optimizer

from autograd_cost.core import LossFn, check_choice, check_positive_int
from autograd_cost.cost import (
    _storage_key,
    flop_counter,
    gradient_bytes,
    optimizer_state_bytes,
    saved_activation_bytes,
)
from autograd_cost.freezing import check_unit_names, preserved_state, preserved_values, units
from autograd_cost.graph import GraphPicture, backward_nodes, draw_graph
from autograd_cost.results import to_frame
from autograd_cost.timing import Timing, interleaved_seconds, timed_backward

# The ways to freeze the named units, by key: the code each way amounts to.
WAYS = {
    "requires_grad_false": "requires_grad_(False)",
    "optimizer_excludes": "left out of the optimizer",
    "no_grad_prefix": "no_grad() on the frozen part",
    "inference_mode_prefix": "inference_mode() on the frozen part",
    "eval_prefix": "eval() on the frozen part",
    "lr_zero_group": "lr=0 param group",
    "requires_grad_false_eval": "requires_grad_(False) + eval()",
}
DETACH_HOWS = ("no_grad", "inference_mode", "detach")
_DETACHING_WAYS = {"no_grad_prefix": "no_grad", "inference_mode_prefix": "inference_mode"}


def grad_state(params: Sequence[torch.Tensor]) -> str:
    """'None' if no parameter has a .grad, 'zero' if all are zero, else 'non-zero' (notebook 03)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return "None"
    return "non-zero" if any(bool(g.any()) for g in grads) else "zero"


def grad_status(model: nn.Module) -> dict[str, str]:
    """grad_state of each unit (module owning parameters), by unit name."""
    return {name: grad_state(params) for name, params in units(model).items()}


# ---------------------------------------------------------------- no_grad / inference_mode


def _context(how: str) -> object:
    if how == "no_grad":
        return torch.no_grad()
    if how == "inference_mode":
        return torch.inference_mode()
    return nullcontext()


class PartlyDetached(nn.Module):
    """A Sequential whose named children run under no_grad, inference_mode, detached (notebook 03).

    Consecutive named children run as one section; inference tensors are cloned on the way
    out, since autograd may not save them for backward.
    """

    def __init__(self, model: nn.Sequential, names: Sequence[str], how: str = "no_grad") -> None:
        super().__init__()
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"PartlyDetached needs an nn.Sequential, got {type(model).__name__}")
        check_choice("how", how, DETACH_HOWS)
        if isinstance(names, str):
            raise TypeError(f"names must be a list of child names, not the string {names!r}")
        children = [name for name, _ in model.named_children()]
        unknown = [name for name in names if name not in children]
        if unknown or not names:
            raise ValueError(f"{list(unknown) or 'no names'}: name direct children of the "
                             f"Sequential; valid names are {children}")
        self.model = model
        self.names = list(names)
        self.how = how

    def sections(self) -> list[tuple[bool, list[nn.Module]]]:
        """Runs of consecutive children, each flagged True if it is detached."""
        runs: list[tuple[bool, list[nn.Module]]] = []
        for name, child in self.model.named_children():
            inside = name in self.names
            if runs and runs[-1][0] == inside:
                runs[-1][1].append(child)
            else:
                runs.append((inside, [child]))
        return runs

    def _detached(self, modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        with _context(self.how):
            for module in modules:
                x = module(x)
        if self.how == "detach":
            return x.detach()
        return x.clone() if x.is_inference() else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for inside, modules in self.sections():
            if inside:
                x = self._detached(modules, x)
            else:
                for module in modules:
                    x = module(x)
        return x


class _Packed:
    """What a saved_tensors_hooks pack returns: lives exactly as long as the graph holds it."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


@dataclass(frozen=True)
class SavedBytes:
    """Bytes saved for backward, by the child that saved them first (notebook 03).

    `by_child` has one entry per child, in order, then 'loss'; `held` counts the bytes that
    the graph still holds when the forward and the loss are done.
    """

    by_child: dict[str, int]
    held: int

    @property
    def total(self) -> int:
        """All bytes saved during the forward, as saved_activation_bytes counts them."""
        return sum(self.by_child.values())


def saved_bytes_by_child(net: nn.Module, x: torch.Tensor, loss_fn: LossFn) -> SavedBytes:
    """Saved-for-backward bytes of one forward, per child, and those still held.

    The children are those of `net`, or of the Sequential a PartlyDetached wraps. Storages
    are counted once, parameters and buffers excluded, as in saved_activation_bytes. A graph
    that is dropped during the forward (after .detach()) frees what it saved: not `held`.
    """
    inner = net.model if isinstance(net, PartlyDetached) else net
    excluded = {_storage_key(t) for t in (*net.parameters(), *net.buffers())}
    current = ["input"]
    owners: dict[tuple[str, int], str] = {}
    sizes: dict[tuple[str, int], int] = {}
    packed: list[tuple[tuple[str, int], weakref.ref]] = []
    alive: list[torch.Tensor] = []  # no storage is reused, so a key names one storage

    def pack(tensor: torch.Tensor) -> _Packed:
        alive.append(tensor.detach())  # the storage only: holding the graph would keep it
        holder = _Packed(tensor)
        key = _storage_key(tensor)
        if key not in excluded:
            owners.setdefault(key, current[0])
            sizes[key] = max(sizes.get(key, 0), tensor.untyped_storage().nbytes())
            packed.append((key, weakref.ref(holder)))
        return holder

    def entering(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            current[0] = name

        return hook

    hooks = [child.register_forward_pre_hook(entering(name))
             for name, child in inner.named_children()]
    try:
        with preserved_state(net), saved_tensors_hooks(pack, lambda holder: holder.tensor):
            output = net(x)
            current[0] = "loss"
            loss = loss_fn(output)
            held_keys = {key for key, ref in packed if ref() is not None}
            del loss, output
    finally:
        for hook in hooks:
            hook.remove()
    names = [name for name, _ in inner.named_children()] + ["loss"]
    by_child = {name: 0 for name in (["input"] if "input" in owners.values() else []) + names}
    for key, owner in owners.items():
        by_child[owner] += sizes[key]
    return SavedBytes(by_child, sum(sizes[key] for key in held_keys))


def saved_bytes_table(nets: dict[str, nn.Module], x: torch.Tensor, loss_fn: LossFn) -> pd.DataFrame:
    """saved_bytes_by_child per net, side by side, plus total and held rows (notebook 03).

    The nets should wrap the same model, so that their children line up; rows that are zero
    in every column are left out.
    """
    saved = {title: saved_bytes_by_child(net, x, loss_fn) for title, net in nets.items()}
    table = pd.DataFrame({title: s.by_child for title, s in saved.items()}).fillna(0)
    table = table[(table != 0).any(axis=1)].astype("int64")
    table.loc["total"] = [s.total for s in saved.values()]
    table.loc["held"] = [s.held for s in saved.values()]
    table.index.name = "saved by"
    return table


# ---------------------------------------------------------------- the ways, measured


def _build_way(
    model: nn.Module, way: str, names: Sequence[str], lr: float
) -> tuple[nn.Module, Optimizer]:
    """The network to call and the Adam optimizer that a way uses."""
    owned = units(model)
    frozen = [p for name in names for p in owned[name]]
    frozen_ids = {id(p) for p in frozen}
    late = [p for p in model.parameters() if id(p) not in frozen_ids]
    if way in ("requires_grad_false", "requires_grad_false_eval"):
        for param in frozen:
            param.requires_grad_(False)
    if way in ("eval_prefix", "requires_grad_false_eval"):
        for name in names:
            model.get_submodule(name).eval()
    if way == "optimizer_excludes":
        return model, torch.optim.Adam(late, lr=lr)
    if way == "lr_zero_group":
        return model, torch.optim.Adam([{"params": late}, {"params": frozen, "lr": 0.0}], lr=lr)
    if way in _DETACHING_WAYS:
        net = PartlyDetached(model, names, _DETACHING_WAYS[way])
        return net, torch.optim.Adam(model.parameters(), lr=lr)
    return model, torch.optim.Adam(model.parameters(), lr=lr)


@contextmanager
def way_setup(
    model: nn.Module, way: str, names: Sequence[str], lr: float = 1e-3
) -> Iterator[tuple[nn.Module, Optimizer]]:
    """(network, Adam) freezing the units `names` one way; all restored after (notebook 03).

    Every parameter starts trainable with .grad None; values, flags, grads, modes and
    buffers come back, so optimizer steps inside the block leave no trace.
    """
    check_choice("way", way, list(WAYS))
    check_unit_names(model, names)
    with preserved_values(model), preserved_state(model):
        for param in model.parameters():
            param.requires_grad_(True)
        yield _build_way(model, way, names, lr)


@dataclass(frozen=True)
class WayRow:
    """What one Adam step costs and changes under one way of freezing (notebook 03)."""

    way: str
    grads: dict[str, str]  # each unit's .grad after the step: None, zero or non-zero
    graph_nodes: int
    backward_flops: int
    saved_bytes: int
    grad_bytes: int
    adam_state_bytes: int
    adam_tensors: int  # parameter tensors the way's Adam was given
    adam_state_tensors: int  # parameter tensors with Adam state after the step
    frozen_weight_change: float = field(repr=False)
    running_stats_change: float = field(repr=False)


def _max_change(tensors: Sequence[torch.Tensor], before: Sequence[torch.Tensor]) -> float:
    changes = [(t.detach() - b).abs().max().item() for t, b in zip(tensors, before, strict=True)]
    return max(changes, default=0.0)


def measure_way(
    model: nn.Module, way: str, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> WayRow:
    """One Adam step on (x, y) under a way of freezing, measured (notebook 03)."""
    loss_fn = functools.partial(F.cross_entropy, target=y)
    with way_setup(model, way, names) as (net, optimizer):
        saved = saved_activation_bytes(net, x, loss_fn)
        owned = units(model)
        frozen = [p for name in names for p in owned[name]]
        stats = [b for name in names for b in model.get_submodule(name).buffers()
                 if b.is_floating_point()]  # BatchNorm's running mean and var
        weights_before = [t.detach().clone() for t in frozen]
        stats_before = [t.detach().clone() for t in stats]
        loss = loss_fn(net(x))
        nodes = len(backward_nodes(loss))
        with flop_counter() as counter:
            loss.backward()
        optimizer.step()
        return WayRow(
            way=way,
            grads=grad_status(model),
            graph_nodes=nodes,
            backward_flops=counter.get_total_flops(),
            saved_bytes=saved,
            grad_bytes=gradient_bytes(model),
            adam_state_bytes=optimizer_state_bytes(optimizer),
            adam_tensors=sum(len(group["params"]) for group in optimizer.param_groups),
            adam_state_tensors=len(optimizer.state),
            frozen_weight_change=_max_change(frozen, weights_before),
            running_stats_change=_max_change(stats, stats_before),
        )


def verdict(row: WayRow, cheapest_flops: int) -> str:
    """A one-phrase verdict on a measured row (notebook 03)."""
    if row.frozen_weight_change > 0:
        return "not a freeze: weights move"
    if row.backward_flops > cheapest_flops:
        return "frozen, but full backward cost"
    if row.running_stats_change > 0:
        return "cheap, but BN stats drift"
    return "cheap and fully frozen"


def compare_ways(
    model: nn.Module,
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    ways: Sequence[str] = tuple(WAYS),
) -> pd.DataFrame:
    """measure_way for each way from the same starting model, one row per way (notebook 03).

    Columns: how, each unit's .grad state, the measured counts of WayRow, whether the frozen
    weights and BatchNorm statistics were kept or moved, and the verdict.
    """
    for way in ways:
        check_choice("way", way, list(WAYS))
    rows = [measure_way(model, way, names, x, y) for way in ways]
    cheapest = min(r.backward_flops for r in rows)
    hidden = ("way", "grads", "frozen_weight_change", "running_stats_change")
    records = [
        {"way": r.way, "how": WAYS[r.way], **r.grads,
         **{key: value for key, value in vars(r).items() if key not in hidden},
         "frozen_weights": "moved" if r.frozen_weight_change > 0 else "kept",
         "bn_stats": "moved" if r.running_stats_change > 0 else "kept",
         "verdict": verdict(r, cheapest)}
        for r in rows
    ]
    return to_frame(records).set_index("way")


def draw_way(
    model: nn.Module, way: str, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> GraphPicture:
    """The full graph, with the nodes this way never builds dashed (notebook 03).

    Dashed nodes lead only to parameters that end the way's backward with .grad None.
    """
    loss_fn = functools.partial(F.cross_entropy, target=y)
    with way_setup(model, way, names) as (net, _):
        loss_fn(net(x)).backward()
        no_grad = [p for p in model.parameters() if p.grad is None]
    with preserved_state(model):
        for param in model.parameters():
            param.requires_grad_(True)
        loss = loss_fn(model(x))
        return draw_graph(loss, dict(model.named_parameters()), frozen=no_grad)


def _timed_way_backward(
    model: nn.Module, way: str, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> float:
    with way_setup(model, way, names) as (net, _):
        return timed_backward(F.cross_entropy(net(x), y), x.device)


def interleaved_way_seconds(
    model: nn.Module,
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    ways: Sequence[str] = tuple(WAYS),
    repeats: int = 15,
) -> dict[str, Timing]:
    """Backward time of each way, sampled round-robin after a warm-up round (notebook 03)."""
    check_positive_int("repeats", repeats)
    for way in ways:
        check_choice("way", way, list(WAYS))
    runs = {way: functools.partial(_timed_way_backward, model, way, names, x, y) for way in ways}
    return interleaved_seconds(runs, x.device, min_repeats=repeats, max_repeats=repeats)
