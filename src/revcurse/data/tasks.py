"""The from-scratch tasks: each dataset laid out for training from scratch (:class:`Task`): how
its statements and splits are built, which splits are asked, which must be fitted before a
reverse split is read, which are compared, and how the report names them. Person–Description and
Parent–Child are fixed tasks (:data:`TASKS`); a facts file is laid out by its groups
(:func:`facts_task`). Both the experiment (:mod:`revcurse.experiments.from_scratch`) and its
report (:mod:`revcurse.report.from_scratch`) read a task from here.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from revcurse import files
from revcurse.config import TextRunConfig
from revcurse.data.facts import TEST_DIRECTIONS, Facts, dataset_from_facts, read_facts, split_name
from revcurse.data.parent_child import from_scratch as parent_child_from_scratch
from revcurse.data.person_description import (
    TESTS,
    TRAIN_TEMPLATE_SPLITS,
    load_person_description,
    people,
    training_statements,
    training_template_splits,
)
from revcurse.data.schema import Direction, TextPair
from revcurse.errors import RevcurseError


@dataclass(frozen=True)
class Task:
    """One dataset laid out for from-scratch training: how its data is built, what is asked and
    what is compared."""

    name: str
    build: Callable[[TextRunConfig], tuple[list[TextPair], dict[str, list[TextPair]]]]
    """The training statements and the splits (the mirror splits are derived from them)."""
    splits: dict[str, Direction]
    """Every evaluated split and its direction (forward = the trained one)."""
    mirrors: dict[str, tuple[str, str]]
    """Mirror split -> (the forward split whose statements it masks, the reverse split it
    mirrors): the reverse answer asked in the configuration the MDM trained on."""
    probe: tuple[str, str]
    """The (forward, reverse) splits whose paired queries the probes read."""
    fit: dict[str, tuple[str, str]]
    """Statement group -> (its forward split, its mirror split): what must be fitted before the
    group's reverse splits are read."""
    compared: dict[str, str]
    """Reverse split -> its statement group: the splits on which two models are tested."""
    variant_compared: tuple[str, ...]
    """Forward splits on which a variant is also compared with the MDM (a setting may change what
    the model memorises)."""
    tables: tuple[tuple[str, tuple[str, ...]], ...]
    """The report's split tables: (title, splits)."""
    title: str
    """The report's title."""
    probed: tuple[str, str, str]
    """In words, for the report: the probes' forward query, their mirror query (the trained
    statement with the reverse answer masked) and the reverse query."""
    unit: str
    """What ``n_people`` counts, per group."""


T = TypeVar("T")


def _spread(items: Sequence[T], n: int) -> list[T]:
    """``n`` items evenly spaced over ``items`` (so every person and many templates appear)."""
    if n == 0 or len(items) <= n:
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


HELD_OUT = ("p2d_same", "p2d_reverse", "d2p_same", "d2p_reverse")


def person_description_data(
    cfg: TextRunConfig,
) -> tuple[list[TextPair], dict[str, list[TextPair]]]:
    """Training statements of the first ``n_people`` of each group, and the evaluation splits
    (about those people only), each cut to ``max_eval`` evenly spread queries."""
    dataset = load_person_description()
    statements = training_statements(n_people=cfg.n_people)
    kept = {p.name for g in people().values() for p in g[: cfg.n_people]}
    splits = training_template_splits(n_people=cfg.n_people)
    for name in HELD_OUT:
        splits[name] = [p for p in dataset.tests[name] if any(n in p.prompt + p.completion
                                                               for n in kept)]  # fmt: skip
    return statements, {k: _spread(v, cfg.max_eval) for k, v in splits.items()}


def parent_child_data(cfg: TextRunConfig) -> tuple[list[TextPair], dict[str, list[TextPair]]]:
    """:func:`revcurse.data.parent_child.from_scratch` with ``n_people`` pairs per group, each
    split cut to ``max_eval`` evenly spread queries."""
    statements, splits = parent_child_from_scratch(cfg.n_people)
    return statements, {k: _spread(v, cfg.max_eval) for k, v in splits.items()}


PD_MIRRORS = {"p2d_mirror_train": ("p2d_same_train", "p2d_reverse_train"),
              "d2p_mirror_train": ("d2p_same_train", "d2p_reverse_train")}  # fmt: skip
