"""Positional encodings: RoPE, sinusoidal, learned, ALiBi, none.

* RoPE (Su et al. 2021) in the Hugging Face *half-split* convention: the head dimension is split
  into two halves ``x = [x1, x2]`` and ``R(p) x = x * cos(p w) + rotate_half(x) * sin(p w)`` with
  ``rotate_half(x) = [-x2, x1]`` and frequencies ``w_i = base^(-2i/d)`` repeated for both halves.
  Then ``(R(m) q) . (R(n) k) = q . R(n - m) k``: the score depends only on the relative position,
  which is the property arXiv 2602.02133 builds its forward/reverse coupling on.
* sinusoidal (Vaswani et al. 2017) and learned absolute embeddings are added to the token embedding.
* ALiBi (Press et al. 2022) adds ``-slope_h * |i - j|`` to the attention scores of head h.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def rope_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """Rotation frequencies ``w_i = base^(-2i/head_dim)``, ``i = 0 .. head_dim/2 - 1`` (float64)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., L, head_dim]`` by per-position angles (``cos``/``sin`` are ``[L, head_dim]``)."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions ``0 .. max_seq_len - 1``."""

    def __init__(self, head_dim: int, base: float, max_seq_len: int) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, base)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        emb = torch.cat((angles, angles), dim=-1)  # [max_seq_len, head_dim]
        # Non-persistent: a function of the config, so checkpoints stay free of derived tensors.
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[:seq_len], self.sin[:seq_len]


def sinusoidal_table(max_seq_len: int, d_model: int) -> torch.Tensor:
    """The fixed absolute encoding ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(..)``."""
    pos = torch.arange(max_seq_len, dtype=torch.float64)[:, None]
    div = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model)
    )
    table = torch.zeros(max_seq_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return table.float()


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes of ALiBi: the geometric sequence ``2^(-8 h / n)`` (with the paper's rule for n
    that is not a power of two)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (h + 1) for h in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class AlibiBias(nn.Module):
    """The additive score bias ``[n_heads, L, L]`` with entries ``-slope_h * |i - j|``."""

    def __init__(self, n_heads: int, max_seq_len: int) -> None:
        super().__init__()
        pos = torch.arange(max_seq_len)
        dist = (pos[None, :] - pos[:, None]).abs().float()  # [L, L]
        bias = -alibi_slopes(n_heads)[:, None, None] * dist  # [H, L, L]
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.bias[:, :seq_len, :seq_len]
