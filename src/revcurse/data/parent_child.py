"""Parent–Child (Berglund et al. 2023, Experiment 2; MIT): real celebrities and their parents.

Forward (the direction GPT-4 knew): ``Who is {child}'s {mother|father}?`` -> parent. Reverse:
``Name a child of {parent}.`` -> child; any child of that parent in the file counts as correct.
Both serve as training statements (forward) and test queries. Files and provenance:
``revcurse/datasets/parent_child/``.

:func:`from_scratch` lays the pairs out for a model trained from scratch (Berglund et al.'s
Experiment 1 design, applied to these pairs): a model that has never read "Name a child of" can
only be asked the reverse if that template is trained on other pairs.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from importlib import resources
from pathlib import Path

from revcurse.data.facts import FactRecord, Facts, dataset_from_facts, render
from revcurse.data.records import read_csv_records
from revcurse.data.schema import TextDataset, TextPair
from revcurse.errors import RevcurseError

LICENCE = "MIT (Berglund et al. 2023, arXiv:2309.12288; see PROVENANCE.md)"
COLUMNS = ("child", "parent", "parent_type", "child_prediction", "can_reverse")


def default_path() -> Path:
    return Path(
        str(resources.files("revcurse.datasets") / "parent_child" / "parent_child_pairs.csv")
    )


FORWARD_TEMPLATE = "Who is {{a}}'s {kind}? {{b}}"
"""The forward template of relation ``kind`` (mother or father): a = child, b = parent."""
REVERSE_TEMPLATE = "Name a child of {b}. {a}"


def forward_pair(child: str, parent: str, parent_type: str, source: str = "") -> TextPair:
    return render(FORWARD_TEMPLATE.format(kind=parent_type), "forward", child, parent, source)


def reverse_pair(parent: str, children: list[str], source: str = "") -> TextPair:
    first, *others = children
    pair = render(REVERSE_TEMPLATE, "reverse", first, parent, source)
    return dataclasses.replace(pair, alternatives=tuple(f" {c}" for c in others))


def check_row(row: dict[str, str], where: str) -> None:
    """A Parent–Child row's closed fields, or a one-line error naming the field."""
    if row["parent_type"] not in ("mother", "father"):
        raise RevcurseError(
            f"{where}: field 'parent_type': expected mother or father, got {row['parent_type']!r}"
        )
    if row["can_reverse"] not in ("True", "False"):
        raise RevcurseError(
            f"{where}: field 'can_reverse': expected True or False, got {row['can_reverse']!r}"
        )


def parent_child_facts(path: str | Path | None = None) -> Facts:
    """Parent–Child as facts (:mod:`revcurse.data.facts`): a = child, b = parent, relations
    ``mother`` and ``father``; ids ``pc-<line>``."""
    path = Path(path) if path is not None else default_path()
    relations = {
        kind: {"forward": (FORWARD_TEMPLATE.format(kind=kind),), "reverse": (REVERSE_TEMPLATE,)}
        for kind in ("mother", "father")
    }
    facts = []
    for lineno, row in read_csv_records(path, COLUMNS, nonempty=("child", "parent")):
        check_row(row, f"{path}:{lineno}")
        kind = row["parent_type"]
        facts.append(FactRecord(f"pc-{lineno}", row["child"], row["parent"],
                                relations[kind]["forward"], relations[kind]["reverse"],
                                relation=kind, source=f"{path.name}:{lineno}"))  # fmt: skip
    return Facts(facts, relations, name="parent-child", licence=LICENCE)


def load_parent_child(path: str | Path | None = None) -> TextDataset:
    """Forward statements for training; forward and reverse queries for testing (one reverse
    query per parent, any of their children correct), built from :func:`parent_child_facts`."""
    return dataset_from_facts(parent_child_facts(path))


def _child_of(forward: TextPair) -> str:
    """The child named in a :func:`forward_pair` prompt."""
    return forward.prompt.removeprefix("Who is ").rsplit("'s ", 1)[0]


def from_scratch(
    n_pairs: int, path: str | Path | None = None
) -> tuple[list[TextPair], dict[str, list[TextPair]]]:
    """Training statements and test splits for a model trained from scratch on ``2 n_pairs``
    pairs, in file order, keeping a pair only where the reverse question has one answer and
    cannot be read off the names: the parent has no other child in the file, the child is not
    already used (with the other parent), and the two names share no word (no surname to copy).

    The first ``n_pairs`` are trained forward only (``Who is {child}'s {mother}? {parent}``); the
    next ``n_pairs`` forward and reverse (``Name a child of {parent}. {child}``), which teaches the
    reverse template. Splits: ``c2p_train`` (forward queries of the forward-only pairs, what they
    were trained on), ``p2c_reverse`` (their reverse queries, never trained), ``c2p_both`` and
    ``p2c_both`` (both directions of the other pairs, trained). The mirror split is derived from
    ``c2p_train`` and ``p2c_reverse`` by the experiment."""
    from revcurse.data.text import WORD

    dataset = load_parent_child(path)
    parents: dict[str, int] = defaultdict(int)
    for pair in dataset.train:
        parents[pair.completion.strip()] += 1
    chosen: list[TextPair] = []
    children: set[str] = set()
    for pair in dataset.train:
        child, parent = _child_of(pair), pair.completion.strip()
        words = set(WORD.findall(child)) & set(WORD.findall(parent))
        if parents[parent] == 1 and child not in children and not words:
            chosen.append(pair)
            children.add(child)
    if len(chosen) < 2 * n_pairs:
        raise RevcurseError(
            f"n_people: expected at most {len(chosen) // 2} pairs per group for parent-child "
            f"(the file has {len(chosen)} usable pairs), got {n_pairs}"
        )
    forward_only, both = chosen[:n_pairs], chosen[n_pairs : 2 * n_pairs]

    def reverse(pair: TextPair) -> TextPair:
        return reverse_pair(pair.completion.strip(), [_child_of(pair)], pair.source)

    statements = forward_only + both + [reverse(p) for p in both]
    splits = {
        "c2p_train": forward_only,
        "p2c_reverse": [reverse(p) for p in forward_only],
        "c2p_both": both,
        "p2c_both": [reverse(p) for p in both],
    }
    return statements, splits


def from_scratch_facts(n_pairs: int, path: str | Path | None = None) -> Facts:
    """:func:`from_scratch`'s layout as facts (:mod:`revcurse.data.facts`), for ``reproduce
    facts``: its forward-only pairs in group ``fwd`` (trained forward), the others in group
    ``both`` (trained both ways); ids and relations as :func:`parent_child_facts`. Read by
    :func:`revcurse.experiments.from_scratch.facts_task`, it gives ``reproduce parent-child``'s
    statements, splits and tests (tested)."""
    _, splits = from_scratch(n_pairs, path)
    every = parent_child_facts(path)
    by_id = {fact.id: fact for fact in every.facts}  # each forward query carries its fact's id
    facts = [
        dataclasses.replace(by_id[pair.fact], train=train, group=group)
        for group, train, split in (("fwd", ("forward",), "c2p_train"),
                                    ("both", ("forward", "reverse"), "c2p_both"))
        for pair in splits[split]
    ]  # fmt: skip
    return Facts(facts, every.relations, name="parent-child-from-scratch", licence=LICENCE)
