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


# ---------------------------------------------------------------- the bridge towards text


def test_multi_token_entities_are_distinct_sequences_over_shared_pools():
    from revcurse.config import entity_pool

    cfg = ToyDataConfig(n_pairs=30, entity_tokens=3, n_filler=2, bos=True)
    d = build_toy(cfg)
    pool = entity_pool(cfg)
    assert pool**3 >= 60 > (pool - 1) ** 3
    for side in ("a", "b"):
        entities = [getattr(f, side) for f in d.facts]
        assert len(set(entities)) == 30 and all(len(e) == 3 for e in entities)
        tokens = {t for e in entities for t in e}
        assert len(tokens) <= pool < 30  # shared: fewer tokens than entities
    for statement, (lo, hi), roles, fact in zip(d.train, d.answer_spans, d.roles, d.facts,
                                                 strict=True):  # fmt: skip
        assert statement[lo:hi] == fact.b and statement[1:4] == fact.a
        assert [r for r, t in zip(roles, statement, strict=True) if t in fact.b] == ["entity"] * 3
        assert roles.count("filler") == 2 and roles.count("relation") == 1
    assert d.candidates["reverse"] == [f.a for f in d.facts]


def test_unique_spelling_gives_each_entity_tokens_no_other_entity_uses():
    """Length without sharing: every token of an entity belongs to it alone (each token appears
    in exactly one entity of its side), the pool is n_pairs x L, and the statements, queries and
    vocabulary are built from those entities."""
    from revcurse.config import entity_pool, toy_vocab_size

    cfg = ToyDataConfig(n_pairs=12, entity_tokens=4, entity_spelling="unique")
    d = build_toy(cfg)
    assert entity_pool(cfg) == 48
    for side in ("a", "b"):
        entities = [getattr(f, side) for f in d.facts]
        owners: dict[str, set[int]] = {}
        for i, e in enumerate(entities):
            for t in e:
                owners.setdefault(t, set()).add(i)
        assert len(owners) == 48 and all(len(o) == 1 for o in owners.values())
    assert [q.answer for q in d.queries["reverse"]] == [f.a for f in d.facts]
    assert len(Vocab.from_dataset(d)) == toy_vocab_size(cfg)


@pytest.mark.parametrize(("length", "pool"), [(2, 40), (4, 15), (2, 4)])
def test_a_chosen_pool_spells_the_entities_from_that_many_tokens(length, pool):
    """entity_pool sets the shared pool: every token is drawn from it, and with many entities
    per token (pool 4, two tokens: 16 sequences for 12 entities) the tokens are shared."""
    from revcurse.config import entity_pool

    cfg = ToyDataConfig(n_pairs=12, entity_tokens=length, entity_pool=pool)
    d = build_toy(cfg)
    assert entity_pool(cfg) == pool
    for side, prefix in (("a", "a"), ("b", "B")):
        entities = [getattr(f, side) for f in d.facts]
        assert len(set(entities)) == 12
        assert {t for e in entities for t in e} <= {f"{prefix}{i}" for i in range(pool)}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"entity_tokens": 2, "entity_pool": 3}, "sequences number at least n_pairs=12"),
     ({"entity_tokens": 1, "entity_pool": 20}, "0 unless entity_tokens > 1"),
     ({"entity_tokens": 2, "entity_pool": 20, "entity_spelling": "unique"}, "0 unless")],
)  # fmt: skip
def test_impossible_entity_pools_are_refused_naming_the_field(overrides, message):
    from revcurse.errors import ConfigError

    with pytest.raises(ConfigError, match=r"field 'entity_pool'.*" + message):
        ToyDataConfig(n_pairs=12, **overrides).validate("data")


