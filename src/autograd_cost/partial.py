"""Freeze part of a weight tensor: torch.cat rebuild, gradient mask, split blocks (notebook 04).

Four ways to keep some rows of a Linear's weight fixed while the rest trains:

- `cat_freeze`: the forum question's design, corrected. The model is traced with torch.fx and
  each chosen Linear becomes a `CatLinear`, which rebuilds the full weight with torch.cat of a
  frozen buffer and a trainable parameter on every call. The full weight gradient is still
  computed, then sliced.
- `hook_freeze`: a gradient hook zeroes the frozen rows of the full weight's gradient.
- `split_freeze`: each chosen Linear becomes a `SplitLinear`, which multiplies the frozen block
  and the trainable block separately, so the frozen block's weight gradient is never computed.
- `whole_freeze`: the whole weight tensor is frozen, for reference.

A freeze plan maps a Linear's name to the number of leading rows to freeze, like the
question's list of split indices. Every builder returns a new model and leaves its input alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from autograd_cost.core import LossFn, model_loss
from autograd_cost.freezing import preserved_state
from autograd_cost.timing import median_ratio, summarize_times

AXES = ("rows", "cols")
FreezePlan = Mapping[str, int]


# ------------------------------------------------------------------ the question's network


class QuestionNet(nn.Module):
    """The forum question's network: Linear layers with functional ReLUs between (notebook 04)."""

    def __init__(self, in_features: int, widths: Sequence[int], out_features: int) -> None:
        super().__init__()
        sizes = [in_features, *widths, out_features]
        self.names = [f"linear{i}" for i in range(1, len(sizes))]
        for name, n_in, n_out in zip(self.names, sizes[:-1], sizes[1:], strict=True):
            setattr(self, name, nn.Linear(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names[:-1]:
            x = F.relu(getattr(self, name)(x))
        return getattr(self, self.names[-1])(x)


def question_net(
    in_features: int = 4,
    widths: Sequence[int] = (3, 3, 2),
    out_features: int = 2,
    seed: int = 2,
) -> QuestionNet:
    """The question's network (hidden widths 3, 3, 2 by default), seeded (notebook 04).

    The default seed leaves no ReLU dead on `question_batch()`: at width 2 or 3 many seeds do,
    and a dead unit's weight row never gets a gradient, whatever is frozen.
    """
    sizes = [in_features, *widths, out_features]
    bad = [s for s in sizes if not isinstance(s, int) or isinstance(s, bool) or s < 1]
    if bad or not widths:
        raise ValueError(
            f"in_features, widths and out_features must be positive ints and widths non-empty, "
            f"got in_features={in_features!r}, widths={tuple(widths)!r}, "
            f"out_features={out_features!r}"
        )
    torch.manual_seed(seed)
    return QuestionNet(in_features, widths, out_features)


def question_batch(
    batch: int = 20, in_features: int = 4, classes: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded (inputs, class targets) batch for the question's network (notebook 04)."""
    sizes = {"batch": batch, "in_features": in_features, "classes": classes}
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"batch, in_features and classes must be positive ints, got {bad}")
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, in_features, generator=generator)
    return inputs, torch.randint(classes, (batch,), generator=generator)


# ------------------------------------------------------------------ index checks


def _check_indices(indices: int | Sequence[int], size: int, axis: str) -> list[int]:
    """Sorted frozen indices from a count (leading block) or an explicit list."""
    if isinstance(indices, bool):
        raise TypeError(f"frozen_{axis} must be an int or a sequence of ints, got a bool")
    if isinstance(indices, int):
        if not 0 < indices < size:
            raise ValueError(
                f"frozen_{axis}={indices} must leave both blocks non-empty: valid counts are "
                f"1..{size - 1} for {size} {axis} (freeze the whole tensor with "
                f"requires_grad_(False) instead)"
            )
        return list(range(indices))
    chosen = sorted(set(indices))
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in chosen):
        raise TypeError(f"frozen_{axis} must hold ints, got {list(indices)!r}")
    outside = [i for i in chosen if not 0 <= i < size]
    if outside:
        raise ValueError(f"frozen_{axis} {outside} out of range; valid indices are 0..{size - 1}")
    if len(chosen) != len(indices):
        raise ValueError(f"frozen_{axis} has repeated indices: {list(indices)!r}")
    if not 0 < len(chosen) < size:
        raise ValueError(
            f"frozen_{axis} must leave both blocks non-empty: got {len(chosen)} of {size} {axis}"
        )
    return chosen


