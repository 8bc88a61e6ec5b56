"""Typed configuration: dataclasses with docstrings, YAML round-trip, dotted overrides, validation.

A config is a tree of dataclasses. YAML files are plain dumps of that tree (``dump_yaml``), and are
read back with ``yaml.safe_load`` and checked field by field against the type annotations
(``from_dict``): unknown keys are rejected with the closest valid name as a suggestion, and every
error names the dotted field (``model.d_model``) and the file it came from.

Overrides use the same dotted names (``--set model.d_model=128``); their values are parsed as YAML
scalars (``128``, ``true``, ``[0, 1, 2]``) and go through exactly the same checks as a file. A
section given in part keeps the defaults of the config that holds it.

OmegaConf 2.4 structured configs were tried for this machinery and not adopted: they read
``${...}`` in any string as an interpolation (a path such as ``data/${HOME}/x`` fails, ``???``
means "missing"), convert strings to numbers (``d_model: "128"`` passes), and report errors over
several lines, which would still have to be rewritten into this module's one-line contract.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from revcurse.errors import ConfigError

T = TypeVar("T")

EXACT_BOUND_MAX_LENGTH = 12
"""The longest answer :func:`~revcurse.decoding.mdm_exact_bound` enumerates (2^12 - 1 = 4095
masked rows)."""

Family = Literal["mdm", "arm"]
Positional = Literal["rope", "sinusoidal", "learned", "alibi", "none"]
Norm = Literal["rmsnorm", "layernorm", "none"]
Objective = Literal[
    "auto", "masked_diffusion", "next_token", "mlm", "answer_only", "masked_ar", "prefix_lm"
]
Maskable = Literal["all", "entities", "no_fillers", "answer"]
Precision = Literal["auto", "bf16"]
TextTask = Literal["person-description", "parent-child", "facts"]
Schedule = Literal["cosine", "linear", "constant"]


# --------------------------------------------------------------------------------------------------
# The config tree
# --------------------------------------------------------------------------------------------------


@dataclass
class ToyDataConfig:
    """The synthetic reversal task: N pairs of entities ``a_i`` and ``B_i`` (one token each by
    default).

    Training holds only forward statements ``[BOS] a_i REL f.. B_i [EOS]``; the forward query is
    ``a_i REL f.. [M] -> B_i`` and the reverse query ``B_i REL f.. [M] -> a_i``. The bridge towards
    natural text varies the entities' length and the relation's wording (``entity_tokens``,
    ``n_templates``, ``templates_per_fact``).
    """

    n_pairs: int = 100
    """Number of entity pairs (facts)."""
    n_filler: int = 0
    """Filler tokens between REL and the second entity; the entities sit n_filler + 2 apart."""
    filler_vocab: int = 1
    """Number of distinct filler token types; each fact draws its fillers from them."""
    filler_shared: bool = False
    """Draw one filler sequence for all facts: fillers then vary by position but not by fact, so
    with several filler types they cannot identify a fact (drawn per fact, they nearly can)."""
    bos: bool = False
    """Prepend a BOS token to every statement and query."""
    eos: bool = False
    """Append an EOS token to every training statement."""
    reverse_augment: bool = False
    """Also train on the reversed statements ``B_i REL a_i`` (reverse training, a control)."""
    shuffle_pairs: bool = True
    """Pair a_i with B_pi(i) for a seeded random permutation pi (else with B_i)."""
    seed: int = 0
    """Seed of the pairing and the fillers; the dataset is a pure function of this config."""
    entity_tokens: int = 1
    """Tokens per entity. Above 1, each entity is a distinct sequence of tokens from a pool per
    side that all entities of that side share (like first and last names), so no single token
    identifies an entity (``entity_spelling`` decides)."""
    entity_spelling: Literal["shared", "unique"] = "shared"
    """How entities of several tokens are spelled: ``shared``, distinct sequences drawn from one
    pool of tokens per side (tokens are shared between entities); ``unique``, each entity its own
    tokens, used by no other entity (the pool is n_pairs x entity_tokens): length without
    sharing."""
    entity_pool: int = 0
    """With ``shared`` spelling, the tokens per side's pool (its sequences must number at least
    n_pairs); 0: the smallest pool whose sequences number at least twice the entities."""
    both_fraction: float = 0.0
    """Fraction of the facts also trained in the inverse direction, ``B_i INV f.. a_i``, with a
    relation token of its own (``<inv>``, the inverse relation; Kim et al., arXiv 2509.21993,
    train the inverse relation on other facts of their knowledge graph). Reverse queries are then
    asked with ``<inv>``: those of the facts trained forward only are the test (``reverse``;
    ``forward`` and ``mirror`` are asked of the same facts), those of the facts trained both ways
    a fit check (``*_both`` metrics). Drawn per dataset; 0: off."""
    n_templates: int = 1
    """Paraphrases of the relation: distinct relation tokens that state the same relation."""
    templates_per_fact: int = 0
    """In how many of the paraphrases each fact is trained (drawn per fact; 0: all). Below
    ``n_templates``, every query is also asked in a paraphrase that fact was never trained in
    (``*_unseen`` metrics): one the model read only with other facts."""

    def validate(self, where: str) -> None:
        _check(self.n_pairs >= 1, where, "n_pairs", "an integer >= 1", self.n_pairs)
        _check(self.n_filler >= 0, where, "n_filler", "an integer >= 0", self.n_filler)
        _check(self.filler_vocab >= 1, where, "filler_vocab", "an integer >= 1", self.filler_vocab)
        _check(self.entity_tokens >= 1, where, "entity_tokens", "an integer >= 1",
               self.entity_tokens)  # fmt: skip
        _check(self.entity_spelling in ("shared", "unique"), where, "entity_spelling",
               "one of 'shared', 'unique'", self.entity_spelling)  # fmt: skip
        if self.entity_pool:
            _check(self.entity_tokens > 1 and self.entity_spelling == "shared", where,
                   "entity_pool", "0 unless entity_tokens > 1 with shared spelling",
                   self.entity_pool)  # fmt: skip
            _check(self.entity_pool >= 2 and self.entity_pool**self.entity_tokens >= self.n_pairs,
                   where, "entity_pool",
                   f"a pool whose {self.entity_tokens}-token sequences number at least "
                   f"n_pairs={self.n_pairs}", self.entity_pool)  # fmt: skip
        if self.both_fraction:
            both = self.both_facts
            _check(math.isfinite(self.both_fraction) and 1 <= both < self.n_pairs, where,
                   "both_fraction", f"a fraction that leaves 1 to {self.n_pairs - 1} of the "
                   f"n_pairs={self.n_pairs} facts trained both ways", self.both_fraction)  # fmt: skip
            _check(not self.reverse_augment and self.n_templates == 1, where, "both_fraction",
                   "0 with reverse_augment or several n_templates (each trains reversed "
                   "statements its own way)", self.both_fraction)  # fmt: skip
        _check(self.n_templates >= 1, where, "n_templates", "an integer >= 1", self.n_templates)
        _check(0 <= self.templates_per_fact <= self.n_templates, where, "templates_per_fact",
               f"an integer from 0 to n_templates={self.n_templates}",
               self.templates_per_fact)  # fmt: skip

    @property
    def both_facts(self) -> int:
        """How many facts ``both_fraction`` trains in both directions."""
        return round(self.both_fraction * self.n_pairs) if math.isfinite(self.both_fraction) else 0

    @property
    def trained_templates(self) -> int:
        """How many paraphrases each fact is trained in."""
        return self.templates_per_fact or self.n_templates


@dataclass
class ModelConfig:
    """One small Transformer; ``causal`` switches a bidirectional encoder (MDM) / decoder (ARM)."""

    causal: bool = False
    """True: causal decoder (ARM). False: bidirectional encoder (MDM). The family: how the model is
    trained by default, read (the next token after the prompt, or the masked answer slot) and
    which queries it can be asked; its attention follows unless ``attention`` says otherwise."""
    attention: Literal["auto", "causal", "full"] = "auto"
    """The attention mask alone: ``auto`` follows ``causal``; ``causal`` makes a masked model
    attend to the left only (the masked objective with causal attention); ``full`` lets an
    autoregressive model attend both ways within what it reads (with the prefix_lm objective,
    next-token prediction from a prefix read bidirectionally). The objective x attention grid
    (``reproduce objective-attention``)."""
    d_model: int = 64
    """Residual stream width."""
    n_layers: int = 1
    """Number of Transformer blocks."""
    n_heads: int = 1
    """Attention heads per layer; d_model must be divisible by it."""
    mlp: bool = True
    """Include the MLP sub-block in every layer."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of d_model."""
    norm: Norm = "rmsnorm"
    """Pre-norm type: rmsnorm, layernorm or none."""
    positional: Positional = "rope"
    """Positional encoding: rope, sinusoidal, learned, alibi or none."""
    rope_base: float = 10000.0
    """RoPE base theta (frequencies theta^(-2i/d_head))."""
    max_seq_len: int = 64
    """Longest sequence the learned/sinusoidal tables cover."""
    tie_embeddings: bool = False
    """Share the input embedding and the unembedding (lm_head)."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of every weight matrix."""

    @property
    def attends_causally(self) -> bool:
        """Whether each position attends only to itself and the positions before it."""
        return self.causal if self.attention == "auto" else self.attention == "causal"

    def validate(self, where: str) -> None:
        _check(self.d_model >= 1, where, "d_model", "an integer >= 1", self.d_model)
        _check(self.n_layers >= 1, where, "n_layers", "an integer >= 1", self.n_layers)
        _check(self.n_heads >= 1, where, "n_heads", "an integer >= 1", self.n_heads)
        _check(
            self.d_model % self.n_heads == 0,
            where,
            "n_heads",
            f"a divisor of d_model={self.d_model}",
            self.n_heads,
        )
        if self.positional == "rope":
            _check(
                (self.d_model // self.n_heads) % 2 == 0,
                where,
                "d_model",
                "an even head dimension (d_model / n_heads) for rope",
                self.d_model,
            )
        _check(self.mlp_ratio > 0, where, "mlp_ratio", "a number > 0", self.mlp_ratio)
        _check(self.rope_base > 1, where, "rope_base", "a number > 1", self.rope_base)
        _check(self.max_seq_len >= 1, where, "max_seq_len", "an integer >= 1", self.max_seq_len)
        _check(self.init_std > 0, where, "init_std", "a number > 0", self.init_std)

    @property
    def family(self) -> Family:
        return "arm" if self.causal else "mdm"

    def parameter_count(self, vocab_size: int) -> int:
        """Parameters of :class:`~revcurse.models.transformer.TransformerLM` with this config,
        from the config alone (tested against the built model)."""
        d = self.d_model
        norm = {"rmsnorm": d, "layernorm": 2 * d, "none": 0}[self.norm]
        hidden = max(1, round(d * self.mlp_ratio))
        layer = 4 * d * d + norm + ((2 * d * hidden + norm) if self.mlp else 0)
        embeddings = vocab_size * d * (1 if self.tie_embeddings else 2)
        positions = self.max_seq_len * d if self.positional == "learned" else 0
        return embeddings + positions + self.n_layers * layer + norm

    def check_fits(self, vocab_size: int, where: str) -> None:
        """Refuse a model whose training state cannot fit in this machine's memory, before
        anything is allocated: float32 weights, gradients and two AdamW moments, 16 bytes per
        parameter (activations come on top)."""
        params = self.parameter_count(vocab_size)
        need = 16 * params
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > have:
            raise ConfigError(
                f"{where}: field 'model': {params:,} parameters (d_model {self.d_model}, "
                f"{self.n_layers} layers, vocabulary {vocab_size:,}) need ~{need / 2**30:,.1f} GiB "
                f"for weights, gradients and AdamW state; this machine has {have / 2**30:,.1f} GiB"
            )


@dataclass
class TrainConfig:
    """Optimisation of every run kind (toy, from-scratch text, LoRA fine-tuning): objective, AdamW,
    warmup + decay schedule, logging and checkpoints. One loop reads it (:mod:`revcurse.training`)."""

    objective: Objective = "auto"
    """masked_diffusion (MDM), next_token (ARM), mlm (fixed ratio), answer_only (mask only the
    answer entity), masked_ar (a causal model reading inputs masked at t ~ U(0.05, 0.95),
    predicting the original next tokens), prefix_lm (next-token prediction where each prefix is
    read on its own: with model.attention=full every prefix is read both ways; with causal
    attention it is next_token, at a few times the cost), or auto:
    masked_diffusion or next_token from model.causal. Text runs: auto."""
    mlm_ratio: float = 0.15
    """Masking ratio of the mlm objective."""
    maskable: Maskable = "all"
    """Which tokens of a statement the masked_diffusion and mlm objectives may mask (the loss is
    normalised by their count). Toy runs: all (every token: BOS, entities, relation, fillers, EOS),
    entities (the two entity slots only) or no_fillers (every token but the fillers). Text runs:
    all (the whole statement, LLaDA's pre-training loss) or answer (only the statement's
    completion, e.g. the description after "{name}, known for being": LLaDA's SFT loss)."""
    mask_unit: Literal["token", "entity"] = "token"
    """What the masked_diffusion and mlm objectives mask at once: each token on its own, or every
    entity whole, one draw per entity at rate t and one per other token, as DiffER's whole-entity
    masking (arXiv 2601.07347) does. Toy runs: the two entity slots. Text runs (from scratch, and
    fine-tuning a masked diffusion model, where only the answer is ever masked): every occurrence
    of an entity the dataset names (the answers of its queries and statements: names, parents,
    descriptions as worded), found verbatim, longest first."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 0
    """Sequences per optimizer step, over all processes together (the experiment's batch: 8 GPUs
    do not multiply it); the training set's size or more means the whole set, in its order,
    every step, and so does 0 on a set of at most 1024 rows (larger sets: batches of 1024, so a
    step stays bounded as the facts multiply); otherwise shuffled epochs (the last partial batch
    dropped)."""
    loss_weighting: Literal["inverse_t", "cart"] = "inverse_t"
    """MDM loss: LLaDA's 1/t per masked token, or Dream's context-adaptive weights (CART, the
    weighting of Dream's training as dllm implements it; ``cart_p``)."""
    cart_p: float = 0.3
    """CART: the geometric decay of a visible token's weight with its distance."""
    micro_batch_size: int = 0
    """Sequences per forward pass in one process; 0: its whole share of the batch. Smaller values
    accumulate gradients over ``share / micro_batch_size`` passes (same update, less memory)."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (matrices only; norms and biases are never decayed)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.98
    """AdamW beta2."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr."""
    schedule: Schedule = "cosine"
    """Decay after warmup: cosine, linear or constant."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    diffusion_eps: float = 1e-3
    """Masked diffusion draws t ~ U(eps, 1) so the 1/t weight stays bounded."""
    log_every: int = 50
    """Write the training loss to metrics.jsonl every this many steps."""
    eval_every: int = 100
    """Evaluate forward/reverse accuracy every this many steps (0: only at the end). Toy runs
    only: text runs evaluate before and after training."""
    checkpoint_every: int = 0
    """Save checkpoints/last.safetensors every this many steps for resuming (0: only the final)."""
    keep_checkpoints: bool = False
    """Also keep checkpoints/step-N.safetensors at every checkpoint (else only the latest)."""
    seed: int = 0
    """Seed of the initialisation and of every random draw during training."""
    threads: int = 1
    """torch intra-op threads for this run (1 is fastest for toy sizes)."""
    compile: bool = False
    """Train the model wrapped in ``torch.compile`` (inductor). The same run up to float rounding
    (tested to a stated tolerance); the first steps pay the compilation (seconds to a minute), so
    it pays only on long runs (BENCHMARKS.md measures where). Evaluation and probes read the
    uncompiled model."""
    precision: Precision = "auto"
    """Arithmetic of the training steps. ``auto``: bf16 autocast on GPU (accelerate's mixed
    precision), float32 on CPU. ``bf16``: bf16 autocast on CPU too. Where the CPU has bf16 matrix
    instructions (AVX-512 BF16, AMX) it makes a from-scratch text step about 2.5x faster
    (BENCHMARKS.md); elsewhere oneDNN emulates bf16 and it may be slower. Weights, gradients and AdamW moments stay float32 and the loss's softmax is
    taken in float32; the run differs from a float32 one by bf16 rounding (tested to a stated
    tolerance). Evaluation and probes read the model in float32."""

    def validate(self, where: str) -> None:
        _check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)
        _check(0 < self.mlm_ratio <= 1, where, "mlm_ratio", "a number in (0, 1]", self.mlm_ratio)
        _check(self.batch_size >= 0, where, "batch_size", "an integer >= 0", self.batch_size)
        _check(0 < self.cart_p < 1, where, "cart_p", "a number in (0, 1)", self.cart_p)
        _check(self.micro_batch_size >= 0, where, "micro_batch_size", "an integer >= 0 (0: the "
               "process's whole share)", self.micro_batch_size)  # fmt: skip
        _check(self.lr > 0, where, "lr", "a number > 0", self.lr)
        _check(self.weight_decay >= 0, where, "weight_decay", "a number >= 0", self.weight_decay)
        _check(0 <= self.beta1 < 1, where, "beta1", "a number in [0, 1)", self.beta1)
        _check(0 <= self.beta2 < 1, where, "beta2", "a number in [0, 1)", self.beta2)
        _check(self.warmup_steps >= 0, where, "warmup_steps", "an integer >= 0", self.warmup_steps)
        _check(
            0 <= self.min_lr_ratio <= 1,
            where,
            "min_lr_ratio",
            "a number in [0, 1]",
            self.min_lr_ratio,
        )
        _check(self.grad_clip >= 0, where, "grad_clip", "a number >= 0", self.grad_clip)
        _check(
            0 < self.diffusion_eps < 1,
            where,
            "diffusion_eps",
            "a number in (0, 1)",
            self.diffusion_eps,
        )
        _check(self.log_every >= 1, where, "log_every", "an integer >= 1", self.log_every)
        _check(self.eval_every >= 0, where, "eval_every", "an integer >= 0", self.eval_every)
        _check(
            self.checkpoint_every >= 0,
            where,
            "checkpoint_every",
            "an integer >= 0",
            self.checkpoint_every,
        )
        _check(self.threads >= 1, where, "threads", "an integer >= 1", self.threads)
        _check(self.mask_unit in ("token", "entity"), where, "mask_unit",
               "one of 'token', 'entity'", self.mask_unit)  # fmt: skip

    def check_text(self, where: str, entity_masking: bool = False,
                   autoregressive: bool = False) -> None:  # fmt: skip
        """Refuse, in the config that holds this as ``train``, the settings only toy runs have (a
        text run's loss follows model.causal; ``entity_masking``: whether this kind of run masks
        entities whole; ``autoregressive``: whether it trains an autoregressive model, which may
        also be trained masked-AR or prefix by prefix)."""
        others = ("masked_ar", "prefix_lm") if autoregressive else ()
        _check(self.objective == "auto" or self.objective in others, where,
               "train.objective", "auto (text runs train masked_diffusion or next_token by "
               "model.causal)" + (", masked_ar or prefix_lm" if others else ""),
               self.objective)  # fmt: skip
        _check(self.maskable in ("all", "answer"), where, "train.maskable",
               "all or answer for a text run", self.maskable)  # fmt: skip
        _check(self.mask_unit == "token" or entity_masking, where, "train.mask_unit",
               "token for this kind of run", self.mask_unit)  # fmt: skip
        _check(self.eval_every == 0, where, "train.eval_every",
               "0 (text runs evaluate before and after training)", self.eval_every)  # fmt: skip


@dataclass
class ProbeConfig:
    """Mechanism probes run during training (probes/ in the run directory)."""

    every: int = 0
    """Probe every this many steps, plus at step 0 and at the end (0: only at the end)."""
    steps: list[int] = field(default_factory=list)
    """Further steps to probe at, besides the cadence (e.g. [10, 50] to catch early dynamics)."""
    enabled: bool = True
    """Run the probes at all (false: no probes/ directory)."""
    attention: bool = True
    """Attention-score coupling S_fwd vs S_rev per layer and head."""
    gradients: bool = True
    """Forward/reverse gradient cosines per parameter group and the first-order check."""
    per_example: bool = True
    """Per-fact gradient cosines via torch.func (the distribution over facts)."""
    per_example_every: int = 500
    """Cadence of the per-fact cosines (costlier than the rest); 0: only at the end."""
    per_example_max_facts: int = 128
    """Per-fact cosines use the first this many facts: per-fact gradients are dense
    [facts, vocab, d_model] tensors, gigabytes for thousands of facts. Batch cosines use all."""
    signals: bool = True
    """Back-propagated error vectors e and hidden signals u for forward and reverse queries."""
    distances: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16, 32])
    """Filler counts k at which the final probe measures the coupling (distance k + 2)."""
    first_order_lr: float = 1e-3
    """SGD step size of the first-order check of the reverse-loss change."""
    seed: int = 1234
    """Seed of the fixed mask draw that makes the probed training loss deterministic."""

    def validate(self, where: str) -> None:
        _check(self.every >= 0, where, "every", "an integer >= 0", self.every)
        _check(all(s >= 0 for s in self.steps), where, "steps", "steps >= 0", self.steps)
        _check(
            self.per_example_every >= 0, where, "per_example_every", "an integer >= 0",
            self.per_example_every,
        )  # fmt: skip
        _check(
            all(k >= 0 for k in self.distances), where, "distances", "filler counts >= 0",
            self.distances,
        )  # fmt: skip
        _check(
            self.first_order_lr > 0, where, "first_order_lr", "a number > 0", self.first_order_lr
        )


@dataclass
class RunConfig:
    """Everything that defines one trained model: data, architecture, optimisation."""

    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def validate(self, where: str) -> None:
        if self.train.maskable == "answer":
            raise ConfigError(
                f"{where}: field 'train.maskable': expected all, entities or no_fillers for a toy "
                "run, got 'answer'"
            )
        objective = self.objective
        if objective == "masked_diffusion" and self.model.causal:
            raise ConfigError(
                f"{where}: field 'train.objective': masked_diffusion needs a bidirectional model "
                "(model.causal=false)"
            )
        if objective in ("mlm", "answer_only") and self.model.causal:
            raise ConfigError(
                f"{where}: field 'train.objective': {objective} needs a bidirectional model "
                "(model.causal=false)"
            )
        if self.train.mask_unit == "entity" and objective not in ("masked_diffusion", "mlm"):
            raise ConfigError(
                f"{where}: field 'train.mask_unit': entity masking needs a masked objective "
                f"(masked_diffusion or mlm), not {objective}"
            )
        if objective in ("next_token", "masked_ar", "prefix_lm") and not self.model.causal:
            raise ConfigError(
                f"{where}: field 'train.objective': {objective} needs an autoregressive model "
                "(model.causal=true)"
            )
        if self.model.causal and not self.model.attends_causally and objective != "prefix_lm":
            raise ConfigError(
                f"{where}: field 'model.attention': an autoregressive model attends both ways "
                "only with the prefix_lm objective (any other would read the tokens it predicts)"
            )
        if objective == "prefix_lm" and self.probe.enabled:
            raise ConfigError(
                f"{where}: field 'probe.enabled': the probes read a query with its answer in "
                "place, which full attention would see; set probe.enabled=false"
            )
        self.model.check_fits(toy_vocab_size(self.data), where)
        seq_len = toy_sequence_length(self.data)
        if seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"{where}: field 'model.max_seq_len': expected >= {seq_len} (the toy sequence "
                f"length), got {self.model.max_seq_len}"
            )
        if self.probe.enabled and self.probe.distances:
            longest = (
                toy_sequence_length(self.data) - self.data.n_filler + max(self.probe.distances)
            )
            if longest > self.model.max_seq_len:
                raise ConfigError(
                    f"{where}: field 'probe.distances': expected filler counts that fit "
                    f"model.max_seq_len={self.model.max_seq_len}, got {self.probe.distances}"
                )

    @property
    def objective(self) -> str:
        """The resolved objective (``auto`` becomes masked_diffusion or next_token)."""
        if self.train.objective != "auto":
            return self.train.objective
        return "next_token" if self.model.causal else "masked_diffusion"


@dataclass
class ToyExperimentConfig:
    """``revcurse reproduce toy``: train MDM and ARM on the toy task for several seeds."""

    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """Shared architecture; model.causal is set per family."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Shared optimisation; train.seed is set per seed."""
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(every=100))
    """Mechanism probes, run as training callbacks."""
    families: list[Family] = field(default_factory=lambda: ["mdm", "arm"])
    """Model families to train: mdm (bidirectional, masked diffusion), arm (causal, next token)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Training seeds; each family is trained once per seed."""
    workers: int = 2
    """Parallel worker processes (one model each); 1 runs everything in this process."""

    def validate(self, where: str) -> None:
        _check(len(self.families) >= 1, where, "families", "a non-empty list", self.families)
        _check(len(self.seeds) >= 1, where, "seeds", "a non-empty list", self.seeds)
        _check(
            len(set(self.seeds)) == len(self.seeds), where, "seeds", "distinct seeds", self.seeds
        )
        _check(self.workers >= 1, where, "workers", "an integer >= 1", self.workers)
        for family in self.families:
            self.run_config(family, self.seeds[0]).validate(where)

    def model_names(self) -> list[str]:
        """Every model trained for each seed: the families."""
        return list(self.families)

    def run_config(self, family: Family, seed: int) -> RunConfig:
        """The config of one model of this experiment."""
        model = dataclasses.replace(self.model, causal=(family == "arm"))
        train = dataclasses.replace(self.train, seed=seed)
        return RunConfig(
            data=dataclasses.replace(self.data),
            model=model,
            train=train,
            probe=dataclasses.replace(self.probe),
        )


@dataclass
class SliceConfig:
    """One slice of a sweep: a grid of its own, chosen to answer one question, so that a sweep
    need not cross every value of every key (a full cross is often more runs than the time)."""

    grid: dict[str, list[Any]] = field(default_factory=dict)
    """Dotted key -> values, added to (and overriding) the sweep's ``grid``."""
    question: str = ""
    """What this slice answers (shown in the report)."""
    seeds: list[int] = field(default_factory=list)
    """Training seeds of this slice; empty: the sweep's ``seeds``."""
    compare: str = ""
    """A key of this slice's grid: each of its values after the first is compared with the first
    by a paired test of reverse accuracy (per seed and fact), within cells that agree on every
    other key. Empty: no comparison."""


@dataclass
class SweepConfig:
    """A grid of runs: every combination of the ``grid`` values and ``variants``, for each seed.

    ``grid`` maps dotted config keys to the values to try (``model.positional: [rope, alibi]``);
    ``variants`` maps names to lists of overrides applied together (``arm-reverse:
    [model.causal=true, data.reverse_augment=true]``). Both are crossed with each other and with
    ``seeds``; each resulting run is identified by the hash of its resolved config.

    With ``slices``, the sweep is the union of the slices instead: each slice crosses the
    ``grid`` updated with its own keys (and the variants) with its seeds. A run that several
    slices contain (the same resolved config) runs once and belongs to all of them.
    """

    name: str = "sweep"
    """Experiment name (the store's experiment column and the report's title)."""
    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(checkpoint_every=500))
    """Shared optimisation; checkpoints every 500 steps so interrupted runs resume."""
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(every=100))
    grid: dict[str, list[Any]] = field(default_factory=lambda: {"model.causal": [False, True]})
    """Dotted key -> values; every combination is run."""
    variants: dict[str, list[str]] = field(default_factory=dict)
    """Name -> overrides applied together; crossed with the grid (empty: no variants)."""
    slices: dict[str, SliceConfig] = field(default_factory=dict)
    """Name -> slice (see the class docstring); empty: the sweep is ``grid`` alone."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Training seeds (train.seed)."""
    workers: int = 2
    """Parallel worker processes (local backend) or Ray tasks in flight."""
    backend: Literal["local", "ray"] = "local"
    """local: worker processes on this machine; ray: tasks on a Ray cluster (RAY_ADDRESS)."""

    def validate(self, where: str) -> None:
        _check(
            is_plain_name(self.name), where, "name",
            "a plain name (letters, digits, '.', '_', '-'; it names a folder under runs/)",
            self.name,
        )  # fmt: skip
        _check(len(self.seeds) >= 1, where, "seeds", "a non-empty list", self.seeds)
        _check(self.workers >= 1, where, "workers", "an integer >= 1", self.workers)
        grids = {"grid": self.grid} | {f"slices.{n}.grid": s.grid for n, s in self.slices.items()}
        for prefix, grid in grids.items():
            for key, values in grid.items():
                _check(isinstance(values, list) and len(values) >= 1, where, f"{prefix}.{key}",
                       "a non-empty list of values", values)  # fmt: skip
        for name, piece in self.slices.items():
            _check(not piece.compare or piece.compare in piece.grid, where,
                   f"slices.{name}.compare", f"one of the slice's keys {list(piece.grid)}",
                   piece.compare)  # fmt: skip
        for name, seeds in [("seeds", self.seeds)] + [
            (f"slices.{n}.seeds", s.seeds) for n, s in self.slices.items()
        ]:
            _check(len(set(seeds)) == len(seeds), where, name, "distinct seeds", seeds)
        self.expand(where)  # every combination must be a valid RunConfig

    def base(self) -> RunConfig:
        return RunConfig(
            data=dataclasses.replace(self.data),
            model=dataclasses.replace(self.model),
            train=dataclasses.replace(self.train),
            probe=dataclasses.replace(self.probe),
        )

    def swept_keys(self) -> list[str]:
        """Every key the grid or a slice varies, in order of first mention."""
        keys = dict.fromkeys(self.grid)
        for s in self.slices.values():
            keys |= dict.fromkeys(s.grid)
        return list(keys)

    def slice_keys(self, name: str) -> list[str]:
        """The keys that tell the cells of slice ``name`` apart: those the sweep's ``grid``
        varies in every slice (the family, say), then the slice's own."""
        own = self.slices[name].grid
        return [k for k, v in self.grid.items() if len(v) > 1 and k not in own] + list(own)

    def expand(self, where: str = "sweep") -> list[tuple[dict[str, Any], RunConfig]]:
        """Every run of the sweep as ``(labels, config)``, one per distinct config. Labels name
        the value of every swept key (:meth:`swept_keys`, read from the run's config, so a run
        shared by slices has one set of labels), the variant, family and seed, and, with slices,
        ``slices``: the names of the slices holding the run."""
        import itertools

        slices = self.slices.items() if self.slices else [(None, SliceConfig())]
        variants = self.variants.items() if self.variants else [(None, [])]
        keys = self.swept_keys()
        runs: dict[str, tuple[dict[str, Any], RunConfig]] = {}
        for slice_name, piece in slices:
            grid = self.grid | piece.grid
            for (variant, extra), values, seed in itertools.product(
                variants, itertools.product(*grid.values()), piece.seeds or self.seeds
            ):
                overrides = [*extra] + [
                    f"{k}={json.dumps(v)}" for k, v in zip(grid, values, strict=True)
                ]
                try:
                    cfg = apply_overrides(self.base(), [*overrides, f"train.seed={seed}"])
                except ConfigError as err:
                    part = f"variant {variant!r}" if variant else "grid"
                    part += f" of slice {slice_name!r}" if slice_name else ""
                    raise ConfigError(f"{where}: in the sweep {part}, {err}") from None
                run_id = config_hash(cfg)
                if run_id not in runs:
                    labels: dict[str, Any] = {"variant": variant} if variant else {}
                    labels |= {k: _dotted(cfg, k) for k in keys}
                    labels |= {"family": cfg.model.family, "seed": seed}
                    if slice_name is not None:
                        labels["slices"] = []
                    runs[run_id] = (labels, cfg)
                if slice_name is not None and slice_name not in runs[run_id][0]["slices"]:
                    runs[run_id][0]["slices"].append(slice_name)
        return list(runs.values())


