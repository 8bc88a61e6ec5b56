"""THE evaluation: any model on any reversal queries -> per-query answers, candidate log-probs and
per-direction accuracy, for the toy task and natural-language datasets alike.

Every query reaches the model as token ids (:class:`Queries`): a prompt, an optional suffix after
the answer (the mirror query ``[M..M] REL b``, asked of a bidirectional model only) and its
candidate answers, the right one first. :func:`read_queries` reads a model on them in one of two
ways, which give the same quantities:

* **fast batched path**, when every candidate is one token and one token is generated (the toy
  task): forward passes of :data:`EVAL_BATCH_ROWS` queries, each unembedding the answer slot
  only; the model's answer is the argmax over the whole vocabulary at that slot (an MDM fills the
  ``[MASK]`` of ``prompt [MASK] suffix``, an ARM predicts the token after ``prompt``: exactly what
  the sampler or greedy decoding produce for one token), and every candidate's log-probability is
  read from the same softmax (exact: for a one-token answer the masked-diffusion bound is the
  likelihood);
* **general path**: generation (:func:`~revcurse.decoding.mdm_generate`, LLaDA's low-confidence
  remasking sampler; :func:`~revcurse.decoding.arm_generate`, greedy) and per-candidate
  likelihoods (exact for an ARM, the unbiased Monte-Carlo bound for an MDM), the rows of every
  query and candidate sharing forward passes (:func:`per_candidate`).

Memory stays linear in the queries: toy queries rank one shared pool (:class:`SharedPool`, every
entity of the answer side) kept once, not a list of every candidate per query, and the one-token
path ranks each batch against it as it goes (nothing of size queries x candidates is held).

Metrics (one name, one quantity, on both paths): the answer matches (toy: the argmax token is the
answer, ``accuracy``; text: exact / prefix / substring match of the generation); the likelihood
rank of the right answer among the candidates (ties count against it), whose top-1 rate is the
toy's ``candidate_accuracy`` and the text's ``likelihood_top1``; on text also ``chain_top1``, the
same rank by the left-to-right chain log-probability (:func:`~revcurse.decoding.mdm_chain_logprob`:
a normalised distribution over answers, where the Monte-Carlo bound lets a memorised wrong
candidate score well from its own visible tokens; for an ARM it is its exact likelihood, so its
``chain_top1`` equals its ``likelihood_top1``); ``chance`` is one over the number of candidates.
Directions are those of :data:`~revcurse.data.schema.DIRECTIONS`; a causal model has no mirror
query, so its ``mirror_*`` metrics are ``None``.

Text splits (:func:`evaluate_split`) draw ``n_distractors`` answers of other queries from their own
generator (``distractor_seed``), so every model evaluated on a split ranks the same candidates and
the per-query outcomes of two models are paired. Every record is kept, so a split can be re-scored
from its saved generations without the model (:func:`rescore`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from revcurse import files
from revcurse.config import DecodeConfig
from revcurse.data.schema import DIRECTIONS, ReversalDataset, TextPair, directions_for, one_way
from revcurse.data.text import encode_prompt, frame
from revcurse.data.tokenize import Vocab, pad_batch
from revcurse.decoding import (
    arm_answer_logprob,
    arm_generate,
    dream_generate,
    mdm_answer_logprob,
    mdm_chain_logprob,
    mdm_exact_bound,
    mdm_generate,
    truncate_at,
)
from revcurse.metrics import (
    exact_match,
    likelihood_rank,
    normalize,
    pool_rank,
    prefix_match,
    substring_match,
)
from revcurse.objectives import logits_at


class SharedPool(Sequence[list[list[int]]]):
    """Every query's candidates when all queries rank one pool (the toy: every entity of the
    answer side), as ``queries.candidates``: per query its answer first, then the rest of the pool
    in order. Held as the pool and one index per query, so memory grows with queries plus pool
    where a list per query would grow with their product; a query's list is built when read."""

    def __init__(self, pool: list[list[int]], right: list[int]) -> None:
        if len({tuple(c) for c in pool}) != len(pool):
            raise ValueError("a shared candidate pool must not repeat an answer")
        self.pool, self.right = pool, right

    def __len__(self) -> int:
        return len(self.right)

    def __getitem__(self, q):  # type: ignore[override]
        if isinstance(q, slice):
            return [self[i] for i in range(*q.indices(len(self)))]
        r = self.right[q]
        return [self.pool[r]] + self.pool[:r] + self.pool[r + 1 :]


