"""Parent–Child (Berglund et al. 2023, Experiment 2; MIT): real celebrities and their parents.

Forward (the direction GPT-4 knew): ``Who is {child}'s {mother|father}?`` -> parent. Reverse:
``Name a child of {parent}.`` -> child; any child of that parent in the file counts as correct.
Both serve as training statements (forward) and test queries. Files and provenance:
``revcurse/datasets/parent_child/``.
"""

from __future__ import annotations

from collections import defaultdict
from importlib import resources
from pathlib import Path

from revcurse.data.records import read_csv_records
from revcurse.data.schema import TextDataset, TextPair
from revcurse.errors import RevcurseError

LICENCE = "MIT (Berglund et al. 2023, arXiv:2309.12288; see PROVENANCE.md)"
COLUMNS = ("child", "parent", "parent_type", "child_prediction", "can_reverse")


def default_path() -> Path:
    return Path(
        str(resources.files("revcurse.datasets") / "parent_child" / "parent_child_pairs.csv")
    )


def forward_pair(child: str, parent: str, parent_type: str, source: str = "") -> TextPair:
    return TextPair(f"Who is {child}'s {parent_type}?", f" {parent}", source=source)


def reverse_pair(parent: str, children: list[str], source: str = "") -> TextPair:
    first, *others = children
    return TextPair(f"Name a child of {parent}.", f" {first}",
                    tuple(f" {c}" for c in others), source)  # fmt: skip


def load_parent_child(path: str | Path | None = None) -> TextDataset:
    """Forward statements for training; forward and reverse queries for testing."""
    path = Path(path) if path is not None else default_path()
    rows = []
    for lineno, row in read_csv_records(path, COLUMNS, nonempty=("child", "parent")):
        if row["parent_type"] not in ("mother", "father"):
            raise RevcurseError(
                f"{path}:{lineno}: field 'parent_type': expected mother or father, "
                f"got {row['parent_type']!r}"
            )
        if row["can_reverse"] not in ("True", "False"):
            raise RevcurseError(
                f"{path}:{lineno}: field 'can_reverse': expected True or False, "
                f"got {row['can_reverse']!r}"
            )
        rows.append((lineno, row))
    children: dict[str, list[str]] = defaultdict(list)
    for _, row in rows:
        if row["child"] not in children[row["parent"]]:
            children[row["parent"]].append(row["child"])
    forward = [
        forward_pair(r["child"], r["parent"], r["parent_type"], f"{path.name}:{n}") for n, r in rows
    ]
    reverse, seen = [], set()
    for n, r in rows:
        if r["parent"] not in seen:
            seen.add(r["parent"])
            reverse.append(reverse_pair(r["parent"], children[r["parent"]], f"{path.name}:{n}"))
    return TextDataset(
        "parent-child", forward, {"forward": forward, "reverse": reverse},
        {"forward": "forward", "reverse": "reverse"}, LICENCE,
    )  # fmt: skip
