"""Text evaluation end to end with a model that knows the answers, and one that does not."""

from __future__ import annotations

import pytest
import torch

from revcurse.config import DecodeConfig
from revcurse.data.schema import TextPair
from revcurse.data.text import WordTokenizer
from revcurse.evaluation import evaluate_split, rescore, save_generations

PAIRS = [
    TextPair("Who is A's mother?", " Mary Ann"),
    TextPair("Who is B's mother?", " Jo Lee"),
    TextPair("Who is C's mother?", " Kim Wu"),
]


class Oracle:
    """Fills each answer slot with the right word with high confidence (prompt-dependent), and
    predicts EOS after the answer: a bidirectional 'model' whose outputs are known exactly."""

    def __init__(self, tok: WordTokenizer) -> None:
        self.tok = tok
        self.answers = {tuple(tok.encode(p.prompt)): tok.encode(p.completion) + [tok.eos_id]
                        for p in PAIRS}  # fmt: skip

    def __call__(self, ids, attention_mask=None):
        logits = torch.zeros(*ids.shape, len(self.tok))
        for b, row in enumerate(ids.tolist()):
            for n_prompt in range(1, len(row) + 1):
                answer = self.answers.get(tuple(row[:n_prompt]))
                if answer:
                    for j in range(n_prompt, len(row)):
                        want = (
                            answer[j - n_prompt] if j - n_prompt < len(answer) else self.tok.eos_id
                        )
                        logits[b, j, want] = 8.0
                    break
        return logits