def _as_range(indices: Sequence[int]) -> tuple[int, int] | None:
    """(start, stop) when the indices are one contiguous run, else None."""
    start, stop = indices[0], indices[0] + len(indices)
    return (start, stop) if list(indices) == list(range(start, stop)) else None


def _take(tensor: torch.Tensor, indices: torch.Tensor, run: tuple[int, int] | None, dim: int):
    """A view of a contiguous run along `dim`, else an index_select copy."""
    if run is not None:
        return tensor.narrow(dim, run[0], run[1] - run[0])
    return tensor.index_select(dim, indices)


# ------------------------------------------------------------------ the split design


class SplitLinear(nn.Module):
    """A Linear whose weight is a frozen block and a trainable block, multiplied separately.

    Taught in notebook 04. With axis="rows" the frozen block is a set of output features,
    with axis="cols" a set of input features. The frozen block is a buffer, so no optimizer
    sees it and autograd never computes its weight gradient. The bias stays trainable.
    """

    def __init__(self, linear: nn.Linear, frozen: Sequence[int], axis: str) -> None:
        super().__init__()
        if axis not in AXES:
            raise ValueError(f"axis must be one of {list(AXES)}, got {axis!r}")
        self.axis = axis
        self.in_features, self.out_features = linear.in_features, linear.out_features
        dim = 0 if axis == "rows" else 1
        size = linear.weight.shape[dim]
        frozen = list(frozen)
        trainable = [i for i in range(size) if i not in set(frozen)]
        self.frozen_run, self.trainable_run = _as_range(frozen), _as_range(trainable)
        self.register_buffer("frozen_index", torch.tensor(frozen, device=linear.weight.device))
        self.register_buffer(
            "trainable_index", torch.tensor(trainable, device=linear.weight.device)
        )
        weight = linear.weight.detach()
        self.register_buffer("frozen_weight", weight.index_select(dim, self.frozen_index).clone())
        self.weight = nn.Parameter(weight.index_select(dim, self.trainable_index).clone())
        bias = linear.bias
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        order = torch.cat([self.frozen_index, self.trainable_index]).argsort()
        needs_order = axis == "rows" and not torch.equal(order, torch.arange(size))
        self.register_buffer("output_order", order if needs_order else None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        frozen_rows: int | Sequence[int] | None = None,
        frozen_cols: int | Sequence[int] | None = None,
    ) -> SplitLinear:
        """Split `linear`; an int k freezes the first k rows/cols, a list those indices."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        if (frozen_rows is None) == (frozen_cols is None):
            raise ValueError("give exactly one of frozen_rows or frozen_cols")
        if frozen_rows is not None:
            return cls(linear, _check_indices(frozen_rows, linear.out_features, "rows"), "rows")
        return cls(linear, _check_indices(frozen_cols, linear.in_features, "cols"), "cols")

    def _bias_block(self, index: torch.Tensor, run: tuple[int, int] | None):
        return None if self.bias is None else _take(self.bias, index, run, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == "cols":
            x_frozen = _take(x, self.frozen_index, self.frozen_run, -1)
            x_trainable = _take(x, self.trainable_index, self.trainable_run, -1)
            return F.linear(x_trainable, self.weight, self.bias) + F.linear(
                x_frozen, self.frozen_weight
            )
        frozen_out = F.linear(x, self.frozen_weight, self._bias_block(self.frozen_index,
                                                                        self.frozen_run))
        trainable_out = F.linear(x, self.weight, self._bias_block(self.trainable_index,
                                                                  self.trainable_run))
        out = torch.cat([frozen_out, trainable_out], dim=-1)
        return out if self.output_order is None else out.index_select(-1, self.output_order)

    def frozen_mask(self) -> torch.Tensor:
        """Boolean mask over the full weight, True where entries are frozen (notebook 04)."""
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool,
                           device=self.weight.device)
        if self.axis == "rows":
            mask[self.frozen_index] = True
        else:
            mask[:, self.frozen_index] = True
        return mask

    def full_weight(self) -> torch.Tensor:
        """The frozen and trainable blocks put back into one (out, in) weight (notebook 04)."""
        full = self.weight.new_empty(self.out_features, self.in_features)
        with torch.no_grad():
            if self.axis == "rows":
                full[self.frozen_index] = self.frozen_weight
                full[self.trainable_index] = self.weight
            else:
                full[:, self.frozen_index] = self.frozen_weight
                full[:, self.trainable_index] = self.weight
        return full

    def to_linear(self) -> nn.Linear:
        """An ordinary nn.Linear with the merged weight, e.g. for inference (notebook 04)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.full_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        frozen = len(self.frozen_index)
        total = self.out_features if self.axis == "rows" else self.in_features
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"frozen {self.axis}={frozen}/{total}, bias={self.bias is not None}")