def _dotted(cfg: Any, key: str) -> Any:
    """The value at a dotted key of a config (``model.n_heads``)."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


# --------------------------------------------------------------------------------------------------
# Natural-language runs: LoRA fine-tuning of Hugging Face models, from-scratch text models
# --------------------------------------------------------------------------------------------------

HFFamily = Literal["llada", "dream", "llama", "qwen2", "llama-a2d"]
MDM_FAMILIES = ("llada", "dream", "llama-a2d")
"""The masked diffusion families (:data:`revcurse.models.hf.FAMILIES` with ``causal`` false)."""
TextDatasetName = Literal["parent-child", "person-description", "trex", "facts"]


@dataclass
class HFModelConfig:
    """The Hugging Face model to fine-tune."""

    family: HFFamily = "llama"
    """llada (native module, MDM), dream (remote code, MDM), llama or qwen2 (ARMs), llama-a2d
    (a Llama checkpoint read as an MDM: attention both ways, a borrowed mask token, Dream's shifted
    logits; the matched pair with llama on the same weights)."""
    path: str = ""
    """Local directory or hub id of the published weights and tokenizer. Empty: a tiny random
    model of the shape below with a word-level tokenizer fitted on the data (offline smoke runs)."""
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    intermediate_size: int = 128
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bfloat16 weights on GPU, float32 on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    adapter: str = ""
    """A LoRA adapter directory (peft format, e.g. a fine-tune run's ``adapter/``) put on the
    model for ``revcurse evaluate``; empty: none. (Fine-tuning starts new adapters.)"""
    chat_template: bool = True
    """Frame every prompt and answer as the checkpoint's chat template does, in training,
    evaluation and probes, ending answers with its end-of-turn token (when its tokenizer has a
    template: the paper's Instruct models do). false: raw ``prompt completion`` text ending in EOS,
    for base models."""

    def validate(self, where: str) -> None:
        _check(self.n_layers >= 1, where, "n_layers", "an integer >= 1", self.n_layers)
        _check(self.n_heads >= 1 and self.hidden_size % self.n_heads == 0, where, "n_heads",
               f"a divisor of hidden_size={self.hidden_size}", self.n_heads)  # fmt: skip
        _check(self.n_kv_heads >= 1 and self.n_heads % self.n_kv_heads == 0, where, "n_kv_heads",
               f"a divisor of n_heads={self.n_heads}", self.n_kv_heads)  # fmt: skip


@dataclass
class LoraSettings:
    """LoRA adapters (peft)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Literal["attention", "attention+mlp"] = "attention+mlp"
    """Which projections of every layer are adapted: the attention's (q, k, v, output) or those
    and the MLP's (gate/up/down; LLaDA ff_proj/up_proj/ff_out). The default adapts both, as dllm's
    LoRA recipes and most published ones do; the paper's text does not name its targets. The
    count is checked after wrapping (4 or 7 per layer)."""
    target_modules: str = ""
    """A regex over module names (full match) that replaces ``targets`` (not count-checked)."""

    def validate(self, where: str) -> None:
        _check(self.r >= 1, where, "r", "an integer >= 1", self.r)
        _check(0.0 <= self.dropout < 1.0, where, "dropout", "a number in [0, 1)", self.dropout)


@dataclass
class TextDataConfig:
    """Which natural-language reversal dataset, and how much of it."""

    dataset: TextDatasetName = "parent-child"
    """A shipped dataset, or ``facts``: your own facts file (the JSONL format of
    :mod:`revcurse.data.facts`; ``revcurse data convert`` writes a shipped one in it)."""
    path: str = ""
    """A file (parent-child CSV, a facts JSONL) or directory (person-description files, T-REx LAMA
    root); empty: the copy shipped with revcurse (T-REx and facts have none: they need a path)."""
    path_sha256: str = ""
    """The SHA-256 of the facts file at ``path``, filled in when a fine-tune starts: a resume
    refuses a file that has changed since (leave empty)."""
    max_train: int = 0
    """Training statements used (0: all). With a cut, a dataset that names its facts (Parent–Child,
    facts files) is evaluated on the queries about the trained facts only."""
    max_eval: int = 64
    """Queries evaluated per test split (0: all)."""
    splits: list[str] = field(default_factory=list)
    """Test splits to evaluate (empty: all of the dataset's)."""

    def validate(self, where: str) -> None:
        _check(self.max_train >= 0, where, "max_train", "an integer >= 0", self.max_train)
        _check(self.max_eval >= 0, where, "max_eval", "an integer >= 0", self.max_eval)
        _check(self.dataset != "trex" or bool(self.path), where, "path",
               "the T-REx LAMA directory (relations.jsonl + one file per relation)",
               self.path)  # fmt: skip
        _check(self.dataset != "facts" or bool(self.path), where, "path",
               "a facts file (JSONL, see revcurse.data.facts)", self.path)  # fmt: skip
        _check(self.path_sha256 == "" or (self.dataset == "facts" and re.fullmatch(
               r"[0-9a-f]{64}", self.path_sha256) is not None), where, "path_sha256",
               "empty, or the SHA-256 of a facts file (64 hex digits)",
               self.path_sha256)  # fmt: skip


@dataclass
class DecodeConfig:
    """How answers are generated and scored (MDM sampler / ARM greedy, likelihood ranks)."""

    gen_length: int = 16
    steps: int | None = None
    """MDM sampling steps (null: gen_length, one token per step; an infilling query fills its
    answer in at most as many steps as the answer has tokens)."""
    block_length: int | None = None
    """MDM semi-autoregressive block length (null: gen_length, one block)."""
    temperature: float = 0.0
    n_distractors: int = 9
    """Answers of other queries the correct one is ranked against by likelihood."""
    n_mc: int = 8
    """MDM likelihood: Monte-Carlo draws per answer (stratified mask counts)."""
    exact_up_to: int = 0
    """MDM likelihood: answers of at most this many tokens are scored by the bound's exact
    expectation instead (every non-empty masked set, 2^L - 1 rows: no noise; at most 12), longer
    ones by ``n_mc`` draws (0: draws for every answer)."""
    batch_size: int = 0
    """Queries generated at a time (0: a whole split at once). Memory grows with it, not with the
    split; at temperature 0 the answers do not depend on it."""
    cfg_scale: float = 0.0
    """MDM: LLaDA's unsupervised classifier-free guidance scale (0: off)."""
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """MDM: which masked positions each step commits (LLaDA's two strategies)."""
    confidence_dtype: Literal["float64", "model"] = "float64"
    """MDM: the confidence softmax in float64, or in the model's own dtype as LLaDA's current code
    does (the LLaDA recipes use ``model``; in bf16 ties break differently)."""
    suppress_eos: bool = False
    """MDM: never predict EOS (LLaDA's ``logits_eos_inf``)."""
    suppress_eos_confidence: bool = False
    """MDM: predictions of EOS or of the end-of-turn token get confidence 0, so they are
    committed last (LLaDA's ``confidence_eos_eot_inf``, used by its reverse evaluation)."""
    sampler: Literal["llada", "dream"] = "llada"
    """MDM: LLaDA's sampler (blocks, a fixed number of tokens per step; the options above) or
    Dream's own (its ``diffusion_generate``: timesteps from 1 to ``timestep_eps``, ``alg``)."""
    alg: Literal["origin", "maskgit_plus", "topk_margin", "entropy"] = "entropy"
    """Dream's sampler: which masked positions each step commits (Dream's published default:
    entropy)."""
    alg_temp: float = 0.0
    """Dream's sampler: > 0 draws the committed positions from softmax(confidence / alg_temp)."""
    top_p: float = 1.0
    """Dream's sampler, temperature > 0: nucleus filtering (1: off)."""
    top_k: int = 0
    """Dream's sampler, temperature > 0: top-k filtering (0: off)."""
    timestep_eps: float = 1e-3
    """Dream's sampler: the last timestep (its ``eps``)."""

    def validate(self, where: str) -> None:
        _check(self.gen_length >= 1, where, "gen_length", "an integer >= 1", self.gen_length)
        _check(self.temperature >= 0, where, "temperature", "a number >= 0", self.temperature)
        _check(self.n_mc >= 1, where, "n_mc", "an integer >= 1", self.n_mc)
        _check(0 <= self.exact_up_to <= EXACT_BOUND_MAX_LENGTH, where, "exact_up_to",
               f"an integer in [0, {EXACT_BOUND_MAX_LENGTH}]", self.exact_up_to)  # fmt: skip
        _check(self.batch_size >= 0, where, "batch_size", "an integer >= 0 (0: all)",
               self.batch_size)  # fmt: skip
        _check(self.cfg_scale >= 0, where, "cfg_scale", "a number >= 0", self.cfg_scale)
        _check(0 < self.top_p <= 1, where, "top_p", "a number in (0, 1]", self.top_p)
        _check(self.top_k >= 0, where, "top_k", "an integer >= 0 (0: off)", self.top_k)
        _check(0 < self.timestep_eps < 1, where, "timestep_eps", "a number in (0, 1)",
               self.timestep_eps)  # fmt: skip


@dataclass
class TextProbeConfig:
    """Attention coupling and gradient alignment on (forward, reverse) query pairs."""

    enabled: bool = True
    every: int = 0
    """Probe every this many steps during training (0: only before and after)."""
    n_facts: int = 16
    layers: list[int] = field(default_factory=list)
    """Layers whose attention is reported (empty: all)."""

    def validate(self, where: str) -> None:
        _check(self.every >= 0, where, "every", "an integer >= 0", self.every)
        _check(self.n_facts >= 3, where, "n_facts", "an integer >= 3 (a correlation)",
               self.n_facts)  # fmt: skip


@dataclass
class FinetuneConfig:
    """``revcurse finetune``: LoRA fine-tuning of a Hugging Face MDM or ARM on reversal data,
    evaluated (and probed) before and after."""

    model: HFModelConfig = field(default_factory=HFModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: TextDataConfig = field(default_factory=TextDataConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=100, batch_size=8, lr=1e-4, beta2=0.999, warmup_steps=0, schedule="constant",
            log_every=10, eval_every=0,
        )
    )  # fmt: skip
    eval: DecodeConfig = field(default_factory=DecodeConfig)
    probe: TextProbeConfig = field(default_factory=TextProbeConfig)

    def validate(self, where: str) -> None:
        self.train.check_text(where, entity_masking=True)
        _check(self.train.mask_unit == "token" or self.model.family in MDM_FAMILIES, where,
               "train.mask_unit", "token for an autoregressive family (its next-token loss "
               "masks nothing)", self.train.mask_unit)  # fmt: skip


@dataclass
class TextRunConfig:
    """One model trained from scratch on natural-language facts (a run of ``reproduce
    person-description``, ``parent-child`` or ``facts``)."""

    dataset: TextTask = "person-description"
    """person-description (Berglund's Experiment 1 statements), parent-child (the celebrity
    pairs laid out for a from-scratch model: :func:`revcurse.data.parent_child.from_scratch`) or
    facts (your own facts file, ``path``, laid out by its groups and trained directions:
    :func:`revcurse.experiments.from_scratch.facts_task`)."""
    path: str = ""
    """dataset facts: the facts file (the format of :mod:`revcurse.data.facts`); empty otherwise."""
    path_sha256: str = ""
    """dataset facts: the SHA-256 of the facts file's bytes. Filled in when an experiment starts,
    so that its resolved config, and every run id, names the very facts trained on; a file that
    no longer matches it is refused (a resumed or re-evaluated run reads the facts it trained on,
    or nothing)."""

    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(d_model=128, n_layers=2, n_heads=4, max_seq_len=40)
    )
    """Architecture; model.causal picks MDM (false) or ARM (true). The MDM's statements are
    padded with EOS to max_seq_len, which must also hold the longest query + its answer: 40 for
    Person-Description (the experiment refuses less). It was published first with 52, when 49%
    of the MDM's tokens were EOS (benchmarks/text_padding.py); that publication is kept as
    docs/results/person-description-rows52."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=12000, batch_size=64, lr=3e-3, beta2=0.999, warmup_steps=100,
            schedule="cosine", log_every=50, eval_every=0, checkpoint_every=500,
        )
    )  # fmt: skip
    """12000 steps: at 3000 the MDM had memorised the p2d statements on no seed (forward prefix
    0.13-0.68); a 9000-step pilot reached 0.97 on one seed, so 12000 leaves a margin. Eager and
    float32 by default; ``train.compile=true`` (the same run up to float rounding; a resumed
    compiled run ends as the uninterrupted one bit for bit) makes the MDM's step 0.85x the eager
    one, and ``train.precision=bf16`` (CPU bf16 autocast) 0.4x the float32 compiled one on a CPU
    with bf16 instructions (benchmarks/text_padding.py). The published Person-Description results
    are trained with both (their command says so); the float32 compiled run before them is kept
    as docs/results/person-description-fp32."""
    eval: DecodeConfig = field(default_factory=lambda: DecodeConfig(n_distractors=9, n_mc=16))
    """Decoding and likelihoods; gen_length is set per split (its longest answer + 2 tokens)."""
    probe: TextProbeConfig = field(default_factory=lambda: TextProbeConfig(n_facts=60, every=2000))
    """60 facts (20 per distance third), probed every 2000 steps."""
    n_people: int = 10
    """People per group whose statements are trained on. Person–Description (groups p2d, d2p,
    both): 10 gives 1200 of the 3600 statements; 30 is the whole file (needs several times the
    steps). Parent–Child (groups forward-only, both directions): child–parent pairs per group.
    Facts: at most this many facts of each group, the first in file order."""
    max_eval: int = 60
    """Queries evaluated per split (spread over the people or facts; 0: all)."""

    def validate(self, where: str) -> None:
        top = {"person-description": 30, "parent-child": 153}.get(self.dataset)
        if top is None:
            _check(self.n_people >= 1, where, "n_people", "an integer >= 1", self.n_people)
        else:
            _check(1 <= self.n_people <= top, where, "n_people", f"an integer in 1..{top} for "
                   f"{self.dataset}", self.n_people)  # fmt: skip
        _check(self.max_eval >= 0, where, "max_eval", "an integer >= 0", self.max_eval)
        facts = self.dataset == "facts"
        _check(facts == bool(self.path), where, "path",
               "a facts file for dataset facts" if facts else "empty (a path is read only for "
               "dataset facts)", self.path)  # fmt: skip
        _check(self.path_sha256 == "" or (facts and re.fullmatch(r"[0-9a-f]{64}",
               self.path_sha256) is not None), where, "path_sha256",
               "empty or the 64 hex digits of a facts file's SHA-256 (filled in by revcurse)",
               self.path_sha256)  # fmt: skip
        self.train.check_text(where, entity_masking=True, autoregressive=self.model.causal)
        # the objective x attention cells: a masked model attending to the left only, or an
        # autoregressive one reading each prefix both ways (the prefix_lm objective)
        allowed = {"auto": True, "causal": not self.model.causal,
                   "full": self.model.causal and self.train.objective == "prefix_lm"}  # fmt: skip
        _check(allowed[self.model.attention], where, "model.attention",
               "auto; causal for an MDM (model.causal=false); full for an ARM trained with "
               "train.objective=prefix_lm", self.model.attention)  # fmt: skip
        _check(not (self.train.objective == "prefix_lm" and self.probe.enabled), where,
               "probe.enabled", "false with prefix_lm (the probes read a query with its answer "
               "in place, which full attention would see)", self.probe.enabled)  # fmt: skip
        _check(self.train.mask_unit == "token" or not self.model.causal, where,
               "train.mask_unit", "token for an ARM (its next-token loss masks nothing)",
               self.train.mask_unit)  # fmt: skip

    @property
    def family(self) -> str:
        return "arm" if self.model.causal else "mdm"


@dataclass
class PersonDescriptionConfig:
    """``revcurse reproduce person-description``: from-scratch MDMs and ARMs on the
    Person–Description training file, several seeds, evaluated in training and held-out templates."""

    run: TextRunConfig = field(default_factory=TextRunConfig)
    """Shared settings; run.model.causal and run.train.seed are set per model."""
    families: list[Family] = field(default_factory=lambda: ["mdm", "arm"])
    variants: dict[str, list[str]] = field(
        default_factory=lambda: {"mdm-answer": ["train.maskable=answer"]}
    )
    """Further models, each trained for every seed and compared (paired, query by query) with the
    plain MDM: name -> dotted overrides of ``run``, applied to the MDM's settings
    (``model.causal=true`` makes one an ARM). By default the masking choice: an MDM whose loss
    masks only the answer of each statement (the prompt, a name or a description, stays visible)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    workers: int = 2
    """Parallel worker processes (one model each)."""

    def validate(self, where: str) -> None:
        _check(len(self.families) >= 1, where, "families", "a non-empty list", self.families)
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), where, "seeds",
               "a non-empty list of distinct seeds", self.seeds)  # fmt: skip
        _check(self.workers >= 1, where, "workers", "an integer >= 1", self.workers)
        for name in self.variants:
            _check(name not in ("mdm", "arm") and re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name)
                   is not None, where, f"variants.{name}",
                   "a name other than mdm and arm, of lower-case letters, digits, - _ .",
                   name)  # fmt: skip
            try:
                self.run_config(name, self.seeds[0])
            except ConfigError as err:
                raise ConfigError(f"{where}: field 'variants.{name}': {err}") from None
        _check(not self.variants or "mdm" in self.families, where, "families",
               "to hold mdm when variants are compared with it", self.families)  # fmt: skip

    def model_names(self) -> list[str]:
        """Every model trained for each seed: the families, then the variants."""
        return [*self.families, *self.variants]

    def run_config(self, name: str, seed: int) -> TextRunConfig:
        """The settings of model ``name`` (a family or a variant) with ``seed``."""
        run = dataclasses.replace(
            self.run,
            model=dataclasses.replace(self.run.model, causal=(name == "arm")),
            train=dataclasses.replace(self.run.train, seed=seed),
        )
        return apply_overrides(run, self.variants.get(name, []))


