"""One small pre-norm Transformer; ``causal`` switches a bidirectional encoder (MDM) / decoder (ARM).

The MDM and the ARM of arXiv 2602.02133 share everything but the attention mask, so both are this
one module. Parameter names follow Hugging Face Llama (``model.embed_tokens``,
``model.layers.N.self_attn.{q,k,v,o}_proj``, ``model.layers.N.mlp.{up,down}_proj``,
``model.norm``, ``lm_head``) so probes and LoRA targets read the same on both code paths.

Named identity *hook points* (TransformerLens style) expose the tensors the probes need without
changing the forward pass; register forward hooks on them (see ``revcurse.models.hooks``):

=============================================  ====================================================
``model.layers.N.self_attn.hook_q`` / ``hook_k``  queries / keys after RoPE  ``[B, H, L, Dh]``
``model.layers.N.self_attn.hook_scores``        pre-softmax scores ``q.k/sqrt(Dh)`` (+ ALiBi bias),
                                                before the causal/padding mask ``[B, H, Lq, Lk]``
``model.layers.N.self_attn.hook_pattern``       attention probabilities ``[B, H, Lq, Lk]``
``model.layers.N.self_attn.hook_z``             per-head outputs before o_proj ``[B, H, L, Dh]``
``model.layers.N.hook_resid_pre`` / ``_post``   residual stream ``[B, L, D]``
``model.hook_final``                            normed hidden state fed to lm_head ``[B, L, D]``
=============================================  ====================================================
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from revcurse.config import ModelConfig
from revcurse.models.positional import AlibiBias, RotaryEmbedding, apply_rope, sinusoidal_table


class HookPoint(nn.Identity):
    """An identity module whose only purpose is to carry forward hooks at a named place."""


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=1e-6)
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    return nn.Identity()


class Attention(nn.Module):
    """Multi-head self-attention with explicit scores (so they can be hooked)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def forward(
        self,
        x: torch.Tensor,  # [B, L, D]
        rope: tuple[torch.Tensor, torch.Tensor] | None,  # cos, sin: [L, Dh]
        bias: torch.Tensor | None,  # [H, L, L] additive (ALiBi)
        mask: torch.Tensor | None,  # [B or 1, 1, L, L] bool, True = may attend
    ) -> torch.Tensor:
        B, L, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        q = self.q_proj(x).view(B, L, H, Dh).transpose(1, 2)  # [B, H, L, Dh]
        k = self.k_proj(x).view(B, L, H, Dh).transpose(1, 2)  # [B, H, L, Dh]
        v = self.v_proj(x).view(B, L, H, Dh).transpose(1, 2)  # [B, H, L, Dh]
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k = self.hook_q(q), self.hook_k(k)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # [B, H, Lq, Lk]
        if bias is not None:
            scores = scores + bias
        scores = self.hook_scores(scores)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))  # [B, H, Lq, Lk]
        z = self.hook_z(torch.matmul(pattern, v))  # [B, H, L, Dh]
        return self.o_proj(z.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    """``down_proj(gelu(up_proj(x)))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = max(1, round(cfg.d_model * cfg.mlp_ratio))
        self.up_proj = nn.Linear(cfg.d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = make_norm(cfg.norm, cfg.d_model)
        self.self_attn = Attention(cfg)
        self.mlp: MLP | None = None
        if cfg.mlp:
            self.post_attention_layernorm = make_norm(cfg.norm, cfg.d_model)
            self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, rope, bias, mask):
        x = self.hook_resid_pre(x)
        x = x + self.self_attn(self.input_layernorm(x), rope, bias, mask)
        if self.mlp is not None:
            x = x + self.mlp(self.post_attention_layernorm(x))
        return self.hook_resid_post(x)


class TransformerModel(nn.Module):
    """Embeddings, blocks and the final norm (the HF ``model`` sub-module)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(vocab_size, cfg.d_model)
        head_dim = cfg.d_model // cfg.n_heads
        self.rotary_emb = (
            RotaryEmbedding(head_dim, cfg.rope_base, cfg.max_seq_len)
            if cfg.positional == "rope"
            else None
        )
        self.alibi = AlibiBias(cfg.n_heads, cfg.max_seq_len) if cfg.positional == "alibi" else None
        if cfg.positional == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        elif cfg.positional == "sinusoidal":
            self.register_buffer(
                "sinusoidal", sinusoidal_table(cfg.max_seq_len, cfg.d_model), persistent=False
            )
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model)
        self.hook_final = HookPoint()
        causal = torch.ones(cfg.max_seq_len, cfg.max_seq_len, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor | None,  # [B, L]
        attention_mask: torch.Tensor | None = None,  # [B, L], True/1 = real token (keys)
        inputs_embeds: torch.Tensor | None = None,  # [B, L, D] instead of input_ids
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, D]
        B, L = x.shape[:2]
        if L > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence length {L} exceeds model.max_seq_len={self.cfg.max_seq_len}"
            )
        if self.cfg.positional == "learned":
            x = x + self.embed_positions.weight[:L]
        elif self.cfg.positional == "sinusoidal":
            x = x + self.sinusoidal[:L]
        rope = self.rotary_emb(L) if self.rotary_emb is not None else None
        bias = self.alibi(L) if self.alibi is not None else None

        mask = None  # [B or 1, 1, Lq, Lk]
        if self.cfg.attends_causally:
            mask = self.causal_mask[:L, :L][None, None]
        if attention_mask is not None:
            keys = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, Lk]
            mask = keys if mask is None else mask & keys
        for layer in self.layers:
            x = layer(x, rope, bias, mask)
        return self.hook_final(self.norm(x))


class TransformerLM(nn.Module):
    """The language model: :class:`TransformerModel` plus the unembedding ``lm_head``."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.model = TransformerModel(cfg, vocab_size)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layers)
        (GPT-2) so the residual stream's variance does not grow with depth; norms at 1."""
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                scale = 1.0
                if name.endswith(("o_proj", "down_proj")):
                    scale = 1.0 / math.sqrt(2 * self.cfg.n_layers)
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
            elif isinstance(module, nn.RMSNorm | nn.LayerNorm):
                module.reset_parameters()

    @property
    def causal(self) -> bool:
        """The family (how the model is read and asked); its attention is
        :attr:`attends_causally`."""
        return self.cfg.causal

    @property
    def attends_causally(self) -> bool:
        return self.cfg.attends_causally

    selects_positions = True
    """``forward`` takes ``where`` (see :func:`revcurse.objectives.logits_at`)."""

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        where: torch.Tensor | None = None,  # [B, L] bool
    ) -> torch.Tensor:
        """Logits ``[B, L, vocab]`` (from token ids, or from ``inputs_embeds`` ``[B, L, D]``); with
        ``where``, only those positions' ``[N, vocab]``, unembedding only those rows."""
        hidden = self.model(input_ids, attention_mask, inputs_embeds)  # [B, L, D]
        return self.lm_head(hidden if where is None else hidden[where])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
