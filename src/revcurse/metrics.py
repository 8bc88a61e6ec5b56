"""Answer-matching metrics of the reversal literature, and likelihood ranks.

* ``exact``: the normalised generation equals the normalised answer;
* ``prefix``: it starts with the answer (Berglund et al. 2023, ``evaluate_completion``);
* ``substring``: the answer occurs in it (SMDM / LLaDA reversal evaluations).

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