def test_oracle_gets_everything_right_and_records_round_trip(tmp_path):
    tok = WordTokenizer.fit([p.prompt + p.completion for p in PAIRS])
    metrics, records = evaluate_split(Oracle(tok), tok, PAIRS, causal=False,
                                      settings=DecodeConfig(gen_length=4, n_distractors=2, n_mc=4),
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [r["generation"] for r in records] == ["Mary Ann", "Jo Lee", "Kim Wu"]
    assert metrics["exact"] == metrics["prefix"] == metrics["substring"] == 1.0
    assert metrics["likelihood_top1"] == 1.0 and metrics["chance_top1"] == 1 / 3
    save_generations(tmp_path / "g.jsonl", records)
    assert rescore(tmp_path / "g.jsonl") == records


@pytest.mark.parametrize("options", [{"sampler": "dream", "alg": "entropy"},
                                     {"sampler": "dream", "alg": "origin"},
                                     {"cfg_scale": 1.0, "suppress_eos_confidence": True,
                                      "batch_size": 2}])  # fmt: skip
def test_every_sampler_reads_the_oracle(options):
    tok = WordTokenizer.fit([p.prompt + p.completion for p in PAIRS])
    settings = DecodeConfig(gen_length=4, n_distractors=2, n_mc=2, **options)
    metrics, records = evaluate_split(Oracle(tok), tok, PAIRS, causal=False, settings=settings,
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [r["generation"] for r in records] == ["Mary Ann", "Jo Lee", "Kim Wu"]
    mirror = [TextPair("Who is", " A", suffix="'s mother? Mary Ann")]
    if options.get("sampler") == "dream":
        with pytest.raises(ValueError, match="eval.sampler=llada"):
            evaluate_split(Oracle(tok), tok, mirror, causal=False, settings=settings,
                           generator=torch.Generator())  # fmt: skip


def test_uninformed_model_scores_low():
    tok = WordTokenizer.fit([p.prompt + p.completion for p in PAIRS])

    def uniform(ids, attention_mask=None):
        return torch.zeros(*ids.shape, len(tok))

    metrics, records = evaluate_split(uniform, tok, PAIRS, causal=True,
                                      settings=DecodeConfig(gen_length=3, n_distractors=2),
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert metrics["exact"] == 0.0
    # equal likelihoods: ties count against the correct answer, so it is never ranked first
    assert metrics["likelihood_top1"] == 0.0 and all(r["rank"] == 3 for r in records)


def test_distractors_are_other_answers_never_a_copy_of_the_right_one():
    """Two queries share an answer: ranking it against itself would be a tie (counted as a loss)
    and sink a perfect model's likelihood score."""
    pairs = [*PAIRS, TextPair("Who is D's mother?", " Mary Ann")]
    tok = WordTokenizer.fit([p.prompt + p.completion for p in pairs])
    oracle = Oracle(tok)
    oracle.answers[tuple(tok.encode(pairs[3].prompt))] = tok.encode(" Mary Ann") + [tok.eos_id]
    for seed in range(5):
        metrics, records = evaluate_split(oracle, tok, pairs, causal=False,
                                          settings=DecodeConfig(gen_length=4, n_distractors=9),
                                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
        assert metrics["likelihood_top1"] == 1.0
        assert all(r["n_candidates"] == 3 for r in records)  # 3 distinct answers in the split


def test_likelihood_scores_and_ranks_against_an_exact_bigram_model():
    """A causal bigram model: the logits after token t are row t of a fixed table, so the log-prob
    of any answer is a sum written out by hand. Every candidate's score, and each query's rank
    among its candidates, is checked against that reference (ranks 1..4 all occur)."""
    pairs = [TextPair(f"Who is {c}'s mother?", f" {m}") for c, m in
             [("A", "Mary Ann"), ("B", "Jo Lee"), ("C", "Kim Wu"), ("D", "Ed Po"), ("E", "Al Ng")]]  # fmt: skip
    tok = WordTokenizer.fit([p.prompt + p.completion for p in pairs])
    table = torch.randn(len(tok), len(tok), generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64) * 3  # fmt: skip

    def bigram(ids, attention_mask=None):
        return table[ids]  # [B, L, V]: logits after each token

    metrics, records = evaluate_split(bigram, tok, pairs, causal=True,
                                      settings=DecodeConfig(gen_length=2, n_distractors=3),
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip

    def exact(prompt: str, answer: str) -> float:
        ids = tok.encode(prompt) + tok.encode(answer) + [tok.eos_id]
        n = len(tok.encode(prompt))
        logp = torch.log_softmax(table, dim=-1)
        return sum(float(logp[ids[j - 1], ids[j]]) for j in range(n, len(ids)))

    ranks = set()
    for p, r in zip(pairs, records, strict=True):
        assert r["candidates"][0] == p.completion and len(set(r["candidates"])) == 4
        want = [exact(p.prompt, c) for c in r["candidates"]]
        assert r["candidate_logprobs"] == [pytest.approx(w, abs=1e-9) for w in want]
        assert r["rank"] == 1 + sum(w >= want[0] for w in want[1:])
        ranks.add(r["rank"])
    assert len(ranks) >= 2  # not only the extremes
    assert metrics["likelihood_top1"] == sum(r["rank"] == 1 for r in records) / len(records)
    # an ARM's likelihood is already a left-to-right chain: both ranks are one quantity
    assert all(r["candidate_chain_logprobs"] == r["candidate_logprobs"] for r in records)
    assert metrics["chain_top1"] == metrics["likelihood_top1"]


def test_infilling_queries_fill_between_prompt_and_suffix():
    """Mirror queries: the oracle below knows each answer only from the text *after* it."""
    tok = WordTokenizer.fit(["x Mary Ann is the mother of A .", "x Jo Lee is the mother of B .",
                             "x Kim Wu is the mother of C ."])  # fmt: skip
    pairs = [TextPair("x", f" {m}", suffix=f" is the mother of {c} .")
             for m, c in [("Mary Ann", "A"), ("Jo Lee", "B"), ("Kim Wu", "C")]]  # fmt: skip
    by_child = {tok.encode(c)[0]: tok.encode(m) for m, c in
                [("Mary Ann", "A"), ("Jo Lee", "B"), ("Kim Wu", "C")]}  # fmt: skip

    def oracle(ids, attention_mask=None):
        logits = torch.zeros(*ids.shape, len(tok))
        for b, row in enumerate(ids.tolist()):
            child = next(t for t in row if t in by_child)
            for j, t in enumerate(by_child[child]):
                logits[b, 1 + j, t] = 8.0
        return logits

    metrics, records = evaluate_split(oracle, tok, pairs, causal=False,
                                      settings=DecodeConfig(gen_length=6, n_distractors=2, n_mc=2),
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [r["generation"] for r in records] == ["Mary Ann", "Jo Lee", "Kim Wu"]
    assert all(r["answer_length_given"] for r in records)
    assert metrics["exact"] == 1.0 and metrics["likelihood_top1"] == 1.0
    assert metrics["chain_top1"] == 1.0
    with pytest.raises(ValueError, match="causal model cannot be asked infilling"):
        evaluate_split(oracle, tok, pairs, causal=True, settings=DecodeConfig(),
                       generator=torch.Generator())  # fmt: skip


def test_likelihood_and_chain_ranks_each_count_their_own_scores(monkeypatch):
    """An MDM's two rankings come from two estimators (the Monte-Carlo bound, the chain
    likelihood). Both are replaced here by hand-set tables that disagree, so each published rate
    must follow its own table: by the bound the right answers rank 1, 2, 3 (likelihood top-1 1/3,
    mean rank 2), by the chain 3, 1, 1 (chain top-1 2/3). Counting one rank for the other, or
    top-2 for top-1, fails."""
    import revcurse.evaluation as E

    tok = WordTokenizer.fit([p.prompt + p.completion for p in PAIRS])
    query_of = {tuple(tok.encode(p.prompt)): i for i, p in enumerate(PAIRS)}
    answer_of = {tok.encode(p.completion)[0]: i for i, p in enumerate(PAIRS)}
    # [query, answer]: the score of each answer as that query's candidate (right one on the diagonal)
    bound = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.5, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    chain = torch.tensor([[-1.0, 1.0, 0.0], [1.0, 2.0, 0.0], [1.0, 0.0, 2.0]], dtype=torch.float64)

    def table(values):
        def score(model, prompts, cands, **kw):
            return torch.tensor([float(values[query_of[tuple(p)], answer_of[c[0]]])
                                 for p, c in zip(prompts, cands, strict=True)],
                                dtype=torch.float64)  # fmt: skip

        return score

    monkeypatch.setattr(E, "mdm_answer_logprob", table(bound))
    monkeypatch.setattr(E, "mdm_chain_logprob", table(chain))
    metrics, records = evaluate_split(Oracle(tok), tok, PAIRS, causal=False,
                                      settings=DecodeConfig(gen_length=4, n_distractors=2, n_mc=4),
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [r["rank"] for r in records] == [1, 2, 3]
    assert [r["chain_rank"] for r in records] == [3, 1, 1]
    assert metrics["likelihood_top1"] == pytest.approx(1 / 3)
    assert metrics["chain_top1"] == pytest.approx(2 / 3)
    assert metrics["mean_rank"] == pytest.approx(2.0)
    assert [r["logprob"] for r in records] == [2.0, 0.5, -1.0]
