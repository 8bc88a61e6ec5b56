"""Tokenizers for natural-language reversal data, and batches with prompt/answer masks.

* :class:`WordTokenizer`: words and punctuation marks (``\\w+|[^\\w\\s]``), for from-scratch models;
* :class:`CharTokenizer`: characters, for from-scratch models with no out-of-vocabulary words;
* :class:`HFTokenizer`: any Hugging Face tokenizer (mask id from the tokenizer or given).

All three expose ``encode(text) -> ids``, ``decode(ids) -> text`` and the special ids ``pad_id``,
``mask_id``, ``bos_id``, ``eos_id``. Words the from-scratch vocabularies never saw map to ``<unk>``.

Every prompt and answer is framed by :func:`frame`: plain (``[BOS] prompt answer [EOS]``), or, for
an Instruct checkpoint, as its chat template frames one exchange (:class:`ChatFrame`), so that
training, evaluation and probes all show the model the format it was tuned on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from revcurse.data.schema import TextDataset, TextPair
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


@dataclass(frozen=True)
class ChatFrame:
    """How a chat checkpoint frames one exchange: ``head + prompt + tail + answer + [end]``.

    ``head`` is everything its template writes before the user's text (BOS, a default system turn,
    the user header), ``tail`` everything between the user's text and the assistant's reply (the
    end of the user turn, the assistant header), ``end`` the token the template closes an assistant
    turn with (Llama-3.1 Instruct ``<|eot_id|>``, Qwen2.5 Instruct ``<|im_end|>``, LLaDA Instruct
    ``<|eot_id|>`` 126348), which is not the base model's EOS. The plain frame (no template) is
    ``[BOS] + prompt + answer + [EOS]``."""

    head: tuple[int, ...]
    tail: tuple[int, ...]
    end: int


_CONTENT = "REVCURSECONTENT"
"""A stand-in for a message's text while a template is rendered: the frame is read around it."""


def chat_frame(tokenizer: Any) -> ChatFrame:
    """The :class:`ChatFrame` of a Hugging Face tokenizer that carries a chat template.

    The template is rendered around stand-in texts and the pieces around them tokenized one by one
    (every frame token is a special token or a header, so the pieces tokenize as the whole does;
    :func:`encode_pairs` relies on it to keep the prompt/answer boundary exact)."""
    user = [{"role": "user", "content": _CONTENT}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    exchange = tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": _CONTENT}], tokenize=False
    )
    if prompt.count(_CONTENT) != 1 or not exchange.startswith(prompt):
        raise ValueError("the chat template does not render one user turn then the reply's header")
    head, tail = prompt.split(_CONTENT)
    after = exchange[len(prompt) :].split(_CONTENT, 1)[1]  # what closes the assistant turn

    def ids(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False)) if text else ()

    closing = ids(after)
    return ChatFrame(ids(head), ids(tail), closing[0] if closing else tokenizer.eos_token_id)


def in_chat_frame(dataset: TextDataset, *splits: list[TextPair]) -> tuple[TextDataset, ...]:
    """``dataset`` and ``splits`` (lists of its pairs) with every answer as a chat reply: leading
    whitespace removed from completions and alternatives. A completion is written to follow its
    prompt in plain text (``"... mother is" + " Samira Calle"``); in a chat frame it is the
    reply's whole content, which the template writes right after the assistant header, so the
    space would be a token no reply starts with (a real tokenizer makes it one; a word-level
    one never sees it). Lists shared between splits stay shared."""

    def reply(text: str) -> str:
        return text.lstrip()

    done: dict[int, list[TextPair]] = {}

    def pairs(items: list[TextPair]) -> list[TextPair]:
        if id(items) not in done:
            done[id(items)] = [dataclasses.replace(p, completion=reply(p.completion),
                                                   alternatives=tuple(map(reply, p.alternatives)))
                               for p in items]  # fmt: skip
        return done[id(items)]

    framed = dataclasses.replace(dataset, train=pairs(dataset.train),
                                 tests={k: pairs(v) for k, v in dataset.tests.items()})  # fmt: skip
    return (framed, *(pairs(s) for s in splits))


