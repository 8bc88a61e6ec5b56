"""Toy evaluation against hand-built logits: strict, candidate and mirror accuracy, log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from revcurse.config import ToyDataConfig
from revcurse.data.tokenize import Vocab
from revcurse.data.toy import build_toy
from revcurse.evaluation import evaluate


def by_hand(vocab: Vocab, queries, causal: bool) -> tuple[torch.Tensor, list[int]]:
    """What a model is asked: ``prompt [MASK] suffix`` (MDM) or ``prompt`` (ARM), and the position
    whose logits score the answer (toy queries of one direction have one length: no padding)."""
    if causal:
        rows = [vocab.encode(q.prompt) for q in queries]
        return torch.tensor(rows), [len(q.prompt) - 1 for q in queries]
    rows = [vocab.encode(q.prompt) + [vocab.mask_id] + vocab.encode(q.suffix) for q in queries]
    return torch.tensor(rows), [len(q.prompt) for q in queries]


class Scripted(torch.nn.Module):
    """Returns, at each query's scored position, logits set by hand per (direction, fact)."""

    def __init__(self, causal: bool, vocab: Vocab, dataset, scores) -> None:
        super().__init__()
        self.causal, self.vocab = causal, vocab
        self.by_input: dict[tuple[int, ...], torch.Tensor] = {}
        for direction, queries in dataset.queries.items():
            if causal and direction == "mirror":
                continue
            ids, pos = by_hand(vocab, queries, causal)
            for q, row, p in zip(queries, ids, pos, strict=True):
                logits = torch.zeros(ids.shape[1], len(vocab))
                for token, value in scores(direction, q).items():
                    logits[p, vocab.index[token]] = value
                self.by_input[tuple(row.tolist())] = logits

    def forward(self, ids, attention_mask=None):
        return torch.stack([self.by_input[tuple(r.tolist())] for r in ids])


def test_strict_candidate_and_mirror_accuracy_against_hand_counts():
    dataset = build_toy(ToyDataConfig(n_pairs=4, shuffle_pairs=False, n_filler=1))
    vocab = Vocab.from_dataset(dataset)

    def scores(direction, q):
        answer = q.answer[0]
        wrong = "a1" if answer != "a1" else "a2"
        if direction == "forward":  # facts 0-2 right; fact 3 answers a filler (a non-candidate)
            return {answer: 5.0} if q.fact < 3 else {"<f0>": 9.0, answer: 5.0}
        if direction == "mirror":  # facts 0, 1 right; 2, 3 wrong among the candidates too
            return {answer: 5.0} if q.fact < 2 else {wrong: 5.0}
        # reverse: never strictly right (a filler wins), but the answer leads the candidates
        # for facts 0 and 1
        return {"<f0>": 9.0, answer: 5.0} if q.fact < 2 else {"<f0>": 9.0, wrong: 5.0}

    got = evaluate(Scripted(False, vocab, dataset, scores), dataset, vocab)
    assert got["forward_accuracy"] == 0.75 and got["forward_candidate_accuracy"] == 1.0
    assert got["mirror_accuracy"] == 0.5 and got["mirror_candidate_accuracy"] == 0.5
    assert got["reverse_accuracy"] == 0.0 and got["reverse_candidate_accuracy"] == 0.5
    assert got["correct"]["reverse"] == [False] * 4
    assert got["correct"]["mirror"] == [True, True, False, False]
    # log p of the answer, reverse fact 0: logits 9 (filler), 5 (answer), 0 elsewhere.
    V = len(vocab)
    lp0 = 5 - math.log(math.exp(9) + math.exp(5) + (V - 2))
    lp2 = 0 - math.log(math.exp(9) + math.exp(5) + (V - 2))
    assert got["reverse_answer_logprob"] == pytest.approx((2 * lp0 + 2 * lp2) / 4, rel=1e-6)
    assert got["reverse_chance"] == 0.25


def test_a_causal_model_is_not_asked_the_mirror_query():
    dataset = build_toy(ToyDataConfig(n_pairs=4, shuffle_pairs=False))
    vocab = Vocab.from_dataset(dataset)
    got = evaluate(Scripted(True, vocab, dataset, lambda d, q: {q.answer[0]: 1.0}), dataset, vocab)
    assert got["forward_accuracy"] == 1.0 and got["reverse_accuracy"] == 1.0
    assert got["mirror_accuracy"] is None and "mirror" not in got["correct"]
