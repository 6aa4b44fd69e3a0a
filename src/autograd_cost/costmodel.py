"""A per-op cost model: roofline (compute or memory traffic) plus a per-op overhead.

Every op of forward and backward is recorded with a TorchDispatchMode, the mechanism
FlopCounterMode uses: its FLOPs (the course's counter registry, attention included), the
bytes of its tensor inputs and outputs, and the module that ran it (torch's ModuleTracker,
which follows modules into backward). An op is predicted to take

    max(FLOPs / matmul rate, bytes / bandwidth) + overhead per op

and a pass the sum over its ops. The rate and the bandwidth depend on the op's class
(`op_class`): matrix products, convolutions and attention reach different FLOP rates, and
plain elementwise ops, normalizations, transcendental ops and gathers reach different
bandwidths. Each class's constant is calibrated on this machine by a micro-benchmark of that
class, timed with the course's round-robin timer (`calibrate`), once per session.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.module_tracker import ModuleTracker

from autograd_cost.core import LossFn, ModelInput, model_loss, pick_device
from autograd_cost.cost import flop_counter
from autograd_cost.freezing import frozen_state
from autograd_cost.timing import interleaved_seconds, timed_backward

PHASES = ("forward", "backward")

# Op classes: the compute classes get a FLOP rate, the memory classes a bandwidth.
COMPUTE_CLASSES = ("matmul", "convolution", "attention")
MEMORY_CLASSES = ("elementwise", "normalization", "transcendental", "gather")
_CLASS_OPS = {
    "matmul": ("mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "dot", "mv"),
    "convolution": ("convolution", "convolution_backward", "_convolution",
                    "mkldnn_convolution", "cudnn_convolution"),
    "normalization": ("native_batch_norm", "native_batch_norm_backward",
                      "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
                      "native_layer_norm", "native_layer_norm_backward",
                      "native_group_norm", "native_group_norm_backward"),
    "transcendental": ("gelu", "gelu_backward", "tanh", "tanh_backward", "sigmoid",
                       "sigmoid_backward", "exp", "log", "erf", "silu", "silu_backward",
                       "_softmax", "_softmax_backward_data", "_log_softmax",
                       "_log_softmax_backward_data"),
    "gather": ("embedding", "embedding_dense_backward", "index_select", "index_add",
               "gather", "scatter_add", "nll_loss_forward", "nll_loss_backward"),
}
_ALIASING_OPS = ("_unsafe_view", "detach", "alias", "lift_fresh")  # no data moved


def op_class(op: str) -> str:
    """The cost class of an aten op name: a compute class or a memory class."""
    if "scaled_dot_product" in op or op.startswith("_flash_attention"):
        return "attention"
    return next((name for name, ops in _CLASS_OPS.items() if op in ops), "elementwise")


@dataclass(frozen=True)
class OpRecord:
    """One op as dispatched (phase, module, FLOPs, bytes read + written), or with kind
    "node" one autograd node that the backward runs (its name; no FLOPs or bytes)."""

    op: str
    phase: str
    module: str
    flops: int
    bytes: int
    kind: str = "op"


def _tensor_bytes(values: object) -> int:
    flat, _ = tree_flatten(values)
    return sum(v.numel() * v.element_size() for v in flat if isinstance(v, torch.Tensor))


def _innermost(parents: set[str]) -> str:
    """The deepest module name ModuleTracker reports, without the root's class name."""
    named = sorted((p for p in parents if p != "Global"), key=lambda p: p.count("."))
    if not named:
        return ""
    return named[-1].partition(".")[2] if "." in named[-1] else ""


