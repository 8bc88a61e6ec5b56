"""Mechanism probes against independent references: closed forms, plain loops, manual scores."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_run_config

from revcurse.config import apply_overrides
from revcurse.data.tokenize import Vocab
from revcurse.data.toy import build_toy
from revcurse.experiments.toy_run import probe_runner, train
from revcurse.models.transformer import TransformerLM
from revcurse.probes import gradients as G
from revcurse.probes.attention import coupling, pearson, spearman
from revcurse.probes.inputs import probe_batch, toy_queries
from revcurse.probes.signals import query_signals, signal_alignment
from revcurse.probes.theory import rope_score_correlation, rope_score_correlation_mc


def setup(causal: bool, **overrides):
    cfg = tiny_run_config(causal=causal)
    cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])
    dataset = build_toy(cfg.data)
    vocab = Vocab.from_dataset(dataset)
    torch.manual_seed(0)
    model = TransformerLM(apply_overrides(cfg, ["model.init_std=0.3"]).model, len(vocab))
    return cfg, dataset, vocab, model


# ---------------------------------------------------------------- theory


@pytest.mark.parametrize(
    ("head_dim", "base", "delta"),
    [(8, 10000.0, 1), (16, 100.0, 3), (64, 10000.0, 10), (32, 1e6, 33)],
)
def test_theory_closed_form_matches_monte_carlo(head_dim, base, delta):
    g = torch.Generator().manual_seed(head_dim + delta)
    exact = rope_score_correlation(head_dim, base, delta)
    estimate, stderr = rope_score_correlation_mc(head_dim, base, delta, 400_000, g)
    assert abs(estimate - exact) < 5 * stderr + 1e-4


def test_theory_closed_form_by_hand():
    # d = 2: one plane with w = 1, corr = cos(2 D).
    assert rope_score_correlation(2, 10000.0, 0.7) == pytest.approx(math.cos(1.4))
    # D = 0: the two scores are the same random variable.
    assert rope_score_correlation(64, 10000.0, 0) == pytest.approx(1.0)
    # d = 4, base b: frequencies 1 and b^-1/2.
    expected = (math.cos(2 * 3) + math.cos(2 * 3 / 10.0)) / 2
    assert rope_score_correlation(4, 100.0, 3) == pytest.approx(expected)


# ---------------------------------------------------------------- attention


def test_pearson_and_spearman_against_numpy_style_reference():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0]], dtype=torch.float64)
    y = torch.tensor([[2.0, 1.0, 4.0, 3.0, 5.0]], dtype=torch.float64)
    ref = torch.corrcoef(torch.cat([x, y]))[0, 1]
    assert pearson(x, y).item() == pytest.approx(ref.item(), rel=1e-12)
    assert spearman(x, y).item() == pytest.approx(0.8)  # ranks 01234 vs 10324
    assert spearman(x, -x).item() == pytest.approx(-1.0)
    # scipy's Spearman on shuffled continuous data, per row of a [rows, N] batch
    from scipy import stats

    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(3, 40, generator=g), torch.randn(3, 40, generator=g)
    b = b + a  # correlated
    got = spearman(a, b)
    for row in range(3):
        want = stats.spearmanr(a[row].numpy(), b[row].numpy()).statistic
        assert got[row].item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(
    ("causal", "pairing"), [(False, "mirror"), (False, "forward"), (True, "forward")]
)
def test_entity_scores_match_manual_rope_scores(causal, pairing):
    """S_pair/S_rev read through hooks equal q_i . k_j recomputed from the weights (one layer), and
    the attention masses the softmax of those scores over the keys each row sees."""
    cfg, dataset, vocab, model = setup(causal, **{"model.n_layers": 1, "data.n_filler": 2})
    result = coupling(model, cfg.data, vocab, pairing)
    assert result["pairing"] == pairing
    attn = model.model.layers[0].self_attn
    manual = {}  # direction -> [H, N] the scores recomputed here
    for direction, scores in ((pairing, result["s_pair"]), ("reverse", result["s_rev"])):
        batch = probe_batch(dataset, vocab, direction, causal)
        with torch.no_grad():
            x = model.model.layers[0].input_layernorm(model.model.embed_tokens(batch.ids))
            n, length = batch.ids.shape
            q = attn.q_proj(x).view(n, length, 2, 8).transpose(1, 2)
            k = attn.k_proj(x).view(n, length, 2, 8).transpose(1, 2)
            cos, sin = model.model.rotary_emb(length)
            from revcurse.models.positional import apply_rope

            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mass = result["mass_pair" if direction == pairing else "mass_rev"]
        manual[direction] = torch.zeros(2, n, dtype=torch.float64)
        for i in range(n):
            a, e = batch.answer_pos[i], batch.entity_pos[i]
            expected = (q[i, :, a] * k[i, :, e]).sum(-1) / math.sqrt(8)
            manual[direction][:, i] = expected.double()
            torch.testing.assert_close(scores[0, :, i].float(), expected, atol=1e-5, rtol=1e-5)
            # The attention probability on the entity: a softmax over the keys the row sees.
            row = (q[i, :, a, None, :] * k[i]).sum(-1).double() / math.sqrt(8)  # [H, L]
            seen = row[:, : a + 1] if causal else row
            expected_mass = seen.softmax(-1)[:, e]
            torch.testing.assert_close(mass[0, :, i], expected_mass, atol=1e-6, rtol=1e-5)
    assert result["delta"] == 4
    assert result["pearson"].shape == (1, 2)
    # The published coupling r is numpy's correlation of these pre-softmax scores over facts (not
    # of the attention probabilities, nor of one direction with itself).
    import numpy as np

    for head in range(2):
        x, y = manual[pairing][head].numpy(), manual["reverse"][head].numpy()
        assert float(result["pearson"][0, head]) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_mass_of_wide_spans_equals_the_models_own_attention_pattern(causal):
    """The mass read from the recorded scores (softmax taken by the probe, causal mask applied
    by it) equals the model's own post-softmax pattern (``hook_pattern``), summed over the
    entity's keys and averaged over the reading rows, for spans wider than one token and rows
    with keys after them (where a missing causal mask would show)."""
    from revcurse.models.hooks import capture
    from revcurse.probes.attention import entity_reads

    cfg, _, _, model = setup(causal, **{"model.n_layers": 2})
    ids = torch.randint(0, 10, (3, 9), generator=torch.Generator().manual_seed(0))
    reading = torch.tensor([[4, 7], [2, 3], [5, 9]])
    entity = torch.tensor([[0, 2], [6, 9], [1, 4]])
    got = entity_reads(model, ids, reading, entity, causal=causal)["mass"]  # [layers, H, N]
    names = [f"model.layers.{n}.self_attn.hook_pattern" for n in range(2)]
    with torch.no_grad(), capture(model, names) as cache:
        model(ids)
    for n, name in enumerate(names):
        pattern = cache[name].double()  # [N, H, L, L]
        for i, ((r0, r1), (e0, e1)) in enumerate(
            zip(reading.tolist(), entity.tolist(), strict=True)
        ):
            expected = pattern[i, :, r0:r1, e0:e1].sum(-1).mean(-1)  # [H]
            torch.testing.assert_close(got[n, :, i], expected, atol=1e-6, rtol=1e-5)


def test_span_distance_by_hand():
    """Answer rows 5..6 (MDM: the answer itself; ARM: the positions predicting it, 4..5) and
    entity tokens 1..2: the mean of |i - j| over the four (row, key) pairs."""
    from revcurse.probes.inputs import Encoded, span_distance

    q = Encoded(ids=list(range(8)), entity=(1, 3), answer=(5, 7))
    assert span_distance(q, causal=False) == (4 + 3 + 5 + 4) / 4
    assert span_distance(q, causal=True) == (3 + 2 + 4 + 3) / 4


def test_coupling_by_distance_is_the_correlation_over_each_third_of_the_facts():
    """Facts given in shuffled order: each group is the nearest / middle / furthest third, and its
    correlation is numpy's over exactly those facts (an independent float64 reference)."""
    import numpy as np

    from revcurse.probes.attention import coupling_by_distance

    g = torch.Generator().manual_seed(3)
    s_pair, s_rev = torch.randn(2, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g)
    distance = [7.0, 1.0, 9.0, 3.0, 2.0, 8.0, 5.0, 4.0, 6.0, 0.0]
    bins = coupling_by_distance(s_pair, s_rev, distance)
    assert [b["n"] for b in bins] == [3, 4, 3]
    assert [b["distance"] for b in bins] == [[0.0, 2.0], [3.0, 6.0], [7.0, 9.0]]
    for b in bins:
        lo, hi = b["distance"]
        idx = [i for i, d in enumerate(distance) if lo <= d <= hi]
        for layer in range(2):
            for head in range(3):
                x, y = s_pair[layer, head, idx].numpy(), s_rev[layer, head, idx].numpy()
                expected = np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1]
                assert float(b["pearson"][layer, head]) == pytest.approx(expected, abs=1e-9)
    assert len(coupling_by_distance(s_pair[..., :5], s_rev[..., :5], distance[:5])) == 1


