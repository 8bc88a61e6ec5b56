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
from revcurse.experiments.sweep import cells_of, contrasts, per_run_records, sweep_results
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
    mdm = [j for j in jobs if outcomes[j.run_id].status == "done" and not j.config.model.causal]
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
    write_report(out, summary)
    return summary


CELL_COLUMNS = ["cell", "reading", "forward (all seeds)", "mirror (all seeds)",
                "reverse (all seeds)", "fitted seeds", "reverse (fitted seeds)", "label"]  # fmt: skip
TEST_COLUMNS = ["contrast", "where", "reading", "difference", "95% interval", "decision", "fit"]


def _varying(summary: dict[str, Any]) -> list[str]:
    """The label keys that tell the summary's cells apart."""
    cells = summary["cells"]
    return [k for k in cells[0]["labels"] if len({repr(c["labels"][k]) for c in cells}) > 1]


def cell_name(summary: dict[str, Any], labels: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={labels[k]}" for k in _varying(summary)) or "the cell"


def cell_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of :data:`CELL_COLUMNS`: per cell and reading, the accuracies over all seeds, the
    fitted seeds and the reverse over them (the report's and the published table's)."""

    def mean(agg: dict[str, Any], key: str) -> str:
        return f"{agg[key]['mean']:.2f}" if key in agg else "-"

    rows = []
    for cell in summary["cells"]:
        for reading in summary["readings"]:
            r = cell["readings"][reading]
            fit, seeds = r["fit"], r["all_seeds"]
            reverse = f"{fit['reverse']['mean']:.2f}" if "reverse" in fit else "-"
            rows.append([cell_name(summary, cell["labels"]), reading,
                         *(mean(seeds, f"{d}_accuracy") for d in ("forward", "mirror", "reverse")),
                         f"{fit['n_fitted']}/{fit['n']}", reverse, fit["label"]])  # fmt: skip
    return rows


def test_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of :data:`TEST_COLUMNS`: each of the sweep's paired tests under each reading."""
    readings = summary["readings"]
    rows = []
    for i, c in enumerate(summary["contrasts"][readings[0]]):
        where = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in c["cell"].items())
        for reading in readings:
            t = summary["contrasts"][reading][i]
            lo, hi = t["test"]["ci"]
            rows.append([f"{c['key'].split('.')[-1]}: {c['value']} - {c['baseline']}", where,
                         reading, f"{t['test']['effect']:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]",
                         t["decision"], f"{t['fit']['value']} / {t['fit']['baseline']}"])  # fmt: skip
    return rows


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """``report.md``: :func:`cell_rows`, a figure of them, :func:`test_rows`."""
    from revcurse.report.render import Figure, Heading, Para, Table, to_markdown

    names = [cell_name(summary, c["labels"]) for c in summary["cells"]]
    figure = readings_figure(summary, names, out / "figures" / "readings.png")
    blocks = [
        Para(
            f"The MDM runs of {summary['sweep']}, each final checkpoint read four ways: "
            "sampler (the evaluation's generation, one token per step), one-step (the whole "
            "answer filled at once), rank (the right entity first among its side's by the "
            "exact likelihood bound) and one-step-rank (the same by the answer read with all "
            "of it masked, the state whole-entity masking trains on). Each reading applies the "
            "fit-first rule by itself (forward and mirror >= 0.99) and reads the reverse over its "
            "own fitted seeds. Recomputed sampler answers that differ from the runs' records: "
            f"{summary['sampler_differs']}."
        ),
        Table(CELL_COLUMNS, cell_rows(summary)),
        Figure(
            figure,
            "Reverse accuracy over each reading's fitted seeds, per cell; a cross where the "
            "reading fitted no seed (its reverse is not read), a tick where it fitted and "
            "reverses none.",
        ),
        Heading("The sweep's paired tests, per reading"),
        Para(
            "Reverse difference paired by seed and fact, with each cell's fit label by the "
            "same reading (value / baseline)."
        ),
        Table(TEST_COLUMNS, test_rows(summary)),
    ]
    files.write_text(out / "report.md", to_markdown("Four readings of the MDM checkpoints",
                                                    blocks, out))  # fmt: skip


def readings_figure(summary: dict[str, Any], names: list[str], path: Path) -> Path:
    """Grouped bars: per cell (rows of the figure, top to bottom), each reading's reverse
    accuracy over its own fitted seeds, a cross where it fitted none and a tick where it
    fitted and answered (almost) no reverse query."""
    import numpy as np

    from revcurse.report.figures import plt, save

    readings = summary["readings"]
    cells = summary["cells"]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.55 * len(cells)))
    height = 0.8 / len(readings)
    y = np.arange(len(cells))[::-1].astype(float)  # the first cell at the top
    for k, reading in enumerate(readings):
        at = y + 0.4 - height * (k + 0.5)
        values = [c["readings"][reading]["fit"].get("reverse", {}).get("mean") for c in cells]
        color = f"C{k}"
        ax.barh([a for a, v in zip(at, values, strict=True) if v is not None],
                [v for v in values if v is not None], height=height, color=color,
                label=reading)  # fmt: skip
        unfitted = [a for a, v in zip(at, values, strict=True) if v is None]
        ax.plot([0.01] * len(unfitted), unfitted, "x", color=color, markersize=5)
        zero = [a for a, v in zip(at, values, strict=True) if v is not None and v < 0.005]
        ax.plot([0.004] * len(zero), zero, "|", color=color, markersize=7)  # fitted, none right
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("reverse accuracy, fitted seeds (x: no seed fitted by this reading; |: 0)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.4 / len(cells)),
              ncol=len(readings), frameon=False)  # fmt: skip
    fig.tight_layout()
    return save(fig, path)
