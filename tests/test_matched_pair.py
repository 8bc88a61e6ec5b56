"""The matched pair (#32): one checkpoint fine-tuned as an ARM and as an MDM (llama-a2d), on a
tiny Llama GGUF written by the test (tests/tiny_gguf.py), offline."""

from __future__ import annotations

import json

import pytest
from tiny_gguf import write_tiny_gguf
from typer.testing import CliRunner

from revcurse import files
from revcurse.cli import app
from revcurse.config import MatchedPairConfig, apply_overrides, load_yaml
from revcurse.data.text_datasets import load_text_dataset
from revcurse.experiments.from_scratch import OUTCOMES
from revcurse.stats import paired_comparison

SMALL = ["finetune.train.steps=4", "finetune.train.checkpoint_every=2",
         "finetune.data.max_eval=4", "finetune.eval.n_mc=2", "finetune.eval.gen_length=4",
         "seeds=[0, 1]"]  # fmt: skip


def test_the_matched_pair_trains_one_checkpoint_as_both_families_and_pairs_them(
    tmp_path, monkeypatch
):
    """`reproduce matched-pair --quick` shrunk: per seed one llama and one llama-a2d run of the
    same settings but the family (and the seed); every query evaluated is about a trained fact;
    fit and the paired tests are recomputed here from the runs' summaries and records; a rerun
    with --resume keeps the finished runs as they are."""
    monkeypatch.setenv("REVCURSE_CACHE", str(tmp_path / "cache"))
    write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "mp"
    args = ["reproduce", "matched-pair", "--quick", "--out", str(out), "--no-progress",
            "--set", f"finetune.model.path={tmp_path / 'tiny.gguf'}",
            *[x for s in SMALL for x in ("--set", s)]]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = load_yaml(MatchedPairConfig, out / "config.yaml")
    summary = json.loads((out / "summary.json").read_text())
    runs = {(r["family"], r["seed"]) for r in summary["rows"]}
    assert runs == {(f, s) for f in ("llama", "llama-a2d") for s in (0, 1)}
    configs = {}
    for family, seed in runs:
        run = out / "models" / f"{family}-seed{seed}"
        saved = json.loads((run / "summary.json").read_text())
        assert saved["family"] == family and saved["causal"] == (family == "llama")
        configs[family, seed] = (run / "config.yaml").read_text()
    differ = [a for a, b in zip(configs["llama", 0].splitlines(),
                                configs["llama-a2d", 0].splitlines(), strict=True) if a != b]  # fmt: skip
    assert [line.strip() for line in differ] == ["family: llama"]
    # every query is about a trained fact
    dataset = load_text_dataset(cfg.finetune.data)
    trained = {p.fact for p in dataset.train[: cfg.finetune.data.max_train]}
    asked = {p.fact for split in dataset.tests.values() for p in split}
    assert asked - trained  # the dataset asks about more facts than the cut trains
    for family, seed in runs:
        for split in ("forward", "reverse"):
            records = files.read_jsonl(out / "models" / f"{family}-seed{seed}" / "generations"
                                       / "after" / f"{split}.jsonl")  # fmt: skip
            facts = {p.prompt: p.fact for p in dataset.tests[split]}
            assert records and all(facts[r["prompt"]] in trained for r in records)
            # ranked against other trained facts' answers only: against the whole split's, a
            # name seen in training would stand out among strangers
            trained_answers = {a.strip() for p in dataset.tests[split] if p.fact in trained
                               for a in p.answers}  # fmt: skip
            assert all(c in trained_answers for r in records for c in r["candidates"])
    # fit, recomputed from the rows
    for reading, metric in summary["fit"]["readings"].items():
        for family in ("llama", "llama-a2d"):
            expected = [r["seed"] for r in summary["rows"] if r["family"] == family
                        and r[f"after.forward.{metric}"] >= summary["fit"]["threshold"]]  # fmt: skip
            assert summary["fit"]["fitted_seeds"][reading][family] == expected

    # the all-seed tests by rank and by chain rank, recomputed from the records
    def outcomes(family, metric):
        return [[float(OUTCOMES[metric](r)) for r in files.read_jsonl(
            out / "models" / f"{family}-seed{s}" / "generations" / "after" / "reverse.jsonl")]
            for s in (0, 1)]  # fmt: skip

    assert summary["fit"]["readings"] == {"generation": "prefix", "rank": "likelihood_top1",
                                          "chain": "chain_top1"}  # fmt: skip
    for reading in ("rank", "chain"):
        metric = summary["fit"]["readings"][reading]
        test = summary["comparison"][f"reverse.{reading}.all"]
        again = paired_comparison(outcomes("llama-a2d", metric), outcomes("llama", metric))
        assert test["effect"] == pytest.approx(again["effect"]) and test["seeds"] == [0, 1]
    # resuming keeps the finished runs
    stamp = (out / "models" / "llama-a2d-seed1" / "summary.json").stat().st_mtime_ns
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert (out / "models" / "llama-a2d-seed1" / "summary.json").stat().st_mtime_ns == stamp


