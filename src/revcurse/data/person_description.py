"""Person–Description (Berglund et al. 2023, Experiment 1; MIT): fictitious people and descriptions.

Three groups of 30 people: ``p2d`` are trained name -> description, ``d2p`` description -> name,
``both`` in both orders, 30 paraphrases each. The test files use 10 held-out templates: for p2d
people, ``p2d_prompts_test`` asks the trained direction (name -> description) and
``p2d_reverse_prompts_test`` the reverse (description -> name); likewise for d2p. The
``*_randomized`` files pair reverse prompts with other people's answers (a likelihood baseline).
Files and provenance: ``revcurse/datasets/person_description/``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from revcurse.data.records import read_jsonl_records
from revcurse.data.schema import Direction, TextDataset, TextPair

LICENCE = "MIT (Berglund et al. 2023, arXiv:2309.12288; see PROVENANCE.md)"
GROUPS = ("p2d", "d2p", "both")
TESTS: dict[str, tuple[str, Direction]] = {
    "p2d_same": ("p2d_prompts_test.jsonl", "forward"),
    "p2d_reverse": ("p2d_reverse_prompts_test.jsonl", "reverse"),
    "d2p_same": ("d2p_prompts_test.jsonl", "forward"),
    "d2p_reverse": ("d2p_reverse_prompts_test.jsonl", "reverse"),
    "both": ("both_prompts_test.jsonl", "forward"),
    "p2d_reverse_randomized": ("p2d_reverse_prompts_test_randomized.jsonl", "reverse"),
    "d2p_reverse_randomized": ("d2p_reverse_prompts_test_randomized.jsonl", "reverse"),
}


def default_root() -> Path:
    return Path(str(resources.files("revcurse.datasets") / "person_description"))


def load_pairs(path: str | Path) -> list[TextPair]:
    """``{"prompt", "completion"}`` lines; the completion must not be blank."""
    path = Path(path)
    return [
        TextPair(r["prompt"], r["completion"], source=f"{path.name}:{lineno}")
        for lineno, r in read_jsonl_records(path, ["prompt", "completion"], ["completion"])
    ]


def load_person_description(
    root: str | Path | None = None, groups: tuple[str, ...] = GROUPS
) -> TextDataset:
    """Training statements of ``groups`` and every test split."""
    root = Path(root) if root is not None else default_root()
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group {unknown[0]!r}; expected {GROUPS}")
    train = [p for g in groups for p in load_pairs(root / f"{g}_prompts_train.jsonl")]
    tests = {name: load_pairs(root / file) for name, (file, _) in TESTS.items()}
    return TextDataset(
        "person-description",
        train,
        tests,
        {name: direction for name, (_, direction) in TESTS.items()},
        LICENCE,
        notes={"templates": "test splits use 10 templates held out from training"},
    )
