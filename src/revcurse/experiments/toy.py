"""``revcurse reproduce toy``: the central toy result of arXiv 2602.02133.

Train an MDM (bidirectional encoder, masked diffusion) and an ARM (causal decoder, next token) with
the same architecture on forward statements ``a_i REL B_i`` only, for several seeds, and compare
their forward and reverse accuracy. Expected: both learn the forward direction; the MDM also answers
the reverse query, while the ARM stays at chance.

Output directory::

    config.yaml  command.txt  env.json       the experiment's resolved config and provenance
    models/<family>-seed<k>/                 one run directory per trained model (toy_run.py)
    summary.json                             one row per model, per-family aggregates and the paired
                                             MDM-vs-ARM comparison per direction (no timings, so
                                             reruns compare equal); timings.json: wall times
    index.sqlite                             the run index (``revcurse runs list``)
    figures/accuracy.png, figures/training.png
    report.html, report.md                   self-contained (figures embedded, no network)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.config import ToyExperimentConfig, apply_overrides
from revcurse.experiments.executor import deterministic, timings, train_families
from revcurse.experiments.rundir import start_experiment
from revcurse.files import model_dir
from revcurse.stats import aggregate, paired_comparison

QUICK_OVERRIDES = ("train.steps=1500",)
"""``--quick``: half the optimisation budget (same task and model); enough to see the effect."""


def quick(cfg: ToyExperimentConfig) -> ToyExperimentConfig:
    """The ``--quick`` variant of an experiment config."""
    return apply_overrides(cfg, list(QUICK_OVERRIDES))


def run_toy(
    cfg: ToyExperimentConfig,
    out: str | Path,
    *,
    command: str = "(library call)",
    progress: bool = True,
    force: bool = False,
    resume: bool = False,
    log_with: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train every (family, seed) model, then write summary, figures and report into ``out``
    (``resume``: continue an interrupted run of it there; ``log_with``: trackers every model
    mirrors its metrics to)."""
    from revcurse.report.toy import write_report  # report depends on matplotlib; keep it late

    out = start_experiment(out, cfg, command, force, resume)

    start = time.perf_counter()
    summaries = train_families(out, cfg, "toy", command, progress, log_with=log_with)
    rows = [deterministic(s) for s in summaries]
    summary = {
        "experiment": "toy",
        "rows": rows,
        "aggregate": {
            family: aggregate([r for r in rows if r["family"] == family]) for family in cfg.families
        },
        "chance": {"forward": rows[0]["forward_chance"], "reverse": rows[0]["reverse_chance"]},
        "comparison": compare_families(out, cfg),
    }
    files.write_json(out / "summary.json", summary)
    files.write_json(
        out / "timings.json",
        {
            "train_wall_seconds": time.perf_counter() - start,
            "workers": min(cfg.workers, len(summaries)),
            "runs": {
                f"{r['family']}-seed{r['seed']}": timings(s)
                for r, s in zip(rows, summaries, strict=True)
            },
        },
    )
    write_report(out, cfg, summary)
    return summary


def compare_families(out: Path, cfg: ToyExperimentConfig) -> dict[str, Any]:
    """The paired MDM-vs-ARM test per direction both families are asked (forward, reverse): the
    per-query correctness of the two models of each seed, paired by (seed, fact)."""
    if not {"mdm", "arm"} <= set(cfg.families):
        return {}

    def correct(family: str, direction: str) -> list[list[bool]]:
        return [
            files.read_json(model_dir(out, family, seed) / "predictions.json")["correct"][direction]
            for seed in cfg.seeds
        ]

    return {
        f"{direction}_accuracy": paired_comparison(
            correct("mdm", direction), correct("arm", direction)
        )
        for direction in ("forward", "reverse")
    }
