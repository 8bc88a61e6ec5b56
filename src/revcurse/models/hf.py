"""Hugging Face model families for LoRA fine-tuning: specs, loading, tiny random builds, LoRA.

The paper's large-scale runs fine-tune LLaDA-8B-Instruct (MDM), Dream-7B (MDM) and
LLaMA-3.1-8B / Qwen2.5-7B-Instruct (ARMs) with LoRA. Each family has a :class:`FamilySpec`: whether
it is causal, its ``[MASK]`` id, whether its logits are shifted (Dream, adapted from an ARM,
predicts token i at position i - 1), how it is loaded, and the explicit LoRA target modules.

* LLaDA: :mod:`revcurse.models.llada` (native module, published key layout, strict load, no
  remote code);
* Dream: ``transformers.AutoModel`` with remote code, only when the user passes
  ``--trust-remote-code`` (it is not part of transformers);
* Llama, Qwen2: ``transformers.AutoModelForCausalLM``.

Every model is wrapped in :class:`LogitsModel`, a ``ids [B, L] (+ attention_mask) -> logits
[B, L, V]`` callable, which is what the objectives, the decoders and the probes take. Transformers
models run with a *recording* attention function (see :func:`recording_scores`): it calls the
stock SDPA kernel and, only while a probe records, also keeps the pre-softmax scores.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revcurse.errors import RevcurseError
from revcurse.models.hooks import capture
from revcurse.models.llada import MASK_TOKEN_ID, LLaDAConfig, LLaDAModelLM, load_llada


@dataclass(frozen=True)
class FamilySpec:
    """What revcurse needs to know about one model family."""

    name: str
    causal: bool
    lora_targets: str
    """A peft ``target_modules`` regex (full match on module names): the attention projections."""
    modules_per_layer: int
    """How many modules :attr:`lora_targets` adapts in each layer (checked after wrapping)."""
    mlp_targets: str = ""
    """The same for the MLP's projections (``lora.targets: attention+mlp``)."""
    mlp_per_layer: int = 3
    mask_id: int | None = None
    """``[MASK]`` of the published tokenizer (MDMs); None: take the tokenizer's mask token."""
    eos_id: int | None = None
    """The end-of-text token answers are padded with (LLaDA: ``<|endoftext|>`` 126081, which its
    SFT pads with, while its Instruct tokenizer may name the end of turn 126348 as EOS); None: the
    tokenizer's."""
    shift_logits: bool = False
    remote_code: bool = False
    """Loading the published weights needs the checkpoint's own code (``--trust-remote-code``)."""
    mask_4d: bool = False
    """The model takes a padding mask as a bidirectional ``[B, 1, L, L]`` bool mask (Dream's own
    sampler builds it so), not as ``[B, L]``."""
    from_causal: bool = False
    """An autoregressive checkpoint read bidirectionally (AR-to-diffusion, as dllm's A2D models
    are made): every forward passes a ``[B, 1, L, L]`` mask that hides padding only, replacing
    the causal mask the architecture would build."""
    records_scores: bool = True
    """Attention scores can be recorded (revcurse's hooks or transformers' attention interface);
    remote code brings its own attention classes, which neither reaches."""
    example: str = ""


