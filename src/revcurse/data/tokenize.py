"""Word-level vocabularies for from-scratch models, and encoding of statements and queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from revcurse.data.schema import ReversalDataset, Tokens
from revcurse.errors import RevcurseError

PAD, MASK, BOS, EOS = "<pad>", "<mask>", "<bos>", "<eos>"
SPECIALS = (PAD, MASK, BOS, EOS)


class Vocab:
    """A fixed token <-> id map whose first ids are the special tokens (pad=0, mask=1, bos=2, eos=3)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens: list[str] = list(SPECIALS)
        for tok in tokens:
            if tok not in SPECIALS:
                self.tokens.append(tok)
        self.index = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")
        self.pad_id, self.mask_id, self.bos_id, self.eos_id = (self.index[t] for t in SPECIALS)

    @classmethod
    def from_dataset(cls, dataset: ReversalDataset) -> Vocab:
        """Every token of the training statements and queries, in order of first appearance."""
        seen: dict[str, None] = {}
        for seq in dataset.train:
            seen.update(dict.fromkeys(seq))
        for queries in dataset.queries.values():
            for q in queries:
                seen.update(dict.fromkeys(q.prompt + q.answer + q.suffix))
        seen.update(dict.fromkeys(dataset.extra_tokens))
        return cls(seen)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        try:
            return [self.index[t] for t in tokens]
        except KeyError as err:
            raise RevcurseError(f"token {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> Tokens:
        return tuple(self.tokens[i] for i in ids)

    def to_json(self) -> list[str]:
        return list(self.tokens)


@dataclass
class TextBatch:
    """Encoded statements ``prompt + answer (+ EOS)``, right-padded: what the training loop and the
    objectives take. ``answer_mask`` marks the tokens an objective learns (the answer of a text
    pair; for toy statements see :func:`training_batch`)."""

    ids: torch.Tensor  # [B, L]
    prompt_mask: torch.Tensor  # [B, L] True on prompt tokens
    answer_mask: torch.Tensor  # [B, L] True on answer tokens (EOS included when added)
    attention_mask: torch.Tensor  # [B, L] True on real tokens
    unit_start: torch.Tensor | None = None
    """``[B, L]`` the first position of the unit each token is masked with (whole-entity masking:
    every token of an entity points at the entity's first token); None: each token alone."""


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Right-pad id sequences to one ``[batch, max_len]`` long tensor."""
    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def encode_statements(vocab: Vocab, statements: Sequence[Tokens]) -> torch.Tensor:
    """Training statements as ``[n_statements, seq_len]`` ids (right-padded)."""
    return pad_batch([vocab.encode(s) for s in statements], vocab.pad_id)


def span_mask(spans: Sequence[tuple[int, int]], shape: tuple[int, int]) -> torch.Tensor:
    """A ``[n, L]`` bool mask that is True on each row's ``[start, end)`` span."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for i, (start, end) in enumerate(spans):
        mask[i, start:end] = True
    return mask


MASKABLE_ROLES: dict[str, frozenset[str]] = {
    "all": frozenset({"special", "entity", "relation", "filler"}),
    "entities": frozenset({"entity"}),
    "no_fillers": frozenset({"special", "entity", "relation"}),
}
"""The token roles (:attr:`ReversalDataset.roles`) each ``train.maskable`` choice may mask."""


def maskable_mask(dataset: ReversalDataset, choice: str, shape: tuple[int, int]) -> torch.Tensor:
    """``[n, L]`` bool: the tokens of each training statement that ``choice`` lets the objective
    mask (padding never)."""
    allowed = MASKABLE_ROLES[choice]
    mask = torch.zeros(shape, dtype=torch.bool)
    for i, roles in enumerate(dataset.roles):
        mask[i, : len(roles)] = torch.tensor([r in allowed for r in roles])
    return mask


def entity_units(roles: Sequence[Sequence[str]], shape: tuple[int, ...]) -> torch.Tensor:
    """``[N, L]`` each position's unit start for whole-entity masking: the first position of the
    run of ``entity`` roles it belongs to, else itself (padding included)."""
    start = torch.arange(shape[1]).repeat(shape[0], 1)  # [N, L]
    for n, row in enumerate(roles):
        for i in range(1, len(row)):
            if row[i] == "entity" and row[i - 1] == "entity":
                start[n, i] = start[n, i - 1]
    return start


def training_batch(
    dataset: ReversalDataset, vocab: Vocab, objective: str, maskable: str, mask_unit: str = "token"
) -> TextBatch:
    """The toy training statements as the loop's :class:`TextBatch`, whose ``answer_mask`` holds the
    tokens ``objective`` learns: the ``maskable`` ones (masked_diffusion, mlm), every real token
    (next_token, masked_ar, prefix_lm), or the answer entity (answer_only)."""
    ids = encode_statements(vocab, dataset.train)  # [N, L]
    shape = tuple(ids.shape)
    real = ids != vocab.pad_id
    if objective == "answer_only":
        learned = span_mask(dataset.answer_spans, shape)
    elif objective in ("next_token", "masked_ar", "prefix_lm"):  # every token after the first
        learned = real
    else:
        learned = maskable_mask(dataset, maskable, shape) & real
    units = entity_units(dataset.roles, shape) if mask_unit == "entity" else None
    return TextBatch(ids, torch.zeros_like(real), learned, real, units)