def freeze_rows(linear: nn.Linear, rows: int | Sequence[int]) -> SplitLinear:
    """A SplitLinear with these output rows of the weight frozen (notebook 04)."""
    return SplitLinear.from_linear(linear, frozen_rows=rows)


def freeze_cols(linear: nn.Linear, cols: int | Sequence[int]) -> SplitLinear:
    """A SplitLinear with these input columns of the weight frozen (notebook 04)."""
    return SplitLinear.from_linear(linear, frozen_cols=cols)


# ------------------------------------------------------------------ the question's cat design


class CatLinear(nn.Module):
    """The question's layer, corrected: torch.cat rebuilds the full weight each call (notebook 04).

    The first `frozen_rows` rows are a buffer, the rest a trainable parameter; F.linear then
    multiplies the concatenated weight, so the full weight gradient is computed and sliced.
    """

    def __init__(self, linear: nn.Linear, frozen_rows: int) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        rows = len(_check_indices(frozen_rows, linear.out_features, "rows"))
        weight = linear.weight.detach()
        self.register_buffer("frozen_weight", weight[:rows].clone())
        self.weight = nn.Parameter(weight[rows:].clone())
        bias = linear.bias
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch.cat((self.frozen_weight, self.weight), dim=0), self.bias)

    def extra_repr(self) -> str:
        frozen, trainable = len(self.frozen_weight), len(self.weight)
        return (f"in_features={self.weight.shape[1]}, out_features={frozen + trainable}, "
                f"frozen rows={frozen}/{frozen + trainable} (torch.cat each call), "
                f"bias={self.bias is not None}")

    def frozen_mask(self) -> torch.Tensor:
        """Boolean mask over the full weight, True where entries are frozen (notebook 04)."""
        mask = torch.zeros(self.full_weight().shape, dtype=torch.bool, device=self.weight.device)
        mask[: len(self.frozen_weight)] = True
        return mask

    def full_weight(self) -> torch.Tensor:
        """The concatenated (out, in) weight, detached (notebook 04)."""
        return torch.cat((self.frozen_weight, self.weight.detach()), dim=0)


# ------------------------------------------------------------------ whole-model builders


