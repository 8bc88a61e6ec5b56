"""Decoding against tiny hand-checkable models: unmasking order, blocks, greedy, likelihoods."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from revcurse.decoding import (
    arm_answer_logprob,
    arm_generate,
    mdm_answer_logprob,
    mdm_chain_logprob,
    mdm_exact_bound,
    mdm_generate,
    mdm_one_step_logprob,
    stratified_mask_counts,
    transfer_counts,
    truncate_at,
)

V, MASK, PAD, EOS = 20, 1, 0, 3


class FixedConfidence:
    """Predicts token ``target[j]`` at absolute position j with confidence set by ``scale[j]``,
    whatever the input: the order in which a low-confidence-remasking sampler commits positions is
    then known in advance."""

    def __init__(self, target: list[int], scale: list[float]) -> None:
        self.logits = torch.zeros(len(target), V)
        for j, (t, s) in enumerate(zip(target, scale, strict=True)):
            self.logits[j, t] = s

    def __call__(self, ids, attention_mask=None):
        return self.logits[: ids.shape[1]].expand(ids.shape[0], -1, -1).clone()


class Successor:
    """At a masked position right after a visible token t, predicts t + 1 confidently; elsewhere
    predicts token 5 with low confidence. Correct output needs earlier commitments to be seen."""

    def __call__(self, ids, attention_mask=None):
        logits = torch.zeros(*ids.shape, V)
        logits[..., 5] = 0.5
        for b in range(ids.shape[0]):
            for j in range(1, ids.shape[1]):
                prev = int(ids[b, j - 1])
                if ids[b, j] == MASK and prev not in (MASK, PAD) and prev + 1 < V:
                    logits[b, j, prev + 1] = 10.0
        return logits


def committed_order(trace: list[torch.Tensor], start: int, n: int) -> list[list[int]]:
    """Which answer positions each step newly unmasked."""
    order, before = [], None
    for state in trace:
        now = {j for j in range(n) if state[0, start + j] != MASK}
        order.append(sorted(now - (before or set())))
        before = now
    return order


def test_transfer_counts_spread_evenly():
    assert transfer_counts(4, 4) == [1, 1, 1, 1]
    assert transfer_counts(5, 2) == [3, 2]
    assert sum(transfer_counts(7, 3)) == 7


def test_most_confident_position_is_unmasked_first_one_per_step():
    # prompt of 2 tokens, answer positions 2..5 with confidences 1, 4, 2, 8 -> order 3, 1, 2, 0
    model = FixedConfidence([9, 9, 10, 11, 12, 13], [0, 0, 1.0, 4.0, 2.0, 8.0])
    trace: list[torch.Tensor] = []
    out = mdm_generate(model, [[9, 9]], 4, mask_id=MASK, pad_id=PAD, trace=trace)
    assert out.tolist() == [[10, 11, 12, 13]]
    assert committed_order(trace, 2, 4) == [[3], [1], [2], [0]]


def test_semi_autoregressive_blocks_fill_left_to_right():
    model = FixedConfidence([9, 10, 11, 12, 13], [0, 1.0, 2.0, 4.0, 8.0])
    trace: list[torch.Tensor] = []
    mdm_generate(model, [[9]], 4, mask_id=MASK, pad_id=PAD, block_length=2, trace=trace)
    # the confident second block waits until the first block is done
    assert committed_order(trace, 1, 4) == [[1], [0], [3], [2]]


def test_fewer_steps_commit_several_tokens_per_step():
    model = FixedConfidence([9, 10, 11, 12, 13], [0, 1.0, 2.0, 4.0, 8.0])
    trace: list[torch.Tensor] = []
    mdm_generate(model, [[9]], 4, mask_id=MASK, pad_id=PAD, steps=2, trace=trace)
    assert committed_order(trace, 1, 4) == [[2, 3], [0, 1]]


def test_sampler_sees_its_own_commitments_and_handles_ragged_prompts():
    out = mdm_generate(Successor(), [[10], [4, 7]], 3, mask_id=MASK, pad_id=PAD, suffix=[EOS])
    assert out.tolist() == [[11, 12, 13], [8, 9, 10]]


def test_temperature_sampling_is_seeded():
    model = FixedConfidence([9, 10, 11, 12], [0, 0.1, 0.1, 0.1])
    a = mdm_generate(model, [[9]] * 4, 3, mask_id=MASK, pad_id=PAD, temperature=1.0,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    b = mdm_generate(model, [[9]] * 4, 3, mask_id=MASK, pad_id=PAD, temperature=1.0,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 1  # near-uniform logits: rows differ


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_samples_follow_softmax_of_logits_over_temperature(temperature):
    """LLaDA's sampler at T > 0 draws each token from softmax(logits / T) (Gumbel-max). A model
    whose logits are 0, 1, 2 on three tokens at every position, asked one token for 30,000
    prompts at once: the counts against that law by a chi-square test (seeded, so the test is
    deterministic; the exponential-noise draw puts 77% instead of 67% on the top token at T = 1,
    a chi-square in the thousands)."""
    from scipy import stats

    logits = torch.full((V,), -1e9)
    logits[[5, 6, 7]] = torch.tensor([0.0, 1.0, 2.0])

    def fixed(ids, attention_mask=None):
        return logits.expand(*ids.shape, V).clone()

    n = 30_000
    out = mdm_generate(fixed, [[9]] * n, 1, mask_id=MASK, pad_id=PAD, temperature=temperature,
                       generator=torch.Generator().manual_seed(1), batch_size=0)  # fmt: skip
    counts = torch.bincount(out[:, 0], minlength=V)[[5, 6, 7]].double().numpy()
    assert counts.sum() == n  # no other token is ever drawn
    law = torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64) / temperature, 0)
    test = stats.chisquare(counts, law.numpy() * n)
    assert test.pvalue > 1e-3, (counts / n, law)


def test_bad_block_configuration_is_rejected():
    with pytest.raises(ValueError, match="multiple of block_length"):
        mdm_generate(Successor(), [[4]], 5, mask_id=MASK, pad_id=PAD, block_length=2)
    with pytest.raises(ValueError, match="multiple of the 2 blocks"):
        mdm_generate(Successor(), [[4]], 4, mask_id=MASK, pad_id=PAD, block_length=2, steps=3)


class CausalSuccessor:
    def __call__(self, ids, attention_mask=None):
        logits = torch.zeros(*ids.shape, V)
        nxt = (ids + 1).clamp(max=V - 1)
        nxt = torch.where(ids == 6, torch.full_like(ids, EOS), nxt)  # after 6 comes EOS
        logits.scatter_(-1, nxt[..., None], 5.0)
        return logits


def test_arm_greedy_and_eos():
    out = arm_generate(CausalSuccessor(), [[10], [4], [2, 4]], 4, eos_id=EOS)
    assert out[0].tolist() == [11, 12, 13, 14]
    assert out[1].tolist() == [5, 6, EOS, EOS]
    assert out[2].tolist() == [5, 6, EOS, EOS]
    assert truncate_at(out[1].tolist(), [EOS, PAD]) == [5, 6]


def test_arm_logprob_is_exact():
    model = CausalSuccessor()
    lp = arm_answer_logprob(model, [[10]], [[11, 12]])
    step = math.log(math.exp(5) / (math.exp(5) + V - 1))
    assert lp.item() == pytest.approx(2 * step)
    assert arm_answer_logprob(model, [[10]], [[11, 13]]).item() < lp.item()


def test_mdm_logprob_single_token_is_exact():
    model = FixedConfidence([9, 10, 11], [0, 3.0, 0])
    lp = mdm_answer_logprob(model, [[9]], [[10]], mask_id=MASK, suffix=[EOS], n_samples=4)
    assert lp.item() == pytest.approx(math.log(math.exp(3) / (math.exp(3) + V - 1)))


def test_mdm_elbo_is_unbiased_for_position_independent_model():
    # Position-independent predictions: E[(L/l) sum_masked log p_j] = sum_j log p_j exactly.
    model = FixedConfidence([9, 10, 11, 12, 13], [0, 1.0, 2.0, 3.0, 0.5])
    answer = [10, 11, 12, 13]
    exact = sum(math.log(math.exp(s) / (math.exp(s) + V - 1)) for s in (1.0, 2.0, 3.0, 0.5))
    est = mdm_answer_logprob(model, [[9]], [answer], mask_id=MASK, n_samples=4000,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert est.item() == pytest.approx(exact, rel=0.02)


def test_stratified_counts_cover_every_ratio():
    assert stratified_mask_counts(4, 4) == [1, 2, 3, 4]
    assert sorted(set(stratified_mask_counts(3, 9))) == [1, 2, 3]


@pytest.mark.parametrize(("length", "n"), [(5, 8), (12, 8), (3, 8), (7, 2)])
def test_stratified_counts_follow_the_uniform_law_when_length_does_not_divide_n(length, n):
    # The law of one count picked among the n draws of one call, over many calls, is exactly
    # uniform on 1..length: an estimator averaging the draws is then unbiased.
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([stratified_mask_counts(length, n, g) for _ in range(20_000)])
    freq = torch.bincount(counts.flatten(), minlength=length + 1)[1:].double() / counts.numel()
    assert freq.sub(1 / length).abs().max() < 0.01, freq


class BayesOptimal:
    """Exact conditionals of one joint distribution over answers of length L in tokens {4, 5}.

    Given a query ``prompt a_1..a_L`` with some ``a_j`` masked, the logits at a masked position are
    ``log p(a_j = v | visible answer tokens)`` under the joint: the prediction depends on how much
    (and which) context is visible, which is where a biased law of the mask count shows. For such a
    model the any-order chain rule makes the masked-diffusion bound's expectation exactly
    ``log p(a)``.
    """

    def __init__(self, length: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.length = length
        self.seqs = torch.tensor(list(itertools.product([0, 1], repeat=length)))  # [2^L, L]
        w = torch.rand(2**length, generator=g, dtype=torch.float64) ** 3 + 1e-3
        self.p = w / w.sum()  # [2^L]

    def logp(self, answer: list[int]) -> float:
        row = (self.seqs + 4 == torch.tensor(answer)).all(1)
        return math.log(float(self.p[row]))

    def __call__(self, ids, attention_mask=None):
        out = torch.zeros(*ids.shape, V, dtype=torch.float64)
        out[:] = -1e30  # only the tokens 4 and 5 are possible answers
        for b in range(ids.shape[0]):
            answer = ids[b, 1 : 1 + self.length]
            visible = answer != MASK
            weight = self.p * (self.seqs[:, visible] + 4 == answer[visible]).all(1)  # [2^L]
            p5 = (weight[:, None] * self.seqs).sum(0) / weight.sum()  # [L] P(a_j = 5 | visible)
            out[b, 1 : 1 + self.length, 4] = torch.log1p(-p5)
            out[b, 1 : 1 + self.length, 5] = torch.log(p5)
        return out


@pytest.mark.parametrize(("length", "seed"), [(3, 0), (5, 1), (6, 2)])
def test_mdm_likelihood_is_unbiased_for_a_bayes_optimal_model(length, seed):
    model = BayesOptimal(length, seed)
    answer = torch.randint(4, 6, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
    exact = model.logp(answer)
    # The reference: the estimator's expectation by enumerating every mask count and every masked
    # subset, in float64. It equals log p(a) (the chain-rule identity), a check on the model above.
    total = 0.0
    for l in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), l))
        for subset in subsets:
            ids = torch.tensor([[9, *answer]])
            ids[0, [1 + j for j in subset]] = MASK
            logp = torch.log_softmax(model(ids)[0], -1)
            term = sum(float(logp[1 + j, answer[j]]) for j in subset)
            total += (length / l) * term / len(subsets) / length
    assert total == pytest.approx(exact, abs=1e-9)
    # The estimator, 8 draws a call (length never divides 8 here), averaged over many calls.
    g = torch.Generator().manual_seed(seed)
    est = torch.cat([mdm_answer_logprob(model, [[9]], [answer], mask_id=MASK, n_samples=8,
                                        generator=g) for _ in range(300)])  # fmt: skip
    stderr = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - exact) < 4 * stderr + 1e-3, (float(est.mean()), exact, stderr)


@pytest.mark.parametrize(("length", "seed"), [(3, 0), (5, 1)])
def test_the_exact_bound_is_log_p_for_a_bayes_optimal_model(length, seed):
    """For conditionals of one joint distribution the bound's expectation is log p(a) (the
    any-order chain rule), so the enumerated expectation must land on it."""
    model = BayesOptimal(length, seed)
    answer = torch.randint(4, 6, (length,), generator=torch.Generator().manual_seed(seed)).tolist()
    got = mdm_exact_bound(model, [[9]], [answer], mask_id=MASK)
    assert got.item() == pytest.approx(model.logp(answer), abs=1e-9)


def test_the_exact_bound_is_what_the_monte_carlo_draws_estimate_on_an_inconsistent_model():
    """A random MDM has no joint: its bound is not log p of anything, and only the estimator's own
    expectation can check it. Reference: every masked set, one forward pass each, weighted by
    hand (L/l over the L counts, uniform over the sets of a count), with a suffix and an EOS
    fill. The Monte-Carlo mean over 400 calls of 8 draws lands on it (4 standard errors), and
    differs from the chain, so the test would notice the two computations swapped."""
    model = _tiny_mdm()
    prompt, answer, suffix, fill = [2, 4], [5, 0, 2], [3], (3, 9)
    length = len(answer)
    expected = 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), count))
        for subset in subsets:
            ids = prompt + answer + suffix
            ids = ids + [fill[0]] * (fill[1] - len(ids))
            for j in subset:
                ids[len(prompt) + j] = 1
            logp = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
            term = sum(logp[len(prompt) + j, answer[j]].item() for j in subset)
            expected += (length / count) * term / len(subsets) / length
    got = mdm_exact_bound(model, [prompt, prompt], [answer, [4, 4, 4]], mask_id=1, suffix=suffix,
                          fill=fill)  # fmt: skip
    assert got[0].item() == pytest.approx(expected, abs=1e-10)
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([mdm_answer_logprob(model, [prompt], [answer], mask_id=1, n_samples=8,
                                          suffix=suffix, fill=fill, generator=g)
                       for _ in range(400)])  # fmt: skip
    stderr = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - expected) < 4 * stderr
    chain = mdm_chain_logprob(model, [prompt], [answer], mask_id=1, suffix=suffix, fill=fill)
    assert abs(chain.item() - expected) > 0.1  # another quantity (0.26 apart here)
    with pytest.raises(ValueError, match="at most 12 tokens"):
        mdm_exact_bound(model, [prompt], [[4] * 13], mask_id=1)


def test_a_prefix_lm_scores_and_generates_each_prefix_alone():
    """A left-to-right model with full attention (the prefix_lm objective) against a float64
    loop: log p(answer) is the sum over k of log p(answer[k] | prompt + answer[:k]), each prefix
    its own forward pass; teacher forcing the whole answer in one row would let the earlier
    answer positions see the later tokens (so the values differ: the test sees a leak). Greedy
    decoding is the loop's argmax, step by step. With causal attention both readings agree."""
    import dataclasses

    from revcurse.config import ModelConfig
    from revcurse.models.transformer import TransformerLM

    torch.manual_seed(0)
    full = TransformerLM(ModelConfig(causal=True, attention="full", n_layers=2, n_heads=2,
                                     d_model=16, init_std=0.3), 20).double().eval()  # fmt: skip
    prompts, answers = [[3, 4, 5], [6, 7], [8]], [[9, 10], [11, 12, 13], [14, 15, 16, 17]]
    got = arm_answer_logprob(full, prompts, answers, batch_rows=3)
    expected, leaked = [], []
    for p, a in zip(prompts, answers, strict=True):
        total = 0.0
        for k in range(len(a)):
            logits = full(torch.tensor([p + a[:k]]))[0, -1]
            total += torch.log_softmax(logits, -1)[a[k]].item()
        expected.append(total)
        whole = torch.log_softmax(full(torch.tensor([p + a]))[0], -1)
        leaked.append(sum(whole[len(p) - 1 + k, a[k]].item() for k in range(len(a))))
    assert got.tolist() == pytest.approx(expected, rel=1e-10)
    assert all(abs(g - w) > 1e-3 for g, w in zip(got.tolist(), leaked, strict=True))
    x = torch.tensor([prompts[0]])
    for _ in range(3):
        x = torch.cat([x, full(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert arm_generate(full, [prompts[0]], 3)[0].tolist() == x[0, 3:].tolist()
    causal = TransformerLM(dataclasses.replace(full.cfg, attention="auto"), 20).double().eval()
    causal.load_state_dict(full.state_dict())
    teacher = arm_answer_logprob(causal, prompts, answers)
    each = []
    for p, a in zip(prompts, answers, strict=True):
        each.append(sum(torch.log_softmax(causal(torch.tensor([p + a[:k]]))[0, -1], -1)[a[k]].item()
                        for k in range(len(a))))  # fmt: skip
    assert teacher.tolist() == pytest.approx(each, rel=1e-10)


def test_likelihoods_unembedding_only_the_read_positions_match_full_logits():
    """TransformerLM unembeds only the answer positions (``where``); behind a plain callable the
    same model's full logits are indexed. Same values (and, for the MDM, the same draws)."""
    from revcurse.config import ModelConfig
    from revcurse.models.transformer import TransformerLM

    prompts, answers = [[3, 4, 5], [6, 7]], [[8, 9], [10, 11, 12]]
    for causal in (True, False):
        torch.manual_seed(0)
        model = TransformerLM(ModelConfig(causal=causal), 20).double().eval()

        def full(ids, attention_mask=None, model=model):
            return model(ids, attention_mask=attention_mask)

        if causal:
            got = [arm_answer_logprob(m, prompts, answers) for m in (model, full)]
        else:
            got = [mdm_answer_logprob(m, prompts, answers, mask_id=1, n_samples=6,
                                      generator=torch.Generator().manual_seed(1), fill=(2, 9))
                   for m in (model, full)]  # fmt: skip
        torch.testing.assert_close(got[0], got[1], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the chain likelihood


def _tiny_mdm(vocab: int = 6):
    from revcurse.config import ModelConfig
    from revcurse.models.transformer import TransformerLM

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, causal=False, init_std=0.5)
    return TransformerLM(cfg, vocab).double().eval()


def test_the_answer_read_in_one_step_is_the_sum_of_its_masked_marginals():
    """mdm_one_step_logprob against a float64 loop: the whole answer masked, each position's
    log-probability of its token, summed (with a suffix and an EOS fill). It is the |S| = L term
    of the exact bound times L, so for a one-token answer the two agree, and for longer ones they
    differ (the bound also reads partly masked answers). The sampler in one step fills the answer
    that maximises it: no other answer of that length scores higher."""
    model = _tiny_mdm()
    prompt, suffix, fill = [2, 4], [5], (3, 9)
    answers = [list(a) for a in itertools.product(range(6), repeat=2)]
    got = mdm_one_step_logprob(model, [prompt] * len(answers), answers, mask_id=1,
                               suffix=suffix, fill=fill)  # fmt: skip
    masked = torch.tensor([prompt + [1, 1] + suffix + [3] * 4])  # the fill up to 9 tokens
    logp = torch.log_softmax(model(masked)[0], -1)  # [9, V]
    expected = [logp[2, a[0]].item() + logp[3, a[1]].item() for a in answers]
    assert got.tolist() == pytest.approx(expected, rel=1e-10)
    one = [[a] for a in range(6)]
    torch.testing.assert_close(
        mdm_one_step_logprob(model, [prompt] * 6, one, mask_id=1, suffix=suffix, fill=fill),
        mdm_exact_bound(model, [prompt] * 6, one, mask_id=1, suffix=suffix, fill=fill),
    )  # fmt: skip
    bound = mdm_exact_bound(model, [prompt] * len(answers), answers, mask_id=1, suffix=suffix,
                            fill=fill)  # fmt: skip
    assert (bound - got).abs().max() > 1e-3
    filled = mdm_generate(model, [prompt], 2, mask_id=1, pad_id=0, steps=1, suffix=suffix,
                          fill=fill)[0].tolist()  # fmt: skip
    assert got[answers.index(filled)] == got.max()


def test_mdm_chain_logprob_is_a_normalised_distribution_over_answers():
    """Summed over every answer of a length (6**3 of them), exp(chain) is 1: the chain is a proper
    distribution, with a suffix and an EOS fill. The Monte-Carlo bound of the same random,
    inconsistent model is not (its conditionals have no joint), which is what this estimator
    fixes; the test checks that too, so it fails if the two were the same computation."""
    model = _tiny_mdm()
    answers = [list(a) for a in itertools.product(range(6), repeat=3)]
    prompts = [[2, 4]] * len(answers)
    chain = mdm_chain_logprob(model, prompts, answers, mask_id=1, suffix=[5], fill=(3, 9))
    assert chain.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    elbo = mdm_answer_logprob(model, prompts, answers, mask_id=1, suffix=[5], fill=(3, 9),
                              n_samples=3, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert abs(elbo.exp().sum().item() - 1.0) > 0.05


def test_mdm_chain_logprob_against_a_step_by_step_reference():
    """An independent loop: reveal the answer left to right, one forward pass per step, and add
    log p of the next token at its position (float64 model)."""
    model = _tiny_mdm()
    prompt, answer, suffix = [2, 4, 0], [5, 0, 2, 4], [3]
    ids = prompt + [1] * len(answer) + suffix
    expected = 0.0
    for t, token in enumerate(answer):
        logits = model(torch.tensor([ids]))[0, len(prompt) + t]
        expected += torch.log_softmax(logits, -1)[token].item()
        ids[len(prompt) + t] = token
    got = mdm_chain_logprob(model, [prompt], [answer], mask_id=1, suffix=suffix)
    assert got.item() == pytest.approx(expected, abs=1e-10)
    # one token: the chain and the Monte-Carlo bound are both exactly log p(a | prompt [M] suffix)
    one = mdm_chain_logprob(model, [prompt], [[5]], mask_id=1, suffix=suffix)
    bound = mdm_answer_logprob(model, [prompt], [[5]], mask_id=1, suffix=suffix, n_samples=2)
    assert one.item() == pytest.approx(bound.item(), abs=1e-10)


# --------------------------------------------------------------------------------------------------
# LLaDA's sampler options against a one-row transcription of its algorithm (full logits)
# --------------------------------------------------------------------------------------------------


def llada_loop(model, prompt, gen_length, steps, block_length, cfg_scale=0.0, dtype=None,
               banned=(), unconfident=()):  # fmt: skip
    """LLaDA's ``generate`` for one prompt, step by step over the full ``[1, L, V]`` logits:
    guidance over the whole sequence, argmax everywhere, confidence from the softmax of every
    position, positions outside the block and unmasked ones at -inf, top-k committed."""
    x = torch.tensor([list(prompt) + [MASK] * gen_length])
    given = x != MASK
    n_blocks = gen_length // block_length
    for b in range(n_blocks):
        hi = len(prompt) + (b + 1) * block_length
        for k in transfer_counts(block_length, steps // n_blocks):
            logits = model(x)
            if cfg_scale > 0:
                un = model(x.masked_fill(given, MASK))
                logits = un + (cfg_scale + 1) * (logits - un)
            logits = logits.clone()
            logits[..., list(banned)] = -math.inf
            x0 = logits.argmax(-1)
            scored = logits.clone()
            scored[..., list(unconfident)] = -math.inf
            p = torch.softmax(scored.to(dtype) if dtype else scored.double(), dim=-1)
            conf = p.gather(-1, x0[..., None])[..., 0].double()
            conf[:, hi:] = -math.inf
            conf = torch.where(x == MASK, conf, torch.tensor(-math.inf, dtype=torch.float64))
            chosen = conf[0].topk(k).indices
            x[0, chosen] = x0[0, chosen]
    return x[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cfg_scale": 1.5},
        {"steps": 4, "block_length": 4},
        {"banned": [EOS]},
        {"unconfident": [EOS, 4]},
        {"cfg_scale": 0.5, "block_length": 2, "banned": [EOS], "unconfident": [EOS, 4]},
    ],
)
def test_llada_sampler_options_match_its_algorithm_on_a_random_llada(options):
    from revcurse.models import hf

    model = hf.build_tiny("llada", V, hf.TinyShape(hidden_size=32, n_layers=2), seed=3).eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, V, (n,), generator=gen).tolist() for n in (3, 5, 5, 2)]
    steps, block = options.pop("steps", 8), options.pop("block_length", 8)
    ours = mdm_generate(model, prompts, 8, mask_id=MASK, pad_id=PAD, steps=steps,
                        block_length=block, batch_size=3, **options)  # fmt: skip
    for prompt, row in zip(prompts, ours.tolist(), strict=True):
        assert row == llada_loop(model, prompt, 8, steps, block, **options)


def test_bf16_confidences_follow_the_models_dtype():
    # Confidences 0.998, 0.9991, 0.9997, 0.9999 are distinct in float64 but three of them are 1.0
    # in bf16: which position is committed first depends on the dtype of the softmax.
    logits = torch.zeros(6, V, dtype=torch.bfloat16)
    for j, (token, value) in enumerate(zip([10, 11, 12, 13], [9.0, 10.0, 11.0, 12.0], strict=True)):
        logits[2 + j, token] = value
    model = lambda ids, attention_mask=None: logits[: ids.shape[1]].expand(ids.shape[0], -1, -1)  # noqa: E731
    traces = {}
    for dtype in ("model", "float64"):
        traces[dtype] = []
        out = mdm_generate(model, [[9, 9]], 4, mask_id=MASK, pad_id=PAD, confidence_dtype=dtype,
                           trace=traces[dtype])  # fmt: skip
        assert out.tolist() == [[10, 11, 12, 13]]
    assert committed_order(traces["float64"], 2, 4) == [[3], [2], [1], [0]]
    assert committed_order(traces["model"], 2, 4) != committed_order(traces["float64"], 2, 4)
    reference = llada_loop(model, [9, 9], 4, 4, 4, dtype=torch.bfloat16)
    assert reference == [10, 11, 12, 13]


def test_suppressed_end_tokens_are_never_predicted_or_committed_last():
    # Answer slot 1 (position 3) predicts EOS, more confidently than the others predict 10.
    logits = torch.zeros(6, V)
    logits[:, 10] = 5.0
    logits[3, EOS] = 12.0
    model = lambda ids, attention_mask=None: logits[: ids.shape[1]].expand(ids.shape[0], -1, -1)  # noqa: E731
    banned = mdm_generate(model, [[9, 9]], 4, mask_id=MASK, pad_id=PAD, banned=[EOS])
    assert banned.tolist() == [[10] * 4]
    plain: list[torch.Tensor] = []
    out = mdm_generate(model, [[9, 9]], 4, mask_id=MASK, pad_id=PAD, trace=plain)
    assert out.tolist() == [[10, EOS, 10, 10]]
    assert committed_order(plain, 2, 4)[0] == [1]  # the confident EOS first ...
    late: list[torch.Tensor] = []
    out = mdm_generate(model, [[9, 9]], 4, mask_id=MASK, pad_id=PAD, unconfident=[EOS],
                       trace=late)  # fmt: skip
    assert out.tolist() == [[10, EOS, 10, 10]]
    assert committed_order(late, 2, 4)[-1] == [1]  # ... or last, its confidence suppressed


def test_random_remasking_commits_in_a_seeded_random_order():
    model = FixedConfidence([9, 9, 10, 11, 12, 13], [0, 0, 1.0, 4.0, 2.0, 8.0])
    orders = set()
    for seed in range(6):
        trace: list[torch.Tensor] = []
        out = mdm_generate(model, [[9, 9]], 4, mask_id=MASK, pad_id=PAD, remasking="random",
                           generator=torch.Generator().manual_seed(seed), trace=trace)  # fmt: skip
        assert out.tolist() == [[10, 11, 12, 13]]
        orders.add(tuple(map(tuple, committed_order(trace, 2, 4))))
    assert len(orders) > 1  # not the one low-confidence order


# --------------------------------------------------------------------------------------------------
# Dream's sampler against a one-row transcription of its loop (full logits)
# --------------------------------------------------------------------------------------------------


def dream_loop(model, prompt, gen_length, steps, alg, eps=1e-3):
    """Dream's ``diffusion_generate`` for one prompt at temperature 0, over full ``[1, L, V]``
    logits (already realigned): per step, the masked positions' predictions and confidences, and
    ``int(m * (1 - s / t))`` of them committed by top confidence (all at the last step)."""
    x = torch.tensor([list(prompt) + [MASK] * gen_length])
    times = torch.linspace(1, eps, steps + 1, dtype=torch.float64)
    for i in range(steps):
        masked = x[0] == MASK
        probs = torch.softmax(model(x)[0][masked], dim=-1)
        conf, pred = probs.max(dim=-1)
        if alg == "topk_margin":
            top2 = probs.sort(dim=-1, descending=True).values
            conf = top2[:, 0] - top2[:, 1]
        elif alg == "entropy":
            conf = (probs * torch.log(probs + 1e-10)).sum(-1)
        m = int(masked.sum())
        k = int(m * (1 - float(times[i + 1] / times[i]))) if i < steps - 1 else m
        if k:
            new = torch.full((m,), MASK)
            top = conf.topk(k).indices
            new[top] = pred[top]
            x[0, masked] = new
    return x[0, len(prompt) :].tolist()


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("steps", [8, 3])
def test_dream_sampler_matches_its_loop(alg, steps):
    from revcurse.decoding import dream_generate
    from revcurse.models import hf

    model = hf.build_tiny("llada", V, hf.TinyShape(hidden_size=32, n_layers=2), seed=5).eval()
    with torch.no_grad():  # sharper weights: predictions depend on what is already committed
        for p in model.parameters():
            p.mul_(8.0)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, V, (n,), generator=gen).tolist() for n in (3, 5, 4)]
    ours = dream_generate(model, prompts, 8, mask_id=MASK, pad_id=PAD, steps=steps, alg=alg,
                          batch_size=2)  # fmt: skip
    for prompt, row in zip(prompts, ours.tolist(), strict=True):
        assert row == dream_loop(model, prompt, 8, steps, alg)
        assert MASK not in row


