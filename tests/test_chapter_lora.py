"""Notebook 08's helpers: hand-written LoRA against PEFT, the as-is profile, the variants."""

from __future__ import annotations

import pytest
import torch

from autograd_cost.chapters import lora
from autograd_cost.cost import count_flops, saved_activation_bytes
from autograd_cost.freezing import execution_order
from autograd_cost.models import tiny_transformer
from autograd_cost.profile import profile_freezing

VOCAB, DIM, HEADS, BLOCKS, SEQ, BATCH, RANK = 16, 16, 2, 2, 8, 3, 4


@pytest.fixture()
def base():
    return tiny_transformer(vocab=VOCAB, dim=DIM, heads=HEADS, blocks=BLOCKS, max_len=SEQ)


@pytest.fixture()
def tokens():
    return torch.randint(VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def _lora_pairs(peft_model, hand_model):
    """(PEFT parameter, hand-written parameter) for every A and B, matched by layer name."""
    hand = dict(hand_model.named_parameters())
    pairs = []
    for name, param in peft_model.named_parameters():
        if ".lora_" in name:
            layer = name.removeprefix("base_model.model.").split(".lora_")[0]
            matrix = "lora_A" if ".lora_A." in name else "lora_B"
            pairs.append((param, hand[f"{layer}.{matrix}"]))
    return pairs


def test_hand_written_lora_matches_peft_outputs_and_gradients(base, tokens):
    peft_model = lora.peft_lora(base, rank=RANK, alpha=8.0, seed=3)
    hand_model = lora.hand_lora(base, rank=RANK, alpha=8.0, seed=3)
    pairs = _lora_pairs(peft_model, hand_model)
    assert len(pairs) == 2 * 4 * BLOCKS  # A and B on qkv, proj, mlp.0, mlp.2 of each block
    with torch.no_grad():
        for peft_param, hand_param in pairs:
            assert peft_param.shape == hand_param.shape
            peft_param.normal_(0, 0.5)  # B is no longer zero, so the update is not a no-op
            hand_param.copy_(peft_param)
    assert lora.trainable_count(hand_model) == peft_model.get_nb_trainable_parameters()[0]
    targets = torch.randint(VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(2))
    loss_fn = lora.next_char_loss(targets)
    outputs = [model(tokens) for model in (peft_model, hand_model)]
    torch.testing.assert_close(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], base(tokens))  # the update changed the output
    for output in outputs:
        loss_fn(output).backward()
    for peft_param, hand_param in pairs:
        assert peft_param.grad is not None and peft_param.grad.abs().sum() > 0
        torch.testing.assert_close(peft_param.grad, hand_param.grad)
    assert all(p.grad is None for p in base.parameters())  # the base was copied, not wrapped


def test_hand_written_lora_starts_as_the_base_model(base, tokens):
    hand_model = lora.hand_lora(base, rank=2)
    torch.testing.assert_close(hand_model(tokens), base(tokens))  # B = 0 at the start


def _analytic_lora_flops(rank: int) -> tuple[int, int]:
    """Forward and backward FLOPs of the PEFT-wrapped tiny transformer, counted by hand.

    A Linear (in -> out) on n rows: forward 2 n in out; backward 2 n in out for the input
    gradient (if its input requires grad) and as much again for a trainable weight. LoRA adds
    A (in -> r) and B (r -> out). Attention (flash style): QK^T and PV forward, five products
    backward.
    """
    n, d = BATCH * SEQ, DIM
    shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]  # qkv, proj, mlp.0, mlp.2
    attention_forward = 2 * 2 * BATCH * SEQ * SEQ * d
    forward = BLOCKS * (sum(2 * n * i * o + 2 * n * rank * (i + o) for i, o in shapes)
                        + attention_forward) + 2 * n * d * VOCAB
    backward = 2 * n * d * VOCAB  # the frozen head still passes the gradient down
    for block in range(BLOCKS):
        backward += 5 * 2 * BATCH * SEQ * SEQ * d  # recomputes QK^T, then dS, dV, dQ, dK
        for index, (i, o) in enumerate(shapes):
            input_needs_grad = not (block == 0 and index == 0)  # qkv of block 0 reads a
            # LayerNorm of frozen embeddings: nothing below it needs a gradient
            backward += 2 * n * rank * o * 2  # B's weight gradient and B's input gradient
            backward += 2 * n * i * rank  # A's weight gradient
            if input_needs_grad:
                backward += 2 * n * i * o + 2 * n * i * rank  # base and A input gradients
    return forward, backward


