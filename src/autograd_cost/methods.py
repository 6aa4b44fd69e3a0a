"""The ways to freeze, what each costs, and the bugs each invites (notebook 03)."""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.optim import Optimizer
from torch.utils._pytree import tree_flatten

from autograd_cost.core import ModelInput, run_model
from autograd_cost.cost import (
    _storage_key,
    flop_counter,
    optimizer_state_bytes,
    saved_activation_bytes,
)
from autograd_cost.freezing import preserved_state, units
from autograd_cost.graph import GraphPicture, backward_nodes, draw_graph
from autograd_cost.timing import Timing, interleaved_seconds, timed_backward

# ---------------------------------------------------------------- data


def load_digit_images(count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) floats in [0, 1] and int64 labels (notebook 03)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    if count is not None and (not isinstance(count, int) or not 1 <= count <= len(digits.target)):
        raise ValueError(f"count must be an int in 1..{len(digits.target)} or None, got {count!r}")
    images = torch.tensor(digits.images[:count], dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target[:count], dtype=torch.int64)


# ---------------------------------------------------------------- freeze()


def named_modules_of(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules called `names` in model.named_modules(), with a clear error (notebook 03)."""
    if isinstance(names, str):
        raise TypeError(f"names must be a list of module names, not the string {names!r}")
    if not names:
        raise ValueError("names is empty: name at least one module to freeze")
    modules = {name: module for name, module in model.named_modules() if name}
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"unknown module(s) {unknown}; valid names are {list(modules)}")
    return [modules[name] for name in names]


def parameters_of(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    """The parameters of `modules` and their children, each once, in order (notebook 03)."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for param in module.parameters():
            seen.setdefault(id(param), param)
    return list(seen.values())


def changes_in_eval(module: nn.Module) -> bool:
    """Whether eval mode changes this module's forward on its own (notebook 03).

    True for Dropout layers (all of torch.nn's), RReLU (random slopes in train mode),
    attention and RNN/LSTM/GRU with dropout, and norms that track running statistics
    (BatchNorm, InstanceNorm with track_running_stats=True). LayerNorm, GroupNorm and a norm
    without running statistics compute the same thing in train and eval mode: False.
    Not detected: a spectral-norm parametrization and custom modules that read self.training.
    """
    if isinstance(module, (_DropoutNd, nn.RReLU)):
        return True
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    if isinstance(module, nn.RNNBase):
        return module.dropout > 0 and module.num_layers > 1
    return isinstance(module, _NormBase) and module.track_running_stats


def eval_changes_output(module: nn.Module, example_input: ModelInput) -> bool:
    """Measured: does the module's output differ between train and eval mode (notebook 03)?

    Both forwards run on the same input with the same random seed (fork_rng, so the global
    generator is untouched) and without autograd; modes and buffers are restored after.
    """
    with preserved_state(module), torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        train_out = run_model(module.train(), example_input)
        torch.manual_seed(0)
        eval_out = run_model(module.eval(), example_input)
    pairs = zip(tree_flatten(train_out)[0], tree_flatten(eval_out)[0], strict=True)
    return any(isinstance(a, torch.Tensor) and not torch.equal(a, b) for a, b in pairs)


def eval_mode_examples() -> dict[str, tuple[nn.Module, ModelInput]]:
    """Modules with an example input, to compare train and eval mode (notebook 03)."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 3 + 1

    with torch.random.fork_rng(devices=[]):  # seeded weights, global generator untouched
        torch.manual_seed(0)
        sequence = randn(5, 2, 8)
        return {
            "BatchNorm2d": (nn.BatchNorm2d(4), randn(8, 4, 3, 3)),
            "InstanceNorm2d(track_running_stats=True)": (
                nn.InstanceNorm2d(4, track_running_stats=True),
                randn(8, 4, 3, 3),
            ),
            "InstanceNorm2d (default)": (nn.InstanceNorm2d(4), randn(8, 4, 3, 3)),
            "LayerNorm": (nn.LayerNorm(8), randn(4, 8)),
            "GroupNorm": (nn.GroupNorm(2, 4), randn(8, 4, 3, 3)),
            "Dropout(0.1)": (nn.Dropout(0.1), randn(4, 8)),
            "RReLU": (nn.RReLU(), randn(4, 8)),
            "LSTM(num_layers=2, dropout=0.1)": (nn.LSTM(8, 8, num_layers=2, dropout=0.1), sequence),
            "MultiheadAttention(dropout=0.1)": (
                nn.MultiheadAttention(8, 2, dropout=0.1),
                (sequence, sequence, sequence),
            ),
            "MultiheadAttention(dropout=0.0)": (
                nn.MultiheadAttention(8, 2),
                (sequence, sequence, sequence),
            ),
        }


def eval_candidates(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The modules inside `modules` for which changes_in_eval holds, each once (notebook 03)."""
    seen: dict[int, nn.Module] = {}
    for module in modules:
        for child in module.modules():
            if changes_in_eval(child):
                seen.setdefault(id(child), child)
    return list(seen.values())


def _keep_in_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: a frozen BatchNorm or Dropout runs in eval mode after model.train()."""
    module.train(False)


def _drop_from_groups(optimizer: Optimizer, params: Sequence[nn.Parameter]) -> list[tuple]:
    """Remove `params` from every param group; return (group, old params) pairs to restore."""
    ids = {id(p) for p in params}
    saved = []
    for group in optimizer.param_groups:
        saved.append((group, list(group["params"])))
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    return saved


class Freeze:
    """A freeze that is undone by restore() or by leaving its `with` block (notebook 03).

    Applied when built: requires_grad off and .grad set to None for the parameters of the
    named modules; optionally they leave `optimizer` (param groups and state), and with
    eval_norm=True the layers that eval mode changes (changes_in_eval: BatchNorm running
    statistics, Dropout) run in eval mode, even after a later model.train().
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        optimizer: Optimizer | None = None,
        eval_norm: bool = False,
    ) -> None:
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        modules = named_modules_of(model, names)
        self.params = parameters_of(modules)
        self.eval_modules = eval_candidates(modules) if eval_norm else []
        self._flags = [(p, p.requires_grad, p.grad) for p in self.params]
        self._modes = [(m, m.training) for m in self.eval_modules]
        self._optimizer = optimizer
        self._groups: list[tuple] = []
        self._state: dict = {}
        self._hooks = [m.register_forward_pre_hook(_keep_in_eval) for m in self.eval_modules]
        for param in self.params:
            param.requires_grad_(False)
            param.grad = None
        for module in self.eval_modules:
            module.train(False)
        if optimizer is not None:
            self._groups = _drop_from_groups(optimizer, self.params)
            self._state = {p: optimizer.state.pop(p) for p in self.params if p in optimizer.state}

    @property
    def removed_from_optimizer(self) -> int:
        """How many parameter tensors were taken out of the optimizer's groups."""
        return sum(len(old) - len(group["params"]) for group, old in self._groups)

    def restore(self) -> None:
        """Undo the freeze: flags, grads, modes, hooks, optimizer groups and state."""
        for hook in self._hooks:
            hook.remove()
        for param, flag, grad in self._flags:
            param.requires_grad_(flag)
            param.grad = grad
        for module, training in self._modes:
            module.train(training)
        for group, old in self._groups:
            group["params"] = old
        if self._optimizer is not None:
            self._optimizer.state.update(self._state)
        self._hooks, self._groups, self._state = [], [], {}
        self._flags, self._modes, self._optimizer = [], [], None  # a second restore is a no-op

    def __enter__(self) -> Freeze:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def freeze(
    model: nn.Module,
    names: Sequence[str],
    optimizer: Optimizer | None = None,
    eval_norm: bool = False,
) -> Freeze:
    """Freeze the named modules now; `with freeze(...)` restores everything after (notebook 03)."""
    return Freeze(model, names, optimizer=optimizer, eval_norm=eval_norm)


