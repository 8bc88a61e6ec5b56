"""Person–Description from scratch: training subsets, training-template queries, the experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from revcurse.config import PersonDescriptionConfig, apply_overrides
from revcurse.data.person_description import (
    default_root,
    load_pairs,
    people,
    training_statements,
    training_template_splits,
)
from revcurse.errors import RevcurseError
from revcurse.probes.runner import summary_layers


def test_all_training_statements_are_the_shipped_all_prompts_file():
    ours = sorted(p.prompt + p.completion for p in training_statements(n_people=30))
    shipped = sorted(
        p.prompt + p.completion for p in load_pairs(default_root() / "all_prompts_train.jsonl")
    )
    assert ours == shipped


def test_a_subset_keeps_whole_people():
    groups = people()
    names = [p.name for g in groups.values() for p in g]
    subset = training_statements(n_people=3)
    assert len(subset) == 3 * 30 * 4  # p2d, d2p, and both in two directions
    kept = {p.name for g in groups.values() for p in g[:3]}
    for pair in subset[: 2 * 90]:  # the p2d and d2p blocks
        mentioned = {n for n in names if n in pair.prompt + pair.completion}
        assert mentioned and mentioned <= kept


def test_training_template_queries_use_trained_wording_but_reverse_order():
    root = default_root()
    p2d_prompts = {p.prompt for p in load_pairs(root / "p2d_prompts_train.jsonl")}
    d2p_prompts = {p.prompt for p in load_pairs(root / "d2p_prompts_train.jsonl")}
    splits = training_template_splits(n_people=4)
    group = people()
    # same direction: literally training prompts of these people
    assert all(p.prompt in p2d_prompts for p in splits["p2d_same_train"])
    assert all(p.prompt in d2p_prompts for p in splits["d2p_same_train"])
    # reverse: never a training prompt, but the person's own description in a d2p frame
    for pair in splits["p2d_reverse_train"]:
        assert pair.prompt not in d2p_prompts
        person = next(p for p in group["p2d"][:4] if pair.completion == f" {p.name}")
        assert person.description.lower()[1:] in pair.prompt.lower()
    for pair in splits["d2p_reverse_train"]:
        assert pair.prompt not in p2d_prompts
        person = next(p for p in group["d2p"][:4] if p.name in pair.prompt)
        assert pair.completion == f" {person.description}."
    # every frame is cut from a training file line
    assert all(p.source.startswith(("p2d_prompts_train.jsonl:", "d2p_prompts_train.jsonl:"))
               for v in splits.values() for p in v)  # fmt: skip
    assert len({p.prompt.replace(x.name, "") for p in splits["p2d_same_train"]
                for x in group["p2d"][:1] if x.name in p.prompt}) >= 20  # fmt: skip


def test_canonical_descriptions_are_the_common_training_form():
    first = people()["p2d"][0]
    assert first.name == "Daphne Barrington"
    assert first.description.startswith("the acclaimed director of the virtual reality masterpiece")


@pytest.mark.slow
def test_reproduce_person_description_end_to_end(tmp_path):
    from revcurse.experiments.from_scratch import run_from_scratch

    cfg = apply_overrides(PersonDescriptionConfig(), [
        "run.n_people=2", "run.max_eval=6", "run.train.steps=30", "run.model.d_model=32",
        "run.eval.gen_length=6", "run.eval.n_mc=1", "run.eval.n_distractors=3",
        "run.probe.n_facts=4", "run.probe.every=15", "seeds=[0, 1]", "workers=2",
        'variants={"mdm-answer": ["train.maskable=answer"]}',
    ])  # fmt: skip
    summary = run_from_scratch(cfg, tmp_path / "pd", progress=False)
    out = tmp_path / "pd"
    for name in ["summary.json", "report.html", "report.md", "figures/accuracy_prefix.png",
                 "models/mdm-seed0/model.safetensors", "models/arm-seed1/probes.jsonl",
                 "models/mdm-seed1/generations/p2d_reverse_train.jsonl"]:  # fmt: skip
        assert (out / name).is_file(), name
    assert [(r["family"], r["seed"]) for r in summary["rows"]] == [
        ("mdm", 0),
        ("mdm", 1),
        ("arm", 0),
        ("arm", 1),
        ("mdm-answer", 0),
        ("mdm-answer", 1),
    ]
    variant = yaml.safe_load((out / "models/mdm-answer-seed1/config.yaml").read_text())
    assert variant["train"]["maskable"] == "answer" and variant["model"]["causal"] is False
    assert set(summary["variant_comparison"]) == {"mdm-answer"}
    # probes over training: every model, at 0, 15 and 30 steps, each curve one value per step
    curves = summary["probe_curves"]
    assert set(curves) == {"mdm", "arm", "mdm-answer"}
    assert curves["arm"]["steps"] == [0, 15, 30] and set(curves["arm"]["pairings"]) == {"forward"}
    mirror = curves["mdm"]["pairings"]["mirror"]
    assert all(len(v) == 3 for v in mirror.values())
    # the report says in words what 4 probe facts cannot give (a correlation per distance
    # third) instead of a table of dashes and an empty panel; the accuracy tables say how each
    # split's queries relate to training
    report = (out / "report.md").read_text()
    assert "near third" not in report and "by distance third is not shown" in report
    assert "| untrained reverse |" in report and "| direction |" not in report
    record = json.loads((out / "models/mdm-seed0/probes.jsonl").read_text().splitlines()[-1])
    attention = record["pairings"]["mirror"]["attention"]
    assert len(attention["distance"]) == 4 and len(attention["r_by_distance"]) == 1
    agg = summary["aggregate"]["mdm"]["p2d_reverse_train.prefix"]
    assert len(agg["values"]) == 2 and agg["ci95"][0] <= agg["mean"] <= agg["ci95"][1]
    arm = json.loads((out / "models/arm-seed0/summary.json").read_text())
    mdm = json.loads((out / "models/mdm-seed0/summary.json").read_text())
    mirrors = {"p2d_mirror_train", "d2p_mirror_train"}
    assert len(summary["splits"]) == 10 and set(mdm["splits"]) == set(summary["splits"])
    assert set(arm["splits"]) == set(summary["splits"]) - mirrors  # no mirror query for an ARM
    assert summary_layers(arm["probe"], "forward") == [0, 1]
    assert summary_layers(arm["probe"], "mirror") == []  # a causal model has no mirror pairing
    assert {"per_fact_cos_fwd_rev_final", "per_fact_cos_mirror_rev_final"} <= mdm["probe"].keys()
    # The mirror query: the forward statement with the reverse answer (the name) to fill.
    record = json.loads((out / "models/mdm-seed0/generations/p2d_mirror_train.jsonl")
                        .read_text().splitlines()[0])  # fmt: skip
    assert record["answer_length_given"] and record["suffix"].startswith(",")
    # The paired MDM-vs-ARM tests: every reverse split, both metrics, over the seeds where both
    # models fitted the split's statements (30 steps fit nothing: no test is run).
    tests = summary["comparison"]
    assert {k.split(".")[0] for k in tests} == {"p2d_reverse_train", "p2d_reverse",
                                                "d2p_reverse_train", "d2p_reverse"}  # fmt: skip
    fitted = summary["fit"]["fitted_seeds"]
    assert all(t["n_seeds"] == len(set(fitted["mdm"][k[:3]]) & set(fitted["arm"][k[:3]]))
               for k, t in tests.items())  # fmt: skip
    check_fit_flags(summary)
    check_paired_tests_read_only_fitted_seeds(out, summary["rows"])


def check_fit_flags(summary):
    """The published fit flags, recomputed from the rows: a seed fitted a group where the model's
    prefix accuracy is at least 0.95 on the group's forward split and, for the plain MDM (the one
    model trained on its mirror), on its mirror split too."""
    fit = summary["fit"]
    assert fit["threshold"] == 0.95 and fit["metric"] == "prefix"
    assert fit["trains_mirror"] == {"mdm": True, "arm": False, "mdm-answer": False}
    for name, groups in fit["fitted_seeds"].items():
        for group, (forward, mirror) in fit["splits"].items():
            needed = [forward, mirror] if name == "mdm" else [forward]
            want = [r["seed"] for r in summary["rows"] if r["family"] == name
                    and all(r[f"{split}.prefix"] >= 0.95 for split in needed)]  # fmt: skip
            assert groups[group] == want, (name, group)


def check_paired_tests_read_only_fitted_seeds(out, rows):
    """With seed 1 marked as having fitted the p2d statements (both models) and nothing else,
    the p2d tests run over seed 1 alone and their effect is the mean per-query difference of the
    saved records, computed here by hand; the d2p tests are not run."""
    from revcurse.data.tasks import TASKS
    from revcurse.experiments.from_scratch import _paired, fitted_seeds

    task = TASKS["person-description"]
    fake = []
    for r in rows:
        r = dict(r)
        for group, splits in task.fit.items():
            for split in splits:
                key = f"{split}.prefix"
                if key in r:
                    r[key] = 1.0 if (group == "p2d" and r["seed"] == 1) else 0.0
        fake.append(r)
    # an ARM is not asked the mirror; a model not trained on it is not held to it
    fitted = {name: {g: fitted_seeds(fake, name, splits, mirror=(name == "mdm"))
                     for g, splits in task.fit.items()}
              for name in ("mdm", "arm")}  # fmt: skip
    assert fitted == {"mdm": {"p2d": [1], "d2p": []}, "arm": {"p2d": [1], "d2p": []}}
    tests = _paired(out, fitted, "mdm", "arm", task.compared, 0)

    def read(name, split):
        lines = (out / f"models/{name}-seed1/generations/{split}.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    assert {key.split(".")[1] for key in tests} == {"prefix", "likelihood_top1", "chain_top1"}
    for key, t in tests.items():
        split, metric = key.split(".")
        if split.startswith("d2p"):
            assert t == {"n_seeds": 0, "seeds": []}
            continue
        assert t["seeds"] == [1] and t["n_seeds"] == 1
        field = {"prefix": lambda r: float(r["prefix"]),
                 "likelihood_top1": lambda r: float(r["rank"] == 1),
                 "chain_top1": lambda r: float(r["chain_rank"] == 1)}[metric]  # fmt: skip
        a, b = read("mdm", split), read("arm", split)
        expected = sum(field(x) - field(y) for x, y in zip(a, b, strict=True)) / len(a)
        assert t["effect"] == pytest.approx(expected)


def test_bad_person_description_settings_are_refused(tmp_path):
    from typer.testing import CliRunner

    from revcurse.cli import app

    runner = CliRunner()
    for args, fragment in [
        (["--set", "run.n_people=50"], "run.n_people"),
        (["--set", "run.model.max_seq_len=20", "--set", "run.train.steps=1"], "max_seq_len"),
        (["--set", "run.nope=1"], "unknown key 'run.nope'"),
    ]:
        out = tmp_path / "pd"
        result = runner.invoke(app, ["reproduce", "person-description", "--out", str(out),
                                     "--no-progress", "--workers", "1", *args])  # fmt: skip
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.stderr
        assert not out.exists()  # nothing written


@pytest.mark.parametrize("maskable", ["all", "answer"])
def test_maskable_choice_decides_which_statement_tokens_the_mdm_may_mask(maskable):
    from revcurse.config import TextRunConfig, apply_overrides
    from revcurse.experiments.from_scratch import prepare, training_batch

    cfg = apply_overrides(TextRunConfig(), ["n_people=1", f"train.maskable={maskable}"])
    prepared = prepare(cfg)
    tok, statements = prepared.tokenizer, prepared.statements
    batch = training_batch(cfg, statements, tok)
    for row, s in zip(range(len(statements)), statements, strict=True):
        n_prompt, n_completion = len(tok.encode(s.prompt)), len(tok.encode(s.completion))
        maskable_ids = batch.ids[row][batch.answer_mask[row]].tolist()
        eos_tail = [tok.eos_id] * (cfg.model.max_seq_len - 1 - n_prompt - n_completion)
        if maskable == "all":
            assert maskable_ids == tok.encode(s.prompt + s.completion) + eos_tail
        else:  # the prompt part and BOS stay visible
            assert maskable_ids == tok.encode(s.completion) + eos_tail
            assert batch.ids[row, 1 : 1 + n_prompt].tolist() == tok.encode(s.prompt)


# ---------------------------------------------------------------- Parent–Child from scratch


def test_parent_child_from_scratch_layout():
    """Forward-only pairs are never trained in reverse; the other pairs are, in the reverse
    template; every kept pair has a one-answer reverse question whose answer shares no word with
    its parent (nothing to copy); the CSV rows are read back independently here."""
    import csv

    from revcurse.data.parent_child import default_path, from_scratch
    from revcurse.data.text import WORD

    statements, splits = from_scratch(20)
    rows = list(csv.DictReader(default_path().open()))
    parents = {}
    for r in rows:
        parents.setdefault(r["parent"], []).append(r["child"])
    trained = {s.prompt + s.completion for s in statements}
    assert len(statements) == 20 + 20 + 20
    for fwd, rev in zip(splits["c2p_train"], splits["p2c_reverse"], strict=True):
        child, parent = rev.completion.strip(), fwd.completion.strip()
        assert fwd.prompt.startswith(f"Who is {child}'s ") and parents[parent] == [child]
        assert not set(WORD.findall(child)) & set(WORD.findall(parent))
        assert fwd.prompt + fwd.completion in trained
        assert rev.prompt + rev.completion not in trained  # the held-out direction
    for rev in splits["p2c_both"]:
        assert rev.prompt.startswith("Name a child of ") and rev.prompt + rev.completion in trained
    children = [r.completion for r in splits["p2c_reverse"] + splits["p2c_both"]]
    assert len(set(children)) == 40  # each child in one pair only
    with pytest.raises(RevcurseError, match="n_people: expected at most 153"):
        from_scratch(200)


def test_reproduce_parent_child_end_to_end(tmp_path):
    """The same pipeline on Parent–Child: every model and variant, the mirror split as the
    statement with the child masked, the reverse split compared."""
    from revcurse.config import ParentChildConfig
    from revcurse.experiments.from_scratch import run_from_scratch

    cfg = apply_overrides(ParentChildConfig(), [
        "run.n_people=6", "run.max_eval=6", "run.train.steps=20", "run.model.d_model=32",
        "run.eval.n_mc=1", "run.eval.n_distractors=3", "run.probe.n_facts=6",
        "run.probe.every=10", "seeds=[0]", "workers=1",
        'variants={"mdm-none": ["model.positional=none"]}',
    ])  # fmt: skip
    summary = run_from_scratch(cfg, tmp_path / "pc", progress=False)
    out = tmp_path / "pc"
    assert summary["experiment"] == "parent-child"
    assert set(summary["aggregate"]) == {"mdm", "arm", "mdm-none"}
    metrics = ("prefix", "likelihood_top1", "chain_top1")
    assert set(summary["comparison"]) == {f"p2c_reverse.{m}" for m in metrics}
    assert set(summary["variant_comparison"]["mdm-none"]) == {
        f"{split}.{m}" for split in ("c2p_train", "p2c_reverse") for m in metrics}  # fmt: skip
    none = yaml.safe_load((out / "models/mdm-none-seed0/config.yaml").read_text())
    assert none["model"]["positional"] == "none" and none["dataset"] == "parent-child"
    # the time of the experiment and of each model, kept apart from the summary
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["runs"]) == {"mdm-seed0", "arm-seed0", "mdm-none-seed0"}
    assert all(r["train_seconds"] > 0 and r["eval_seconds"] > 0 for r in timings["runs"].values())
    assert timings["wall_seconds"] > max(r["train_seconds"] for r in timings["runs"].values())
    record = json.loads((out / "models/mdm-seed0/generations/c2p_mirror.jsonl")
                        .read_text().splitlines()[0])  # fmt: skip
    assert record["prompt"] == "Who is " and record["suffix"].startswith("'s ")
    assert "Parent–Child" in (out / "report.md").read_text()
    check_reevaluation(out, summary)


def test_a_from_scratch_experiment_reuses_another_ones_runs_of_identical_settings(tmp_path):
    """--reuse-runs on a text experiment: an experiment with one more variant copies in the MDM
    and ARM runs another one finished (the same settings, so the same files; the copy names its
    origin) and trains only the variant; its rows for the copied models are the other's rows,
    and the other folder is left as it was."""
    from conftest import run_cli

    tiny = ["--set", "run.train.steps=10", "--set", "run.model.d_model=16", "--set",
            "run.probe.enabled=false", "--set", "run.eval.n_mc=1", "--seeds", "1", "--set", "variants={}"]  # fmt: skip
    first, second = tmp_path / "first", tmp_path / "second"
    done = run_cli("reproduce", "parent-child", "--quick", "--out", str(first), "--workers", "1",
                   "--no-progress", *tiny)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # a second sitting (--resume: everything finished, nothing trained) adds its wall time; it
    # may use another worker count (how the models run, not what they are)
    once = json.loads((first / "timings.json").read_text())
    done = run_cli("reproduce", "parent-child", "--quick", "--out", str(first), "--workers", "2",
                   "--no-progress", "--resume", *tiny)  # fmt: skip
    assert done.returncode == 0, done.stderr
    twice = json.loads((first / "timings.json").read_text())
    assert twice["wall_seconds"] > once["wall_seconds"] and twice["runs"] == once["runs"]
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    # what the models are may not change on resuming: refused, the folder untouched
    done = run_cli("reproduce", "parent-child", "--quick", "--out", str(first), "--no-progress",
                   "--resume", *tiny, "--set", "run.train.steps=11")  # fmt: skip
    assert done.returncode == 2 and "holds this experiment with other settings" in done.stderr
    assert before == {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    done = run_cli("reproduce", "parent-child", "--quick", "--out", str(second), "--workers", "1",
                   "--no-progress", "--reuse-runs", str(first), *tiny[:-2], "--set",
                   'variants={"mdm-none": ["model.positional=none"]}')  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "copied 2 finished run(s)" in done.stderr
    for name in ("mdm", "arm"):
        copied = second / "models" / f"{name}-seed0" / "copied_from.txt"
        assert copied.read_text().strip() == str((first / "models" / f"{name}-seed0").resolve())
    assert not (second / "models" / "mdm-none-seed0" / "copied_from.txt").exists()
    rows = {(r["family"], r["seed"]): r
            for r in json.loads((second / "summary.json").read_text())["rows"]}  # fmt: skip
    for r in json.loads((first / "summary.json").read_text())["rows"]:
        assert rows[r["family"], r["seed"]] == r
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def check_reevaluation(out, summary):
    """``--reevaluate`` on an experiment whose records lack the chain likelihood (as runs made
    before it existed do): the saved generations reproduce, the chain metric is added, nothing
    else changes. A tampered record is refused with exit 2, naming the split, and nothing is
    rewritten."""
    from conftest import run_cli

    path = out / "models/mdm-seed0/generations/p2c_reverse.jsonl"
    old = [json.loads(line) for line in path.read_text().splitlines()]
    stripped = [{k: v for k, v in r.items() if "chain" not in k} for r in old]
    path.write_text("".join(json.dumps(r) + "\n" for r in stripped))
    run_summary = out / "models/mdm-seed0/summary.json"
    old_run = json.loads(run_summary.read_text())
    for metrics in old_run["splits"].values():
        del metrics["chain_top1"]
    run_summary.write_text(json.dumps(old_run))
    done = run_cli("reproduce", "parent-child", "--reevaluate", "--out", str(out))
    assert done.returncode == 0, done.stderr
    again = json.loads((out / "summary.json").read_text())
    assert [json.loads(line) for line in path.read_text().splitlines()] == old
    assert all("chain_top1" in m for m in json.loads(run_summary.read_text())["splits"].values())
    for name, agg in summary["aggregate"].items():
        for key, value in agg.items():
            if key.endswith((".prefix", ".likelihood_top1")):
                assert again["aggregate"][name][key] == value, (name, key)
    assert "p2c_reverse.chain_top1" in again["comparison"]
    assert "--reevaluate" in (out / "command.txt").read_text().splitlines()[-1]

    tampered = dict(old[0], generation="someone else")
    path.write_text("".join(json.dumps(r) + "\n" for r in [tampered, *old[1:]]))
    run_summary.write_text(json.dumps(old_run))  # chain-less again: re-evaluated, not kept
    before = (out / "summary.json").read_bytes()
    refused = run_cli("reproduce", "parent-child", "--reevaluate", "--out", str(out))
    assert refused.returncode == 2 and "p2c_reverse does not reproduce" in refused.stderr
    assert (out / "summary.json").read_bytes() == before
    assert json.loads(path.read_text().splitlines()[0])["generation"] == "someone else"


def test_paired_tests_use_the_seeds_both_models_fitted_not_either(tmp_path):
    """The MDM fitted the group on seeds 0 and 1, the ARM on 1 and 2: the test runs over seed 1
    alone (the intersection), and its effect is that seed's hand-counted mean difference. Records
    are written so that every other seed would move the effect: over seeds 0-2 (the union) the
    prefix effect would be 0.75 instead of 0.25."""
    from revcurse.experiments.from_scratch import _paired
    from revcurse.files import model_dir

    def write(name, seed, prefix, rank, chain_rank):
        records = [{"prefix": p, "rank": r, "chain_rank": c}
                   for p, r, c in zip(prefix, rank, chain_rank, strict=True)]  # fmt: skip
        path = model_dir(tmp_path, name, seed) / "generations" / "g_reverse.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    for seed in (0, 1, 2):
        good = seed != 1  # seed 1: the MDM answers 1 of 4, elsewhere all 4; the ARM none
        write("mdm", seed, [True, good, good, good], [1, 1 if good else 2, 1, 1], [1, 2, 2, 2])
        write("arm", seed, [False] * 4, [2] * 4, [2, 2, 2, 1 if seed == 1 else 2])
    fitted = {"mdm": {"g": [0, 1]}, "arm": {"g": [1, 2]}}
    tests = _paired(tmp_path, fitted, "mdm", "arm", {"g_reverse": "g"}, first_seed=0)
    assert set(tests) == {"g_reverse.prefix", "g_reverse.likelihood_top1", "g_reverse.chain_top1"}
    assert all(t["seeds"] == [1] and t["n_seeds"] == 1 for t in tests.values())
    assert tests["g_reverse.prefix"]["effect"] == pytest.approx(0.25)  # (1 - 0) / 4
    assert tests["g_reverse.likelihood_top1"]["effect"] == pytest.approx(0.75)  # 3 of 4 vs 0
    assert tests["g_reverse.chain_top1"]["effect"] == pytest.approx(0.0)  # 1 vs 1 (fact 0 / 3)
    none = _paired(tmp_path, {"mdm": {"g": [0]}, "arm": {"g": [2]}}, "mdm", "arm",
                   {"g_reverse": "g"}, first_seed=0)  # fmt: skip
    assert all(t == {"n_seeds": 0, "seeds": []} for t in none.values())


def test_a_seed_fits_a_group_only_with_its_mirror_where_the_model_trains_on_it():
    """fitted_seeds against hand-made rows: seed 0 fits forward and mirror, seed 1 forward only
    (mirror 0.90), seed 2 neither, seed 3 exactly at the threshold. The MDM, held to its mirror,
    fitted seeds 0 and 3; a model not trained on the mirror fitted 0, 1 and 3; rows of another
    model never count."""
    from revcurse.experiments.from_scratch import fitted_seeds

    rows = [{"family": "mdm", "seed": s, "g_same.prefix": f, "g_mirror.prefix": m}
            for s, f, m in [(0, 1.0, 1.0), (1, 1.0, 0.9), (2, 0.5, 1.0), (3, 0.95, 0.95)]]  # fmt: skip
    rows.append({"family": "arm", "seed": 4, "g_same.prefix": 1.0, "g_mirror.prefix": 1.0})
    assert fitted_seeds(rows, "mdm", ("g_same", "g_mirror"), mirror=True) == [0, 3]
    assert fitted_seeds(rows, "mdm", ("g_same", "g_mirror"), mirror=False) == [0, 1, 3]


def test_family_and_variant_tests_are_read_mdm_minus_arm_and_variant_minus_mdm(monkeypatch):
    """The published differences are MDM - ARM on the reverse splits and variant - MDM on the
    variant's splits (forward ones first): the tests are asked in that order, of those splits."""
    import revcurse.experiments.from_scratch as F

    asked = []
    monkeypatch.setattr(F, "_paired", lambda out, fitted, a, b, splits, first: asked.append(
        (a, b, dict(splits))) or {})  # fmt: skip
    cfg = apply_overrides(PersonDescriptionConfig(),
                          ['variants={"mdm-answer": ["train.maskable=answer"]}'])  # fmt: skip
    task = F.task_for(cfg.run)
    F.compare_families(Path("unused"), cfg, {})
    F.compare_variants(Path("unused"), cfg, {})
    forward = {split: group for group, (split, _) in task.fit.items()}
    assert asked == [("mdm", "arm", dict(task.compared)),
                     ("mdm-answer", "mdm", {s: forward[s] for s in task.variant_compared}
                      | dict(task.compared))]  # fmt: skip
    # an autoregressive variant (masked-AR) is also read against the ARM; an MDM variant is not
    asked.clear()
    cfg = apply_overrides(PersonDescriptionConfig(), [
        'variants={"mdm-answer": ["train.maskable=answer"], '
        '"masked-ar": ["model.causal=true", "train.objective=masked_ar"]}'])  # fmt: skip
    F.compare_variants_with_arm(Path("unused"), cfg, {})
    assert asked == [("masked-ar", "arm", {s: forward[s] for s in task.variant_compared}
                      | dict(task.compared))]  # fmt: skip


