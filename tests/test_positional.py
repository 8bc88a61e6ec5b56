"""Positional encodings against independent references (closed forms, float64, transformers)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from revcurse.models.positional import (
    AlibiBias,
    RotaryEmbedding,
    alibi_slopes,
    apply_rope,
    sinusoidal_table,
)


def rotate(x: torch.Tensor, pos: int, head_dim: int, base: float) -> torch.Tensor:
    rope = RotaryEmbedding(head_dim, base, max_seq_len=pos + 1)
    cos, sin = rope.cos[pos].double(), rope.sin[pos].double()
    return apply_rope(x, cos, sin)


@pytest.mark.parametrize("base", [100.0, 10000.0, 1e6])
def test_rope_score_depends_only_on_relative_position(base):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 32, generator=g, dtype=torch.float64)
    delta = 5
    scores = [rotate(q, m, 32, base) @ rotate(k, m + delta, 32, base) for m in (0, 3, 17, 40)]
    for s in scores[1:]:
        assert s.item() == pytest.approx(scores[0].item(), rel=1e-5, abs=1e-5)
    # ... and it does depend on the sign of the offset (otherwise the test proves nothing)
    reverse = rotate(q, delta, 32, base) @ rotate(k, 0, 32, base)
    assert abs(reverse.item() - scores[0].item()) > 1e-3


def test_rope_is_a_rotation():
    x = torch.randn(64, dtype=torch.float64)
    assert rotate(x, 9, 64, 10000.0).norm().item() == pytest.approx(x.norm().item(), rel=1e-6)


@pytest.mark.parametrize(("head_dim", "base"), [(8, 10000.0), (16, 500.0), (64, 1e6)])
def test_rope_matches_transformers_llama(head_dim, base):
    n_heads, seq = 2, 11
    hf_cfg = LlamaConfig(
        hidden_size=head_dim * n_heads,
        num_attention_heads=n_heads,
        rope_theta=base,
        max_position_embeddings=64,
    )
    hf_rope = LlamaRotaryEmbedding(hf_cfg)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, n_heads, seq, head_dim, generator=g)
    k = torch.randn(1, n_heads, seq, head_dim, generator=g)
    cos_hf, sin_hf = hf_rope(q, torch.arange(seq)[None])
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)

    ours = RotaryEmbedding(head_dim, base, max_seq_len=64)
    cos, sin = ours(seq)
    torch.testing.assert_close(cos, cos_hf[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(q, cos, sin), q_hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(k, cos, sin), k_hf, atol=1e-5, rtol=1e-5)


def test_sinusoidal_matches_loop():
    table = sinusoidal_table(7, 6)
    for p in range(7):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_alibi_slopes_match_paper():
    # Press et al.: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    assert alibi_slopes(8).tolist() == pytest.approx([2.0**-i for i in range(1, 9)])
    assert len(alibi_slopes(6)) == 6
    bias = AlibiBias(2, 5)(4)
    assert bias.shape == (2, 4, 4)
    assert bias[0, 3, 1].item() == pytest.approx(-2 * alibi_slopes(2)[0].item())
    assert torch.equal(bias, bias.transpose(-1, -2))  # symmetric: -slope * |i - j|