def _check_plan(model: nn.Module, plan: FreezePlan) -> dict[str, nn.Linear]:
    if not isinstance(plan, Mapping) or not plan:
        raise ValueError(
            f"plan must be a non-empty mapping of Linear names to frozen row counts, "
            f"got {plan!r}"
        )
    modules = dict(model.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    unknown = [n for n in plan if n not in linears]
    if unknown:
        raise ValueError(f"plan names {unknown} are not Linear layers; valid names are {linears}")
    for name, rows in plan.items():
        _check_indices(rows, modules[name].out_features, "rows")
    return {name: modules[name] for name in plan}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def cat_freeze(model: nn.Module, plan: FreezePlan) -> torch.fx.GraphModule:
    """The question's design, corrected: fx-trace a copy, swap Linears for CatLinear (notebook 04).

    `plan` maps Linear names to how many leading rows to freeze. The input model is unchanged.
    """
    _check_plan(model, plan)
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(traced.named_modules())
    for node in traced.graph.nodes:
        if node.op == "call_module" and node.target in plan:
            _replace(traced, node.target, CatLinear(modules[node.target], plan[node.target]))
    return torch.fx.GraphModule(traced, traced.graph)


def split_freeze(model: nn.Module, plan: FreezePlan) -> nn.Module:
    """A copy of `model` with each planned Linear made a row-split SplitLinear (notebook 04)."""
    linears = _check_plan(model, plan)
    new = copy.deepcopy(model)
    for name, rows in plan.items():
        _replace(new, name, freeze_rows(linears[name], rows))
    return new


def whole_freeze(model: nn.Module, plan: FreezePlan) -> nn.Module:
    """A copy of `model` whose planned Linears have their whole weight frozen (notebook 04)."""
    _check_plan(model, plan)
    new = copy.deepcopy(model)
    for name in plan:
        new.get_submodule(name).weight.requires_grad_(False)
    return new


def rows_mask(weight: torch.Tensor, rows: int | Sequence[int]) -> torch.Tensor:
    """Boolean mask of `weight`'s shape, True on the frozen rows (notebook 04)."""
    if weight.dim() != 2:
        raise ValueError(f"rows_mask needs a 2-D weight, got shape {tuple(weight.shape)}")
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[_check_indices(rows, weight.shape[0], "rows")] = True
    return mask


def mask_gradient(
    param: torch.Tensor, frozen_mask: torch.Tensor, weight_decay: float = 0.0
) -> RemovableHandle:
    """Hook that zeroes the frozen entries of `param`'s gradient (notebook 04).

    With weight_decay > 0 the hook adds L2 decay to the trainable entries only, so the
    optimizer can run without weight decay and the frozen entries stay put.
    """
    if not param.requires_grad:
        raise ValueError("mask_gradient needs a parameter with requires_grad=True")
    if frozen_mask.dtype != torch.bool or frozen_mask.shape != param.shape:
        raise ValueError(
            f"frozen_mask must be a bool tensor of the parameter's shape {tuple(param.shape)}, "
            f"got {frozen_mask.dtype} of shape {tuple(frozen_mask.shape)}"
        )
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    keep = (~frozen_mask).to(param.dtype)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if weight_decay:
            grad = grad + weight_decay * param.detach()
        return grad * keep

    return param.register_hook(hook)


def hook_freeze(model: nn.Module, plan: FreezePlan, weight_decay: float = 0.0) -> nn.Module:
    """A copy of `model` with gradient-mask hooks on the planned Linears' weights (notebook 04)."""
    _check_plan(model, plan)
    new = copy.deepcopy(model)
    for name, rows in plan.items():
        weight = new.get_submodule(name).weight
        mask_gradient(weight, rows_mask(weight, rows), weight_decay)
    return new


def pin_frozen_entries(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, frozen_mask: torch.Tensor
) -> RemovableHandle:
    """After every optimizer step, write the frozen entries back to their values now (notebook 04).

    This masks the update itself, so weight decay and momentum cannot move them.
    """
    if not any(p is param for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("param is not among the optimizer's parameters")
    if frozen_mask.dtype != torch.bool or frozen_mask.shape != param.shape:
        raise ValueError(
            f"frozen_mask must be a bool tensor of the parameter's shape {tuple(param.shape)}, "
            f"got {frozen_mask.dtype} of shape {tuple(frozen_mask.shape)}"
        )
    kept = param.detach()[frozen_mask].clone()

    def restore(*_: object) -> None:
        with torch.no_grad():
            param[frozen_mask] = kept

    return optimizer.register_step_post_hook(restore)


def adam_decay_outside_hooks(
    model: nn.Module, names: Sequence[str], lr: float, weight_decay: float
) -> torch.optim.Adam:
    """Adam with weight decay on every trainable parameter but the named layers' weights.

    Taught in notebook 04: those weights get their decay inside `mask_gradient`'s hook
    (`hook_freeze(..., weight_decay=...)`), so the optimizer must not decay them again.
    """
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, "
                         f"weight_decay={weight_decay}")
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or not hasattr(modules[n], "weight")]
    if missing or not names:
        raise ValueError(f"names must be non-empty layers with a weight; {missing} are not "
                         f"among {sorted(n for n, m in modules.items() if hasattr(m, 'weight'))}")
    hooked = [modules[n].weight for n in names]
    rest = [p for p in model.parameters()
            if p.requires_grad and all(p is not w for w in hooked)]
    groups = [{"params": hooked, "weight_decay": 0.0},
              {"params": rest, "weight_decay": weight_decay}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


# ------------------------------------------------------------------ checking frozen entries


def full_weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each named layer's full (out, in) weight, whatever design holds it (notebook 04)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"no layers named {missing}; valid names are {sorted(modules)}")
    weights = {}
    for name in names:
        module = modules[name]
        if hasattr(module, "full_weight"):
            weights[name] = module.full_weight().detach()
        elif isinstance(module, nn.Linear):
            weights[name] = module.weight.detach()
        else:
            raise TypeError(f"{name} is a {type(module).__name__}, not a Linear-like layer")
    return weights


def plan_masks(model: nn.Module, plan: FreezePlan) -> dict[str, torch.Tensor]:
    """For each planned Linear, the mask of frozen weight entries (notebook 04)."""
    linears = _check_plan(model, plan)
    return {name: rows_mask(linears[name].weight, rows) for name, rows in plan.items()}


@contextmanager
def preserved_training(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> Iterator[None]:
    """Restore parameter values, grads, buffers, modes and optimizer state on exit (notebook 04)."""
    values = [(p, p.detach().clone()) for p in model.parameters()]
    saved_optimizer = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    with preserved_state(model):
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in values:
                    param.copy_(value)
            if optimizer is not None:
                optimizer.load_state_dict(saved_optimizer)


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    example_input: torch.Tensor,
    loss_fn: LossFn,
    steps: int,
) -> None:
    """Run `steps` training steps in place: zero grads, loss, backward, step (notebook 04)."""
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model_loss(model, example_input, loss_fn).backward()
        optimizer.step()


def frozen_entry_change(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    example_input: torch.Tensor,
    loss_fn: LossFn,
    steps: int = 50,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
) -> float:
    """Largest change of any frozen weight entry after `steps` Adam steps (notebook 04).

    Without an optimizer, Adam(lr, weight_decay) over the trainable parameters is used. The
    model (and a given optimizer's state) is restored afterwards.
    """
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    names = list(masks)
    with preserved_training(model, optimizer):
        before = {n: w.clone() for n, w in full_weights(model, names).items()}
        for name, mask in masks.items():
            if mask.shape != before[name].shape or mask.dtype != torch.bool:
                raise ValueError(
                    f"mask for {name} must be bool of shape {tuple(before[name].shape)}, "
                    f"got {mask.dtype} of shape {tuple(mask.shape)}"
                )
        train_steps(model, optimizer, example_input, loss_fn, steps)
        after = full_weights(model, names)
        return max(
            (after[n] - before[n])[masks[n]].abs().max().item() for n in names
        )


# ------------------------------------------------------------------ measuring


def sgd_decay_change(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    lr: float,
    weight_decay: float,
    steps: int,
) -> float:
    """Largest change of a masked entry under SGD's weight decay alone (notebook 04).

    With a zero gradient, SGD's update is w <- w (1 - lr * weight_decay), so after `steps`
    steps an entry has moved by |w| (1 - (1 - lr * weight_decay) ** steps).
    """
    if lr <= 0 or weight_decay < 0 or not isinstance(steps, int) or steps < 0:
        raise ValueError(
            f"need lr > 0, weight_decay >= 0 and an int steps >= 0, got lr={lr}, "
            f"weight_decay={weight_decay}, steps={steps!r}"
        )
    weights = full_weights(model, list(masks))
    largest = max(weights[name][mask].abs().max().item() for name, mask in masks.items())
    return largest * (1 - (1 - lr * weight_decay) ** steps)


def gradient_bytes(
    model: nn.Module, example_input: torch.Tensor, loss_fn: LossFn | None = None
) -> int:
    """Bytes of parameter gradients one backward pass allocates (notebook 04)."""
    with preserved_state(model):
        model_loss(model, example_input, loss_fn).backward()
        return sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)


