"""Walk, count and draw the backward graph, with the nodes that freezing removes marked."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

if TYPE_CHECKING:
    import graphviz

from autograd_cost.core import LossFn, ModelInput, model_loss
from autograd_cost.freezing import check_unit_names, preserved_state, units


@dataclass(frozen=True)
class BackwardNode:
    """A node of the backward graph, named by type and first-visit index (notebook 01)."""

    name: str
    kind: str
    parameter: str | None  # for AccumulateGrad: the parameter whose .grad it writes
    inputs: tuple[str | None, ...]  # where this node sends gradients; None: no grad needed


def _walk(root: torch.Tensor) -> list[object]:
    """Backward nodes reachable from `root.grad_fn`, depth first, in next_functions order."""
    if root.grad_fn is None:
        return []
    seen: dict[int, object] = {}
    stack = [root.grad_fn]
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen[id(fn)] = fn
        children = [child for child, _ in fn.next_functions if child is not None]
        stack.extend(reversed(children))
    return list(seen.values())


def _stable_names(fns: Sequence[object]) -> dict[int, str]:
    counts: Counter[str] = Counter()
    names = {}
    for fn in fns:
        kind = type(fn).__name__
        names[id(fn)] = f"{kind}#{counts[kind]}"
        counts[kind] += 1
    return names


def backward_nodes(
    output: torch.Tensor, params: dict[str, torch.Tensor] | None = None
) -> list[BackwardNode]:
    """The backward graph of `output` as a list of nodes with stable names (notebook 01)."""
    fns = _walk(output)
    names = _stable_names(fns)
    param_names = {id(p): n for n, p in (params or {}).items()}
    nodes = []
    for fn in fns:
        variable = getattr(fn, "variable", None)
        inputs = tuple(None if c is None else names[id(c)] for c, _ in fn.next_functions)
        parameter = param_names.get(id(variable)) if variable is not None else None
        nodes.append(BackwardNode(names[id(fn)], type(fn).__name__, parameter, inputs))
    return nodes


def node_counts(output: torch.Tensor) -> dict[str, int]:
    """How many backward nodes of each type the graph of `output` holds (notebook 01)."""
    return dict(sorted(Counter(type(fn).__name__ for fn in _walk(output)).items()))


def _needs_grad(fns: Sequence[object], trainable: set[int]) -> set[int]:
    """ids of nodes from which a trainable leaf is reachable: those survive freezing."""
    alive: set[int] = set()
    changed = True
    while changed:  # children mostly come after parents in fns, so walk backwards to a fixpoint
        changed = False
        for fn in reversed(fns):
            if id(fn) in alive:
                continue
            variable = getattr(fn, "variable", None)
            if variable is not None:
                keep = id(variable) in trainable
            else:
                keep = any(id(c) in alive for c, _ in fn.next_functions if c is not None)
            if keep:
                alive.add(id(fn))
                changed = True
    return alive


def removed_nodes(output: torch.Tensor, frozen: Iterable[torch.Tensor]) -> list[str]:
    """Names of the nodes of an unfrozen graph that freezing `frozen` would remove (notebook 01).

    A node survives only if some leaf that still requires grad is reachable from it.
    """
    frozen_ids = {id(p) for p in frozen}
    fns = _walk(output)
    variables = [fn.variable for fn in fns if hasattr(fn, "variable")]
    leaves = {id(v) for v in variables if id(v) not in frozen_ids}
    alive = _needs_grad(fns, leaves)
    names = _stable_names(fns)
    return [names[id(fn)] for fn in fns if id(fn) not in alive]


class GraphPicture:
    """A rendered autograd graph: SVG in Jupyter, a one-line summary in print (notebook 01)."""

    def __init__(
        self,
        dot: graphviz.Digraph,
        summary: str,
        nodes: Sequence[str] = (),
        removed: Iterable[str] = (),
    ) -> None:
        self.dot = dot
        self.summary = summary
        self.nodes = tuple(nodes)  # stable names of every backward node drawn
        self.removed = tuple(removed)  # the names among them drawn dashed

    def kept_counts(self) -> dict[str, int]:
        """The backward nodes drawn solid, by type, as node_counts gives them (notebook 01)."""
        removed = set(self.removed)
        kinds = Counter(name.split("#")[0] for name in self.nodes if name not in removed)
        return dict(sorted(kinds.items()))

    def svg(self) -> str:
        """The SVG text, identical on every run for the same graph."""
        return self.dot.pipe(format="svg", encoding="utf-8")

    def _repr_svg_(self) -> str:
        return self.svg()

    def __repr__(self) -> str:
        return self.summary


_ID_LINE = re.compile(r"^\t(\d+)(?: -> (\d+))?(.*)$", re.DOTALL)
REMOVED_NODE_STYLE = 'style=dashed color=gray60 fontcolor=gray60'
REMOVED_EDGE_STYLE = "style=dashed color=gray60"


def _add_attributes(rest: str, attributes: str) -> str:
    """Add graphviz attributes to the tail of a body line, before its closing bracket."""
    body = rest.rstrip("\n")
    if body.endswith("]"):
        return f"{body[:-1]} {attributes}]\n"
    return f"{body} [{attributes}]\n"


def _deterministic_dot(dot: graphviz.Digraph, removed_ids: set[str]) -> graphviz.Digraph:
    """Rename torchviz's id()-based node names to n0, n1, ... and mark removed ids."""
    mapping: dict[str, str] = {}

    def rename(raw: str) -> str:
        return mapping.setdefault(raw, f"n{len(mapping)}")

    body = []
    for line in dot.body:
        match = _ID_LINE.match(line)
        if match is None:
            body.append(line)
            continue
        source, target, rest = match.groups()
        if target is None:  # a node line: "\t<id> [label=... fillcolor=...]"
            if source in removed_ids:
                rest = _add_attributes(re.sub(r" fillcolor=\w+", "", rest), REMOVED_NODE_STYLE)
            body.append(f"\t{rename(source)}{rest}")
        else:  # an edge line
            edge = f"\t{rename(source)} -> {rename(target)}"
            if source in removed_ids or target in removed_ids:
                rest = _add_attributes(rest, REMOVED_EDGE_STYLE)
            body.append(edge + rest)
    dot.body = body
    return dot


