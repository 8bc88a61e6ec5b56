"""The facts format: strict reading, the dataset it builds (checked by hand), and the shipped
datasets written in it and read back as the very datasets their loaders build."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from revcurse.cli import app
from revcurse.config import TextDataConfig
from revcurse.data.facts import dataset_from_facts, read_facts, write_facts
from revcurse.data.text_datasets import as_facts, load_text_dataset, probe_splits
from revcurse.errors import RevcurseError
from revcurse.probes.hf import paired_queries

TREX = "tests/data/trex"


def write_lines(path, lines) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def test_a_hand_written_file_gives_the_dataset_worked_out_by_hand(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [
        {"dataset": "mine", "licence": "CC0"},
        {"relation": "capital", "forward": ["{a} is the capital of {b}.", "{a} lies in {b}"],
         "reverse": ["The capital of {b} is {a}."]},
        {"id": "fr", "a": "Paris", "b": "France", "relation": "capital"},
        {"id": "de", "a": "Berlin", "b": "Germany", "relation": "capital",
         "train": ["forward", "reverse"], "group": "both"},
        {"id": "x", "a": "Bonn", "b": "Germany", "forward": ["{a} was the capital of {b}"],
         "reverse": ["The capital of {b} is {a}."], "group": "both"},
    ])  # fmt: skip
    ds = dataset_from_facts(read_facts(path))
    assert (ds.name, ds.licence) == ("mine", "CC0")
    statements = [(p.prompt, p.completion, p.fact) for p in ds.train]
    assert statements == [
        ("Paris is the capital of", " France.", "fr"),
        ("Paris lies in", " France", "fr"),  # a paraphrase, trained
        ("Berlin is the capital of", " Germany.", "de"),
        ("Berlin lies in", " Germany", "de"),
        ("The capital of Germany is", " Berlin.", "de"),  # reverse trained for this fact only
        ("Bonn was the capital of", " Germany", "x"),
    ]
    assert ds.directions == {"forward": "forward", "reverse": "reverse",
                             "both_forward": "forward", "both_reverse": "reverse"}  # fmt: skip
    assert [(p.prompt, p.completion, p.fact) for p in ds.tests["forward"]] == [
        ("Paris is the capital of", " France.", "fr")
    ]
    # "The capital of Germany is" is asked once in group both; Berlin and Bonn both complete it
    (reverse,) = ds.tests["both_reverse"]
    assert (reverse.completion, reverse.alternatives, reverse.fact) == (
        " Berlin.",
        (" Bonn.",),
        "de",
    )
    assert reverse.source == "mine.jsonl:4"
    assert probe_splits(ds, "facts") == ("forward", "reverse")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "mine.jsonl:2: invalid JSON"),
        ({"id": "a", "a": "A", "b": "B"}, "mine.jsonl:2: missing field 'forward' (or a 'relation')"),
        ({"id": "a", "a": "A", "b": "", "relation": "r"}, "mine.jsonl:2: field 'b': expected a non-empty"),
        ({"id": "a", "a": "A", "b": "B", "relation": "q"}, "field 'relation': 'q' is not defined"),
        ({"id": "a", "a": "A", "b": "B", "forward": ["{a} and {a}"], "reverse": ["{b} {a}"]},
         "mine.jsonl:2: field 'forward': expected {a} and {b} once each"),
        ({"id": "a", "a": "A", "b": "B", "forward": ["{b} is {a}"], "reverse": ["{b} {a}"]},
         "field 'forward': expected {a} before {b} (the answer comes last)"),
        ({"id": "a", "a": "A", "b": "B", "relation": "r", "train": ["sideways"]},
         "mine.jsonl:2: field 'train': expected a list of forward / reverse"),
        ({"id": "a", "a": "A", "b": "B", "relation": "r", "colour": 1}, "unknown field 'colour'"),
        ({"relation": "r", "forward": ["{a} {b}"], "reverse": ["{b} {a}"]}, "'r' is defined twice"),
        ({"a": "A", "b": "B"}, "mine.jsonl:2: expected a fact (fields id, a, b, ...) or a relation"),
        # a group names test splits and so files: no path may hide in it
        ({"id": "a", "a": "A", "b": "B", "relation": "r", "group": "../victim/PWNED"},
         "mine.jsonl:2: field 'group': expected a plain name"),
        ({"id": "a", "a": "A", "b": "B", "relation": "r", "group": "/etc/cron.d/x"},
         "mine.jsonl:2: field 'group': expected a plain name"),
        ({"id": "a", "a": "A", "b": "B", "relation": "r", "group": ".hidden"},
         "field 'group': expected a plain name"),
    ],
)  # fmt: skip
def test_malformed_lines_are_one_line_errors_naming_file_line_and_field(tmp_path, line, message):
    relation = {"relation": "r", "forward": ["{a} is {b}"], "reverse": ["{b} is {a}"]}
    path = write_lines(tmp_path / "mine.jsonl", [relation, line])
    with pytest.raises(RevcurseError, match=None) as err:
        read_facts(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_reused_id_names_both_lines(tmp_path):
    fact = {"id": "a", "a": "A", "b": "B", "forward": ["{a} is {b}"], "reverse": ["{b} is {a}"]}
    path = write_lines(tmp_path / "mine.jsonl", [fact, fact])
    with pytest.raises(
        RevcurseError, match=r"mine.jsonl:2: field 'id': 'a' is already used at .*mine.jsonl:1"
    ):
        read_facts(path)


def strip(pairs):
    return [dataclasses.replace(p, source="") for p in pairs]


@pytest.mark.parametrize("name", ["parent-child", "trex"])
def test_a_converted_shipped_dataset_reads_back_as_the_dataset_its_loader_builds(name, tmp_path):
    cfg = TextDataConfig(dataset=name, path=TREX if name == "trex" else "")
    loaded = load_text_dataset(cfg)
    write_facts(tmp_path / "f.jsonl", as_facts(cfg))
    back = load_text_dataset(TextDataConfig(dataset="facts", path=str(tmp_path / "f.jsonl")))
    assert strip(back.train) == strip(loaded.train)
    assert back.tests.keys() == loaded.tests.keys() and back.directions == loaded.directions
    assert all(strip(back.tests[s]) == strip(loaded.tests[s]) for s in loaded.tests)
    assert back.licence == loaded.licence and back.name == loaded.name


def test_parent_child_asks_a_repeated_question_once_and_any_child_of_a_parent_counts():
    ds = load_text_dataset(TextDataConfig(dataset="parent-child"))
    prompts = [p.prompt for p in ds.tests["forward"]]
    assert len(prompts) == len(set(prompts)) == len(ds.train) - 2  # the file repeats 2 rows
    multi = [p for p in ds.tests["reverse"] if p.alternatives]
    assert multi and all(p.fact for p in ds.tests["reverse"])


def test_probe_pairs_come_from_fact_ids_not_from_matching_strings(tmp_path):
    # The reverse answer ("the Lion") is not written as in the forward prompt ("Leo"): matching
    # strings pairs nothing, the ids pair both facts.
    path = write_lines(tmp_path / "f.jsonl", [
        {"id": "1", "a": "Leo", "b": "a cat", "forward": ["{a} is {b}"], "reverse": ["{b} is {a}"]},
        {"id": "2", "a": "Max", "b": "a dog", "forward": ["{a} is {b}"], "reverse": ["{b} is {a}"]},
    ])  # fmt: skip
    ds = dataset_from_facts(read_facts(path))
    pairs = paired_queries(ds.tests["forward"], ds.tests["reverse"][::-1], limit=10)
    assert [(f.fact, r.fact) for f, r in pairs] == [("1", "1"), ("2", "2")]
    renamed = [dataclasses.replace(r, completion=" the Lion", fact="") for r in ds.tests["reverse"]]
    unpaired = [dataclasses.replace(f, fact="") for f in ds.tests["forward"]]
    assert paired_queries(unpaired, renamed, limit=10) == []


def test_cli_converts_and_refuses_with_exit_2(tmp_path):
    runner = CliRunner()
    out = tmp_path / "pc.jsonl"
    result = runner.invoke(app, ["data", "convert", "parent-child", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_facts(out).facts[0].id.startswith("pc-")
    shown = runner.invoke(app, ["data", "facts", "--path", str(out)])
    assert shown.exit_code == 0 and "reverse" in shown.output
    refused = runner.invoke(
        app, ["data", "convert", "person-description", "--out", str(tmp_path / "x")]
    )
    assert refused.exit_code == 2 and not (tmp_path / "x").exists()
    # an existing file is never overwritten: the user's notes survive, byte for byte
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n")
    again = runner.invoke(app, ["data", "convert", "parent-child", "--out", str(notes)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert notes.read_text() == "my notes\n"
    bad = write_lines(tmp_path / "bad.jsonl", [{"id": "a", "a": "A"}])
    result = runner.invoke(app, ["data", "facts", "--path", bad])
    assert result.exit_code == 2 and "bad.jsonl:1: missing field 'b'" in result.output


def test_an_answer_counts_when_any_template_of_any_fact_completes_the_prompt(tmp_path):
    """Fact 'x' states its reverse first as "The old capital of {b} is {a}." and then, in its
    second (paraphrase) template, exactly as fact 'de' asks its reverse: "The capital of {b} is
    {a}.". So Bonn is an accepted answer to de's reverse query, found only in a second template;
    and de's forward query is asked in its first template only, with nothing else accepted."""
    path = write_lines(tmp_path / "mine.jsonl", [
        {"id": "de", "a": "Berlin", "b": "Germany", "forward": ["{a} is the capital of {b}."],
         "reverse": ["The capital of {b} is {a}."]},
        {"id": "x", "a": "Bonn", "b": "Germany", "forward": ["{a} was the capital of {b}."],
         "reverse": ["The old capital of {b} is {a}.", "The capital of {b} is {a}."]},
    ])  # fmt: skip
    ds = dataset_from_facts(read_facts(path))
    by_prompt = {p.prompt: p for p in ds.tests["reverse"]}
    assert set(by_prompt) == {"The capital of Germany is", "The old capital of Germany is"}
    asked = by_prompt["The capital of Germany is"]
    assert (asked.completion, asked.alternatives, asked.fact) == (" Berlin.", (" Bonn.",), "de")
    assert by_prompt["The old capital of Germany is"].alternatives == ()
    assert [p.alternatives for p in ds.tests["forward"]] == [(), ()]


def test_entity_text_that_looks_like_a_placeholder_is_rendered_literally(tmp_path):
    """An entity whose text holds "{b}" is written as it is: the template's placeholders are
    filled in one pass, never the entity text substituted again."""
    path = write_lines(tmp_path / "odd.jsonl", [
        {"id": "x", "a": "Tom {b}", "b": "Ann {a}", "forward": ["Who is {a}'s mother? {b}"],
         "reverse": ["Name a child of {b}. {a}"]},
    ])  # fmt: skip
    ds = dataset_from_facts(read_facts(path))
    assert [(p.prompt, p.completion) for p in ds.train] == [
        ("Who is Tom {b}'s mother?", " Ann {a}")
    ]
    (reverse,) = ds.tests["reverse"]
    assert (reverse.prompt, reverse.completion) == ("Name a child of Ann {a}.", " Tom {b}")
