"""The inputs every probe reads: per-fact prompts in the two positional configurations it compares.

For each fact the probes compare the configuration the model is *trained* in with the *reverse*
query, at the position that predicts the answer and the key of the context entity:

* MDM: trained = ``[M] REL f.. b -> a`` (the ``mirror`` query: a masked-diffusion training example
  that recovers ``a`` from ``b``), reverse = ``b REL f.. [M] -> a``. The mask attends to ``b`` at
  relative offset +Delta in one and -Delta in the other: S_fwd = q.R(Delta)k, S_rev = q.R(-Delta)k
  with the same q (the mask) and k (the entity ``b``), the pairing of the paper.
* ARM: trained = ``a REL f.. -> b`` (forward query), reverse = ``b REL f.. -> a``; the score is
  from the answer-predicting (last prompt) position to the context entity. A causal model never
  sees an entity after the predicting position, so the two configurations share the offset and
  differ in the entity.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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


def coupled_directions(causal: bool) -> tuple[Direction, Direction]:
    """(trained configuration, reverse query) compared by the probes (module docstring)."""
    return ("forward", "reverse") if causal else ("mirror", "reverse")


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
