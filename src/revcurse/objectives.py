"""Training objectives: masked diffusion (MDM) and next-token prediction (ARM), for every run kind.

Masked diffusion follows LLaDA (Nie et al. 2025, Eq. 3) / MDLM (Sahoo et al. 2024): draw a mask
ratio ``t ~ U(eps, 1)`` per sequence, replace each token by ``[MASK]`` independently with probability
``t``, and minimise the cross-entropy on the masked positions weighted by ``1/t``:

    L(theta) = -E_{x, t, x_t} [ 1/(t L) * sum_{i: x_t^i = [MASK]} log p_theta(x^i | x_t) ],

an upper bound on the negative log-likelihood. ``L`` is the number of maskable tokens of the
sequence. The ARM minimises the usual next-token cross-entropy.

:func:`masked_diffusion_loss` is the one implementation of that estimator. Which tokens may be
masked is its ``maskable`` argument: every real token gives the pre-training loss of Eq. 3; the
answer tokens of a (prompt, answer) pair, with the prompt never masked, give LLaDA's SFT loss
(Eq. 5); the toy runs also offer entities only, or all but fillers (``train.maskable``).

Two ablations of the any-order objective (the ``objective`` experiment) call the same pieces:

* ``mlm``: a BERT-style fixed masking ratio r instead of t ~ U(eps, 1) (:func:`masked_diffusion_loss`
  with ``ratio=r``);
* ``answer_only``: a bidirectional encoder that only ever sees ``a REL [M]``: the answer entity of
  each statement is masked, nothing else (:func:`answer_loss`, the deterministic t = 1 term, which
  the probes also use as their query loss).

``masked_ar`` (Pan et al. 2025) is the masked objective on causal attention: a causal model reads
inputs masked at ``t ~ U(0.05, 0.95)`` and predicts the original next tokens
(:func:`masked_ar_loss`); it is asked queries as an ARM is, left to right.

:func:`training_loss` picks one of them for a run; every run kind (toy, from-scratch text, LoRA
fine-tuning) calls it on a :class:`~revcurse.data.text.TextBatch` whose ``answer_mask`` holds the
tokens the objective learns (masked_diffusion, mlm: the maskable ones; next_token: the predicted
ones; answer_only: the answer entity).

Every loss reads the logits of a few positions only (the masked tokens, the answer, the positions
that have a next token). :func:`logits_at` asks the model for exactly those rows: models that take a
``where`` keyword (:class:`~revcurse.models.transformer.TransformerLM`,
:class:`~revcurse.models.hf.LogitsModel`) run the unembedding on them alone, which for a 126k-152k
vocabulary removes the largest tensor of a fine-tuning step; any other ``ids -> logits`` callable
gets its full logits indexed, with the same result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from revcurse.data.text import TextBatch


def logits_at(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor | None,  # [B, L]
    where: torch.Tensor,  # [B, L] bool
) -> torch.Tensor:
    """The logits at the positions ``where``: ``[N, V]``, rows in row-major order of ``where``."""
    inner = getattr(model, "module", model)  # under a DistributedDataParallel wrapper
    if getattr(inner, "selects_positions", False):
        return model(ids, attention_mask=attention_mask, where=where)
    return model(ids, attention_mask=attention_mask)[where]


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits (autocast) upcast for the softmax; float32 and float64 kept as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def sample_mask_ratio(batch: int, eps: float, generator: torch.Generator) -> torch.Tensor:
    """``t ~ U(eps, 1)`` for each of ``batch`` sequences ``[B]``."""
    return eps + (1.0 - eps) * torch.rand(batch, generator=generator)


def mask_tokens(
    tokens: torch.Tensor,  # [B, L]
    t: torch.Tensor,  # [B]
    mask_id: int,
    generator: torch.Generator,
    maskable: torch.Tensor | None = None,  # [B, L] bool; default: every position
    unit_start: torch.Tensor | None = None,  # [B, L] each position's unit's first position
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward (noising) process: each maskable token becomes ``mask_id`` with probability t;
    with ``unit_start``, the tokens of a unit (an entity) share one draw, so they are masked
    together, each still with probability t.

    The uniforms are drawn on the (CPU) generator and then moved, so a run draws the same masks on
    any device. Returns ``(noisy [B, L], masked [B, L] bool)``.
    """
    uniform = torch.rand(tokens.shape, generator=generator)  # [B, L]
    if unit_start is not None:  # every token reads its unit's first draw
        uniform = uniform.gather(1, unit_start.cpu())
    draw = uniform < t.cpu()[:, None]  # [B, L]
    masked = draw.to(tokens.device)
    if maskable is not None:
        masked &= maskable
    return tokens.masked_fill(masked, mask_id), masked


