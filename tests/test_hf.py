"""The Hugging Face path: native LLaDA, family specs, LoRA, SFT losses, probes, ``revcurse finetune``.

Every model is a tiny random one built from a config, offline, on CPU.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from revcurse.data.schema import TextPair
from revcurse.data.text import WordTokenizer, encode_pairs
from revcurse.decoding import arm_generate, mdm_generate
from revcurse.errors import RevcurseError
from revcurse.models import hf
from revcurse.models.llada import LLaDAConfig, LLaDAModelLM, load_llada, published_keys
from revcurse.objectives import masked_diffusion_loss, next_token_loss
from revcurse.probes.hf import (
    attention_coupling,
    encode_facts,
    gradient_alignment,
    paired_queries,
    probe_record,
)

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

FAMILIES = ["llada", "llama", "qwen2", "llama-a2d"]
SHAPE = hf.TinyShape(hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48)


def tiny_llada_config(**kw) -> LLaDAConfig:
    base = dict(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=48,
                vocab_size=40, embedding_size=40)  # fmt: skip
    return LLaDAConfig(**(base | kw))


# --------------------------------------------------------------------------------------------------
# Native LLaDA
# --------------------------------------------------------------------------------------------------


def test_llada_parameters_are_exactly_the_published_key_layout():
    cfg = tiny_llada_config()
    # Written out by hand from the published LLaDA-8B checkpoint's tensor names.
    expected = {"model.transformer.wte.weight", "model.transformer.ln_f.weight",
                "model.transformer.ff_out.weight"}  # fmt: skip
    for n in range(2):
        for name in ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm",
                     "ff_proj", "up_proj", "ff_out"]:  # fmt: skip
            expected.add(f"model.transformer.blocks.{n}.{name}.weight")
    assert set(LLaDAModelLM(cfg).state_dict()) == expected
    assert set(published_keys(cfg)) == expected


def test_llada_loads_a_published_layout_checkpoint_strictly(tmp_path):
    cfg = tiny_llada_config(n_kv_heads=2)
    shapes = {k: v.shape for k, v in LLaDAModelLM(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    # Two shards, as the published checkpoint is split, plus its flat config.json.
    keys = sorted(state)
    save_file(
        {k: state[k] for k in keys[: len(keys) // 2]}, tmp_path / "model-00001-of-00002.safetensors"
    )
    save_file(
        {k: state[k] for k in keys[len(keys) // 2 :]}, tmp_path / "model-00002-of-00002.safetensors"
    )
    config = cfg.to_dict() | {"model_type": "llada", "architectures": ["LLaDAModelLM"],
                              "block_type": "llama", "rope": True, "alibi": False}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_llada(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    ids = torch.randint(0, 40, (2, 7), generator=gen)
    assert torch.isfinite(model(ids)).all()

    del state[keys[0]]  # a missing tensor must fail the strict load
    (tmp_path / "model-00001-of-00002.safetensors").unlink()
    save_file(
        {k: state[k] for k in keys[1 : len(keys) // 2]},
        tmp_path / "model-00001-of-00002.safetensors",
    )
    with pytest.raises(
        RevcurseError, match=rf"lacks tensor\(s\) for this config.json \(1: {keys[0]}\)"
    ):
        load_llada(tmp_path)
    # the tensor back with the wrong shape; an unknown tensor; a truncated shard: one line each
    shard = tmp_path / "model-00001-of-00002.safetensors"
    save_file({**{k: state[k] for k in keys[1 : len(keys) // 2]},
               keys[0]: torch.zeros(3, 3)}, shard)  # fmt: skip
    with pytest.raises(RevcurseError, match=rf"wrongly shaped tensor\(s\).*{keys[0]}"):
        load_llada(tmp_path)
    state[keys[0]] = torch.randn(shapes[keys[0]], generator=gen)
    save_file({**{k: state[k] for k in keys[: len(keys) // 2]}, "extra.weight": torch.ones(1)},
              shard)  # fmt: skip
    with pytest.raises(RevcurseError, match=r"unknown tensor\(s\).*extra.weight"):
        load_llada(tmp_path)
    save_file({k: state[k] for k in keys[: len(keys) // 2]}, shard)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(RevcurseError, match="not a valid safetensors file"):
        load_llada(tmp_path)


def test_llada_refuses_config_variants_it_does_not_implement(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(tiny_llada_config().to_dict() | {"alibi": True})
    )
    with pytest.raises(RevcurseError, match="field 'alibi' = True is not supported"):
        LLaDAConfig.from_json(tmp_path / "config.json")
    for text, message in [("[1, 2]", "expected a JSON object, got list"),
                          ('{"d_model": "wide"}', "field 'd_model': expected a number"),
                          ('{"d_model": 8, "d_model": 16}', "key 'd_model' is repeated")]:  # fmt: skip
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(RevcurseError, match=message):
            LLaDAConfig.from_json(tmp_path / "config.json")


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_llada_matches_a_bidirectional_transformers_llama(n_kv_heads):
    """LLaDA's block is Llama's maths without the causal mask: map the weights onto
    LlamaForCausalLM, give it an all-visible 4D mask, and every logit must agree."""
    cfg = tiny_llada_config(n_kv_heads=n_kv_heads, rope_theta=10000.0, rms_norm_eps=1e-5)
    llada = LLaDAModelLM(cfg)
    llada.init_weights(std=0.2, generator=torch.Generator().manual_seed(1))
    for m in llada.modules():  # non-trivial norm weights, so a skipped norm would show
        if isinstance(m, torch.nn.RMSNorm):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    llama_cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=n_kv_heads, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    llama = transformers.LlamaForCausalLM(llama_cfg).eval()
    t = llada.model.transformer
    mapping = {"model.embed_tokens.weight": t.wte.weight, "model.norm.weight": t.ln_f.weight,
               "lm_head.weight": t.ff_out.weight}  # fmt: skip
    for n, b in enumerate(t.blocks):
        p = f"model.layers.{n}."
        mapping |= {
            p + "input_layernorm.weight": b.attn_norm.weight,
            p + "self_attn.q_proj.weight": b.q_proj.weight,
            p + "self_attn.k_proj.weight": b.k_proj.weight,
            p + "self_attn.v_proj.weight": b.v_proj.weight,
            p + "self_attn.o_proj.weight": b.attn_out.weight,
            p + "post_attention_layernorm.weight": b.ff_norm.weight,
            p + "mlp.gate_proj.weight": b.ff_proj.weight,
            p + "mlp.up_proj.weight": b.up_proj.weight,
            p + "mlp.down_proj.weight": b.ff_out.weight,
        }
    llama.load_state_dict({k: v.detach().clone() for k, v in mapping.items()}, strict=True)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = llada(ids)
        ref = llama(ids, attention_mask=torch.zeros(2, 1, 9, 9)).logits
        # padding: the last 3 keys of row 1 are hidden from every query
        pad = torch.ones(2, 9, dtype=torch.bool)
        pad[1, 6:] = False
        ours_pad = llada(ids, attention_mask=pad)
        bias = torch.zeros(2, 1, 9, 9).masked_fill(~pad[:, None, None, :], float("-inf"))
        ref_pad = llama(ids, attention_mask=bias).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_pad, ref_pad, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Families, LoRA, adapters
# --------------------------------------------------------------------------------------------------


def test_recorded_scores_are_the_eager_attention_logits():
    """softmax(recorded scores + causal mask) must equal transformers' own eager probabilities."""
    model = hf.build_tiny("llama", 30, SHAPE, seed=0).eval()
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), hf.recording_scores(model) as cache:
        model(ids)
    eager = hf.build_tiny("llama", 30, SHAPE, seed=0).eval()
    eager.inner.set_attn_implementation("eager")
    with torch.no_grad():
        probs = eager.inner(ids, output_attentions=True).attentions
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    for n in range(SHAPE.n_layers):
        ours = torch.softmax(cache[n].masked_fill(~causal, float("-inf")), dim=-1)
        torch.testing.assert_close(ours, probs[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_step_trains_only_adapters_and_adapters_round_trip(name, tmp_path):
    model = hf.build_tiny(name, 30, SHAPE, seed=0)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    assert hf.add_lora(model, r=4, alpha=8, dropout=0.0) == 7 * SHAPE.n_layers
    params = hf.lora_parameters(model)
    assert params and all("lora_" in n for n in params)
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    ids = torch.randint(0, 30, (4, 8), generator=torch.Generator().manual_seed(1))
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, 5:] = True
    real = torch.ones_like(answer)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # a few steps so both LoRA factors move off their zero/random init
        if model.causal:
            loss = next_token_loss(model, ids, answer, real)
        else:
            loss = masked_diffusion_loss(model, ids, answer, real, 29, gen)
        loss.backward()
        opt.step()
        opt.zero_grad()
    # The base weights are untouched; only LoRA tensors changed.
    merged = {k.replace("base_model.model.", "").replace("base_layer.", ""): v
              for k, v in model.state_dict().items() if "lora_" not in k}  # fmt: skip
    for k, v in base_before.items():
        assert torch.equal(merged[k], v), k
    model.eval()
    with torch.no_grad():
        trained = model(ids)
    hf.save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    fresh = hf.build_tiny(name, 30, SHAPE, seed=0)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids), trained)
    hf.load_adapter(fresh, tmp_path / "adapter")
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), trained)