class _OpRecorder(TorchDispatchMode):
    """Records every non-view op with its FLOPs, bytes and module."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.phase = "forward"
        self.records: list[OpRecord] = []
        self.registry = flop_counter().flop_registry  # the course counter's, attention included

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        packet = func.overloadpacket
        formula = self.registry.get(packet)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        self.records.append(OpRecord(
            op=str(packet).removeprefix("aten."), phase=self.phase,
            module=_innermost(self.tracker.parents), flops=flops,
            bytes=0 if str(packet).removeprefix("aten.") in _ALIASING_OPS
            else _tensor_bytes((args, kwargs)) + _tensor_bytes(out)))
        return out


def record_ops(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
) -> list[OpRecord]:
    """Every op of one forward and backward, with FLOPs, bytes and module (notebook 10).

    `frozen` as in `cost.count_flops`: None for the model as configured, or exactly these
    units frozen. The model is restored afterwards.
    """
    tracker = ModuleTracker()
    nodes: list[OpRecord] = []
    with frozen_state(model, frozen), tracker:
        recorder = _OpRecorder(tracker)
        with recorder:
            loss = model_loss(model, example_input, loss_fn)
            recorder.phase = "backward"
            if loss.requires_grad:
                nodes = [OpRecord(name, "backward", "", 0, 0, "node")
                         for name in _graph_nodes(loss)]
                loss.backward()
    return recorder.records + nodes


def _graph_nodes(loss: torch.Tensor) -> list[str]:
    """The names of the autograd nodes a backward from `loss` runs, AccumulateGrad included."""
    seen, names, stack = set(), [], [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.append(node.name())
        stack.extend(child for child, _ in node.next_functions)
    return names


def records_table(records: Sequence[OpRecord], phase: str = "backward") -> pd.DataFrame:
    """One phase's ops as a table: op, class, module, FLOPs, bytes, FLOPs/byte (notebook 10)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; valid phases are {list(PHASES)}")
    rows = [{"op": r.op, "class": op_class(r.op), "module": r.module, "FLOPs": r.flops,
             "bytes": r.bytes, "FLOPs per byte": round(r.flops / r.bytes, 1) if r.bytes else 0.0}
            for r in records if r.phase == phase and r.kind == "op"]
    return pd.DataFrame(rows, columns=["op", "class", "module", "FLOPs", "bytes",
                                       "FLOPs per byte"])


@dataclass(frozen=True)
class MachineConstants:
    """The cost model's constants on this machine: rates per op class and the per-op overhead.

    `flops_per_second` is the matmul rate and `bytes_per_second` the elementwise bandwidth;
    `class_rates` holds the other classes' rates (FLOP/s for COMPUTE_CLASSES, bytes/s for
    MEMORY_CLASSES). A class it lacks falls back to the matmul rate or the elementwise bandwidth.
    """

    flops_per_second: float
    bytes_per_second: float
    seconds_per_op: float
    class_rates: Mapping[str, float] = field(default_factory=dict)
    seconds_per_node: float = 0.0  # the autograd engine's cost per node, beyond its ops
    seconds_per_backward: float = 0.0  # a backward call's fixed cost, beyond its nodes

    def rate(self, cls: str) -> float:
        """FLOP/s of a compute class, or bytes/s of a memory class."""
        if cls not in COMPUTE_CLASSES + MEMORY_CLASSES:
            raise ValueError(f"unknown op class {cls!r}; valid classes are "
                             f"{list(COMPUTE_CLASSES + MEMORY_CLASSES)}")
        fallback = self.flops_per_second if cls in COMPUTE_CLASSES else self.bytes_per_second
        return {"matmul": self.flops_per_second, "elementwise": self.bytes_per_second,
                **self.class_rates}.get(cls, fallback)

    def table(self) -> pd.DataFrame:
        """One row per op class: bound by FLOPs or bytes, its rate (notebook 10)."""
        return pd.DataFrame(
            [{"op class": cls, "bound by": "FLOPs" if cls in COMPUTE_CLASSES else "bytes",
              "rate": self.rate(cls) / 1e9,
              "unit": "GFLOP/s" if cls in COMPUTE_CLASSES else "GB/s"}
             for cls in COMPUTE_CLASSES + MEMORY_CLASSES])

    def __str__(self) -> str:
        compute = ", ".join(f"{c} {self.rate(c) / 1e9:.1f}" for c in COMPUTE_CLASSES)
        memory = ", ".join(f"{c} {self.rate(c) / 1e9:.1f}" for c in MEMORY_CLASSES)
        return (f"GFLOP/s: {compute}; GB/s: {memory}; overhead "
                f"{self.seconds_per_op * 1e6:.1f} µs per op, "
                f"{self.seconds_per_node * 1e6:.1f} µs per autograd node, "
                f"{self.seconds_per_backward * 1e6:.0f} µs per backward call")