def _weighted_masked_ce(
    logits: torch.Tensor,  # [N, V] at the masked positions (row-major order)
    targets: torch.Tensor,  # [B, L] clean tokens
    masked: torch.Tensor,  # [B, L] bool
    t: torch.Tensor,  # [B]
    n_maskable: torch.Tensor,  # [B] number of maskable tokens per sequence
    weights: torch.Tensor | None = None,  # [B, L] per-token weights replacing 1/t
) -> torch.Tensor:
    """``mean_b  sum_{i masked} CE(logits_bi, x_bi) / (t_b * n_b)`` (the estimator of Eq. 3), or
    with ``weights``: ``mean_b  sum_{i masked} w_bi CE(logits_bi, x_bi) / n_b``."""
    ce = F.cross_entropy(logits, targets[masked], reduction="none")  # [N]
    per_token = torch.zeros(targets.shape, dtype=ce.dtype, device=ce.device)
    per_token = per_token.masked_scatter(masked, ce)  # [B, L], zero on visible tokens
    if weights is not None:
        return ((per_token * weights).sum(dim=1) / n_maskable.clamp(min=1)).mean()
    per_seq = per_token.sum(dim=1) / (t * n_maskable.clamp(min=1))  # [B]
    return per_seq.mean()


def cart_weights(
    masked: torch.Tensor,  # [B, L] bool
    clean: torch.Tensor,  # [B, L] bool: the visible real tokens
    p: float = 0.3,
) -> torch.Tensor:
    """Dream's context-adaptive token weights (CART, as dllm's Dream trainer computes them), in
    place of ``1/t``: a masked token ``i`` weighs ``sum_{j clean} (p / 2) (1 - p)^(|i - j| - 1)``,
    so a masked token next to much visible context counts more than one far from any ``[B, L]``
    (0 on unmasked tokens)."""
    L = masked.shape[1]
    idx = torch.arange(L, device=masked.device)
    gap = (idx[None, :] - idx[:, None]).abs()  # [L, L]
    kernel = 0.5 * p * (1.0 - p) ** (gap - 1).clamp(min=0).double()
    kernel = kernel.masked_fill(gap == 0, 0.0)
    weights = clean.double() @ kernel  # [B, L]
    return (weights * masked).to(torch.float32)