# Every Linear of one layer, by hand from each architecture's module tree (the reference).
LAYER_LINEARS = {
    "llada": ({"q_proj", "k_proj", "v_proj", "attn_out"}, {"ff_proj", "up_proj", "ff_out"}),
    "llama": ({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
              {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
}  # fmt: skip
LAYER_LINEARS["qwen2"] = LAYER_LINEARS["llama-a2d"] = LAYER_LINEARS["llama"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("which", ["attention", "attention+mlp"])
def test_lora_targets_are_the_chosen_projections_of_every_layer(name, which):
    from peft.tuners.lora import LoraLayer

    model = hf.build_tiny(name, 30, SHAPE)
    assert hf.add_lora(model, 4, 8, 0.0, which=which) == (4 if which == "attention" else 7) * 2
    attention, mlp = LAYER_LINEARS[name]
    expected = attention | (mlp if which == "attention+mlp" else set())
    adapted: dict[int, set[str]] = {}
    for full, module in model.inner.named_modules():
        if isinstance(module, LoraLayer):
            layer, rest = re.search(r"(?:blocks|layers)\.(\d+)\.(.*)$", full).groups()
            adapted.setdefault(int(layer), set()).add(rest)
    assert adapted == {n: expected for n in range(SHAPE.n_layers)}


def test_lora_count_is_checked_and_bad_targets_refused():
    model = hf.build_tiny("llama", 30, SHAPE)
    with pytest.raises(RevcurseError, match="matched no module"):
        hf.add_lora(model, 4, 8, 0.0, targets=r".*no_such_proj")
    wrong = hf.FamilySpec("llama", True, hf.FAMILIES["llama"].lora_targets, modules_per_layer=3)
    with pytest.raises(RevcurseError, match="adapted 8 modules of llama, expected 6"):
        hf.add_lora(hf.LogitsModel(hf.build_tiny("llama", 30, SHAPE).inner, wrong), 4, 8, 0.0,
                    which="attention")  # fmt: skip


def test_dream_needs_remote_code_explicitly():
    with pytest.raises(RevcurseError, match="--trust-remote-code"):
        hf.load_pretrained("dream", "Dream-org/Dream-v0-Instruct-7B", torch.float32, "cpu")
    with pytest.raises(RevcurseError, match="remote code"):
        hf.build_tiny("dream", 30, SHAPE)
    with pytest.raises(RevcurseError, match="unknown model family"):
        hf.family("gpt9")


def test_dream_logits_are_realigned_by_one_position():
    inner = hf.build_tiny("llama", 30, SHAPE).inner.eval()
    model = hf.LogitsModel(inner, hf.FAMILIES["dream"])
    ids = torch.randint(0, 30, (1, 5))
    with torch.no_grad():
        raw, shifted = inner(ids).logits, model(ids)
    torch.testing.assert_close(shifted[:, 1:], raw[:, :-1])
    torch.testing.assert_close(shifted[:, 0], raw[:, 0])


SPECS = {name: hf.FAMILIES[name] for name in FAMILIES} | {
    # Llama weights behind Dream's logit shift, through the decoder path and the indexing path.
    "shifted": hf.FamilySpec("shifted", False, "", 4, shift_logits=True),
    "shifted-remote": hf.FamilySpec("shifted-remote", False, "", 4, shift_logits=True,
                                    remote_code=True, mask_4d=True),
}  # fmt: skip


@pytest.mark.parametrize("name", SPECS)
def test_selected_positions_are_the_full_logits_rows(name):
    base = "llada" if name == "llada" else "llama"
    model = hf.LogitsModel(hf.build_tiny(base, 30, SHAPE, seed=0).inner, SPECS[name]).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (3, 7), generator=g)
    real = torch.ones_like(ids, dtype=torch.bool)
    real[2, 5:] = False
    where = torch.rand(ids.shape, generator=g) < 0.4
    with torch.no_grad():
        full = model(ids, attention_mask=real)
        torch.testing.assert_close(model(ids, attention_mask=real, where=where), full[where])


@pytest.mark.parametrize("name", FAMILIES)
def test_sft_losses_with_selected_positions_match_full_logits(name):
    """The LoRA gradients of an SFT loss are the same whether the model unembeds only the read
    positions or a plain callable returns every logit (same draws)."""
    model = hf.build_tiny(name, 30, SHAPE, seed=0)
    hf.add_lora(model, r=4, alpha=8, dropout=0.0)
    params = list(hf.lora_parameters(model).values())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 30, (4, 8), generator=g)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, 4:7] = True
    real = torch.ones_like(answer)
    real[3, 7:] = False

    def grads(m):
        gen = torch.Generator().manual_seed(2)
        if model.causal:
            loss = next_token_loss(m, ids, answer, real)
        else:
            loss = masked_diffusion_loss(m, ids, answer, real, 29, gen)
        return loss.detach(), torch.autograd.grad(loss, params)

    def full(ids, attention_mask=None):
        return model(ids, attention_mask=attention_mask)

    (loss_sel, g_sel), (loss_full, g_full) = grads(model), grads(full)
    torch.testing.assert_close(loss_sel, loss_full)
    for a, b in zip(g_sel, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# SFT losses against float64 loops
# --------------------------------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """A fixed random-logits 'model' that records the inputs it was given."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(
            torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(3))
        )
        self.seen: list[torch.Tensor] = []

    def forward(self, ids, attention_mask=None):
        self.seen.append(ids.clone())
        return self.table[ids]