def test_mdm_pairing_is_same_entity_opposite_offsets():
    cfg, dataset, vocab, _ = setup(False, **{"data.n_filler": 3})
    mirror = probe_batch(dataset, vocab, "mirror", causal=False)
    reverse = probe_batch(dataset, vocab, "reverse", causal=False)
    # same key token (the entity b) and same answer (a) ...
    rows = torch.arange(len(mirror))
    assert torch.equal(mirror.ids[rows, mirror.entity_pos], reverse.ids[rows, reverse.entity_pos])
    assert torch.equal(mirror.answer_id, reverse.answer_id)
    # ... at offsets +Delta and -Delta from the mask
    assert ((mirror.entity_pos - mirror.answer_pos) == 5).all()
    assert ((reverse.entity_pos - reverse.answer_pos) == -5).all()


def test_position_free_model_couples_perfectly():
    """Without positions the two configurations give identical scores: correlation 1."""
    cfg, _, vocab, model = setup(False, **{"model.positional": "none", "model.n_layers": 1})
    assert coupling(model, cfg.data, vocab, "mirror")["pearson"].min().item() == pytest.approx(
        1.0, abs=1e-9
    )


class ToyWords:
    """The text-probe tokenizer interface over a toy vocabulary: space-separated toy tokens."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab, self.bos_id, self.eos_id = vocab, vocab.bos_id, vocab.eos_id

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(text.split())


def text_facts(cfg, dataset, vocab, pairings, causal):
    """The toy facts as the text probes read them (space-separated words, the toy's BOS and EOS
    fill), encoded for ``pairings``."""
    from revcurse.data.schema import TextPair
    from revcurse.probes.hf import encode_facts

    facts = [
        (TextPair(" ".join(f.a + f.relation), " " + " ".join(f.b)),
         TextPair(" ".join(f.b + f.relation), " " + " ".join(f.a)))
        for f in dataset.facts
    ]  # fmt: skip
    length = cfg.data.bos + 3 + cfg.data.n_filler + cfg.data.eos  # toy queries end with EOS
    fill = (vocab.eos_id, length) if cfg.data.eos and not causal else None
    return encode_facts(ToyWords(vocab), facts, pairings, bos=cfg.data.bos, fill=fill)


@pytest.mark.parametrize(
    ("causal", "pairing"), [(False, "mirror"), (False, "forward"), (True, "forward")]
)
def test_toy_and_text_probe_paths_give_the_same_coupling(causal, pairing):
    """One name, one quantity: the toy probe and the natural-language probe (probes.hf), run on the
    same model, the same facts and the same pairing, give the same scores and correlations."""
    from revcurse.probes.hf import attention_coupling

    cfg, dataset, vocab, model = setup(causal, **{"data.n_pairs": 12, "data.n_filler": 1})
    toy = coupling(model, cfg.data, vocab, pairing)
    encoded = text_facts(cfg, dataset, vocab, [pairing], causal)[pairing]
    text = attention_coupling(model, encoded, causal=causal, mask_id=vocab.mask_id)
    torch.testing.assert_close(
        torch.tensor(text["s_pair"]["0"], dtype=torch.float64).T, toy["s_pair"][0]
    )
    torch.testing.assert_close(
        torch.tensor(text["s_rev"]["0"], dtype=torch.float64).T, toy["s_rev"][0]
    )
    torch.testing.assert_close(torch.tensor(text["r"]["0"], dtype=torch.float64), toy["pearson"][0])


@pytest.mark.parametrize(
    ("causal", "pairing"), [(False, "mirror"), (False, "forward"), (True, "forward")]
)
def test_toy_and_text_probe_paths_give_the_same_gradient_cosines(causal, pairing):
    """One name, one quantity: the per-fact cosine of the paired and reverse query gradients,
    per parameter group and over all parameters, from the toy probe (per-example gradients by
    vmap) and from the text probe (one backward pass per query, probes.hf), on the same model,
    facts and pairing."""
    from revcurse.probes.hf import gradient_alignment

    cfg, dataset, vocab, model = setup(causal, **{"data.n_pairs": 10, "data.n_filler": 1})
    batches = {d: probe_batch(dataset, vocab, d, causal) for d in (pairing, "reverse")}
    toy = G.per_example_cosines(G.per_example_gradients(model, batches[pairing]),
                                G.per_example_gradients(model, batches["reverse"]))  # fmt: skip
    encoded = text_facts(cfg, dataset, vocab, [pairing], causal)[pairing]
    text = gradient_alignment(model, encoded, causal=causal, mask_id=vocab.mask_id)
    torch.testing.assert_close(torch.tensor(text["cos_pair_rev"], dtype=torch.float64),
                               toy["all"], atol=1e-5, rtol=1e-4)  # fmt: skip
    assert set(text["cos_pair_rev_groups"]) == set(toy) - {"all"}
    for group, values in text["cos_pair_rev_groups"].items():
        torch.testing.assert_close(torch.tensor(values, dtype=torch.float64), toy[group],
                                   atol=1e-5, rtol=1e-4)  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_one_summary_reads_toy_and_text_records_alike(causal):
    """One name, one quantity, in run summaries too: the toy measure and the text measure, run by
    the one ProbeRunner on the same model and facts, summarise to the same numbers under every
    label both carry (attention r overall and per layer, signal cosine, per-fact gradient cosine)."""
    from revcurse.probes.hf import text_measure
    from revcurse.probes.inputs import pairings_for
    from revcurse.probes.runner import ProbeRunner

    cfg, dataset, vocab, model = setup(causal, **{"data.n_pairs": 10, "data.n_filler": 1,
                                                  "model.n_layers": 2})  # fmt: skip
    cfg = apply_overrides(cfg, ["probe.per_example_every=1", "probe.distances=[]"])
    toy = probe_runner(cfg, dataset, vocab, None)
    encoded = text_facts(cfg, dataset, vocab, pairings_for(causal), causal)
    text = ProbeRunner(text_measure(encoded, causal=causal, mask_id=vocab.mask_id), None)
    for step in (0, 3):
        toy(model, step, final=step == 3)
        text(model, step, final=step == 3)
    a, b = toy.summary(), text.summary()
    shared = sorted((a.keys() & b.keys()) - {"n_probes", "first_step", "final_step"})
    expected = {f"{label}_{end}" for pairing in pairings_for(causal) for end in ("first", "final")
                for label in (f"attention_pearson_{pairing}", f"attention_pearson_{pairing}_layer1",
                              f"signal_u_cosine_{pairing}")}  # fmt: skip
    expected.add("per_fact_cos_fwd_rev_final")
    assert expected <= set(shared)
    for key in shared:
        assert a[key] == pytest.approx(b[key], abs=1e-5), key


@pytest.mark.parametrize("causal", [False, True])
def test_the_batched_query_loss_is_the_answer_loss(causal):
    """gradients.batch_loss (the stacked one-token view the vmap path differentiates) computes
    objectives.answer_loss, the query loss of the text probes, on the same queries."""
    from revcurse.objectives import answer_loss
    from revcurse.probes.inputs import toy_queries

    cfg, dataset, vocab, model = setup(causal, **{"data.n_pairs": 10, "data.n_filler": 1})
    queries = toy_queries(dataset, vocab, "reverse")
    batched = G.batch_loss(model, probe_batch(dataset, vocab, "reverse", causal))
    ids = torch.tensor([q.ids for q in queries])
    answer = torch.zeros_like(ids, dtype=torch.bool)
    for i, q in enumerate(queries):
        answer[i, q.answer[0] : q.answer[1]] = True
    expected = answer_loss(model, ids, answer, torch.ones_like(answer), causal, vocab.mask_id)
    assert batched.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_causal_model_has_no_mirror_pairing():
    cfg, _, vocab, model = setup(True)
    with pytest.raises(ValueError, match="pairing 'mirror' is not defined for a causal model"):
        coupling(model, cfg.data, vocab, "mirror")


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("causal", [False, True])
def test_per_example_gradients_match_loop_of_backward_passes(causal):
    cfg, dataset, vocab, model = setup(causal)
    batch = probe_batch(dataset, vocab, "reverse", causal)
    fast = G.per_example_gradients(model, batch)
    slow = G.per_example_gradients_loop(model, batch)
    assert fast.keys() == slow.keys()
    for name in fast:
        torch.testing.assert_close(fast[name], slow[name], atol=1e-6, rtol=1e-4)


def test_group_cosines_against_flat_float64_reference():
    cfg, dataset, vocab, model = setup(False)
    fwd = probe_batch(dataset, vocab, "forward", False)
    rev = probe_batch(dataset, vocab, "reverse", False)
    _, ga = G.gradients(model, lambda: G.batch_loss(model, fwd))
    _, gb = G.gradients(model, lambda: G.batch_loss(model, rev))
    cos = G.group_cosines(ga, gb)
    a = torch.cat([g.flatten().double() for g in ga.values()])
    b = torch.cat([g.flatten().double() for g in gb.values()])
    assert cos["all"] == pytest.approx((a @ b / (a.norm() * b.norm())).item(), rel=1e-5)
    qk = [n for n in ga if n.endswith(("q_proj.weight", "k_proj.weight"))]
    a = torch.cat([ga[n].flatten().double() for n in qk])
    b = torch.cat([gb[n].flatten().double() for n in qk])
    assert cos["qk"] == pytest.approx((a @ b / (a.norm() * b.norm())).item(), rel=1e-5)
    assert set(cos) == {"embeddings", "qk", "vo", "mlp", "norms", "unembedding", "all",
                        "storage", "routing", "other"}  # fmt: skip
    # The parts, against the parameter names directly (not through param_group).
    storage = [
        n for n in ga if any(t in n for t in ("embed", "v_proj", "o_proj", "mlp", "lm_head"))
    ]
    for part, names in (("routing", qk), ("storage", storage)):
        a = torch.cat([ga[n].flatten().double() for n in names])
        b = torch.cat([gb[n].flatten().double() for n in names])
        assert cos[part] == pytest.approx((a @ b / (a.norm() * b.norm())).item(), rel=1e-5)


def test_per_example_cosines_average_to_batch_gradient():
    cfg, dataset, vocab, model = setup(True)
    batch = probe_batch(dataset, vocab, "forward", True)
    per = G.per_example_gradients(model, batch)
    _, full = G.gradients(model, lambda: G.batch_loss(model, batch))
    for name in full:
        torch.testing.assert_close(per[name].mean(0), full[name], atol=1e-6, rtol=1e-4)
    cos = G.per_example_cosines(per, per)
    torch.testing.assert_close(cos["all"], torch.ones(len(batch), dtype=torch.float64))


@pytest.mark.parametrize("per_example", [False, True])
def test_alignment_cosines_pair_the_right_losses_against_a_float64_model(per_example):
    """Every batch cosine :func:`alignment` publishes (``grad_cos_fwd_rev``, ``mirror_rev``,
    ``train_rev``, over all parameters and per part), against the same model in float64: each
    loss differentiated on its own with autograd, flattened, and the cosines taken by numpy. The
    three query losses differ, so pairing mirror with forward (or any other swap) fails here."""
    import copy

    import numpy as np

    cfg, dataset, vocab, model = setup(False)
    batches = {d: probe_batch(dataset, vocab, d, False) for d in ("forward", "reverse", "mirror")}
    fixed = torch.Generator().manual_seed(0)
    mask = torch.rand(batches["forward"].ids.shape, generator=fixed) < 0.5
    mask_id = vocab.mask_id

    def train_loss(m):  # a fixed-mask denoising loss on the forward statements
        ids = batches["forward"].ids
        logits = m(ids.masked_fill(mask, mask_id))
        return torch.nn.functional.cross_entropy(logits[mask], ids[mask])

    summary, _ = G.alignment(model, batches, lambda: train_loss(model), 1e-3, per_example)
    ref = copy.deepcopy(model).double()
    names = [n for n, _ in ref.named_parameters()]

    def flat(loss, keep=lambda n: True):
        grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True)
        return np.concatenate([
            (g if g is not None else torch.zeros_like(p)).detach().flatten().numpy()
            for n, p, g in zip(names, ref.parameters(), grads, strict=True) if keep(n)
        ])  # fmt: skip

    def cos(x, y):
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    routing = lambda n: n.endswith(("q_proj.weight", "k_proj.weight"))  # noqa: E731
    storage = lambda n: any(t in n for t in ("embed", "v_proj", "o_proj", "mlp", "lm_head"))  # noqa: E731
    loss = {d: (lambda b=b: G.batch_loss(ref, b)) for d, b in batches.items()}
    loss["train"] = lambda: train_loss(ref)
    for label, first in (("cos_fwd_rev", "forward"), ("cos_mirror_rev", "mirror"),
                         ("cos_train_rev", "train")):  # fmt: skip
        for part, keep in (("all", lambda n: True), ("routing", routing), ("storage", storage)):
            expected = cos(flat(loss[first](), keep), flat(loss["reverse"](), keep))
            assert summary[label][part] == pytest.approx(expected, abs=2e-5), (label, part)
    # the three pairings are different numbers, so a swap cannot pass by coincidence
    values = [summary[k]["all"] for k in ("cos_fwd_rev", "cos_mirror_rev", "cos_train_rev")]
    assert min(abs(a - b) for a, b in ((values[0], values[1]), (values[1], values[2]),
                                       (values[0], values[2]))) > 1e-3  # fmt: skip
    for d in ("forward", "reverse", "mirror"):
        assert summary["loss"][d] == pytest.approx(loss[d]().item(), rel=1e-5)
    if per_example:  # the per-fact cosines' distribution, fact by fact in float64
        for label, first in (("fwd_rev", "forward"), ("mirror_rev", "mirror")):
            per_fact = []
            for i in range(len(batches["reverse"])):
                a, b = batches[first].head(i + 1), batches["reverse"].head(i + 1)
                one = [type(a)(*(t[i : i + 1] for t in (x.ids, x.answer_pos, x.answer_id,
                                                         x.entity_pos))) for x in (a, b)]  # fmt: skip
                per_fact.append(cos(flat(G.batch_loss(ref, one[0])),
                                    flat(G.batch_loss(ref, one[1]))))  # fmt: skip
            x = np.asarray(per_fact)
            got = summary[f"per_fact_cos_{label}"]
            assert got["mean"] == pytest.approx(x.mean(), abs=2e-5)
            assert got["q10"] == pytest.approx(np.quantile(x, 0.1), abs=2e-5)
            assert got["median"] == pytest.approx(np.median(x), abs=2e-5)
            assert got["q90"] == pytest.approx(np.quantile(x, 0.9), abs=2e-5)
            assert got["frac_positive"] == pytest.approx((x > 0).mean())
    # The first-order check: -lr <g_train, g_rev>, in total and per part (published as ΔL_rev).
    first = summary["first_order"]
    g_train, g_rev = flat(loss["train"]()), flat(loss["reverse"]())
    assert first["predicted"] == pytest.approx(-1e-3 * float(g_train @ g_rev), rel=1e-4)
    for part, keep in (("routing", routing), ("storage", storage)):
        expected = -1e-3 * float(flat(loss["train"](), keep) @ flat(loss["reverse"](), keep))
        assert first["predicted_parts"][part] == pytest.approx(expected, rel=1e-4, abs=1e-12)


def forward_and_reverse_gradients(causal: bool):
    """A fresh model, its reverse batch and the forward- and reverse-loss gradients."""
    cfg, dataset, vocab, model = setup(causal)
    fwd = probe_batch(dataset, vocab, "forward", causal)
    rev = probe_batch(dataset, vocab, "reverse", causal)
    _, g_fwd = G.gradients(model, lambda: G.batch_loss(model, fwd))
    _, g_rev = G.gradients(model, lambda: G.batch_loss(model, rev))
    return model, rev, g_fwd, g_rev


def test_first_order_prediction_matches_actual_change_for_small_steps():
    model, rev, g_fwd, g_rev = forward_and_reverse_gradients(False)
    check = G.first_order_check(model, g_fwd, g_rev, rev, lr=1e-3)
    assert check["actual"] == pytest.approx(check["predicted"], rel=0.05)
    # ... and along the reverse gradient itself the loss must go down by lr * |g_rev|^2
    down = G.first_order_check(model, g_rev, g_rev, rev, lr=1e-3)
    assert down["predicted"] < 0 and down["actual"] == pytest.approx(down["predicted"], rel=0.05)


@pytest.mark.parametrize("causal", [False, True])
def test_first_order_parts_sum_to_the_total_and_predict_a_step_of_that_part_alone(causal):
    """Storage and routing: each part's predicted change is the actual change of the reverse loss
    when only that part's parameters take the step, and the parts add up to the prediction."""
    model, rev, g_fwd, g_rev = forward_and_reverse_gradients(causal)
    check = G.first_order_check(model, g_fwd, g_rev, rev, lr=1e-3)
    parts = check["predicted_parts"]
    assert sum(parts.values()) == pytest.approx(check["predicted"], rel=1e-9, abs=1e-15)
    for part, groups in (("routing", ("qk",)), ("storage", ("embeddings", "vo", "mlp"))):
        only = {n: g if G.param_group(n) in groups or (part == "storage" and G.param_group(n)
                == "unembedding") else torch.zeros_like(g) for n, g in g_fwd.items()}  # fmt: skip
        alone = G.first_order_check(model, only, g_rev, rev, lr=1e-3)
        assert alone["actual"] == pytest.approx(parts[part], rel=0.1, abs=1e-7)