@dataclass
class Queries:
    """Reversal queries as token ids: the one input of :func:`read_queries`."""

    prompts: list[list[int]]
    candidates: Sequence[list[list[int]]]
    """Per query, its candidate answers, the right one first (all queries have as many): a list
    per query, or a :class:`SharedPool`."""
    suffixes: list[list[int]]
    """Per query, the tokens after the answer ([] for none: the answer ends the sequence)."""

    @property
    def infill(self) -> bool:
        return any(self.suffixes)

    @property
    def pool(self) -> SharedPool | None:
        return self.candidates if isinstance(self.candidates, SharedPool) else None

    @functools.cached_property
    def answers(self) -> list[list[int]]:
        """Each query's right answer ``[Q]``."""
        if self.pool is not None:
            return [self.pool.pool[r] for r in self.pool.right]
        return [cands[0] for cands in self.candidates]

    @property
    def n_candidates(self) -> int:
        return len(self.pool.pool) if self.pool is not None else len(self.candidates[0])

    @functools.cached_property
    def single_token(self) -> bool:
        every = (
            self.pool.pool if self.pool is not None else (c for cs in self.candidates for c in cs)
        )
        return all(len(c) == 1 for c in every)

    def take(self, indices: Sequence[int]) -> Queries:
        """The queries at ``indices`` (their own candidate lists)."""
        return Queries([self.prompts[i] for i in indices],
                       [self.candidates[i] for i in indices],
                       [self.suffixes[i] for i in indices])  # fmt: skip


@dataclass(frozen=True)
class Shard:
    """This process's share of a split's queries when evaluation runs in ``world`` processes:
    queries ``q`` with ``q % world == rank``. Every process draws the Monte-Carlo masks of every
    query in order and reads only its own, so the gathered records are those of one process
    (generation must then be deterministic: temperature 0)."""

    rank: int
    world: int

    def owns(self, n: int) -> list[bool]:
        return [q % self.world == self.rank for q in range(n)]


@dataclass
class Read:
    """What the model did on :class:`Queries`: its answer to each query (token ids), the
    log-probability of each right answer ``[Q]`` (float64) and its rank among the query's
    candidates ``[Q]`` (1 = best, ties against it); with per-query candidates also every
    candidate's log-probability ``[Q, C]`` (the right one in column 0)."""

    answers: list[list[int]]
    right_logprob: torch.Tensor
    ranks: torch.Tensor
    logprobs: torch.Tensor | None = None
    chain: torch.Tensor | None = None
    """``[Q, C]`` where asked: each candidate's left-to-right chain log-probability
    (:func:`~revcurse.decoding.mdm_chain_logprob`; an ARM's own likelihood is already one)."""

    @classmethod
    def scored(cls, answers: list[list[int]], logprobs: torch.Tensor) -> Read:
        """From every candidate's log-probability ``[Q, C]``, the right one in column 0."""
        # contiguous: a reduction over a strided column sums in another order (last bits)
        return cls(answers, logprobs[:, 0].contiguous(), likelihood_rank(logprobs), logprobs)


EVAL_BATCH_ROWS = 256
"""Queries per forward pass on the one-token path: memory is bounded by it (logits of one
position per query), not by the number of queries or candidates."""


@torch.no_grad()
def read_queries(
    model: Any,
    queries: Queries,
    *,
    causal: bool,
    mask_id: int,
    pad_id: int,
    eos_id: int | None = None,
    settings: DecodeConfig | None = None,
    generator: torch.Generator | None = None,
    fill: tuple[int, int] | None = None,
    chain: bool = False,
    text_eos_id: int | None = None,
    shard: Shard | None = None,
) -> Read:
    """Read ``model`` on ``queries``: the fast batched path when every candidate is one token and
    one token is generated (``settings`` None or ``gen_length`` 1), else generation and per-candidate
    likelihoods (``settings``; ``fill``: an MDM trained on statements padded with EOS to a length
    sees every query padded the same way); ``chain``: the chain log-probabilities too.
    ``eos_id`` ends an answer (a chat checkpoint's end of turn), ``text_eos_id`` is the plain EOS
    when it differs (what the MDM sampler's EOS suppression options name). ``shard``: generate
    and score only this process's queries (:class:`Shard`; the others' rows are NaN and their
    answers empty, for :func:`gather_read`)."""
    if queries.infill and causal:
        raise ValueError("a causal model cannot be asked infilling (mirror) queries")
    if queries.single_token and (settings is None or settings.gen_length == 1) and fill is None:
        read = _read_one_position(model, queries, causal, mask_id, pad_id)
        if chain:  # one token: the chain is this likelihood
            if read.logprobs is None:
                raise ValueError("chain scores are kept for per-query candidates only")
            read.chain = read.logprobs
        return read
    if settings is None or generator is None:
        raise ValueError("multi-token answers need decode settings and a generator")
    ends = (eos_id, eos_id if text_eos_id is None else text_eos_id)
    owned = None if shard is None else shard.owns(len(queries.prompts))
    read = _generate_and_score(model, queries, causal, mask_id, pad_id, ends, settings,
                               generator, fill, owned)  # fmt: skip
    if chain:
        read.chain = (read.logprobs if causal
                      else _chain_scores(model, queries, mask_id, fill, owned))  # fmt: skip
    return read


