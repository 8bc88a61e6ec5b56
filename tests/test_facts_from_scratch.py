"""``reproduce facts``: a from-scratch experiment laid out from a facts file's groups and trained
directions. Checked against Parent–Child's hand-built from-scratch layout (stated as a facts file,
it must give the very statements, splits and task), end to end through the CLI, and for the
facts file's digest that keeps resumes and re-evaluations on the facts they trained on."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import run_cli

from revcurse import files
from revcurse.config import FactsExperimentConfig, ParentChildConfig, apply_overrides
from revcurse.data.tasks import TASKS, facts_task, pin_facts
from revcurse.errors import ConfigError, RevcurseError
from revcurse.experiments.from_scratch import build_data


def write_lines(path, lines) -> str:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def parent_child_as_facts(path, n: int) -> str:
    """Parent–Child's from-scratch layout written as a facts file by ``revcurse data convert``."""
    done = run_cli("data", "convert", "parent-child", "--from-scratch", str(n), "--out", str(path))
    assert done.returncode == 0, done.stderr
    return str(path)


AS_PARENT_CHILD = {"fwd_forward": "c2p_train", "fwd_reverse": "p2c_reverse",
                   "fwd_mirror": "c2p_mirror", "both_forward": "c2p_both",
                   "both_reverse": "p2c_both"}  # fmt: skip
"""The facts layout's split names -> Parent–Child's."""


def _queries(pairs):
    return [(p.prompt, p.completion, p.suffix, p.answers) for p in pairs]


def test_parent_childs_layout_stated_as_a_facts_file_gives_its_statements_splits_and_task(
    tmp_path,
):
    n, asked = 12, 5
    path = parent_child_as_facts(tmp_path / "pc.jsonl", n)
    pc = dataclasses.replace(ParentChildConfig().run, n_people=n, max_eval=asked)
    mine = dataclasses.replace(pc, dataset="facts", path=path)
    pc_statements, pc_splits = build_data(pc)
    statements, splits = build_data(mine)
    assert sorted((s.prompt, s.completion) for s in statements) == sorted(
        (s.prompt, s.completion) for s in pc_statements
    )
    assert {AS_PARENT_CHILD[k] for k in splits} == set(pc_splits)
    for name, queries in splits.items():
        assert len(queries) == asked
        assert _queries(queries) == _queries(pc_splits[AS_PARENT_CHILD[name]]), name
    task, reference = facts_task(mine), TASKS["parent-child"]
    assert {AS_PARENT_CHILD[k]: v for k, v in task.splits.items()} == reference.splits
    assert {AS_PARENT_CHILD[k]: tuple(AS_PARENT_CHILD[s] for s in v)
            for k, v in task.mirrors.items()} == reference.mirrors  # fmt: skip
    assert [tuple(AS_PARENT_CHILD[s] for s in v) for v in task.fit.values()] == list(
        reference.fit.values()
    )
    assert {AS_PARENT_CHILD[k] for k in task.compared} == set(reference.compared)
    assert tuple(AS_PARENT_CHILD[s] for s in task.probe) == reference.probe
    assert tuple(AS_PARENT_CHILD[s] for s in task.variant_compared) == reference.variant_compared


def test_a_group_trained_in_reverse_only_is_tested_forward_with_its_own_mirror(tmp_path):
    path = write_lines(tmp_path / "caps.jsonl", [
        {"relation": "capital", "forward": ["{a} is the capital of {b}."],
         "reverse": ["The capital of {b} is {a}."]},
        {"id": "fr", "a": "Paris", "b": "France", "relation": "capital", "train": ["reverse"],
         "group": "back"},
        {"id": "de", "a": "Berlin", "b": "Germany", "relation": "capital", "train": ["reverse"],
         "group": "back"},
        {"id": "it", "a": "Rome", "b": "Italy", "relation": "capital"},
    ])  # fmt: skip
    run = dataclasses.replace(FactsExperimentConfig().run, path=path)
    task = facts_task(run)
    assert task.splits == {"back_forward": "reverse", "back_reverse": "forward",
                           "back_mirror": "mirror", "forward": "forward", "reverse": "reverse",
                           "mirror": "mirror"}  # fmt: skip
    assert task.compared == {"back_forward": "back", "reverse": "(no group)"}
    assert task.fit == {
        "back": ("back_reverse", "back_mirror"),
        "(no group)": ("forward", "mirror"),
    }
    statements, splits = build_data(run)
    assert [s.prompt + s.completion for s in statements] == [
        "The capital of France is Paris.", "The capital of Germany is Berlin.",
        "Rome is the capital of Italy.",
    ]  # fmt: skip
    # the mirror asks the reverse query's answer (the country) inside the trained statement
    mirror = splits["back_mirror"][0]
    assert (mirror.prompt, mirror.completion, mirror.suffix) == (
        "The capital of ", "France", " is Paris.")  # fmt: skip
    assert [q.prompt for q in splits["back_forward"]] == ["Paris is the capital of",
                                                          "Berlin is the capital of"]  # fmt: skip