def masked_diffusion_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L] clean sequences, right-padded
    maskable: torch.Tensor,  # [B, L] bool: the tokens that may be masked (a subset of the real)
    attention_mask: torch.Tensor,  # [B, L] bool: real tokens
    mask_id: int,
    generator: torch.Generator,
    *,
    eps: float = 1e-3,
    ratio: float | None = None,
    weighting: str = "inverse_t",
    cart_p: float = 0.3,
    unit_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Monte-Carlo draw of the masked-diffusion loss (LLaDA Eq. 3; Eq. 5 for SFT):

        L = mean_b  1/(t_b n_b)  sum_{i: x_t^i = [MASK]}  -log p(x_0^i | x_t),

    with ``t_b ~ U(eps, 1)`` drawn first from ``generator`` (or ``t_b = ratio``, the fixed-ratio MLM
    ablation, which draws nothing for t), each ``maskable`` token masked with probability ``t_b``,
    and ``n_b`` the number of maskable tokens of sequence b. With every real token maskable it is
    the pre-training loss; with only the answer tokens, the prompt is never masked (the SFT loss).
    ``weighting="cart"`` replaces ``1/t_b`` by Dream's per-token weights (:func:`cart_weights`).
    ``unit_start`` masks units (entities) whole (:func:`mask_tokens`); each token is still masked
    with probability t, so the 1/t weight keeps its meaning.
    """
    B = ids.shape[0]
    t = sample_mask_ratio(B, eps, generator) if ratio is None else torch.full((B,), ratio)
    noisy, masked = mask_tokens(ids, t, mask_id, generator, maskable, unit_start)
    logits = logits_at(model, noisy, _key_mask(attention_mask), masked)  # [N, V]
    weights = None
    if weighting == "cart":
        weights = cart_weights(masked, attention_mask & ~masked, cart_p)
    elif weighting != "inverse_t":
        raise ValueError(f"weighting {weighting!r}: expected inverse_t or cart")
    return _weighted_masked_ce(
        _at_least_float32(logits), ids, masked, t.to(ids.device), maskable.sum(dim=1), weights
    )


def next_token_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L]
    predicted: torch.Tensor,  # [B, L] bool: the tokens that are predicted (position 0 never is)
    attention_mask: torch.Tensor,  # [B, L] bool: real tokens
) -> torch.Tensor:
    """The ARM's loss: mean next-token cross-entropy over the ``predicted`` tokens (all real tokens
    after the first for pre-training; the answer tokens for SFT, prompt tokens ignored). Only the
    positions that predict one of them are unembedded."""
    where = F.pad(predicted[:, 1:], (0, 1))  # [B, L]: position i predicts token i + 1
    logits = logits_at(model, ids, _key_mask(attention_mask), where)  # [N, V]
    return F.cross_entropy(_at_least_float32(logits), ids[:, 1:][predicted[:, 1:]])


MASKED_AR_RATIO = (0.05, 0.95)
"""The masked-AR input masking ratio's range (Pan et al. 2025, arXiv 2510.09885)."""


def masked_ar_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L] clean sequences, right-padded
    predicted: torch.Tensor,  # [B, L] bool: the tokens that are predicted (position 0 never is)
    attention_mask: torch.Tensor,  # [B, L] bool: real tokens
    mask_id: int,
    generator: torch.Generator,
    ratio: tuple[float, float] = MASKED_AR_RATIO,
) -> torch.Tensor:
    """Masked-AR (Pan et al. 2025, arXiv 2510.09885): a causal model reads its input with each
    real token replaced by ``[MASK]`` with probability ``t ~ U(ratio)`` (one ``t`` per sequence,
    drawn first from ``generator``, then the masks), and is trained to predict the *original*
    next token at every position: the next-token loss of :func:`next_token_loss` on a noised
    prefix. The targets are never masked; only what the model reads is."""
    low, high = ratio
    t = low + (high - low) * torch.rand(ids.shape[0], generator=generator)  # [B]
    noisy, _ = mask_tokens(ids, t, mask_id, generator, attention_mask)
    where = F.pad(predicted[:, 1:], (0, 1))  # [B, L]: position i predicts token i + 1
    logits = logits_at(model, noisy, _key_mask(attention_mask), where)  # [N, V]
    return F.cross_entropy(_at_least_float32(logits), ids[:, 1:][predicted[:, 1:]])


def prefix_lm_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L] clean sequences, right-padded
    predicted: torch.Tensor,  # [B, L] bool: the tokens that are predicted (position 0 never is)
    attention_mask: torch.Tensor,  # [B, L] bool: real tokens
) -> torch.Tensor:
    """Next-token prediction from prefixes read with full attention (the next-token objective x
    bidirectional attention cell of the objective x attention grid): for every predicted token
    ``x_k`` the model reads ``x_<k`` alone, every position seeing every other, and predicts
    ``x_k`` at position ``k - 1``; the mean cross-entropy over the predicted tokens. One row per
    (sequence, k): the sequence with every key from ``k`` on hidden, so nothing after the prefix
    reaches any position. ``model`` must attend both ways (``model.attention=full``); with
    causal attention this is exactly :func:`next_token_loss`, at L times its cost."""
    B, L = ids.shape
    k = torch.arange(1, L, device=ids.device)  # [L - 1] the predicted position
    take = predicted[:, 1:] & attention_mask[:, 1:]  # [B, L - 1]
    rows = take.nonzero()  # [N, 2] (sequence, k - 1)
    n, j = rows[:, 0], k[rows[:, 1]]  # [N] sequence and predicted position
    positions = torch.arange(L, device=ids.device)  # [L]
    keys = (positions[None] < j[:, None]) & attention_mask[n]  # [N, L] the prefix x_<k
    where = positions[None] == (j - 1)[:, None]  # [N, L] reads the prefix's last position
    logits = logits_at(model, ids[n], keys, where)  # [N, V]
    return F.cross_entropy(_at_least_float32(logits), ids[n, j])


