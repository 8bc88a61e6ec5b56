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

from revcurse.data.text import WORD  # the word tokenizer's split, so matches agree with it


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


def likelihood_rank(scores: torch.Tensor) -> torch.Tensor:
    """Rank (1 = best) of column 0 (the correct answer) among each row's candidates ``[Q, 1 + K]``;
    ties count against the correct answer."""
    return 1 + (scores[:, 1:] >= scores[:, :1]).sum(dim=1)
