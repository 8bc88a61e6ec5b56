"""Run and experiment directories: claiming an output directory (never overwriting one that is not
empty without ``--force``; resuming only what is provably the same experiment) and writing its
provenance. Every experiment (toy, sweeps, Person–Description, fine-tuning) starts here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.config import dump_yaml, load_yaml, to_dict
from revcurse.errors import RevcurseError
from revcurse.repro import write_provenance
from revcurse.training import holds_run

EXECUTION = ("workers", "backend")
"""Experiment fields that say how the runs execute, not what they compute: an experiment may
resume with others (two workers where the first sitting had one, say)."""


def settings(cfg: Any) -> dict[str, Any]:
    """What an experiment's config computes: its fields as a dict but for :data:`EXECUTION`."""
    return {k: v for k, v in to_dict(cfg).items() if k not in EXECUTION}


def same_settings(a: Any, b: Any) -> bool:
    """Whether two configs of one experiment compute the same thing (compared as configs, not
    text: fields added since one was written take their defaults)."""
    return settings(a) == settings(b)


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse to write into a non-empty directory unless ``force`` (nothing is overwritten).
    Creates nothing: the first write (or the run's lock) makes the folder, so a run refused
    before it wrote anything leaves no empty folder behind."""
    if out.exists() and not out.is_dir():
        raise RevcurseError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RevcurseError(f"{out}: directory is not empty; choose another --out or pass --force")


def start_experiment(
    out: str | Path, cfg: Any, command: str, force: bool, resume: bool = False
) -> Path:
    """Claim the output directory (refusing a non-empty one unless ``force``; with ``resume``, it
    must hold this experiment with exactly this config), clear temporaries a killed writer left,
    and write the resolved config, command and environment."""
    out = Path(out)
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise RevcurseError(f"{out}: nothing to resume (no config.yaml); run without --resume")
        if not same_settings(load_yaml(type(cfg), saved), cfg):
            raise RevcurseError(
                f"{out}: holds this experiment with other settings (config.yaml); resume with the "
                "same options, or choose another --out"
            )
    else:
        prepare_out_dir(out, force)
    # only in a folder provably holding this experiment (never in one that --force merely lets
    # us write into): clear what a killed writer left
    if resume or holds_run(out, cfg):
        files.remove_temporaries(out)
    write_provenance(out, dump_yaml(cfg), command)
    return out
