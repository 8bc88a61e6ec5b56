"""The synthetic toy reversal task of arXiv 2602.02133 (single-token entity pairs).

N facts pair a lowercase entity ``a_i`` with an uppercase entity ``B_pi(i)``. Training holds only the
forward statement ``[BOS] a_i REL f_1 .. f_k B_pi(i) [EOS]``; the filler tokens ``f`` (k = n_filler)
move the two entities apart so the relative distance Delta = k + 2 can be varied. Queries:

* forward  ``[BOS] a_i REL f.. [M]`` -> ``B_pi(i)`` (the trained direction),
* reverse  ``[BOS] B_pi(i) REL f.. [M]`` -> ``a_i`` (never seen in training),
* mirror   ``[BOS] [M] REL f.. B_pi(i)`` -> ``a_i``: the reverse answer in the trained positional
  configuration (a masked-diffusion training example), which the probes pair with the reverse query.

Every filler token is in the vocabulary even when ``n_filler = 0``, so probes can move the entities
apart at test time.

With ``reverse_augment`` the reversed statements ``B_pi(i) REL f.. a_i`` are trained too (reverse
training, a control in which the reverse query is in the training distribution).

With ``both_fraction = f > 0`` (the setting of Kim et al., arXiv 2509.21993, where the inverse
relation is trained on other facts), a drawn f x N of the facts are also trained as
``B_pi(i) INV f.. a_i``, with their own relation token ``<inv>``, and every reverse query asks
``B_pi(i) INV f.. [M]``. The queries of the facts trained forward only are the test; those of the
facts trained both ways are a group of their own (``both``), the fit check of the inverse
statements.

The bridge towards natural text (all off by default, and then the dataset is the one above, draw
for draw):

* ``entity_tokens = L > 1``: every entity is L tokens, a distinct sequence over a pool of tokens
  its side shares (``a0 a3``, ``a3 a1``, ...), so an answer is several tokens and no token alone
  names the entity; ``entity_pool`` sets the pool's size, and ``entity_spelling = unique`` gives
  each entity tokens of its own instead (``a0 a1``, ``a2 a3``, ...: length without sharing);
* ``n_templates = K > 1``: the relation has K paraphrases, relation tokens ``<rel>``, ``<rel1>``,
  ... that state the same relation; each fact is trained in ``templates_per_fact`` of them (all
  by default), drawn per fact. Queries are asked in the fact's first trained paraphrase; when a
  fact is not trained in all of them, every query is asked again in a paraphrase that fact was
  never trained in (the ``unseen`` query group), one the model read only with other facts.

The dataset is a pure function of :class:`~revcurse.config.ToyDataConfig` (numpy PCG64 draws).
"""

from __future__ import annotations

import numpy as np

from revcurse.config import ToyDataConfig, entity_pool
from revcurse.data.schema import Fact, Query, ReversalDataset, Tokens
from revcurse.data.tokenize import BOS, EOS

REL = "<rel>"
INV = "<inv>"
"""The inverse relation's token (``both_fraction``)."""


def _entities(rng: np.random.Generator, prefix: str, cfg: ToyDataConfig) -> list[Tokens]:
    """The side's ``n_pairs`` distinct entities of ``entity_tokens`` tokens (module docstring)."""
    n, length = cfg.n_pairs, cfg.entity_tokens
    if length == 1:
        return [(f"{prefix}{i}",) for i in range(n)]
    if cfg.entity_spelling == "unique":  # entity i: tokens i*L .. i*L + L - 1, no draw
        return [tuple(f"{prefix}{i * length + k}" for k in range(length)) for i in range(n)]
    pool = entity_pool(cfg)
    codes = rng.choice(pool**length, size=n, replace=False)
    return [tuple(f"{prefix}{(int(c) // pool**k) % pool}" for k in range(length)) for c in codes]


def relation_token(template: int) -> str:
    """The relation token of paraphrase ``template`` (the first is the plain ``<rel>``)."""
    return REL if template == 0 else f"<rel{template}>"


def build_toy(cfg: ToyDataConfig) -> ReversalDataset:
    """Build the toy dataset described in the module docstring."""
    rng = np.random.default_rng(cfg.seed)
    n, length = cfg.n_pairs, cfg.entity_tokens
    partner = rng.permutation(n) if cfg.shuffle_pairs else np.arange(n)
    if cfg.filler_shared:  # one sequence, the same for every fact
        filler_ids = rng.integers(cfg.filler_vocab, size=(1, cfg.n_filler)).repeat(n, axis=0)
    else:
        filler_ids = rng.integers(cfg.filler_vocab, size=(n, cfg.n_filler))
    # Draws the one-token, one-paraphrase task never makes come after its own, so it is unchanged.
    a_entities = _entities(rng, "a", cfg)
    b_entities = _entities(rng, "B", cfg)
    k = cfg.n_templates
    templates = [rng.permutation(k) for _ in range(n)] if k > 1 else [np.zeros(1, int)] * n
    both = set(rng.permutation(n)[: cfg.both_facts].tolist()) if cfg.both_fraction else set()
    inverse = INV if cfg.both_fraction else None

    bos = (BOS,) if cfg.bos else ()
    eos = (EOS,) if cfg.eos else ()
    facts, train, answer_spans, roles = [], [], [], []
    statement_roles = (
        ("special",) * len(bos) + ("entity",) * length + ("relation",)
        + ("filler",) * cfg.n_filler + ("entity",) * length + ("special",) * len(eos)
    )  # fmt: skip
    answer_start = len(bos) + length + 1 + cfg.n_filler
    groups: dict = {name: {"forward": [], "reverse": [], "mirror": []}
                    for name in ("", "unseen", "both")}  # fmt: skip
    for i in range(n):
        a, b = a_entities[i], b_entities[int(partner[i])]
        fillers = tuple(f"<f{int(j)}>" for j in filler_ids[i])
        trained = [int(t) for t in templates[i][: cfg.trained_templates]]
        for t in trained:
            relation = (relation_token(t), *fillers)
            train.append(bos + a + relation + b + eos)
            answer_spans.append((answer_start, answer_start + length))
            roles.append(statement_roles)
            reversed_relation = (inverse, *fillers) if i in both else relation
            if cfg.reverse_augment or i in both:
                train.append(bos + b + reversed_relation + a + eos)
                answer_spans.append(answer_spans[-1])
                roles.append(statement_roles)
        relation = (relation_token(trained[0]), *fillers)
        facts.append(Fact(a=a, relation=relation, b=b))
        asked = [("both" if i in both else "", relation)]
        if len(trained) < k:
            asked.append(("unseen", (relation_token(int(templates[i][len(trained)])), *fillers)))
        for group, rel in asked:
            into = groups[group]
            inverse_rel = (inverse, *rel[1:]) if inverse else rel
            into["forward"].append(Query(i, "forward", bos + a + rel, b, eos))
            into["reverse"].append(Query(i, "reverse", bos + b + inverse_rel, a, eos))
            into["mirror"].append(Query(i, "mirror", bos, a, rel + b + eos))
    candidates = {"forward": list(b_entities), "reverse": list(a_entities),
                  "mirror": list(a_entities)}  # fmt: skip
    fillers = [f"<f{j}>" for j in range(cfg.filler_vocab)]
    relations = [relation_token(t) for t in range(k)] + ([INV] if inverse else [])
    return ReversalDataset(
        "toy", facts, train, groups.pop(""), candidates, extra_tokens=fillers + relations,
        answer_spans=answer_spans, roles=roles,
        query_groups={name: qs for name, qs in groups.items() if any(qs.values())},
    )  # fmt: skip