_ATTENTION = r".*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
_MLP = r".*layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)"
FAMILIES: dict[str, FamilySpec] = {
    "llada": FamilySpec(
        "llada", causal=False, lora_targets=r".*blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out)",
        modules_per_layer=4, mlp_targets=r".*blocks\.\d+\.(ff_proj|up_proj|ff_out)",
        mask_id=MASK_TOKEN_ID, eos_id=126081, example="GSAI-ML/LLaDA-8B-Instruct",
    ),
    "dream": FamilySpec(
        "dream", causal=False, lora_targets=_ATTENTION, modules_per_layer=4, mlp_targets=_MLP,
        mask_id=151666, shift_logits=True, remote_code=True, mask_4d=True, records_scores=False,
        example="Dream-org/Dream-v0-Instruct-7B",
    ),
    "llama": FamilySpec(
        "llama", causal=True, lora_targets=_ATTENTION, modules_per_layer=4, mlp_targets=_MLP,
        example="meta-llama/Llama-3.1-8B-Instruct",
    ),
    "qwen2": FamilySpec(
        "qwen2", causal=True, lora_targets=_ATTENTION, modules_per_layer=4, mlp_targets=_MLP,
        example="Qwen/Qwen2.5-7B-Instruct",
    ),
    # The same Llama weights as a masked diffusion model: attention both ways, the logits shifted
    # as Dream's are (position i - 1's head predicts token i, as the AR weights learned), the
    # mask token borrowed from the tokenizer (its mask token, else its unknown token).
    "llama-a2d": FamilySpec(
        "llama-a2d", causal=False, lora_targets=_ATTENTION, modules_per_layer=4,
        mlp_targets=_MLP, shift_logits=True, mask_4d=True, from_causal=True,
        example="a Llama-architecture checkpoint (e.g. `revcurse models get smollm2-135m-instruct`)",
    ),
}  # fmt: skip


def family(name: str) -> FamilySpec:
    if name not in FAMILIES:
        raise RevcurseError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


# --------------------------------------------------------------------------------------------------
# Recording attention (transformers models)
# --------------------------------------------------------------------------------------------------

RECORDING = "revcurse_recording"
_recorder: dict[int, torch.Tensor] | None = None


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA, plus the pre-softmax scores ``q.k * scaling`` ``[B, H, Lq, Lk]`` while recording."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if _recorder is not None:
        groups = query.shape[1] // key.shape[1]  # grouped-query attention
        k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
        _recorder[module.layer_idx] = torch.matmul(query, k.transpose(-1, -2)) * kwargs.get(
            "scaling", query.shape[-1] ** -0.5
        )
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def _register_recording_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(RECORDING, _recording_attention)
    # Without a registered mask builder transformers would pass no padding mask at all.
    AttentionMaskInterface.register(RECORDING, sdpa_mask)


