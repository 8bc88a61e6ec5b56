"""Reproducibility: seeding, explicit generators, and an environment fingerprint for run directories."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import revcurse
from revcurse import files


def use_threads(threads: int) -> None:
    """torch's intra-op thread count for everything a run does (``train.threads``): training,
    evaluation and probes of a run, and ``revcurse evaluate`` of it, run with the same setting.
    Left unset, torch takes every core, which on small models is slower (thread start-up and
    contention outweigh the arithmetic) and makes shared machines slower still."""
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch globally and return a fresh torch generator with that seed.

    Library code draws its randomness from explicit generators; the global seeds only make any
    third-party randomness (e.g. default initialisers) repeatable as well.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (global seeding is the point here)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def git_sha(path: Path | None = None) -> str | None:
    """The git commit of the source tree revcurse runs from, if it is a checkout."""
    root = path or Path(revcurse.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """What produced a run: versions, machine and source commit (written to env.json)."""
    return {
        "revcurse": revcurse.__version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def write_provenance(
    out: Path, config_yaml: str, command: str | None, announce: bool = True
) -> None:
    """``config.yaml``, ``command.txt`` and ``env.json``: what every run folder starts with. A
    command from the command line also says on stderr where it writes (``announce``; the runs
    inside an experiment do not), first thing once the folder is claimed, so a refusal before
    that stays one line."""
    files.write_text(out / "config.yaml", config_yaml)
    files.write_text(out / "command.txt", (command or "(library call)") + "\n")
    files.write_json(out / "env.json", environment())
    if announce and command is not None and command != "(library call)":
        print(f"writing to {out}", file=sys.stderr, flush=True)
