"""Answer-matching metrics of the reversal literature, and likelihood ranks.

* ``exact``: the normalised generation equals the normalised answer;
* ``prefix``: it starts with the answer (Berglund et al. 2023, ``evaluate_completion``);
* ``substring``: the answer occurs in it (SMDM / LLaDA reversal evaluations).

A likelihood rank can be won without recalling the fact when the query names the answer: on
Parent–Child a child and a parent often share a surname, and the right child may be the only
candidate with the parent's. :func:`word_cue` marks such queries and :func:`cue_metrics` reads
the ranks on the two kinds of query apart.

Normalisation lower-cases and re-joins words and punctuation with single spaces, so tokenizer
spacing (``"Time ."`` vs ``"Time."``) never decides a match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from revcurse.data.text import WORD
from revcurse.errors import RevcurseError  # the word tokenizer's split, so matches agree with it


def normalize(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def exact_match(generation: str, answers: Sequence[str]) -> bool:
    g = normalize(generation)
    return any(g == normalize(a) for a in answers)


def prefix_match(generation: str, answers: Sequence[str]) -> bool:
    g = normalize(generation)
    return any(normalize(a) and (g + " ").startswith(normalize(a) + " ") for a in answers)


def substring_match(generation: str, answers: Sequence[str]) -> bool:
    g = f" {normalize(generation)} "
    return any(normalize(a) and f" {normalize(a)} " in g for a in answers)


def _refuse_nonfinite(scores: torch.Tensor) -> None:
    """NaN compares false with everything, so a broken model would rank every answer first; +inf
    likewise (-inf, a probability of zero, is a valid score and ranks last)."""
    bad = torch.isnan(scores) | (scores == float("inf"))
    if bool(bad.any()):
        rows = int(bad.any(dim=1).sum())
        raise RevcurseError(
            f"the model's scores are not finite (NaN or +inf) for {rows} of {len(scores)} "
            "queries; refusing to rank them (are its weights finite?)"
        )


def likelihood_rank(scores: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best) of column 0 (the correct answer) among each row's candidates ``[Q, 1 + K]``;
    ties count against the correct answer. Scores that are NaN or +inf are refused."""
    _refuse_nonfinite(scores)
    return 1 + (scores[:, 1:] >= scores[:, :1]).sum(dim=1)


def pool_rank(scores: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """:func:`likelihood_rank` when every row ranks one pool of distinct candidates ``[Q, C]`` and
    its correct answer is column ``right[q]`` ``[Q]`` (not moved first): the correct answer counts
    itself once, each other candidate scoring at least as well counts against it."""
    _refuse_nonfinite(scores)
    return (scores >= scores.gather(1, right[:, None])).sum(dim=1)


def _words(text: str) -> set[str]:
    """The words of ``text`` of two characters or more, lower-cased (initials and the ``s`` of a
    possessive are no cue)."""
    return {w for w in WORD.findall(text.lower()) if len(w) > 1 and w[0].isalnum()}


def word_cue(prompt: str, candidates: Sequence[str], suffix: str = "") -> bool:
    """Whether the query gives its answer away by a word: the right answer (``candidates[0]``) is
    the only candidate that shares a word with the prompt (and suffix)."""
    asked = _words(f"{prompt} {suffix}")
    sharing = [bool(_words(c) & asked) for c in candidates]
    return bool(sharing) and sharing[0] and not any(sharing[1:])


def cue_metrics(records: Sequence[dict]) -> dict[str, float | None]:
    """A text split's likelihood ranks apart on the queries whose answer is the only candidate
    sharing a word with the prompt (:func:`word_cue`: ``cued``) and on the rest (``uncued``),
    from its saved records (``prompt``, ``suffix``, ``candidates``, ``rank``, ``chain_rank``):
    the share of cued queries, and the top-1 rate of each rank on each kind (``None`` for a kind
    with no query)."""
    cued = [word_cue(r["prompt"], r["candidates"], r.get("suffix", "")) for r in records]
    out: dict[str, float | None] = {"cued_share": sum(cued) / len(records) if records else None}
    for metric, key in (("likelihood_top1", "rank"), ("chain_top1", "chain_rank")):
        for kind, want in (("cued", True), ("uncued", False)):
            ranks = [r[key] for r, c in zip(records, cued, strict=True) if c == want]
            out[f"{metric}_{kind}"] = sum(k == 1 for k in ranks) / len(ranks) if ranks else None
    return out
