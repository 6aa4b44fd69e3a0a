"""Seeded, deterministic model builders used throughout the course."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

DIGIT_PIXELS = 64  # scikit-learn's digits are 8x8 images
DIGIT_CLASSES = 10


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def mlp(
    width: int = 64,
    depth: int = 3,
    in_features: int = DIGIT_PIXELS,
    out_features: int = DIGIT_CLASSES,
    seed: int = 0,
) -> nn.Sequential:
    """An MLP with `depth` hidden Linear+ReLU layers and a Linear head (notebook 01)."""
    _check_positive(width=width, depth=depth, in_features=in_features, out_features=out_features)
    torch.manual_seed(seed)
    layers: dict[str, nn.Module] = {}
    features = in_features
    for i in range(1, depth + 1):
        layers[f"fc{i}"] = nn.Linear(features, width)
        layers[f"relu{i}"] = nn.ReLU()
        features = width
    layers["head"] = nn.Linear(features, out_features)
    return nn.Sequential(OrderedDict(layers))


def small_cnn(
    channels: int = 16,
    hidden: int = 64,
    in_channels: int = 1,
    image_size: int = 8,
    out_features: int = DIGIT_CLASSES,
    seed: int = 0,
) -> nn.Sequential:
    """A two-block Conv+BatchNorm+ReLU network with a fully connected head (notebook 02)."""
    _check_positive(channels=channels, hidden=hidden, in_channels=in_channels,
                    image_size=image_size, out_features=out_features)
    if image_size % 2:
        raise ValueError(f"image_size must be even (the network pools by 2), got {image_size}")
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(channels),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
            bn2=nn.BatchNorm2d(2 * channels),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(2 * channels * (image_size // 2) ** 2, hidden),
            relu3=nn.ReLU(),
            head=nn.Linear(hidden, out_features),
        )
    )


class SelfAttention(nn.Module):
    """Multi-head causal self-attention from one fused qkv projection (notebook 07)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=-1)
        q, k, v = (t.view(batch, seq, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(batch, seq, dim))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    """Token and position embeddings, N pre-norm blocks, a final norm and a head."""

    def __init__(self, vocab: int, dim: int, heads: int, blocks: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(blocks)))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.shape[-1]
        if seq > self.max_len:
            raise ValueError(f"sequence length {seq} exceeds max_len {self.max_len}")
        positions = torch.arange(seq, device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        return self.head(self.ln_f(self.blocks(x)))


def tiny_transformer(
    vocab: int = 64,
    dim: int = 64,
    heads: int = 4,
    blocks: int = 2,
    max_len: int = 32,
    seed: int = 0,
) -> TinyTransformer:
    """A tiny GPT-style transformer: embedding, `blocks` pre-norm blocks, head (notebook 02)."""
    _check_positive(vocab=vocab, dim=dim, heads=heads, blocks=blocks, max_len=max_len)
    torch.manual_seed(seed)
    return TinyTransformer(vocab, dim, heads, blocks, max_len)


class CatLinear(nn.Module):
    """A Linear whose first `frozen_rows` rows are a buffer, re-joined by torch.cat in every
    call: the forum question's partial freeze (notebook 04).

    F.linear multiplies the concatenated weight, so autograd computes the gradient of the
    whole weight and slices it: no matmul is saved.
    """

    def __init__(self, linear: nn.Linear, frozen_rows: int) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.register_buffer("frozen_weight", weight[:frozen_rows].clone())
        self.weight = nn.Parameter(weight[frozen_rows:].clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch.cat((self.frozen_weight, self.weight), dim=0), self.bias)


def example_input(model: nn.Module, batch: int = 32, seed: int = 0) -> torch.Tensor:
    """A seeded input batch of the right shape and dtype for a course model (notebook 01)."""
    _check_positive(batch=batch)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(model, TinyTransformer):
        vocab = model.tok.num_embeddings
        return torch.randint(vocab, (batch, model.max_len), generator=generator)
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if isinstance(first, nn.Conv2d):
        side = _cnn_image_side(model)
        return torch.randn(batch, first.in_channels, side, side, generator=generator)
    if isinstance(first, nn.Linear):
        return torch.randn(batch, first.in_features, generator=generator)
    raise TypeError(
        f"example_input knows the course models (mlp, small_cnn, tiny_transformer), "
        f"not {type(model).__name__}; build the input yourself"
    )


def _cnn_image_side(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pooled_pixels = linears[0].in_features // convs[-1].out_channels
    return 2 * round(pooled_pixels**0.5)


MODEL_BUILDERS = {"mlp": mlp, "cnn": small_cnn, "transformer": tiny_transformer}


def build_model(name: str, width: int | None = None, depth: int | None = None) -> nn.Module:
    """Build a course model by name, with width/depth mapped to each family."""
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models are {sorted(MODEL_BUILDERS)}")
    if name == "mlp":
        return mlp(width=width or 64, depth=depth or 3)
    if name == "cnn":
        return small_cnn(channels=width or 16)
    return tiny_transformer(dim=width or 64, blocks=depth or 2)
