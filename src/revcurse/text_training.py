"""The training loop on encoded (prompt, answer) text: LoRA fine-tuning and from-scratch runs.

One loop for every model that maps ``ids [B, L] (+ attention_mask) -> logits [B, L, V]``: a
Hugging Face model with LoRA adapters (only parameters with ``requires_grad`` are optimised) or a
from-scratch :class:`~revcurse.models.transformer.TransformerLM`. The loss is the MDM SFT loss
(LLaDA Eq. 5: the prompt is never masked, normalised by answer length) or the ARM SFT loss (prompt
tokens ignored); with ``answer_mask = attention_mask`` both become pre-training losses on whole
statements.

It runs through ``accelerate``: ``accelerate launch`` with a config of ``configs/accelerate/`` (DDP,
FSDP, DeepSpeed) spreads it over GPUs and nodes; a plain ``python`` call is the same code path in
one process (bf16 autocast on GPU, float32 on CPU). Each process draws its own batches from a
generator seeded with ``seed + process_index``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from revcurse.config import TextTrainConfig
from revcurse.data.text import TextBatch
from revcurse.objectives import sft_masked_diffusion_loss, sft_next_token_loss
from revcurse.training import lr_factor


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless epochs of shuffled index batches ``[batch_size]`` (the last partial batch dropped
    when there are enough examples for a full one)."""
    while True:
        order = torch.randperm(n, generator=generator)
        stop = n - n % batch_size if n >= batch_size else n
        for i in range(0, stop, batch_size):
            yield order[i : i + batch_size]


def select(data: TextBatch, index: torch.Tensor, device: torch.device) -> TextBatch:
    """Rows ``index`` of ``data``, cut to their longest real length and moved to ``device``."""
    real = data.attention_mask[index]
    length = int(real.sum(dim=1).max())
    return TextBatch(
        data.ids[index, :length].to(device),
        data.prompt_mask[index, :length].to(device),
        data.answer_mask[index, :length].to(device),
        real[:, :length].to(device),
    )


def step_loss(
    model: Any, batch: TextBatch, causal: bool, mask_id: int, eps: float, gen: torch.Generator
) -> torch.Tensor:
    """The SFT loss of one batch for an MDM (``causal=False``) or an ARM."""
    if causal:
        return sft_next_token_loss(model, batch.ids, batch.answer_mask, batch.attention_mask)
    return sft_masked_diffusion_loss(
        model, batch.ids, batch.answer_mask, batch.attention_mask, mask_id, eps, gen
    )


def make_accelerator(device: str = "auto") -> Any:
    """An ``accelerate.Accelerator``: bf16 autocast on GPU, plain float32 on CPU."""
    from accelerate import Accelerator

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else "bf16")


def train_text(
    model: torch.nn.Module,
    data: TextBatch,
    *,
    causal: bool,
    mask_id: int,
    settings: TextTrainConfig,
    accelerator: Any,
    on_step: Callable[[int, float, float], None] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Optimise the trainable parameters of ``model`` on ``data`` for ``settings.steps`` steps.

    ``on_step(step, loss, lr)`` runs after every optimiser step (metrics, probes). Returns the
    wall time and token throughput of the loop.
    """
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    # fused: one kernel for all (many, small) LoRA tensors instead of a loop over them.
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, weight_decay=settings.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    gen = torch.Generator().manual_seed(settings.seed + accelerator.process_index)
    order = batches(len(data.ids), settings.batch_size, gen)
    tokens, start = 0, time.perf_counter()
    bar = tqdm(range(1, settings.steps + 1), desc="train", disable=not progress, leave=False)
    for step in bar:
        batch = select(data, next(order), accelerator.device)
        with accelerator.autocast():
            loss = step_loss(model, batch, causal, mask_id, settings.eps, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss.item()}; stopping")
        accelerator.backward(loss)
        if settings.grad_clip > 0:
            accelerator.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch.attention_mask.sum())
        value = loss.item()
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if on_step is not None:
            on_step(step, value, scheduler.get_last_lr()[0])
    seconds = time.perf_counter() - start
    model.eval()
    return {"train_seconds": seconds, "tokens_per_second": tokens / max(seconds, 1e-9)}
