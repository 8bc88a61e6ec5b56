"""The inputs every probe reads: per-fact queries in the two configurations a probe compares.

A probe compares the *reverse* query ``b REL f.. [M] -> a`` with one other query of the same fact;
which one is the **pairing**, an explicit choice named in every record and table:

* ``mirror``: ``[M] REL f.. b -> a``, the reverse answer in the trained positional configuration (a
  masked-diffusion training example). The mask attends to ``b`` at relative offset +Delta here and
  -Delta in the reverse query: S_mirror = q.R(Delta)k, S_rev = q.R(-Delta)k with the same query
  (the mask) and key (the entity ``b``): the pairing of the paper's one-layer analysis. Only a
  bidirectional model can be asked it.
* ``forward``: ``a REL f.. [M] -> b``, the trained query. The score is from the answer position to
  the context entity (``a`` here, ``b`` in the reverse query): same offset, other entity. The only
  pairing a causal model has (it never sees an entity after the predicting position).

The same pairings are built for natural-language facts in :mod:`revcurse.probes.hf`; on the same
model and facts both paths give the same values (a test holds them to it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from revcurse.config import ToyDataConfig
from revcurse.data.schema import Direction, ReversalDataset
from revcurse.data.tokenize import Vocab, pad_batch
from revcurse.data.toy import build_toy


@dataclass(frozen=True)
class Encoded:
    """One probe query, the one query type of the toy and the text probes: its tokens with the
    answer in place (``prompt answer suffix``) and the spans the probes read."""

    ids: list[int]
    entity: tuple[int, int]  # [start, end) of the given entity
    answer: tuple[int, int]  # [start, end) of the answer (EOS excluded)


@dataclass
class ProbeBatch:
    """Queries with one-token answers stacked for the batched probes (per-example gradients by
    vmap, scores in one forward pass): the model input with the answer masked (MDM) or cut off
    (ARM), the position whose logits score the answer, the answer and the entity's position."""

    ids: torch.Tensor  # [N, L]
    answer_pos: torch.Tensor  # [N] position whose logits score the answer
    answer_id: torch.Tensor  # [N]
    entity_pos: torch.Tensor  # [N] position of the context entity's key

    def __len__(self) -> int:
        return self.ids.shape[0]

    def head(self, n: int) -> ProbeBatch:
        """The first ``n`` queries."""
        return ProbeBatch(
            self.ids[:n], self.answer_pos[:n], self.answer_id[:n], self.entity_pos[:n]
        )


def stackable(queries: Sequence[Encoded]) -> bool:
    """Whether :func:`stack_queries` takes ``queries`` without padding: one length, one-token
    answers and entities (the toy facts)."""
    return len({len(q.ids) for q in queries}) == 1 and all(
        q.answer[1] - q.answer[0] == 1 and q.entity[1] - q.entity[0] == 1 for q in queries
    )


