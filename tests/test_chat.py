"""Chat framing of Instruct checkpoints: prompts and answers framed as the checkpoint's own chat
template renders them (the template rendered by transformers is the reference), answers ended by
its end-of-turn token, and evaluation stopping there."""

from __future__ import annotations

import pytest
import torch
from conftest import chat_tokenizer

pytest.importorskip("tokenizers")

from revcurse.config import DecodeConfig  # noqa: E402
from revcurse.data.schema import TextPair  # noqa: E402
from revcurse.data.text import HFTokenizer, encode_pairs, encode_prompt  # noqa: E402
from revcurse.evaluation import evaluate_split, text_queries  # noqa: E402
from revcurse.probes.hf import encode_query  # noqa: E402

PAIRS = [
    TextPair("Who is Mary Lee's child?", " Ann Lee"),
    TextPair("Who is the parent of Tom Hart?", " Joe Hart"),
    TextPair("Who is Joe Hart's child?", " Tom Hart"),
]
TEXTS = [p.prompt + p.completion for p in PAIRS]


def rendered(tok, messages, **kw) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_prompts_and_statements_are_framed_as_the_template_renders_them():
    raw = chat_tokenizer(TEXTS)
    tok = HFTokenizer(raw, chat=True)
    eot = raw.convert_tokens_to_ids("<|eot|>")
    assert tok.chat.end == eot != tok.eos_id  # the Instruct end of turn, not the base EOS
    batch = encode_pairs(tok, PAIRS)
    for i, pair in enumerate(PAIRS):
        user = [{"role": "user", "content": pair.prompt}]
        assert encode_prompt(tok, pair.prompt) == rendered(raw, user, add_generation_prompt=True)
        # The whole exchange as the template renders it, cut after the reply's end of turn.
        whole = rendered(raw, user + [{"role": "assistant", "content": pair.completion.strip()}])
        n_prompt = len(encode_prompt(tok, pair.prompt))
        expected = whole[: whole.index(eot, n_prompt) + 1]
        row = batch.ids[i][batch.attention_mask[i]].tolist()
        assert row == expected
        answer = batch.ids[i][batch.answer_mask[i]].tolist()
        assert answer == expected[n_prompt:] and answer[-1] == eot


def test_no_template_or_switched_off_is_the_plain_frame():
    for tok in (HFTokenizer(chat_tokenizer(TEXTS), chat=False),
                HFTokenizer(chat_tokenizer(TEXTS, template=None), chat=True)):  # fmt: skip
        assert tok.chat is None
        row = encode_pairs(tok, PAIRS[:1], bos=True).ids[0].tolist()
        assert row == [
            tok.bos_id,
            *tok.encode(PAIRS[0].prompt),
            *tok.encode(" Ann Lee"),
            tok.eos_id,
        ]


def test_queries_and_probe_spans_use_the_frame():
    raw = chat_tokenizer(TEXTS)
    tok = HFTokenizer(raw, chat=True)
    queries, texts = text_queries(tok, PAIRS, n_distractors=2)
    assert queries.prompts[0] == encode_prompt(tok, PAIRS[0].prompt)
    assert all(c[-1] == tok.chat.end for cands in queries.candidates for c in cands)
    # A probe query: the given entity inside the user turn, the answer after the reply's header.
    enc = encode_query(tok, PAIRS[0], "Mary Lee")
    assert enc.ids[: enc.answer[0]] == encode_prompt(tok, PAIRS[0].prompt)
    assert raw.decode(enc.ids[slice(*enc.entity)]) == "Mary Lee"
    assert raw.decode(enc.ids[slice(*enc.answer)]) == "Ann Lee"


class Scripted(torch.nn.Module):
    """An ARM stub that continues every prompt with ``script`` (then repeats its last token)."""

    def __init__(self, vocab: int, n_prompt: int, script: list[int]) -> None:
        super().__init__()
        self.vocab, self.n_prompt, self.script = vocab, n_prompt, script

    def forward(self, ids, attention_mask=None):
        B, L = ids.shape
        logits = torch.zeros(B, L, self.vocab)
        for j in range(L):
            k = min(max(j + 1 - self.n_prompt, 0), len(self.script) - 1)
            logits[:, j, self.script[k]] = 10.0
        return logits


def test_an_arm_answer_ends_at_the_end_of_turn():
    raw = chat_tokenizer(TEXTS)
    tok = HFTokenizer(raw, chat=True)
    pairs = PAIRS[:1]
    n_prompt = len(encode_prompt(tok, pairs[0].prompt))
    ann, lee = tok.encode(" Ann Lee")
    model = Scripted(len(raw), n_prompt, [ann, lee, tok.chat.end, ann, lee])
    settings = DecodeConfig(gen_length=5, n_distractors=0)
    metrics, records = evaluate_split(model, tok, pairs, True, settings, torch.Generator())
    assert records[0]["generation"] == "Ann Lee" and metrics["exact"] == 1.0


def test_llada_answers_end_with_the_turn_end_and_pad_with_its_eos(tmp_path):
    """LLaDA Instruct: the template's end of turn closes the answer; its SFT pads with EOS 126081,
    a family constant, whatever its tokenizer calls EOS."""
    from revcurse.data.text import pad_with_eos
    from revcurse.models import hf

    chat_tokenizer(TEXTS).save_pretrained(tmp_path)
    tok = hf.load_tokenizer("llada", str(tmp_path))
    assert tok.eos_id == 126081 and tok.mask_id == hf.MASK_TOKEN_ID
    batch = pad_with_eos(encode_pairs(tok, PAIRS), 32, tok.eos_id)
    row = batch.ids[0].tolist()
    end = row.index(tok.chat.end, len(encode_prompt(tok, PAIRS[0].prompt)))
    assert set(row[end + 1 :]) == {126081}
