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
from dataclasses import dataclass
from typing import Literal

import torch

from revcurse.config import RunConfig
from revcurse.data.schema import Direction, ReversalDataset
from revcurse.data.tokenize import Vocab, encode_queries
from revcurse.data.toy import build_toy


@dataclass
class ProbeBatch:
    """One query per fact, ready for the model."""

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


def probe_batch(
    dataset: ReversalDataset, vocab: Vocab, direction: Direction, causal: bool
) -> ProbeBatch:
    """Encode one direction's queries; the context entity is ``a`` for forward, ``b`` otherwise."""
    queries = dataset.queries[direction]
    ids, pos, ans = encode_queries(vocab, queries, causal)
    side = "a" if direction == "forward" else "b"
    entity = torch.tensor([vocab.encode(getattr(dataset.facts[q.fact], side))[0] for q in queries])
    entity_pos = (ids == entity[:, None]).int().argmax(dim=1)  # the entity occurs once per query
    return ProbeBatch(ids, pos, ans, entity_pos)


def dataset_at_distance(cfg: RunConfig, n_filler: int) -> ReversalDataset:
    """The run's facts with ``n_filler`` copies of filler ``<f0>`` between the entities.

    The pairing is drawn before the fillers, so the facts are the same as in training.
    """
    if n_filler == cfg.data.n_filler:
        return build_toy(cfg.data)
    return build_toy(dataclasses.replace(cfg.data, n_filler=n_filler, filler_vocab=1))
