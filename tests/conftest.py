"""Shared fixtures: tiny configs that build real models and datasets in milliseconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from revcurse.config import ModelConfig, RunConfig, ToyDataConfig, TrainConfig


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests are small; one thread keeps them fast and deterministic on the 2-core CI machine.
    torch.set_num_threads(1)


def tiny_run_config(**model_kw) -> RunConfig:
    """A run that trains in well under a second."""
    return RunConfig(
        data=ToyDataConfig(n_pairs=8),
        model=ModelConfig(d_model=16, n_heads=2, **model_kw),
        train=TrainConfig(steps=20, warmup_steps=2, log_every=5, eval_every=10),
    )


# A bound on any one subprocess a test starts, there only so that a deadlock (a collective that never
# returns, say) fails the suite instead of hanging CI. It is no speed assumption: it sits far above
# any command's time even with both cores busy, and inside CI's own limit.
HANG_GUARD_S = 1800


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m revcurse ARGS`` in a subprocess, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "revcurse", *args], capture_output=True, text=True,
        timeout=HANG_GUARD_S,
    )  # fmt: skip


def run_killed(kill_at: int, count_file: Path, *args: str) -> subprocess.CompletedProcess:
    """``revcurse ARGS`` SIGKILLed in the middle of its ``kill_at``-th write (0: never; see
    tests/progress_kill.py); ``.events`` on the result: how many writes it made."""
    script = Path(__file__).resolve().parent / "progress_kill.py"
    done = subprocess.run(
        [sys.executable, str(script), str(kill_at), str(count_file), "--", *args],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    done.events = int(count_file.read_text()) if count_file.is_file() else 0
    return done


# The tiny chat checkpoint's template and tokenizer (revcurse.models.tiny, `revcurse models tiny`).
from revcurse.models.tiny import CHAT_SPECIALS, CHAT_TEMPLATE  # noqa: E402, F401
from revcurse.models.tiny import word_tokenizer as chat_tokenizer  # noqa: E402, F401