def _chain_scores(model, queries: Queries, mask_id: int, fill, owned=None) -> torch.Tensor:
    """Every candidate's chain log-probability under a masked diffusion model ``[Q, C]``."""
    return per_candidate(queries, _on_kept(lambda prompts, cands, suffixes: mdm_chain_logprob(
        model, prompts, cands, mask_id=mask_id, suffix=suffixes, fill=fill)), owned)  # fmt: skip


def _on_kept(score: Scorer):
    """A deterministic scorer read on the kept rows only (NaN for the others): it draws nothing,
    so scoring a share of the rows gives exactly their values."""

    def kept(prompts, answers, suffixes, keep=None):
        if keep is None:
            return score(prompts, answers, suffixes)
        rows = [k for k, mine in enumerate(keep) if mine]
        out = torch.full((len(prompts),), float("nan"), dtype=torch.float64)
        if rows:
            out[rows] = score([prompts[k] for k in rows], [answers[k] for k in rows],
                              [suffixes[k] for k in rows])  # fmt: skip
        return out

    return kept


def _read_one_position(model, queries: Queries, causal: bool, mask_id: int, pad_id: int) -> Read:
    """Logits at each query's answer slot only, :data:`EVAL_BATCH_ROWS` queries per forward pass:
    the answer is the argmax over the vocabulary, each candidate's log-probability is read from
    the same softmax. A :class:`SharedPool` is ranked batch by batch, so nothing of size queries x
    candidates is ever held."""
    pool = queries.pool
    if pool is not None:
        pool_ids = torch.tensor([c[0] for c in pool.pool])  # [C]
        right_col = torch.tensor(pool.right)  # [Q]
    else:
        cand_ids = torch.tensor([[c[0] for c in cs] for cs in queries.candidates])  # [Q, C]
    answers: list[list[int]] = []
    right, ranks, kept = [], [], []
    for start in range(0, len(queries.prompts), EVAL_BATCH_ROWS):
        batch = range(start, min(start + EVAL_BATCH_ROWS, len(queries.prompts)))
        prompts = [queries.prompts[i] for i in batch]
        if causal:  # an ARM predicts the token after the prompt
            rows, slot = prompts, [len(p) - 1 for p in prompts]
        else:  # an MDM fills the [MASK] of prompt [MASK] suffix
            rows = [
                p + [mask_id] + queries.suffixes[i] for p, i in zip(prompts, batch, strict=True)
            ]
            slot = [len(p) for p in prompts]
        ids = pad_batch(rows, pad_id)  # [b, L] left-aligned: padding only ever follows the slot
        where = torch.zeros(ids.shape, dtype=torch.bool)
        where[torch.arange(len(slot)), torch.tensor(slot)] = True
        logits = logits_at(model, ids, ids != pad_id, where)  # [b, V]
        logp = torch.log_softmax(logits.double(), dim=-1)
        answers += [[t] for t in logits.argmax(dim=-1).tolist()]
        if pool is not None:
            scores = logp[:, pool_ids]  # [b, C]
            col = right_col[start : start + len(batch)]
            right.append(scores.gather(1, col[:, None])[:, 0])
            ranks.append(pool_rank(scores, col))
        else:
            kept.append(logp.gather(1, cand_ids[start : start + len(batch)]))  # [b, C]
    if pool is None:
        return Read.scored(answers, torch.cat(kept))
    return Read(answers, torch.cat(right), torch.cat(ranks))


