"""The Transformer: causal masking, every positional encoding, HF-style names, hook points."""

from __future__ import annotations

import pytest
import torch

from revcurse.config import ModelConfig
from revcurse.models.hooks import capture, hook_names
from revcurse.models.positional import apply_rope
from revcurse.models.transformer import TransformerLM

POSITIONALS = ["rope", "sinusoidal", "learned", "alibi", "none"]
VOCAB = 13


def make(causal: bool, positional: str = "rope", **kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        causal=causal, d_model=16, n_heads=2, n_layers=2, positional=positional, init_std=0.3, **kw
    )
    return TransformerLM(cfg, VOCAB).eval()


@pytest.mark.parametrize("positional", POSITIONALS)
def test_future_tokens_cannot_change_past_logits_in_causal_model(positional):
    model = make(causal=True, positional=positional)
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-4


@pytest.mark.parametrize("positional", POSITIONALS)
def test_bidirectional_model_sees_the_future(positional):
    model = make(causal=False, positional=positional)
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    with torch.no_grad():
        assert (model(ids)[:, 0] - model(changed)[:, 0]).abs().max() > 1e-5


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm", "none"])
def test_every_variant_trains_one_step(positional, norm):
    model = make(causal=False, positional=positional, norm=norm).train()
    ids = torch.randint(0, VOCAB, (2, 6))
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_position_free_model_is_permutation_equivariant():
    """positional=none really carries no position: permuting the input permutes the output."""
    model = make(causal=False, positional="none")
    ids = torch.randint(0, VOCAB, (1, 7))
    perm = torch.randperm(7)
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, perm], model(ids[:, perm]), atol=1e-5, rtol=1e-5)


def test_padding_keys_are_ignored():
    model = make(causal=False)
    ids = torch.randint(4, VOCAB, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = padded != 0
    with torch.no_grad():
        torch.testing.assert_close(model(padded, mask)[:, :5], model(ids), atol=1e-5, rtol=1e-5)


def test_hf_style_parameter_names():
    names = dict(make(causal=False, tie_embeddings=False).named_parameters())
    for expected in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]:
        assert expected in names
    assert "model.layers.0.mlp.up_proj.weight" not in dict(
        make(causal=False, mlp=False).named_parameters()
    )


def test_tied_embeddings_share_storage():
    model = make(causal=False, tie_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_hook_scores_are_rotated_query_key_products_and_hooks_are_removed():
    model = make(causal=False)
    layer = model.model.layers[0]
    ids = torch.randint(0, VOCAB, (2, 6))
    name = "model.layers.0.self_attn.hook_scores"
    with capture(model, [name, "model.layers.0.hook_resid_pre"]) as cache, torch.no_grad():
        model(ids)
    assert all(not m._forward_hooks for m in model.modules())
    # Independent recomputation of q.R(n-m)k / sqrt(d_head) from the layer's weights.
    with torch.no_grad():
        x = layer.input_layernorm(cache["model.layers.0.hook_resid_pre"])
        q = layer.self_attn.q_proj(x).view(2, 6, 2, 8).transpose(1, 2)
        k = layer.self_attn.k_proj(x).view(2, 6, 2, 8).transpose(1, 2)
        cos, sin = model.model.rotary_emb(6)
        expected = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2) / 8**0.5
    torch.testing.assert_close(cache[name], expected, atol=1e-5, rtol=1e-5)
    assert name in hook_names(model)


def test_capture_removes_hooks_on_error():
    model = make(causal=False)
    with pytest.raises(RuntimeError), capture(model, ["model.hook_final"]):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(KeyError), capture(model, ["model.layers.0.nope"]):
        pass


@pytest.mark.parametrize(
    "overrides",
    [{}, {"norm": "layernorm", "n_layers": 3}, {"norm": "none", "mlp": False},
     {"tie_embeddings": True, "positional": "learned", "mlp_ratio": 2.5},
     {"d_model": 48, "n_heads": 4, "positional": "sinusoidal"}],
)  # fmt: skip
def test_parameter_count_from_the_config_matches_the_built_model(overrides):
    cfg = ModelConfig(**overrides)
    model = TransformerLM(cfg, vocab_size=37)
    assert cfg.parameter_count(37) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "data",
    [{}, {"n_pairs": 7, "n_filler": 3, "filler_vocab": 5}, {"bos": True, "eos": False},
     {"reverse_augment": True, "filler_vocab": 1}],
)  # fmt: skip
def test_toy_vocabulary_size_from_the_config_matches_the_built_vocabulary(data):
    """The memory check sizes the model before the dataset exists; it must count what the
    dataset builds."""
    from revcurse.config import ToyDataConfig, toy_vocab_size
    from revcurse.data.tokenize import Vocab
    from revcurse.data.toy import build_toy

    cfg = ToyDataConfig(**data)
    assert toy_vocab_size(cfg) == len(Vocab.from_dataset(build_toy(cfg)))
