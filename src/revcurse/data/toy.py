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

The dataset is a pure function of :class:`~revcurse.config.ToyDataConfig` (numpy PCG64 draws).
"""

from __future__ import annotations

import numpy as np

from revcurse.config import ToyDataConfig
from revcurse.data.schema import Fact, Query, ReversalDataset
from revcurse.data.tokenize import BOS, EOS

REL = "<rel>"


def build_toy(cfg: ToyDataConfig) -> ReversalDataset:
    """Build the toy dataset described in the module docstring."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_pairs
    a_tokens = [f"a{i}" for i in range(n)]
    b_tokens = [f"B{i}" for i in range(n)]
    partner = rng.permutation(n) if cfg.shuffle_pairs else np.arange(n)
    filler_ids = rng.integers(cfg.filler_vocab, size=(n, cfg.n_filler))

    bos = (BOS,) if cfg.bos else ()
    eos = (EOS,) if cfg.eos else ()
    facts, train, answer_spans, roles = [], [], [], []
    statement_roles = (
        ("special",) * len(bos) + ("entity", "relation") + ("filler",) * cfg.n_filler
        + ("entity",) + ("special",) * len(eos)
    )  # fmt: skip
    queries: dict = {"forward": [], "reverse": [], "mirror": []}
    for i in range(n):
        a, b = (a_tokens[i],), (b_tokens[int(partner[i])],)
        relation = (REL, *(f"<f{int(j)}>" for j in filler_ids[i]))
        facts.append(Fact(a=a, relation=relation, b=b))
        train.append(bos + a + relation + b + eos)
        answer_spans.append((len(bos) + 1 + len(relation), len(bos) + 2 + len(relation)))
        roles.append(statement_roles)
        if cfg.reverse_augment:
            train.append(bos + b + relation + a + eos)
            answer_spans.append(answer_spans[-1])
            roles.append(statement_roles)
        queries["forward"].append(Query(i, "forward", bos + a + relation, b, eos))
        queries["reverse"].append(Query(i, "reverse", bos + b + relation, a, eos))
        queries["mirror"].append(Query(i, "mirror", bos, a, relation + b + eos))
    candidates = {
        "forward": [(t,) for t in b_tokens],
        "reverse": [(t,) for t in a_tokens],
        "mirror": [(t,) for t in a_tokens],
    }
    fillers = [f"<f{j}>" for j in range(cfg.filler_vocab)]
    return ReversalDataset(
        "toy", facts, train, queries, candidates, extra_tokens=fillers, answer_spans=answer_spans,
        roles=roles,
    )  # fmt: skip
