"""Notebook 08: LoRA as freezing in every layer: the text task, the variants, the runs."""

from __future__ import annotations

import codecs
import contextlib
import copy
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from autograd_cost.core import LossFn, check_choice, check_positive_int
from autograd_cost.freezing import execution_order, prefix_units, set_frozen
from autograd_cost.models import TinyTransformer, tiny_transformer
from autograd_cost.training import make_optimizer, training_step

# The Linear layers of every block of the course transformer that LoRA adapts.
LORA_TARGETS = ("qkv", "proj", "mlp.0", "mlp.2")
VARIANTS = ("full fine-tune", "frozen prefix", "head only", "LoRA", "LoRA-FA")


@dataclass(frozen=True)
class CharTask:
    """Next-character windows of a text: inputs, targets and the alphabet."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    alphabet: str

    def __repr__(self) -> str:
        return (f"CharTask(alphabet={len(self.alphabet)} characters, train={len(self.train_x)} "
                f"windows, test={len(self.test_x)} windows of {self.train_x.shape[1]})")


def zen_texts() -> tuple[str, str]:
    """The Zen of Python as CPython ships it, rot13 (`this.s`), and decoded."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    return this.s, codecs.decode(this.s, "rot13")


def _windows(codes: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of `length` characters and the window shifted by one, its targets."""
    starts = torch.arange(len(codes) - length)
    index = starts[:, None] + torch.arange(length)
    return codes[index], codes[index + 1]


def zen_task(encoded: bool = False, length: int = 32, test_share: float = 0.2) -> CharTask:
    """Next-character prediction on the Zen of Python; the last `test_share` held out (notebook 08).

    encoded=True gives the rot13 text that CPython ships (`this.s`), which the base model
    is pretrained on; False the plain Zen, the fine-tuning task. Both share one alphabet.
    """
    check_positive_int("length", length)
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be strictly between 0 and 1, got {test_share!r}")
    rot13, plain = zen_texts()
    alphabet = "".join(sorted(set(rot13) | set(plain)))
    text = rot13 if encoded else plain
    codes = torch.tensor([alphabet.index(c) for c in text])
    cut = round(len(codes) * (1 - test_share))
    if cut <= length or len(codes) - cut <= length:
        raise ValueError(f"length {length} is too long for a split of {len(codes)} characters")
    train_x, train_y = _windows(codes[:cut], length)
    test_x, test_y = _windows(codes[cut:], length)
    return CharTask(train_x, train_y, test_x, test_y, alphabet)


def next_char_loss(targets: torch.Tensor) -> LossFn:
    """Cross-entropy of the logits (batch, seq, vocab) against next characters (notebook 08)."""
    return lambda logits: F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def next_char_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of next characters the model ranks first, in eval mode, no grad."""
    with torch.no_grad():
        return float((model(inputs).argmax(-1) == targets).float().mean())


def _batches(count: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(count, (batch,), generator=generator) for _ in range(steps)]


def train(model: nn.Module, task: CharTask, steps: int, batch: int = 16, lr: float = 3e-3,
          seed: int = 0) -> nn.Module:
    """Adam on the trainable parameters for `steps` seeded batches of the task (notebook 08)."""
    check_positive_int("steps", steps)
    optimizer = make_optimizer(model, lambda params: torch.optim.Adam(params, lr=lr))
    for rows in _batches(len(task.train_x), batch, steps, seed):
        training_step(model, task.train_x[rows], next_char_loss(task.train_y[rows]), optimizer)
    return model


def pretrained_base(task: CharTask, steps: int = 150, dim: int = 64, blocks: int = 2,
                    seed: int = 0) -> TinyTransformer:
    """The course transformer, trained from seed `seed` on `task`: the base model (notebook 08)."""
    model = tiny_transformer(vocab=len(task.alphabet), dim=dim, heads=4, blocks=blocks,
                             max_len=task.train_x.shape[1], seed=seed)
    return train(model, task, steps, seed=seed)


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable update B @ A, scaled by alpha / r (notebook 08)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)  # the pretrained weight stays frozen
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # starts as a no-op
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT do
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)  # x A^T B^T: rank r inside
        return self.base(x) + update * self.scaling


def _targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the Linear modules whose name ends with one of `targets`, as PEFT matches."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
             and any(name == t or name.endswith("." + t) for t in targets)]
    if not names:
        raise ValueError(f"no Linear matches the targets {list(targets)}")
    return names


def hand_lora(base: nn.Module, rank: int = 4, alpha: float = 8.0,
              targets: Sequence[str] = LORA_TARGETS, seed: int = 0) -> nn.Module:
    """A copy of `base`, all frozen, each target Linear wrapped in LoRALinear."""
    check_positive_int("rank", rank)
    model = copy.deepcopy(base).requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in _targets(model, targets):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            setattr(owner, child, LoRALinear(getattr(owner, child), rank, alpha))
    return model