CALIBRATION_MATMUL = (128, 1024, 1024)  # (n, k, m): a batch of 128 through a 1024-wide layer
CALIBRATION_ELEMENTS = 1 << 18  # an elementwise op over 256 Ki float32 values (1 MiB each)


def _backward_of(forward: Callable[..., torch.Tensor], *inputs: torch.Tensor):
    """A call that runs only the backward op(s) of `forward` at `inputs` (graph kept)."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    out = forward(*leaves)
    grad = torch.ones_like(out)
    wanted = [t for t in leaves if t.requires_grad]
    return lambda: torch.autograd.grad(out, wanted, grad, retain_graph=True)


def _calibration_runs(device: torch.device) -> dict[str, Callable[[], object]]:
    """One micro-benchmark per op class, plus a 1-element op for the per-op overhead."""
    n, k, m = CALIBRATION_MATMUL
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device)

    a, b, x, y = randn(n, k), randn(k, m), randn(CALIBRATION_ELEMENTS), randn(CALIBRATION_ELEMENTS)
    out, tiny = torch.empty_like(x), torch.ones(1, device=device)
    shallow, deep, stack_input = _linear_stack(1, device), _linear_stack(16, device), randn(8, 8)
    tokens = torch.randint(0, 64, (32, 64), generator=generator).to(device)
    return {
        "matmul": lambda: torch.mm(a, b),
        "convolution": _backward_of(lambda i, w: F.conv2d(i, w, padding=1),
                                    randn(32, 32, 16, 16), randn(32, 32, 3, 3)),
        "attention": _backward_of(F.scaled_dot_product_attention,
                                  randn(16, 4, 64, 16), randn(16, 4, 64, 16), randn(16, 4, 64, 16)),
        "elementwise": lambda: torch.add(x, y, out=out),
        "normalization": _backward_of(lambda i, w, c: F.layer_norm(i, (128,), w, c),
                                      randn(2048, 128), randn(128), randn(128)),
        "transcendental": _backward_of(F.gelu, randn(1 << 18)),
        "gather": _backward_of(F.embedding, tokens, randn(64, 128)),
        "tiny": lambda: torch.add(tiny, tiny),
        "backward, 1 layer": lambda: _small_backward(shallow, stack_input, device),
        "backward, 16 layers": lambda: _small_backward(deep, stack_input, device),
    }


def _linear_stack(layers: int, device: torch.device) -> nn.Sequential:
    """`layers` Linear(8, 8) in a row: a backward of tiny ops, mostly overhead."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(*(nn.Linear(8, 8) for _ in range(layers))).to(device)


def _small_backward(model: nn.Module, model_input: torch.Tensor, device: torch.device):
    """Seconds of one backward through `model`, after an untimed forward."""
    loss = model(model_input).sum()
    for param in model.parameters():
        param.grad = None
    return timed_backward(loss, device)


def _recorded(run: Callable[[], object]) -> list[OpRecord]:
    """The ops one call of `run` dispatches, with FLOPs and bytes."""
    with ModuleTracker() as tracker, _OpRecorder(tracker) as recorder:
        run()
    return recorder.records


@functools.cache
def _calibrate(device: torch.device) -> MachineConstants:
    runs = _calibration_runs(device)
    timings = interleaved_seconds(runs, device, calls_per_sample=20, min_repeats=7,
                                  max_repeats=15, max_seconds=3.0)
    overhead = timings["tiny"].median

    def rate(cls: str, fixed: float = 0.0) -> float:
        """The class's work per second, after `fixed` seconds and one overhead per op."""
        records = _recorded(runs[cls])
        work = sum(r.flops if cls in COMPUTE_CLASSES else r.bytes for r in records)
        return work / max(timings[cls].median - fixed - len(records) * overhead, 1e-9)

    # 1. Plain ops: the matmul rate and the elementwise bandwidth.
    constants = MachineConstants(rate("matmul"), rate("elementwise"), overhead)
    # 2. The engine's cost per node and per call, from two Linear stacks (matmul, elementwise).
    stack_input = torch.ones(8, 8, device=device)
    beyond_ops, nodes = [], []  # measured backward time less the ops' predicted time
    for layers in (1, 16):
        records = record_ops(_linear_stack(layers, device), stack_input)
        beyond_ops.append(timings[f"backward, {layers} layer{'s' * (layers > 1)}"].median
                          - predict_seconds(records, constants).seconds)
        nodes.append(sum(r.kind == "node" for r in records))
    per_node = max((beyond_ops[1] - beyond_ops[0]) / (nodes[1] - nodes[0]), 0.0)
    call = max(beyond_ops[0] - nodes[0] * per_node, 0.0)
    # 3. The classes timed through one autograd node: less the call and that node.
    others = [c for c in COMPUTE_CLASSES + MEMORY_CLASSES if c not in ("matmul", "elementwise")]
    return dataclasses.replace(constants, seconds_per_node=per_node, seconds_per_backward=call,
                               class_rates={c: rate(c, call + per_node) for c in others})