def draw_graph(
    output: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
    frozen: Iterable[torch.Tensor] = (),
) -> GraphPicture:
    """Draw the backward graph with torchviz; nodes freezing removes are dashed (notebook 01).

    `frozen` lists the parameters to treat as frozen. torchviz and graphviz are imported here,
    not at module level, so counting never needs the drawing stack. The SVG is byte-for-byte
    identical on every run.
    """
    frozen = list(frozen)
    fns = _walk(output)
    from torchviz import make_dot  # the drawing stack loads only when a graph is drawn

    dot = make_dot(output, params=params)
    removed = set(removed_nodes(output, frozen)) if frozen else set()
    names = _stable_names(fns)
    removed_ids = {str(id(fn)) for fn in fns if names[id(fn)] in removed}
    removed_ids |= {str(id(p)) for p in frozen}
    kept = len(fns) - len(removed)
    summary = f"autograd graph: {len(fns)} backward nodes"
    if frozen:
        summary += f", {len(removed)} removed by freezing (dashed), {kept} kept"
    ordered = [names[id(fn)] for fn in fns]
    return GraphPicture(
        _deterministic_dot(dot, removed_ids), summary, ordered, [n for n in ordered if n in removed]
    )


def draw_freeze(
    model: nn.Module,
    example_input: ModelInput,
    frozen_units: Sequence[str],
    loss_fn: LossFn | None = None,
) -> GraphPicture:
    """A model's unfrozen graph; what freezing `frozen_units` removes is dashed (notebook 01).

    The model is left exactly as it was.
    """
    check_unit_names(model, frozen_units)
    owned = units(model)
    frozen = [p for name in frozen_units for p in owned[name]]
    with preserved_state(model):
        for param in model.parameters():
            param.requires_grad_(True)
        loss = model_loss(model, example_input, loss_fn)
        return draw_graph(loss, dict(model.named_parameters()), frozen)


def saved_tensors(layer: nn.Module, layer_input: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The tensors one layer's forward saves for backward, by name and shape (notebook 01).

    Recorded with saved_tensors_hooks, in the order autograd saves them. The input is made to
    require grad, as inside a network whose earlier layers train, so the layer's backward node
    exists even when its own parameters are frozen. Each saved tensor is named by the tensor
    whose storage it shares: `input`, `output`, a parameter or buffer (`weight`, ...), or else
    `other` (`other_2`, ... for more) for a tensor computed inside the layer. Views count once.
    The layer is left as it was (requires_grad, .grad, buffers such as BatchNorm statistics).
    """
    if not isinstance(layer, nn.Module):
        raise ValueError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
    if not isinstance(layer_input, torch.Tensor) or not layer_input.is_floating_point():
        raise ValueError("layer_input must be a floating-point torch.Tensor, got "
                         f"{type(layer_input).__name__}")
    inputs = layer_input.detach().clone().requires_grad_(True)
    packed: list[torch.Tensor] = []  # kept alive, so no storage is freed and reused meanwhile

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        packed.append(tensor)
        return tensor

    with preserved_state(layer), saved_tensors_hooks(pack, lambda tensor: tensor):
        output = layer(inputs)
    named = [("input", inputs), *layer.named_parameters(), *layer.named_buffers()]
    if isinstance(output, torch.Tensor):
        named.append(("output", output))
    owners: dict[int, tuple[str, torch.Tensor]] = {}
    for name, tensor in named:
        owners.setdefault(tensor.untyped_storage().data_ptr(), (name, tensor))
    saved: dict[str, tuple[int, ...]] = {}
    seen: set[int] = set()
    for tensor in packed:
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        name, owner = owners.get(key, ("other", tensor))
        if name == "other":
            others = sum(k.startswith("other") for k in saved)
            name = "other" if not others else f"other_{others + 1}"
        saved[name] = tuple(owner.shape)
    return saved