def training_step(
    model: nn.Module, example_input: torch.Tensor, loss_fn: LossFn
) -> Callable[[], None]:
    """A closure for one forward + backward with grads reset, the question's timed loop body.

    Taught in notebook 04. It changes .grad of the model's parameters each call.
    """
    params = list(model.parameters())

    def run() -> None:
        for param in params:
            param.grad = None
        model_loss(model, example_input, loss_fn).backward()

    return run


def plot_step_times(
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    step_flops: Mapping[str, Mapping[str, int]],
    baseline: str = "plain",
):
    """Median step time per design with [Q1, Q3] bars, beside what FLOPs predict (notebook 04).

    One panel per key of `samples` (a model size, say), designs top to bottom. The diamond is
    the baseline's median times the design's step FLOPs over the baseline's: where the bar
    would end if time followed FLOPs. Returns the matplotlib figure.
    """
    _check_step_times(samples, step_flops, baseline)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(5.5 * len(samples), 4.5), squeeze=False)
    for ax, (title, runs) in zip(axes[0], samples.items(), strict=True):
        names = list(runs)
        timings = [summarize_times(list(runs[name])) for name in names]
        base = summarize_times(list(runs[baseline])).median
        scale, unit = (1e6, "µs") if base < 1e-3 else (1e3, "ms")
        rows = list(range(len(names)))
        low, high = zip(*(t.error_bar() for t in timings), strict=True)
        ax.barh(rows, [t.median * scale for t in timings], color="tab:blue", alpha=0.6,
                xerr=[[v * scale for v in low], [v * scale for v in high]], capsize=4,
                ecolor="dimgray", label="measured median, whisker [Q1, Q3]")
        flops = step_flops[title]
        ax.plot([base * scale * flops[name] / flops[baseline] for name in names], rows, "D",
                color="tab:red", label="if time followed FLOPs")
        ax.set_yticks(rows, names)
        ax.invert_yaxis()
        ax.set(xlabel=f"time per training step ({unit})", title=title)
    axes[0][0].legend(loc="best", fontsize=9)
    fig.tight_layout()
    return fig


