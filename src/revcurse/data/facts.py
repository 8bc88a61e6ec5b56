"""revcurse's own facts format (JSONL): your facts, read as strictly as the shipped datasets.

A facts file holds one JSON object per line: an optional first line naming the dataset and its
licence, ``{"dataset": "my-facts", "licence": "CC BY 4.0"}``, then lines of two kinds.

**Relation** lines name a relation's templates once, for facts to refer to::

    {"relation": "capital", "forward": ["{a} is the capital of {b}"],
     "reverse": ["The capital of {b} is {a}"]}

**Fact** lines relate two entities::

    {"id": "fr", "a": "Paris", "b": "France", "relation": "capital"}
    {"id": "p1", "a": "Tom", "b": "Ann", "forward": ["Who is {a}'s mother? {b}"],
     "reverse": ["Name a child of {b}. {a}"], "train": ["forward", "reverse"], "group": "both"}

Fields of a fact: ``id`` (unique), ``a`` and ``b`` (the entities), and either ``relation`` (a
relation line *earlier* in the file) or its own ``forward`` and ``reverse`` template lists; optional
``train`` (the directions whose statements are training data; default ``["forward"]``) and
``group`` (names its test splits). A **template** is a string holding ``{a}`` and ``{b}`` once each;
a forward template asks for ``b`` (``{b}`` after ``{a}``), a reverse one for ``a``. The text before
the answer slot is the prompt; the answer, with what follows the slot, is the completion (``"{a} is
{b}."``: prompt ``Paris is``, completion `` France.``). The first template of each direction is
the one the tests ask; the others are paraphrases, trained where that direction is trained.

The dataset (:func:`dataset_from_facts`): training statements are every template of every trained
direction of every fact; test splits ``<group>_<direction>`` (or ``<direction>`` without groups) ask
each fact in the first template of the direction. Queries with the same prompt are asked once, and
every entity that completes that prompt in the file counts as correct (Parent–Child's "Name a child
of X." accepts any child). Every query carries its fact's id, so the probes pair a forward with a
reverse query by id. Errors name ``file:line`` and the field, as the shipped loaders' do.

The shipped Parent–Child and T-REx loaders build their datasets through the same
:func:`dataset_from_facts` (:func:`revcurse.data.parent_child.parent_child_facts`,
:func:`revcurse.data.trex.trex_facts`), and ``revcurse data convert`` writes them in this format:
read back, a converted file gives the very dataset its loader gives (tested).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.data.records import read_jsonl_records
from revcurse.data.schema import Direction, TextDataset, TextPair
from revcurse.errors import RevcurseError

LICENCE = "the facts file's own (see its source)"
TEST_DIRECTIONS: tuple[Direction, ...] = ("forward", "reverse")
ANSWER = {"forward": "b", "reverse": "a"}
"""The entity a query of each direction asks for."""


@dataclass(frozen=True)
class FactRecord:
    """One fact of a facts file: two entities and the templates that state it each way."""

    id: str
    a: str
    b: str
    forward: tuple[str, ...]
    reverse: tuple[str, ...]
    train: tuple[Direction, ...] = ("forward",)
    group: str = ""
    relation: str = ""
    """The relation line it refers to ("": templates of its own)."""
    source: str = ""
    """``file:line``."""

    def templates(self, direction: Direction) -> tuple[str, ...]:
        return self.forward if direction == "forward" else self.reverse


@dataclass
class Facts:
    """A facts file in memory: its relations (name -> forward and reverse templates) and facts."""

    facts: list[FactRecord]
    relations: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    name: str = "facts"
    licence: str = LICENCE
    notes: dict[str, str] = field(default_factory=dict)


def split_template(template: str, direction: Direction) -> tuple[str, str]:
    """``(prompt part, tail after the answer slot)`` of a valid template (:func:`check_template`)."""
    slot = "{" + ANSWER[direction] + "}"
    before, after = template.split(slot)
    return before, after


def check_template(template: Any, direction: Direction) -> str | None:
    """What is wrong with ``template`` as a ``direction`` template, or None."""
    if not isinstance(template, str):
        return f"expected a string template, got {template!r}"
    given, asked = ("{a}", "{b}") if direction == "forward" else ("{b}", "{a}")
    if template.count(given) != 1 or template.count(asked) != 1:
        return f"expected {given} and {asked} once each, got {template!r}"
    if template.index(given) > template.index(asked):
        return f"expected {given} before {asked} (the answer comes last), got {template!r}"
    return None


PLACEHOLDER = re.compile(r"\{a\}|\{b\}")


def render(template: str, direction: Direction, a: str, b: str, source: str = "",
           fact: str = "") -> TextPair:  # fmt: skip
    """The query (or statement) ``template`` makes of a fact: prompt up to the answer slot (its
    trailing space moved into the completion), completion `` answer`` + the rest."""
    before, after = split_template(template, direction)
    # one pass over the placeholders: an entity whose text holds "{b}" stays as written
    prompt = PLACEHOLDER.sub(lambda m: a if m.group(0) == "{a}" else b, before).rstrip()
    answer = b if direction == "forward" else a
    return TextPair(prompt, f" {answer}{after}", source=source, fact=fact)


def _templates(record: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = record[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RevcurseError(f"{where}: field '{key}': expected a non-empty list of templates")
    for t in value:
        problem = check_template(t, key)  # type: ignore[arg-type]
        if problem:
            raise RevcurseError(f"{where}: field '{key}': {problem}")
    return tuple(value)


FACT_FIELDS = {"id", "a", "b", "relation", "forward", "reverse", "train", "group"}
RELATION_FIELDS = {"relation", "forward", "reverse"}
HEADER_FIELDS = {"dataset", "licence"}


def read_facts(path: str | Path) -> Facts:
    """A facts file, validated line by line (``file:line: field 'x': expected ...``)."""
    path = Path(path)
    relations: dict[str, dict[str, tuple[str, ...]]] = {}
    facts: list[FactRecord] = []
    seen: dict[str, str] = {}
    name, licence = path.stem, LICENCE
    for lineno, r in read_jsonl_records(path, ()):
        where = f"{path}:{lineno}"
        if set(r) <= HEADER_FIELDS and not relations and not facts:
            name = _string(r, "dataset", where) if "dataset" in r else name
            licence = _string(r, "licence", where) if "licence" in r else licence
            continue
        if "id" not in r:  # a relation line
            unknown = sorted(set(r) - RELATION_FIELDS)
            if unknown or "relation" not in r:
                raise RevcurseError(
                    f"{where}: expected a fact (fields id, a, b, ...) or a relation (fields "
                    f"relation, forward, reverse), got fields {sorted(r)}"
                )
            rel = _string(r, "relation", where)
            for key in ("forward", "reverse"):
                if key not in r:
                    raise RevcurseError(f"{where}: missing field '{key}'")
            if rel in relations:
                raise RevcurseError(f"{where}: field 'relation': {rel!r} is defined twice")
            relations[rel] = {k: _templates(r, k, where) for k in ("forward", "reverse")}
            continue
        unknown = sorted(set(r) - FACT_FIELDS)
        if unknown:
            raise RevcurseError(
                f"{where}: unknown field '{unknown[0]}' (a fact has {sorted(FACT_FIELDS)})"
            )
        fid, a, b = (_string(r, k, where) for k in ("id", "a", "b"))
        if fid in seen:
            raise RevcurseError(f"{where}: field 'id': {fid!r} is already used at {seen[fid]}")
        seen[fid] = where
        relation = ""
        if "relation" in r:
            relation = _string(r, "relation", where)
            if relation not in relations:
                raise RevcurseError(
                    f"{where}: field 'relation': {relation!r} is not defined on an earlier line "
                    f"(defined: {sorted(relations) or 'none'})"
                )
            if "forward" in r or "reverse" in r:
                raise RevcurseError(f"{where}: give either 'relation' or templates, not both")
            templates = relations[relation]
        else:
            for key in ("forward", "reverse"):
                if key not in r:
                    raise RevcurseError(f"{where}: missing field '{key}' (or a 'relation')")
            templates = {k: _templates(r, k, where) for k in ("forward", "reverse")}
        train = r.get("train", ["forward"])
        if not isinstance(train, list) or any(d not in TEST_DIRECTIONS for d in train):
            raise RevcurseError(
                f"{where}: field 'train': expected a list of forward / reverse, got {train!r}"
            )
        group = r.get("group", "")
        if not isinstance(group, str):
            raise RevcurseError(f"{where}: field 'group': expected a string, got {group!r}")
        if group:  # it names test splits, and so files: generations/<group>_<direction>.jsonl
            files.plain_name(group, f"{where}: field 'group'")
        facts.append(FactRecord(fid, a, b, templates["forward"], templates["reverse"],
                                tuple(dict.fromkeys(train)), group, relation,
                                f"{path.name}:{lineno}"))  # fmt: skip
    if not facts:
        raise RevcurseError(f"{path}: no facts (lines with id, a, b)")
    return Facts(facts, relations, name=name, licence=licence)


def _string(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise RevcurseError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise RevcurseError(f"{where}: field '{key}': expected a non-empty string, got {value!r}")
    return value


def write_facts(path: str | Path, facts: Facts) -> None:
    """``facts`` as a facts file: its name and licence, its relations, then one line per fact
    (templates given by relation where the fact has one); written atomically."""
    lines: list[dict[str, Any]] = [{"dataset": facts.name, "licence": facts.licence}]
    lines += [
        {"relation": name, "forward": list(t["forward"]), "reverse": list(t["reverse"])}
        for name, t in facts.relations.items()
    ]
    for f in facts.facts:
        line: dict[str, Any] = {"id": f.id, "a": f.a, "b": f.b}
        if f.relation:
            line["relation"] = f.relation
        else:
            line["forward"], line["reverse"] = list(f.forward), list(f.reverse)
        if f.train != ("forward",):
            line["train"] = list(f.train)
        if f.group:
            line["group"] = f.group
        lines.append(line)
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    files.write_bytes(Path(path), text.encode("utf-8"))


def split_name(group: str, direction: Direction) -> str:
    return f"{group}_{direction}" if group else direction


def dataset_from_facts(facts: Facts) -> TextDataset:
    """Training statements and test splits of ``facts`` (module docstring)."""
    train = [
        render(t, d, f.a, f.b, f.source, f.id)
        for f in facts.facts
        for d in f.train
        for t in f.templates(d)
    ]
    queries = [
        (split_name(f.group, d), d, render(f.templates(d)[0], d, f.a, f.b, f.source, f.id))
        for f in facts.facts
        for d in TEST_DIRECTIONS
    ]
    # every entity completing the prompt in any template of the file is a correct answer to it
    accepted: dict[str, list[str]] = {}
    for f in facts.facts:
        for d in TEST_DIRECTIONS:
            for t in f.templates(d):
                q = render(t, d, f.a, f.b)
                answers = accepted.setdefault(q.prompt, [])
                if q.completion not in answers:
                    answers.append(q.completion)
    tests: dict[str, list[TextPair]] = {}
    directions: dict[str, Direction] = {}
    asked: set[tuple[str, str]] = set()
    for name, d, q in queries:
        if (name, q.prompt) in asked:
            continue  # asked once; every answer counts
        asked.add((name, q.prompt))
        others = tuple(c for c in accepted[q.prompt] if c != q.completion)
        tests.setdefault(name, []).append(dataclasses.replace(q, alternatives=others))
        directions[name] = d
    return TextDataset(facts.name, train, tests, directions, facts.licence,
                       notes=dict(facts.notes))  # fmt: skip
