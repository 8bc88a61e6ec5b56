"""Masked diffusion and next-token losses against float64 loops and the closed-form masking rate."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from revcurse.data.tokenize import TextBatch
from revcurse.objectives import (
    _weighted_masked_ce,
    mask_tokens,
    next_token_loss,
    sample_mask_ratio,
    training_loss,
)


def text_batch(objective: str, ids: torch.Tensor, answers: torch.Tensor, pad_id: int = 0):
    """``ids`` as the loop's batch: every real token learned, or the answers for answer_only."""
    real = ids != pad_id
    learned = answers if objective == "answer_only" else real
    return TextBatch(ids, torch.zeros_like(real), learned, real)


def test_mask_ratio_is_uniform_on_eps_one():
    g = torch.Generator().manual_seed(0)
    t = sample_mask_ratio(200_000, 0.1, g)
    assert t.min() >= 0.1 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.55, abs=0.005)  # mean of U(0.1, 1)


@pytest.mark.parametrize("t_value", [0.05, 0.3, 0.5, 0.9])
def test_masking_rate_matches_t(t_value):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 50, (400, 250), generator=g)
    t = torch.full((400,), t_value)
    noisy, masked = mask_tokens(tokens, t, mask_id=1, generator=g)
    n = tokens.numel()
    rate = masked.double().mean().item()
    # Binomial(n, t): 5 standard deviations.
    assert abs(rate - t_value) < 5 * math.sqrt(t_value * (1 - t_value) / n)
    assert torch.equal(noisy[masked], torch.ones_like(noisy[masked]))
    assert torch.equal(noisy[~masked], tokens[~masked])


def test_masking_rate_follows_each_sequences_own_t():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(4, 50, (2, 50_000), generator=g)
    _, masked = mask_tokens(tokens, torch.tensor([0.1, 0.8]), 1, g)
    assert masked[0].double().mean().item() == pytest.approx(0.1, abs=0.01)
    assert masked[1].double().mean().item() == pytest.approx(0.8, abs=0.01)


def test_unmaskable_positions_are_never_masked():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(4, 50, (8, 20), generator=g)
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, :5] = False
    _, masked = mask_tokens(tokens, torch.ones(8), 1, g, maskable)
    assert not masked[:, :5].any() and masked[:, 5:].all()


def test_masked_diffusion_loss_matches_float64_loop():
    g = torch.Generator().manual_seed(4)
    B, L, V = 3, 7, 11
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (B, L), generator=g)
    masked = torch.rand(B, L, generator=g) < 0.5
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    n = torch.tensor([7, 6, 5])
    expected = 0.0
    for b in range(B):
        total = 0.0
        for i in range(L):
            if masked[b, i]:
                logp = logits[b, i] - torch.logsumexp(logits[b, i], dim=0)
                total += -logp[targets[b, i]].item()
        expected += total / (t[b].item() * n[b].item())
    expected /= B
    got = _weighted_masked_ce(logits[masked], targets, masked, t, n)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_loss_weight_is_one_over_t():
    """Same masked tokens, half the mask ratio -> twice the loss (the 1/t weight)."""
    logits = torch.randn(1, 4, 6, dtype=torch.float64)
    targets = torch.randint(0, 6, (1, 4))
    masked = torch.tensor([[True, False, True, False]])
    n = torch.tensor([4])
    hi = _weighted_masked_ce(logits[masked], targets, masked, torch.tensor([0.8]), n)
    lo = _weighted_masked_ce(logits[masked], targets, masked, torch.tensor([0.4]), n)
    assert lo.item() == pytest.approx(2 * hi.item(), rel=1e-12)


def test_next_token_loss_matches_loop_and_ignores_padding():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 5, 9, generator=g, dtype=torch.float64)
    tokens = torch.tensor([[4, 5, 6, 7, 8], [4, 5, 6, 0, 0]])
    terms = [
        F.cross_entropy(logits[b, i][None], tokens[b, i + 1][None]).item()
        for b in range(2)
        for i in range(4)
        if tokens[b, i + 1] != 0
    ]

    def model(ids, attention_mask=None):  # fixed logits; no ``where``: indexed by the loss
        return logits

    real = tokens != 0
    assert next_token_loss(model, tokens, real, real).item() == pytest.approx(
        sum(terms) / len(terms), rel=1e-10
    )


