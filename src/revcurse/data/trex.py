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

from revcurse.data.records import read_jsonl_records
from revcurse.data.schema import TextDataset, TextPair
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


def _query(template: str, known_slot: str, known: str, answer_slot: str, answer: str,
           source: str) -> TextPair:  # fmt: skip
    """The template up to the answer slot, with the known entity filled in, asks for ``answer``."""
    before, _ = template.split(answer_slot)
    return TextPair(before.replace(known_slot, known).rstrip(), " " + answer, source=source)


def reversal_split(relations: dict[str, Relation], min_one_to_one: float = 0.9) -> TextDataset:
    """Forward statements and reverse queries of the near one-to-one relations."""
    kept = {rid: r for rid, r in relations.items() if r.one_to_one() >= min_one_to_one}
    forward, reverse, generic = [], [], []
    for rel in kept.values():
        inverse = rel.inverse_template or f"[Y] is the {rel.label} of [X] ."
        if rel.inverse_template is None:
            generic.append(rel.id)
        for subject, obj, source in rel.facts:
            forward.append(_query(rel.template, "[X]", subject, "[Y]", obj, source))
            reverse.append(_query(inverse, "[Y]", obj, "[X]", subject, source))
    return TextDataset(
        "trex-reversal", forward, {"forward": forward, "reverse": reverse},
        {"forward": "forward", "reverse": "reverse"}, LICENCE,
        notes={
            "relations": ",".join(sorted(kept)),
            "dropped": ",".join(sorted(set(relations) - set(kept))),
            "generic_inverse_template": ",".join(generic),
            "min_one_to_one": str(min_one_to_one),
        },
    )  # fmt: skip
