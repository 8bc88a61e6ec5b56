"""Training objectives: masked diffusion (MDM) and next-token prediction (ARM).

Masked diffusion follows LLaDA (Nie et al. 2025, Eq. 3) / MDLM (Sahoo et al. 2024): draw a mask
ratio ``t ~ U(eps, 1)`` per sequence, replace each token by ``[MASK]`` independently with probability
``t``, and minimise the cross-entropy on the masked positions weighted by ``1/t``:

    L(theta) = -E_{x, t, x_t} [ 1/(t L) * sum_{i: x_t^i = [MASK]} log p_theta(x^i | x_t) ],

an upper bound on the negative log-likelihood. ``L`` is the number of maskable tokens of the
sequence. The ARM minimises the usual next-token cross-entropy.

Which tokens may be masked is the caller's choice (``maskable``: every real token by default; the
toy runs offer entities only, or all but fillers, ``train.maskable``).

Two ablations of the any-order objective (the ``objective`` experiment):

* ``mlm``: a BERT-style fixed masking ratio r instead of t ~ U(eps, 1) (same estimator with t = r);
* ``answer_only``: a bidirectional encoder that only ever sees ``a REL [M]``: the answer entity of
  each statement is masked, nothing else (no any-order masking at all).

Every loss reads the logits of a few positions only (the masked tokens, the answer, the positions
that have a next token). :func:`logits_at` asks the model for exactly those rows: models that take a
``where`` keyword (:class:`~revcurse.models.transformer.TransformerLM`,
:class:`~revcurse.models.hf.LogitsModel`) run the unembedding on them alone, which for a 126k-152k
vocabulary removes the largest tensor of a fine-tuning step; any other ``ids -> logits`` callable
gets its full logits indexed, with the same result.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward (noising) process: each maskable token becomes ``mask_id`` with probability t.

    Returns ``(noisy [B, L], masked [B, L] bool)``.
    """
    masked = torch.rand(tokens.shape, generator=generator) < t[:, None]
    if maskable is not None:
        masked &= maskable
    return tokens.masked_fill(masked, mask_id), masked


def masked_diffusion_loss(
    logits: torch.Tensor,  # [N, V] at the masked positions (row-major order)
    targets: torch.Tensor,  # [B, L] clean tokens
    masked: torch.Tensor,  # [B, L] bool
    t: torch.Tensor,  # [B]
    n_maskable: torch.Tensor,  # [B] number of maskable tokens per sequence
) -> torch.Tensor:
    """``mean_b  sum_{i masked} CE(logits_bi, x_bi) / (t_b * n_b)`` (the estimator of Eq. 3)."""
    ce = F.cross_entropy(logits, targets[masked], reduction="none")  # [N]
    per_token = torch.zeros(targets.shape, dtype=ce.dtype, device=ce.device)
    per_token = per_token.masked_scatter(masked, ce)  # [B, L], zero on visible tokens
    per_seq = per_token.sum(dim=1) / (t * n_maskable.clamp(min=1))  # [B]
    return per_seq.mean()


def masked_diffusion_step_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,  # [B, L]
    mask_id: int,
    pad_id: int,
    eps: float,
    generator: torch.Generator,
    maskable: torch.Tensor | None = None,  # [B, L] bool; default: every real token
) -> torch.Tensor:
    """One Monte-Carlo draw of the masked diffusion loss for a batch of clean sequences: the SFT
    loss with the ``maskable`` tokens as its answer (the same draws, so the same value)."""
    real = tokens != pad_id  # [B, L]
    maskable = real if maskable is None else maskable & real
    return sft_masked_diffusion_loss(model, tokens, maskable, real, mask_id, eps, generator)