def _check_step_times(
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    step_flops: Mapping[str, Mapping[str, int]],
    baseline: str,
) -> None:
    if not samples or set(samples) != set(step_flops):
        raise ValueError(
            f"samples and step_flops need the same non-empty panels, got {sorted(samples)} "
            f"and {sorted(step_flops)}"
        )
    for title, runs in samples.items():
        flops = step_flops[title]
        if baseline not in runs or not set(runs) <= set(flops):
            raise ValueError(
                f"panel {title!r}: every design needs FLOPs and {baseline!r} must be a design; "
                f"got designs {sorted(runs)} and FLOPs for {sorted(flops)}"
            )
        if any(not runs[name] for name in runs) or flops[baseline] <= 0:
            raise ValueError(f"panel {title!r}: empty samples or non-positive baseline FLOPs")


def timing_table(samples: Mapping[str, list[float]], baseline: str | None = None) -> str:
    """Median and IQR per run, plus the median per-round ratio to `baseline` (notebook 04)."""
    header = f"{'run':<28} {'median':>11} {'IQR':>11}"
    lines = [header + (f" {'/ ' + baseline:>12}" if baseline else "")]
    for name, values in samples.items():
        timing = summarize_times(values)
        line = f"{name:<28} {_seconds(timing.median):>11} {_seconds(timing.iqr):>11}"
        if baseline:
            line += f" {median_ratio(samples, name, baseline):>12.2f}"
        lines.append(line)
    return "\n".join(lines)


def _seconds(value: float) -> str:
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"
