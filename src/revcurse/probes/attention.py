"""Attention-score coupling (arXiv 2602.02133, one-layer analysis of the forward/reverse scores).

The scores are read by :func:`entity_scores`, the one reader of the toy and the text probes
(:mod:`revcurse.probes.hf`). For every fact, layer and head: the pre-softmax score from the answer position to the context
entity's key in the paired query (S_pair: the mirror or the forward query, see
:mod:`revcurse.probes.inputs`) and in the reverse query (S_rev), read from the ``hook_scores`` hook
points; their Pearson and Spearman correlation across facts; and the same as a function of the
relative distance Delta = n_filler + 2 (fillers inserted at probe time).
"""

from __future__ import annotations

from typing import Any

import torch

from revcurse.config import ToyDataConfig
from revcurse.data.tokenize import Vocab
from revcurse.models.transformer import TransformerLM
from revcurse.probes.inputs import (
    Pairing,
    ProbeBatch,
    check_pairing,
    dataset_at_distance,
    probe_batch,
)


@torch.no_grad()
def entity_scores(
    model: Any,
    ids: torch.Tensor,  # [N, L] the queries as the model reads them (answers masked for an MDM)
    reading: torch.Tensor,  # [N, 2] [start, end) of the rows whose attention is read
    entity: torch.Tensor,  # [N, 2] [start, end) of the given entity's keys
) -> torch.Tensor:
    """The mean pre-softmax score from each query's reading rows to its entity's keys, per layer
    and head ``[layers, heads, N]`` (float64), for any model whose scores
    :func:`~revcurse.models.hf.recording_scores` records (revcurse's Transformer, native LLaDA,
    transformers models). The one score reader of the toy and the text probes: one-token spans
    (the toy facts) are gathered in one indexing step; wider ones are averaged query by query."""
    from revcurse.models.hf import recording_scores

    with recording_scores(model) as cache:
        model(ids)
    layers = [cache[n] for n in sorted(cache)]  # each [N, H, Lq, Lk]
    if bool(
        (reading[:, 1] - reading[:, 0] == 1).all() and (entity[:, 1] - entity[:, 0] == 1).all()
    ):
        rows = torch.arange(len(ids))
        # [N, H] at (reading row, entity key) -> [H, N]
        return torch.stack([s[rows, :, reading[:, 0], entity[:, 0]].T for s in layers]).double()
    per_layer = [
        torch.stack([s[n, :, r0:r1, e0:e1].double().mean(dim=(-1, -2))
                     for n, ((r0, r1), (e0, e1)) in enumerate(zip(reading.tolist(),
                                                                  entity.tolist(), strict=True))],
                    dim=-1)  # [H, N]
        for s in layers
    ]  # fmt: skip
    return torch.stack(per_layer).cpu()


def toy_entity_scores(model: TransformerLM, batch: ProbeBatch) -> torch.Tensor:
    """:func:`entity_scores` of a toy batch: the answer slot reads the entity's one key."""
    one = torch.stack([batch.answer_pos, batch.answer_pos + 1], dim=1)
    return entity_scores(
        model, batch.ids, one, torch.stack([batch.entity_pos, batch.entity_pos + 1], dim=1)
    )


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension (float64)."""
    x = x.double() - x.double().mean(-1, keepdim=True)
    y = y.double() - y.double().mean(-1, keepdim=True)
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-300)


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
    check_pairing(pairing, model.causal)
    cache = {} if cache is None else cache

    def scores(direction: str) -> torch.Tensor:
        if (direction, k) not in cache:
            batch = probe_batch(dataset_at_distance(data, k), vocab, direction, model.causal)
            cache[direction, k] = toy_entity_scores(model, batch)
        return cache[direction, k]

    s_pair, s_rev = scores(pairing), scores("reverse")
    return {
        "pairing": pairing,
        "n_filler": k,
        "delta": k + 2,
        "s_pair": s_pair,
        "s_rev": s_rev,
        "pearson": pearson(s_pair, s_rev),
        "spearman": spearman(s_pair, s_rev),
    }


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
