"""Benchmark: the cost of a from-scratch text MDM's EOS fill, and what ``train.compile`` and
``train.precision=bf16`` save.

A from-scratch MDM's training rows are ``[BOS] statement`` filled with EOS up to
``model.max_seq_len`` (:func:`revcurse.experiments.from_scratch.training_batch`): EOS it learns to
predict, so that the sampler can be given more masks than an answer needs. Person–Description was
published with rows of 52 tokens, while its longest statement, and its longest query with the
generation region the evaluation gives it, need 40 (:func:`~revcurse.experiments.from_scratch.
prepare` computes that length): 49% of the MDM's tokens are EOS at 52, 33% at 40. Each cell is a
process that trains the experiment's MDM (its preset: 2 layers, d_model 128, batch 64) with
:func:`revcurse.training.fit` for ``WARM`` steps and then ``STEPS`` more, timed: rows filled to 52
or to 40, eager or compiled, in float32 or under CPU bf16 autocast (``train.precision=bf16``);
one thread; the cells alternate, ``REPEATS`` each, medians. The ARM (no fill) is timed beside
them, the ratio the issue measured (the MDM cost 1.46x the ARM per step), and compiled in both
precisions. bf16 pays only on a CPU with bf16 matrix instructions: the table says whether this
one has them (``/proc/cpuinfo``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from common import overrides_cell, overrides_main

HERE = Path(__file__).resolve().parent
WARM, STEPS, REPEATS = 20, 200, 2
CELLS = {
    "ARM (no fill)": ["run.model.causal=true"],
    "MDM, rows of 52 (first published)": ["run.model.max_seq_len=52"],
    "MDM, rows of 40 (the longest needed)": ["run.model.max_seq_len=40"],
    "MDM, rows of 40, compiled": ["run.model.max_seq_len=40", "run.train.compile=true"],
    "MDM, rows of 40, compiled, bf16": [
        "run.model.max_seq_len=40",
        "run.train.compile=true",
        "run.train.precision=bf16",
    ],
    "ARM, compiled": ["run.model.causal=true", "run.train.compile=true"],
    "ARM, compiled, bf16": [
        "run.model.causal=true",
        "run.train.compile=true",
        "run.train.precision=bf16",
    ],
}


def bf16_instructions() -> str:
    """The CPU's bf16 matrix instructions named in /proc/cpuinfo (Linux), or why not known."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "not known (no /proc/cpuinfo)"
    found = sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")})
    return ", ".join(found) if found else "none"


def child(sets: list[str]) -> dict[str, float]:
    """One cell in this process: the steady seconds per step and the EOS share of its rows."""
    import dataclasses

    import torch

    from revcurse.config import PersonDescriptionConfig, apply_overrides
    from revcurse.experiments.from_scratch import prepare, training_batch
    from revcurse.models.transformer import TransformerLM
    from revcurse.objectives import run_loss, text_objective
    from revcurse.training import fit

    torch.set_num_threads(1)
    cfg = apply_overrides(PersonDescriptionConfig(), sets).run
    prepared = prepare(cfg)
    data = training_batch(cfg, prepared.statements, prepared.tokenizer)
    eos = float((data.ids == prepared.tokenizer.eos_id).float().mean())
    loss = run_loss(text_objective(cfg.model.causal, cfg.train.objective),
                    prepared.tokenizer.mask_id)  # fmt: skip
    torch.manual_seed(0)
    model = TransformerLM(cfg.model, len(prepared.tokenizer))
    fit(model, data, loss, dataclasses.replace(cfg.train, steps=WARM))  # start-up, compilation
    start = time.perf_counter()
    fit(model, data, loss, dataclasses.replace(cfg.train, steps=STEPS))
    return {"per_step": (time.perf_counter() - start) / STEPS, "eos": eos,
            "row": int(data.ids.shape[1])}  # fmt: skip


def run() -> str:
    start = time.perf_counter()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CELLS}
    for repeat in range(REPEATS):
        for name in list(CELLS) if repeat % 2 == 0 else reversed(list(CELLS)):
            runs[name].append(overrides_cell(__file__, CELLS[name]))
    per = {name: statistics.median(r["per_step"] for r in rs) for name, rs in runs.items()}
    arm = per["ARM (no fill)"]
    lines = [
        "## A from-scratch text MDM's EOS fill (Person–Description), eager, compiled and bf16",
        "",
        f"Each cell a process training the Person–Description preset's model ({WARM} steps, then "
        f"{STEPS} timed), one thread, the cells alternating, {REPEATS} each, medians. The CPU's "
        f"bf16 matrix instructions: {bf16_instructions()}.",
        "",
        "| cell | row length | EOS share of the rows | ms per step | vs the ARM | "
        "12,000 steps, min |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        lines.append(f"| {name} | {rs[0]['row']} | {rs[0]['eos']:.0%} | {per[name] * 1e3:.1f} | "
                     f"{per[name] / arm:.2f}x | {per[name] * 12_000 / 60:.0f} |")  # fmt: skip
    lines += [
        "",
        "Rows of 40 are what the evaluation needs: every statement, and every query with the "
        "generation region it is given, fits in them, so the EOS the MDM learns covers every "
        "position the sampler asks it to fill. bf16 runs each step's forward under CPU bf16 "
        "autocast (weights, gradients and AdamW moments float32; evaluation and probes in "
        "float32): the same run up to bf16 rounding (tests/test_training.py states the "
        "tolerance), so a run trained so is compared with runs trained so.",
        "",
        f"(measured in {time.perf_counter() - start:.0f} s)",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    overrides_main(__doc__, child, run)
