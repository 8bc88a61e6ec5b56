"""A tiny Llama GGUF file written here (the ``gguf`` package writes them), for the conversion
tests: random weights of a transformers LlamaForCausalLM laid out as llama.cpp's converter lays
them out (its q/k row permutation for rotary pairs, its tensor names), a byte-level BPE tokenizer
and a ChatML template. The model it came from is returned with it: the conversion must give
back its logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (written out here, not
    imported, so the file does not depend on the code under test)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf reorders each head's q/k rows from HF's rotate-half layout
    to interleaved pairs: reshape(n_head, 2, d/2, in), swap the two middle axes."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_gguf(path: Path, seed: int = 0, architecture: str = "llama"):
    """Write the file; return the transformers model whose weights it holds (float32, eval)."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    alphabet = byte_alphabet()
    merges = ["Ġ S", "a m", "Ġ C"]
    tokens = SPECIALS + alphabet + [m.replace(" ", "") for m in merges]
    n_heads, n_kv, hidden = 4, 2, 32
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=hidden, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                      max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # weights large enough that every layer matters to the logits
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // n_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)  # as SmolLM2's: padding is the end of turn
    writer.add_unk_token_id(0)  # <|endoftext|>, which an AR model read as an MDM borrows as [MASK]
    writer.add_chat_template(CHATML)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(2):
        hf = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", state[hf + "input_layernorm.weight"])
        writer.add_tensor(
            f"blk.{i}.attn_q.weight",
            _llama_cpp_permute(state[hf + "self_attn.q_proj.weight"], n_heads),
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight",
            _llama_cpp_permute(state[hf + "self_attn.k_proj.weight"], n_kv),
        )
        writer.add_tensor(f"blk.{i}.attn_v.weight", state[hf + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", state[hf + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", state[hf + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", state[hf + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", state[hf + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", state[hf + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