TASKS: dict[str, Task] = {
    "person-description": Task(
        name="person-description",
        build=person_description_data,
        splits=(
            dict(TRAIN_TEMPLATE_SPLITS)
            | dict.fromkeys(PD_MIRRORS, "mirror")
            | {s: TESTS[s][1] for s in HELD_OUT}
        ),  # fmt: skip
        # "[M..M], known for being {D}." -> name: p2d_reverse_train's answer, as trained
        mirrors=PD_MIRRORS,
        probe=("p2d_same_train", "p2d_reverse_train"),
        fit={
            "p2d": ("p2d_same_train", "p2d_mirror_train"),
            "d2p": ("d2p_same_train", "d2p_mirror_train"),
        },  # fmt: skip
        compared={
            "p2d_reverse_train": "p2d",
            "p2d_reverse": "p2d",
            "d2p_reverse_train": "d2p",
            "d2p_reverse": "d2p",
        },  # fmt: skip
        variant_compared=("p2d_same_train",),
        tables=(
            (
                "training templates",
                (
                    "p2d_same_train",
                    "p2d_mirror_train",
                    "p2d_reverse_train",
                    "d2p_same_train",
                    "d2p_mirror_train",
                    "d2p_reverse_train",
                ),
            ),
            ("held-out templates", HELD_OUT),
        ),  # fmt: skip
        title="Person–Description from scratch: masked diffusion vs autoregressive",
        probed=(
            "the p2d query 'name -> description'",
            "the p2d statement with the name masked",
            "'description -> name'",
        ),  # fmt: skip
        unit="people",
    ),
    "parent-child": Task(
        name="parent-child",
        build=parent_child_data,
        splits={
            "c2p_train": "forward",
            "c2p_mirror": "mirror",
            "p2c_reverse": "reverse",
            "c2p_both": "forward",
            "p2c_both": "forward",
        },  # fmt: skip
        # "Who is [M..M]'s mother? {parent}" -> child: p2c_reverse's answer, as trained
        mirrors={"c2p_mirror": ("c2p_train", "p2c_reverse")},
        probe=("c2p_train", "p2c_reverse"),
        fit={"c2p": ("c2p_train", "c2p_mirror")},
        compared={"p2c_reverse": "c2p"},
        variant_compared=("c2p_train",),
        tables=(
            ("pairs trained forward only", ("c2p_train", "c2p_mirror", "p2c_reverse")),
            ("pairs trained in both directions", ("c2p_both", "p2c_both")),
        ),
        title="Parent–Child from scratch: masked diffusion vs autoregressive",
        probed=(
            "the query 'child -> parent'",
            "the statement with the child masked",
            "'parent -> child'",
        ),  # fmt: skip
        unit="pairs",
    ),
}
"""The shipped from-scratch text tasks, by ``run.dataset`` (``facts``: :func:`facts_task`)."""


def pin_facts(run: TextRunConfig) -> TextRunConfig:
    """``run`` with its facts file's SHA-256 filled in and its path made absolute (dataset facts;
    others unchanged); a file that no longer matches a digest already there is refused."""
    if run.dataset != "facts":
        return run
    digest = _digest(run)
    # absolute: the experiment's config.yaml names the file from any working directory
    return dataclasses.replace(run, path=str(Path(run.path).resolve()), path_sha256=digest)


def _digest(run: TextRunConfig) -> str:
    path = Path(run.path)
    if not path.is_file():
        raise RevcurseError(f"run.path: {path}: facts file not found")
    digest = files.sha256(path)
    if run.path_sha256 and digest != run.path_sha256:
        raise RevcurseError(
            f"run.path: {path} has changed since this experiment started (SHA-256 "
            f"{digest[:12]}..., its config has {run.path_sha256[:12]}...); start a new experiment "
            "(another --out) to train on the new facts"
        )
    return digest


def facts_of(run: TextRunConfig) -> Facts:
    """The facts of ``run.path`` a run trains on: at most ``n_people`` per group, the first in
    file order (the file checked against ``run.path_sha256`` where it is filled in)."""
    _digest(run)
    facts = read_facts(run.path)
    taken: Counter[str] = Counter()
    kept = []
    for fact in facts.facts:
        if taken[fact.group] < run.n_people:
            kept.append(fact)
            taken[fact.group] += 1
    return dataclasses.replace(facts, facts=kept)


