"""One record type for every reversal dataset.

A *fact* relates two entities, ``a`` and ``b``. Training sees statements in one direction; the
evaluation asks a *forward* query (given ``a``, produce ``b``, the direction that was trained) and a
*reverse* query (given ``b``, produce ``a``). Entities, prompts and answers are token sequences, so
the same record serves single-token toy entities and multi-token natural-language ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal["forward", "reverse", "mirror"]
DIRECTIONS: tuple[Direction, Direction, Direction] = ("forward", "mirror", "reverse")
"""The directions a model is evaluated on.

* ``forward`` ``a REL [M] -> b``: the trained direction;
* ``mirror`` ``[M] REL b -> a``: the reverse *answer* in the trained positional configuration (a
  masked-diffusion training example). Only a bidirectional model can be asked it; a reverse failure
  means something only where the model has fitted forward *and* mirror;
* ``reverse`` ``b REL [M] -> a``: never trained.
"""


def directions_for(causal: bool) -> tuple[Direction, ...]:
    """The directions a model can be asked: a causal model sees no context right of its answer, so
    the mirror query (answer first) has nothing to condition on and is not asked."""
    return tuple(d for d in DIRECTIONS if not (causal and d == "mirror"))


def one_way(model: Any) -> bool:
    """Whether ``model`` cannot be asked to fill an answer from what follows it: read as an
    autoregressive model, or attending to the left only (a masked model with causal attention,
    ``model.attention=causal``). Such a model has no mirror query and no mirror pairing."""
    return bool(model.causal or getattr(model, "attends_causally", model.causal))


Tokens = tuple[str, ...]


@dataclass(frozen=True)
class Fact:
    """A relation between entity ``a`` and entity ``b`` (``a REL b``)."""

    a: Tokens
    relation: Tokens
    b: Tokens


@dataclass(frozen=True)
class Query:
    """A test prompt whose answer fills the tokens between ``prompt`` and ``suffix``.

    A bidirectional model sees ``prompt + [MASK] * len(answer) + suffix``; a causal model sees only
    ``prompt`` and continues it.
    """

    fact: int
    direction: Direction
    prompt: Tokens
    answer: Tokens
    suffix: Tokens = ()


@dataclass
class ReversalDataset:
    """Training statements plus forward and reverse queries over the same facts."""

    name: str
    facts: list[Fact]
    train: list[Tokens]
    """Training statements (token sequences); only the forward direction for the toy task."""
    queries: dict[Direction, list[Query]]
    candidates: dict[Direction, list[Tokens]] = field(default_factory=dict)
    """The answers a query of each direction can have; chance accuracy is 1 / len(candidates)."""
    extra_tokens: list[str] = field(default_factory=list)
    """Tokens the vocabulary needs beyond those in statements and queries (e.g. all fillers)."""
    answer_spans: list[tuple[int, int]] = field(default_factory=list)
    """Per training statement, the [start, end) token span of its answer entity (answer_only)."""
    roles: list[tuple[str, ...]] = field(default_factory=list)
    """Per training statement, the role of each token: ``special`` (BOS, EOS), ``entity``,
    ``relation`` or ``filler``; which of them may be masked is the run's ``train.maskable``."""
    query_groups: dict[str, dict[Direction, list[Query]]] = field(default_factory=dict)
    """Further queries, by group name (the suffix of their metrics, ``reverse_<group>_accuracy``):
    ``unseen``, the queries again in a wording the fact was never trained in (the toy's relation
    paraphrases); ``both``, the queries of facts trained in both directions (the toy's
    ``both_fraction``: ``queries`` then holds the facts trained forward only). Same candidates as
    ``queries``."""

    def chance(self, direction: Direction) -> float:
        """Accuracy of a uniform guess among the candidate answers of ``direction``."""
        return 1.0 / len(self.candidates[direction])


@dataclass(frozen=True)
class TextPair:
    """A natural-language prompt and its expected completion (a statement is prompt + completion)."""

    prompt: str
    completion: str
    alternatives: tuple[str, ...] = ()
    """Other completions that also count as correct (e.g. any child of a parent)."""
    source: str = ""
    """Where it came from: ``file:line``."""
    suffix: str = ""
    """Text after the completion, for infilling queries (the mirror query ``[M..M] REL b``): a
    bidirectional model sees ``prompt [MASK]* suffix``; a causal model cannot be asked them."""
    fact: str = ""
    """The id of the fact it states or asks (datasets read as facts, :mod:`revcurse.data.facts`):
    the probes pair a forward and a reverse query by it."""

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.completion, *self.alternatives)


def entity_text(answer: str) -> str:
    """An answer as the entity it names, for finding it in another query's text: surrounding
    space and a final period (descriptions end their sentence) are not part of it."""
    return answer.strip().removesuffix(".")


def named_entities(pairs: Iterable[TextPair]) -> list[str]:
    """The entities a dataset names: every answer (completion and alternatives) of its statements
    and queries, as :func:`entity_text` reads them, each once (what whole-entity masking masks)."""
    return list(dict.fromkeys(e for p in pairs for a in (p.completion, *p.alternatives)
                              if (e := entity_text(a))))  # fmt: skip


def mirror_query(forward: TextPair, answer: str) -> TextPair | None:
    """The mirror query of a fact: the forward statement ``forward.prompt + forward.completion``
    with ``answer`` (the reverse query's answer, found verbatim in the forward prompt) as the part
    to fill, everything after it as the suffix. None when ``answer`` is not in the prompt."""
    answer = entity_text(answer)
    at = forward.prompt.find(answer) if answer else -1
    if at < 0:
        return None
    return TextPair(
        prompt=forward.prompt[:at],
        completion=answer,
        source=forward.source,
        fact=forward.fact,
        suffix=forward.prompt[at + len(answer) :] + forward.completion,
    )


@dataclass
class TextDataset:
    """A natural-language reversal dataset: training statements and named test splits."""

    name: str
    train: list[TextPair]
    tests: dict[str, list[TextPair]]
    directions: dict[str, Direction]
    """Per test split: ``forward`` (the trained direction) or ``reverse``."""
    licence: str
    notes: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What :func:`audit` found when the dataset was loaded (repeated or conflicting records)."""


def audit(dataset: TextDataset) -> list[str]:
    """Refuse a dataset with an empty split; return one warning per repeated record (same prompt
    and completion twice in a split) and per conflicting one (same prompt, an answer the first
    record does not accept), each naming where both come from."""
    from revcurse.errors import RevcurseError  # errors is a leaf module; kept local to schema

    warnings: list[str] = []
    splits = {"train": dataset.train, **dataset.tests}
    seen_lists: set[int] = set()
    for name, pairs in splits.items():
        if not pairs:
            raise RevcurseError(f"{dataset.name}: split '{name}' is empty")
        if id(pairs) in seen_lists:  # a split that is the training list itself: reported once
            continue
        seen_lists.add(id(pairs))
        first: dict[str, TextPair] = {}
        for pair in pairs:
            earlier = first.setdefault(pair.prompt, pair)
            if earlier is pair:
                continue
            if pair.completion == earlier.completion:
                warnings.append(f"{pair.source}: repeats {earlier.source} (split '{name}')")
            elif pair.completion.strip() not in {a.strip() for a in earlier.answers}:
                warnings.append(f"{pair.source}: conflicts with {earlier.source}: same prompt, "
                                f"answer {pair.completion.strip()!r} vs "
                                f"{earlier.completion.strip()!r} (split '{name}')")  # fmt: skip
    return warnings
