"""T-REx knowledge triples in the LAMA format, and a reversal split of near one-to-one relations.

LAMA (Petroni et al. 2019) ships T-REx (Elsahar et al. 2018) as ``relations.jsonl`` (one line per
relation: ``relation`` id, ``template`` such as ``"[X] is the capital of [Y] ."``, optional
``label`` and ``type``) plus one ``<relation>.jsonl`` per relation with ``sub_label`` and
``obj_label`` per fact. The data is CC BY-NC 4.0 and cannot be downloaded here; tests use a small
synthetic file in the same format (``tests/data/trex``).

A reversal split keeps relations whose inverse is well defined: near one-to-one, i.e. at least
``min_one_to_one`` of the subjects have a single object and of the objects a single subject. The
forward statement fills the template; the reverse query asks for the subject given the object with
the relation's ``inverse_template`` if the file has one, else ``"[Y] is the <label> of [X] ."``
(which relations needed the generic inverse is recorded in the dataset notes). A query is its
template up to the answer slot; the answer is the entity.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from revcurse.data.facts import FactRecord, Facts, dataset_from_facts
from revcurse.data.records import read_jsonl_records
from revcurse.data.schema import TextDataset
from revcurse.errors import RevcurseError

LICENCE = "CC BY-NC 4.0 (T-REx, Elsahar et al. 2018, as distributed by LAMA, Petroni et al. 2019)"


@dataclass
class Relation:
    id: str
    template: str
    label: str
    type: str
    inverse_template: str | None
    facts: list[tuple[str, str, str]]  # (subject, object, source)

    def one_to_one(self) -> float:
        """The smaller of: share of subjects with one object, share of objects with one subject."""
        subj = Counter(s for s, _, _ in self.facts)
        obj = Counter(o for _, o, _ in self.facts)
        return min(
            sum(c == 1 for c in subj.values()) / max(1, len(subj)),
            sum(c == 1 for c in obj.values()) / max(1, len(obj)),
        )


def _split(template: str, slot: str, where: str) -> tuple[str, str]:
    if template.count(slot) != 1:
        raise RevcurseError(
            f"{where}: field 'template': expected exactly one {slot}, got {template!r}"
        )
    before, after = template.split(slot)
    return before, after


def load_trex(root: str | Path) -> dict[str, Relation]:
    """Every relation of ``relations.jsonl`` that has a fact file under ``root``."""
    root = Path(root)
    relations = {}
    for lineno, r in read_jsonl_records(root / "relations.jsonl", ["relation", "template"],
                                        ["relation", "template"]):  # fmt: skip
        where = f"{root / 'relations.jsonl'}:{lineno}"
        for slot in ("[X]", "[Y]"):
            _split(r["template"], slot, where)
        facts_path = root / f"{r['relation']}.jsonl"
        if not facts_path.is_file():
            continue
        facts = [
            (f["sub_label"].strip(), f["obj_label"].strip(), f"{facts_path.name}:{n}")
            for n, f in read_jsonl_records(
                facts_path, ["sub_label", "obj_label"], ["sub_label", "obj_label"]
            )  # fmt: skip
        ]
        inverse = r.get("inverse_template")
        if inverse is not None and not isinstance(inverse, str):
            raise RevcurseError(f"{where}: field 'inverse_template': expected a string")
        relations[r["relation"]] = Relation(
            r["relation"], r["template"], str(r.get("label", r["relation"])),
            str(r.get("type", "")), inverse, facts,
        )  # fmt: skip
    if not relations:
        raise RevcurseError(f"{root}: no relation has a fact file (<relation>.jsonl)")
    return relations


def kept_relations(relations: dict[str, Relation], min_one_to_one: float) -> dict[str, Relation]:
    """The relations near enough to one-to-one for a reversal split."""
    return {rid: r for rid, r in relations.items() if r.one_to_one() >= min_one_to_one}


def inverse_template(rel: Relation) -> str:
    """The relation's own inverse template, else ``[Y] is the <label> of [X] .``."""
    return rel.inverse_template or f"[Y] is the {rel.label} of [X] ."


def _as_facts_template(template: str, answer_slot: str, where: str) -> str:
    """A LAMA template in the facts format (:mod:`revcurse.data.facts`): ``[X]`` -> ``{a}``,
    ``[Y]`` -> ``{b}``, cut after the answer slot (the LAMA query ends at its answer)."""
    given = "[X]" if answer_slot == "[Y]" else "[Y]"
    if template.index(given) > template.index(answer_slot):
        raise RevcurseError(
            f"{where}: template {template!r} names the answer {answer_slot} before the entity "
            f"{given}; a query must end with its answer"
        )
    cut = template[: template.index(answer_slot) + len(answer_slot)]
    return cut.replace("[X]", "{a}").replace("[Y]", "{b}")


def trex_facts(relations: dict[str, Relation], min_one_to_one: float = 0.9) -> Facts:
    """The near one-to-one relations as facts: a = subject, b = object, one facts relation per
    T-REx relation (its template forward, its inverse reverse); ids ``<relation>-<n>``."""
    kept = kept_relations(relations, min_one_to_one)
    templates, facts, generic = {}, [], []
    for rel in kept.values():
        if rel.inverse_template is None:
            generic.append(rel.id)
        where = f"relation {rel.id}"
        t = {"forward": (_as_facts_template(rel.template, "[Y]", where),),
             "reverse": (_as_facts_template(inverse_template(rel), "[X]", where),)}  # fmt: skip
        templates[rel.id] = t
        for n, (subject, obj, source) in enumerate(rel.facts):
            facts.append(FactRecord(f"{rel.id}-{n}", subject, obj, t["forward"], t["reverse"],
                                    relation=rel.id, source=source))  # fmt: skip
    notes = {
        "relations": ",".join(sorted(kept)),
        "dropped": ",".join(sorted(set(relations) - set(kept))),
        "generic_inverse_template": ",".join(generic),
        "min_one_to_one": str(min_one_to_one),
    }
    return Facts(facts, templates, name="trex-reversal", licence=LICENCE, notes=notes)


def reversal_split(relations: dict[str, Relation], min_one_to_one: float = 0.9) -> TextDataset:
    """Forward statements and forward and reverse queries of the near one-to-one relations, built
    from :func:`trex_facts` (a reverse prompt shared by several facts is asked once, every subject
    correct)."""
    return dataset_from_facts(trex_facts(relations, min_one_to_one))