# ---------------------------------------------------------------- memory


def grad_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters' .grad tensors; None costs nothing (notebook 03)."""
    return sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)


def grad_state(params: Sequence[torch.Tensor]) -> str:
    """'None' if no parameter has a .grad, 'zero' if all are zero, else 'non-zero' (notebook 03)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return "None"
    return "non-zero" if any(bool(g.any()) for g in grads) else "zero"


def grad_status(model: nn.Module) -> dict[str, str]:
    """grad_state of each unit (module owning parameters), by unit name (notebook 03)."""
    return {name: grad_state(params) for name, params in units(model).items()}


def snapshot(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of `tensors`, to measure later changes (notebook 03)."""
    return [t.detach().clone() for t in tensors]


def max_abs_change(tensors: Sequence[torch.Tensor], before: Sequence[torch.Tensor]) -> float:
    """The largest absolute change of any element since `before` was taken (notebook 03)."""
    changes = [(t.detach() - b).abs().max().item() for t, b in zip(tensors, before, strict=True)]
    return max(changes, default=0.0)


def running_stats(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    """The floating-point buffers (running mean and var) inside `modules` (notebook 03)."""
    return [b for m in modules for b in m.buffers() if b.is_floating_point()]


# ---------------------------------------------------------------- no_grad / inference_mode

DETACH_HOWS = ("no_grad", "inference_mode", "detach")


def _context(how: str):
    if how == "no_grad":
        return torch.no_grad()
    if how == "inference_mode":
        return torch.inference_mode()
    return nullcontext()


class PartlyDetached(nn.Module):
    """Run a Sequential with the named children under no_grad, inference_mode or detached.

    Taught in notebook 03. Consecutive named children run as one section; inference tensors
    are cloned on the way out, since autograd may not save them for backward.
    """

    def __init__(self, model: nn.Sequential, names: Sequence[str], how: str = "no_grad") -> None:
        super().__init__()
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"PartlyDetached needs an nn.Sequential, got {type(model).__name__}")
        if how not in DETACH_HOWS:
            raise ValueError(f"unknown how {how!r}; valid values are {list(DETACH_HOWS)}")
        children = [name for name, _ in model.named_children()]
        named_modules_of(model, names)
        not_children = [name for name in names if name not in children]
        if not_children:
            raise ValueError(f"{not_children} are not direct children; valid are {children}")
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
    """Bytes saved for backward, by the child module that saved them first (notebook 03).

    `by_child` has one entry per child, in order, then 'loss'; `held` counts the bytes that
    the graph still holds when the forward and the loss are done.
    """

    by_child: dict[str, int]
    held: int

    @property
    def total(self) -> int:
        """All bytes saved during the forward, as saved_activation_bytes counts them."""
        return sum(self.by_child.values())