def next_token_step_loss(model: torch.nn.Module, tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean CE of predicting ``tokens[:, 1:]`` from positions ``0 .. L-2``, padding ignored (only
    the positions that have a next token are unembedded)."""
    real = tokens != pad_id  # [B, L]
    return _next_token_ce(model, tokens, real[:, 1:], _key_mask(real))


def _next_token_ce(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L]
    predicted: torch.Tensor,  # [B, L-1] bool: which of ids[:, 1:] are predicted
    attention_mask: torch.Tensor | None,  # [B, L]
) -> torch.Tensor:
    """Mean CE of ``ids[:, 1:][predicted]`` given the positions before them."""
    where = F.pad(predicted, (0, 1))  # [B, L]: position i predicts token i + 1
    logits = logits_at(model, ids, attention_mask, where)  # [N, V]
    return F.cross_entropy(_at_least_float32(logits), ids[:, 1:][predicted])


def _key_mask(real: torch.Tensor) -> torch.Tensor | None:
    """The padding mask to pass to the model, or None when nothing is padded (saves a masked_fill)."""
    return None if bool(real.all()) else real


def fixed_ratio_step_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,  # [B, L]
    ratio: float,
    mask_id: int,
    pad_id: int,
    generator: torch.Generator,
    maskable: torch.Tensor | None = None,  # [B, L] bool; default: every real token
) -> torch.Tensor:
    """MLM with a fixed masking ratio: the masked diffusion estimator at constant t = ratio."""
    real = tokens != pad_id
    maskable = real if maskable is None else maskable & real
    t = torch.full((tokens.shape[0],), ratio)
    noisy, masked = mask_tokens(tokens, t, mask_id, generator, maskable)
    logits = logits_at(model, noisy, _key_mask(real), masked)  # [N, V]
    return masked_diffusion_loss(logits, tokens, masked, t, maskable.sum(dim=1))


def answer_only_step_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,  # [B, L]
    answer_mask: torch.Tensor,  # [B, L] bool: the answer entity of each statement
    mask_id: int,
    pad_id: int,
) -> torch.Tensor:
    """Mask exactly the answer entity; mean cross-entropy over its tokens."""
    noisy = tokens.masked_fill(answer_mask, mask_id)
    logits = logits_at(model, noisy, _key_mask(tokens != pad_id), answer_mask)  # [N, V]
    return F.cross_entropy(logits, tokens[answer_mask])


def training_loss(
    objective: str,
    model: torch.nn.Module,
    batch: torch.Tensor,  # [B, L]
    mask_id: int,
    pad_id: int,
    eps: float,
    generator: torch.Generator,
    *,
    mlm_ratio: float = 0.15,
    answer_mask: torch.Tensor | None = None,  # [B, L], for answer_only
    maskable: torch.Tensor | None = None,  # [B, L], for masked_diffusion and mlm
) -> torch.Tensor:
    """The loss a run optimises on one batch (``objective``: masked_diffusion, next_token, mlm or
    answer_only; ``maskable``: the tokens the first two may mask, default every real token)."""
    if objective == "masked_diffusion":
        return masked_diffusion_step_loss(model, batch, mask_id, pad_id, eps, generator, maskable)
    if objective == "next_token":
        return next_token_step_loss(model, batch, pad_id)
    if objective == "mlm":
        return fixed_ratio_step_loss(model, batch, mlm_ratio, mask_id, pad_id, generator, maskable)
    if objective == "answer_only":
        if answer_mask is None:
            raise ValueError("answer_only needs the answer positions of the batch")
        return answer_only_step_loss(model, batch, answer_mask, mask_id, pad_id)
    raise ValueError(f"unknown objective {objective!r}")


# --------------------------------------------------------------------------------------------------
# Supervised fine-tuning on (prompt, answer) pairs (Hugging Face models and natural-language data)
# --------------------------------------------------------------------------------------------------


def sft_masked_diffusion_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L] prompt + answer (+ EOS), right-padded
    answer_mask: torch.Tensor,  # [B, L] bool: the tokens that may be masked
    attention_mask: torch.Tensor,  # [B, L] bool: real tokens
    mask_id: int,
    eps: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """LLaDA's SFT loss (Nie et al. 2025, Eq. 5): the prompt is never masked; each answer token is
    masked with probability ``t ~ U(eps, 1)``; ``sum CE / t`` over masked tokens is normalised by
    the answer length and averaged over the batch. With ``answer_mask = attention_mask`` it is the
    pre-training loss of Eq. 3."""
    t = sample_mask_ratio(ids.shape[0], eps, generator)
    draw = torch.rand(ids.shape, generator=generator) < t[:, None]  # [B, L], on the CPU generator
    masked = draw.to(ids.device) & answer_mask
    noisy = ids.masked_fill(masked, mask_id)
    logits = logits_at(model, noisy, _key_mask(attention_mask), masked)  # [N, V]
    return masked_diffusion_loss(
        _at_least_float32(logits), ids, masked, t.to(ids.device), answer_mask.sum(dim=1)
    )


def sft_next_token_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L]
    answer_mask: torch.Tensor,  # [B, L] bool: the tokens that are predicted
    attention_mask: torch.Tensor,  # [B, L] bool
) -> torch.Tensor:
    """The ARM's SFT loss: next-token cross-entropy on answer tokens only (prompt tokens ignored),
    averaged over the answer tokens of the batch."""
    return _next_token_ce(model, ids, answer_mask[:, 1:], _key_mask(attention_mask))


def sft_answer_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,  # [B, L]
    answer_mask: torch.Tensor,  # [B, L] bool
    attention_mask: torch.Tensor,  # [B, L] bool
    causal: bool,
    mask_id: int,
) -> torch.Tensor:
    """A deterministic query loss for the probes: mean CE of the answer tokens given the prompt,
    with every answer token masked (MDM, the t = 1 term of the SFT loss) or teacher-forced (ARM)."""
    if causal:
        return sft_next_token_loss(model, ids, answer_mask, attention_mask)
    noisy = ids.masked_fill(answer_mask, mask_id)
    logits = logits_at(model, noisy, _key_mask(attention_mask), answer_mask)  # [N, V]
    return F.cross_entropy(_at_least_float32(logits), ids[answer_mask])