def generate(model: Any, queries: Queries, *, causal: bool, mask_id: int, pad_id: int,
             settings: DecodeConfig, generator: torch.Generator | None = None,
             fill: tuple[int, int] | None = None,
             ends: tuple[int | None, int | None] = (None, None)) -> list[list[int]]:  # fmt: skip
    """Each query's generated answer (``settings.gen_length`` tokens; an infilling query fills as
    many as its right answer has, in at most ``settings.steps`` steps). ``ends``: the token that
    ends an answer and the plain EOS (:func:`read_queries`' ``eos_id`` and ``text_eos_id``)."""
    prompts, suffixes = queries.prompts, queries.suffixes
    end, text_eos = ends
    sampler = dict(
        cfg_scale=settings.cfg_scale, remasking=settings.remasking,
        confidence_dtype=settings.confidence_dtype, batch_size=settings.batch_size,
        banned=[text_eos] if settings.suppress_eos and text_eos is not None else [],
        unconfident=sorted({t for t in ends if t is not None})
        if settings.suppress_eos_confidence else [],
    )  # fmt: skip
    if causal:
        return arm_generate(model, prompts, settings.gen_length, eos_id=end,
                            batch_size=settings.batch_size).tolist()  # fmt: skip
    if settings.sampler == "dream":
        if queries.infill:
            raise ValueError("Dream's sampler fills answers after the prompt; ask infilling "
                             "(mirror) queries with eval.sampler=llada")  # fmt: skip
        return dream_generate(
            model, prompts, settings.gen_length, mask_id=mask_id, pad_id=pad_id,
            steps=settings.steps, alg=settings.alg, alg_temp=settings.alg_temp,
            temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
            eps=settings.timestep_eps, confidence_dtype=settings.confidence_dtype,
            generator=generator, batch_size=settings.batch_size,
        ).tolist()  # fmt: skip
    if not queries.infill:
        return mdm_generate(
            model, prompts, settings.gen_length, mask_id=mask_id, pad_id=pad_id,
            steps=settings.steps, block_length=settings.block_length,
            temperature=settings.temperature, generator=generator, fill=fill, **sampler,
        ).tolist()  # fmt: skip
    # each query fills as many tokens as its right answer has, grouped by that length
    out: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, cands in enumerate(queries.candidates):
        by_length.setdefault(len(cands[0]), []).append(i)
    for length, rows in by_length.items():
        filled = mdm_generate(
            model, [prompts[i] for i in rows], length, mask_id=mask_id, pad_id=pad_id,
            steps=None if settings.steps is None else min(settings.steps, length),
            temperature=settings.temperature, generator=generator,
            suffix=[suffixes[i] for i in rows], fill=fill, **sampler,
        )  # fmt: skip
        for i, row in zip(rows, filled.tolist(), strict=True):
            out[i] = row
    return out


def _generate_and_score(model, queries, causal, mask_id, pad_id, ends, settings, generator,
                        fill, owned=None) -> Read:  # fmt: skip
    if owned is None:
        out = generate(model, queries, causal=causal, mask_id=mask_id, pad_id=pad_id,
                       settings=settings, generator=generator, fill=fill, ends=ends)  # fmt: skip
    else:  # this process's queries only: at temperature 0 an answer does not depend on the batch
        mine = [q for q, m in enumerate(owned) if m]
        out = [[] for _ in owned]
        answered = generate(model, queries.take(mine), causal=causal, mask_id=mask_id,
                            pad_id=pad_id, settings=settings, generator=generator, fill=fill,
                            ends=ends) if mine else []  # fmt: skip
        for q, answer in zip(mine, answered, strict=True):
            out[q] = answer
    if causal:
        scores = per_candidate(queries, _on_kept(lambda ps, cands, _: arm_answer_logprob(
            model, ps, cands)), owned)  # fmt: skip
    else:
        scores = per_candidate(queries, lambda ps, cands, ss, keep=None: mdm_bound(
            model, ps, cands, ss, mask_id=mask_id, settings=settings, generator=generator,
            fill=fill, keep=keep), owned)  # fmt: skip
    if owned is not None:  # other processes' rows are NaN: ranked once gathered (gather_read)
        return Read(out, scores[:, 0].contiguous(), torch.zeros(len(out), dtype=torch.long), scores)
    return Read.scored(out, scores)


def mdm_bound(model: Any, prompts: list[list[int]], answers: list[list[int]],
              suffixes: list[list[int]], *, mask_id: int, settings: DecodeConfig,
              generator: torch.Generator | None, fill: tuple[int, int] | None = None,
              keep: Sequence[bool] | None = None) -> torch.Tensor:  # fmt: skip
    """An MDM's likelihood bound of each row ``[N]`` (float64) as ``settings`` asks: the exact
    expectation (:func:`~revcurse.decoding.mdm_exact_bound`) for answers of at most
    ``settings.exact_up_to`` tokens, ``settings.n_mc`` Monte-Carlo draws
    (:func:`~revcurse.decoding.mdm_answer_logprob`, in row order) for the others. ``keep``:
    read only these rows (NaN for the others; every row's draws are still made in order)."""
    exact = [i for i, a in enumerate(answers) if len(a) <= settings.exact_up_to]
    drawn = [i for i, a in enumerate(answers) if len(a) > settings.exact_up_to]
    out = torch.full((len(answers),), float("nan"), dtype=torch.float64)
    if keep is not None:
        exact = [i for i in exact if keep[i]]
    if exact:
        out[exact] = mdm_exact_bound(model, [prompts[i] for i in exact],
                                     [answers[i] for i in exact], mask_id=mask_id,
                                     suffix=[suffixes[i] for i in exact], fill=fill)  # fmt: skip
    if drawn:
        out[drawn] = mdm_answer_logprob(
            model, [prompts[i] for i in drawn], [answers[i] for i in drawn], mask_id=mask_id,
            n_samples=settings.n_mc, suffix=[suffixes[i] for i in drawn], generator=generator,
            fill=fill, keep=None if keep is None else [keep[i] for i in drawn],
        )  # fmt: skip
    return out