def test_mdm_sft_loss_never_masks_the_prompt_and_normalises_by_answer_length():
    vocab, mask_id = 12, 11
    ids = torch.tensor([[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 4]])
    answer = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    real = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    model = Recorder(vocab)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    loss = masked_diffusion_loss(model, ids, answer, real, mask_id, gen)
    noisy = model.seen[-1]
    assert ((noisy == mask_id) <= answer).all()  # only answer tokens are ever masked
    # Recompute with the same draws in float64: sum CE / t over masked, / answer length, mean.
    gen.set_state(state)
    t = 1e-3 + (1 - 1e-3) * torch.rand(2, generator=gen)
    logp = torch.log_softmax(model.table.double()[noisy], dim=-1)
    expected = 0.0
    for b in range(2):
        total = sum(-logp[b, i, ids[b, i]] for i in range(6) if noisy[b, i] == mask_id)
        expected += total / t[b].double() / answer[b].sum()
    assert loss.item() == pytest.approx(float(expected) / 2, rel=1e-5)

    for seed in range(20):  # over many draws the prompt stays visible
        masked_diffusion_loss(
            model, ids, answer, real, mask_id, torch.Generator().manual_seed(seed)
        )
        assert ((model.seen[-1] == mask_id) <= answer).all()


def test_arm_sft_loss_ignores_prompt_tokens():
    model = Recorder(12)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    answer = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    loss = next_token_loss(model, ids, answer, torch.ones_like(answer))
    logp = torch.log_softmax(model.table.double()[ids], dim=-1)
    terms = [-logp[b, i - 1, ids[b, i]] for b in range(2) for i in range(1, 5) if answer[b, i]]
    assert loss.item() == pytest.approx(float(sum(terms) / len(terms)), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Decoding and probes on HF models
# --------------------------------------------------------------------------------------------------

FACTS = [("Alice Smith", "Bob Smith"), ("Carol Jones", "Dan Jones"), ("Eve Brown", "Fay Brown"),
         ("Gus White", "Hal White"), ("Ivy Black", "Jon Black")]  # fmt: skip


def facts_and_tokenizer():
    fwd = [TextPair(f"Who is {c}'s mother?", f" {p}") for c, p in FACTS]
    rev = [TextPair(f"Name a child of {p}.", f" {c}") for c, p in FACTS]
    tok = WordTokenizer.fit([x.prompt + x.completion for x in fwd + rev])
    return fwd, rev, tok


def test_probe_facts_locate_entities_by_token_span():
    fwd, rev, tok = facts_and_tokenizer()
    pairs = paired_queries(fwd, rev, limit=10)
    assert [(f.completion, r.completion) for f, r in pairs] == [
        (f" {p}", f" {c}") for c, p in FACTS
    ]
    (qf, qr), *_ = encode_facts(tok, pairs, ["forward"])["forward"]
    assert tok.decode(qf.ids[slice(*qf.entity)]) == "Alice Smith"
    assert tok.decode(qf.ids[slice(*qf.answer)]) == "Bob Smith"
    assert tok.decode(qr.ids[slice(*qr.entity)]) == "Bob Smith"
    assert tok.decode(qr.ids[slice(*qr.answer)]) == "Alice Smith"
    # The EOS fill of an MDM trained on padded statements: appended after the answer, spans kept.
    (ff, fr), *_ = encode_facts(tok, pairs, ["forward"], bos=True, fill=(tok.eos_id, 16))["forward"]
    assert len(ff.ids) == len(fr.ids) == 16
    assert ff.ids[: len(qf.ids) + 1] == [tok.bos_id, *qf.ids]
    assert set(ff.ids[len(qf.ids) + 1 :]) == {tok.eos_id}
    assert tok.decode(ff.ids[slice(*ff.entity)]) == "Alice Smith"
    assert tok.decode(ff.ids[slice(*ff.answer)]) == "Bob Smith"


@pytest.mark.parametrize("name", FAMILIES)
def test_decode_and_probe_tiny_hf_models(name):
    fwd, rev, tok = facts_and_tokenizer()
    model = hf.build_tiny(name, len(tok), SHAPE, seed=0)
    hf.add_lora(model, 4, 8, 0.0)
    model.eval()
    prompts = [tok.encode(p.prompt) for p in fwd]
    if model.causal:
        out = arm_generate(model, prompts, 3, eos_id=tok.eos_id)
        with torch.no_grad():  # greedy: the first token is the argmax after the prompt
            first = model(torch.tensor([prompts[0]]))[0, -1].argmax()
        assert out[0, 0] == first
    else:
        out = mdm_generate(model, prompts, 3, mask_id=tok.mask_id, pad_id=tok.pad_id)
        assert (out != tok.mask_id).all()  # every masked position was filled
    assert out.shape == (len(fwd), 3)

    facts = encode_facts(tok, paired_queries(fwd, rev, 10), ["forward"])["forward"]
    att = attention_coupling(model, facts, causal=model.causal, mask_id=tok.mask_id)
    assert set(att["r"]) == {"0", "1"} and len(att["r"]["0"]) == SHAPE.n_heads
    # S_fwd recomputed by hand for fact 0, layer 0 from the recorded scores.
    q = facts[0][0]
    ids = torch.tensor([q.ids])
    if not model.causal:
        ids[0, q.answer[0] : q.answer[1]] = tok.mask_id
    with torch.no_grad(), hf.recording_scores(model) as cache:
        model(ids)
    lo, hi = (q.answer[0] - 1, q.answer[1] - 1) if model.causal else q.answer
    expected = cache[0][0, :, lo:hi, q.entity[0] : q.entity[1]].mean(dim=(-1, -2))
    got = torch.tensor(att["s_pair"]["0"][0], dtype=torch.float64)
    torch.testing.assert_close(got, expected.double())

    grads = gradient_alignment(model, facts, causal=model.causal, mask_id=tok.mask_id)
    assert len(grads["cos_pair_rev"]) == len(FACTS)
    # Reference: each query's loss written out (mean CE of its answer tokens, masked or teacher-
    # forced), gradients on the LoRA parameters by autograd, cosine in float64.
    lora = [p for p in model.parameters() if p.requires_grad]
    for fact, got in zip(facts, grads["cos_pair_rev"], strict=True):
        flat = []
        for q in fact:
            ids = torch.tensor([q.ids])
            lo, hi = q.answer
            if model.causal:
                logits = model(ids)[0, lo - 1 : hi - 1]
            else:
                masked = ids.clone()
                masked[0, lo:hi] = tok.mask_id
                logits = model(masked)[0, lo:hi]
            loss = torch.nn.functional.cross_entropy(logits, ids[0, lo:hi])
            flat.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, lora)]).double())
        expected = flat[0] @ flat[1] / (flat[0].norm() * flat[1].norm())
        assert got == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    assert not any(p.grad is not None for p in model.parameters())  # probes leave no gradients


