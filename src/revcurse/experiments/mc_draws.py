"""How many Monte-Carlo draws the MDM's likelihood ranking needs (#28, section 5).

Evaluation ranks an MDM's multi-token candidate answers by the Monte-Carlo likelihood bound of
:func:`~revcurse.decoding.mdm_answer_logprob` (LLaDA Eq. 6, the low-variance form) with
``eval.n_mc`` draws: 8 in the toy, 16 in the fine-tune recipes, where LLaDA, Dream and dllm use
128. Too few draws add noise to every score, and a noisy score can move the right answer off
first place: the rank-based reverse accuracy falls, and a paired test between two cells can
change its decision.

This module re-scores the final checkpoints of a finished toy sweep, every MDM run, with every
scorer side by side:

* ``mc-N``: the bound with N draws (a generator seeded 0 per run and scorer, fresh draws, not the
  evaluation's own: the published 8-draw numbers came from draws after generation);
* ``exact``: the bound's expectation, every masked set enumerated
  (:func:`~revcurse.decoding.mdm_exact_bound`): what the draws estimate, without their noise, and
  affordable for the toy's entities of at most four tokens;
* ``chain``: the left-to-right chain probability (:func:`~revcurse.decoding.mdm_chain_logprob`),
  another quantity, a normalised distribution over the answers.

For each scorer it reports the reverse candidate accuracy of every cell (mean over seeds) and
re-runs the sweep's paired tests (:func:`~revcurse.experiments.sweep.contrasts`) on rank
correctness, so the question "where do decisions stop changing" is read against the exact bound.
Per-run scores are written as they finish (``runs/<run_id>.json``) and a rerun reuses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from revcurse import files
from revcurse.decoding import mdm_answer_logprob, mdm_chain_logprob, mdm_exact_bound
from revcurse.errors import RevcurseError
from revcurse.evaluation import per_candidate, toy_queries
from revcurse.experiments.executor import Job
from revcurse.experiments.sweep import (
    cells_of,
    contrasts,
    finished_mdm_runs,
    per_run_records,
    sweep_results,
)
from revcurse.metrics import likelihood_rank
from revcurse.repro import use_threads, write_provenance
from revcurse.stats import aggregate

DRAWS = (8, 16, 32, 128)
"""The draw counts compared by default."""


def scorer_names(draws: Sequence[int]) -> list[str]:
    return [f"mc-{n}" for n in draws] + ["exact", "chain"]


@torch.no_grad()
def score_run(run_dir: Path, draws: Sequence[int]) -> dict[str, Any]:
    """Every scorer's reverse ranking of one MDM run's final checkpoint: per query whether the
    right entity ranks first (``correct``) and the candidate accuracy (``accuracy``)."""
    from revcurse.data.toy import build_toy
    from revcurse.experiments.toy_run import load_checkpoint

    model, cfg, vocab, _ = load_checkpoint(run_dir / "checkpoints" / "final.safetensors")
    model.eval()
    use_threads(cfg.train.threads)
    queries = toy_queries(build_toy(cfg.data), vocab, "reverse")
    mask = vocab.mask_id

    def mc(n: int):
        generator = torch.Generator().manual_seed(0)
        return lambda ps, cands, ss: mdm_answer_logprob(model, ps, cands, mask_id=mask,
                                                        n_samples=n, suffix=ss,
                                                        generator=generator)  # fmt: skip

    scorers = {f"mc-{n}": mc(n) for n in draws}
    scorers["exact"] = lambda ps, cands, ss: mdm_exact_bound(model, ps, cands, mask_id=mask,
                                                             suffix=ss)  # fmt: skip
    scorers["chain"] = lambda ps, cands, ss: mdm_chain_logprob(model, ps, cands, mask_id=mask,
                                                               suffix=ss)  # fmt: skip
    out: dict[str, Any] = {"correct": {}, "accuracy": {}}
    one_token = queries.single_token  # every draw masks the one token: all scorers are one
    for name, score in scorers.items():
        if one_token and out["correct"]:
            right = next(iter(out["correct"].values()))
        else:
            right = (likelihood_rank(per_candidate(queries, score)) == 1).tolist()
        out["correct"][name] = right
        out["accuracy"][name] = sum(right) / len(right)
    return out


def measure(
    sweep: Path, out: Path, draws: Sequence[int] = DRAWS, *, command: str = "(library call)",
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Score every finished MDM run of ``sweep`` with every scorer (reusing the per-run files a
    previous call left in ``out``), then write ``summary.json`` and ``report.md`` into ``out``."""
    cfg, jobs, outcomes = sweep_results(sweep)
    mdm = finished_mdm_runs(jobs, outcomes)
    if not mdm:
        raise RevcurseError(f"{sweep}: no finished MDM run to score")
    names = scorer_names(draws)
    write_provenance(out, f"draws: {list(draws)}\nsweep: {sweep}\n", command)
    scores = per_run_records(out, mdm, lambda run_dir: score_run(run_dir, draws),
                             desc="runs scored", progress=progress,
                             reusable=lambda saved: sorted(saved["correct"]) == sorted(names))  # fmt: skip

    cells = cells_of(jobs, mdm)
    for cell in cells:
        cell["accuracy"] = {
            name: aggregate([{"a": scores[r]["accuracy"][name]} for r in cell["runs"]], ["a"])["a"]
            for name in names
        }  # fmt: skip
    tests = {}
    for name in names:

        def correct(cell: dict[int, Job], seeds: list[int], name: str = name) -> list[list[bool]]:
            return [scores[cell[s].run_id]["correct"][name] for s in seeds]

        tests[name] = contrasts(cfg, mdm, outcomes, correct=correct)
    summary = {"sweep": str(sweep), "draws": list(draws), "scorers": names,
               "cells": cells, "contrasts": tests}  # fmt: skip
    files.write_json(out / "summary.json", summary)
    write_report(out, summary)
    return summary


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """``report.md``: each cell's reverse candidate accuracy and each paired test's effect and
    decision, one column per scorer."""
    from revcurse.report.render import Heading, Para, Table, to_markdown

    names = summary["scorers"]

    def cell_name(labels: dict[str, Any]) -> str:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in labels.items())

    accuracy = Table(["cell", *names], [
        [cell_name(c["labels"]), *(f"{c['accuracy'][n]['mean']:.3f}" for n in names)]
        for c in summary["cells"]
    ])  # fmt: skip
    first = summary["contrasts"][names[0]]
    rows = []
    for i, c in enumerate(first):
        decided = [summary["contrasts"][n][i] for n in names]
        rows.append([f"{c['slice']}: {c['value']} - {c['baseline']}", cell_name(c["cell"]),
                     *(f"{d['test']['effect']:+.3f} ({d['decision']})" for d in decided)])  # fmt: skip
    blocks = [
        Para(
            f"Reverse candidate accuracy (the right entity ranked first among every entity of its "
            f"side) of the MDM runs of {summary['sweep']}, re-scored with each scorer: the "
            "Monte-Carlo bound with N draws (mc-N), its exact expectation (exact) and the "
            "left-to-right chain (chain). Mean over seeds."
        ),  # fmt: skip
        accuracy,
        Heading("The sweep's paired tests on rank correctness"),
        Para(
            "Effect (value minus baseline, paired by seed and fact) and decision per scorer; "
            "a decision that changes with the draws and settles at the exact bound's says how "
            "many draws are enough."
        ),  # fmt: skip
        Table(["contrast", "where", *names], rows),
    ]
    files.write_text(out / "report.md", to_markdown("MDM likelihood: how many draws", blocks, out))