def test_facts_layouts_that_cannot_test_reversal_are_refused_naming_the_line(tmp_path):
    rel = {"relation": "r", "forward": ["{a} likes {b}."], "reverse": ["{b} is liked by {a}."]}
    run = FactsExperimentConfig().run
    mixed = write_lines(tmp_path / "mixed.jsonl", [
        rel, {"id": "x", "a": "Ann", "b": "Bob", "relation": "r"},
        {"id": "y", "a": "Cy", "b": "Di", "relation": "r", "train": ["forward", "reverse"]},
    ])  # fmt: skip
    with pytest.raises(RevcurseError, match=r"mixed.jsonl:3: field 'train'.*'x'.*mixed.jsonl:2"):
        facts_task(dataclasses.replace(run, path=mixed))
    both = write_lines(tmp_path / "both.jsonl", [
        rel, {"id": "y", "a": "Cy", "b": "Di", "relation": "r", "train": ["forward", "reverse"]},
    ])  # fmt: skip
    with pytest.raises(RevcurseError, match="no direction is left to test reversal on"):
        facts_task(dataclasses.replace(run, path=both))
    never = write_lines(tmp_path / "never.jsonl", [
        rel, {"id": "y", "a": "Cy", "b": "Di", "relation": "r", "train": []},
    ])  # fmt: skip
    with pytest.raises(RevcurseError, match=r"never.jsonl:2: field 'train': expected at least one"):
        facts_task(dataclasses.replace(run, path=never))
    with pytest.raises(
        ConfigError, match="field 'run.path': expected a facts file for dataset facts"
    ):
        apply_overrides(FactsExperimentConfig(), ["seeds=[0]"])
    with pytest.raises(ConfigError, match="field 'run.path': expected empty"):
        apply_overrides(ParentChildConfig(), [f"run.path={both}"])
    refused = run_cli(
        "data", "convert", "person-description", "--from-scratch", "3", "--out", "x.jsonl"
    )
    assert refused.returncode == 2 and "--from-scratch N: expected" in refused.stderr


def test_the_digest_pins_the_facts_a_run_trained_on(tmp_path):
    path = parent_child_as_facts(tmp_path / "pc.jsonl", 4)
    run = pin_facts(dataclasses.replace(FactsExperimentConfig().run, path=path))
    assert run.path_sha256 == files.sha256(path) and len(run.path_sha256) == 64
    assert pin_facts(run) == run
    with open(path, "a") as fh:
        fh.write('{"id": "new", "a": "X", "b": "Y", "relation": "mother"}\n')
    with pytest.raises(RevcurseError, match="pc.jsonl has changed since this experiment started"):
        build_data(run)
    with pytest.raises(RevcurseError, match="has changed"):
        pin_facts(run)


SMALL = [
    "run.n_people=6", "run.max_eval=6", "run.train.steps=20", "run.model.d_model=32",
    "run.eval.n_mc=1", "run.eval.n_distractors=3", "run.probe.n_facts=6", "run.probe.every=10",
    "run.train.checkpoint_every=10", "seeds=[0]", "workers=1",
]  # fmt: skip


def test_reproduce_facts_end_to_end_then_a_changed_file_is_refused(tmp_path):
    path = parent_child_as_facts(tmp_path / "pc.jsonl", 6)
    out = tmp_path / "mine"
    sets = [x for s in [f"run.path={path}", *SMALL] for x in ("--set", s)]
    done = run_cli("reproduce", "facts", "--out", str(out), "--no-progress", *sets)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "facts" and set(summary["aggregate"]) == {"mdm", "arm"}
    assert set(summary["comparison"]) == {
        f"fwd_reverse.{m}" for m in ("prefix", "likelihood_top1", "chain_top1")}  # fmt: skip
    assert summary["fit"]["splits"] == {"fwd": ["fwd_forward", "fwd_mirror"]}
    # the published tests run over the seeds both models fitted, and read the rows' difference
    fitted = summary["fit"]["fitted_seeds"]
    both = sorted(set(fitted["mdm"]["fwd"]) & set(fitted["arm"]["fwd"]))
    rows = {(r["family"], r["seed"]): r for r in summary["rows"]}
    for key, test in summary["comparison"].items():
        assert test["seeds"] == both, key
        if both:
            diff = [rows["mdm", s][key] - rows["arm", s][key] for s in both]
            assert test["effect"] == pytest.approx(sum(diff) / len(diff)), key
    assert summary["n_statements"] == 6 + 2 * 6
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["run"]["path_sha256"] == files.sha256(path)
    run = yaml.safe_load((out / "models/mdm-seed0/config.yaml").read_text())
    assert (run["dataset"], run["path_sha256"]) == ("facts", files.sha256(path))
    record = json.loads((out / "models/mdm-seed0/generations/fwd_mirror.jsonl")
                        .read_text().splitlines()[0])  # fmt: skip
    assert record["prompt"] == "Who is " and record["suffix"].startswith("'s ")
    report = (out / "report.md").read_text()
    assert (
        "parent-child-from-scratch, trained from scratch" in report
        and "group 'fwd', trained forward" in report
    )

    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with open(path, "a") as fh:
        fh.write('{"id": "new", "a": "X", "b": "Y", "relation": "mother", "group": "fwd"}\n')
    for args in (["--resume", *sets], ["--reevaluate"]):
        refused = run_cli("reproduce", "facts", "--out", str(out), "--no-progress", *args)
        assert refused.returncode == 2, refused.stderr
        assert "has changed since this experiment started" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
