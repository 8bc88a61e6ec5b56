"""The natural-language reversal datasets by name, and which splits pair up for the probes."""

from __future__ import annotations

from revcurse.config import TextDataConfig
from revcurse.data.parent_child import load_parent_child
from revcurse.data.person_description import load_person_description
from revcurse.data.schema import TextDataset, audit
from revcurse.data.trex import load_trex, reversal_split

PROBE_SPLITS: dict[str, tuple[str, str]] = {
    "parent-child": ("forward", "reverse"),
    "person-description": ("p2d_same", "p2d_reverse"),
    "trex": ("forward", "reverse"),
}
"""Per dataset, the (forward, reverse) test splits whose queries are paired into probe facts."""


def load_text_dataset(cfg: TextDataConfig) -> TextDataset:
    """The dataset ``cfg.dataset`` from ``cfg.path`` (or the shipped copy); a dataset with an empty
    split is refused, and repeated or conflicting records are listed in its ``warnings``
    (:func:`~revcurse.data.schema.audit`) for the caller to show."""
    path = cfg.path or None
    if cfg.dataset == "parent-child":
        dataset = load_parent_child(path)
    elif cfg.dataset == "person-description":
        dataset = load_person_description(path)
    else:
        dataset = reversal_split(load_trex(cfg.path))
    dataset.warnings = audit(dataset)
    return dataset