@contextlib.contextmanager
def recording_scores(model: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
    """Pre-softmax attention scores per layer ``{layer: [B, H, Lq, Lk]}`` of forwards run inside.

    Models with ``hook_scores`` hook points (native LLaDA, revcurse's own Transformer) are read
    through them; transformers models through the recording attention function.
    """
    global _recorder
    points = [name for name, m in model.named_modules() if name.endswith("hook_scores")]
    if points:  # one capture for every hook point, keyed by layer
        with capture(model, points, keys=range(len(points))) as cache:
            yield cache
        return
    previous, _recorder = _recorder, {}
    try:
        yield _recorder
    finally:
        _recorder = previous


# --------------------------------------------------------------------------------------------------
# The logits interface
# --------------------------------------------------------------------------------------------------


class LogitsModel(nn.Module):
    """``ids [B, L] (+ attention_mask [B, L]) -> logits [B, L, V]`` for any family."""

    def __init__(self, inner: nn.Module, spec: FamilySpec) -> None:
        super().__init__()
        self.inner = inner
        self.spec = spec
        self.causal = spec.causal

    @property
    def base(self) -> nn.Module:
        """The model under any peft wrapper."""
        inner = self.inner
        return inner.get_base_model() if hasattr(inner, "get_base_model") else inner

    selects_positions = True
    """``forward`` takes ``where`` (see :func:`revcurse.objectives.logits_at`)."""

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L]
        attention_mask: torch.Tensor | None = None,  # [B, L]
        where: torch.Tensor | None = None,  # [B, L] bool
    ) -> torch.Tensor:
        """Logits ``[B, L, V]``; with ``where``, only those positions' ``[N, V]``: LLaDA, Llama and
        Qwen2 then unembed only those rows (a remote-code model's full logits are indexed)."""
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: let the model take its unmasked fast path
        if attention_mask is None and self.spec.from_causal:  # no padding, but not causal either
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is not None and self.spec.mask_4d:
            keys = attention_mask.bool()  # [B, L]
            attention_mask = keys[:, None, None, :] & keys[:, None, :, None]  # [B, 1, L, L]
        base = self.base
        if where is not None and isinstance(base, LLaDAModelLM):
            return base(input_ids=input_ids, attention_mask=attention_mask, where=where)
        if where is not None and not self.spec.remote_code:
            # The LoRA layers live inside the base model's modules, so its decoder and head are
            # the adapted model; calling them directly skips only the full-vocabulary logits.
            decoder, head = base.get_decoder(), base.get_output_embeddings()
            out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return head(self._shift(out.last_hidden_state)[where])  # [N, V]
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
        logits = self._shift(out if isinstance(out, torch.Tensor) else out.logits)  # [B, L, V]
        return logits if where is None else logits[where]

    @torch.no_grad()
    def greedy(self, ids: torch.Tensor, n: int, eos_id: int) -> torch.Tensor:
        """Greedy continuation ``[B, n]`` of unpadded prompts ``ids [B, L]`` with transformers'
        ``generate`` and its KV cache (ARMs); after ``eos_id`` a row holds ``eos_id``."""
        from transformers import GenerationConfig

        if not self.causal:
            raise RevcurseError(f"{self.spec.name}: greedy decoding is for causal models")
        settings = GenerationConfig(max_new_tokens=n, do_sample=False, num_beams=1,
                                    eos_token_id=eos_id, pad_token_id=eos_id)  # fmt: skip
        out = self.inner.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  generation_config=settings)  # fmt: skip
        new = out[:, ids.shape[1] :]  # [B, <= n]: generate stops once every row has ended
        if new.shape[1] < n:
            new = torch.cat([new, new.new_full((len(ids), n - new.shape[1]), eos_id)], dim=1)
        return new

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        """Dream predicts token i from position i - 1 (its ARM initialisation): realign ``x``
        ``[B, L, ...]`` so that row i holds position i's prediction."""
        return torch.cat([x[:, :1], x[:, :-1]], dim=1) if self.spec.shift_logits else x

    @property
    def n_layers(self) -> int:
        base = self.base
        if isinstance(base, LLaDAModelLM):
            return base.config.n_layers
        return base.config.num_hidden_layers


# --------------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------------


@dataclass
class TinyShape:
    """The size of a tiny random model (tests, CPU benchmarks, GPU smoke runs)."""

    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 128
    max_positions: int = 256


def build_tiny(name: str, vocab_size: int, shape: TinyShape, seed: int = 0) -> LogitsModel:
    """A randomly initialised model of family ``name`` with the given shape (offline, no weights)."""
    spec = family(name)
    torch.manual_seed(seed)
    if name == "llada":
        cfg = LLaDAConfig(
            d_model=shape.hidden_size, n_heads=shape.n_heads, n_kv_heads=shape.n_kv_heads,
            n_layers=shape.n_layers, mlp_hidden_size=shape.intermediate_size,
            vocab_size=vocab_size, embedding_size=vocab_size,
        )  # fmt: skip
        model = LLaDAModelLM(cfg)
        model.init_weights(generator=torch.Generator().manual_seed(seed))
        return LogitsModel(model, spec)
    if spec.remote_code:
        raise RevcurseError(
            f"family {name!r}: its architecture lives in the checkpoint's remote code, so no tiny "
            "random model can be built offline; use model.path with --trust-remote-code"
        )
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    _register_recording_attention()
    cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM)
        if name in ("llama", "llama-a2d")
        else (Qwen2Config, Qwen2ForCausalLM)
    )
    cfg = cls(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
    )  # fmt: skip
    cfg._attn_implementation = RECORDING
    return LogitsModel(model_cls(cfg), spec)


