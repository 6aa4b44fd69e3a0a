"""Self-checks for notebook 08's exercises: LoRA's backward FLOPs and its trainable count."""

from __future__ import annotations

import torch
from torch import nn

from autograd_cost.chapters.lora import LoRALinear, peft_lora
from autograd_cost.core import check_positive_int
from autograd_cost.cost import count_flops
from autograd_cost.exercises import check_answer, report, require_int


def _lora_layer_backward_flops(in_features: int, out_features: int, rows: int, rank: int) -> int:
    """Backward FLOPs of a LoRALinear whose input needs a gradient, counted."""
    for name, value in (("in_features", in_features), ("out_features", out_features),
                        ("rows", rows), ("rank", rank)):
        check_positive_int(name, value)
    layer = LoRALinear(nn.Linear(in_features, out_features), rank, alpha=2.0 * rank)
    layer_input = torch.randn(rows, in_features, requires_grad=True)  # a trainable layer below
    return count_flops(layer, layer_input).backward


def check_lora_backward_flops(answer: int, in_features: int, out_features: int, rows: int,
                              rank: int) -> bool:
    """Check predicted backward FLOPs of one LoRA Linear, counted (notebook 08)."""
    require_int(answer)
    truth = _lora_layer_backward_flops(in_features, out_features, rows, rank)
    full = 2 * 2 * rows * in_features * out_features
    if answer == full:
        return report(False, "", "that is a trainable Linear's backward: the frozen weight "
                                 "gets no gradient.")
    return check_answer(answer, truth, f"{truth:,} FLOPs.",
                        "the frozen weight still passes the input gradient (2 x rows x in x "
                        "out); add A's and B's weight and input gradients.")


def check_lora_trainable(answer: int, model: nn.Module, rank: int) -> bool:
    """Check a predicted trainable-parameter count against PEFT's own count (notebook 08)."""
    require_int(answer)
    truth = peft_lora(model, rank=rank).get_nb_trainable_parameters()[0]
    return check_answer(answer, truth, f"{truth:,} trainable parameters, as PEFT counts.",
                        "each adapted Linear (in -> out) adds r x in (A) + out x r (B).")
