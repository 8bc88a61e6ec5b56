"""Toy evaluation against hand-built logits: strict, candidate and mirror accuracy, log-probs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
        # the query's second candidate (its first other one): a model answering it is wrong, for
        # strict accuracy as for top-1 among the candidates
        wrong = next(c for c in dataset.candidates[direction] if c != q.answer)[0]
        if direction == "forward":  # facts 0-2 right; fact 3 answers a filler (a non-candidate)
            return {answer: 5.0} if q.fact < 3 else {"<f0>": 9.0, answer: 5.0}
        if direction == "mirror":  # facts 0, 1 right; 2, 3 wrong among the candidates too
            return {answer: 5.0} if q.fact < 2 else {wrong: 5.0}
        # reverse: never strictly right (a filler wins), but the answer leads the candidates
        # for facts 0 and 1 and comes second, strictly, for facts 2 and 3 (not top-1)
        return {"<f0>": 9.0, answer: 5.0} if q.fact < 2 else {"<f0>": 9.0, wrong: 5.0, answer: 3.0}

    got = evaluate(Scripted(False, vocab, dataset, scores), dataset, vocab)
    assert got["forward_accuracy"] == 0.75 and got["forward_candidate_accuracy"] == 1.0
    assert got["mirror_accuracy"] == 0.5 and got["mirror_candidate_accuracy"] == 0.5
    assert got["reverse_accuracy"] == 0.0 and got["reverse_candidate_accuracy"] == 0.5
    assert got["correct"]["reverse"] == [False] * 4
    assert got["correct"]["mirror"] == [True, True, False, False]
    # log p of the answer, reverse fact 0: logits 9 (filler), 5 (answer), 0 elsewhere.
    V = len(vocab)
    lp0 = 5 - math.log(math.exp(9) + math.exp(5) + (V - 2))
    lp2 = 3 - math.log(math.exp(9) + math.exp(5) + math.exp(3) + (V - 3))
    assert got["reverse_answer_logprob"] == pytest.approx((2 * lp0 + 2 * lp2) / 4, rel=1e-6)
    assert got["reverse_chance"] == 0.25


def test_a_causal_model_is_not_asked_the_mirror_query():
    dataset = build_toy(ToyDataConfig(n_pairs=4, shuffle_pairs=False))
    vocab = Vocab.from_dataset(dataset)
    got = evaluate(Scripted(True, vocab, dataset, lambda d, q: {q.answer[0]: 1.0}), dataset, vocab)
    assert got["forward_accuracy"] == 1.0 and got["reverse_accuracy"] == 1.0
    assert got["mirror_accuracy"] is None and "mirror" not in got["correct"]


@pytest.mark.parametrize("causal", [False, True])
def test_multi_token_toy_answers_match_a_hand_decoding_loop(causal):
    """Two-token entities take the general path: an ARM's answer is greedy decoding, an MDM's the
    sampler filling one token per step (the most confident masked slot first); both checked
    against a loop written here from the model's logits, and the paraphrase queries the fact
    never trained in are evaluated too."""
    from conftest import tiny_run_config

    from revcurse.config import apply_overrides
    from revcurse.evaluation import ToyEvaluator
    from revcurse.models.transformer import TransformerLM

    cfg = apply_overrides(tiny_run_config(causal=causal), [
        "data.entity_tokens=2", "data.n_templates=3", "data.templates_per_fact=1",
        "probe.enabled=false"])  # fmt: skip
    dataset = build_toy(cfg.data)
    vocab = Vocab.from_dataset(dataset)
    torch.manual_seed(0)
    model = TransformerLM(apply_overrides(cfg, ["model.init_std=0.5"]).model, len(vocab)).eval()
    scores = ToyEvaluator(dataset, vocab)(model)

    def decode(prompt: list[int], suffix: list[int]) -> list[int]:
        if causal:
            ids = list(prompt)
            for _ in range(2):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
            return ids[len(prompt) :]
        ids = prompt + [vocab.mask_id] * 2 + suffix
        slots = [len(prompt), len(prompt) + 1]
        while slots:
            probs = model(torch.tensor([ids]))[0].double().softmax(-1)
            best = max(slots, key=lambda s: float(probs[s].max()))
            ids[best] = int(probs[best].argmax())
            slots.remove(best)
        return ids[len(prompt) : len(prompt) + 2]

    with torch.no_grad():
        for key, asked in (("reverse", dataset.queries), ("reverse_unseen", dataset.query_groups["unseen"]),
                           ("forward_unseen", dataset.query_groups["unseen"])):  # fmt: skip
            direction = key.removesuffix("_unseen")
            expected = [" ".join(vocab.decode(decode(vocab.encode(q.prompt),
                                                      vocab.encode(q.suffix))))
                        for q in asked[direction]]  # fmt: skip
            assert scores["predictions"][key] == expected
            right = [p == " ".join(q.answer) for p, q in zip(expected, asked[direction],
                                                               strict=True)]  # fmt: skip
            assert scores["correct"][key] == right
            assert scores[f"{key}_accuracy"] == sum(right) / len(right)
            # every answer is right or in exactly one class of wrong answers
            wrong = (
                "wrong_entity",
                "wrong_copy",
                "wrong_other_side",
                "wrong_mixture",
                "wrong_other",
            )
            total = scores[f"{key}_accuracy"] + sum(scores[f"{key}_{w}"] for w in wrong)
            assert total == pytest.approx(1.0)
            first = [p.split()[0] == q.answer[0] for p, q in zip(expected, asked[direction],
                                                                  strict=True)]  # fmt: skip
            assert scores[f"{key}_first_token_accuracy"] == pytest.approx(sum(first) / len(first))


def test_the_toy_ranks_an_mdms_entities_by_the_exact_bound_and_longer_ones_by_draws():
    """Two-token entities: the toy's candidate accuracy and answer log-probability are the exact
    bound's (mdm_exact_bound over every candidate, ranked here); with ``exact_up_to=0`` they are
    the 8 draws' as before (another value). mdm_bound splits rows by answer length: the short rows are the exact
    bound's, the long rows the draws' as if asked alone (same generator)."""
    from conftest import tiny_run_config

    from revcurse.config import DecodeConfig, apply_overrides
    from revcurse.decoding import mdm_answer_logprob, mdm_exact_bound
    from revcurse.evaluation import ToyEvaluator, mdm_bound, per_candidate, toy_queries
    from revcurse.metrics import likelihood_rank
    from revcurse.models.transformer import TransformerLM

    cfg = apply_overrides(tiny_run_config(), ["data.entity_tokens=2", "probe.enabled=false"])
    dataset = build_toy(cfg.data)
    vocab = Vocab.from_dataset(dataset)
    torch.manual_seed(0)
    model = TransformerLM(apply_overrides(cfg, ["model.init_std=0.5"]).model, len(vocab)).eval()
    queries = toy_queries(dataset, vocab, "reverse")
    got = {4: ToyEvaluator(dataset, vocab)(model),  # the default
           0: ToyEvaluator(dataset, vocab, exact_up_to=0)(model)}  # fmt: skip
    exact = per_candidate(queries, lambda ps, cs, ss: mdm_exact_bound(
        model, ps, cs, mask_id=vocab.mask_id, suffix=ss))  # fmt: skip
    right = (likelihood_rank(exact) == 1).double().mean().item()
    assert got[4]["reverse_candidate_accuracy"] == pytest.approx(right, abs=1e-12)
    assert got[4]["reverse_answer_logprob"] == pytest.approx(exact[:, 0].mean().item(), rel=1e-9)
    assert got[4]["reverse_answer_logprob"] != got[0]["reverse_answer_logprob"]
    prompts, suffixes = [[5, 6], [7], [5]], [[8], [], [9]]
    answers = [[10, 11], [10, 11, 12], [12]]
    generator = torch.Generator().manual_seed(3)
    mixed = mdm_bound(model, prompts, answers, suffixes, mask_id=vocab.mask_id,
                      settings=DecodeConfig(n_mc=4, exact_up_to=2), generator=generator)  # fmt: skip
    short = mdm_exact_bound(model, [prompts[0], prompts[2]], [answers[0], answers[2]],
                            mask_id=vocab.mask_id, suffix=[suffixes[0], suffixes[2]])  # fmt: skip
    long = mdm_answer_logprob(model, [prompts[1]], [answers[1]], mask_id=vocab.mask_id,
                              n_samples=4, suffix=[suffixes[1]],
                              generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert mixed.tolist() == [short[0].item(), long[0].item(), short[1].item()]


def test_where_multi_token_answers_come_from_by_hand():
    """Seven two-token queries over entities (1,2) (3,4) (1,5) (6,7) of the answer side; the
    other side's entities are (8,9) and (9,8), the queries giving (8,9). Answers: right; another
    entity sharing token 1; an entity sharing nothing; a mixture of answer-side tokens that
    spells no entity; a token of the other side; a copy of the given entity; a filler (10, 11).
    First-token accuracy 3/7 (answers 1, 2 and 4 start with the right token), later-token
    accuracy 1/7, one of each wrong class, and the classes plus the exact match cover all."""
    from revcurse.evaluation import answer_sources

    entities = [[1, 2], [3, 4], [1, 5], [6, 7]]
    answers = [[1, 2], [1, 5], [3, 4], [1, 4], [8, 2], [8, 9], [10, 11]]
    rights = [[1, 2], [1, 2], [1, 2], [1, 2], [6, 7], [6, 7], [6, 7]]
    candidates = [[r] + [e for e in entities if e != r] for r in rights]
    got = answer_sources(answers, candidates, [[8, 9]] * 7, {8, 9})
    assert got == pytest.approx({
        "first_token_accuracy": 3 / 7, "later_token_accuracy": 1 / 7,
        "wrong_entity": 2 / 7, "wrong_entity_sharing": 1 / 7, "wrong_copy": 1 / 7,
        "wrong_other_side": 1 / 7, "wrong_mixture": 1 / 7, "wrong_other": 1 / 7,
    })  # fmt: skip
    wrong = ("wrong_entity", "wrong_copy", "wrong_other_side", "wrong_mixture", "wrong_other")
    assert 1 / 7 + sum(got[w] for w in wrong) == pytest.approx(1.0)


def test_every_answer_source_has_one_column_title():
    from revcurse.evaluation import ANSWER_SOURCES
    from revcurse.report.sweep import SOURCE_LABELS

    assert [name for name, _ in SOURCE_LABELS] == list(ANSWER_SOURCES)


@pytest.mark.parametrize("causal", [False, True])
def test_facts_trained_both_ways_are_scored_as_a_group_of_their_own(causal):
    """With data.both_fraction the reverse test is the facts trained forward only; the facts
    trained both ways are scored under ``*_both`` (the fit check of their inverse statements).
    Reference: each query's top-1 token read off the model's logits one query at a time."""
    from conftest import tiny_run_config

    from revcurse.config import apply_overrides
    from revcurse.evaluation import ToyEvaluator
    from revcurse.models.transformer import TransformerLM

    cfg = apply_overrides(tiny_run_config(causal=causal), [
        "data.n_pairs=10", "data.both_fraction=0.3", "probe.enabled=false"])  # fmt: skip
    dataset = build_toy(cfg.data)
    vocab = Vocab.from_dataset(dataset)
    torch.manual_seed(0)
    model = TransformerLM(apply_overrides(cfg, ["model.init_std=0.5"]).model, len(vocab)).eval()
    scores = ToyEvaluator(dataset, vocab)(model)
    both = {q.fact for q in dataset.query_groups["both"]["reverse"]}
    assert len(both) == 3
    assert {q.fact for q in dataset.queries["reverse"]} == set(range(10)) - both
    with torch.no_grad():
        for key, asked in (("reverse", dataset.queries), ("forward", dataset.queries),
                           ("reverse_both", dataset.query_groups["both"]),
                           ("forward_both", dataset.query_groups["both"])):  # fmt: skip
            expected = []
            for q in asked[key.split("_")[0]]:
                prompt = vocab.encode(q.prompt)
                ids = prompt if causal else prompt + [vocab.mask_id] + vocab.encode(q.suffix)
                logits = model(torch.tensor([ids]))[0, len(prompt) - 1 if causal else len(prompt)]
                expected.append(vocab.decode([int(logits.argmax())])[0])
                if key.startswith("reverse"):
                    assert q.prompt[1] == "<inv>"
            assert scores["predictions"][key] == expected
            right = [p == q.answer[0] for p, q in zip(expected, asked[key.split("_")[0]],
                                                        strict=True)]  # fmt: skip
            assert scores[f"{key}_accuracy"] == sum(right) / len(right)


# ---------------------------------------------------------------- many facts, bounded memory


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_ranking_a_shared_pool_in_place_is_the_rank_with_the_answer_moved_first(data):
    """``pool_rank`` (the answer where the pool holds it) against ``likelihood_rank`` (the answer
    moved to column 0), on small integer scores so that ties are common (they count against
    the answer in both)."""
    from revcurse.metrics import likelihood_rank, pool_rank

    n_q, n_c = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 8))
    scores = torch.tensor(data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=n_c,
                                                      max_size=n_c), min_size=n_q, max_size=n_q)),
                          dtype=torch.float64)  # fmt: skip
    right = torch.tensor(data.draw(st.lists(st.integers(0, n_c - 1), min_size=n_q, max_size=n_q)))
    moved = torch.stack([torch.cat([row[r : r + 1], row[:r], row[r + 1 :]])
                         for row, r in zip(scores, right.tolist(), strict=True)])  # fmt: skip
    assert pool_rank(scores, right).tolist() == likelihood_rank(moved).tolist()


@pytest.mark.parametrize("causal", [False, True])
def test_the_toy_evaluator_reads_queries_in_bounded_batches_with_the_same_metrics(
    causal, monkeypatch
):
    """Queries read a few at a time against their shared pool give the metrics of one pass over
    explicit per-query candidate lists (the form every query had before), and no forward pass
    reads more than the batch."""
    import revcurse.evaluation as E
    from revcurse.config import ModelConfig
    from revcurse.models.transformer import TransformerLM

    dataset = build_toy(ToyDataConfig(n_pairs=23, seed=1))
    vocab = Vocab.from_dataset(dataset)
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(causal=causal), len(vocab)).double().eval()
    whole = E.ToyEvaluator(dataset, vocab)
    for queries in whole.queries.values():  # the lists a shared pool stands for
        queries.candidates = [queries.candidates[i] for i in range(len(queries.candidates))]
    reference = whole(model)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    monkeypatch.setattr(E, "EVAL_BATCH_ROWS", 5)
    batched = E.ToyEvaluator(dataset, vocab)
    assert all(q.pool is not None for q in batched.queries.values())
    got = batched(model)
    assert max(seen) == 5 and len(seen) > 3
    for key, value in reference.items():
        if key.endswith("answer_logprob") and value is not None:
            assert got[key] == pytest.approx(value, abs=1e-12)
        else:
            assert got[key] == value, key
