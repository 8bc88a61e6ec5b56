"""``revcurse reproduce toy``: the central toy result of arXiv 2602.02133.

Train an MDM (bidirectional encoder, masked diffusion) and an ARM (causal decoder, next token) with
the same architecture on forward statements ``a_i REL B_i`` only, for several seeds, and compare
their forward and reverse accuracy. Expected: both learn the forward direction; the MDM also answers
the reverse query, while the ARM stays at chance.

Output directory::

    config.yaml  command.txt  env.json       the experiment's resolved config and provenance
    models/<family>-seed<k>/                 one run directory per trained model (training.py)
    summary.json                             one row per model + per-family aggregates
    figures/accuracy.png, figures/training.png
    report.html, report.md                   self-contained (figures embedded, no network)
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from revcurse import files
from revcurse.config import RunConfig, ToyExperimentConfig, apply_overrides, dump_yaml
from revcurse.errors import RevcurseError
from revcurse.experiments.stats import aggregate
from revcurse.repro import environment

QUICK_OVERRIDES = ("train.steps=1500",)
"""``--quick``: half the optimisation budget (same task and model); enough to see the effect."""


def quick(cfg: ToyExperimentConfig) -> ToyExperimentConfig:
    """The ``--quick`` variant of an experiment config."""
    return apply_overrides(cfg, list(QUICK_OVERRIDES))


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse to write into a non-empty directory unless ``force`` (nothing is overwritten)."""
    if out.exists() and not out.is_dir():
        raise RevcurseError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RevcurseError(f"{out}: directory is not empty; choose another --out or pass --force")
    out.mkdir(parents=True, exist_ok=True)


def _train_one(cfg: RunConfig, run_dir: str, command: str, progress: bool) -> dict[str, Any]:
    # Imported here so spawned workers pay for torch only once, at their first job.
    from revcurse.training import train

    return train(cfg, run_dir, progress=progress, command=command)


def run_toy(
    cfg: ToyExperimentConfig,
    out: str | Path,
    *,
    command: str = "(library call)",
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Train every (family, seed) model, then write summary, figures and report into ``out``."""
    from revcurse.report.toy import write_report  # report depends on matplotlib; keep it late

    out = Path(out)
    prepare_out_dir(out, force)
    files.write_text(out / "config.yaml", dump_yaml(cfg))
    files.write_text(out / "command.txt", command + "\n")
    files.write_json(out / "env.json", environment())

    jobs = {
        (family, seed): cfg.run_config(family, seed)
        for family in cfg.families
        for seed in cfg.seeds
    }
    start = time.perf_counter()
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    bar = tqdm(total=len(jobs), desc="toy models", unit="model", disable=not progress)
    workers = min(cfg.workers, len(jobs))
    if workers == 1:
        for (family, seed), run_cfg in jobs.items():
            run_dir = out / "models" / f"{family}-seed{seed}"
            rows[family, seed] = _train_one(run_cfg, str(run_dir), command, progress)
            bar.update()
    else:
        # spawn (not fork): torch's thread pools do not survive a fork safely.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(
                    _train_one, run_cfg, str(out / "models" / f"{f}-seed{s}"), command, False
                ): (f, s)
                for (f, s), run_cfg in jobs.items()
            }
            for future in as_completed(futures):
                key = futures[future]
                rows[key] = future.result()
                bar.update()
                bar.set_postfix_str(
                    f"{key[0]} seed {key[1]}: fwd {rows[key]['forward_accuracy']:.2f} "
                    f"rev {rows[key]['reverse_accuracy']:.2f}"
                )
    bar.close()

    ordered = [rows[key] for key in jobs]  # families, then seeds, as configured
    summary = {
        "experiment": "toy",
        "rows": ordered,
        "aggregate": {
            family: aggregate([r for r in ordered if r["family"] == family])
            for family in cfg.families
        },
        "chance": {
            "forward": ordered[0]["forward_chance"],
            "reverse": ordered[0]["reverse_chance"],
        },
        "train_wall_seconds": time.perf_counter() - start,
        "workers": workers,
    }
    files.write_json(out / "summary.json", summary)
    write_report(out, cfg, summary)
    return summary