# ---------------------------------------------------------------- signals


def test_error_and_hidden_signals_match_autograd_and_closed_form():
    cfg, dataset, vocab, model = setup(False)
    batch = probe_batch(dataset, vocab, "forward", False)
    sig = query_signals(model, toy_queries(dataset, vocab, "forward"), causal=False,
                        mask_id=vocab.mask_id)  # fmt: skip
    rows = torch.arange(len(batch))
    logits = model(batch.ids)[rows, batch.answer_pos].detach().double().requires_grad_()
    loss = torch.nn.functional.cross_entropy(logits, batch.answer_id, reduction="sum")
    (e_ref,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(sig["e"], e_ref)
    # u = W_U^T e: the signal entering the unembedding
    u_ref = sig["e"] @ model.lm_head.weight.double()
    torch.testing.assert_close(sig["u"], u_ref, atol=1e-5, rtol=1e-4)
    assert sig["z.0"].shape == (len(batch), 16)


def test_signal_cosines_in_a_hand_derived_case_and_why_forward_pairing_is_negative():
    """All weights zero except an unembedding with orthonormal rows (V <= D): the final state is 0,
    the softmax uniform, e = 1/V - onehot(y), u = W_U^T e and |u| = |e|. Then by hand
    cos(u_fwd, u_rev) = <e_b, e_a> / |e|^2 = (1/V - 2/V) / (1 - 1/V) = -1/(V - 1) (answers b != a),
    and cos(u_mirror, u_rev) = 1 (same answer a); inner products -1/V and 1 - 1/V."""
    cfg, dataset, vocab, model = setup(False, **{"model.norm": "none", "model.d_model": 64})
    model = model.double()
    V = len(vocab)
    assert V <= 64
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        q, _ = torch.linalg.qr(torch.randn(64, V, dtype=torch.float64))  # orthonormal columns
        model.lm_head.weight.copy_(q.T)  # [V, D], orthonormal rows
    sig = {d: query_signals(model, toy_queries(dataset, vocab, d), causal=False,
                            mask_id=vocab.mask_id)
           for d in ("forward", "mirror", "reverse")}  # fmt: skip
    fwd = signal_alignment(sig["forward"], sig["reverse"])
    mirror = signal_alignment(sig["mirror"], sig["reverse"])
    assert fwd["u"]["cosine"] == pytest.approx(-1 / (V - 1), rel=1e-9)
    assert fwd["u"]["inner"] == pytest.approx(-1 / V, rel=1e-9)
    assert mirror["u"]["cosine"] == pytest.approx(1.0, rel=1e-9)
    assert mirror["u"]["inner"] == pytest.approx(1 - 1 / V, rel=1e-9)


# ---------------------------------------------------------------- runner


def test_probes_do_not_change_training_and_are_recorded(tmp_path):
    cfg = apply_overrides(
        tiny_run_config(causal=False), ["probe.every=10", "probe.distances=[0, 3]"]
    )
    off = train(apply_overrides(cfg, ["probe.enabled=false"]))
    on = train(cfg, tmp_path / "run")
    assert on["final_loss"] == off["final_loss"]
    records = (tmp_path / "run" / "probes" / "probes.jsonl").read_text().splitlines()
    assert len(records) == 3  # steps 0, 10, 20
    assert (tmp_path / "run" / "probes" / "step-0000020.safetensors").is_file()
    assert on["probe"]["n_probes"] == 3
    assert {"attention_pearson_mirror_mean", "attention_pearson_forward_mean"} <= set(on["probe"])
    assert "grad_cos_mirror_rev_mean" in on["probe"]  # MDM only


def test_runner_final_record_has_distance_curve():
    cfg, dataset, vocab, model = setup(True, **{"probe.distances": "[0, 2, 5]"})
    runner = probe_runner(cfg, dataset, vocab, None)
    record = runner(model, 7, final=True)
    assert list(record["distance"]) == ["forward"]  # the only pairing of a causal model
    assert [d["delta"] for d in record["distance"]["forward"]] == [2, 4, 7]
    assert "cos_mirror_rev" not in record["gradients"]  # ARM has no mirror configuration
    assert "per_fact_cos_fwd_rev" in record["gradients"]


def test_explicit_probe_steps(tmp_path):
    cfg = apply_overrides(
        tiny_run_config(causal=True),
        ["probe.steps=[3, 7]", "probe.distances=[]", "probe.per_example=false"],
    )
    summary = train(cfg, tmp_path / "run")
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "run" / "probes" / "probes.jsonl").read_text().splitlines()]  # fmt: skip
    assert steps == [3, 7, 20]
    assert summary["probe"]["n_probes"] == 3


