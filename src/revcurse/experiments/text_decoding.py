"""A finished from-scratch text experiment's MDMs read by their sampler, in one step and by rank:
whole-entity masking's decoding control on text (#28, section 2).

The toy's control (:mod:`revcurse.experiments.decoding_control`) showed that a model trained with
whole-entity masking (``train.mask_unit=entity``) fails the fit-first rule by LLaDA's sampler
(one token per step, so it reads an entity partly revealed, a state it never trained on) while
it fits when the whole answer is filled in one step. The same question on Parent–Child or
Person–Description: every finished run of every model that is not autoregressive (the MDM and
its masked variants) is evaluated again with ``eval.steps=1`` (each split's whole generation
region filled at once, every other setting the run's own), and four readings of each run are
compared, each applying the fit-first rule by itself (its forward split and, where the model
trains on it, its mirror split at :data:`~revcurse.experiments.from_scratch.FIT` or above) and
running each variant's paired test against the MDM over its own fitted seeds:

* ``sampler``: the generation the run recorded (prefix match, the experiments' headline);
* ``one-step``: the generation with the whole answer filled in one step (prefix match);
* ``rank``: the right answer first among the candidates by the Monte-Carlo likelihood bound;
* ``chain-rank``: first by the left-to-right chain likelihood.

The rank readings are the runs' own records; re-evaluating reproduces them exactly (decoding at
temperature 0 draws nothing, so the bound's masks are the runs' draws), which is checked. The
one-step records are written under ``out/models/<model>-seed<s>/generations/`` in the runs'
own layout, so the experiment's paired tests read them unchanged; a rerun reuses them.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.config import PersonDescriptionConfig, load_yaml
from revcurse.errors import RevcurseError
from revcurse.evaluation import save_generations
from revcurse.experiments import from_scratch
from revcurse.experiments.from_scratch import (
    REPRODUCED,
    evaluate_run,
    fit_table,
    load_run_model,
    paired_by,
    task_for,
    variant_splits,
)
from revcurse.files import model_dir
from revcurse.repro import write_provenance
from revcurse.stats import aggregate

READINGS = {
    "sampler": ("runs", "prefix"),
    "one-step": ("control", "prefix"),
    "rank": ("runs", "likelihood_top1"),
    "chain-rank": ("runs", "chain_top1"),
}
"""Each reading: whose records it reads (the runs' or this control's one-step ones) and which
per-query outcome (:data:`~revcurse.experiments.from_scratch.OUTCOMES`)."""


def is_experiment(path: Path) -> bool:
    """Whether ``path`` is a from-scratch text experiment's folder (its config and ``models/``)."""
    if not (path / "models").is_dir() or not (path / "config.yaml").is_file():
        return False
    try:
        load_yaml(PersonDescriptionConfig, path / "config.yaml")
    except RevcurseError:
        return False
    return True


def read_models(cfg: PersonDescriptionConfig) -> list[str]:
    """The models the control reads: every one that is not autoregressive (the MDM first)."""
    return [n for n in cfg.model_names() if not cfg.run_config(n, cfg.seeds[0]).model.causal]


def one_step_run(cfg: PersonDescriptionConfig, name: str, seed: int, experiment: Path,
                 out: Path) -> dict[str, float]:  # fmt: skip
    """Evaluate one finished run again with the whole answer filled in one step; its records go
    to ``out``'s copy of the run's folder, its split metrics are returned (and kept there as
    ``summary.json`` so a rerun reuses them)."""
    done = model_dir(out, name, seed) / "summary.json"
    if done.is_file():
        return files.read_json(done)
    run = cfg.run_config(name, seed)
    model, prepared = load_run_model(run, model_dir(experiment, name, seed))
    one_step = dataclasses.replace(run, eval=dataclasses.replace(run.eval, steps=1))
    metrics: dict[str, Any] = {}
    for split, (m, records) in evaluate_run(model, one_step, prepared):
        saved = files.read_jsonl(model_dir(experiment, name, seed) / "generations" /
                                 f"{split}.jsonl")  # fmt: skip
        same = [k for k in REPRODUCED if k != "generation"]
        if [{k: r[k] for k in same} for r in saved] != [{k: r[k] for k in same} for r in records]:
            raise RevcurseError(f"{model_dir(experiment, name, seed)}: split {split}'s "
                                "likelihoods do not reproduce its saved records")  # fmt: skip
        save_generations(model_dir(out, name, seed) / "generations" / f"{split}.jsonl", records)
        metrics[split] = m
    files.write_json(done, metrics)
    return metrics