@pytest.mark.parametrize("objective", ["masked_diffusion", "next_token", "mlm", "answer_only"])
def test_unembedding_only_the_read_positions_changes_nothing(objective):
    """TransformerLM unembeds only the positions a loss reads (``where``); the same model behind a
    plain ``ids -> logits`` callable gets its full logits indexed. Same draws, same loss and
    gradients."""
    from revcurse.config import ModelConfig
    from revcurse.models.transformer import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(causal=objective == "next_token"), 20).double()
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(3, 20, (6, 5), generator=g)
    batch[4:, 3:] = 0  # padding (pad_id 0)
    answers = torch.zeros_like(batch, dtype=torch.bool)
    answers[:, 2] = True

    def loss_and_grads(m):
        model.zero_grad()
        gen = torch.Generator().manual_seed(2)
        loss = training_loss(objective, m, text_batch(objective, batch, answers), 1, gen)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    def full(ids, attention_mask=None):
        return model(ids, attention_mask=attention_mask)

    selected, full_logits = loss_and_grads(model), loss_and_grads(full)
    assert selected[0].item() == pytest.approx(full_logits[0].item(), rel=1e-12)
    for a, b in zip(selected[1], full_logits[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class RecordingTable:
    """Fixed float64 logits that depend on the input ids (so a wrongly masked input changes the
    loss), recording every input it is given."""

    def __init__(self, vocab: int, length: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.table = torch.randn(vocab, length, vocab, generator=g, dtype=torch.float64)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, ids, attention_mask=None):
        self.inputs.append(ids.clone())
        return self.table[ids, torch.arange(ids.shape[1])]  # [B, L, V]


@pytest.mark.parametrize("objective", ["masked_diffusion", "mlm"])
@pytest.mark.parametrize("choice", ["all", "entities", "no_fillers"])
def test_step_losses_match_a_float64_loop_on_the_input_they_built(objective, choice):
    """The loss of one step, recomputed by hand from the noisy input the objective built: only
    the chosen roles are ever masked, the mask ratio is the objective's (t ~ U(eps, 1) drawn first
    from the generator, or the fixed MLM ratio), and the normaliser is the maskable count."""
    from revcurse.config import ToyDataConfig
    from revcurse.data.tokenize import MASKABLE_ROLES, Vocab, training_batch
    from revcurse.data.toy import build_toy

    dataset = build_toy(ToyDataConfig(n_pairs=40, n_filler=2, filler_vocab=3, bos=True, eos=True))
    vocab = Vocab.from_dataset(dataset)
    data = training_batch(dataset, vocab, objective, choice)
    batch, maskable = data.ids, data.answer_mask  # [B, L]
    allowed = torch.tensor(
        [[r in MASKABLE_ROLES[choice] for r in roles] for roles in dataset.roles]
    )
    assert torch.equal(maskable, allowed)
    model = RecordingTable(len(vocab), batch.shape[1])
    ratio, eps = 0.4, 0.05
    got = training_loss(objective, model, data, vocab.mask_id, torch.Generator().manual_seed(3),
                        eps=eps, mlm_ratio=ratio)  # fmt: skip
    (noisy,) = model.inputs
    masked = noisy == vocab.mask_id
    assert not (masked & ~maskable).any() and masked.any()
    if objective == "mlm":
        t = torch.full((batch.shape[0],), ratio, dtype=torch.float64)
    else:
        t = sample_mask_ratio(batch.shape[0], eps, torch.Generator().manual_seed(3)).double()
    expected = 0.0
    for b in range(batch.shape[0]):
        logits = model.table[noisy[b], torch.arange(batch.shape[1])]  # [L, V]
        total = sum(
            -torch.log_softmax(logits[i], 0)[batch[b, i]].item()
            for i in range(batch.shape[1]) if masked[b, i]
        )  # fmt: skip
        expected += total / (t[b].item() * maskable[b].sum().item())
    # rel 1e-6: the objective forms t * n in float32 (t is drawn in float32)
    assert got.item() == pytest.approx(expected / batch.shape[0], rel=1e-6)


def test_answer_only_masks_exactly_the_answer_and_scores_it():
    from revcurse.config import ToyDataConfig
    from revcurse.data.tokenize import Vocab, span_mask, training_batch
    from revcurse.data.toy import build_toy

    dataset = build_toy(ToyDataConfig(n_pairs=12, n_filler=1))
    vocab = Vocab.from_dataset(dataset)
    data = training_batch(dataset, vocab, "answer_only", "all")
    batch = data.ids
    answers = span_mask(dataset.answer_spans, tuple(batch.shape))
    assert torch.equal(data.answer_mask, answers)
    model = RecordingTable(len(vocab), batch.shape[1])
    got = training_loss("answer_only", model, data, vocab.mask_id, torch.Generator().manual_seed(0))
    (noisy,) = model.inputs
    assert torch.equal(noisy == vocab.mask_id, answers)  # the answer entity, nothing else
    terms = [
        -torch.log_softmax(model.table[noisy[b], torch.arange(batch.shape[1])][i], 0)[
            batch[b, i]
        ].item()
        for b in range(batch.shape[0])
        for i in range(batch.shape[1])
        if answers[b, i]
    ]
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_cart_weights_against_a_float64_loop():
    from revcurse.objectives import cart_weights

    gen = torch.Generator().manual_seed(0)
    masked = torch.rand(3, 9, generator=gen) < 0.5
    real = torch.ones(3, 9, dtype=torch.bool)
    real[2, 7:] = False  # padding is no context
    clean = real & ~masked
    p = 0.3
    expected = torch.zeros(3, 9, dtype=torch.float64)
    for b in range(3):
        for i in range(9):
            if masked[b, i]:
                expected[b, i] = sum(0.5 * p * (1 - p) ** (abs(i - j) - 1)
                                     for j in range(9) if clean[b, j] and j != i)  # fmt: skip
    torch.testing.assert_close(cart_weights(masked, clean, p).double(), expected,
                               rtol=1e-6, atol=1e-7)  # fmt: skip
    # The neighbour of a visible token weighs p/2; each further step multiplies by 1 - p.
    one = torch.tensor([[False, True, True, True]])
    torch.testing.assert_close(cart_weights(one, ~one, p)[0],
                               torch.tensor([0.0, 0.15, 0.105, 0.0735]))  # fmt: skip


def test_cart_weighting_replaces_one_over_t_in_the_loss():
    from revcurse.objectives import _weighted_masked_ce, cart_weights

    gen = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 7, (2, 5), generator=gen)
    masked = torch.tensor([[True, False, True, True, False], [False, True, False, False, True]])
    logits = torch.randn(int(masked.sum()), 7, generator=gen)
    n = torch.tensor([5, 5])
    w = cart_weights(masked, ~masked)
    got = _weighted_masked_ce(logits, targets, masked, torch.tensor([0.5, 0.5]), n, w)
    ce = torch.nn.functional.cross_entropy(logits, targets[masked], reduction="none")
    per = torch.zeros(2, 5).masked_scatter(masked, ce)
    torch.testing.assert_close(got, ((per * w).sum(1) / 5).mean())


def test_every_run_kind_passes_its_loss_weighting():
    from conftest import tiny_run_config

    from revcurse.config import apply_overrides
    from revcurse.data.tokenize import training_batch
    from revcurse.experiments.toy_run import build_dataset, build_model, loss_of

    cfg = tiny_run_config()
    dataset, vocab = build_dataset(cfg)
    data = training_batch(dataset, vocab, "masked_diffusion", "all")
    model = build_model(cfg, len(vocab))
    values = {}
    for weighting in ("inverse_t", "cart"):
        run = apply_overrides(cfg, [f"train.loss_weighting={weighting}"])
        with torch.no_grad():
            loss = loss_of(run, vocab)(model, data, torch.Generator().manual_seed(0))
        values[weighting] = loss.item()
    assert values["inverse_t"] != values["cart"]


def test_cart_loss_on_a_padded_batch_counts_only_real_visible_tokens_as_context():
    """The whole CART loss on a right-padded batch against a float64 loop: replay the mask draw,
    then for every masked token weigh its cross-entropy by the visible *real* tokens around it
    (padding is no context) and divide by the sequence's maskable count. Sequences of 8, 5 and 3
    real tokens in a width of 8, so padding sits next to masked tokens and counting it as
    context changes the loss."""
    from revcurse.objectives import masked_diffusion_loss

    B, L, V, pad, mask_id, p = 3, 8, 9, 0, 1, 0.3
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(2, V, (B, L), generator=gen)
    real = torch.arange(L)[None, :] < torch.tensor([8, 5, 3])[:, None]
    ids = ids.masked_fill(~real, pad)
    table = torch.randn(V, V, generator=gen, dtype=torch.float64)

    class Bigramish(torch.nn.Module):  # logits at i from the token at i and its left neighbour
        def forward(self, x, attention_mask=None):
            left = torch.cat([x[:, :1], x[:, :-1]], dim=1)
            return table[x] + 0.5 * table[left]

    got = masked_diffusion_loss(Bigramish(), ids, real, real, mask_id,
                                torch.Generator().manual_seed(11), weighting="cart", cart_p=p)  # fmt: skip
    replay = torch.Generator().manual_seed(11)
    t = sample_mask_ratio(B, 1e-3, replay)
    noisy, masked = mask_tokens(ids, t, mask_id, replay, real)
    assert masked.any() and (masked & real).sum() < real.sum()  # both masked and visible tokens
    logits = Bigramish()(noisy)
    expected = 0.0
    for b in range(B):
        total = 0.0
        for i in range(L):
            if not masked[b, i]:
                continue
            w = sum(0.5 * p * (1 - p) ** (abs(i - j) - 1) for j in range(L)
                    if j != i and real[b, j] and not masked[b, j])  # fmt: skip
            logp = logits[b, i] - torch.logsumexp(logits[b, i], dim=0)
            total += w * -float(logp[ids[b, i]])
        expected += total / int(real[b].sum())
    assert got.item() == pytest.approx(expected / B, rel=1e-6)


def test_masked_ar_reads_a_masked_prefix_and_predicts_the_original_next_tokens(monkeypatch):
    """Masked-AR against a float64 loop: replay the draws (t ~ U(0.05, 0.95) per sequence, then
    the masks over real tokens), read the noisy input with a model whose logits at i depend on
    the token at i and its left neighbour, and average the cross-entropy of the *clean* next
    token over the predicted positions (padding neither masked nor predicted). The ratio's range
    is checked on many draws."""
    import revcurse.objectives as O

    V, pad, mask_id = 9, 0, 1
    ids = torch.tensor([[5, 6, 7, 8, 2], [5, 3, 4, 0, 0]])
    real = ids != pad
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    class Bigramish(torch.nn.Module):
        def forward(self, x, attention_mask=None):
            left = torch.cat([x[:, :1], x[:, :-1]], dim=1)
            return table[x] + 0.5 * table[left]

    got = O.masked_ar_loss(Bigramish(), ids, real, real, mask_id, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    t = 0.05 + 0.9 * torch.rand(2, generator=replay)
    noisy, masked = O.mask_tokens(ids, t, mask_id, replay, real)
    assert masked.any() and not masked[~real].any()
    logits = Bigramish()(noisy)
    terms = []
    for b in range(2):
        for i in range(ids.shape[1] - 1):
            if real[b, i + 1]:  # position i predicts the clean token i + 1
                logp = logits[b, i] - torch.logsumexp(logits[b, i], dim=0)
                terms.append(-float(logp[ids[b, i + 1]]))
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)

    seen = []
    real_mask_tokens = O.mask_tokens
    monkeypatch.setattr(O, "mask_tokens", lambda x, t, *a, **k: (seen.append(t.clone()),
                                                                  real_mask_tokens(x, t, *a, **k))[1])  # fmt: skip
    wide = torch.randint(2, V, (4000, 3), generator=torch.Generator().manual_seed(0))
    O.masked_ar_loss(
        Bigramish(), wide, wide > 0, wide > 0, mask_id, torch.Generator().manual_seed(1)
    )
    ratios = torch.cat(seen)
    assert 0.05 <= float(ratios.min()) < 0.06 and 0.94 < float(ratios.max()) <= 0.95
    assert float(ratios.mean()) == pytest.approx(0.5, abs=0.02)


def test_masked_ar_trains_a_causal_toy_model_and_is_refused_on_a_bidirectional_one():
    from conftest import tiny_run_config

    from revcurse.config import apply_overrides
    from revcurse.errors import ConfigError
    from revcurse.experiments.toy_run import train

    cfg = apply_overrides(tiny_run_config(causal=True), ["train.objective=masked_ar"])
    summary = train(cfg, None, progress=False)
    assert summary["objective"] == "masked_ar" and summary["mirror_accuracy"] is None
    with pytest.raises(
        ConfigError, match="train.objective': masked_ar needs an autoregressive model"
    ):
        apply_overrides(tiny_run_config(causal=False), ["train.objective=masked_ar"]).validate(
            "run"
        )


def test_entity_masking_masks_each_entity_whole_at_rate_t():
    """Whole-entity masking on the toy's two-token entities: over many draws every entity is
    masked all or nothing, each token (entity or not) is masked with probability t, and the
    relation token is drawn on its own. With token masking the two tokens of an entity part
    often."""
    from revcurse.config import ToyDataConfig
    from revcurse.data.tokenize import Vocab, training_batch
    from revcurse.data.toy import build_toy

    dataset = build_toy(ToyDataConfig(n_pairs=6, entity_tokens=2, bos=True, eos=True))
    vocab = Vocab.from_dataset(dataset)
    batch = training_batch(dataset, vocab, "masked_diffusion", "all", "entity")
    # [BOS] a a REL B B [EOS]: the entities' second tokens point at their first
    assert batch.unit_start[0].tolist() == [0, 1, 1, 3, 4, 4, 6]
    token = training_batch(dataset, vocab, "masked_diffusion", "all")
    assert token.unit_start is None
    reps = 3000
    ids = batch.ids.repeat(reps, 1)  # [6 * reps, 7]
    t = torch.full((len(ids),), 0.3)
    gen = torch.Generator().manual_seed(0)
    _, masked = mask_tokens(ids, t, vocab.mask_id, gen, None, batch.unit_start.repeat(reps, 1))
    for a, b in ((1, 2), (4, 5)):
        assert torch.equal(masked[:, a], masked[:, b])  # each entity whole
    rate = masked.double().mean(0)  # [L]
    assert torch.allclose(rate, torch.full_like(rate, 0.3), atol=0.02)
    assert not torch.equal(masked[:, 2], masked[:, 3])  # the relation: its own draw
    _, apart = mask_tokens(ids, t, vocab.mask_id, torch.Generator().manual_seed(0))
    assert (apart[:, 1] != apart[:, 2]).double().mean() > 0.3  # token masking splits entities


def test_entity_masking_is_refused_where_nothing_is_masked():
    from conftest import tiny_run_config

    from revcurse.config import TextRunConfig, apply_overrides
    from revcurse.errors import ConfigError

    with pytest.raises(ConfigError, match="train.mask_unit': entity masking needs a masked"):
        apply_overrides(tiny_run_config(causal=True), ["train.mask_unit=entity"]).validate("run")
    with pytest.raises(ConfigError, match="train.mask_unit"):
        apply_overrides(TextRunConfig(), ["train.mask_unit=entity", "model.causal=true"])
    cfg = apply_overrides(tiny_run_config(), ["train.mask_unit=entity", "data.entity_tokens=2",
                                              "probe.enabled=false"])  # fmt: skip
    from revcurse.experiments.toy_run import train

    assert train(cfg, None, progress=False)["forward_accuracy"] is not None


def test_prefix_lm_reads_each_prefix_alone_with_full_attention():
    """prefix_lm against a loop: for every predicted token x_k, run a full-attention model on
    the truncated sequence x_<k alone (its own forward pass) and take the cross-entropy of x_k at
    position k - 1; the mean over the predicted tokens (padding never predicted). With causal
    attention the same loss is the next-token loss (nothing after a position is read either
    way), so the test would notice the prefix not being cut."""
    from revcurse.config import ModelConfig
    from revcurse.models.transformer import TransformerLM
    from revcurse.objectives import next_token_loss, prefix_lm_loss

    ids = torch.tensor([[5, 6, 7, 8, 2], [5, 3, 4, 0, 0]])
    real = ids != 0
    torch.manual_seed(0)
    full = TransformerLM(ModelConfig(causal=True, attention="full", n_layers=2, n_heads=2,
                                     d_model=16, init_std=0.3), 9).double().eval()  # fmt: skip
    got = prefix_lm_loss(full, ids, real, real)
    terms = []
    for b in range(2):
        for k in range(1, ids.shape[1]):
            if real[b, k]:
                logits = full(ids[b : b + 1, :k])[0, k - 1]
                terms.append(-torch.log_softmax(logits, -1)[ids[b, k]].item())
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-10)
    # one cut prefix matters: the full sequence read at once sees the future
    leaked = torch.nn.functional.cross_entropy(full(ids)[:, :-1][real[:, 1:]],
                                               ids[:, 1:][real[:, 1:]])  # fmt: skip
    assert abs(leaked.item() - got.item()) > 1e-3
    causal = TransformerLM(dataclasses.replace(full.cfg, attention="auto"), 9).double().eval()
    causal.load_state_dict(full.state_dict())
    assert prefix_lm_loss(causal, ids, real, real).item() == pytest.approx(
        next_token_loss(causal, ids, real, real).item(), rel=1e-10
    )