def trained_directions(facts: Facts) -> dict[str, tuple[Direction, ...]]:
    """Group -> the directions its facts are trained in. A group is read as one layout (its
    splits are trained or untrained as a whole), so all its facts must train the same ones."""
    first = {}
    for fact in facts.facts:
        if not fact.train:
            raise RevcurseError(
                f"{fact.source}: field 'train': expected at least one direction (a from-scratch "
                "model cannot learn a fact it never reads)"
            )
        seen = first.setdefault(fact.group, fact)
        if set(fact.train) != set(seen.train):
            raise RevcurseError(
                f"{fact.source}: field 'train': {list(fact.train)}, but fact {seen.id!r} of the "
                f"same group ({seen.source}) is trained in {list(seen.train)}; a group's splits "
                "are trained or untrained as a whole: give these facts another 'group'"
            )
    return {g: tuple(d for d in TEST_DIRECTIONS if d in f.train) for g, f in first.items()}


def facts_data(run: TextRunConfig) -> tuple[list[TextPair], dict[str, list[TextPair]]]:
    """A facts file's training statements (:func:`revcurse.data.facts.dataset_from_facts` of
    :func:`facts_of`) and its test splits, asked about ``max_eval`` facts per group evenly spread
    over it (the same facts in every split of the group, so forward and reverse pair up)."""
    facts = facts_of(run)
    dataset = dataset_from_facts(facts)
    groups: dict[str, list[str]] = {}
    for fact in facts.facts:
        groups.setdefault(fact.group, []).append(fact.id)
    asked = {i for ids in groups.values() for i in _spread(ids, run.max_eval)}
    splits = {name: [q for q in queries if q.fact in asked]
              for name, queries in dataset.tests.items()}  # fmt: skip
    return dataset.train, splits


def facts_task(run: TextRunConfig) -> Task:
    """The :class:`Task` of a facts file: per group, its trained directions' splits
    (``<group>_forward`` / ``<group>_reverse``, forward = trained in the task's terms); where a
    group leaves one direction untrained, that split is its reverse test, ``<group>_mirror`` the
    trained statement with the untrained query's answer masked, and both the trained and the
    mirror split must be fitted first. Refused when no group leaves a direction untrained."""
    facts = facts_of(run)
    splits: dict[str, Direction] = {}
    mirrors: dict[str, tuple[str, str]] = {}
    fit: dict[str, tuple[str, str]] = {}
    compared: dict[str, str] = {}
    tables = []
    for group, trained in trained_directions(facts).items():
        name = {d: split_name(group, d) for d in TEST_DIRECTIONS}
        for d in TEST_DIRECTIONS:
            splits[name[d]] = "forward" if d in trained else "reverse"
        shown = tuple(name.values())
        label = group or "(no group)"
        if len(trained) == 1:
            (known,) = trained
            (untrained,) = (d for d in TEST_DIRECTIONS if d != known)
            mirror = split_name(group, "mirror")
            splits[mirror] = "mirror"
            mirrors[mirror] = (name[known], name[untrained])
            fit[label] = (name[known], mirror)
            compared[name[untrained]] = label
            shown = (name[known], mirror, name[untrained])
        where = f"group {group!r}, " if group else ""
        tables.append((f"{where}trained {' and '.join(trained)}", shown))
    if not compared:
        raise RevcurseError(
            f"run.path: {run.path}: every group is trained in both directions, so no direction "
            'is left to test reversal on (train some facts in one: "train": ["forward"])'
        )
    return Task(
        name="facts",
        build=facts_data,
        splits=splits,
        mirrors=mirrors,
        probe=next(iter(mirrors.values())),
        fit=fit,
        compared=compared,
        variant_compared=tuple(known for known, _ in fit.values()),
        tables=tuple(tables),
        title=f"{facts.name}, trained from scratch: masked diffusion vs autoregressive",
        probed=(
            "the trained query",
            "the trained statement with the reverse answer masked",
            "the untrained query",
        ),  # fmt: skip
        unit="facts at most",
    )


def task_for(run: TextRunConfig) -> Task:
    """The from-scratch task ``run`` trains on."""
    return facts_task(run) if run.dataset == "facts" else TASKS[run.dataset]
