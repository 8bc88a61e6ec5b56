"""Attention-score coupling (arXiv 2602.02133, one-layer analysis of the forward/reverse scores).

The scores are read by :func:`entity_reads`, the one reader of the toy and the text probes
(:mod:`revcurse.probes.hf`). For every fact, layer and head: the pre-softmax score from the
answer position to the context entity's key in the paired query (S_pair: the mirror or the forward query, see
:mod:`revcurse.probes.inputs`) and in the reverse query (S_rev), read from the ``hook_scores`` hook
points; their Pearson and Spearman correlation across facts; and the same as a function of the
relative distance Delta = n_filler + 2 (fillers inserted at probe time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from revcurse.config import ToyDataConfig
from revcurse.data.schema import one_way
from revcurse.data.tokenize import Vocab
from revcurse.models.transformer import TransformerLM
from revcurse.probes.inputs import (
    Encoded,
    Pairing,
    check_pairing,
    dataset_at_distance,
    query_input,
    stack_queries,
    stackable,
    toy_queries,
)

Quantity = Literal["score", "mass"]


@torch.no_grad()
def entity_reads(
    model: Any,
    ids: torch.Tensor,  # [N, L] the queries as the model reads them (answers masked for an MDM)
    reading: torch.Tensor,  # [N, 2] [start, end) of the rows whose attention is read
    entity: torch.Tensor,  # [N, 2] [start, end) of the given entity's keys
    *,
    causal: bool,
) -> dict[Quantity, torch.Tensor]:
    """What each query's reading rows give its entity's keys, per layer and head ``[layers,
    heads, N]`` (float64), from one forward pass of any model whose scores
    :func:`~revcurse.models.hf.recording_scores` records (revcurse's Transformer, native LLaDA,
    transformers models); the one reader of the toy and the text probes.

    ``score``: the mean pre-softmax score q.k/sqrt(Dh) (+ ALiBi bias) over the rows and keys (the
    coupling's S). ``mass``: the attention probability on the entity's keys (summed over them,
    mean over the rows), the softmax taken over the keys a row may see (``causal``: none after
    it, for a causal model or one whose attention is causal; the queries carry no padding
    before the rows read). One-token spans (the toy facts) are
    gathered in one indexing step; wider ones are averaged query by query."""
    from revcurse.models.hf import recording_scores

    with recording_scores(model) as cache:
        model(ids)
    scores = [cache[n].double() for n in sorted(cache)]  # each [N, H, Lq, Lk]
    length = ids.shape[1]
    # the mask is the model's attention's (a masked model may attend causally, model.attention)
    left_only = getattr(model, "attends_causally", causal)
    hidden = torch.ones(length, length, dtype=torch.bool).triu(1) if left_only else None
    probs = [
        (s.masked_fill(hidden.to(s.device), float("-inf")) if hidden is not None else s).softmax(-1)
        for s in scores
    ]  # fmt: skip
    one_token = bool(
        (reading[:, 1] - reading[:, 0] == 1).all() and (entity[:, 1] - entity[:, 0] == 1).all()
    )
    spans = list(zip(reading.tolist(), entity.tolist(), strict=True))

    def read(layers: list[torch.Tensor], over_keys) -> torch.Tensor:  # -> [layers, H, N]
        if one_token:
            rows = torch.arange(len(ids))  # [N, H] at (reading row, entity key) -> [H, N]
            return torch.stack([s[rows, :, reading[:, 0], entity[:, 0]].T for s in layers]).cpu()
        return torch.stack([
            torch.stack([over_keys(s[n, :, r0:r1, e0:e1]).mean(-1)
                         for n, ((r0, r1), (e0, e1)) in enumerate(spans)], dim=-1)  # [H, N]
            for s in layers
        ]).cpu()  # fmt: skip

    return {"score": read(scores, lambda x: x.mean(-1)), "mass": read(probs, lambda x: x.sum(-1))}


@torch.no_grad()
def mass_grid(
    model: Any, queries: Sequence[Encoded], *, causal: bool, mask_id: int
) -> torch.Tensor | None:
    """Where each answer position looks, ``[layers, heads, A, E]`` (float64, mean over the
    queries): the attention probability from the a-th row that reads the answer (its masked
    position for an MDM, the position predicting it for an ARM) on the e-th token of the given
    entity, the softmax over the keys the row may see. None when the queries' answers or entities
    differ in length (no common grid). One forward pass per query."""
    from revcurse.models.hf import recording_scores

    if not queries or len({(q.answer[1] - q.answer[0], q.entity[1] - q.entity[0])
                           for q in queries}) != 1:  # fmt: skip
        return None
    device = next(model.parameters()).device
    total: torch.Tensor | None = None
    for q in queries:
        ids, reading = query_input(q, causal, mask_id, device)
        with recording_scores(model) as cache:
            model(ids)
        (r0, r1), (e0, e1) = reading[0].tolist(), q.entity
        length = ids.shape[1]
        hidden = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        grids = []
        for name in sorted(cache):
            scores = cache[name][0].double()  # [H, L, L]
            if getattr(model, "attends_causally", causal):
                scores = scores.masked_fill(hidden, float("-inf"))
            grids.append(scores.softmax(-1)[:, r0:r1, e0:e1])  # [H, A, E]
        grid = torch.stack(grids).cpu()  # [layers, H, A, E]
        total = grid if total is None else total + grid
    assert total is not None
    return total / len(queries)


def query_scores(
    model: Any,
    queries: Sequence[Encoded],
    *,
    causal: bool,
    mask_id: int,
    cache: dict[Any, torch.Tensor] | None = None,
    quantity: Quantity = "score",
) -> torch.Tensor:
    """One quantity of :func:`entity_reads` for probe queries ``[layers, heads, N]``: the rows
    that read the answer are its (masked) positions for an MDM and the positions predicting it
    for an ARM. Queries of one length with one-token answers and entities (the toy facts) are
    stacked and read in one forward pass; any others query by query. ``cache`` (by quantity and
    the queries' identity: the stacked batch, or each query) keeps every quantity of a forward
    pass, so the other quantity, and other pairings that share the reverse queries, cost none."""
    cache = {} if cache is None else cache
    if stackable(queries):
        key = tuple(map(id, queries))
        if (quantity, key) not in cache:
            batch = stack_queries(list(queries), causal, mask_id, pad_id=mask_id)  # one length
            reads = entity_reads(model, batch.ids, _one(batch.answer_pos),
                                 _one(batch.entity_pos), causal=causal)  # fmt: skip
            cache.update({(name, key): value for name, value in reads.items()})
        return cache[quantity, key]
    device = next(model.parameters()).device
    for q in queries:
        if (quantity, id(q)) not in cache:  # one query at a time, [layers, heads, 1]
            ids, reading = query_input(q, causal, mask_id, device)
            reads = entity_reads(model, ids, reading, torch.tensor([q.entity]), causal=causal)
            cache.update({(name, id(q)): value for name, value in reads.items()})
    return torch.cat([cache[quantity, id(q)] for q in queries], dim=-1)


def _one(pos: torch.Tensor) -> torch.Tensor:
    """One-token spans ``[N, 2]`` at ``pos`` ``[N]``."""
    return torch.stack([pos, pos + 1], dim=1)


def pair_coupling(
    model: Any,
    facts: Sequence[tuple[Encoded, Encoded]],
    *,
    causal: bool,
    mask_id: int,
    cache: dict[Any, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """THE coupling probe: for (paired query, reverse query) facts of one pairing, ``s_pair`` and
    ``s_rev`` ``[layers, heads, N]`` and their Pearson and Spearman correlations over facts
    ``[layers, heads]``; ``mass_pair`` and ``mass_rev`` ``[layers, heads, N]``, the attention
    probability the answer position puts on the context entity in each query (does a head that
    reads the entity in the paired query read it in the reverse one?). ``cache`` (by the
    queries' identity) lets several pairings that share the reverse queries read them once."""
    cache = {} if cache is None else cache

    def scores(queries: list[Encoded]) -> torch.Tensor:
        return query_scores(model, queries, causal=causal, mask_id=mask_id, cache=cache)

    def mass(queries: list[Encoded]) -> torch.Tensor:
        return query_scores(model, queries, causal=causal, mask_id=mask_id, cache=cache,
                            quantity="mass")  # fmt: skip

    pair, rev = [f for f, _ in facts], [r for _, r in facts]
    s_pair, s_rev = scores(pair), scores(rev)
    return {"s_pair": s_pair, "s_rev": s_rev, "pearson": pearson(s_pair, s_rev),
            "spearman": spearman(s_pair, s_rev), "mass_pair": mass(pair),
            "mass_rev": mass(rev)}  # fmt: skip


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension (float64)."""
    x = x.double() - x.double().mean(-1, keepdim=True)
    y = y.double() - y.double().mean(-1, keepdim=True)
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-300)


def coupling_by_distance(
    s_pair: torch.Tensor,  # [layers, heads, N]
    s_rev: torch.Tensor,  # [layers, heads, N]
    distance: Sequence[float],  # [N] each fact's total relative distance
    n_bins: int = 3,
) -> list[dict[str, Any]]:
    """The coupling within groups of facts by distance: the facts sorted by ``distance`` and cut
    into ``n_bins`` groups of (nearly) equal size (fewer when there are not 3 facts per group),
    each with its distance range, its size and the Pearson correlation of ``S_pair`` and ``S_rev``
    over its facts ``[layers, heads]``. Does the coupling weaken as the entities stand further
    apart?"""
    n_bins = min(n_bins, len(distance) // 3)
    order = sorted(range(len(distance)), key=lambda i: distance[i])
    cuts = [round(b * len(order) / max(1, n_bins)) for b in range(n_bins + 1)]
    bins = []
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        index = order[lo:hi]
        bins.append({"distance": [distance[index[0]], distance[index[-1]]], "n": len(index),
                     "pearson": pearson(s_pair[..., index], s_rev[..., index])})  # fmt: skip
    return bins


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension (ties broken by order; scores are continuous)."""
    return x.argsort(-1).argsort(-1).double()


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last dimension."""
    return pearson(ranks(x), ranks(y))


def coupling(
    model: TransformerLM,
    data: ToyDataConfig,
    vocab: Vocab,
    pairing: Pairing,
    n_filler: int | None = None,
    cache: dict[tuple[str, int], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """S_pair, S_rev ``[layers, heads, N]`` and their correlations ``[layers, heads]`` at one
    distance, for the named ``pairing``, on the toy facts ``data`` describes (rebuilt with
    ``n_filler`` fillers; default: as trained). ``cache`` (by direction and filler count) lets several
    pairings of one model score the shared reverse queries once."""
    k = data.n_filler if n_filler is None else n_filler
    check_pairing(pairing, one_way(model))
    cache = {} if cache is None else cache
    queries: dict[str, list[Encoded]] = {}
    for direction in (pairing, "reverse"):  # the same query objects for every pairing
        if ("queries", direction, k) not in cache:
            dataset = dataset_at_distance(data, k)
            cache["queries", direction, k] = toy_queries(dataset, vocab, direction)
        queries[direction] = cache["queries", direction, k]
    facts = list(zip(queries[pairing], queries["reverse"], strict=True))
    c = pair_coupling(model, facts, causal=model.causal, mask_id=vocab.mask_id, cache=cache)
    return {"pairing": pairing, "n_filler": k, "delta": k + 2, **c}


def coupling_vs_distance(
    model: TransformerLM,
    data: ToyDataConfig,
    vocab: Vocab,
    pairing: Pairing,
    distances: list[int],
    cache: dict[tuple[str, int], torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Pearson/Spearman ``[layers, heads]`` for each filler count in ``distances``."""
    out = []
    for k in distances:
        c = coupling(model, data, vocab, pairing, k, cache)
        out.append({"n_filler": k, "delta": c["delta"], "pearson": c["pearson"],
                    "spearman": c["spearman"]})  # fmt: skip
    return out