Scorer = Callable[[list[list[int]], list[list[int]], list[list[int]]], torch.Tensor]
"""``(prompts, answers, suffixes) -> [N]`` float64 log-probabilities, one per row."""


def per_candidate(queries: Queries, score: Scorer,
                  owned: Sequence[bool] | None = None) -> torch.Tensor:  # fmt: skip
    """``score`` of every query's every candidate ``[Q, C]`` (float64), in one call over all of
    them, so one forward pass reads several candidates (the scorers batch their rows). The rows
    go candidate by candidate (every query's first, then every query's second, ...): the order
    the Monte-Carlo draws were made in when each candidate had a call of its own. ``owned``: the
    queries this process reads (:class:`Shard`); ``score`` is then asked with ``keep=``, one
    flag per row, and the other queries' rows are NaN."""
    n_q, n_cand = len(queries.prompts), queries.n_candidates
    lists = [queries.candidates[i] for i in range(n_q)]  # a shared pool's lists, built once
    prompts, answers, suffixes = [], [], []
    for j in range(n_cand):
        for i in range(n_q):
            prompts.append(queries.prompts[i])
            answers.append(lists[i][j])
            suffixes.append(queries.suffixes[i])
    if owned is None:
        values = score(prompts, answers, suffixes)
    else:
        values = score(
            prompts, answers, suffixes, keep=[owned[k % n_q] for k in range(len(prompts))]
        )
    return values.view(n_cand, n_q).T.contiguous()  # [Q, C]


# --------------------------------------------------------------------------------------------------
# The toy task: single-token entities, every direction's candidates
# --------------------------------------------------------------------------------------------------


def toy_queries(dataset: ReversalDataset, vocab: Vocab, direction: str, group: str = "") -> Queries:
    """The direction's queries with all of its candidate answers (the right one moved first);
    ``group``: those of one of the dataset's ``query_groups`` (``unseen``, ``both``)."""
    pool = [vocab.encode(c) for c in dataset.candidates[direction]]
    index = {tuple(c): k for k, c in enumerate(pool)}
    asked = dataset.query_groups[group] if group else dataset.queries
    prompts = [vocab.encode(q.prompt) for q in asked[direction]]
    suffixes = [vocab.encode(q.suffix) for q in asked[direction]]
    right = [index[tuple(vocab.encode(q.answer))] for q in asked[direction]]
    return Queries(prompts, SharedPool(pool, right), suffixes)


ANSWER_SOURCES = ("first_token_accuracy", "later_token_accuracy", "wrong_entity",
                  "wrong_entity_sharing", "wrong_copy", "wrong_other_side", "wrong_mixture",
                  "wrong_other")  # fmt: skip
"""Where multi-token answers come from (:func:`answer_sources`), per direction in toy metrics."""


def answer_sources(
    answers: Sequence[Sequence[int]],  # [Q] each query's generated tokens
    candidates: Sequence[Sequence[Sequence[int]]],  # [Q][C] the side's entities, right first
    given: Sequence[Sequence[int]],  # [Q] the entity each query gives (the other side's)
    other_side: set[int],  # the tokens of the other side's entities
) -> dict[str, float]:
    """Per-position accuracy and the source of wrong answers for multi-token answers, as
    fractions of the queries: ``first_token_accuracy`` (the first generated token is the
    answer's), ``later_token_accuracy`` (mean over the later positions); a wrong answer is
    ``wrong_entity`` (another real entity of the answer side; ``wrong_entity_sharing`` counts
    those that share a token with the right one), else ``wrong_copy`` (the query's own given
    entity, repeated), else ``wrong_other_side`` (it holds a token of the other side's entities),
    else ``wrong_mixture`` (answer-side tokens that spell no entity), else ``wrong_other``
    (fillers, specials). The wrong classes and the exact matches add up to all queries. Toy
    queries carry every entity of the answer side as candidates."""
    n = max(1, len(answers))
    out = dict.fromkeys(ANSWER_SOURCES, 0.0)
    for answer, cands, own in zip(answers, candidates, given, strict=True):
        got, right = tuple(answer), tuple(cands[0])
        out["first_token_accuracy"] += got[:1] == right[:1]
        later = [g == r for g, r in zip(got[1:], right[1:], strict=False)]
        out["later_token_accuracy"] += sum(later) / max(1, len(right) - 1)
        if got == right:
            continue
        side = {t for c in cands for t in c}
        if got in {tuple(c) for c in cands[1:]}:
            out["wrong_entity"] += 1
            out["wrong_entity_sharing"] += bool(set(got) & set(right))
        elif got == tuple(own):
            out["wrong_copy"] += 1
        elif any(t in other_side for t in got):
            out["wrong_other_side"] += 1
        elif all(t in side for t in got):
            out["wrong_mixture"] += 1
        else:
            out["wrong_other"] += 1
    return {k: v / n for k, v in out.items()}


