"""Mechanism probes on Hugging Face models (arXiv 2602.02133, the large-model checks of Sec. 5).

The one-layer signatures of the toy probes, measured on multi-token natural-language facts:

* **attention coupling**: for each fact, ``S_fwd`` is the mean pre-softmax score from the answer
  positions of the forward query to the tokens of the given entity in its prompt, ``S_rev`` the
  same in the reverse query; the Pearson correlation of ``S_fwd`` and ``S_rev`` over facts is
  reported per layer and head. Answer positions are the masked answer tokens for an MDM and the
  positions that *predict* answer tokens for an ARM. Scores come from
  :func:`revcurse.models.hf.recording_scores`.
* **gradient alignment**: the cosine between the gradients, on the LoRA parameters, of the forward
  query's loss and the reverse query's loss (:func:`revcurse.objectives.sft_answer_loss`: the
  answer fully masked for an MDM, teacher-forced for an ARM), per fact, with its mean.

A *fact* is a (forward, reverse) pair of test queries about the same two entities
(:func:`paired_queries`). The given entity is located in each prompt by the other query's answer;
when it is not found verbatim (paraphrased descriptions) the whole prompt stands in for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from revcurse.data.schema import TextPair
from revcurse.data.text import fill_row
from revcurse.objectives import sft_answer_loss
from revcurse.probes.attention import pearson
from revcurse.probes.gradients import cosine


@dataclass(frozen=True)
class Encoded:
    """One query as ids with the spans the probes read."""

    ids: list[int]
    entity: tuple[int, int]  # [start, end) of the given entity in the prompt
    answer: tuple[int, int]  # [start, end) of the answer (EOS excluded)


def paired_queries(
    forward: Sequence[TextPair], reverse: Sequence[TextPair], limit: int
) -> list[tuple[TextPair, TextPair]]:
    """Up to ``limit`` (forward, reverse) pairs where an answer of the reverse query names the
    entity of the forward prompt (each query used once)."""
    pairs, used = [], set()
    for rev in reverse:
        names = [a.strip() for a in rev.answers if a.strip()]
        for i, fwd in enumerate(forward):
            if i not in used and any(n in fwd.prompt for n in names):
                pairs.append((fwd, rev))
                used.add(i)
                break
        if len(pairs) == limit:
            break
    return pairs


def encode_query(
    tokenizer: Any,
    pair: TextPair,
    entity: str,
    bos: bool = False,
    fill: tuple[int, int] | None = None,
) -> Encoded:
    """``prompt + answer`` with the entity's token span (segments are tokenized separately so the
    span is exact); ``bos`` prepends BOS; ``fill = (token, length)`` appends ``token`` up to
    ``length`` (the EOS fill the MDM was trained with). A final period of the entity is not part
    of it."""
    entity = entity.strip().removesuffix(".")
    at = pair.prompt.find(entity) if entity else -1
    if at < 0:  # not verbatim in the prompt: the whole prompt is the given information
        pre, ent, post = "", pair.prompt, ""
    else:
        pre, ent, post = (
            pair.prompt[:at],
            pair.prompt[at : at + len(entity)],
            pair.prompt[at + len(entity) :],
        )
    parts = [tokenizer.encode(s) if s else [] for s in (pre, ent, post)]
    if bos:
        parts[0] = [tokenizer.bos_id, *parts[0]]
    answer = tokenizer.encode(pair.completion)
    n_prompt = len(parts[0]) + len(parts[1]) + len(parts[2])
    ids = fill_row(parts[0] + parts[1] + parts[2] + answer, fill)
    return Encoded(
        ids, (len(parts[0]), len(parts[0]) + len(parts[1])), (n_prompt, n_prompt + len(answer))
    )


def encode_facts(
    tokenizer: Any,
    facts: Sequence[tuple[TextPair, TextPair]],
    bos: bool = False,
    fill: tuple[int, int] | None = None,
) -> list[tuple[Encoded, Encoded]]:
    """Both queries of each fact, each with the other's answer as its given entity."""
    return [
        (
            encode_query(tokenizer, f, r.completion, bos, fill),
            encode_query(tokenizer, r, f.completion, bos, fill),
        )
        for f, r in facts
    ]