def load_pretrained(
    name: str, path: str, dtype: torch.dtype, device: str, trust_remote_code: bool = False
) -> LogitsModel:
    """Published weights of family ``name`` from a local directory or a hub id."""
    spec = family(name)
    if name == "llada":
        if not Path(path).is_dir():
            raise RevcurseError(
                f"model.path {path!r}: LLaDA loads from a local directory holding config.json and "
                "*.safetensors (e.g. `huggingface-cli download GSAI-ML/LLaDA-8B-Instruct`)"
            )
        model = load_llada(path, dtype, device)  # strict: every tensor present
        check_loaded(path, model, [])
        return LogitsModel(model, spec)
    if spec.remote_code and not trust_remote_code:
        raise RevcurseError(
            f"family {name!r} needs the checkpoint's own code; pass --trust-remote-code if you "
            f"trust {path!r}"
        )
    import transformers

    _only_safetensors(path)
    if not sys.stderr.isatty():  # its loading bar is for a person at a terminal, not for logs
        transformers.utils.logging.disable_progress_bar()
    _register_recording_attention()
    auto = transformers.AutoModel if spec.remote_code else transformers.AutoModelForCausalLM
    # Remote code keys its own attention classes by implementation name: give it a stock one.
    attention = "sdpa" if spec.remote_code else RECORDING
    # use_safetensors: never unpickle a checkpoint's .bin; loading info: refuse missing tensors
    # rather than run with the random weights transformers would put in their place
    model, info = auto.from_pretrained(
        path, dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=attention,
        use_safetensors=True, output_loading_info=True,
    )  # fmt: skip
    check_loaded(path, model, info.get("missing_keys", []))
    return LogitsModel(model.to(device), spec)


def _only_safetensors(path: str) -> None:
    """A local checkpoint folder must hold safetensors weights: pickled ``*.bin`` / ``*.pt``
    files are never loaded (unpickling runs code), so a folder with only those is refused."""
    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        found = f" (it holds {', '.join(pickled[:3])})" if pickled else ""
        raise RevcurseError(
            f"model.path {path}: no *.safetensors weights{found}; revcurse loads safetensors "
            "only and never unpickles a checkpoint (convert it with safetensors first)"
        )


def check_loaded(path: str, model: torch.nn.Module, missing: Sequence[str]) -> None:
    """Refuse a checkpoint that lacks tensors the model needs or holds non-finite weights, naming
    the first few (a model evaluated with random or NaN weights reports numbers that mean
    nothing)."""
    if missing:
        names = ", ".join(sorted(missing)[:3]) + (" ..." if len(missing) > 3 else "")
        raise RevcurseError(
            f"model.path {path}: the checkpoint lacks {len(missing)} tensor(s) the model needs "
            f"({names}); refusing to fill them with random weights"
        )
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        names = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise RevcurseError(f"model.path {path}: non-finite weights (NaN or inf) in {names}")


def load_tokenizer(name: str, path: str, trust_remote_code: bool = False, chat: bool = True) -> Any:
    """The published tokenizer behind revcurse's tokenizer interface (mask id from the spec;
    ``chat``: framed by its chat template when it has one)."""
    from transformers import AutoTokenizer

    from revcurse.data.text import HFTokenizer

    spec = family(name)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if spec.causal:
        mask_id = tok.mask_token_id or tok.eos_token_id
    elif spec.mask_id is not None:
        mask_id = spec.mask_id
    else:  # an AR checkpoint read as an MDM: a token its chat data never holds stands for [MASK]
        mask_id = _borrowed_mask(tok, path)
    return HFTokenizer(tok, mask_id=mask_id, chat=chat, eos_id=spec.eos_id)


