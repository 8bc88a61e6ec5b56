"""`revcurse evaluate` without training: a Hugging Face checkpoint (with or without a LoRA
adapter) or a revcurse run directory on reversal splits, your own facts included."""

from __future__ import annotations

import json

from test_finetune import TINY, save_chat_checkpoint
from typer.testing import CliRunner

from revcurse import files
from revcurse.cli import app
from revcurse.config import FinetuneConfig, apply_overrides
from revcurse.experiments.finetune import run_finetune

# evaluation only: no training settings (a data.max_train cut would restrict the queries and
# their candidates to the trained facts, which an untrained checkpoint does not have)
EVAL = [s for s in TINY if not s.startswith(("train.", "probe.every", "data.max_train"))]


def invoke(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args])


def sets(*values: str) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def test_a_saved_adapter_evaluates_to_the_fine_tune_runs_own_after_metrics(tmp_path):
    """The fine-tune run directory, evaluated again from its saved adapter (and the tiny base
    model rebuilt from its config), gives every split's metrics its run reported after training:
    the adapter really is loaded (a base model without it scores otherwise)."""
    cfg = apply_overrides(FinetuneConfig(), ["model.family=qwen2", *TINY])
    summary = run_finetune(cfg, tmp_path / "ft", progress=False)
    result = invoke(str(tmp_path / "ft"), "--out", str(tmp_path / "ev"))
    assert result.exit_code == 0, result.output
    again = files.read_json(tmp_path / "ev" / "summary.json")
    assert again["splits"] == summary["after"]
    assert again["splits"] != summary["before"]
    assert again["adapter"] == str(tmp_path / "ft" / "adapter")
    assert (tmp_path / "ev" / "report.md").is_file() and (tmp_path / "ev" / "config.yaml").is_file()
    timings = files.read_json(tmp_path / "ev" / "timings.json")  # times kept apart from the summary
    assert timings["evaluation_seconds"] > 0 and timings["probe_seconds"] > 0
    assert again["probe"]["final_step"] == 0 and "per_fact_cos_fwd_rev_final" in again["probe"]


def test_a_local_checkpoint_is_evaluated_on_your_own_facts(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    converted = CliRunner().invoke(app, ["data", "convert", "parent-child", "--out",
                                         str(tmp_path / "facts.jsonl")])  # fmt: skip
    assert converted.exit_code == 0, converted.output
    args = sets("data.dataset=facts", f"data.path={tmp_path / 'facts.jsonl'}", *EVAL)
    result = invoke(str(ckpt), "--out", str(tmp_path / "ev"), *args)
    assert result.exit_code == 0, result.output
    summary = files.read_json(tmp_path / "ev" / "summary.json")
    assert summary["family"] == "llama" and summary["adapter"] is None
    assert set(summary["splits"]) == {"forward", "reverse"}
    assert all(m["n"] == 8 for m in summary["splits"].values())
    lines = (tmp_path / "ev" / "generations" / "reverse.jsonl").read_text().splitlines()
    assert len(lines) == 8 and "prompt" in json.loads(lines[0])
    reverse = summary["splits"]["reverse"]
    se = (reverse["exact"] * (1 - reverse["exact"]) / 8) ** 0.5  # binomial, by hand
    assert f"reverse (reverse, n=8): exact {reverse['exact']:.3f} ± {se:.3f}" in result.output
    assert "evaluating the first 8 queries of each split" in result.output  # said, not silent
    # Parent-Child's shared surnames: the share of such queries and both ranks, said too
    for split, m in summary["splits"].items():
        assert (f"  of which {m['cued_share']:.0%} name their answer by a shared word"
                in result.output) == bool(m["cued_share"]), split  # fmt: skip
    # a cut split ranks the candidates its queries have in the whole split, as the harness
    # export writes them (the export draws over the whole split); a chat checkpoint reads them
    # as replies, without the plain text's joining space
    from revcurse.data.text_datasets import load_text_dataset
    from revcurse.harness import documents

    cfg = apply_overrides(FinetuneConfig(), ["data.dataset=facts",
                                             f"data.path={tmp_path / 'facts.jsonl'}", *EVAL])  # fmt: skip
    whole = load_text_dataset(cfg.data).tests["reverse"]
    exported = [[c.lstrip() for c in d["choices"]]
                for d in documents(whole, cfg.eval.n_distractors)][:8]  # fmt: skip
    ranked = [json.loads(line)["candidates"] for line in lines]
    assert ranked == exported and len(whole) > 8


def test_refusals_are_one_line_exit_2_and_write_nothing(tmp_path):
    """What the command line asks of `evaluate` itself. Spoiled checkpoints, configs and adapters
    are rows of the bad-input catalogue (tests/test_reliability.py: `hf-*`, `adapter-*`,
    `llada-*`)."""
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    cases = [
        ([str(ckpt), *sets("data.dataset=facts")], "data.path"),
        ([str(tmp_path / "nothing")], "nothing: checkpoint not found"),
        ([str(ckpt), "--adapter", str(tmp_path / "none")], "none"),
    ]
    for args, fragment in cases:
        target = tmp_path / "bad"
        result = CliRunner().invoke(app, ["evaluate", *args, "--out", str(target)])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, result.stderr)
        assert not target.exists(), args
