"""A tiny random Hugging Face chat checkpoint written offline (``revcurse models tiny``).

To try the own-model commands (``evaluate``, ``finetune``, ``data harness``) without a download,
a user needs some checkpoint folder; the tests need the same thing. This writes one: a two-layer
Llama or Qwen2 ARM with random weights, a word-level tokenizer over the words of the facts it will
be asked about (so no word is unknown), and a Llama-3-like chat template whose end-of-turn token
is not the tokenizer's EOS (the way Instruct checkpoints differ from their base models). It
answers nothing: it is for running the pipeline, not for reading its numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}<|header|> system <|sep|> Be brief. <|eot|>"
    "{% for m in messages %}<|header|> {{ m['role'] }} <|sep|> {{ m['content'] }} <|eot|>"
    "{% endfor %}{% if add_generation_prompt %}<|header|> assistant <|sep|> {% endif %}"
)
"""A default system turn, role headers, and an end-of-turn token ``<|eot|>`` apart from EOS."""
CHAT_SPECIALS = ["<|begin|>", "<|eos|>", "[PAD]", "[MASK]", "<|header|>", "<|sep|>", "<|eot|>"]
"""The special tokens, in vocabulary order (ids 0..6)."""
FAMILIES = ("llama", "qwen2")


def word_tokenizer(texts: Iterable[str], template: str | None = CHAT_TEMPLATE) -> Any:
    """A word-level Hugging Face tokenizer over the words and punctuation of ``texts`` (offline),
    carrying ``template`` as its chat template."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)}
                   | {"system", "user", "assistant", "Be", "brief", "."})  # fmt: skip
    vocab = {t: i for i, t in enumerate([*CHAT_SPECIALS, "[UNK]", *words])}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [tokenizers.pre_tokenizers.Whitespace(), tokenizers.pre_tokenizers.Punctuation()]
    )
    raw.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin|>", eos_token="<|eos|>", pad_token="[PAD]",
        mask_token="[MASK]", unk_token="[UNK]",
        additional_special_tokens=["<|header|>", "<|sep|>", "<|eot|>"],
    )  # fmt: skip
    tok.chat_template = template
    return tok


def write_tiny_checkpoint(path: str | Path, texts: Iterable[str], family: str = "llama",
                          seed: int = 0) -> Path:  # fmt: skip
    """A random ``family`` ARM (hidden 32, 2 layers, 4 heads) with :func:`word_tokenizer` over
    ``texts``, saved as safetensors into ``path``; the same ``seed`` gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: expected one of {', '.join(FAMILIES)}")
    tok = word_tokenizer(texts)
    config_cls, model_cls = ((LlamaConfig, LlamaForCausalLM) if family == "llama"
                             else (Qwen2Config, Qwen2ForCausalLM))  # fmt: skip
    config = config_cls(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                        max_position_embeddings=128, tie_word_embeddings=False)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