def pair_run(dataset: TextTask, max_seq_len: int) -> TextRunConfig:
    """The from-scratch settings for two-entity facts (Parent–Child's, and your facts'): 2 layers,
    d_model 128, 2000 steps of batch 64, 50 facts per group, 50 queries per split, probes on 50
    facts every 500 steps."""
    return TextRunConfig(
        dataset=dataset,
        model=ModelConfig(d_model=128, n_layers=2, n_heads=4, max_seq_len=max_seq_len),
        train=TrainConfig(
            steps=2000, batch_size=64, lr=3e-3, beta2=0.999, warmup_steps=100,
            schedule="cosine", log_every=50, eval_every=0, checkpoint_every=500,
        ),
        eval=DecodeConfig(n_distractors=9, n_mc=16),
        probe=TextProbeConfig(n_facts=50, every=500),
        n_people=50,
        max_eval=50,
    )  # fmt: skip


@dataclass
class ParentChildConfig(PersonDescriptionConfig):
    """``revcurse reproduce parent-child``: from-scratch MDMs (RoPE, sinusoidal and learned
    absolute positions, none) and a RoPE ARM on Parent–Child pairs, half trained forward only and
    half in both directions; does MDM reversal need RoPE?"""

    run: TextRunConfig = field(default_factory=lambda: pair_run("parent-child", max_seq_len=20))
    """Shared settings: 50 pairs per group (150 training statements), 2000 steps (a one-seed
    pilot fitted forward and mirror at 1.00); run.model.causal and run.train.seed are set per
    model."""
    variants: dict[str, list[str]] = field(
        default_factory=lambda: {
            "mdm-sinusoidal": ["model.positional=sinusoidal"],
            "mdm-learned": ["model.positional=learned"],
            "mdm-none": ["model.positional=none"],
        }
    )
    """The MDM with absolute (sinusoidal, learned) and no positions, each compared with the RoPE
    MDM."""


