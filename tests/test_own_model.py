"""README's "Use it on your own model and data": every command of its block, run as written on
a tiny random chat checkpoint (``$CKPT``), with settings that keep it to seconds appended."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from conftest import HANG_GUARD_S
from test_finetune import TINY, save_chat_checkpoint

from revcurse import files

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "finetune": [*TINY, "train.steps=4"],
    "evaluate": [s for s in TINY if not s.startswith(("train.", "probe.every"))],
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- own-model commands -->")[1].split("<!-- end own-model commands -->")[0]
    return [line for line in block.splitlines() if line.startswith("revcurse ")]


def test_the_readme_own_model_commands_run_as_written(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    commands = readme_commands()
    assert len(commands) == 7
    for line in commands:
        args = shlex.split(line.replace("$CKPT", str(ckpt)))[1:]
        args += [x for s in SMALL.get(args[0], []) for x in ("--set", s)]
        if args[0] == "finetune":
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
    assert (tmp_path / "harness-tasks" / "revcurse_parent_child.yaml").is_file()
