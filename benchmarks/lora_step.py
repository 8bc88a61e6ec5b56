"""Benchmark: revcurse's LoRA fine-tuning loop vs a plain transformers + peft training loop.

The same tiny random ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (hidden 256, 4 layers, 8 heads,
2 KV heads, word vocabulary of Parent–Child), the same LoRA adapters (r 8 on q/k/v/o), the same
Parent–Child training statements in batches of 16, AdamW and gradient clipping at 1.0, float32 on
CPU. revcurse runs :func:`revcurse.training.fit`, the one loop of every run (accelerate, SFT loss
with prompt tokens ignored, LR schedule, loss logging); the baseline is the loop people write by hand:
``model(input_ids, attention_mask, labels=labels).loss`` with prompt and padding labels at -100.
Tokens/s counts real (non-padding) tokens; the two variants alternate so drift favours neither.
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import dataclasses  # noqa: E402

from common import interleaved, median  # noqa: E402

from revcurse.config import FinetuneConfig  # noqa: E402
from revcurse.data.parent_child import load_parent_child  # noqa: E402
from revcurse.data.text import WordTokenizer, encode_pairs  # noqa: E402
from revcurse.models import hf  # noqa: E402
from revcurse.objectives import run_loss  # noqa: E402
from revcurse.training import DataOrder, fit, make_accelerator, select  # noqa: E402

SHAPE = hf.TinyShape(hidden_size=256, n_layers=4, n_heads=8, n_kv_heads=2, intermediate_size=688)


def _data():
    dataset = load_parent_child()
    tok = WordTokenizer.fit(p.prompt + p.completion for p in dataset.train)
    return tok, encode_pairs(tok, dataset.train)


def run(repeats: int = 3, steps: int = 30, batch_size: int = 16) -> str:
    torch.set_num_threads(2)
    tok, data = _data()
    settings = dataclasses.replace(FinetuneConfig().train, steps=steps, batch_size=batch_size,
                                   lr=1e-3, log_every=1)  # fmt: skip
    lines = [
        "## LoRA fine-tuning step: revcurse vs plain transformers + peft (CPU, float32)",
        "",
        f"Tiny random models (hidden {SHAPE.hidden_size}, {SHAPE.n_layers} layers, "
        f"{SHAPE.n_heads} heads / {SHAPE.n_kv_heads} KV heads, vocabulary {len(tok)}), LoRA r 8 on "
        f"q/k/v/o, Parent–Child statements, batch {batch_size}, {steps} steps per timing, "
        f"{repeats} alternating repeats, 2 threads.",
        "",
        "| family | revcurse tokens/s | transformers + peft tokens/s | ratio | target >= 0.9x |",
        "|---|---|---|---|---|",
    ]
    for name in ("llama", "qwen2"):
        lines.append(_row(name, tok, data, settings, repeats, steps, batch_size))
        print(lines[-1], flush=True)
    lines += [
        "",
        "Both sides draw the same batches (same shuffling generator and seed), so they process the",
        "same number of tokens; revcurse's step (the one loop of every run, `training.fit`) also",
        "applies the LR schedule, computes the gradient norm and reads the loss every step, and",
        "unembeds only the positions before answer tokens (the plain loop's model computes every",
        "logit; the loss is the same).",
    ]
    return "\n".join(lines)


def _row(name, tok, data, settings, repeats: int, steps: int, batch_size: int) -> str:
    """One family: both loops timed alternately; the table row."""
    tokens = {"revcurse": 0, "plain": 0}

    def fresh():
        model = hf.build_tiny(name, len(tok), SHAPE, seed=0)
        hf.add_lora(model, r=8, alpha=16, dropout=0.0)
        return model

    def ours():
        model = fresh()
        fitted = fit(model, data, run_loss("next_token", tok.mask_id), settings,
                     accelerator=make_accelerator("cpu"))  # fmt: skip
        tokens["revcurse"] = fitted.tokens

    def plain():
        model = fresh()
        peft_model = model.inner  # the PeftModel around the transformers model
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        order = DataOrder(len(data.ids), batch_size, torch.Generator().manual_seed(0))
        peft_model.train()
        count = 0
        for _ in range(steps):
            b = select(data, order.next(), torch.device("cpu"))
            labels = b.ids.masked_fill(~b.answer_mask, -100)
            loss = peft_model(input_ids=b.ids, attention_mask=b.attention_mask.long(),
                              labels=labels).loss  # fmt: skip
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            count += int(b.attention_mask.sum())
        tokens["plain"] = count

    ours(), plain()  # warm-up (first-call allocations, lazy imports)
    times = interleaved({"revcurse": ours, "plain": plain}, repeats)
    # Construction of the model is inside each timed call for both variants alike; it is a
    # few ms against seconds of training.
    t_ours, t_plain = median(times["revcurse"]), median(times["plain"])
    ours_tps, plain_tps = tokens["revcurse"] / t_ours, tokens["plain"] / t_plain
    ratio = ours_tps / plain_tps
    return (
        f"| {name} | {ours_tps:,.0f} | {plain_tps:,.0f} | {ratio:.2f}x | "
        f"{'met' if ratio >= 0.9 else 'NOT met'} |"
    )


if __name__ == "__main__":
    print(run())