@dataclass
class FactsExperimentConfig(PersonDescriptionConfig):
    """``revcurse reproduce facts``: from-scratch MDMs and ARMs on your own facts file
    (``run.path``), laid out by its groups and trained directions; the fit-first paired tests of
    the other from-scratch experiments on every group's untrained direction."""

    run: TextRunConfig = field(default_factory=lambda: pair_run("facts", max_seq_len=32))
    """Shared settings, Parent–Child's: 50 facts per group, 2000 steps; run.path names the
    facts file (required) and run.model.max_seq_len must hold its longest statement (refused with
    the length needed otherwise)."""
    variants: dict[str, list[str]] = field(default_factory=dict)
    """Further models compared with the MDM (as in ``reproduce person-description``); none by
    default."""


def matched_finetune() -> FinetuneConfig:
    """The matched pair's shared fine-tune settings, sized for a 2-core CPU: Parent–Child cut to
    its first 64 training statements (the queries about those facts only), LoRA rank 16 on
    attention and MLP as the recipes, 200 steps of batch 8 (25 epochs) at lr 1e-4 after 20
    warm-up steps, evaluation of 24 queries per split (8 tokens generated; 10 candidates, the
    MDM's ranked with 8 draws: on a CPU the MDM's likelihoods are most of the cost), probes
    off. ``model.path`` is left for the user."""
    return FinetuneConfig(
        model=HFModelConfig(family="llama", path="", chat_template=True),
        lora=LoraSettings(r=16, alpha=32.0),
        data=TextDataConfig(dataset="parent-child", max_train=64, max_eval=24),
        train=TrainConfig(
            steps=200, batch_size=8, lr=1e-4, beta2=0.999, warmup_steps=20, schedule="cosine",
            log_every=10, eval_every=0, checkpoint_every=50,
        ),
        eval=DecodeConfig(gen_length=8, n_distractors=9, n_mc=8, batch_size=32),
        probe=TextProbeConfig(enabled=False),
    )  # fmt: skip