def query_input(
    q: Encoded, causal: bool, mask_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query as the model reads it, ``ids [1, L]`` (the answer masked for an MDM, in place
    for an ARM), and the ``[start, end)`` of the rows whose outputs score the answer ``[1, 2]``:
    its own positions for an MDM, the positions predicting it for an ARM."""
    ids = torch.tensor([q.ids], device=device)
    if not causal:
        ids[0, q.answer[0] : q.answer[1]] = mask_id
    return ids, torch.tensor([reading_rows(q, causal)])


def reading_rows(q: Encoded, causal: bool) -> tuple[int, int]:
    """``[start, end)`` of the rows whose outputs score ``q``'s answer: the answer's own
    (masked) positions for an MDM, the positions predicting it for an ARM."""
    lo, hi = q.answer
    return (lo - 1, hi - 1) if causal else (lo, hi)


def span_distance(q: Encoded, causal: bool) -> float:
    """The mean relative distance |i - j| between the rows that read the answer (i, as
    :func:`reading_rows`) and the given entity's tokens (j): how far apart, in RoPE's
    relative positions, the two entity spans of a query stand."""
    (r0, r1), (e0, e1) = reading_rows(q, causal), q.entity
    return sum(abs(i - j) for i in range(r0, r1) for j in range(e0, e1)) / ((r1 - r0) * (e1 - e0))


def stack_queries(queries: list[Encoded], causal: bool, mask_id: int, pad_id: int) -> ProbeBatch:
    """The batched view of one-token-answer queries (one-token entities too): an MDM fills the
    masked answer slot; an ARM predicts the answer from the token before it (the answer and what
    follows are not part of its input). Rows are left-aligned, padded after the scored position."""
    if any(q.answer[1] - q.answer[0] != 1 or q.entity[1] - q.entity[0] != 1 for q in queries):
        raise ValueError("the batched probes need one-token answers and entities")
    rows, pos = [], []
    for q in queries:
        start = q.answer[0]
        if causal:
            rows.append(q.ids[:start])
            pos.append(start - 1)
        else:
            rows.append(q.ids[:start] + [mask_id] + q.ids[start + 1 :])
            pos.append(start)
    answers = [q.ids[q.answer[0]] for q in queries]
    entity = [q.entity[0] for q in queries]
    return ProbeBatch(pad_batch(rows, pad_id), torch.tensor(pos), torch.tensor(answers),
                      torch.tensor(entity))  # fmt: skip


Pairing = Literal["mirror", "forward"]
PAIRINGS: tuple[Pairing, ...] = ("mirror", "forward")


def pairings_for(causal: bool) -> tuple[Pairing, ...]:
    """The pairings a model can be probed with (module docstring): a causal model has no mirror."""
    return ("forward",) if causal else PAIRINGS


def check_pairing(pairing: str, causal: bool) -> Pairing:
    """``pairing`` if the model allows it; a clear error otherwise."""
    if pairing not in pairings_for(causal):
        kind = "a causal" if causal else "a bidirectional"
        raise ValueError(f"pairing {pairing!r} is not defined for {kind} model; "
                         f"choose one of {list(pairings_for(causal))}")  # fmt: skip
    return pairing  # type: ignore[return-value]


def toy_queries(dataset: ReversalDataset, vocab: Vocab, direction: Direction) -> list[Encoded]:
    """One direction's toy queries as :class:`Encoded`; the given entity is ``a`` for forward,
    ``b`` otherwise: all of its tokens (the bridge's entities have several), located outside the
    answer (the two entities are of different sides, so their tokens never coincide)."""
    side = "a" if direction == "forward" else "b"
    out = []
    for q in dataset.queries[direction]:
        ids = vocab.encode(q.prompt) + vocab.encode(q.answer) + vocab.encode(q.suffix)
        start, end = len(q.prompt), len(q.prompt) + len(q.answer)
        entity = vocab.encode(getattr(dataset.facts[q.fact], side))
        at = next(i for i in range(len(ids) - len(entity) + 1)
                  if ids[i : i + len(entity)] == entity and not start <= i < end)  # fmt: skip
        out.append(Encoded(ids, entity=(at, at + len(entity)), answer=(start, end)))
    return out


def toy_pairs(
    dataset: ReversalDataset, vocab: Vocab, causal: bool
) -> dict[Pairing, list[tuple[Encoded, Encoded]]]:
    """Per pairing the model allows, ``(paired query, reverse query)`` of every toy fact, in the
    form the multi-token probes read (:func:`revcurse.probes.hf.probe_record`); each reverse
    query is one object in every pairing, so it is scored and differentiated once."""
    reverse = toy_queries(dataset, vocab, "reverse")
    return {
        pairing: list(zip(toy_queries(dataset, vocab, pairing), reverse, strict=True))
        for pairing in pairings_for(causal)
    }


def probe_batch(
    dataset: ReversalDataset, vocab: Vocab, direction: Direction, causal: bool
) -> ProbeBatch:
    """One direction's toy queries, stacked (:func:`stack_queries`)."""
    return stack_queries(toy_queries(dataset, vocab, direction), causal, vocab.mask_id,
                         vocab.pad_id)  # fmt: skip


def dataset_at_distance(data: ToyDataConfig, n_filler: int) -> ReversalDataset:
    """The run's facts with ``n_filler`` copies of filler ``<f0>`` between the entities.

    The pairing is drawn before the fillers, so the facts are the same as in training.
    """
    if n_filler == data.n_filler:
        return build_toy(data)
    return build_toy(dataclasses.replace(data, n_filler=n_filler, filler_vocab=1))