def test_probe_command_on_a_saved_run(tmp_path):
    from typer.testing import CliRunner

    from revcurse.cli import app

    train(tiny_run_config(causal=False), tmp_path / "run")
    result = CliRunner().invoke(
        app, ["probe", str(tmp_path / "run"), "--set", "probe.distances=[0]"]
    )
    assert result.exit_code == 0, result.output
    assert "attention r (mirror pairing)=" in result.stdout
    assert "attention r (forward pairing)=" in result.stdout
    record = json.loads((tmp_path / "run" / "probes" / "posthoc-probes.jsonl").read_text())
    assert record["final"] and record["step"] == 20
    assert (tmp_path / "run" / "probes" / "probes.jsonl").is_file()  # training records kept
    bad = CliRunner().invoke(app, ["probe", str(tmp_path / "run"), "--set", "train.lr=1"])
    assert bad.exit_code == 2 and "probe.*" in bad.stderr


def test_runner_shares_the_reverse_scores_without_changing_any_value():
    cfg, dataset, vocab, model = setup(False, **{"probe.distances": "[0, 3]"})
    record = probe_runner(cfg, dataset, vocab, None)(model, 5, final=True)
    for pairing in ("mirror", "forward"):
        alone = coupling(model, cfg.data, vocab, pairing)
        assert record["attention"][pairing]["pearson"] == alone["pearson"].tolist()
        for d in record["distance"][pairing]:
            far = coupling(model, cfg.data, vocab, pairing, d["n_filler"])
            assert d["pearson"] == far["pearson"].tolist()