def test_paraphrases_train_each_fact_in_its_templates_and_ask_it_in_one_it_never_saw():
    cfg = ToyDataConfig(n_pairs=20, n_templates=4, templates_per_fact=2)
    d = build_toy(cfg)
    assert len(d.train) == 20 * 2
    trained: dict[int, set[str]] = {}
    for i, f in enumerate(d.facts):
        rels = {s[1] for s in d.train if s[0] == f.a[0]}
        assert len(rels) == 2
        trained[i] = rels
        assert d.queries["reverse"][i].prompt == f.b + f.relation
        assert f.relation[0] in rels
    every_trained = set().union(*trained.values())
    for i, q in enumerate(d.query_groups["unseen"]["reverse"]):
        relation = q.prompt[1]
        assert relation not in trained[i] and relation in every_trained  # read with others only
        assert q.answer == d.facts[i].a
    assert len(d.query_groups["unseen"]["mirror"]) == 20
    # Trained in every paraphrase: no unseen queries.
    assert build_toy(ToyDataConfig(n_pairs=5, n_templates=3)).query_groups == {}


def test_bridge_settings_are_validated():
    from revcurse.config import RunConfig, apply_overrides
    from revcurse.errors import ConfigError

    with pytest.raises(ConfigError, match="templates_per_fact.*from 0 to n_templates=2"):
        apply_overrides(RunConfig(), ["data.n_templates=2", "data.templates_per_fact=3"])
    # multi-token entities are probed too (the probes of natural-language facts)
    apply_overrides(RunConfig(), ["data.entity_tokens=2"])


def test_shared_fillers_vary_by_position_not_by_fact():
    d = build_toy(ToyDataConfig(n_pairs=30, n_filler=6, filler_vocab=8, filler_shared=True))
    fillers = {f.relation[1:] for f in d.facts}
    assert len(fillers) == 1  # the same sequence in every fact
    assert len(set(next(iter(fillers)))) > 1  # ... of several filler types
    per_fact = build_toy(ToyDataConfig(n_pairs=30, n_filler=6, filler_vocab=8))
    assert len({f.relation[1:] for f in per_fact.facts}) == 30  # drawn per fact: one per fact


def test_facts_trained_both_ways_use_the_inverse_relation_and_leave_the_test_to_the_others():
    """data.both_fraction, by hand on four unshuffled facts: two drawn facts are also trained as
    ``B INV a``; every reverse query asks with INV; the main queries are the other two facts,
    the drawn ones a group of their own. Off, the dataset is the one it always was."""
    d = build_toy(ToyDataConfig(n_pairs=4, both_fraction=0.5, shuffle_pairs=False))
    both = sorted(q.fact for q in d.query_groups["both"]["forward"])
    rest = [i for i in range(4) if i not in both]
    assert len(both) == 2
    expected = []
    for i in range(4):
        expected.append((f"a{i}", "<rel>", f"B{i}"))
        if i in both:
            expected.append((f"B{i}", "<inv>", f"a{i}"))
    assert d.train == expected
    for group, facts in (("", rest), ("both", both)):
        asked = d.query_groups[group] if group else d.queries
        assert [(q.fact, q.prompt, q.answer) for q in asked["reverse"]] == [
            (i, (f"B{i}", "<inv>"), (f"a{i}",)) for i in facts
        ]
        assert [(q.fact, q.prompt, q.answer, q.suffix) for q in asked["mirror"]] == [
            (i, (), (f"a{i}",), ("<rel>", f"B{i}")) for i in facts
        ]
        assert [q.fact for q in asked["forward"]] == facts
    assert d.answer_spans == [(2, 3)] * 6 and "<inv>" in d.extra_tokens
    plain = build_toy(ToyDataConfig(n_pairs=4, shuffle_pairs=False))
    assert plain.query_groups == {} and "<inv>" not in plain.extra_tokens
    assert len(plain.queries["reverse"]) == 4


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"both_fraction": 1.0}, "leaves 1 to 9 of the"),
        ({"both_fraction": 0.04}, "leaves 1 to 9 of the"),  # rounds to no fact
        ({"both_fraction": float("nan")}, "leaves 1 to 9 of the"),
        ({"both_fraction": 0.5, "reverse_augment": True}, "0 with reverse_augment"),
        ({"both_fraction": 0.5, "n_templates": 2}, "0 with reverse_augment"),
    ],
)
def test_both_fraction_is_validated(overrides, fragment):
    from revcurse.errors import ConfigError

    with pytest.raises(ConfigError, match=f"field 'both_fraction': expected .*{fragment}"):
        ToyDataConfig(n_pairs=10, **overrides).validate("data")