def test_the_attention_mask_is_set_apart_from_the_family():
    """model.attention=causal: a masked model whose logits at a position do not move when a later
    token changes, read at its masked slots and asked no mirror query (it could not see what
    follows the answer); model.attention=full: an autoregressive model only with prefix_lm (with
    causal attention prefix_lm is next_token, the grid's control). The refusals name the field."""
    from conftest import tiny_run_config

    from revcurse.config import ModelConfig, apply_overrides
    from revcurse.errors import ConfigError
    from revcurse.experiments.toy_run import train
    from revcurse.models.transformer import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(attention="causal", d_model=16, n_heads=2), 9).eval()
    a, b = torch.tensor([[3, 4, 5, 6]]), torch.tensor([[3, 4, 5, 7]])
    assert torch.equal(model(a)[0, :3], model(b)[0, :3]) and not model.causal
    cfg = apply_overrides(tiny_run_config(), ["model.attention=causal"])
    summary = train(cfg, None, progress=False)
    assert summary["mirror_accuracy"] is None and summary["reverse_accuracy"] is not None
    assert "attention_pearson_mirror_final" not in summary["probe"]
    assert "attention_pearson_forward_final" in summary["probe"]
    for sets, fragment in [
        (["model.causal=true", "model.attention=full"], "model.attention': an autoregressive"),
        (["train.objective=prefix_lm"], "prefix_lm needs an autoregressive model"),
        (["model.causal=true", "model.attention=full", "train.objective=prefix_lm"],
         "probe.enabled"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=fragment):
            apply_overrides(tiny_run_config(), sets)