@pytest.mark.parametrize("causal", [False, True])
def test_signals_do_not_depend_on_how_queries_are_read(causal):
    """Signals do not read the entity: queries with multi-token entities (read one by one) give
    the signals of the same queries with one-token entities (stacked in one batch)."""
    from revcurse.probes.inputs import Encoded, stackable

    cfg, dataset, vocab, model = setup(causal, **{"data.n_pairs": 8, "data.n_filler": 1})
    narrow = toy_queries(dataset, vocab, "reverse")
    wide = [Encoded(q.ids, entity=(0, 2), answer=q.answer) for q in narrow]
    assert stackable(narrow) and not stackable(wide)
    got = query_signals(model, wide, causal=causal, mask_id=vocab.mask_id)
    want = query_signals(model, narrow, causal=causal, mask_id=vocab.mask_id)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5)


def test_probe_summary_labels_against_hand_made_records():
    """The run summary's probe labels (the published ``probe.*_first/_final/_mean``), from three
    hand-made toy records: each label's value at the first and last probed step and its mean
    over the steps that carry it (the per-fact cosine only at the last two), every quantity
    under its own name."""
    from revcurse.probes.runner import summarise

    def record(step, r, rho, cos, u, per_fact):
        grads = {"loss": {"reverse": 2.0 - step / 100},
                 "cos_fwd_rev": {"all": cos, "storage": cos / 2, "routing": -cos, "qk": 9.0},
                 "cos_train_rev": {"all": cos + 0.1},
                 "first_order": {"predicted": -cos / 10, "actual": -cos / 20,
                                 "predicted_parts": {"storage": -cos / 30, "routing": 0.0}}}  # fmt: skip
        if per_fact is not None:
            grads["per_fact_cos_fwd_rev"] = {"mean": per_fact}
        return {"step": step, "final": step == 200,
                "attention": {"forward": {"mean_pearson": r, "mean_spearman": rho,
                                          "pearson": [[r - 0.1, r + 0.1], [r, r]],
                                          "mass_pair": [[0.5]], "mass_rev": [[0.25]]}},
                "signals": {"forward": {"u": {"cosine": u}}},
                "gradients": grads}  # fmt: skip

    records = [record(0, 0.1, 0.2, 0.3, 0.4, None), record(100, 0.5, 0.6, 0.7, 0.8, 0.2),
               record(200, 0.3, -0.2, 0.2, 0.0, 0.6)]  # fmt: skip
    got = summarise(records)
    expected = {
        "attention_pearson_forward": (0.1, 0.3, 0.3),
        "attention_spearman_forward": (0.2, -0.2, 0.2),
        "attention_pearson_forward_layer0": (0.1, 0.3, 0.3),
        "signal_u_cosine_forward": (0.4, 0.0, 0.4),
        "grad_cos_fwd_rev": (0.3, 0.2, 0.4),
        "grad_cos_fwd_rev_storage": (0.15, 0.1, 0.2),
        "grad_cos_fwd_rev_routing": (-0.3, -0.2, -0.4),
        "grad_cos_train_rev": (0.4, 0.3, 0.5),
        "first_order_predicted": (-0.03, -0.02, -0.04),
        "first_order_actual": (-0.015, -0.01, -0.02),
        "first_order_storage": (-0.01, -0.2 / 30, -0.4 / 30),
    }
    for label, (first, final, mean) in expected.items():
        assert got[f"{label}_first"] == pytest.approx(first), label
        assert got[f"{label}_final"] == pytest.approx(final), label
        assert got[f"{label}_mean"] == pytest.approx(mean), label
    # present at two of the three steps: no first value, the mean over those two
    assert "per_fact_cos_fwd_rev_first" not in got
    assert got["per_fact_cos_fwd_rev_final"] == 0.6
    assert got["per_fact_cos_fwd_rev_mean"] == pytest.approx(0.4)
    assert "grad_cos_fwd_rev_qk_mean" not in got  # groups other than the parts are not labels
    assert (got["first_step"], got["final_step"], got["n_probes"]) == (0, 200, 3)
    assert got["reverse_loss_final"] == 0.0