def measure(experiment: Path, out: Path, *, command: str = "(library call)",
            progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Read every finished run of the experiment's non-autoregressive models every way of
    :data:`READINGS`; write ``summary.json`` and ``report.md`` into ``out``."""
    from tqdm.auto import tqdm

    cfg = load_yaml(PersonDescriptionConfig, experiment / "config.yaml")
    names = read_models(cfg)
    if "mdm" not in names:
        raise RevcurseError(f"{experiment}: its experiment trains no MDM to read")
    runs = [(n, s) for n in names for s in cfg.seeds
            if (model_dir(experiment, n, s) / "summary.json").is_file()]  # fmt: skip
    if not runs:
        raise RevcurseError(f"{experiment}: no finished run of an MDM to read")
    provenance = f"readings: {list(READINGS)}\nexperiment: {experiment.resolve()}\n"
    held = out / "config.yaml"
    if held.is_file() and held.read_text() != provenance:  # resume only this very control
        raise RevcurseError(f"{out}: holds readings of another experiment; choose another --out")
    fresh = not out.exists()
    write_provenance(out, provenance, command)
    try:
        one_step = {run: one_step_run(cfg, *run, experiment, out)
                    for run in tqdm(runs, desc="runs read in one step", unit="run",
                                    disable=not progress)}  # fmt: skip
    except RevcurseError:
        if fresh:  # nothing half-written: a folder this call made holds only its own reads
            shutil.rmtree(out, ignore_errors=True)
        raise
    recorded = {run: files.read_json(model_dir(experiment, *run) / "summary.json")["splits"]
                for run in runs}  # fmt: skip
    rows: dict[str, list[dict[str, Any]]] = {}
    for reading, (source, metric) in READINGS.items():
        split_metrics = one_step if source == "control" else recorded
        rows[reading] = [
            {"family": name, "seed": seed,
             **{f"{k}.{metric}": m[metric] for k, m in split_metrics[name, seed].items()}}
            for name, seed in runs
        ]  # fmt: skip
    models: dict[str, Any] = {}
    tests: dict[str, Any] = {}
    task = task_for(cfg.run)
    for reading, (source, metric) in READINGS.items():
        fit = fit_table(cfg, rows[reading], metric, names)
        root = out if source == "control" else experiment
        for name in names:
            mine = [r for r in rows[reading] if r["family"] == name]
            keys = [k for k in mine[0] if k not in ("family", "seed")] if mine else []
            models.setdefault(name, {})[reading] = {
                "seeds": [r["seed"] for r in mine], "fitted_seeds": fit[name],
                "all_seeds": aggregate(mine, keys) if mine else {},
            }  # fmt: skip
        tests[reading] = {
            name: paired_by(root, fit, name, "mdm", variant_splits(cfg), metric)
            for name in names if name != "mdm"
        }  # fmt: skip
    summary = {"experiment": str(experiment), "task": task.name, "threshold": from_scratch.FIT,
               "readings": {k: {"records": s, "metric": m} for k, (s, m) in READINGS.items()},
               "splits": task.splits, "models": models, "tests": tests}  # fmt: skip
    files.write_json(out / "summary.json", summary)
    from revcurse.report.readings import write_text_report  # matplotlib only when reporting

    write_text_report(out, summary)
    return summary