def _borrowed_mask(tok: Any, path: str) -> int:
    """The token an AR tokenizer lends to stand for ``[MASK]``: its mask token, else its unknown
    token, provided it is none of the tokens the chat frame, padding or answers use."""
    for candidate in (tok.mask_token_id, tok.unk_token_id):
        if candidate is not None and candidate not in {tok.pad_token_id, tok.eos_token_id,
                                                       tok.bos_token_id}:  # fmt: skip
            return int(candidate)
    raise RevcurseError(f"model.path {path}: the tokenizer has no mask or unknown token that is "
                        "not also its padding, BOS or EOS; it cannot lend one as [MASK]")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------


def lora_targets(spec: FamilySpec, which: str) -> tuple[str, int]:
    """The peft regex of ``which`` set of projections (``attention`` or ``attention+mlp``) of a
    family, and how many modules it adapts per layer."""
    if which == "attention":
        return spec.lora_targets, spec.modules_per_layer
    if which == "attention+mlp":
        regex = f"(?:{spec.lora_targets})|(?:{spec.mlp_targets})"
        return regex, spec.modules_per_layer + spec.mlp_per_layer
    raise RevcurseError(f"lora.targets {which!r}: expected attention or attention+mlp")


def add_lora(
    model: LogitsModel,
    r: int,
    alpha: float,
    dropout: float,
    targets: str | None = None,
    which: str = "attention+mlp",
) -> int:
    """Wrap the model's inner module with peft LoRA adapters; returns the number adapted.

    ``targets`` (a regex) replaces the family's ``which`` set (:func:`lora_targets`). With the
    family's own set, raises if the count differs from its modules per layer times the layers: a
    silently mis-targeted LoRA is the classic failure of this step.
    """
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    spec = model.spec
    n_layers = model.n_layers
    regex, per_layer = lora_targets(spec, which)
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets or regex, bias="none"
    )
    try:
        model.inner = get_peft_model(model.inner, cfg)
    except ValueError as err:  # peft's NoMatchingPeftModuleError is a ValueError
        raise RevcurseError(
            f"lora.target_modules {targets!r} matched no module of {spec.name} ({err})"
        ) from None
    adapted = sum(isinstance(m, LoraLayer) for m in model.inner.modules())
    expected = per_layer * n_layers
    if targets is None and adapted != expected:
        raise RevcurseError(
            f"LoRA adapted {adapted} modules of {spec.name}, expected {expected} "
            f"({per_layer} per layer x {n_layers} layers)"
        )
    if adapted == 0:
        raise RevcurseError(f"lora.target_modules {targets!r} matched no module of {spec.name}")
    return adapted


def lora_parameters(model: nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable (adapter) parameters by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: LogitsModel, path: str | Path) -> None:
    """The adapters in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    model.inner.save_pretrained(str(path), safe_serialization=True)


def check_adapter(path: str | Path) -> None:
    """Refuse a directory that holds no peft adapter, or whose adapter files are links leading
    out of it (before any model is loaded)."""
    folder = Path(path)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise RevcurseError(f"{path}: no adapter_model.safetensors (peft adapter directory)")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        file = folder / name
        if file.is_symlink() and folder.resolve() not in file.resolve().parents:
            raise RevcurseError(f"{file}: a link to {file.resolve()}, outside the adapter folder; "
                                "copy the adapter's files into it")  # fmt: skip


def load_adapter(model: LogitsModel, path: str | Path, trainable: bool = False) -> None:
    """Attach saved adapters to a freshly built base model (weights from safetensors only);
    ``trainable``: the adapters alone require gradients (the probes' gradients are taken on
    them, as in the run that trained them). An adapter made for another base model (other
    shapes, other module names) is refused in one line."""
    from peft import PeftModel

    check_adapter(path)
    try:
        model.inner = PeftModel.from_pretrained(model.inner, str(path), is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as err:  # shape mismatch, unknown modules
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RevcurseError(
            f"{path}: this adapter does not fit the model ({first[:300]})"
        ) from None