@pytest.mark.parametrize("causal", [False, True])
def test_mass_grid_of_multi_token_toy_entities_is_the_models_own_attention_pattern(causal):
    """Toy entities of two tokens: each query's given entity spans both tokens, and the grid
    (answer position x entity token) is the model's own post-softmax pattern (``hook_pattern``)
    at those rows and keys, averaged over the facts, with the answer masked for an MDM."""
    from revcurse.models.hooks import capture
    from revcurse.probes.attention import mass_grid
    from revcurse.probes.inputs import reading_rows, toy_pairs

    cfg, dataset, vocab, model = setup(causal, **{"model.n_layers": 2, "data.entity_tokens": 2})
    pairs = toy_pairs(dataset, vocab, causal)
    assert set(pairs) == ({"forward"} if causal else {"forward", "mirror"})
    names = [f"model.layers.{n}.self_attn.hook_pattern" for n in range(2)]
    for facts in pairs.values():
        for queries in ([f for f, _ in facts], [r for _, r in facts]):
            got = mass_grid(model.eval(), queries, causal=causal, mask_id=vocab.mask_id)
            assert got.shape == (2, model.cfg.n_heads, 2, 2)
            expected = torch.zeros_like(got)
            for q in queries:
                assert (
                    q.entity[1] - q.entity[0] == 2 and not q.answer[0] <= q.entity[0] < q.answer[1]
                )
                ids = list(q.ids)
                if not causal:
                    ids[q.answer[0] : q.answer[1]] = [vocab.mask_id] * 2
                with torch.no_grad(), capture(model, names) as cache:
                    model(torch.tensor([ids]))
                r0, r1 = reading_rows(q, causal)
                for n, name in enumerate(names):
                    expected[n] += cache[name][0, :, r0:r1, q.entity[0] : q.entity[1]].double()
            torch.testing.assert_close(got, expected / len(queries), atol=1e-6, rtol=1e-5)


def test_a_multi_token_toy_run_is_probed_with_the_multi_token_probes(tmp_path):
    """The toy's probes on entities of two tokens: the records of natural-language facts
    (coupling, gradient alignment, signals per pairing) plus the position grids, summarised
    under the same labels as any run."""
    cfg = apply_overrides(tiny_run_config(causal=False), [
        "data.entity_tokens=2", "train.steps=20", "probe.every=10"])  # fmt: skip
    summary = train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "probes" / "probes.jsonl").open()]
    assert [r["step"] for r in records] == [0, 10, 20]
    mirror = records[-1]["pairings"]["mirror"]
    assert mirror["n_facts"] == cfg.data.n_pairs
    grid = mirror["attention"]["mass_grid_rev"]["0"]  # [heads][answer position][entity token]
    assert len(grid) == cfg.model.n_heads and all(len(row) == 2 for h in grid for row in h)
    assert "attention_pearson_mirror_final" in summary["probe"]
    assert "per_fact_cos_mirror_rev_final" in summary["probe"]