def _key_mask(real: torch.Tensor) -> torch.Tensor | None:
    """The padding mask to pass to the model, or None when nothing is padded (saves a masked_fill)."""
    return None if bool(real.all()) else real


def answer_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L]
    answer_mask: torch.Tensor,  # [B, L] bool
    attention_mask: torch.Tensor,  # [B, L] bool
    causal: bool,
    mask_id: int,
) -> torch.Tensor:
    """The deterministic loss of a query's answer: mean CE of the answer tokens given the prompt,
    with every answer token masked (MDM: the t = 1 term of the masked-diffusion loss, and the
    ``answer_only`` objective) or teacher-forced (ARM). The probes' query loss."""
    if causal:
        return next_token_loss(model, ids, answer_mask, attention_mask)
    noisy = ids.masked_fill(answer_mask, mask_id)
    logits = logits_at(model, noisy, _key_mask(attention_mask), answer_mask)  # [N, V]
    return F.cross_entropy(_at_least_float32(logits), ids[answer_mask])


OBJECTIVES = ("masked_diffusion", "next_token", "mlm", "answer_only", "masked_ar", "prefix_lm")


def training_loss(
    objective: str,
    model: torch.nn.Module,
    batch: TextBatch,
    mask_id: int,
    generator: torch.Generator,
    *,
    eps: float = 1e-3,
    mlm_ratio: float = 0.15,
    weighting: str = "inverse_t",
    cart_p: float = 0.3,
) -> torch.Tensor:
    """The loss a run optimises on one batch; ``batch.answer_mask`` holds the tokens the objective
    learns (see the module docstring)."""
    if objective == "masked_diffusion":
        return masked_diffusion_loss(model, batch.ids, batch.answer_mask, batch.attention_mask,
                                     mask_id, generator, eps=eps, weighting=weighting,
                                     cart_p=cart_p, unit_start=batch.unit_start)  # fmt: skip
    if objective == "mlm":
        return masked_diffusion_loss(model, batch.ids, batch.answer_mask, batch.attention_mask,
                                     mask_id, generator, ratio=mlm_ratio,
                                     unit_start=batch.unit_start)  # fmt: skip
    if objective == "next_token":
        return next_token_loss(model, batch.ids, batch.answer_mask, batch.attention_mask)
    if objective == "masked_ar":
        return masked_ar_loss(model, batch.ids, batch.answer_mask, batch.attention_mask, mask_id,
                              generator)  # fmt: skip
    if objective == "prefix_lm":
        return prefix_lm_loss(model, batch.ids, batch.answer_mask, batch.attention_mask)
    if objective == "answer_only":
        return answer_loss(
            model, batch.ids, batch.answer_mask, batch.attention_mask, False, mask_id
        )
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def text_objective(causal: bool, objective: str = "auto") -> str:
    """The objective of a text run: ``objective`` where one is set (masked-AR, from-scratch
    ARMs), else next-token for an ARM, masked diffusion for an MDM."""
    if objective != "auto":
        return objective
    return "next_token" if causal else "masked_diffusion"


def run_loss(
    objective: str,
    mask_id: int,
    *,
    eps: float = 1e-3,
    mlm_ratio: float = 0.15,
    weighting: str = "inverse_t",
    cart_p: float = 0.3,
) -> Callable[[torch.nn.Module, TextBatch, torch.Generator], torch.Tensor]:
    """:func:`training_loss` bound to a run's objective and settings: ``loss(model, batch,
    generator)``, what :func:`revcurse.training.fit` calls every step."""

    def loss(model: torch.nn.Module, batch: TextBatch, generator: torch.Generator) -> torch.Tensor:
        return training_loss(objective, model, batch, mask_id, generator, eps=eps,
                             mlm_ratio=mlm_ratio, weighting=weighting, cart_p=cart_p)  # fmt: skip

    return loss