def uncached_calibration(device: str | torch.device | None = None) -> MachineConstants:
    """Calibrate anew, bypassing the session cache: two runs show the constants' spread."""
    return _calibrate.__wrapped__(pick_device(device))


def calibrate(device: str | torch.device | None = None) -> MachineConstants:
    """Time one micro-benchmark per op class and a tiny op; cached per session (notebook 10).

    Micro-benchmarks, not a fit, each the median of round-robin rounds. Compute classes: a
    128x1024 @ 1024x1024 mm, the backward of a 3x3 convolution (32 channels, 16x16) and of
    attention (64 tokens). Memory classes: adding two 256 Ki-element float32 tensors, the
    backward of layer norm (2048 x 128), of GELU and of an embedding. The per-op overhead is
    the time of one op on a 1-element tensor (dispatch overhead). A backward also costs time
    beyond its ops, per autograd node and per call: both come from the backward of 1 and of
    16 Linear(8, 8) layers in a row, less what their ops are predicted to take (the
    difference per extra node, and what is left of the 1-layer backward). Each rate is the
    work the op recorder counts (FLOPs or bytes) over the time, less one overhead per op,
    and for the classes timed through autograd, less one call and one node.
    """
    return _calibrate(pick_device(device))


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds of a pass, split into compute, memory traffic and overhead."""

    compute_seconds: float
    memory_seconds: float
    overhead_seconds: float
    ops: int
    nodes: int = 0

    @property
    def seconds(self) -> float:
        """The predicted total: compute-bound + memory-bound + overhead seconds."""
        return self.compute_seconds + self.memory_seconds + self.overhead_seconds


def predict_seconds(records: Sequence[OpRecord], constants: MachineConstants,
                    phase: str = "backward") -> Prediction:
    """Sum over one phase's ops of max(FLOPs / rate, bytes / bandwidth) + overhead.

    A compute-class op uses its class's FLOP rate and the elementwise bandwidth; a
    memory-class op uses its class's bandwidth (its FLOPs are not counted). The overhead is
    one per op and one per autograd node, plus one per backward call if the backward runs.
    """
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; valid phases are {list(PHASES)}")
    compute = memory = 0.0
    ops = [r for r in records if r.phase == phase and r.kind == "op"]
    nodes = sum(r.phase == phase and r.kind == "node" for r in records)
    for record in ops:
        cls = op_class(record.op)
        if cls in COMPUTE_CLASSES:
            compute_time = record.flops / constants.rate(cls)
            memory_time = record.bytes / constants.bytes_per_second
        else:
            compute_time, memory_time = 0.0, record.bytes / constants.rate(cls)
        if compute_time >= memory_time:
            compute += compute_time
        else:
            memory += memory_time
    overhead = len(ops) * constants.seconds_per_op + nodes * constants.seconds_per_node
    if phase == "backward" and (ops or nodes):
        overhead += constants.seconds_per_backward
    return Prediction(compute, memory, overhead, len(ops), nodes)


def predict_backward_seconds(
    model: nn.Module,
    example_input: ModelInput,
    loss_fn: LossFn | None = None,
    frozen: Sequence[str] | None = None,
    constants: MachineConstants | None = None,
) -> Prediction:
    """Predicted backward seconds of a model under a freeze, from its ops (notebook 10)."""
    device = next(model.parameters()).device
    records = record_ops(model, example_input, loss_fn, frozen)
    return predict_seconds(records, constants or calibrate(device), "backward")
