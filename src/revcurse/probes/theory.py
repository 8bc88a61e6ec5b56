"""Closed-form correlation of the RoPE forward and reverse scores (arXiv 2602.02133).

Let q, k be independent isotropic random vectors in R^d (E[q q^T] = s_q^2 I, E[k k^T] = s_k^2 I,
zero mean) and R(D) the RoPE rotation for relative offset D: a rotation by angle D w_i in each of
the d/2 planes, w_i = base^(-2i/d). With S+ = q^T R(D) k and S- = q^T R(-D) k,

    Cov(S+, S-) = E[q^T R(D) k k^T R(D) q] = s_k^2 E[q^T R(2D) q] = s_q^2 s_k^2 tr R(2D)
    Var(S+)     = s_q^2 s_k^2 tr I = s_q^2 s_k^2 d

so  corr(S+, S-) = tr R(2D) / d = (2/d) sum_i cos(2 D w_i).

Only second moments enter, so the result holds for any independent isotropic q and k. It starts at
1 for D = 0 and decays (with oscillations) as the fast frequencies decorrelate; the slow frequencies
keep it positive for small D and large bases.
"""

from __future__ import annotations

import math

import torch

from revcurse.models.positional import RotaryEmbedding, apply_rope, rope_inv_freq


def rope_score_correlation(head_dim: int, base: float, delta: float) -> float:
    """Exact ``corr(q^T R(D) k, q^T R(-D) k) = (2/d) sum_i cos(2 D w_i)`` (float64)."""
    if head_dim % 2:
        raise ValueError("RoPE needs an even head dimension")
    w = rope_inv_freq(head_dim, base)
    return float(torch.cos(2.0 * delta * w).mean())


def rope_score_correlation_mc(
    head_dim: int, base: float, delta: int, n_samples: int, generator: torch.Generator
) -> tuple[float, float]:
    """Monte-Carlo estimate with Gaussian q, k rotated by the model's own RoPE code.

    Returns ``(estimate, standard_error)``. S+ and S- are sums of products of Gaussians, not a
    bivariate normal pair, so the textbook ``(1 - rho^2)/sqrt(n)`` does not apply; the standard
    error comes from the spread of the estimate over 20 independent batches of the samples.
    """
    q = torch.randn(n_samples, head_dim, generator=generator, dtype=torch.float64)
    k = torch.randn(n_samples, head_dim, generator=generator, dtype=torch.float64)
    rope = RotaryEmbedding(head_dim, base, max_seq_len=delta + 1)
    cos, sin = rope.cos.double(), rope.sin.double()

    def rotate(x: torch.Tensor, pos: int) -> torch.Tensor:
        return apply_rope(x, cos[pos], sin[pos])

    s_plus = (rotate(q, 0) * rotate(k, delta)).sum(-1)  # key Delta after the query
    s_minus = (rotate(q, delta) * rotate(k, 0)).sum(-1)  # key Delta before the query
    rho = float(torch.corrcoef(torch.stack([s_plus, s_minus]))[0, 1])
    n_batches = 20
    per_batch = torch.stack(
        [torch.corrcoef(torch.stack([a, b]))[0, 1]
         for a, b in zip(s_plus.chunk(n_batches), s_minus.chunk(n_batches), strict=True)]
    )  # fmt: skip
    return rho, float(per_batch.std()) / math.sqrt(n_batches)