def test_training_batches_mask_prompt_and_answer():
    fwd, _, tok = facts_and_tokenizer()
    batch = encode_pairs(tok, fwd[:2])
    assert tok.decode(batch.ids[0][batch.answer_mask[0]].tolist()[:-1]) == "Bob Smith"
    assert not (batch.prompt_mask & batch.answer_mask).any()


def test_mask_4d_families_get_a_bidirectional_pair_mask():
    inner = hf.build_tiny("llama", 30, SHAPE).inner.eval()
    spec = hf.FamilySpec("dreamlike", False, "", 4, mask_4d=True)
    model = hf.LogitsModel(inner, spec)
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    keys = torch.ones(2, 6, dtype=torch.bool)
    keys[1, 4:] = False
    # What Dream's own sampler passes: query i may attend to key j iff both are real tokens.
    pair = torch.tensor(
        [
            [[[bool(keys[b, i] and keys[b, j]) for j in range(6)] for i in range(6)]]
            for b in range(2)
        ]
    )  # [B, 1, L, L], built entry by entry
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, attention_mask=keys), inner(ids, attention_mask=pair).logits
        )
        # no padding: no mask at all
        torch.testing.assert_close(
            model(ids, attention_mask=torch.ones_like(keys)), inner(ids).logits
        )


