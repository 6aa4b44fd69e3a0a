"""Notebook 04's layers: freeze some rows of a weight by torch.cat rebuild or by split blocks.

- `cat_freeze`: the forum question's design, corrected. The model is traced with torch.fx and
  each planned Linear becomes a `CatLinear`, which rebuilds the full weight with torch.cat of
  a frozen buffer and a trainable parameter on every call. The full weight gradient is still
  computed, then sliced.
- `split_freeze`: each planned Linear becomes a `SplitLinear`, which multiplies the frozen
  block and the trainable block separately, so the frozen block's weight gradient is never
  computed.

A freeze plan maps a Linear's name to the number of leading rows to freeze, like the
question's list of split indices. Every builder returns a new model and leaves its input
alone. The gradient-mask design and its checks are in `chapters.partial_hooks`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from autograd_cost.core import check_choice, check_positive_int
from autograd_cost.models import CatLinear as PlainCatLinear

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

    The default seed leaves no ReLU dead on the notebook's batch (`torch.Generator` seeded 0,
    20 samples): at width 2 or 3 many seeds do, and a dead unit's weight row never gets a
    gradient, whatever is frozen.
    """
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    if isinstance(widths, (int, str)) or not widths:
        raise ValueError(f"widths must be a non-empty sequence of ints, got {widths!r}")
    for width in widths:
        check_positive_int("each width", width)
    torch.manual_seed(seed)
    return QuestionNet(in_features, widths, out_features)


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


def _require_linear(linear: object) -> nn.Linear:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
    return linear


def _copied_bias(linear: nn.Linear) -> nn.Parameter | None:
    bias = linear.bias
    return nn.Parameter(bias.detach().clone()) if bias is not None else None


# ------------------------------------------------------------------ the split design


class SplitLinear(nn.Module):
    """A Linear whose weight is a frozen and a trainable block, multiplied apart (notebook 04).

    With axis="rows" the frozen block is a set of output features,
    with axis="cols" a set of input features. The frozen block is a buffer, so no optimizer
    sees it and autograd never computes its weight gradient. The bias stays trainable.
    """

    def __init__(self, linear: nn.Linear, frozen: Sequence[int], axis: str) -> None:
        super().__init__()
        check_choice("axis", axis, AXES)
        self.axis = axis
        self.in_features, self.out_features = linear.in_features, linear.out_features
        dim = 0 if axis == "rows" else 1
        size = linear.weight.shape[dim]
        frozen = list(frozen)
        trainable = [i for i in range(size) if i not in set(frozen)]
        self.frozen_run, self.trainable_run = _as_range(frozen), _as_range(trainable)
        device = linear.weight.device
        self.register_buffer("frozen_index", torch.tensor(frozen, device=device))
        self.register_buffer("trainable_index", torch.tensor(trainable, device=device))
        weight = linear.weight.detach()
        self.register_buffer("frozen_weight", weight.index_select(dim, self.frozen_index).clone())
        self.weight = nn.Parameter(weight.index_select(dim, self.trainable_index).clone())
        self.bias = _copied_bias(linear)
        order = torch.cat([self.frozen_index, self.trainable_index]).argsort()
        needs_order = axis == "rows" and not torch.equal(order, torch.arange(size, device=device))
        self.register_buffer("output_order", order if needs_order else None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        frozen_rows: int | Sequence[int] | None = None,
        frozen_cols: int | Sequence[int] | None = None,
    ) -> SplitLinear:
        """Split `linear`; an int k freezes the first k rows/cols, a list those indices."""
        _require_linear(linear)
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
        frozen_bias = self._bias_block(self.frozen_index, self.frozen_run)
        trainable_bias = self._bias_block(self.trainable_index, self.trainable_run)
        out = torch.cat([F.linear(x, self.frozen_weight, frozen_bias),
                         F.linear(x, self.weight, trainable_bias)], dim=-1)
        return out if self.output_order is None else out.index_select(-1, self.output_order)

    def frozen_mask(self) -> torch.Tensor:
        """Boolean mask over the full weight, True where entries are frozen."""
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
        """An ordinary nn.Linear with the merged weight, e.g. for inference."""
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


class CatLinear(PlainCatLinear):
    """The question's layer, corrected: torch.cat rebuilds the full weight each call (notebook 04).

    `models.CatLinear` with its inputs checked, and the views notebook 04 prints. The first
    `frozen_rows` rows are a buffer, the rest a trainable parameter; F.linear then multiplies
    the concatenated weight, so the full weight gradient is computed and sliced.
    """

    def __init__(self, linear: nn.Linear, frozen_rows: int) -> None:
        _require_linear(linear)
        if not isinstance(frozen_rows, int):
            raise TypeError(f"frozen_rows must be an int (a count of leading rows), got "
                            f"{type(frozen_rows).__name__}")
        super().__init__(linear, len(_check_indices(frozen_rows, linear.out_features, "rows")))

    def extra_repr(self) -> str:
        frozen, trainable = len(self.frozen_weight), len(self.weight)
        return (f"in_features={self.weight.shape[1]}, out_features={frozen + trainable}, "
                f"frozen rows={frozen}/{frozen + trainable} (torch.cat each call), "
                f"bias={self.bias is not None}")

    def frozen_mask(self) -> torch.Tensor:
        """Boolean mask over the full weight, True where entries are frozen."""
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
        if not isinstance(rows, int) or isinstance(rows, bool):
            raise ValueError(f"plan[{name!r}] must be an int count of leading rows, got {rows!r}")
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
