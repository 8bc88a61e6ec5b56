"""Text evaluation end to end with a model that knows the answers, and one that does not."""

from __future__ import annotations

import torch

from revcurse.config import DecodeConfig
from revcurse.data.schema import TextPair
from revcurse.data.text import WordTokenizer
from revcurse.text_evaluation import evaluate_split, rescore, save_generations

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
