"""Mechanism probes on Hugging Face models (arXiv 2602.02133, the large-model checks of Sec. 5).

The one-layer signatures of the toy probes, measured on multi-token natural-language facts, for each
**pairing** the model allows (:mod:`revcurse.probes.inputs`: ``mirror`` and ``forward`` for a
bidirectional model, ``forward`` for a causal one). A fact is a (forward, reverse) pair of test
queries about the same two entities (:func:`paired_queries`); the reverse query is compared with

* ``forward``: the forward query itself (answer b, the entity a given in the prompt);
* ``mirror``: the forward *statement* with the reverse answer a masked where it stands and b
  visible after it: the configuration a masked-diffusion model trains on. Facts whose entity a does
  not occur verbatim in the forward prompt have no mirror and are left out of that pairing.

Per pairing:

* **attention coupling**: for each fact, ``S_pair`` is the mean pre-softmax score from the answer
  positions of the paired query to the tokens of its given entity, ``S_rev`` the same in the reverse
  query; the Pearson correlation of ``S_pair`` and ``S_rev`` over facts is reported per layer and
  head. Answer positions are the masked answer tokens for an MDM and the positions that *predict*
  answer tokens for an ARM. Scores come from :func:`revcurse.models.hf.recording_scores`. On a toy
  model and toy facts this is exactly :func:`revcurse.probes.attention.coupling` (tested).
* **signals**: the back-propagated error signals of the paired and the reverse query
  (:mod:`revcurse.probes.signals`, summed over the answer's tokens), their mean inner product and
  cosine;
* **gradient alignment**: the cosine between the gradients, on the trainable (LoRA) parameters, of
  the paired query's loss and the reverse query's loss (:func:`revcurse.objectives.answer_loss`:
  the answer fully masked for an MDM, teacher-forced for an ARM), per fact, with its mean, over
  all trainable parameters and per parameter group (the toy probe's cosines: same computation,
  tested equal on the same model and facts).

The given entity is located in each prompt by the other query's answer; when it is not found
verbatim (paraphrased descriptions) the whole prompt stands in for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from revcurse.data.schema import TextPair, entity_text, mirror_query, one_way
from revcurse.data.text import fill_row, frame
from revcurse.objectives import answer_loss
from revcurse.probes.attention import coupling_by_distance, mass_grid, pair_coupling
from revcurse.probes.gradients import group_cosines
from revcurse.probes.inputs import Encoded, Pairing, pairings_for, span_distance
from revcurse.probes.signals import query_signals, signal_alignment


def paired_queries(
    forward: Sequence[TextPair], reverse: Sequence[TextPair], limit: int
) -> list[tuple[TextPair, TextPair]]:
    """Up to ``limit`` (forward, reverse) pairs of the same fact: by fact id where the queries
    carry ids (datasets read as facts, :mod:`revcurse.data.facts`), else where an answer of the
    reverse query names the entity of the forward prompt (each query used once)."""
    if forward and all(p.fact for p in (*forward, *reverse)):
        by_id = {p.fact: p for p in reverse}
        return [(f, by_id[f.fact]) for f in forward if f.fact in by_id][:limit]
    pairs, used = [], set()
    for rev in reverse:
        names = [entity_text(a) for a in rev.answers if entity_text(a)]
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
    entity = entity_text(entity)
    at = pair.prompt.find(entity) if entity else -1
    if at < 0:  # not verbatim in the prompt: the whole prompt is the given information
        pre, ent, post = "", pair.prompt, ""
    else:
        pre, ent, post = (
            pair.prompt[:at],
            pair.prompt[at : at + len(entity)],
            pair.prompt[at + len(entity) :],
        )
    ids, spans = _segments(tokenizer, (pre, ent, post, pair.completion), bos, fill)
    return Encoded(ids, entity=spans[1], answer=spans[3])


def _segments(
    tokenizer: Any, texts: Sequence[str], bos: bool, fill: tuple[int, int] | None
) -> tuple[list[int], list[tuple[int, int]]]:
    """``texts`` tokenized one by one (so every span is exact) and joined in the frame of
    :func:`~revcurse.data.text.frame` (the last text is the answer: the frame's tail, the end of a
    chat template's user turn, goes before it), filled as :func:`~revcurse.data.text.fill_row`
    says; with each text's ``[start, end)``."""
    framing = frame(tokenizer, bos)
    ids: list[int] = list(framing.head)
    spans = []
    for i, text in enumerate(texts):
        if i == len(texts) - 1:
            ids += framing.tail
        start = len(ids)
        ids += tokenizer.encode(text) if text else []
        spans.append((start, len(ids)))
    return fill_row(ids, fill), spans


def encode_mirror(
    tokenizer: Any,
    pair: TextPair,
    answer: str,
    bos: bool = False,
    fill: tuple[int, int] | None = None,
) -> Encoded | None:
    """The mirror query (:func:`~revcurse.data.schema.mirror_query`) with its answer span and the
    forward completion as the given entity; None when ``answer`` is not in the prompt."""
    mirror = mirror_query(pair, answer)
    if mirror is None:
        return None
    post = mirror.suffix[: len(mirror.suffix) - len(pair.completion)]
    texts = (mirror.prompt, mirror.completion, post, pair.completion)
    ids, spans = _segments(tokenizer, texts, bos, fill)
    return Encoded(ids, entity=spans[3], answer=spans[1])


def encode_facts(
    tokenizer: Any,
    facts: Sequence[tuple[TextPair, TextPair]],
    pairings: Sequence[Pairing],
    bos: bool = False,
    fill: tuple[int, int] | None = None,
) -> dict[str, list[tuple[Encoded, Encoded]]]:
    """Per pairing, ``(paired query, reverse query)`` of each fact, each query with the other's
    answer as its given entity (``mirror``: facts without a verbatim entity are left out). A fact's
    reverse query is one object in every pairing, so the probes do its work once."""
    reverse = [encode_query(tokenizer, r, f.completion, bos, fill) for f, r in facts]
    out: dict[str, list[tuple[Encoded, Encoded]]] = {}
    for pairing in pairings:
        encoded = []
        for (f, r), rev in zip(facts, reverse, strict=True):
            if pairing == "forward":
                first = encode_query(tokenizer, f, r.completion, bos, fill)
            else:
                first = encode_mirror(tokenizer, f, r.completion, bos, fill)
            if first is not None:
                encoded.append((first, rev))
        out[pairing] = encoded
    return out


def attention_coupling(
    model: Any,
    facts: Sequence[tuple[Encoded, Encoded]],
    *,
    causal: bool,
    mask_id: int,
    layers: Sequence[int] | None = None,
    cache: dict[int, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Per layer and head, ``S_pair``/``S_rev`` per fact and their correlation over facts, and the
    attention mass on the context entity in each query (mean over facts); each fact's total
    relative distance (:func:`~revcurse.probes.inputs.span_distance` of its paired query plus its
    reverse query) and the correlation within thirds of the facts by that distance
    (:func:`~revcurse.probes.attention.coupling_by_distance`).
    ``cache`` (by query object) lets several pairings score a shared reverse query once."""
    c = pair_coupling(model, facts, causal=causal, mask_id=mask_id, cache=cache)
    first, rev, r = c["s_pair"].movedim(-1, 0), c["s_rev"].movedim(-1, 0), c["pearson"]
    chosen = list(range(first.shape[1])) if layers is None else list(layers)
    # each fact's total relative distance: answer rows to given entity, paired + reverse query
    distance = [span_distance(f, causal) + span_distance(q, causal) for f, q in facts]
    by_distance = coupling_by_distance(c["s_pair"], c["s_rev"], distance)
    return {
        "layers": chosen,
        "r": {str(n): r[n].tolist() for n in chosen},
        "r_mean": {str(n): float(r[n].nanmean()) for n in chosen},
        "s_pair": {str(n): first[:, n].tolist() for n in chosen},
        "s_rev": {str(n): rev[:, n].tolist() for n in chosen},
        # attention probability on the context entity, per head, mean over facts
        "mass_pair": {str(n): c["mass_pair"][n].mean(-1).tolist() for n in chosen},
        "mass_rev": {str(n): c["mass_rev"][n].mean(-1).tolist() for n in chosen},
        "distance": distance,
        **_grids(model, facts, chosen, causal=causal, mask_id=mask_id),
        # the correlation over the nearest, middle and furthest third of the facts
        "r_by_distance": [
            {
                "distance": b["distance"],
                "n": b["n"],
                "r": {str(n): b["pearson"][n].tolist() for n in chosen},
                "r_mean": {str(n): float(b["pearson"][n].nanmean()) for n in chosen},
            }
            for b in by_distance
        ],  # fmt: skip
    }


def _grids(model: Any, facts: Sequence[tuple[Encoded, Encoded]], layers: Sequence[int], *,
           causal: bool, mask_id: int) -> dict[str, Any]:  # fmt: skip
    """``mass_grid_pair`` / ``mass_grid_rev``: per layer, head, answer position and entity token,
    the attention mass (:func:`~revcurse.probes.attention.mass_grid`, mean over facts), where every
    fact's answers and entities have one length each (the toy's); else nothing."""
    pair = mass_grid(model, [f for f, _ in facts], causal=causal, mask_id=mask_id)
    rev = mass_grid(model, [r for _, r in facts], causal=causal, mask_id=mask_id)
    if pair is None or rev is None:
        return {}
    return {"mass_grid_pair": {str(n): pair[n].tolist() for n in layers},
            "mass_grid_rev": {str(n): rev[n].tolist() for n in layers}}  # fmt: skip


def _query_gradient(model: Any, params: dict[str, torch.Tensor], q: Encoded, causal: bool,
                    mask_id: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """The gradient of ``q``'s answer loss on ``params``, by name."""
    device = next(iter(params.values())).device
    ids = torch.tensor([q.ids], device=device)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[0, q.answer[0] : q.answer[1]] = True
    loss = answer_loss(model, ids, answer, torch.ones_like(answer), causal, mask_id)
    grads = torch.autograd.grad(loss, list(params.values()))
    return {n: g.float() for n, g in zip(params, grads, strict=True)}


def gradient_alignments(
    model: Any, facts: dict[str, Sequence[tuple[Encoded, Encoded]]], *, causal: bool, mask_id: int
) -> dict[str, dict[str, Any]]:
    """Per pairing, the cosine between the paired query's and the reverse query's loss gradients
    on the trainable (LoRA) parameters, per fact, over all of them (``cos_pair_rev``, with its
    mean) and per parameter group (``cos_pair_rev_groups``:
    :func:`~revcurse.probes.gradients.group_cosines`, as the toy probe computes its per-fact cosines). Facts are
    visited by reverse query, so each reverse gradient is computed once for every pairing that
    uses it (a backward pass of the whole model each) and at most three gradients are held at a
    time."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    uses: dict[int, list[tuple[str, Encoded]]] = {}  # reverse query -> (pairing, paired query)
    reverse: dict[int, Encoded] = {}
    for pairing, pairs in facts.items():
        for first, rev in pairs:
            uses.setdefault(id(rev), []).append((pairing, first))
            reverse[id(rev)] = rev
    cosines: dict[str, list[dict[str, float]]] = {pairing: [] for pairing in facts}
    # a backward pass of the whole model per query: minutes on a large model, so shown (on a
    # terminal only) with its rate
    bar = tqdm(total=len(reverse) + sum(len(u) for u in uses.values()), desc="  probe gradients",
               unit="query", disable=None, leave=False)  # fmt: skip
    for key, rev in reverse.items():
        g_rev = _query_gradient(model, params, rev, causal, mask_id)
        bar.update()
        for pairing, first in uses[key]:
            g_first = _query_gradient(model, params, first, causal, mask_id)
            cosines[pairing].append(group_cosines(g_first, g_rev))
            bar.update()
    bar.close()
    out = {}
    for pairing, per_fact in cosines.items():
        overall = [c["all"] for c in per_fact]
        groups = sorted({g for c in per_fact for g in c if g != "all"})
        out[pairing] = {
            "cos_pair_rev": overall,
            "cos_pair_rev_mean": sum(overall) / max(1, len(overall)),
            "cos_pair_rev_groups": {g: [c[g] for c in per_fact] for g in groups},
        }
    return out


def gradient_alignment(
    model: Any, facts: Sequence[tuple[Encoded, Encoded]], *, causal: bool, mask_id: int
) -> dict[str, Any]:
    """:func:`gradient_alignments` for one pairing's facts."""
    return gradient_alignments(model, {"pair": facts}, causal=causal, mask_id=mask_id)["pair"]


def probe_record(
    model: Any,
    facts: dict[str, Sequence[tuple[Encoded, Encoded]]],
    *,
    step: int,
    causal: bool,
    mask_id: int,
    layers: Sequence[int] | None = None,
    attention: bool = True,
) -> dict[str, Any]:
    """Both probes at one training step for each pairing in ``facts`` (from :func:`encode_facts`;
    a pairing with fewer than 3 facts has no correlation and is skipped); ``attention=False`` skips
    the coupling, for models whose scores cannot be recorded. A reverse query shared by the
    pairings is scored and differentiated once. Runs in eval mode; the model's training mode is
    restored."""
    was_training = model.training
    model.eval()
    probed = {
        pairing: encoded
        for pairing, encoded in facts.items()
        # a masked model attending to the left only has no mirror pairing, as in the toy's
        if pairing in pairings_for(causal or one_way(model)) and len(encoded) >= 3
    }
    scores: dict[int, torch.Tensor] = {}
    gradients = gradient_alignments(model, probed, causal=causal, mask_id=mask_id)
    signals: dict[int, dict[str, torch.Tensor]] = {}  # per query, shared across pairings

    def signal(q: Encoded) -> dict[str, torch.Tensor]:
        if id(q) not in signals:
            signals[id(q)] = query_signals(model, [q], causal=causal, mask_id=mask_id)
        return signals[id(q)]

    def stacked(queries: list[Encoded]) -> dict[str, torch.Tensor]:
        parts = [signal(q) for q in queries]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    record: dict[str, Any] = {"step": step, "pairings": {}}
    for pairing, encoded in probed.items():
        record["pairings"][pairing] = {
            "n_facts": len(encoded),
            "attention": attention_coupling(
                model, encoded, causal=causal, mask_id=mask_id, layers=layers, cache=scores
            ) if attention else None,
            "gradients": gradients[pairing],
            "signals": signal_alignment(stacked([f for f, _ in encoded]),
                                        stacked([r for _, r in encoded])),
        }  # fmt: skip
    model.train(was_training)
    return record


def text_measure(
    facts: dict[str, Sequence[tuple[Encoded, Encoded]]],
    *,
    causal: bool,
    mask_id: int,
    layers: Sequence[int] | None = None,
    attention: bool = True,
) -> Callable[[Any, int, bool], tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """:func:`probe_record` of ``facts`` as the :data:`~revcurse.probes.runner.Measure` of a
    :class:`~revcurse.probes.runner.ProbeRunner` (no tensors saved)."""

    def measure(model: Any, step: int, final: bool):
        record = probe_record(model, facts, step=step, causal=causal, mask_id=mask_id,
                              layers=layers, attention=attention)  # fmt: skip
        return record, {}

    return measure


def probeable(facts: dict[str, Sequence[tuple[Encoded, Encoded]]]) -> bool:
    """Whether any pairing has the 3 facts a correlation needs."""
    return any(len(f) >= 3 for f in facts.values())
