"""GPU smoke test of the Hugging Face path: a LoRA step and the probes on tiny models in bf16.

    python scripts/gpu_smoke.py            # on a machine with a CUDA GPU
    python scripts/gpu_smoke.py --device cpu --dtype float32   # the same checks on CPU

For each family with an offline tiny build (llada, llama, qwen2) it builds a random model
(hidden 512, 4 layers), adds LoRA, runs warm-up + timed fine-tuning steps through
the one training loop (``revcurse.training.fit``) on Parent–Child statements (bf16 autocast on GPU), checks
the loss is finite and the adapters moved, runs the attention and gradient probes on 8 facts, and
prints tokens/s. Exits 1 if any check fails. The output is meant to be pasted into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import torch

from revcurse.config import FinetuneConfig
from revcurse.data.parent_child import load_parent_child
from revcurse.data.text import WordTokenizer, encode_pairs
from revcurse.models import hf
from revcurse.objectives import run_loss, text_objective
from revcurse.probes.hf import attention_coupling, encode_facts, gradient_alignment, paired_queries
from revcurse.training import fit, make_accelerator

SHAPE = hf.TinyShape(hidden_size=512, n_layers=4, n_heads=8, n_kv_heads=4, intermediate_size=1376)


def smoke(name: str, device: str, dtype: torch.dtype, steps: int, batch_size: int) -> dict:
    dataset = load_parent_child()
    tok = WordTokenizer.fit(p.prompt + a for ps in dataset.tests.values() for p in ps
                            for a in p.answers)  # fmt: skip
    data = encode_pairs(tok, dataset.train)
    model = hf.build_tiny(name, len(tok), SHAPE, seed=0).to(device=device, dtype=dtype)
    hf.add_lora(model, r=8, alpha=16, dropout=0.0)
    before = {n: p.detach().clone() for n, p in hf.lora_parameters(model).items()}
    accelerator = make_accelerator(device)
    run = run_loss(text_objective(model.causal), tok.mask_id)
    losses: list[float] = []

    def loss_fn(m, batch, gen):
        loss = run(m, batch, gen)
        losses.append(loss.item())
        return loss

    settings = FinetuneConfig().train
    warm = dataclasses.replace(settings, steps=3, batch_size=batch_size, lr=1e-3)
    fit(model, data, loss_fn, warm, accelerator=accelerator)
    losses.clear()
    timed = dataclasses.replace(settings, steps=steps, batch_size=batch_size, lr=1e-3, seed=1)
    fitted = fit(model, data, loss_fn, timed, accelerator=accelerator)
    moved = any(not torch.equal(p, before[n]) for n, p in hf.lora_parameters(model).items())
    pairs = paired_queries(dataset.tests["forward"], dataset.tests["reverse"], 8)
    facts = encode_facts(tok, pairs, ["forward"])["forward"]  # the pairing every family has
    start = time.perf_counter()
    att = attention_coupling(model, facts, causal=model.causal, mask_id=tok.mask_id)
    grads = gradient_alignment(model, facts, causal=model.causal, mask_id=tok.mask_id)
    probe_s = time.perf_counter() - start
    ok = all(math.isfinite(x) for x in losses) and moved
    ok = ok and all(abs(c) <= 1 for c in grads["cos_pair_rev"])
    return {
        "family": name,
        "ok": ok,
        "tokens_per_second": fitted.tokens_per_second,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "attention_r_layer0": att["r_mean"]["0"],
        "cos_fwd_rev_mean": grads["cos_pair_rev_mean"],
        "probe_seconds": probe_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible; run with --device cpu --dtype float32 to check on CPU")
        return 1
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"device: {where}; torch {torch.__version__}; dtype {args.dtype}; shape {SHAPE}")
    print("| family | ok | tokens/s | loss first -> last | attention r (layer 0) | "
          "grad cos fwd/rev | probe s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    failed = False
    for name in ("llada", "llama", "qwen2"):
        r = smoke(name, args.device, getattr(torch, args.dtype), args.steps, args.batch_size)
        failed |= not r["ok"]
        print(f"| {name} | {'yes' if r['ok'] else 'NO'} | {r['tokens_per_second']:,.0f} | "
              f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} | {r['attention_r_layer0']:+.3f} | "
              f"{r['cos_fwd_rev_mean']:+.3f} | {r['probe_seconds']:.2f} |", flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