def test_as_is_profile_of_a_peft_model_reports_peft_count_and_analytic_flops(base, tokens):
    peft_model = lora.peft_lora(base, rank=RANK)
    frame = profile_freezing(peft_model, tokens, modes=("as_is",), repeats=1)
    row = frame.iloc[0]
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert row["mode"] == "as_is" and row["freeze_depth"] is pd_na()
    assert row["trainable_params"] == trainable == BLOCKS * RANK * (4 + 2 + 5 + 5) * DIM
    assert row["trainable_params"] + row["frozen_params"] == total
    forward, backward = _analytic_lora_flops(RANK)
    assert (row["forward_flops"], row["backward_flops"]) == (forward, backward)
    prefix = "base_model.model.blocks.0.attn.qkv."
    assert row["frozen_units"][:3] == ("base_model.model.tok", "base_model.model.pos",
                                       "base_model.model.blocks.0.ln1")
    assert f"{prefix}base_layer" in row["frozen_units"]  # the frozen pretrained qkv weight
    assert not any(".lora_" in unit for unit in row["frozen_units"])  # every adapter trains
    order = execution_order(peft_model, tokens)  # units by their real names, as run
    assert order.index(f"{prefix}base_layer") < order.index(f"{prefix}lora_A.default") < \
        order.index(f"{prefix}lora_B.default")
    assert all(p.requires_grad == (".lora_" in n) for n, p in peft_model.named_parameters())


def pd_na():
    import pandas as pd

    return pd.NA


def test_lora_fa_freezes_a_and_drops_the_saved_inputs(base, tokens):
    lora_model, fa_model = lora.peft_lora(base, rank=RANK), lora.lora_fa(base, rank=RANK)
    trainable = {n for n, p in fa_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_B." in n for n in trainable)
    assert lora.trainable_count(fa_model) == BLOCKS * RANK * (3 + 1 + 4 + 1) * DIM
    lora_saved = saved_activation_bytes(lora_model, tokens)
    fa_saved = saved_activation_bytes(fa_model, tokens)
    n = BATCH * SEQ
    # A frozen, A no longer keeps its layer's input: the LayerNorm outputs feeding qkv and
    # mlp.0 (LayerNorm keeps its own input, not its output) and the GELU output feeding mlp.2
    # (GELU keeps its input) go. proj's input stays: it is a view of the attention output,
    # which CPU attention saves for its own backward.
    dropped = BLOCKS * 4 * n * (DIM + DIM + 4 * DIM)
    assert lora_saved - fa_saved == dropped


def test_variants_train_what_their_names_say(base, tokens):
    variants = lora.lora_variants(base, tokens, rank=RANK)
    assert list(variants) == list(lora.VARIANTS)
    head = sum(p.numel() for p in base.head.parameters())
    assert lora.trainable_count(variants["head only"]) == head
    total = sum(p.numel() for p in base.parameters())
    assert lora.trainable_count(variants["full fine-tune"]) == total
    prefix = variants["frozen prefix"]
    assert not prefix.tok.weight.requires_grad and not any(
        p.requires_grad for p in prefix.blocks[0].parameters())
    assert all(p.requires_grad for p in prefix.blocks[1].parameters())
    full = count_flops(variants["full fine-tune"], tokens)
    head_only = count_flops(variants["head only"], tokens)
    assert head_only.backward == 2 * BATCH * SEQ * DIM * VOCAB  # the head's weight gradient
    assert full.forward == head_only.forward
    assert all(p.requires_grad for p in base.parameters())  # every variant is a copy


def test_zen_task_is_the_zen_of_python_and_its_rot13():
    encoded, plain = lora.zen_texts()
    assert plain.startswith("The Zen of Python, by Tim Peters")
    assert encoded.startswith("Gur Mra bs Clguba")
    task = lora.zen_task(length=8)
    assert task.train_x.shape[1] == 8 and torch.equal(task.train_x[1:, :-1], task.train_x[:-1, 1:])
    assert torch.equal(task.train_y[:, :-1], task.train_x[:, 1:])
    assert "".join(task.alphabet[int(c)] for c in task.train_x[0]) == plain[:8]
    with pytest.raises(ValueError, match="test_share"):
        lora.zen_task(test_share=1.5)


def test_bad_inputs_are_refused(base):
    with pytest.raises(ValueError, match="rank"):
        lora.peft_lora(base, rank=0)
    with pytest.raises(ValueError, match="targets"):
        lora.hand_lora(base, targets=("nothing",))


def test_hand_lora_differences_reports_zero_for_matching_layers_and_keeps_the_base(base, tokens):
    before = {name: param.detach().clone() for name, param in base.named_parameters()}
    targets = torch.randint(VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(4))
    differences = lora.hand_lora_differences(base, tokens, lora.next_char_loss(targets), rank=2)
    assert list(differences.index) == ["output", "A gradients", "B gradients"]
    assert (differences < 1e-5).all()
    assert all(torch.equal(before[name], param) for name, param in base.named_parameters())
    assert all(param.grad is None for param in base.parameters())