class HFTokenizer:
    """A Hugging Face tokenizer behind the same interface (no special tokens added by encode).

    ``chat``: frame prompts and answers as the checkpoint's chat template does (:class:`ChatFrame`)
    when it has one; Instruct checkpoints were tuned on that frame, base models have none.
    ``mask_id`` / ``eos_id``: the family's own, where they differ from the tokenizer's."""

    def __init__(
        self,
        tokenizer: Any,
        mask_id: int | None = None,
        chat: bool = False,
        eos_id: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.mask_id = mask_id if mask_id is not None else tokenizer.mask_token_id
        if self.mask_id is None:
            raise ValueError("the tokenizer has no mask token; pass mask_id")
        # a family's end of text where its tokenizer names another token EOS (LLaDA Instruct)
        self.eos_id = eos_id if eos_id is not None else tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.chat = chat_frame(tokenizer) if chat and tokenizer.chat_template else None

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def frame(tokenizer: Any, bos: bool) -> ChatFrame:
    """The tokens around every prompt and after every answer: the checkpoint's chat frame when
    its tokenizer is in chat mode (the template places BOS itself), else ``[BOS]`` if ``bos``,
    nothing after the prompt, and EOS after the answer."""
    chat = getattr(tokenizer, "chat", None)
    if chat is not None:
        return chat
    return ChatFrame((tokenizer.bos_id,) if bos else (), (), tokenizer.eos_id)


def encode_prompt(tokenizer: Any, text: str, bos: bool = False) -> list[int]:
    """A prompt as the model reads it: ``head + text + tail`` of :func:`frame`."""
    f = frame(tokenizer, bos)
    return [*f.head, *tokenizer.encode(text), *f.tail]


def encode_pairs(
    tokenizer: Any, pairs: Sequence[TextPair], eos: bool = True, bos: bool = False
) -> TextBatch:
    """Tokenize prompt and completion separately (so the boundary is exact) and mark each part.

    ``bos`` starts every prompt with BOS; a statement to pre-train on whole is then
    ``TextPair("", statement)``: BOS is its prompt, every other token its answer. A tokenizer in
    chat mode frames each pair as its template does and ends the answer with its end-of-turn token
    (:func:`frame`)."""
    end = frame(tokenizer, bos).end
    rows, n_prompt = [], []
    for pair in pairs:
        prompt = encode_prompt(tokenizer, pair.prompt, bos)
        answer = tokenizer.encode(pair.completion) + ([end] if eos else [])
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


def entity_units(
    tokenizer: Any,
    texts: Sequence[str],
    entities: Sequence[str],
    ids: torch.Tensor,
    offset: int | Sequence[int],
) -> tuple[torch.Tensor, int]:
    """Whole-entity masking units of encoded texts: ``ids [B, L]`` holds each of ``texts`` from
    position ``offset`` on (after BOS; per row, after a prompt); returns ``[B, L]`` the first
    position of the unit each token is masked with, and how many texts held an entity. Every
    verbatim occurrence in a text of one of ``entities`` (longest first, not overlapping; with the
    whitespace before it, which subword tokenizers fold into the entity's first token) is one unit;
    every other token is its own. The text is tokenized piece by piece around the occurrences so
    the spans are exact; where the pieces are not the row's own tokens (an entity cut inside a
    word), that row keeps token units."""
    offsets = [offset] * len(texts) if isinstance(offset, int) else list(offset)
    starts = torch.arange(ids.shape[1]).repeat(len(texts), 1)  # [B, L]
    names = sorted({e for e in entities if e.strip()}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(e) for e in names)) if names else None
    with_units = 0
    for row, text in enumerate(texts):
        if pattern is None:
            break
        found = list(pattern.finditer(text))
        if not found:
            continue
        pieces, spans, at, first = [], [], 0, offsets[row]
        for m in found:
            start = m.start()
            while start > at and text[start - 1].isspace():
                start -= 1
            pieces += tokenizer.encode(text[at:start]) if start > at else []
            piece = tokenizer.encode(text[start : m.end()])
            spans.append((first + len(pieces), first + len(pieces) + len(piece)))
            pieces += piece
            at = m.end()
        pieces += tokenizer.encode(text[at:]) if at < len(text) else []
        if pieces != ids[row, first : first + len(pieces)].tolist():
            continue
        for lo, hi in spans:
            starts[row, lo:hi] = lo
        with_units += 1
    return starts, with_units


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
    units = None
    if batch.unit_start is not None:  # the fill's tokens are units of their own
        units = torch.arange(length).repeat(B, 1)
        units[:, :L] = batch.unit_start
    return TextBatch(ids, prompt, ~prompt, torch.ones(B, length, dtype=torch.bool), units)