def test_dream_origin_and_sampled_transfers_are_seeded_and_complete():
    from revcurse.decoding import dream_generate
    from revcurse.models import hf

    model = hf.build_tiny("llada", V, hf.TinyShape(hidden_size=32), seed=5).eval()
    prompts = [[5, 6, 7], [8, 9]]
    for options in ({"alg": "origin"}, {"alg": "entropy", "alg_temp": 0.5},
                    {"alg": "maskgit_plus", "temperature": 0.7, "top_p": 0.9, "top_k": 5}):  # fmt: skip
        runs = [dream_generate(model, prompts, 6, mask_id=MASK, pad_id=PAD, steps=4,
                               generator=torch.Generator().manual_seed(s), **options)
                for s in (0, 0)]  # fmt: skip
        assert torch.equal(runs[0], runs[1]) and MASK not in runs[0].flatten().tolist()


def nucleus_loop(logits: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """Dream's top-p then top-k filter, one row at a time in float64, as its docs state it: walk
    the tokens from the most probable down and keep each while the mass *before* it has not
    passed top_p (so the token that crosses top_p is kept, and the first always is); then keep
    the k most probable of those. Returns the filtered distribution ``[N, V]``."""
    out = torch.zeros(logits.shape, dtype=torch.float64)
    for n, row in enumerate(logits.double()):
        probs = torch.softmax(row, 0)
        keep = set()
        before = 0.0
        for token in sorted(range(len(row)), key=lambda t: -float(row[t])):
            if keep and before > top_p:
                break
            keep.add(token)
            before += float(probs[token])
        if 0 < top_k < len(keep):  # the k most probable of those kept
            bar = sorted((float(row[t]) for t in keep), reverse=True)[top_k - 1]
            keep = {t for t in keep if float(row[t]) >= bar}
        kept = torch.tensor(sorted(keep))
        out[n, kept] = torch.softmax(row[kept], 0)
    return out


@pytest.mark.parametrize(("top_p", "top_k"), [(0.9, 0), (0.5, 0), (0.3, 0), (0.95, 3), (1.0, 2)])
def test_dream_nucleus_filter_against_a_transcription(top_p, top_k):
    """The confidences Dream's sampler reads (the top probability, and the negative entropy) after
    its nucleus / top-k filter, against :func:`nucleus_loop`: keeping one token too few or too
    many changes the renormalised distribution and so both confidences; at T > 0 every draw
    falls in the kept set."""
    from revcurse.decoding import _dream_tokens

    logits = torch.randn(64, 12, generator=torch.Generator().manual_seed(4)) * 2
    want = nucleus_loop(logits, top_p, top_k)  # [N, V]
    conf, pred = _dream_tokens(logits, "maskgit_plus", 0.0, top_p, top_k, None)
    torch.testing.assert_close(conf.double(), want.max(-1).values, rtol=1e-5, atol=1e-6)
    assert torch.equal(pred, logits.argmax(-1))
    entropy, _ = _dream_tokens(logits, "entropy", 0.0, top_p, top_k, None)
    expected = (want * torch.log(want + 1e-10)).sum(-1)
    torch.testing.assert_close(entropy.double(), expected, rtol=1e-4, atol=1e-5)
    _, drawn = _dream_tokens(logits, "maskgit_plus", 1.0, top_p, top_k,
                             torch.Generator().manual_seed(0))  # fmt: skip
    assert bool((want[torch.arange(64), drawn] > 0).all())


# ---------------------------------------------------------------- batched likelihoods


class Counting:
    """A model that counts its forward passes and the rows each one read."""

    def __init__(self, model) -> None:
        self.model, self.rows = model, []
        self.selects_positions = True

    def __call__(self, ids, attention_mask=None, where=None):
        self.rows.append(ids.shape[0])
        return self.model(ids, attention_mask=attention_mask, where=where)


SCORERS = {
    "arm": lambda m, p, a, s, k: arm_answer_logprob(m, p, a, batch_rows=k),
    "mc": lambda m, p, a, s, k: mdm_answer_logprob(
        m,
        p,
        a,
        mask_id=1,
        n_samples=5,
        suffix=s,
        generator=torch.Generator().manual_seed(3),
        batch_rows=k,
    ),  # fmt: skip
    "exact": lambda m, p, a, s, k: mdm_exact_bound(m, p, a, mask_id=1, suffix=s, batch_rows=k),
    "chain": lambda m, p, a, s, k: mdm_chain_logprob(m, p, a, mask_id=1, suffix=s, batch_rows=k),
}


@pytest.mark.parametrize("scorer", list(SCORERS))
def test_scoring_many_rows_per_forward_gives_each_rows_own_value(scorer):
    """Rows of every answer share forward passes (padded to the longest, the padding hidden by
    the attention mask): each answer's score equals the one read a row per forward pass, and a
    pass never reads more than ``batch_rows`` rows. Prompts, answers and suffixes of different
    lengths, so the batches really are padded; float64 weights, so equality is to rounding."""
    from revcurse.config import ModelConfig
    from revcurse.models.transformer import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(causal=scorer == "arm"), 20).double().eval()
    prompts = [[3, 4, 5], [6, 7], [8], [9, 10, 11, 12]]
    answers = [[8, 9], [10, 11, 12], [13], [14, 15, 16, 17]]
    suffixes = [] if scorer == "arm" else [[2], [], [2, 5, 6], [4]]
    one_by_one = Counting(model)
    slow = SCORERS[scorer](one_by_one, prompts, answers, suffixes, 1)
    batched = Counting(model)
    fast = SCORERS[scorer](batched, prompts, answers, suffixes, 3 if scorer == "arm" else 7)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    n_rows = sum(one_by_one.rows)
    assert set(one_by_one.rows) == {1} and n_rows > 3  # every answer's rows were read
    k = 3 if scorer == "arm" else 7
    assert batched.rows == [k] * (n_rows // k) + ([n_rows % k] if n_rows % k else [])


@pytest.mark.parametrize("name", ["llama", "qwen2", "llada"])
def test_batched_scores_of_hugging_face_models_match_one_row_at_a_time(name):
    """The same on tiny random Hugging Face models behind revcurse's wrapper (right padding and
    their own attention masks; float32, so equal to float rounding)."""
    from revcurse.models import hf

    shape = hf.TinyShape(hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48)
    model = hf.build_tiny(name, 40, shape).eval()
    prompts = [[3, 4, 5, 6, 7], [6, 7], [8, 30, 31]]
    answers = [[8, 9], [10, 11, 12, 13, 14], [13]]
    scorer = SCORERS["arm" if name != "llada" else "mc"]
    suffixes = [] if name != "llada" else [[2], [], [5, 6]]
    slow = scorer(model, prompts, answers, suffixes, 1)
    fast = scorer(model, prompts, answers, suffixes, 64)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-4)