OTHER_SIDE = {"forward": "reverse", "reverse": "forward", "mirror": "forward"}
"""The direction whose answers are the other side's entities (the given entity of a query)."""


TOY_EXACT_UP_TO = 4
"""The toy ranks an MDM's answers of at most this many tokens (every length the named sweeps
use) by the likelihood bound's exact expectation: 15 masked rows for four tokens, cheaper than
16 draws and without their noise; longer entities by the draws. (The sweeps published before
this default, bridge, entity-length and entity-masking, ranked with 8 draws.)"""


class ToyEvaluator:
    """:func:`evaluate` with the queries of every direction encoded once (a run evaluates every
    ``eval_every`` steps). One-token entities take the fast batched path; longer ones (the
    bridge's ``data.entity_tokens``) are generated (the MDM sampler fills the answer one token
    per step; the ARM decodes greedily) and every candidate is scored by its likelihood (exact
    for the ARM; for the MDM the bound, exactly up to ``exact_up_to`` tokens, else with ``n_mc``
    draws), with a generator seeded alike at every call, so the evaluation is a function of the
    weights."""

    def __init__(self, dataset: ReversalDataset, vocab: Vocab, n_mc: int = 8,
                 exact_up_to: int = TOY_EXACT_UP_TO) -> None:  # fmt: skip
        self.dataset, self.vocab = dataset, vocab
        self.n_mc, self.exact_up_to = n_mc, exact_up_to
        self.queries = {d: toy_queries(dataset, vocab, d) for d in DIRECTIONS
                        if d in dataset.queries}  # fmt: skip
        self.groups = {
            group: {d: toy_queries(dataset, vocab, d, group) for d in DIRECTIONS if asked.get(d)}
            for group, asked in dataset.query_groups.items()
        }  # fmt: skip

    def sets(self, model: Any) -> list[tuple[str, str, Queries | None, dict[str, Queries]]]:
        """Every metric key's ``(key, direction, queries, the same facts' queries by
        direction)``: the directions, then each group's (``reverse_both``, ...); ``queries`` is
        None where the dataset has none or ``model`` cannot be asked them (an ARM, a mirror)."""
        asked = directions_for(one_way(model))
        sets = [(d, d, self.queries.get(d), self.queries) for d in DIRECTIONS]
        sets += [(f"{d}_{group}", d, q, qs) for group, qs in self.groups.items()
                 for d, q in qs.items()]  # fmt: skip
        return [(key, d, q if d in asked else None, qs) for key, d, q, qs in sets]

    def _read(self, model: Any, queries: Queries) -> Read:
        vocab = self.vocab
        if queries.single_token:
            return read_queries(model, queries, causal=model.causal, mask_id=vocab.mask_id,
                                pad_id=vocab.pad_id)  # fmt: skip
        length = len(queries.candidates[0][0])
        settings = DecodeConfig(gen_length=length, n_mc=self.n_mc, exact_up_to=self.exact_up_to)
        return read_queries(model, queries, causal=model.causal, mask_id=vocab.mask_id,
                            pad_id=vocab.pad_id, settings=settings,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip

    @torch.no_grad()
    def __call__(self, model: Any) -> dict[str, Any]:
        """Toy accuracy metrics for every direction the model can be asked (``accuracy``: the
        model's answer is the right one; ``candidate_accuracy``: the answer ranks first among the
        direction's candidates by likelihood; ``answer_logprob``: mean log p of the answer;
        ``chance``), the same with a group's suffix for the dataset's ``query_groups``
        (``_unseen``: a paraphrase the fact was not trained in; ``_both``: facts trained in both
        directions), plus the per-query predictions (``predictions[key]``) and correctness
        (``correct[key]``, the units of the paired tests)."""
        vocab = self.vocab
        was_training = model.training
        model.eval()
        out: dict[str, Any] = {}
        predictions: dict[str, list[str]] = {}
        correct: dict[str, list[bool]] = {}
        for key, direction, queries, same_facts in self.sets(model):
            if queries is None:
                for metric in ("accuracy", "candidate_accuracy", "answer_logprob", "chance"):
                    out[f"{key}_{metric}"] = None
                continue
            read = self._read(model, queries)
            right = [a == r for a, r in zip(read.answers, queries.answers, strict=True)]
            out[f"{key}_accuracy"] = sum(right) / len(right)
            out[f"{key}_candidate_accuracy"] = (read.ranks == 1).double().mean().item()
            out[f"{key}_answer_logprob"] = read.right_logprob.mean().item()
            out[f"{key}_chance"] = self.dataset.chance(direction)
            if not queries.single_token:  # multi-token entities: where the answers come from
                other = same_facts[OTHER_SIDE[direction]]  # per fact, in order
                sources = answer_sources(read.answers, queries.candidates, other.answers,
                                         {t for c in other.candidates[0] for t in c})  # fmt: skip
                out |= {f"{key}_{name}": value for name, value in sources.items()}
            predictions[key] = [" ".join(vocab.decode(a)) for a in read.answers]
            correct[key] = right
        out["predictions"] = predictions
        out["correct"] = correct
        model.train(was_training)
        return out


def evaluate(model: Any, dataset: ReversalDataset, vocab: Vocab) -> dict[str, Any]:
    """The toy metrics of ``model`` (:class:`ToyEvaluator`)."""
    return ToyEvaluator(dataset, vocab)(model)


# --------------------------------------------------------------------------------------------------
# Natural-language splits: generation, string matches, likelihood ranks against distractors
# --------------------------------------------------------------------------------------------------


def score(record: dict[str, Any]) -> dict[str, Any]:
    """(Re-)compute the match fields of a saved generation record."""
    answers = record["answers"]
    gen = record["generation"]
    return record | {
        "exact": exact_match(gen, answers),
        "prefix": prefix_match(gen, answers),
        "substring": substring_match(gen, answers),
    }


def text_queries(
    tokenizer: Any,
    pairs: Sequence[TextPair],
    n_distractors: int,
    bos: bool = False,
    distractor_seed: int = 0,
    split: Sequence[TextPair] | None = None,
) -> tuple[Queries, list[list[str]]]:
    """A split's queries with ``n_distractors`` distinct answers of other queries each (never one
    of the query's own accepted answers), drawn from their own generator; an answer ends with EOS
    except in an infilling query, where the suffix follows it. Prompts and answers are framed as
    in training (:func:`~revcurse.data.text.frame`: a chat checkpoint's template and end-of-turn
    token, or ``[BOS]`` and EOS). Also the candidates as text (``split``: as in
    :func:`candidates`)."""
    framing = frame(tokenizer, bos)
    prompts = [encode_prompt(tokenizer, p.prompt, bos) for p in pairs]
    suffixes = [tokenizer.encode(p.suffix) if p.suffix else [] for p in pairs]
    infill = any(suffixes)
    if infill and framing.tail:
        raise ValueError("infilling (mirror) queries are not framed for a chat template; ask them "
                         "of a model without one")  # fmt: skip
    texts = candidates(pairs, n_distractors, distractor_seed, split)
    encoded = {
        a: tokenizer.encode(a) + ([] if infill else [framing.end]) for cs in texts for a in cs
    }
    return Queries(prompts, [[encoded[c] for c in cs] for cs in texts], suffixes), texts


def candidates(
    pairs: Sequence[TextPair],
    n_distractors: int,
    distractor_seed: int = 0,
    split: Sequence[TextPair] | None = None,
) -> list[list[str]]:
    """Per query, its answer first and then ``n_distractors`` distinct answers of other queries of
    the split (never one of its own accepted answers, compared normalised), drawn from a generator
    seeded ``distractor_seed``; every query gets as many as the most constrained one can. The one
    draw of the likelihood ranking and of the harness export's multiple-choice tasks. ``split``:
    the whole split when ``pairs`` is its first queries (a subsample evaluated): the candidates
    are those of the whole split's draw, so a query ranks the same candidates whether its split is
    evaluated whole, cut, or exported to the harness."""
    if split is not None:
        if list(split[: len(pairs)]) != list(pairs):
            raise ValueError("the evaluated queries must be the first queries of their split")
        return candidates(split, n_distractors, distractor_seed)[: len(pairs)]
    distinct = list(dict.fromkeys(p.completion for p in pairs))
    normal = {a: normalize(a) for a in distinct}
    k = min(n_distractors, len(distinct) - 1)
    texts = []
    choose = torch.Generator().manual_seed(distractor_seed)
    for p in pairs:
        own = {normalize(x) for x in p.answers}
        others = [a for a in distinct if normal[a] not in own]
        order = torch.randperm(len(others), generator=choose)[:k].tolist()
        texts.append([p.completion] + [others[i] for i in order])
    k = min(len(c) for c in texts) - 1
    return [c[: 1 + k] for c in texts]


@torch.no_grad()
def evaluate_split(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[TextPair],
    causal: bool,
    settings: DecodeConfig,
    generator: torch.Generator,
    bos: bool = False,
    eos_fill_to: int | None = None,
    distractor_seed: int = 0,
    split: Sequence[TextPair] | None = None,
    shard: Shard | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Aggregate metrics and one record per query of a text split (``bos``: prompts start with
    BOS, as the statements of from-scratch models do; ``eos_fill_to``: an MDM trained on statements
    padded with EOS to that length sees every query padded the same way). Infilling queries get an
    answer region as long as the query's own answer (the records say so). ``split``: the whole
    split ``pairs`` begins (:func:`candidates`: a subsample ranks the whole split's candidates).
    ``shard``: in one of several processes (every one calling), read this process's queries and
    gather the rest (:func:`gather_read`): the records of one process reading them all."""
    eos, end = tokenizer.eos_id, frame(tokenizer, bos).end
    queries, texts = text_queries(tokenizer, pairs, settings.n_distractors, bos, distractor_seed,
                                  split)  # fmt: skip
    read = read_queries(
        model, queries, causal=causal, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
        eos_id=end, settings=settings, generator=generator,
        fill=None if eos_fill_to is None else (eos, eos_fill_to), chain=True, text_eos_id=eos,
        shard=shard,
    )  # fmt: skip
    if shard is not None:
        read = gather_read(read, shard)
    chain_ranks = likelihood_rank(read.chain)
    generations = [tokenizer.decode(truncate_at(row, [end, eos, tokenizer.pad_id]))
                   for row in read.answers]  # fmt: skip
    ranks = read.ranks
    infill = queries.infill
    records = [
        score(
            {
                "prompt": p.prompt,
                **({"suffix": p.suffix, "answer_length_given": True} if infill else {}),
                "answers": list(p.answers),
                "generation": g,
                "logprob": float(read.logprobs[i, 0]),
                "rank": int(ranks[i]),
                "n_candidates": len(texts[i]),
                "candidates": texts[i],  # the right answer first
                "candidate_logprobs": read.logprobs[i].tolist(),
                "chain_rank": int(chain_ranks[i]),
                "candidate_chain_logprobs": read.chain[i].tolist(),
                "source": p.source,
            }
        )
        for i, (p, g) in enumerate(zip(pairs, generations, strict=True))
    ]
    n = max(1, len(records))
    metrics = {
        "n": len(records),
        "exact": sum(r["exact"] for r in records) / n,
        "prefix": sum(r["prefix"] for r in records) / n,
        "substring": sum(r["substring"] for r in records) / n,
        "likelihood_top1": sum(r["rank"] == 1 for r in records) / n,
        "chain_top1": sum(r["chain_rank"] == 1 for r in records) / n,
        "mean_rank": sum(r["rank"] for r in records) / n,
        "chance_top1": 1.0 / len(texts[0]) if texts else 1.0,
    }
    return metrics, records


def gather_read(read: Read, shard: Shard) -> Read:
    """Every process's share of a split's :class:`Read` (``torch.distributed``, every process
    calling): the Read one process reading every query makes, answers and rows in query order."""
    import torch.distributed as dist

    owned = shard.owns(len(read.answers))
    mine = {q: (read.answers[q], read.logprobs[q], None if read.chain is None else read.chain[q])
            for q, m in enumerate(owned) if m}  # fmt: skip
    pieces: list[dict | None] = [None] * shard.world
    dist.all_gather_object(pieces, mine)
    every = {q: row for piece in pieces for q, row in (piece or {}).items()}
    order = range(len(read.answers))
    gathered = Read.scored([every[q][0] for q in order],
                           torch.stack([every[q][1] for q in order]))  # fmt: skip
    if read.chain is not None:
        gathered.chain = torch.stack([every[q][2] for q in order])
    return gathered


def save_generations(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Raw generations and scores as JSONL (atomically)."""
    files.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def rescore(path: str | Path) -> list[dict[str, Any]]:
    """Re-score saved generations with the current metrics (no model needed)."""
    return [score(r) for r in files.read_jsonl(path)]