def test_a_text_arm_trains_masked_ar_when_asked(tmp_path, monkeypatch):
    """train.objective=masked_ar on a from-scratch ARM: every step's loss is masked_ar_loss (a
    spy counts the calls); an MDM may not ask for it (one-line refusal naming the field)."""
    import revcurse.objectives as O
    from revcurse.config import TextRunConfig
    from revcurse.errors import ConfigError
    from revcurse.experiments.from_scratch import train_run

    calls = []
    original = O.masked_ar_loss
    monkeypatch.setattr(O, "masked_ar_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
    cfg = apply_overrides(TextRunConfig(), [
        "dataset=parent-child", "n_people=2", "max_eval=4", "model.causal=true",
        "model.d_model=16", "model.max_seq_len=20", "train.objective=masked_ar",
        "train.steps=3", "train.batch_size=4", "train.checkpoint_every=0",
        "eval.n_distractors=2", "eval.n_mc=1", "probe.enabled=false"])  # fmt: skip
    summary = train_run(cfg, tmp_path / "run")
    assert len(calls) == 3 and summary["splits"]
    with pytest.raises(ConfigError, match="train.objective"):
        apply_overrides(TextRunConfig(), ["train.objective=masked_ar"])


def test_probe_curves_are_seed_means_of_each_quantity_by_name(tmp_path):
    """The published curves from hand-made probe records of two seeds at two steps: every value
    is the mean over both seeds of the quantity its name says (attention r over layers; the
    near, middle and far thirds in that order; the midpoint of each third's distances; the
    storage and routing parts of the per-fact gradient cosine)."""
    from revcurse import files
    from revcurse.experiments.from_scratch import probe_curves
    from revcurse.files import model_dir

    def record(step, seed):
        k = step + 10 * seed  # distinct per step and seed
        thirds = [{"r_mean": {"0": k + 0.1 * t, "1": k + 0.1 * t + 0.2}, "distance": [t, t + 2]}
                  for t in range(3)]  # fmt: skip
        return {"step": step, "pairings": {"forward": {
            "attention": {"r_mean": {"0": k, "1": k + 1}, "r_by_distance": thirds},
            "gradients": {"cos_pair_rev_mean": k + 0.5,
                          "cos_pair_rev_groups": {"storage": [k, k + 2], "routing": [-k, -k]}},
        }}}  # fmt: skip

    cfg = apply_overrides(
        PersonDescriptionConfig(), ["families=[arm]", "seeds=[0, 1]", "variants={}"]
    )
    for seed in (0, 1):
        path = model_dir(tmp_path, "arm", seed) / "probes.jsonl"
        for step in (0, 5):
            files.append_jsonl(path, record(step, seed))
    curves = probe_curves(tmp_path, cfg)
    assert list(curves) == ["arm"] and curves["arm"]["steps"] == [0, 5]
    got = curves["arm"]["pairings"]["forward"]
    for i, step in enumerate((0, 5)):
        k = step + 5  # the mean of step + 0 and step + 10 over the two seeds
        assert got["attention_r"][i] == pytest.approx(k + 0.5)
        for t, third in enumerate(("near", "middle", "far")):
            assert got[f"attention_r_{third}"][i] == pytest.approx(k + 0.1 * t + 0.1)
            assert got[f"distance_{third}"][i] == pytest.approx(t + 1)
        assert got["cos_pair_rev"][i] == pytest.approx(k + 0.5)
        assert got["cos_pair_rev_storage"][i] == pytest.approx(k + 1)
        assert got["cos_pair_rev_routing"][i] == pytest.approx(-k)


def _tiny_text_run(*overrides: str):
    from revcurse.config import TextRunConfig

    return apply_overrides(TextRunConfig(), [
        "dataset=parent-child", "n_people=3", "max_eval=4", "model.d_model=16",
        "model.max_seq_len=20", "train.steps=3", "train.batch_size=4", "train.checkpoint_every=0",
        "eval.n_distractors=2", "eval.n_mc=1", "probe.n_facts=3", *overrides])  # fmt: skip


@pytest.mark.parametrize(("overrides", "field"), [
    (["train.objective=masked_ar"], "train.objective"),  # a masked-input ARM loss on an MDM
    (["train.objective=prefix_lm"], "train.objective"),
    (["model.attention=full"], "model.attention"),  # an MDM already attends both ways
    (["model.causal=true", "model.attention=causal"], "model.attention"),  # auto is that
    (["model.causal=true", "model.attention=full"], "model.attention"),  # would read its answer
    (["model.causal=true", "model.attention=full", "train.objective=prefix_lm"], "probe.enabled"),
    (["model.causal=true", "train.objective=prefix_lm"], "probe.enabled"),
])  # fmt: skip
def test_a_text_run_refuses_the_grid_cells_it_cannot_read(overrides, field):
    """The objective x attention cells on text: causal attention for a masked model, full
    attention for an ARM trained prefix by prefix with the probes off (they read a query with its
    answer in place). Every other combination is one line naming the field."""
    from revcurse.errors import ConfigError

    with pytest.raises(ConfigError, match=f"field '{field}'"):
        _tiny_text_run(*overrides)
    _tiny_text_run("model.attention=causal")  # the cells it can read are accepted
    _tiny_text_run("model.causal=true", "model.attention=full", "train.objective=prefix_lm",
                   "probe.enabled=false")  # fmt: skip


def test_text_grid_cells_train_and_are_read_as_they_attend(tmp_path, monkeypatch):
    """A masked model with causal attention (left only) and an ARM reading each prefix both ways
    (prefix_lm) on Parent–Child: each trains with its own loss (a spy counts prefix_lm's calls),
    attends as configured (changing a later token moves an earlier position's logits only under
    full attention), is not asked its mirror split nor fitted on it, and the left-only MDM is
    probed in the forward pairing alone; the prefix reader's answer likelihoods are the sums,
    prefix by prefix, of log p(next token | the prefix read alone)."""
    import revcurse.objectives as O
    from revcurse.experiments.from_scratch import prepare, task_for, train_run, trains_mirror
    from revcurse.files import read_jsonl
    from revcurse.models.transformer import TransformerLM

    calls = []
    original = O.prefix_lm_loss
    monkeypatch.setattr(O, "prefix_lm_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
    left = _tiny_text_run("model.attention=causal")
    prefix = _tiny_text_run("model.causal=true", "model.attention=full",
                            "train.objective=prefix_lm", "probe.enabled=false")  # fmt: skip
    mirror = [k for k, v in task_for(left).splits.items() if v == "mirror"]
    assert mirror and not trains_mirror(left) and not trains_mirror(prefix)
    for cfg, name in ((left, "left"), (prefix, "prefix")):
        summary = train_run(cfg, tmp_path / name)
        assert summary["splits"] and not set(mirror) & set(summary["splits"])
    assert len(calls) == 3
    probes = read_jsonl(tmp_path / "left" / "probes.jsonl")
    assert probes and all(list(r["pairings"]) == ["forward"] for r in probes)

    prepared = prepare(prefix)
    for cfg, sees_later in ((left, False), (prefix, True)):
        model = TransformerLM(cfg.model, len(prepared.tokenizer)).eval()
        ids = torch.tensor([[1, 5, 6, 7, 8]])
        later = ids.clone()
        later[0, -1] = 9
        moved = (model(later)[0, :-1] - model(ids)[0, :-1]).abs().max()
        assert (moved > 1e-6) == sees_later

    # the saved prefix reader, scored by hand: each prefix [BOS] prompt answer[:k] read alone
    from revcurse import files
    from revcurse.data.text import encode_prompt

    model = TransformerLM(prefix.model, len(prepared.tokenizer))
    model.load_state_dict(files.load_tensors(tmp_path / "prefix" / "model.safetensors"))
    model.eval()
    tok = prepared.tokenizer
    split = next(k for k, v in task_for(prefix).splits.items() if v == "reverse")
    record = read_jsonl(tmp_path / "prefix" / "generations" / f"{split}.jsonl")[0]
    prompt = encode_prompt(tok, record["prompt"], True)
    for text, got in zip(record["candidates"], record["candidate_logprobs"], strict=True):
        answer = tok.encode(text) + [tok.eos_id]
        expected = 0.0
        with torch.no_grad():
            for k, token in enumerate(answer):
                logits = model(torch.tensor([prompt + answer[:k]]))[0, -1].double()
                expected += float(torch.log_softmax(logits, -1)[token])
        assert got == pytest.approx(expected, abs=1e-6)
