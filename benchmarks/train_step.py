"""Benchmark: one training step of the toy MDM and ARM vs the same-size model from transformers, and
vs the arithmetic floor of the machine; eager and under ``torch.compile``.

revcurse: the toy default (d_model 64, 1 layer, 1 head, GELU MLP 4x, RMSNorm, RoPE, untied
unembedding). transformers: ``LlamaForCausalLM`` with hidden 64, 1 layer, 1 head, RoPE, RMSNorm
and a SwiGLU MLP of intermediate size 171 (3 x 64 x 171 ~ 2 x 64 x 256 weights, so the
parameter count matches within 0.1%); bidirectional for the MDM through an all-visible 4D mask.
Both are timed on the same batches (float32, one thread) with the same loss code (masked diffusion
for the MDM, next token for the ARM), forward + backward + AdamW. The faster of transformers'
``eager`` and ``sdpa`` attention is the eager baseline. The loss code asks for the logits of the
positions it reads (:func:`revcurse.objectives.logits_at`): revcurse's model unembeds only those
(the masked tokens; every position but the last), transformers' returns all and they are indexed.

The compiled rows wrap each model in ``torch.compile`` (inductor, default mode; the loss and the
optimizer stay eager on both sides). Their compile time is the first step's wall time with
inductor's on-disk caches disabled, i.e. what a fresh machine pays (a warm cache cuts it to well
under a second).

The floor: model FLOPs per step (6 x matmul weights x tokens, plus attention scores and mixing,
3 x 4 x L x d per token and layer) over the machine's measured float32 matmul rate
(``torch.matmul`` 1024 x 1024, one thread), the same full-model count for both libraries (so
revcurse's fraction is a little flattering: it skips part of the unembedding). For revcurse to run
2x faster than transformers, its floor fraction must be twice transformers'.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch._inductor.config as inductor_config

from revcurse.config import ModelConfig, RunConfig, ToyDataConfig
from revcurse.data.tokenize import TextBatch, training_batch
from revcurse.experiments.toy_run import build_dataset
from revcurse.models.transformer import TransformerLM
from revcurse.objectives import training_loss

sys.path.insert(0, __file__.rsplit("/", 1)[0])


def _hf_model(vocab: int, attn: str, causal: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=171,
                      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                      max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, attn_implementation=attn)  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def _hf_forward(hf: torch.nn.Module, causal: bool) -> Callable[..., torch.Tensor]:
    """``forward(ids, attention_mask=None) -> logits`` as the shared loss code calls a model."""

    def forward(ids, attention_mask=None):
        mask = None
        if not causal:
            mask = torch.ones(ids.shape[0], 1, ids.shape[1], ids.shape[1], dtype=torch.bool)
        return hf(input_ids=ids, attention_mask=mask).logits

    return forward


def _step_timer(params, forward, ids, objective, vocab):
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    real = ids != vocab.pad_id
    data = TextBatch(ids, torch.zeros_like(real), real, real)  # every real token learned

    def step():
        loss = training_loss(objective, forward, data, vocab.mask_id, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _time(step, repeats: int, n: int) -> float:
    """Median seconds per step over ``repeats`` blocks of ``n`` steps (after a warm-up block)."""
    for _ in range(n):
        step()
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            step()
        blocks.append((time.perf_counter() - start) / n)
    return statistics.median(blocks)


def _first_step(step) -> float:
    """Wall seconds of the first step (compilation, for a compiled model)."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def matmul_rate() -> float:
    """float32 FLOP/s of a 1024 x 1024 matmul on one thread."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    return 2 * 1024**3 * n / (time.perf_counter() - start)


def model_flops(model: TransformerLM, tokens: int, seq_len: int) -> float:
    matmul_weights = sum(
        p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n
    )
    d, layers = model.cfg.d_model, model.cfg.n_layers
    attention = 3 * 4 * seq_len * d * layers  # QK^T and PV, forward + backward, per token
    return tokens * (6 * matmul_weights + attention)


def _met(ratio: float) -> str:
    return "met" if ratio >= 2 else "NOT met"


def _row(family: str, causal: bool, n_pairs: int, n_filler: int, rate: float, repeats: int,
         tokens_per_block: int) -> tuple[str, str]:  # fmt: skip
    """One toy size: its row of the eager table and its row of the compiled table."""
    cfg = RunConfig(data=ToyDataConfig(n_pairs=n_pairs, n_filler=n_filler),
                    model=ModelConfig(causal=causal))  # fmt: skip
    dataset, vocab = build_dataset(cfg)
    data = training_batch(dataset, vocab, cfg.objective, cfg.train.maskable).ids
    tokens, batch = data.numel(), f"{data.shape[0]} x {data.shape[1]}"
    n = max(20, tokens_per_block // tokens)
    floor = model_flops(TransformerLM(cfg.model, len(vocab)), tokens, data.shape[1]) / rate

    def timed(model: torch.nn.Module, forward: Callable[..., torch.Tensor]) -> tuple[float, float]:
        step = _step_timer(list(model.parameters()), forward, data, cfg.objective, vocab)
        first = _first_step(step)
        return _time(step, repeats, n), first

    def ours(compile_: bool) -> tuple[float, float]:
        torch.manual_seed(0)
        model = TransformerLM(cfg.model, len(vocab))
        return timed(model, torch.compile(model) if compile_ else model)

    def theirs(attn: str, compile_: bool) -> tuple[float, float]:
        hf = _hf_model(len(vocab), attn, causal)
        return timed(hf, _hf_forward(torch.compile(hf) if compile_ else hf, causal))

    t_ours, _ = ours(False)
    t_hf = min(theirs(attn, False)[0] for attn in ("eager", "sdpa"))
    torch._dynamo.reset()  # each compiled model starts from an empty in-memory cache
    t_ours_c, compile_ours = ours(True)
    torch._dynamo.reset()
    t_hf_c, compile_hf = theirs("sdpa", True)
    torch._dynamo.reset()

    ratio, ratio_c = t_hf / t_ours, t_hf / t_ours_c
    eager = (
        f"| {family} | {batch} | {tokens / t_ours:,.0f} | {tokens / t_hf:,.0f} | "
        f"{ratio:.2f}x | {_met(ratio)} | {floor / t_ours:.1%} / {floor / t_hf:.1%} |"
    )
    compiled = (
        f"| {family} | {batch} | {tokens / t_ours_c:,.0f} | {tokens / t_hf_c:,.0f} | "
        f"{ratio_c:.2f}x ({_met(ratio_c)}) | {t_hf_c / t_ours_c:.2f}x | "
        f"{compile_ours:.1f} / {compile_hf:.1f} | {floor / t_ours_c:.1%} |"
    )
    return eager, compiled


def run(repeats: int = 5, tokens_per_block: int = 30_000) -> str:
    """The two tables; each timing is the median of ``repeats`` blocks of about
    ``tokens_per_block`` tokens (at least 20 steps)."""
    torch.set_num_threads(1)
    inductor_config.force_disable_caches = True  # cold compiles: the first-step column
    rate = matmul_rate()
    eager = [
        "| model | batch (seqs x len) | revcurse tokens/s | transformers tokens/s (best of "
        "eager/sdpa) | ratio | target >= 2x | floor fraction: revcurse / transformers |",
        "|---|---|---|---|---|---|---|",
    ]
    compiled = [
        "| model | batch | revcurse compiled tokens/s | transformers compiled tokens/s | "
        "compiled revcurse / eager transformers | compiled / compiled | cold compile s: revcurse "
        "/ transformers | floor fraction: compiled revcurse |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, causal in (("MDM", False), ("ARM", True)):
        for n_pairs, n_filler in ((100, 0), (256, 13)):
            rows = _row(family, causal, n_pairs, n_filler, rate, repeats, tokens_per_block)
            eager.append(rows[0])
            compiled.append(rows[1])
            print(*rows, sep="\n", flush=True)
    lines = [
        "## Training step: revcurse vs transformers (same size, batch, loss, float32, 1 thread)",
        "",
        f"Measured matmul rate: {rate / 1e9:.1f} GFLOP/s (float32, 1024^3, one thread).",
        "",
        "Eager, as each library runs by default:",
        "",
        *eager,
        "",
        "Each model wrapped in `torch.compile` (inductor; loss and AdamW eager on both sides):",
        "",
        *compiled,
        "",
        "Both libraries run the same matmuls, except that revcurse unembeds only the positions",
        "the loss reads (masked tokens for the MDM, all but the last for the ARM). The floor",
        "fraction is the share of a step that the full model's arithmetic would take at the",
        "machine's large-matmul rate (same count for both). A 2x ratio needs revcurse's",
        "fraction to be twice transformers': every other cost of the step (norms, softmax, loss,",
        "AdamW, autograd, Python) would have to shrink far below what it is in either library,",
        "which neither eager code nor inductor's fused kernels achieve at these sizes. Compiled,",
        "revcurse's step gains less than it could: selecting the read positions is a",
        "data-dependent shape, which splits its compiled graph. The ratio moves by about +-15%",
        "between runs of this benchmark on this machine.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