def _model_input(q: Encoded, causal: bool, mask_id: int, device) -> torch.Tensor:
    ids = torch.tensor([q.ids], device=device)
    if not causal:
        ids[0, q.answer[0] : q.answer[1]] = mask_id
    return ids  # [1, L]


def _query_positions(q: Encoded, causal: bool) -> slice:
    lo, hi = q.answer
    return slice(lo - 1, hi - 1) if causal else slice(lo, hi)


@torch.no_grad()
def attention_coupling(
    model: Any,
    facts: Sequence[tuple[Encoded, Encoded]],
    *,
    causal: bool,
    mask_id: int,
    layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Per layer and head, ``S_fwd``/``S_rev`` per fact and their correlation over facts."""
    from revcurse.models.hf import recording_scores  # transformers only when an HF model runs

    device = next(model.parameters()).device
    s = {"fwd": [], "rev": []}  # each: per fact, [n_layers, H]
    for pair in facts:
        for key, q in zip(("fwd", "rev"), pair, strict=True):
            with recording_scores(model) as cache:
                model(_model_input(q, causal, mask_id, device))
            rows = _query_positions(q, causal)
            e0, e1 = q.entity
            per_layer = [
                cache[n][0, :, rows, e0:e1].float().mean(dim=(-1, -2)) for n in sorted(cache)
            ]  # each [H]
            s[key].append(torch.stack(per_layer).cpu())
    fwd, rev = torch.stack(s["fwd"]), torch.stack(s["rev"])  # [F, n_layers, H]
    chosen = list(range(fwd.shape[1])) if layers is None else list(layers)
    r = pearson(fwd.movedim(0, -1), rev.movedim(0, -1))  # over facts: [n_layers, H]
    return {
        "layers": chosen,
        "r": {str(n): r[n].tolist() for n in chosen},
        "r_mean": {str(n): float(r[n].nanmean()) for n in chosen},
        "s_fwd": {str(n): fwd[:, n].tolist() for n in chosen},
        "s_rev": {str(n): rev[:, n].tolist() for n in chosen},
    }


def gradient_alignment(
    model: Any, facts: Sequence[tuple[Encoded, Encoded]], *, causal: bool, mask_id: int
) -> dict[str, Any]:
    """Cosine between forward-query and reverse-query loss gradients on the trainable (LoRA)
    parameters, per fact, and its mean."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    cosines = []
    for pair in facts:
        grads = []
        for q in pair:
            ids = torch.tensor([q.ids], device=device)
            answer = torch.zeros_like(ids, dtype=torch.bool)
            answer[0, q.answer[0] : q.answer[1]] = True
            loss = sft_answer_loss(model, ids, answer, torch.ones_like(answer), causal, mask_id)
            flat = torch.autograd.grad(loss, params)
            grads.append(torch.cat([g.reshape(-1).float() for g in flat]))
        cosines.append(float(cosine(grads[0], grads[1])))
    return {"cos_fwd_rev": cosines, "cos_fwd_rev_mean": sum(cosines) / max(1, len(cosines))}


def probe_record(
    model: Any,
    facts: Sequence[tuple[Encoded, Encoded]],
    *,
    step: int,
    causal: bool,
    mask_id: int,
    layers: Sequence[int] | None = None,
    attention: bool = True,
) -> dict[str, Any]:
    """Both probes at one training step (``attention=False`` skips the coupling, for models whose
    scores cannot be recorded), in eval mode; the model's training mode is restored."""
    was_training = model.training
    model.eval()
    record = {
        "step": step,
        "n_facts": len(facts),
        "attention": attention_coupling(
            model, facts, causal=causal, mask_id=mask_id, layers=layers
        ) if attention else None,
        "gradients": gradient_alignment(model, facts, causal=causal, mask_id=mask_id),
    }  # fmt: skip
    model.train(was_training)
    return record


def probe_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline numbers of a :func:`probe_record` for run summaries."""
    if record is None:
        return None
    return {
        "attention_r_mean": record["attention"]["r_mean"] if record["attention"] else {},
        "cos_fwd_rev_mean": record["gradients"]["cos_fwd_rev_mean"],
    }
