"""A finished toy sweep's MDM checkpoints read four ways: the control of whole-entity masking
(#28, section 2).

The fit-first rule reads a model by generation: LLaDA's sampler fills the masked answer one
token per step (low-confidence remasking, the toy evaluation's setting), and the answer must
match. A model trained with whole-entity masking (``train.mask_unit=entity``) only ever saw an
entity wholly masked or wholly given, yet after the sampler's first step it reads an entity
partly revealed: a state it was never trained on. Its failure to generate could then be the
sampler's, not a failure to store the facts. This module re-reads the final checkpoint of every
finished MDM run of a sweep, each direction (forward, mirror, reverse, and the groups of
:class:`~revcurse.evaluation.ToyEvaluator`), four ways:

* ``sampler``: the evaluation's own generation, recomputed from the checkpoint (the number of
  queries where it differs from the run's recorded answers is kept: zero unless the checkpoint
  is not the weights the run evaluated);
* ``one-step``: the whole answer filled in one step (``steps=1``): each masked position's
  argmax with the whole answer masked, the only state whole-entity masking trains on;
* ``rank``: the right entity ranked first among every entity of its side by the exact
  likelihood bound (:func:`~revcurse.decoding.mdm_exact_bound`, every masked set enumerated, no
  Monte-Carlo noise; the bound averages over partly masked answers too);
* ``one-step-rank``: the same ranking by the answer read in one step
  (:func:`~revcurse.decoding.mdm_one_step_logprob`: every answer token masked, the sum of each
  position's log-probability), the likelihood of the state whole-entity masking trains on. Where
  ``one-step`` is right so is this (the one-step answer maximises it), not the other way round.

Each reading applies the fit-first rule by itself (:func:`~revcurse.stats.fit_summary`: forward
and mirror at least 0.99 read that way), reads the reverse over its own fitted seeds, and reruns
the sweep's paired tests (:func:`~revcurse.experiments.sweep.contrasts`) on its own per-fact
correctness with its own fit labels. Nothing is written into the sweep's folder; per-run
records go to ``out/runs/<run_id>.json`` as they finish and a rerun reuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from revcurse import files
from revcurse.config import DecodeConfig
from revcurse.decoding import mdm_exact_bound, mdm_one_step_logprob
from revcurse.errors import RevcurseError
from revcurse.evaluation import ToyEvaluator, generate, per_candidate
from revcurse.experiments.sweep import (
    cells_of,
    contrasts,
    finished_mdm_runs,
    per_run_records,
    sweep_results,
)
from revcurse.metrics import likelihood_rank
from revcurse.repro import use_threads, write_provenance
from revcurse.stats import aggregate, fit_summary

READINGS = ("sampler", "one-step", "rank", "one-step-rank")
"""The readings, in report order."""


@torch.no_grad()
def read_run(run_dir: Path) -> dict[str, Any]:
    """Every reading of one MDM run's final checkpoint: per metric key (``forward``, ``mirror``,
    ``reverse``, ``reverse_both``, ...) whether each query was right (``correct``), the
    accuracy (``accuracy``) and the generated answers (``answers``, as the runs record them),
    and ``sampler_differs``: queries where the recomputed sampler's
    answer is not the run's recorded one (``predictions.json``)."""
    from revcurse.experiments.toy_run import build_dataset, load_checkpoint

    model, cfg, vocab, _ = load_checkpoint(run_dir / "checkpoints" / "final.safetensors")
    model.eval()
    use_threads(cfg.train.threads)
    dataset, _ = build_dataset(cfg)
    recorded = files.read_json(run_dir / "predictions.json")["answers"]
    mask, pad = vocab.mask_id, vocab.pad_id
    out: dict[str, Any] = {"correct": {r: {} for r in READINGS},
                           "accuracy": {r: {} for r in READINGS},
                           "answers": {"sampler": {}, "one-step": {}}, "sampler_differs": 0}  # fmt: skip
    for key, _, queries, _ in ToyEvaluator(dataset, vocab).sets(model):
        if queries is None:
            continue
        length = len(queries.candidates[0][0])
        right: dict[str, list[bool]] = {}
        for reading, steps in (("sampler", None), ("one-step", 1)):
            answers = generate(model, queries, causal=False, mask_id=mask, pad_id=pad,
                               settings=DecodeConfig(gen_length=length, steps=steps))  # fmt: skip
            right[reading] = [a == r for a, r in zip(answers, queries.answers, strict=True)]
            shown = [" ".join(vocab.decode(a)) for a in answers]
            out["answers"][reading][key] = shown
            if reading == "sampler":
                out["sampler_differs"] += sum(a != b for a, b in zip(shown, recorded[key],
                                                                      strict=True))  # fmt: skip
        for reading, bound in (("rank", mdm_exact_bound), ("one-step-rank", mdm_one_step_logprob)):
            scores = per_candidate(queries, lambda ps, cands, ss, bound=bound: bound(
                model, ps, cands, mask_id=mask, suffix=ss))  # fmt: skip
            right[reading] = (likelihood_rank(scores) == 1).tolist()
        for reading, values in right.items():
            out["correct"][reading][key] = values
            out["accuracy"][reading][key] = sum(values) / len(values)
    return out


def measure(
    sweep: Path, out: Path, *, command: str = "(library call)", progress: bool = True
) -> dict[str, Any]:
    """Read every finished MDM run of ``sweep`` every way of :data:`READINGS` (reusing the per-run files a previous
    call left in ``out``); write ``summary.json`` and ``report.md`` into ``out``."""
    cfg, jobs, outcomes = sweep_results(sweep)
    mdm = finished_mdm_runs(jobs, outcomes)
    if not mdm:
        raise RevcurseError(f"{sweep}: no finished MDM run to read")
    write_provenance(out, f"readings: {list(READINGS)}\nsweep: {sweep}\n", command)
    records = per_run_records(out, mdm, read_run, desc="runs read", progress=progress)

    def rows(run_ids: list[str], reading: str) -> list[dict[str, float]]:
        return [{f"{k}_accuracy": v for k, v in records[r]["accuracy"][reading].items()}
                for r in run_ids]  # fmt: skip

    cells = cells_of(jobs, mdm)
    for cell in cells:
        cell["readings"] = {}
        for reading in READINGS:
            per_seed = rows(cell["runs"], reading)
            keys = [k for k in per_seed[0] if all(k in r for r in per_seed)]
            cell["readings"][reading] = {"all_seeds": aggregate(per_seed, keys),
                                         "fit": fit_summary(per_seed)}  # fmt: skip
    tests = {}
    for reading in READINGS:

        def correct(cell, seeds, reading=reading) -> list[list[bool]]:
            return [records[cell[s].run_id]["correct"][reading]["reverse"] for s in seeds]

        def fit(cell, seeds, reading=reading) -> str:
            return fit_summary(rows([cell[s].run_id for s in seeds], reading))["label"]

        tests[reading] = contrasts(cfg, mdm, outcomes, correct=correct, fit=fit)
    summary = {
        "sweep": str(sweep), "readings": list(READINGS), "cells": cells, "contrasts": tests,
        "sampler_differs": sum(records[j.run_id]["sampler_differs"] for j in mdm),
    }  # fmt: skip
    files.write_json(out / "summary.json", summary)
    from revcurse.report.readings import write_report  # matplotlib only when reporting

    write_report(out, summary)
    return summary