@dataclass
class MatchedPairConfig:
    """``revcurse reproduce matched-pair``: one Llama-architecture checkpoint fine-tuned with LoRA
    as an ARM and as an MDM (``llama-a2d``: the same weights read both ways), same facts, steps
    and evaluation, per seed (:mod:`revcurse.experiments.matched_pair`)."""

    finetune: FinetuneConfig = field(default_factory=matched_finetune)
    """The shared settings; ``finetune.model.family`` and ``finetune.train.seed`` are set per run,
    ``finetune.model.path`` is required (``revcurse models get smollm2-135m-instruct``)."""
    families: list[str] = field(default_factory=lambda: ["llama", "llama-a2d"])
    """The ARM, then the MDM read from the same weights (the tests are second - first)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def validate(self, where: str) -> None:
        _check(self.families == ["llama", "llama-a2d"], where, "families",
               "['llama', 'llama-a2d'] (the ARM, then the MDM of the same weights)",
               self.families)  # fmt: skip
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), where, "seeds",
               "distinct seeds", self.seeds)  # fmt: skip


def entity_pool(data: ToyDataConfig) -> int:
    """Tokens per side from which the toy's entities are spelled: ``n_pairs`` for one-token
    entities; ``n_pairs x entity_tokens`` with unique spelling; else ``data.entity_pool`` or, by
    default, the smallest pool whose sequences number at least twice the entities (so they are
    drawn without replacement from many, and tokens are shared)."""
    n_pairs, length = data.n_pairs, data.entity_tokens
    if length == 1:
        return n_pairs
    if data.entity_spelling == "unique":
        return n_pairs * length
    if data.entity_pool:
        return data.entity_pool
    pool = 2
    while pool**length < 2 * n_pairs:
        pool += 1
    return pool


def toy_vocab_size(data: ToyDataConfig) -> int:
    """The toy vocabulary's size: 4 specials, the relation tokens, the two entity pools, every
    filler."""
    pool = entity_pool(data)
    return 4 + data.n_templates + 2 * pool + data.filler_vocab


def toy_sequence_length(data: ToyDataConfig) -> int:
    """Length of a toy training statement: [BOS] a REL f*n B [EOS]."""
    return int(data.bos) + 2 * data.entity_tokens + 1 + data.n_filler + int(data.eos)


# --------------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass, YAML, overrides
# --------------------------------------------------------------------------------------------------


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
"""A name that may become part of a file name (a sweep's folder, a facts group's split files):
letters, digits and ``_ . -``, not starting with a dot or a separator, at most 100 characters."""


def is_plain_name(value: str) -> bool:
    """Whether ``value`` is a :data:`PLAIN_NAME` (and holds no ``..``): no path can hide in it."""
    return PLAIN_NAME.fullmatch(value) is not None and ".." not in value


def _check(ok: bool, where: str, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: field '{name}': expected {expected}, got {got!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain-data (YAML/JSON-safe) copy of a config dataclass."""
    return dataclasses.asdict(cfg)


