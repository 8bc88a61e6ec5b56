"""Evaluation on natural-language reversal data: decode, match, and rank by likelihood.

For each query of a split: the model's generation (MDM sampler or ARM greedy, cut at EOS), its
exact / prefix / substring match against every accepted answer, the answer's log-likelihood (exact
for an ARM, the Monte-Carlo bound for an MDM) and its rank among ``n_distractors`` answers of other
queries of the same split (a decoding-free comparison that is always available). The distractors
are drawn from their own generator (``distractor_seed``), so every model evaluated on a split ranks
the same candidates: the per-query outcomes of two models are paired. Every record is kept, so a
split can be re-scored from its saved generations without the model.

Infilling queries (a ``suffix`` after the answer: the mirror query ``[M..M] REL b``) are asked of a
bidirectional model only. The answer region has the length of the query's own answer (the model is
told how many tokens to fill, as in any infilling evaluation; the saved records say so), and the
likelihood scores each candidate between the prompt and the suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from revcurse import files
from revcurse.config import DecodeConfig
from revcurse.data.schema import TextPair
from revcurse.decoding import (
    arm_answer_logprob,
    arm_generate,
    mdm_answer_logprob,
    mdm_generate,
    truncate_at,
)
from revcurse.metrics import (
    exact_match,
    likelihood_rank,
    normalize,
    prefix_match,
    substring_match,
)


def score(record: dict[str, Any]) -> dict[str, Any]:
    """(Re-)compute the match fields of a saved generation record."""
    answers = record["answers"]
    gen = record["generation"]
    return record | {
        "exact": exact_match(gen, answers),
        "prefix": prefix_match(gen, answers),
        "substring": substring_match(gen, answers),
    }


def _logprob(
    model, tokenizer, causal, prompts, answers, suffixes, generator, n_mc, fill
) -> torch.Tensor:
    if causal:
        return arm_answer_logprob(model, prompts, answers)
    return mdm_answer_logprob(model, prompts, answers, mask_id=tokenizer.mask_id, n_samples=n_mc,
                              suffix=suffixes, generator=generator, fill=fill)  # fmt: skip


@torch.no_grad()
def evaluate_split(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[TextPair],
    causal: bool,
    settings: DecodeConfig,
    generator: torch.Generator,
    bos: bool = False,
    eos_fill_to: int | None = None,
    distractor_seed: int = 0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Aggregate metrics and one record per query (``bos``: prompts start with BOS, as the
    statements of from-scratch models do; ``eos_fill_to``: an MDM trained on statements padded
    with EOS to that length sees every query padded the same way)."""
    eos = tokenizer.eos_id
    start = [tokenizer.bos_id] if bos else []
    fill = None if eos_fill_to is None else (eos, eos_fill_to)
    prompts = [start + tokenizer.encode(p.prompt) for p in pairs]
    infill = any(p.suffix for p in pairs)
    suffixes = [tokenizer.encode(p.suffix) if p.suffix else [] for p in pairs]
    if infill and causal:
        raise ValueError("a causal model cannot be asked infilling (mirror) queries")
    if causal:
        out = arm_generate(model, prompts, settings.gen_length, eos_id=eos).tolist()
    elif not infill:
        out = mdm_generate(
            model, prompts, settings.gen_length, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
            steps=settings.steps, block_length=settings.block_length,
            temperature=settings.temperature, generator=generator, fill=fill,
        ).tolist()  # fmt: skip
    else:  # each query fills as many tokens as its answer has, grouped by that length
        out = [[] for _ in pairs]
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(pairs):
            by_length.setdefault(len(tokenizer.encode(p.completion)), []).append(i)
        for length, rows in by_length.items():
            filled = mdm_generate(
                model, [prompts[i] for i in rows], length, mask_id=tokenizer.mask_id,
                pad_id=tokenizer.pad_id, temperature=settings.temperature, generator=generator,
                suffix=[suffixes[i] for i in rows], fill=fill,
            )  # fmt: skip
            for i, row in zip(rows, filled.tolist(), strict=True):
                out[i] = row
    generations = [tokenizer.decode(truncate_at(row, [eos, tokenizer.pad_id])) for row in out]

    # Likelihood of the right answer vs distinct answers of other queries (column 0 = correct);
    # a distractor is never one of the query's own accepted answers. An answer ends with EOS,
    # except in an infilling query, where the suffix follows it.
    distinct = list(dict.fromkeys(p.completion for p in pairs))
    encoded = {a: tokenizer.encode(a) + ([] if infill else [eos]) for a in distinct}
    normal = {a: normalize(a) for a in distinct}
    k = min(settings.n_distractors, len(distinct) - 1)
    candidates = []
    choose = torch.Generator().manual_seed(distractor_seed)
    for p in pairs:
        own = {normalize(x) for x in p.answers}
        others = [a for a in distinct if normal[a] not in own]
        order = torch.randperm(len(others), generator=choose)[:k].tolist()
        candidates.append([p.completion] + [others[i] for i in order])
    k = min(len(c) for c in candidates) - 1
    scores = torch.empty(len(pairs), 1 + k, dtype=torch.float64)
    for j in range(1 + k):
        cand = [encoded[c[j]] for c in candidates]  # every candidate is a split's completion
        scores[:, j] = _logprob(
            model, tokenizer, causal, prompts, cand, suffixes, generator, settings.n_mc, fill
        )
    ranks = likelihood_rank(scores)

    records = [
        score(
            {
                "prompt": p.prompt,
                **({"suffix": p.suffix, "answer_length_given": True} if infill else {}),
                "answers": list(p.answers),
                "generation": g,
                "logprob": float(scores[i, 0]),
                "rank": int(ranks[i]),
                "n_candidates": 1 + k,
                "candidates": candidates[i][: 1 + k],  # the right answer first
                "candidate_logprobs": scores[i].tolist(),
                "source": p.source,
            }
        )
        for i, (p, g) in enumerate(zip(pairs, generations, strict=True))
    ]
    n = max(1, len(records))
    metrics = {
        "n": len(records),
        "exact": sum(r["exact"] for r in records) / n,
        "prefix": sum(r["prefix"] for r in records) / n,
        "substring": sum(r["substring"] for r in records) / n,
        "likelihood_top1": sum(r["rank"] == 1 for r in records) / n,
        "mean_rank": sum(r["rank"] for r in records) / n,
        "chance_top1": 1.0 / (1 + k),
    }
    return metrics, records


def save_generations(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Raw generations and scores as JSONL (atomically)."""
    import json

    files.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def rescore(path: str | Path) -> list[dict[str, Any]]:
    """Re-score saved generations with the current metrics (no model needed)."""
    return [score(r) for r in files.read_jsonl(path)]