def counting(monkeypatch, module, name: str) -> dict[str, int]:
    """Replace ``module.name`` by a wrapper that counts its calls (in the returned dict's "n")."""
    calls = {"n": 0}
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_probe_record_shares_the_reverse_queries_across_pairings(monkeypatch):
    """Both pairings of an MDM give exactly what each pairing computed alone gives, while every
    reverse query is scored and differentiated once (not once per pairing)."""
    from revcurse.probes import hf as probes_hf

    fwd, rev, tok = facts_and_tokenizer()
    model = hf.build_tiny("llada", len(tok), SHAPE, seed=0)
    hf.add_lora(model, 4, 8, 0.0)
    facts = encode_facts(tok, paired_queries(fwd, rev, 10), ["forward", "mirror"])
    alone = {
        pairing: (
            attention_coupling(model, pairs, causal=False, mask_id=tok.mask_id),
            gradient_alignment(model, pairs, causal=False, mask_id=tok.mask_id),
        )
        for pairing, pairs in facts.items()
    }
    from revcurse.probes import attention as probes_attention

    calls = counting(monkeypatch, probes_hf, "answer_loss")  # a backward pass each
    read = counting(monkeypatch, probes_attention, "entity_reads")  # a forward pass each
    record = probe_record(model, facts, step=0, causal=False, mask_id=tok.mask_id)
    for pairing, (attention, gradients) in alone.items():
        assert record["pairings"][pairing]["attention"] == attention
        assert record["pairings"][pairing]["gradients"] == gradients
    n_reverse = len({id(r) for pairs in facts.values() for _, r in pairs})
    assert calls["n"] == n_reverse + sum(len(pairs) for pairs in facts.values())
    assert read["n"] == n_reverse + sum(len(pairs) for pairs in facts.values())  # scores too
    assert n_reverse < sum(len(pairs) for pairs in facts.values())  # something was shared


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_signals_of_multi_token_answers_on_hf_models_match_autograd_and_the_unembedding(name):
    """The signals of a natural-language query on a transformers model: ``e`` is the summed
    gradient of the answer tokens' cross-entropy with respect to their logits, and ``u`` the
    summed signal entering the unembedding, ``W_U^T e`` row by row (untied head, no bias)."""
    from revcurse.probes.signals import query_signals

    fwd, rev, tok = facts_and_tokenizer()
    model = hf.build_tiny(name, len(tok), SHAPE, seed=0)
    hf.add_lora(model, 4, 8, 0.0)
    facts = encode_facts(tok, paired_queries(fwd, rev, 3), ["forward"])["forward"]
    queries = [q for fact in facts for q in fact]
    assert any(q.answer[1] - q.answer[0] > 1 for q in queries)  # multi-token answers
    sig = query_signals(model, queries, causal=True, mask_id=tok.mask_id)
    head = model.base.get_output_embeddings().weight.double()  # [V, D]
    for i, q in enumerate(queries):
        lo, hi = q.answer
        ids = torch.tensor([q.ids])
        logits = model(ids)[0, lo - 1 : hi - 1].detach().double().requires_grad_()  # [K, V]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, lo:hi], reduction="sum")
        (e_rows,) = torch.autograd.grad(loss, logits)
        torch.testing.assert_close(sig["e"][i], e_rows.sum(0))
        torch.testing.assert_close(sig["u"][i], (e_rows @ head).sum(0), atol=1e-5, rtol=1e-4)
    assert sig["z.0"].shape == (len(queries), SHAPE.hidden_size)
    assert len([k for k in sig if k.startswith("z.")]) == SHAPE.n_layers


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_kv_cached_greedy_equals_rerunning_the_sequence(name):
    model = hf.build_tiny(name, 30, SHAPE, seed=2)
    hf.add_lora(model, 4, 8, 0.0)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 30, (n,), generator=gen).tolist() for n in (3, 3, 5, 6, 6, 6)]

    def plain(ids, attention_mask=None):  # the same model without its `greedy` method
        return model(ids, attention_mask=attention_mask)

    free = arm_generate(plain, prompts, 6, eos_id=29)
    eos = int(free[1, 2])  # a token some row produces: rows end early and are filled with it
    for eos_id in (29, eos):
        cached = arm_generate(model, prompts, 6, eos_id=eos_id, batch_size=2)
        assert torch.equal(cached, arm_generate(plain, prompts, 6, eos_id=eos_id))
    assert (arm_generate(model, prompts, 6, eos_id=eos)[1, 2:] == eos).all()