def test_scoring_reports_every_row_it_reads_while_counted():
    """counting_rows: each forward pass of a scorer reports its rows, so a progress bar sees them
    all (3 answers x 5 draws = 15 rows in passes of at most 4), and nothing outside the block."""
    from revcurse.decoding import counting_rows

    model = _tiny_mdm()
    seen: list[int] = []
    with counting_rows(seen.append):
        mdm_answer_logprob(model, [[2], [3], [4]], [[1, 2], [3], [4, 5]], mask_id=1,
                           n_samples=5, generator=torch.Generator().manual_seed(0),
                           batch_rows=4)  # fmt: skip
    assert sum(seen) == 15 and max(seen) == 4
    mdm_answer_logprob(model, [[2]], [[3]], mask_id=1, n_samples=2,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert sum(seen) == 15


def test_scoring_a_share_of_the_answers_gives_their_values_in_the_full_call():
    """keep: the Monte-Carlo bound of the kept answers is what one call over all of them gives
    (every answer's masks are still drawn in order), the others are NaN; a process scoring its
    share of a split therefore reproduces one process's numbers."""
    model = _tiny_mdm()
    prompts, answers = [[2], [3], [4], [5]], [[1, 2], [3], [4, 5, 2], [2, 2]]
    full = mdm_answer_logprob(model, prompts, answers, mask_id=1, n_samples=3,
                              generator=torch.Generator().manual_seed(7), batch_rows=5)  # fmt: skip
    keep = [False, True, False, True]
    share = mdm_answer_logprob(model, prompts, answers, mask_id=1, n_samples=3,
                               generator=torch.Generator().manual_seed(7), batch_rows=5,
                               keep=keep)  # fmt: skip
    assert torch.isnan(share[[0, 2]]).all()
    torch.testing.assert_close(share[[1, 3]], full[[1, 3]], rtol=0, atol=1e-9)