def hand_lora_differences(base: nn.Module, inputs: torch.Tensor, loss_fn: LossFn,
                          rank: int = 4, alpha: float = 8.0, seed: int = 0) -> pd.Series:
    """Largest |hand-written LoRA - PEFT| in output and A, B gradients (notebook 08).

    Both wrap copies of `base`; every A and B is first set to the same random values (B no
    longer zero, so the update is not a no-op). `base` is not changed.
    """
    peft_model = peft_lora(base, rank, alpha, seed=seed)
    hand_model = hand_lora(base, rank, alpha, seed=seed)
    hand = dict(hand_model.named_parameters())
    pairs = {name: hand[name.removeprefix("base_model.model.").replace(".default.weight", "")]
             for name, param in peft_model.named_parameters() if ".lora_" in name}
    peft_params = dict(peft_model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, hand_param in pairs.items():
            values = torch.randn(hand_param.shape, generator=generator) * 0.5
            peft_params[name].copy_(values)
            hand_param.copy_(values)
    outputs = [model(inputs) for model in (peft_model, hand_model)]
    for output in outputs:
        loss_fn(output).backward()

    def largest(kind: str) -> float:
        return max((peft_params[n].grad - h.grad).abs().max().item()
                   for n, h in pairs.items() if f".lora_{kind}." in n)

    return pd.Series({"output": (outputs[0] - outputs[1]).abs().max().item(),
                      "A gradients": largest("A"), "B gradients": largest("B")})


def _quiet_peft():
    """Import peft offline; Hugging Face's hub and transformers' logging stay quiet."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in this course downloads
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import peft

    return peft


def peft_lora(base: nn.Module, rank: int = 4, alpha: float = 8.0,
              targets: Sequence[str] = LORA_TARGETS, seed: int = 0) -> nn.Module:
    """A copy of `base` wrapped by PEFT with LoRA of rank r on the targets."""
    check_positive_int("rank", rank)
    peft = _quiet_peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(copy.deepcopy(base), config)


def lora_fa(base: nn.Module, rank: int = 4, alpha: float = 8.0,
            targets: Sequence[str] = LORA_TARGETS, seed: int = 0) -> nn.Module:
    """PEFT LoRA with every A frozen too, the LoRA-FA idea: only B trains."""
    model = peft_lora(base, rank, alpha, targets, seed)
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
    return model


def full_finetune(base: nn.Module) -> nn.Module:
    """A copy of `base` with every parameter trainable."""
    return copy.deepcopy(base).requires_grad_(True)


def frozen_prefix(base: nn.Module, example: torch.Tensor, freeze_depth: int) -> nn.Module:
    """A copy of `base`, its first `freeze_depth` units (execution order) frozen."""
    model = copy.deepcopy(base)
    set_frozen(model, prefix_units(execution_order(model, example), freeze_depth))
    return model


def head_only(base: nn.Module) -> nn.Module:
    """A copy of `base` where only the `head` Linear trains."""
    model = copy.deepcopy(base).requires_grad_(False)
    model.get_submodule("head").requires_grad_(True)
    return model


def half_prefix_depth(base: TinyTransformer) -> int:
    """Units of the embeddings and the first half of the blocks."""
    per_block = len([m for m in base.blocks[0].modules() if list(m.parameters(recurse=False))])
    return 2 + per_block * (len(base.blocks) // 2)


def lora_variants(base: TinyTransformer, example: torch.Tensor, rank: int = 4,
                  alpha: float = 8.0, seed: int = 0) -> dict[str, nn.Module]:
    """The five variants under comparison, each a fresh copy of `base` (notebook 08).

    full fine-tune; frozen prefix (embeddings and the first half of the blocks); head only;
    LoRA of rank r on every block's qkv, proj and MLP Linears (PEFT); LoRA-FA (A frozen too).
    """
    return {"full fine-tune": full_finetune(base),
            "frozen prefix": frozen_prefix(base, example, half_prefix_depth(base)),
            "head only": head_only(base),
            "LoRA": peft_lora(base, rank, alpha, seed=seed),
            "LoRA-FA": lora_fa(base, rank, alpha, seed=seed)}


def trainable_count(model: nn.Module) -> int:
    """Parameters with requires_grad=True, as PEFT counts its trainable ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fine_tune_runs(base: TinyTransformer, task: CharTask, steps: int,
                   seeds: Sequence[int] = (0, 1), rank: int = 4,
                   variants: Sequence[str] = VARIANTS) -> pd.DataFrame:
    """Fine-tune each variant on `task` for `steps` steps per seed; test accuracy (notebook 08).

    The seed sets the batch order and LoRA's initial A. Returns one row per variant and seed.
    """
    rows = []
    for seed in seeds:
        built = lora_variants(base, task.train_x[:1], rank, seed=seed)
        for name in variants:
            check_choice("variant", name, VARIANTS)
            model = train(built[name], task, steps, seed=seed)
            rows.append({"variant": name, "seed": seed,
                         "test_accuracy": next_char_accuracy(model, task.test_x, task.test_y)})
    return pd.DataFrame(rows)


def plot_tradeoff(summary: pd.DataFrame, costs: Sequence[tuple[str, str]]) -> plt.Figure:
    """Mean test accuracy (min-max bars) against each named cost column (notebook 08).

    `summary` has one row per variant (index) with accuracy_mean, accuracy_min, accuracy_max
    and the cost columns; `costs` pairs a column with its axis label.
    """
    figure, axes = plt.subplots(1, len(costs), figsize=(5.5 * len(costs), 4), squeeze=False)
    for axis, (column, label) in zip(axes[0], costs, strict=True):
        for name, row in summary.iterrows():
            error = [[row.accuracy_mean - row.accuracy_min],
                     [row.accuracy_max - row.accuracy_mean]]
            axis.errorbar(row[column], row.accuracy_mean, yerr=error, fmt="o", capsize=3)
            axis.annotate(str(name), (row[column], row.accuracy_mean),
                          textcoords="offset points", xytext=(5, 5))
        axis.set_xlabel(label)
        axis.set_ylabel("test accuracy (next character)")
    figure.tight_layout()
    return figure
