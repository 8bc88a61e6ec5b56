"""The natural-language reversal datasets by name, and which splits pair up for the probes."""

from __future__ import annotations

from pathlib import Path

from revcurse.config import TextDataConfig
from revcurse.data.facts import Facts, dataset_from_facts, read_facts
from revcurse.data.parent_child import load_parent_child, parent_child_facts
from revcurse.data.person_description import load_person_description
from revcurse.data.schema import TextDataset, audit
from revcurse.data.trex import load_trex, reversal_split, trex_facts
from revcurse.errors import RevcurseError

PROBE_SPLITS: dict[str, tuple[str, str]] = {
    "parent-child": ("forward", "reverse"),
    "person-description": ("p2d_same", "p2d_reverse"),
    "trex": ("forward", "reverse"),
}
"""Per dataset, the (forward, reverse) test splits whose queries are paired into probe facts."""


def probe_splits(dataset: TextDataset, name: str) -> tuple[str, str]:
    """The (forward, reverse) test splits whose queries the probes pair: the table's for a shipped
    dataset; for a facts file, the first forward split and the reverse split of its group."""
    if name in PROBE_SPLITS:
        return PROBE_SPLITS[name]
    forward = next(s for s, d in dataset.directions.items() if d == "forward")
    return forward, forward.removesuffix("forward") + "reverse"


def load_text_dataset(cfg: TextDataConfig) -> TextDataset:
    """The dataset ``cfg.dataset`` from ``cfg.path`` (or the shipped copy); a dataset with an empty
    split is refused, and repeated or conflicting records are listed in its ``warnings``
    (:func:`~revcurse.data.schema.audit`) for the caller to show."""
    path = cfg.path or None
    if cfg.dataset == "parent-child":
        dataset = load_parent_child(path)
    elif cfg.dataset == "person-description":
        dataset = load_person_description(path)
    elif cfg.dataset == "facts":
        dataset = dataset_from_facts(read_facts(cfg.path))
    else:
        dataset = reversal_split(load_trex(cfg.path))
    dataset.warnings = audit(dataset)
    return dataset


def as_facts(cfg: TextDataConfig) -> Facts:
    """The dataset ``cfg`` names in the facts format (``revcurse data convert``)."""
    if cfg.dataset == "parent-child":
        return parent_child_facts(cfg.path or None)
    if cfg.dataset == "trex":
        return trex_facts(load_trex(cfg.path))
    if cfg.dataset == "facts":
        return read_facts(Path(cfg.path))
    raise RevcurseError(
        "person-description cannot be written as facts: its statements paraphrase each "
        "description per template (30 wordings per person), which one a+b fact cannot hold"
    )
