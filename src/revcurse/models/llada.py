"""A native LLaDA (Nie et al. 2025, arXiv:2502.09992) whose state dict matches the published one.

LLaDA-8B is an OLMo-style Llama encoder: pre-norm blocks with RMSNorm, bidirectional multi-head
attention with RoPE (half-split convention, ``rope_theta`` 500000), a SwiGLU MLP
``ff_out(silu(ff_proj(x)) * up_proj(x))`` and an untied output layer. The published checkpoint
(``GSAI-ML/LLaDA-8B-*``, loaded there through remote code) names its tensors

====================================================  ==================================
``model.transformer.wte.weight``                      token embedding ``[V, D]``
``model.transformer.blocks.N.attn_norm.weight``       RMSNorm before attention ``[D]``
``model.transformer.blocks.N.{q,k,v}_proj.weight``    ``[D or n_kv*Dh, D]``
``model.transformer.blocks.N.attn_out.weight``        attention output ``[D, D]``
``model.transformer.blocks.N.ff_norm.weight``         RMSNorm before the MLP ``[D]``
``model.transformer.blocks.N.{ff_proj,up_proj}.weight``  gate / up ``[F, D]``
``model.transformer.blocks.N.ff_out.weight``          down ``[D, F]``
``model.transformer.ln_f.weight``                     final RMSNorm ``[D]``
``model.transformer.ff_out.weight``                   output layer ``[V, D]`` (absent when tied)
====================================================  ==================================

and this module has exactly those parameters, so ``load_state_dict(strict=True)`` on the published
safetensors works with no remote code. Hook points (``hook_q``, ``hook_k`` after RoPE,
``hook_scores`` before softmax) serve the attention probes as in ``revcurse.models.transformer``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn import functional as F

from revcurse import files
from revcurse.errors import RevcurseError
from revcurse.models.positional import apply_rope, rope_inv_freq
from revcurse.models.transformer import HookPoint

MASK_TOKEN_ID = 126336
"""``[MASK]`` in the LLaDA-8B tokenizer (the model card's ``mask_id``)."""


@dataclass
class LLaDAConfig:
    """The fields of LLaDA's ``config.json`` this module reads (names as published)."""

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: int | None = 32
    n_layers: int = 32
    mlp_hidden_size: int = 12288
    vocab_size: int = 126464
    embedding_size: int | None = 126464
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    include_bias: bool = False
    include_qkv_bias: bool = False
    mask_token_id: int = MASK_TOKEN_ID
    eos_token_id: int = 126081
    pad_token_id: int = 126081

    @classmethod
    def from_json(cls, path: str | Path) -> LLaDAConfig:
        """Read the known fields of a published ``config.json`` (other keys are ignored)."""
        try:
            data = files.loads(Path(path).read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise RevcurseError(f"{path}: not a readable LLaDA config ({err})") from None
        if not isinstance(data, dict):
            raise RevcurseError(f"{path}: expected a JSON object, got {type(data).__name__}")
        # Variants this module does not implement must not load silently into the wrong maths.
        unsupported = {
            "block_type": data.get("block_type", "llama") != "llama",
            "input_emb_norm": bool(data.get("input_emb_norm")),
            "scale_logits": bool(data.get("scale_logits")),
            "alibi": bool(data.get("alibi")),
            "rope": data.get("rope", True) is not True,
        }
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise RevcurseError(f"{path}: field {bad[0]!r} = {data.get(bad[0])!r} is not supported")
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        for key, value in values.items():  # the published fields are numbers
            want = known[key].type
            if (
                want in (int, "int") and (not isinstance(value, int) or isinstance(value, bool))
            ) or (want in (float, "float") and not isinstance(value, int | float)):
                raise RevcurseError(f"{path}: field {key!r}: expected a number, got {value!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def rows(self) -> int:
        """Rows of the embedding and output matrices (padded vocabulary)."""
        return self.embedding_size or self.vocab_size


class LLaDABlock(nn.Module):
    """``x + attn_out(attn(attn_norm(x)))`` then ``x + ff_out(silu(ff_proj(h)) * up_proj(h))``."""

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        qkv_bias = cfg.include_bias or cfg.include_qkv_bias
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.rms_norm_eps)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.include_bias)
        self.ff_norm = nn.RMSNorm(cfg.d_model, eps=cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=cfg.include_bias)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, cfg.d_model, bias=cfg.include_bias)
        self.hook_q, self.hook_k, self.hook_scores = HookPoint(), HookPoint(), HookPoint()

    def forward(
        self,
        x: torch.Tensor,  # [B, L, D]
        cos: torch.Tensor,  # [L, Dh]
        sin: torch.Tensor,  # [L, Dh]
        keys: torch.Tensor | None,  # [B, 1, 1, L] bool, True = real token
    ) -> torch.Tensor:
        B, L, D = x.shape
        H, Hkv, Dh = self.n_heads, self.n_kv, self.head_dim
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, L, H, Dh).transpose(1, 2)  # [B, H, L, Dh]
        k = self.k_proj(h).view(B, L, Hkv, Dh).transpose(1, 2)  # [B, Hkv, L, Dh]
        v = self.v_proj(h).view(B, L, Hkv, Dh).transpose(1, 2)  # [B, Hkv, L, Dh]
        q = self.hook_q(apply_rope(q, cos.to(q.dtype), sin.to(q.dtype)))
        k = self.hook_k(apply_rope(k, cos.to(k.dtype), sin.to(k.dtype)))
        if Hkv != H:  # grouped-query attention: each key/value head serves H / Hkv query heads
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
        scores = self.hook_scores(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(Dh))
        if keys is not None:
            scores = scores.masked_fill(~keys, float("-inf"))
        z = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)  # [B, H, L, Dh]
        x = x + self.attn_out(z.transpose(1, 2).reshape(B, L, D))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDATransformer(nn.Module):
    """``wte``, ``blocks``, ``ln_f`` and the untied ``ff_out`` (the published ``transformer``)."""

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.rows, cfg.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.RMSNorm(cfg.d_model, eps=cfg.rms_norm_eps)
        if not cfg.weight_tying:
            self.ff_out = nn.Linear(cfg.d_model, cfg.rows, bias=cfg.include_bias)


