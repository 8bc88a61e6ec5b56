"""Tokenizers for natural-language reversal data, and batches with prompt/answer masks.

* :class:`WordTokenizer`: words and punctuation marks (``\\w+|[^\\w\\s]``), for from-scratch models;
* :class:`CharTokenizer`: characters, for from-scratch models with no out-of-vocabulary words;
* :class:`HFTokenizer`: any Hugging Face tokenizer (mask id from the tokenizer or given).

All three expose ``encode(text) -> ids``, ``decode(ids) -> text`` and the special ids ``pad_id``,
``mask_id``, ``bos_id``, ``eos_id``. Words the from-scratch vocabularies never saw map to ``<unk>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from revcurse.data.schema import TextPair
from revcurse.data.tokenize import TextBatch, Vocab

WORD = re.compile(r"\w+|[^\w\s]")
UNK = "<unk>"


class _VocabTokenizer:
    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.pad_id, self.mask_id = vocab.pad_id, vocab.mask_id
        self.bos_id, self.eos_id = vocab.bos_id, vocab.eos_id
        self.unk_id = vocab.index[UNK]

    def __len__(self) -> int:
        return len(self.vocab)

    def pieces(self, text: str) -> list[str]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return [self.vocab.index.get(p, self.unk_id) for p in self.pieces(text)]


class WordTokenizer(_VocabTokenizer):
    """Words and punctuation marks; ``decode`` joins them with single spaces."""

    @classmethod
    def fit(cls, texts: Iterable[str]) -> WordTokenizer:
        seen: dict[str, None] = {UNK: None}
        for text in texts:
            seen.update(dict.fromkeys(WORD.findall(text)))
        return cls(Vocab(seen))

    def pieces(self, text: str) -> list[str]:
        return WORD.findall(text)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab.tokens[i] for i in ids)


class CharTokenizer(_VocabTokenizer):
    """One token per character."""

    @classmethod
    def fit(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: dict[str, None] = {UNK: None}
        for text in texts:
            seen.update(dict.fromkeys(text))
        return cls(Vocab(seen))

    def pieces(self, text: str) -> list[str]:
        return list(text)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab.tokens[i] for i in ids)


class HFTokenizer:
    """A Hugging Face tokenizer behind the same interface (no special tokens added by encode)."""

    def __init__(self, tokenizer: Any, mask_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.mask_id = mask_id if mask_id is not None else tokenizer.mask_token_id
        if self.mask_id is None:
            raise ValueError("the tokenizer has no mask token; pass mask_id")
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def encode_pairs(
    tokenizer: Any, pairs: Sequence[TextPair], eos: bool = True, bos: bool = False
) -> TextBatch:
    """Tokenize prompt and completion separately (so the boundary is exact) and mark each part.

    ``bos`` starts every prompt with BOS; a statement to pre-train on whole is then
    ``TextPair("", statement)``: BOS is its prompt, every other token its answer."""
    rows, n_prompt = [], []
    for pair in pairs:
        prompt = ([tokenizer.bos_id] if bos else []) + tokenizer.encode(pair.prompt)
        answer = tokenizer.encode(pair.completion) + ([tokenizer.eos_id] if eos else [])
        if not answer:
            raise ValueError(f"{pair.source or pair.prompt!r}: empty answer after tokenization")
        rows.append(prompt + answer)
        n_prompt.append(len(prompt))
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    real = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        real[i, : len(row)] = True
    columns = torch.arange(length)[None]
    prompt_mask = columns < torch.tensor(n_prompt)[:, None]
    return TextBatch(ids, prompt_mask, real & ~prompt_mask, real)


def fill_row(row: list[int], fill: tuple[int, int] | None) -> list[int]:
    """``row`` extended with ``token`` up to ``length`` for ``fill = (token, length)`` (the EOS fill
    of an MDM trained on :func:`pad_with_eos` statements); unchanged for ``None``."""
    if fill is None:
        return row
    token, length = fill
    return row + [token] * max(0, length - len(row))


def pad_with_eos(batch: TextBatch, length: int, eos_id: int) -> TextBatch:
    """Pad every row to ``length`` with EOS tokens that are part of the answer and visible.

    LLaDA's recipe for variable-length answers: an MDM trained this way learns to fill the masked
    positions after its answer with EOS, so the sampler can be given more masks than the answer
    needs (plain padding keys are hidden in training, so the model never learns what follows).
    """
    B, L = batch.ids.shape
    if L > length:
        raise ValueError(f"a row has {L} tokens, more than the padded length {length}")
    ids = torch.full((B, length), eos_id, dtype=torch.long)
    ids[:, :L] = batch.ids.masked_fill(~batch.attention_mask, eos_id)
    prompt = torch.zeros(B, length, dtype=torch.bool)
    prompt[:, :L] = batch.prompt_mask
    return TextBatch(ids, prompt, ~prompt, torch.ones(B, length, dtype=torch.bool))