def test_a_llama_read_as_an_mdm_attends_both_ways_with_its_logits_shifted():
    """llama-a2d against transformers' own bidirectional path: the same weights with SDPA told
    that no layer is causal (``is_causal=False``, no mask) give the same logits, shifted by one
    position as Dream's; the causal family's differ, a later token moves earlier logits, and
    padding is hidden (a padded row equals the row alone)."""
    import copy

    a2d = hf.build_tiny("llama-a2d", 50, SHAPE, seed=3).eval()
    ids = torch.randint(3, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = a2d(ids)
        reference = copy.deepcopy(a2d.inner)
        reference.config._attn_implementation = "sdpa"
        for layer in reference.model.layers:
            layer.self_attn.is_causal = False
        raw = reference(ids).logits
        torch.testing.assert_close(got, torch.cat([raw[:, :1], raw[:, :-1]], 1), rtol=0,
                                   atol=1e-5)  # fmt: skip
        causal = hf.LogitsModel(a2d.inner, hf.FAMILIES["llama"])(ids)
        assert (torch.cat([causal[:, :1], causal[:, :-1]], 1) - got).abs().max() > 1e-3
        later = ids.clone()
        later[:, -1] = (later[:, -1] + 1) % 50
        assert (a2d(later)[:, 1:-1] - got[:, 1:-1]).abs().max() > 1e-4
        real = torch.ones_like(ids)
        real[1, -2:] = 0
        torch.testing.assert_close(a2d(ids, attention_mask=real)[1, :-2], a2d(ids[1:, :-2])[0],
                                   rtol=0, atol=1e-5)  # fmt: skip


def test_an_ar_tokenizer_lends_its_unknown_token_as_the_mask(tmp_path):
    """llama-a2d borrows [MASK]: the tokenizer's mask token, else its unknown token unless that is
    also its padding, BOS or EOS (then refused in one line)."""
    from test_finetune import save_chat_checkpoint
    from transformers import AutoTokenizer

    from revcurse.errors import RevcurseError

    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    expected = tok.mask_token_id if tok.mask_token_id is not None else tok.unk_token_id
    assert hf.load_tokenizer("llama-a2d", str(ckpt)).mask_id == expected
    tok.mask_token, tok.unk_token = None, tok.eos_token
    tok.save_pretrained(ckpt)
    with pytest.raises(RevcurseError, match="cannot lend one as \\[MASK\\]"):
        hf.load_tokenizer("llama-a2d", str(ckpt))