def test_the_matched_pair_reads_a2d_minus_arm_over_the_seeds_both_fitted(tmp_path):
    """summarise on hand-written runs (the tiny model above ranks alike both ways, so its tests are
    all zero): the A2D ranks the reverse answer first 3 and 2 times of 4 where the ARM does 1 and
    0 times, by the chain 0 times where the ARM does 4; the A2D fits by rank on seed 0 only. So
    by rank +0.5 over seed 0 (fitted) and over both seeds (all), by chain -1 (the ARM first)."""
    from revcurse.experiments.matched_pair import summarise

    def query(q):  # the first two give their answer away: it alone shares the parent's surname
        if q < 2:
            return {"prompt": f"Name a child of Ann Surname{q}.",
                    "candidates": [f"Kim Surname{q}", "Lee Other", "Joe Third"]}  # fmt: skip
        return {"prompt": "Name a child of Ann Plain.", "candidates": ["Kim Own", "Lee Other"]}

    def run(family, seed, forward_rank, reverse_rank, reverse_chain):
        folder = tmp_path / "models" / f"{family}-seed{seed}"
        metrics = {"direction": "forward", "n": 4, "exact": 0.0, "prefix": 0.0,
                   "likelihood_top1": forward_rank, "chain_top1": 1.0, "chance_top1": 0.25}  # fmt: skip
        records = [query(q) | {"prefix": False, "rank": 1 if q < reverse_rank else 2,
                               "chain_rank": 1 if q < reverse_chain else 3}
                   for q in range(4)]  # fmt: skip
        reverse = metrics | {"direction": "reverse", "likelihood_top1": reverse_rank / 4,
                             "chain_top1": reverse_chain / 4}  # fmt: skip
        stage = {"forward": metrics, "reverse": reverse}
        files.write_json(folder / "summary.json", {"before": stage, "after": stage})
        for when in ("before", "after"):
            for split in ("forward", "reverse"):
                (folder / "generations" / when).mkdir(parents=True, exist_ok=True)
                for record in records:
                    files.append_jsonl(folder / "generations" / when / f"{split}.jsonl", record)

    for seed, (a2d_fit, a2d_rank, arm_rank) in enumerate([(1.0, 3, 1), (0.5, 2, 0)]):
        run("llama-a2d", seed, a2d_fit, a2d_rank, 0)
        run("llama", seed, 1.0, arm_rank, 4)
    cfg = apply_overrides(MatchedPairConfig(), ["seeds=[0, 1]"])
    s = summarise(tmp_path, cfg)
    assert s["fit"]["fitted_seeds"]["rank"] == {"llama": [0, 1], "llama-a2d": [0]}
    tests = s["comparison"]
    assert tests["reverse.rank.fitted"]["seeds"] == [0]
    assert tests["reverse.rank.fitted"]["effect"] == pytest.approx(0.5)
    assert tests["reverse.rank.all"]["effect"] == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert tests["reverse.chain.all"]["effect"] == pytest.approx(-1.0)
    assert tests["reverse.generation.all"]["effect"] == 0.0
    # the ranks apart on the queries a shared surname gives away (the first two) and the rest
    assert s["cued_share"] == {"forward": 0.5, "reverse": 0.5}
    a2d0 = next(r for r in s["rows"] if r["family"] == "llama-a2d" and r["seed"] == 0)
    assert a2d0["after.reverse.likelihood_top1_cued"] == 1.0  # queries 0, 1 of ranks 1, 1
    assert a2d0["after.reverse.likelihood_top1_uncued"] == 0.5  # queries 2, 3 of ranks 1, 2
    assert a2d0["after.reverse.chain_top1_cued"] == 0.0
    # the tests again on the queries no shared word gives away (2 and 3): by rank the A2D has
    # ranks 1, 2 (seed 0) and 2, 2 (seed 1) there, the ARM 2, 2 on both seeds
    uncued = s["comparison_uncued"]
    assert uncued["reverse.rank.all"]["effect"] == pytest.approx((1 / 2 + 0) / 2)
    assert uncued["reverse.rank.all"]["n_queries"] == 2
    assert uncued["reverse.rank.fitted"]["effect"] == pytest.approx(1 / 2)
    assert uncued["reverse.chain.all"]["effect"] == pytest.approx(-1.0)


def test_the_matched_pair_needs_a_checkpoint_and_both_families():
    from revcurse.errors import ConfigError, RevcurseError
    from revcurse.experiments.matched_pair import run_matched_pair

    with pytest.raises(RevcurseError, match="finetune.model.path: expected a Llama"):
        run_matched_pair(MatchedPairConfig(), "/nonexistent/never-written")
    with pytest.raises(ConfigError, match="families"):
        apply_overrides(MatchedPairConfig(), ['families=["llama"]'])


def test_a_cut_training_set_is_evaluated_on_its_own_facts():
    """data.max_train=2 trains Parent-Child's first two statements: the splits evaluated keep only
    queries about those two facts (without the filter, the reverse split's next queries would ask
    about facts never trained, which measures nothing)."""
    from revcurse.config import FinetuneConfig
    from revcurse.experiments.finetune import load_tests

    cfg = apply_overrides(FinetuneConfig(), ["data.dataset=parent-child", "data.max_train=2",
                                             "data.max_eval=4"])  # fmt: skip
    dataset, tests = load_tests(cfg)
    trained = {p.fact for p in dataset.train[:2]}
    assert {p.fact for p in tests["forward"]} == trained
    assert tests["reverse"] and {p.fact for p in tests["reverse"]} <= trained
    assert len(dataset.tests["reverse"]) > 4
