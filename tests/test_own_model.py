"""README's "Your own model and facts": every command of its block, run as written on
a tiny random chat checkpoint (``$CKPT``), with settings that keep it to seconds appended."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from conftest import HANG_GUARD_S, run_cli
from test_finetune import TINY, save_chat_checkpoint

from revcurse import files

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "finetune": [*TINY, "train.steps=4"],
    "evaluate": [s for s in TINY if not s.startswith(("train.", "probe.every"))],
    "reproduce": ["run.n_people=4", "run.max_eval=4", "run.train.steps=10", "run.model.d_model=32",
                  "run.eval.n_mc=1", "run.eval.n_distractors=3", "run.probe.n_facts=4",
                  "run.probe.every=5", "seeds=[0]", "workers=1"],
}  # fmt: skip


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- own-model commands -->")[1].split("<!-- end own-model commands -->")[0]
    return [line for line in block.splitlines() if line.startswith("revcurse ")]


def test_the_readme_own_model_commands_run_as_written(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    commands = readme_commands()
    assert len(commands) == 9
    for line in commands:
        args = shlex.split(line.replace("$CKPT", str(ckpt)))[1:]
        args += [x for s in SMALL.get(args[0], []) for x in ("--set", s)]
        if args[0] in ("finetune", "reproduce"):
            args.append("--no-progress")
        done = subprocess.run([sys.executable, "-m", "revcurse", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=HANG_GUARD_S)  # fmt: skip
        assert done.returncode == 0, (line, done.stderr[-2000:])
    ft = files.read_json(tmp_path / "runs/ft/summary.json")
    again = files.read_json(tmp_path / "runs/ft-again/summary.json")
    adapted = files.read_json(tmp_path / "runs/adapted/summary.json")
    # the fine-tuned run evaluated again, from its directory or from base + adapter, reproduces
    # the metrics its own evaluation reported after training
    assert again["splits"] == ft["after"] == adapted["splits"]
    base = files.read_json(tmp_path / "runs/base/summary.json")
    assert base["splits"] == ft["before"]
    # the run's config names its facts file absolutely: evaluated from another directory (the
    # README wrote a relative path), it reads the same facts and reproduces its numbers
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = [sys.executable, "-m", "revcurse", "evaluate", str(tmp_path / "runs/ft"), "--out",
             str(tmp_path / "runs/ft-elsewhere"),
             *[x for s in SMALL["evaluate"] for x in ("--set", s)]]  # fmt: skip
    done = subprocess.run(moved, cwd=elsewhere, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert files.read_json(tmp_path / "runs/ft-elsewhere/summary.json")["splits"] == ft["after"]
    assert (tmp_path / "harness-tasks" / "revcurse_parent_child.yaml").is_file()
    scratch = files.read_json(tmp_path / "runs/scratch/summary.json")
    assert scratch["experiment"] == "facts" and "fwd_reverse.prefix" in scratch["comparison"]


def test_models_tiny_writes_an_offline_checkpoint_that_evaluate_reads(tmp_path):
    """`revcurse models tiny` (no network): a checkpoint folder whose tokenizer knows every word of
    the facts it was made for (no unknown token in any statement or query), that `evaluate`
    reads with its chat template; the same command again writes the same weights elsewhere."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from revcurse.data.facts import read_facts

    facts = tmp_path / "facts.jsonl"
    assert run_cli("data", "convert", "parent-child", "--out", str(facts)).returncode == 0
    for name in ("ck", "again"):
        done = run_cli("models", "tiny", "--out", str(tmp_path / name), "--facts", str(facts))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(tmp_path / name)
    tok = AutoTokenizer.from_pretrained(tmp_path / "ck")
    assert tok.chat_template and tok.unk_token_id is not None
    records = read_facts(facts).facts[:20]
    for record in records:
        for text in (record.a, record.b):
            assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"]
    first, second = (load_file(tmp_path / n / "model.safetensors") for n in ("ck", "again"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    ev = run_cli("evaluate", str(tmp_path / "ck"), "--set", "data.dataset=facts", "--set",
                 f"data.path={facts}", "--set", "data.max_eval=4", "--set", "eval.n_distractors=3",
                 "--set", "probe.enabled=false", "--out", str(tmp_path / "ev"))  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["chat_template"] is True
