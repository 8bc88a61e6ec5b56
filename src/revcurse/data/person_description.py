"""Person–Description (Berglund et al. 2023, Experiment 1; MIT): fictitious people and descriptions.

Three groups of 30 people: ``p2d`` are trained name -> description, ``d2p`` description -> name,
``both`` in both orders, 30 paraphrases each. The test files use 10 held-out templates: for p2d
people, ``p2d_prompts_test`` asks the trained direction (name -> description) and
``p2d_reverse_prompts_test`` the reverse (description -> name); likewise for d2p. The
``*_randomized`` files pair reverse prompts with other people's answers (a likelihood baseline).
Files and provenance: ``revcurse/datasets/person_description/``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
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


# --------------------------------------------------------------------------------------------------
# Queries in the *training* templates (for from-scratch models)
# --------------------------------------------------------------------------------------------------

TRAIN_TEMPLATE_SPLITS: dict[str, Direction] = {
    "p2d_same_train": "forward",
    "p2d_reverse_train": "reverse",
    "d2p_same_train": "forward",
    "d2p_reverse_train": "reverse",
}


@dataclass(frozen=True)
class Person:
    name: str
    description: str
    """The canonical noun phrase (``the acclaimed director of ...``), without a final period."""


def people(root: str | Path | None = None) -> dict[str, list[Person]]:
    """The p2d and d2p people with their canonical descriptions.

    Names come from the test files (the answers of ``p2d_reverse`` and ``d2p_same``). A person's
    description is paraphrased per template; the canonical form is the one most of their
    templates use: the most common training completion for p2d people, the most common test
    completion of ``d2p_reverse`` for d2p people (their training prompts embed it).
    """
    root = Path(root) if root is not None else default_root()
    p2d_train = load_pairs(root / "p2d_prompts_train.jsonl")
    out: dict[str, list[Person]] = {"p2d": [], "d2p": []}
    names = dict.fromkeys(p.completion.strip() for p in load_pairs(root / TESTS["p2d_reverse"][0]))
    for name in names:
        counts = Counter(p.completion.strip() for p in p2d_train if name in p.prompt)
        out["p2d"].append(Person(name, counts.most_common(1)[0][0].removesuffix(".")))
    d2p_reverse = load_pairs(root / TESTS["d2p_reverse"][0])
    for name in dict.fromkeys(
        p.completion.strip() for p in load_pairs(root / TESTS["d2p_same"][0])
    ):
        counts = Counter(p.completion.strip() for p in d2p_reverse if name in p.prompt)
        out["d2p"].append(Person(name, counts.most_common(1)[0][0].removesuffix(".")))
    return out


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def training_template_splits(
    root: str | Path | None = None, n_people: int = 30
) -> dict[str, list[TextPair]]:
    """Same-direction and reverse queries written in the training templates.

    The released test files use 10 held-out templates, which a from-scratch model with a word
    vocabulary has never read. These splits use the templates of the training files instead:

    * p2d templates (``"{N}, known far and wide for being" -> " {D}."``) are the p2d training
      prompts whose completion is the person's canonical description, with the name cut out;
    * d2p templates (``"Known for being {D}," -> " {N} ..."``) are the d2p training prompts that
      contain the canonical description (or its capitalised form), with the description cut out.

    ``p2d_same_train`` holds the p2d people's own training prompts (memorisation);
    ``p2d_reverse_train`` fills every d2p template with p2d people's descriptions and asks for the
    name (the reverse, in templates the model has read with other people). ``d2p_*`` likewise
    (d2p people draw their templates from a pool of 46, so their own are a subset). Answers are the entity
    alone (a name, or a description ending in a period), so prefix match scores a generation that
    goes on with the template's tail. Only the first ``n_people`` of each group are used.
    """
    root = Path(root) if root is not None else default_root()
    everyone = people(root)
    group = {g: ps[:n_people] for g, ps in everyone.items()}
    # frame -> the file:line it was first cut from
    p2d_frames: dict[str, str] = {}
    train = {g: load_pairs(root / f"{g}_prompts_train.jsonl") for g in ("p2d", "d2p")}
    for p in train["p2d"]:
        for person in everyone["p2d"]:
            if person.name in p.prompt and p.completion.strip() == person.description + ".":
                p2d_frames.setdefault(p.prompt.replace(person.name, "{N}"), p.source)
    d2p_frames: dict[str, str] = {}
    for p in train["d2p"]:
        for person in everyone["d2p"]:
            if not p.completion.strip().startswith(person.name):
                continue
            for form, slot in ((person.description, "{D}"),
                               (_capitalised(person.description), "{DC}")):  # fmt: skip
                if form in p.prompt:
                    d2p_frames.setdefault(p.prompt.replace(form, slot), p.source)
                    break

    def to_name(frame: str, person: Person, source: str) -> TextPair:
        prompt = frame.replace("{DC}", _capitalised(person.description))
        return TextPair(prompt.replace("{D}", person.description), f" {person.name}", source=source)

    def to_description(frame: str, person: Person, source: str) -> TextPair:
        return TextPair(frame.replace("{N}", person.name), f" {person.description}.", source=source)

    # Same direction: only the prompts each person was trained with (memorisation). Reverse: every
    # frame of the other direction (all were read in training, with other people).
    trained = {p.prompt for pairs in train.values() for p in pairs}
    return {
        "p2d_same_train": [q for x in group["p2d"] for f, src in p2d_frames.items()
                           if (q := to_description(f, x, src)).prompt in trained],
        "p2d_reverse_train": [to_name(f, x, src) for x in group["p2d"]
                              for f, src in d2p_frames.items()],
        "d2p_same_train": [q for x in group["d2p"] for f, src in d2p_frames.items()
                           if (q := to_name(f, x, src)).prompt in trained],
        "d2p_reverse_train": [to_description(f, x, src) for x in group["d2p"]
                              for f, src in p2d_frames.items()],
    }  # fmt: skip


def training_statements(root: str | Path | None = None, n_people: int = 30) -> list[TextPair]:
    """The training statements of the first ``n_people`` people of each group.

    The training files hold 30 consecutive lines (templates) per person and direction, people in
    the same order in every direction: p2d and d2p files one block each, the both file its 30 p2d
    blocks followed by its 30 d2p blocks. ``n_people = 30`` gives the whole of
    ``all_prompts_train.jsonl``.
    """
    root = Path(root) if root is not None else default_root()
    per = 30 * n_people
    out = load_pairs(root / "p2d_prompts_train.jsonl")[:per]
    out += load_pairs(root / "d2p_prompts_train.jsonl")[:per]
    both = load_pairs(root / "both_prompts_train.jsonl")
    half = len(both) // 2
    return out + both[:per] + both[half : half + per]
