"""Benchmark: generating answers with an 8B-sized vocabulary, before and after bounded batches.

LLaDA's Parent–Child recipe evaluates 1513 queries with a 126,464-token vocabulary. The sampler
used to build full ``[B, L, V]`` logits (and their float64 softmax) for a whole split at once, and
greedy ARM decoding reran the whole sequence for every token with full logits. Now the MDM
sampler unembeds only the masked positions of the current block, both decoders take
``eval.batch_size`` queries at a time, and a Hugging Face ARM decodes with transformers'
``generate`` and its KV cache.

Each cell runs in its own process (its peak resident memory is that process's ``ru_maxrss``), one
after another, on tiny random models (LLaDA and Llama shapes, hidden 64, 2 layers) whose only large
part is the vocabulary: prompts of 12 tokens, 8 answer tokens, one per step. "Before" is
:mod:`revcurse.decoding` as of commit ``BEFORE`` (read from git history, run against the same
model); a cell whose process would need more memory than ``CAP_GB`` is stopped by an address-space
limit and reported as such, with the size of the logits it would hold.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VOCAB, N_QUERIES, PROMPT, ANSWER, BATCH = 126_464, 1513, 12, 8, 64
BEFORE = "3543d71"
"""The last commit whose sampler held a whole split's logits (the code this one replaced)."""
CAP_GB = 16


def _decoding_before() -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{BEFORE}:src/revcurse/decoding.py"], cwd=HERE,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    spec = importlib.util.spec_from_loader("decoding_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{BEFORE}:decoding.py", "exec"), module.__dict__)
    return module


def child(kind: str, impl: str, n: int) -> dict:
    """One cell, in this process: seconds and peak memory of decoding ``n`` queries."""
    from revcurse import decoding
    from revcurse.models import hf

    cap = CAP_GB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_num_threads(1)
    family = "llada" if kind == "mdm" else "llama"
    model = hf.build_tiny(family, VOCAB, hf.TinyShape(hidden_size=64, n_layers=2), seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, VOCAB, (PROMPT,), generator=gen).tolist() for _ in range(n)]
    module = _decoding_before() if impl == "before" else decoding
    batch = {} if impl == "before" else {"batch_size": BATCH}
    start = time.perf_counter()
    try:
        if kind == "mdm":
            out = module.mdm_generate(model, prompts, ANSWER, mask_id=hf.MASK_TOKEN_ID, pad_id=0,
                                      **batch)  # fmt: skip
        else:
            out = module.arm_generate(model, prompts, ANSWER, eos_id=1, **batch)
    except (RuntimeError, MemoryError) as err:
        return {"error": str(err).splitlines()[0][:80]}
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "tokens": out.shape[0] * out.shape[1]}


def cell(kind: str, impl: str, n: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, impl, str(n)],
                          capture_output=True, text=True, cwd=HERE.parent)  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["killed"])[-1][:80]}
    return json.loads(lines[-1])


def run() -> str:
    start = time.perf_counter()
    logits_gb = N_QUERIES * (PROMPT + ANSWER) * VOCAB * 4 / 2**30
    rows = []
    for kind, label in (("mdm", "MDM sampler (LLaDA shape)"), ("arm", "ARM greedy (Llama shape)")):
        for n in (256, N_QUERIES):
            before, after = cell(kind, "before", n), cell(kind, "after", n)

            def show(c: dict) -> str:
                if "error" in c:
                    return f"stopped at the {CAP_GB} GB cap ({c['error']})"
                return f"{c['seconds']:.1f} s, {c['peak_mb'] / 1024:.2f} GB"

            ratio = ""
            if "error" not in before and "error" not in after:
                ratio = (f"{before['peak_mb'] / after['peak_mb']:.1f}x less memory, "
                         f"{before['seconds'] / after['seconds']:.1f}x faster")  # fmt: skip
            rows.append(f"| {label} | {n} | {show(before)} | {show(after)} | {ratio} |")
    return "\n".join([
        "## Evaluation with a 126,464-token vocabulary (bounded batches, KV cache)",
        "",
        f"Tiny random models (hidden 64, 2 layers) with LLaDA's vocabulary; prompts of {PROMPT} "
        f"tokens, {ANSWER} answer tokens one per step; 1 thread; each cell its own process (peak "
        f"resident memory), capped at {CAP_GB} GB of address space. Before: the decoders as of "
        f"commit {BEFORE} (a whole split at once, full logits). After: eval.batch_size={BATCH}, "
        "the MDM unembedding only the masked positions of its block, the ARM decoding with "
        "transformers' KV cache.",
        "",
        "| decoder | queries | before | after | after vs before |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"For the recipe's {N_QUERIES} queries the old sampler's float32 logits alone were "
        f"{logits_gb:.1f} GB per step (and twice that again for its float64 softmax): it does not "
        "fit this 24 GB machine, nor most GPUs beside an 8B model.",
        "",
        f"(measured in {time.perf_counter() - start:.0f} s)",
    ])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "IMPL", "N"))
    args = parser.parse_args()
    if args.child:
        kind, impl, n = args.child
        print(json.dumps(child(kind, impl, int(n))))
    else:
        print(run())