def saved_bytes_by_child(
    net: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> SavedBytes:
    """Saved-for-backward bytes of one forward, per child, and those still held (notebook 03).

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

    def unpack(holder: _Packed) -> torch.Tensor:
        return holder.tensor

    def entering(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            current[0] = name

        return hook

    hooks = [
        child.register_forward_pre_hook(entering(name)) for name, child in inner.named_children()
    ]
    try:
        with preserved_state(net), saved_tensors_hooks(pack, unpack):
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


def format_saved_by_child(columns: dict[str, SavedBytes]) -> str:
    """saved_bytes_by_child results side by side, in bytes; all-zero rows left out (notebook 03).

    The columns should come from the same model, so that their children line up.
    """
    names = [
        n
        for n in next(iter(columns.values())).by_child
        if any(s.by_child.get(n, 0) for s in columns.values())
    ]
    width = max(12, *(len(title) for title in columns))
    header = f"{'saved by':<10}" + "".join(f"{title:>{width + 2}}" for title in columns)
    lines = [header, "-" * len(header)]
    for name in names:
        cells = "".join(f"{s.by_child.get(name, 0):>{width + 2},}" for s in columns.values())
        lines.append(f"{name:<10}" + cells)
    lines.append("-" * len(header))
    lines.append(f"{'total':<10}" + "".join(f"{s.total:>{width + 2},}" for s in columns.values()))
    lines.append(f"{'held':<10}" + "".join(f"{s.held:>{width + 2},}" for s in columns.values()))
    return "\n".join(lines)


# ---------------------------------------------------------------- the six ways

WAYS = OrderedDict(
    a="requires_grad_(False)",
    b="left out of the optimizer",
    c="no_grad() on the frozen part",
    d="inference_mode() on the frozen part",
    e="eval() on the frozen part",
    f="lr=0 param group",
)
WAYS["a+e"] = "freeze(..., eval_norm=True)"


def _check_way(way: str) -> None:
    if way not in WAYS:
        raise ValueError(f"unknown way {way!r}; valid ways are {list(WAYS)}")


def _split(model: nn.Module, names: Sequence[str]) -> tuple[list, list]:
    frozen = parameters_of(named_modules_of(model, names))
    frozen_ids = {id(p) for p in frozen}
    return frozen, [p for p in model.parameters() if id(p) not in frozen_ids]


def _build_way(
    model: nn.Module, way: str, names: Sequence[str], lr: float, stack: ExitStack
) -> tuple[nn.Module, Optimizer]:
    """The network to call and the Adam optimizer that a way uses."""
    frozen, trainable = _split(model, names)
    if way in ("a", "a+e"):
        stack.enter_context(freeze(model, names, eval_norm=way == "a+e"))
    if way == "e":
        for module in named_modules_of(model, names):
            module.eval()
    if way == "b":
        return model, torch.optim.Adam(trainable, lr=lr)
    if way == "f":
        groups = [{"params": trainable}, {"params": frozen, "lr": 0.0}]
        return model, torch.optim.Adam(groups, lr=lr)
    if way in ("c", "d"):
        how = "no_grad" if way == "c" else "inference_mode"
        return PartlyDetached(model, names, how), torch.optim.Adam(model.parameters(), lr=lr)
    return model, torch.optim.Adam(model.parameters(), lr=lr)


@contextmanager
def way_setup(
    model: nn.Module, way: str, names: Sequence[str], lr: float = 1e-3
) -> Iterator[tuple[nn.Module, Optimizer]]:
    """(network, Adam) freezing `names` one way; the model is restored after (notebook 03).

    Every parameter starts trainable with .grad None; values, flags, grads, modes and
    buffers come back, so optimizer steps inside the block leave no trace.
    """
    _check_way(way)
    params = list(model.parameters())
    values = snapshot(params)
    try:
        with preserved_state(model), ExitStack() as stack:
            for param in params:
                param.requires_grad_(True)
            yield _build_way(model, way, names, lr, stack)
    finally:
        with torch.no_grad():
            for param, value in zip(params, values, strict=True):
                param.copy_(value)


def classification_loss(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cross-entropy of the model output against `target` (notebook 03)."""
    return lambda output: F.cross_entropy(output, target)


@dataclass(frozen=True)
class WayRow:
    """What one training step costs and changes under one way of freezing (notebook 03)."""

    way: str
    grads: dict[str, str]
    graph_nodes: int
    backward_flops: int
    saved_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    frozen_weight_change: float
    running_stats_change: float
    optimizer_tensors: int  # parameter tensors the way's Adam was given
    state_tensors: int  # parameter tensors with Adam state after the step


def measure_way(
    model: nn.Module, way: str, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> WayRow:
    """One Adam step on (x, y) under a way of freezing, measured (notebook 03)."""
    loss_fn = classification_loss(y)
    with way_setup(model, way, names) as (net, optimizer):
        saved = saved_activation_bytes(net, x, loss_fn)
        modules = named_modules_of(model, names)
        frozen, stats = parameters_of(modules), running_stats(modules)
        weights_before, stats_before = snapshot(frozen), snapshot(stats)
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
            grad_bytes=grad_bytes(model),
            optimizer_state_bytes=optimizer_state_bytes(optimizer),
            frozen_weight_change=max_abs_change(frozen, weights_before),
            running_stats_change=max_abs_change(stats, stats_before),
            optimizer_tensors=sum(len(group["params"]) for group in optimizer.param_groups),
            state_tensors=len(optimizer.state),
        )


def compare_ways(
    model: nn.Module,
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    ways: Sequence[str] = tuple(WAYS),
) -> list[WayRow]:
    """measure_way for each way, each from the same starting model (notebook 03)."""
    return [measure_way(model, way, names, x, y) for way in ways]


def draw_way(
    model: nn.Module, way: str, names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> GraphPicture:
    """The full graph, with the nodes this way never builds dashed (notebook 03).

    Dashed nodes lead only to parameters that end the way's backward with .grad None.
    """
    loss_fn = classification_loss(y)
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
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    for way in ways:
        _check_way(way)
    runs = {way: functools.partial(_timed_way_backward, model, way, names, x, y) for way in ways}
    return interleaved_seconds(runs, x.device, min_repeats=repeats, max_repeats=repeats)


def verdict(row: WayRow, cheapest_flops: int) -> str:
    """A one-phrase verdict on a measured row (notebook 03)."""
    if row.frozen_weight_change > 0:
        return "not a freeze: weights move"
    if row.backward_flops > cheapest_flops:
        return "frozen, but full backward cost"
    if row.running_stats_change > 0:
        return "cheap, but BN stats drift"
    return "cheap and fully frozen"


def format_ways(rows: Sequence[WayRow], verdicts: bool = True) -> str:
    """The deterministic cost table of compare_ways rows, with a verdict column (notebook 03)."""
    cheapest = min(r.backward_flops for r in rows)
    header = (
        f"{'way':<4} {'how':<36} {'bwd MFLOP':>9} {'saved KiB':>9} {'.grad KiB':>9} "
        f"{'Adam KiB':>8} {'weights':>7} {'BN stats':>8}"
    )
    header += "  verdict" if verdicts else ""
    lines = [header, "-" * len(header)]
    for r in rows:
        line = (
            f"{r.way:<4} {WAYS[r.way]:<36} {r.backward_flops / 1e6:>9.2f} "
            f"{r.saved_bytes / 1024:>9.1f} {r.grad_bytes / 1024:>9.1f} "
            f"{r.optimizer_state_bytes / 1024:>8.1f} {_moved(r.frozen_weight_change):>7} "
            f"{_moved(r.running_stats_change):>8}"
        )
        lines.append(line + (f"  {verdict(r, cheapest)}" if verdicts else ""))
    return "\n".join(lines)


def _moved(change: float) -> str:
    return "moved" if change > 0 else "kept"


def format_grad_table(rows: Sequence[WayRow]) -> str:
    """Per way, each unit's .grad after the step: None, zero or non-zero (notebook 03)."""
    unit_names = list(rows[0].grads)
    header = f"{'way':<4} " + " ".join(f"{name:>9}" for name in unit_names)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.way:<4} " + " ".join(f"{r.grads[n]:>9}" for n in unit_names))
    return "\n".join(lines)


# ---------------------------------------------------------------- training, for the bugs


def train_steps(
    net: nn.Module,
    optimizer: Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    set_to_none: bool = True,
) -> list[float]:
    """Minibatch steps on consecutive slices of (x, y), wrapping around; the losses (notebook 03).

    set_to_none=False zeroes grads in place, PyTorch's zero_grad default before 2.0.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= len(x):
        raise ValueError(f"batch_size must be an int in 1..{len(x)}, got {batch_size!r}")
    losses = []
    for step in range(steps):
        start = (step * batch_size) % (len(x) - batch_size + 1)
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = F.cross_entropy(net(x[start : start + batch_size]), y[start : start + batch_size])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


OPTIMIZERS = {
    "SGD": lambda params: torch.optim.SGD(params, lr=0.05),
    "SGD+momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "AdamW": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}
DRIFT_FIXES = ("none (zero grads)", "grads set to None", "dropped from optimizer")


def frozen_drift(
    build: Callable[[], nn.Module],
    optimizer_name: str,
    fix: str,
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 10,
) -> float:
    """Train, freeze `names` mid-way, train on: how far do the frozen weights move (notebook 03)?

    The freeze sets requires_grad=False; the fix decides what happens to grads and optimizer.
    The model is built on x's device.
    """
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer_name!r}; valid are {list(OPTIMIZERS)}")
    if fix not in DRIFT_FIXES:
        raise ValueError(f"unknown fix {fix!r}; valid fixes are {list(DRIFT_FIXES)}")
    model = build().to(x.device)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    train_steps(model, optimizer, x, y, steps)
    frozen = parameters_of(named_modules_of(model, names))
    if fix == "dropped from optimizer":
        freeze(model, names, optimizer=optimizer)
    for param in frozen:
        param.requires_grad_(False)
        if fix == "none (zero grads)":
            param.grad = torch.zeros_like(param)
    before = snapshot(frozen)
    train_steps(model, optimizer, x, y, steps, set_to_none=fix != "none (zero grads)")
    return max_abs_change(frozen, before)


def lr0_group_drift(
    build: Callable[[], nn.Module],
    names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    max_lr: float | list[float],
    steps: int = 5,
) -> tuple[float, float]:
    """Way f under OneCycleLR: (the lr=0 group's lr once it is built, frozen drift) (notebook 03).

    Adam(lr=0.01) gets the trainable parameters and an lr=0 group with the named modules'
    parameters; OneCycleLR(max_lr) sets every group's lr, then `steps` training steps run.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    model = build().to(x.device)
    frozen, trainable = _split(model, names)
    groups = [{"params": trainable}, {"params": frozen, "lr": 0.0}]
    optimizer = torch.optim.Adam(groups, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=steps + 1)
    lr = optimizer.param_groups[1]["lr"]
    before = snapshot(frozen)
    for _ in range(steps):
        train_steps(model, optimizer, x, y, 1)
        scheduler.step()
    return lr, max_abs_change(frozen, before)


# ---------------------------------------------------------------- the forum's models


def forum_mlp(seed: int = 0) -> nn.Sequential:
    """Three Linear layers 10→20→10→5 with ReLUs, as in the forum answer (notebook 03)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            layer1=nn.Linear(10, 20),
            relu1=nn.ReLU(),
            layer2=nn.Linear(20, 10),
            relu2=nn.ReLU(),
            layer3=nn.Linear(10, 5),
        )
    )


def forum_cnn(seed: int = 0) -> nn.Sequential:
    """Two Conv+ReLU+pool blocks on 3x28x28, two Linear layers: the forum answer's (notebook 03)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 7 * 7, 128),
            relu3=nn.ReLU(),
            fc2=nn.Linear(128, 10),
        )
    )