def config_hash(cfg: Any, length: int = 12) -> str:
    """A stable short hash of a config's resolved values (identifies a run)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_type_name(get_args(tp)[1])}"
    if tp is Any:
        return "a value"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it converted (int -> float, ...)."""

    def fail(expected: str | None = None) -> typing.NoReturn:
        expected = expected or _type_name(tp)
        raise ConfigError(f"{where}: field '{name}': expected {expected}, got {value!r}")

    origin = get_origin(tp)
    if tp is Any:  # a YAML scalar or list, checked later by whoever uses it (e.g. sweep grids)
        if not isinstance(value, str | int | float | bool | list) or value is None:
            fail()
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return _from_dict(tp, value, where, prefix=name + ".")
    if origin is Literal:
        if value not in get_args(tp) or isinstance(value, bool):
            options = [str(a) for a in get_args(tp)]
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f"; did you mean '{close[0]}'?" if close and isinstance(value, str) else ""
            raise ConfigError(f"{where}: field '{name}': expected {_type_name(tp)}, got "
                              f"{value!r}{hint}")  # fmt: skip
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            fail()
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{name}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            fail()
        _, item_tp = get_args(tp)
        return {k: _coerce(v, item_tp, f"{name}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        # Seeds, sizes and steps all reach torch, which takes 64-bit integers.
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        if not -(2**63) <= value < 2**63:
            fail("an integer that fits in 64 bits")
        return value
    if tp is float:
        # No setting is meaningful at inf or NaN (YAML's .inf, .nan), and they pass `> 0` checks.
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            fail()
        try:
            number = float(value)  # YAML 1.1 reads "3e-3" as a string
        except (ValueError, OverflowError):
            fail()
        if not math.isfinite(number):
            fail("a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {name}")  # a bug, not user input


def _unknown_key(key: str, valid: list[str], prefix: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{where}: unknown key '{prefix}{key}'{hint}")


def _from_dict(cls: type[T], data: dict[str, Any], where: str, prefix: str = "") -> T:
    """``cls`` from ``data``; a section given in part keeps the defaults of the config that holds
    it (a fine-tuning config's ``train`` keeps the fine-tuning defaults, not TrainConfig's)."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    holder = None  # cls() with its defaults, built once if a section is given
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(str(key), names, prefix, where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            holder = cls() if holder is None else holder
            value = to_dict(getattr(holder, key)) | value  # the holder's default for the section
        kwargs[key] = _coerce(value, tp, prefix + key, where)
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build and validate a config of type ``cls`` from plain data (missing keys keep defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping of config fields, got {type(data).__name__}"
        )
    cfg = _from_dict(cls, data, where)
    validate(cfg, where)
    return cfg


def validate(cfg: Any, where: str = "config") -> None:
    """Run ``validate`` of every dataclass in the tree, naming fields with their dotted path."""

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            child = getattr(node, f.name)
            if dataclasses.is_dataclass(child):
                walk(child, f"{prefix}{f.name}.")
        check = getattr(node, "validate", None)
        if check is None:
            return
        try:
            check(where)
        except ConfigError as err:
            # Nested configs name their own fields ('d_model'); report the dotted path instead.
            msg = str(err)
            if prefix and "field '" in msg:
                msg = msg.replace("field '", f"field '{prefix}", 1)
            raise ConfigError(msg) from None

    walk(cfg, "")


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without anchors and aliases: configs never need them, and a few hundred
    bytes of nested aliases (an alias bomb) expand to gigabytes."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in revcurse files", mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        # a repeated key is refused rather than taken last-wins: one of the two values would be
        # dropped without a word
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is repeated (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


MAX_YAML_DEPTH = 64
"""How deeply a revcurse YAML file may nest (configs nest a few levels; a file thousands of
levels deep would exhaust Python's recursion instead of getting a one-line error)."""


def safe_yaml(text: str) -> Any:
    """Parse YAML text the way every revcurse read does: safe types only, no aliases, no repeated
    keys, at most :data:`MAX_YAML_DEPTH` levels."""
    if max_nesting(text, MAX_YAML_DEPTH) > MAX_YAML_DEPTH:
        raise yaml.YAMLError(f"nested more than {MAX_YAML_DEPTH} levels deep")
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def max_nesting(text: str, limit: int) -> int:
    """The deepest nesting of YAML's flow brackets or block indentation in ``text``, counted from
    the token stream without building anything, and no further than one level past ``limit``
    (so a hostile file costs little)."""
    depth = deepest = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(
                token,
                (
                    yaml.FlowMappingStartToken,
                    yaml.FlowSequenceStartToken,
                    yaml.BlockMappingStartToken,
                    yaml.BlockSequenceStartToken,
                ),
            ):
                depth += 1
                deepest = max(deepest, depth)
                if deepest > limit:
                    break
            elif isinstance(
                token, (yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken, yaml.BlockEndToken)
            ):
                depth -= 1
    except yaml.YAMLError:
        return deepest  # the parser that follows reports the syntax error with its line
    return deepest


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a YAML config file (:func:`safe_yaml`) into a validated ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = safe_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err) or "invalid YAML"
        raise ConfigError(f"{path}{line}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: expected a UTF-8 YAML file") from None
    return from_dict(cls, data, where=str(path))


def dump_yaml(cfg: Any) -> str:
    """The YAML text of a config: a plain dump of its dataclass tree."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.d_model=128"`` -> (["model", "d_model"], 128); the value is a YAML scalar/list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. model.d_model=128")
    try:
        value = safe_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(cfg: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Return a copy of ``cfg`` with dotted overrides applied and the whole tree re-validated."""
    data = to_dict(cfg)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for depth, part in enumerate(path):
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(path[:depth])}' is not a section")
            if part not in node:
                prefix = "".join(p + "." for p in path[:depth])
                raise _unknown_key(part, list(node), prefix, f"override {text!r}")
            if depth == len(path) - 1:
                if isinstance(node[part], dict) and not isinstance(value, dict):
                    raise ConfigError(
                        f"override {text!r}: '{'.'.join(path)}' is a section; set one of its "
                        f"fields, e.g. {'.'.join(path)}.{next(iter(node[part]))}=..."
                    )
                node[part] = value
            else:
                node = node[part]
    return from_dict(type(cfg), data, where="override")
