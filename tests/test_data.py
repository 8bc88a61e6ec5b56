"""The toy dataset: forward-only training, queries, fillers, determinism; the vocabulary."""

from __future__ import annotations

import pytest

from revcurse.config import ToyDataConfig
from revcurse.data.tokenize import BOS, EOS, MASK, PAD, Vocab, encode_statements
from revcurse.data.toy import REL, build_toy


def test_same_seed_same_dataset_other_seed_other_pairing():
    a, b = build_toy(ToyDataConfig(seed=3)), build_toy(ToyDataConfig(seed=3))
    assert a == b
    c = build_toy(ToyDataConfig(seed=4))
    assert [f.b for f in a.facts] != [f.b for f in c.facts]


def test_pairing_is_a_bijection_and_training_is_forward_only():
    ds = build_toy(ToyDataConfig(n_pairs=50))
    assert sorted(f.b for f in ds.facts) == sorted((f"B{i}",) for i in range(50))
    for fact, statement in zip(ds.facts, ds.train, strict=True):
        assert statement == fact.a + fact.relation + fact.b
        assert statement[0].startswith("a")  # never "B ... a"
    assert len(ds.train) == 50


def test_queries_ask_both_directions_of_each_fact():
    ds = build_toy(ToyDataConfig(n_pairs=5, n_filler=3, filler_vocab=2, bos=True, eos=True))
    for i, fact in enumerate(ds.facts):
        fwd, rev = ds.queries["forward"][i], ds.queries["reverse"][i]
        assert fwd.prompt == (BOS,) + fact.a + fact.relation and fwd.answer == fact.b
        assert rev.prompt == (BOS,) + fact.b + fact.relation and rev.answer == fact.a
        assert fwd.suffix == rev.suffix == (EOS,)
        assert fact.relation[0] == REL and len(fact.relation) == 4
    assert ds.chance("reverse") == pytest.approx(1 / 5)


def test_filler_sets_relative_distance():
    ds = build_toy(ToyDataConfig(n_pairs=3, n_filler=4))
    s = ds.train[0]
    assert len(s) == 7 and s.index(ds.facts[0].b[0]) - s.index(ds.facts[0].a[0]) == 6


def test_vocab_specials_and_encoding():
    ds = build_toy(ToyDataConfig(n_pairs=4))
    vocab = Vocab.from_dataset(ds)
    assert vocab.tokens[:4] == [PAD, MASK, BOS, EOS]
    assert len(vocab) == 4 + 1 + 8 + 1  # specials, REL, 4 a, 4 B, the filler
    ids = encode_statements(vocab, ds.train)
    assert ids.shape == (4, 3)
    assert vocab.decode(ids[0].tolist()) == ds.train[0]


def test_query_encoding_positions():
    """The probes' stacked view of toy queries: an MDM fills the masked slot of
    ``b REL [M] EOS``; an ARM reads ``b REL`` and predicts from its last position."""
    from revcurse.probes.inputs import probe_batch

    ds = build_toy(ToyDataConfig(n_pairs=4, eos=True))
    vocab = Vocab.from_dataset(ds)
    batch = probe_batch(ds, vocab, "reverse", causal=False)
    assert batch.ids.shape == (4, 4)
    assert (batch.ids[:, 2] == vocab.mask_id).all() and (batch.answer_pos == 2).all()
    assert (batch.entity_pos == 0).all()
    causal = probe_batch(ds, vocab, "reverse", causal=True)
    assert causal.ids.shape == (4, 2) and (causal.answer_pos == 1).all()
    answers = vocab.decode(batch.answer_id.tolist())
    assert answers == tuple(q.answer[0] for q in ds.queries["reverse"])