class LLaDAModel(nn.Module):
    """Holds ``transformer`` (so keys read ``model.transformer...`` under :class:`LLaDAModelLM`)."""

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.transformer = LLaDATransformer(cfg)


class LLaDAModelLM(nn.Module):
    """The LLaDA mask predictor: ``ids [B, L] -> logits [B, L, rows]``, bidirectional."""

    causal = False

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LLaDAModel(cfg)
        inv_freq = rope_inv_freq(cfg.d_model // cfg.n_heads, cfg.rope_theta)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived, not in checkpoints

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Normal(0, std) weights and unit norms (for tiny random models; real ones are loaded)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.RMSNorm):
                module.reset_parameters()

    def rope(self, L: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.outer(torch.arange(L, dtype=torch.float64, device=device), self.inv_freq)
        emb = torch.cat((angles, angles), dim=-1)  # [L, Dh]
        return emb.cos().float(), emb.sin().float()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # [B, L]
        attention_mask: torch.Tensor | None = None,  # [B, L], 1 = real token
        inputs_embeds: torch.Tensor | None = None,  # [B, L, D]
        where: torch.Tensor | None = None,  # [B, L] bool: unembed only these positions
    ) -> torch.Tensor:
        """Logits ``[B, L, V]``, or ``[N, V]`` at the positions ``where``."""
        t = self.model.transformer
        x = t.wte(input_ids) if inputs_embeds is None else inputs_embeds  # [B, L, D]
        cos, sin = self.rope(x.shape[1], x.device)
        keys = None
        if attention_mask is not None and not bool(attention_mask.all()):
            keys = attention_mask.bool()[:, None, None, :]
        for block in t.blocks:
            x = block(x, cos, sin, keys)
        x = t.ln_f(x)  # [B, L, D]
        if where is not None:
            x = x[where]  # [N, D]
        head = t.wte.weight if self.config.weight_tying else t.ff_out.weight
        return F.linear(x, head)


def published_keys(cfg: LLaDAConfig) -> list[str]:
    """The tensor names of a checkpoint in the published layout (bias-free, as LLaDA-8B)."""
    keys = ["model.transformer.wte.weight", "model.transformer.ln_f.weight"]
    if not cfg.weight_tying:
        keys.append("model.transformer.ff_out.weight")
    for n in range(cfg.n_layers):
        keys += [
            f"model.transformer.blocks.{n}.{name}.weight"
            for name in ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm",
                         "ff_proj", "up_proj", "ff_out")
        ]  # fmt: skip
    return keys


def load_llada(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> LLaDAModelLM:
    """Build from ``path/config.json`` and load every ``*.safetensors`` shard with strict=True."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = LLaDAConfig.from_json(path / "config.json")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise RevcurseError(f"{path}: no *.safetensors weights")
    with torch.device("meta"):
        model = LLaDAModelLM(cfg)
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            state.update(load_file(shard, device=str(device)))
        except (SafetensorError, OSError, ValueError) as err:
            raise RevcurseError(f"{shard}: not a valid safetensors file ({err})") from None
    state = {k: v.to(dtype) for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    for problem, names in (("lacks", missing), ("holds unknown", unexpected),
                           ("holds wrongly shaped", wrong)):  # fmt: skip
        if names:
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            raise RevcurseError(f"{path}: the checkpoint {problem} tensor(s) for this config.json "
                                f"({len(names)}: {shown})")  # fmt: skip
    model.load_state_dict(state, strict=True, assign=True)
    # The meta-device build left the derived RoPE frequencies unset; recompute them for real.
    model.inv_freq = rope_inv_freq(cfg.d_model // cfg.n_heads, cfg.rope_theta).to(device)
    return model
