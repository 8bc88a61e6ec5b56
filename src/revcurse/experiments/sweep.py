"""Sweeps and the named experiments that answer the paper's open questions.

``run_sweep`` expands a :class:`~revcurse.config.SweepConfig` into runs, executes them
(:mod:`.executor`: parallel, resumable, failures recorded), and writes into the output folder::

    config.yaml command.txt env.json   the sweep and its provenance
    index.sqlite                       one row per run (``revcurse runs list|compare``)
    runs/<run-id>/                     one run directory per config hash
    summary.json                       rows (labels + deterministic metrics) and aggregates per
                                       group (mean, std, 95% bootstrap interval over seeds)
    timings.json                       wall-clock times (kept out of summary.json so that a resumed
                                       sweep's summary equals an uninterrupted one's)
    figures/  report.html  report.md

Named experiments (``revcurse reproduce NAME``) are sweep presets:

* ``pe-ablation``: rope / sinusoidal / learned / alibi / none, MDM and ARM;
* ``depth``: 1, 2, 4 layers x 1 or 4 heads;
* ``objective``: masked diffusion vs fixed-ratio MLM (15%, 50%) vs an encoder trained only on
  ``a REL [M]`` vs ARM vs ARM with reverse training: which ingredient gives reversal?
* ``distance``: fillers 0..32 between the entities, in slices (:func:`distance_slices`): the
  masking of fillers, heads, RoPE base, no positional encoding, filler types, an ARM control;
* ``bridge``: from the toy towards text (:func:`bridge_slices`): entities of 1-3 tokens (and of
  1, 2, 4 on two layers), relation paraphrases asked in seen and unseen wordings, more facts;
  MDM and ARM;
* ``entity-length``: length or shared tokens (:func:`entity_length_slices`): entities of 1, 2, 4
  tokens spelled from unique or shared pools, the pool varied at fixed length; an ARM control;
* ``objective-attention``: the objective x attention grid and masked-AR
  (:func:`objective_attention_slices`);
* ``entity-masking``: whole-entity masking against token masking on the multi-token cells of
  ``entity-length`` (:func:`entity_masking_slices`);
* ``weight-decay``: ARMs that reverse? (:func:`weight_decay_slices`) half the facts trained in
  both directions with an inverse relation, weight decay 0 .. 3, MDM and ARM, curves over
  training;
* ``scale``: number of pairs (26 .. 2000) x d_model, minibatches of 256.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from revcurse import files
from revcurse.config import (
    ProbeConfig,
    SliceConfig,
    SweepConfig,
    ToyDataConfig,
    TrainConfig,
    apply_overrides,
    dump_yaml,
    load_yaml,
)
from revcurse.errors import RevcurseError
from revcurse.evaluation import ANSWER_SOURCES
from revcurse.experiments.executor import (
    Job,
    Outcome,
    adopt_earlier_runs,
    check_reuse_source,
    copy_finished_runs,
    deterministic,
    execute,
    make_jobs,
    timings,
    wall_over_sittings,
)
from revcurse.experiments.rundir import settings
from revcurse.repro import write_provenance
from revcurse.stats import METRICS, aggregate, decision, fit_summary, paired_comparison
from revcurse.store import Store
from revcurse.tracking import eval_history
from revcurse.training import first_difference

PROBE_METRICS = (
    "probe.attention_pearson_mirror_mean",
    "probe.attention_pearson_mirror_final",
    "probe.attention_pearson_forward_mean",
    "probe.attention_pearson_forward_final",
    "probe.grad_cos_fwd_rev_mean",
    "probe.grad_cos_mirror_rev_mean",
    "probe.grad_cos_train_rev_mean",
)


@dataclass
class Named:
    """A named experiment: its sweep and how its report lays the results out."""

    sweep: SweepConfig
    x: str
    """The label on the x axis of the report's figures."""
    hue: str | None = None
    """A second swept label drawn as separate lines."""
    quick: list[str] = field(default_factory=lambda: ["seeds=[0]", "train.steps=1500"])
    """Overrides of ``--quick``."""
    question: str = ""
    curves: bool = False
    """Draw every cell's accuracies over training (from the runs' evaluations) in the report."""


CAUSAL = {"model.causal": [False, True]}
OBJECTIVES = {
    "masked-diffusion": ["model.causal=false", "train.objective=masked_diffusion"],
    "mlm-15%": ["model.causal=false", "train.objective=mlm", "train.mlm_ratio=0.15"],
    "mlm-50%": ["model.causal=false", "train.objective=mlm", "train.mlm_ratio=0.5"],
    "encoder-answer-only": ["model.causal=false", "train.objective=answer_only"],
    "arm": ["model.causal=true", "train.objective=next_token"],
    "arm-reverse-training": [
        "model.causal=true",
        "train.objective=next_token",
        "data.reverse_augment=true",
    ],
}


DISTANCES = [0, 1, 2, 4, 8, 32]
"""Filler tokens between the relation and the second entity (relative distance = fillers + 2)."""


def distance_slices() -> dict[str, SliceConfig]:
    """The distance experiment's slices: one question each, sharing cells where they meet (a
    run two slices hold trains once). MDMs unless named; 4 heads, RoPE base 1e4, one filler type
    unless varied. About an hour on 2 cores (195 runs, most of it the 32-filler runs)."""
    return {
        "masking": SliceConfig(
            grid={
                "data.n_filler": DISTANCES,
                "train.maskable": ["all", "entities", "no_fillers"],
            },  # fmt: skip
            compare="train.maskable",
            question="Does the MDM reverse at every distance, and does that depend on which "
            "positions may be masked (every token, only the entities, all but the fillers)?",
        ),
        "heads": SliceConfig(
            grid={
                "model.n_heads": [4, 1],
                "data.n_filler": [0, 2, 4, 8],
                "train.maskable": ["all", "entities"],
            },  # fmt: skip
            compare="model.n_heads",
            question="Does one head behave like four (fit first: the one-head model may not fit)?",
        ),
        "rope-base": SliceConfig(
            grid={
                "model.rope_base": [1e4, 1e2, 1e6],
                "data.n_filler": [2, 8],
                "train.maskable": ["entities"],
            },  # fmt: skip
            compare="model.rope_base",
            question="Does the RoPE base (how fast the coupling decorrelates with distance, by "
            "the closed form) change where reversal holds?",
        ),
        "no-position": SliceConfig(
            grid={
                "model.positional": ["rope", "none"],
                "data.n_filler": [2, 8],
                "train.maskable": ["entities"],
            },  # fmt: skip
            compare="model.positional",
            question="Does a model with no positional encoding reverse where RoPE does?",
        ),
        "filler-types": SliceConfig(
            grid={
                "data.filler_vocab": [1, 8],
                "data.n_filler": [4, 8],
                "train.maskable": ["all", "entities"],
            },  # fmt: skip
            compare="data.filler_vocab",
            question="Does a richer filler vocabulary (8 types drawn per fact instead of one) "
            "change the masking effect?",
        ),
        "arm": SliceConfig(
            grid={"model.causal": [True], "data.n_filler": [0, 4, 8]},
            question="Control: does the ARM ever reverse at any distance?",
        ),
    }


def bridge_slices() -> dict[str, SliceConfig]:
    """The bridge experiment's slices, from the toy towards text: MDM and ARM each (the sweep's
    grid), 4 heads, 6000 steps, one-token entities and one wording unless varied."""
    return {
        "entity-length": SliceConfig(
            grid={"data.entity_tokens": [1, 2, 3]},
            compare="data.entity_tokens",
            question="Does reversal survive entities of several tokens, spelled from shared "
            "token pools so that no token alone names an entity (fit first)?",
        ),
        # The MDM only, compiled: with its ARM control (15 more runs of 30000 steps) and eager
        # the bridge took about 94 minutes on 2 cores; the one-layer slices keep the ARM at every
        # length, and entity-length's `arm` slice is the two-layer ARM control (#30).
        "entity-length-deep": SliceConfig(
            grid={
                "data.entity_tokens": [1, 2, 4],
                "model.n_layers": [2],
                "train.steps": [30000],
                "model.causal": [False],
                "train.compile": [True],
            },  # fmt: skip
            compare="data.entity_tokens",
            question="The same question with entities of 1, 2 and 4 tokens on a model that can "
            "fit them all: two layers trained five times longer (one layer does not fit "
            "three-token entities in 6000 steps; fit first, then read the reverse). The MDM "
            "only: the one-layer slice is the ARM's control at every length.",
        ),
        "paraphrases": SliceConfig(
            grid={"data.n_templates": [4], "data.templates_per_fact": [4, 2]},
            compare="data.templates_per_fact",
            question="With four paraphrases of the relation, does reversal hold in a paraphrase "
            "the fact was trained in and in one it was never trained in (read with other facts "
            "only)? Each fact trained in all four, or in two.",
        ),
        "facts": SliceConfig(
            grid={"data.n_pairs": [100, 400]},
            question="Does reversal hold with four times as many facts? (Different facts, so "
            "no paired test.)",
        ),
    }


def entity_length_slices() -> dict[str, SliceConfig]:
    """Length or shared tokens (#28, section 1): in the bridge an entity of L tokens is spelled
    from a pool its side shares, and the pool shrinks as L grows (100 tokens at L=1, 15 at L=2, 4
    at L=4), so length and sharing change together. Each slice moves one of them; all cells are
    MDMs on the bridge's deep setting (two layers, 30000 steps, 4 heads), with the ARM as a
    control on the unshared cells."""
    return {
        "length-unique": SliceConfig(
            grid={"data.entity_tokens": [1, 2, 4], "data.entity_spelling": ["unique"]},
            compare="data.entity_tokens",
            question="Length without sharing: does MDM reversal fall with length when every "
            "entity has tokens no other entity uses?",
        ),
        "sharing": SliceConfig(
            grid={"data.entity_tokens": [2, 4], "data.entity_spelling": ["unique", "shared"]},
            compare="data.entity_spelling",
            question="Sharing at a fixed length: does spelling the entities from the bridge's "
            "shared pool (15 tokens at L=2, 4 at L=4) lower reversal against unique tokens?",
        ),
        "pool-4": SliceConfig(
            grid={"data.entity_tokens": [4], "data.entity_pool": [0, 15]},
            compare="data.entity_pool",
            question="Four-token entities from the two-token pool size (15 tokens) against the "
            "bridge's smallest pool (0: 4 tokens): does a larger pool restore reversal?",
        ),
        "pool-2": SliceConfig(
            grid={"data.entity_tokens": [2], "data.entity_pool": [0, 100]},
            compare="data.entity_pool",
            question="Two-token entities from a pool as large as the one-token side's (100) "
            "against the bridge's (0: 15 tokens): the pool varied at fixed length.",
        ),
        "arm": SliceConfig(
            grid={
                "model.causal": [True],
                "data.entity_tokens": [1, 2, 4],
                "data.entity_spelling": ["unique"],
            },  # fmt: skip
            question="Control: does the ARM reverse any of the unshared cells?",
        ),
    }


def entity_masking_slices() -> dict[str, SliceConfig]:
    """Whole-entity masking (#28, section 2; DiffER, arXiv 2601.07347): the multi-token cells of
    ``entity-length`` (two layers, 30000 steps, MDM) trained with each entity masked whole
    against token by token, paired by seed; one slice per spelling, so each reads its own
    question."""
    question = ("With {} spelling, does masking each entity whole (one draw per entity) restore "
                "the reversal that token-by-token masking loses at 2 and 4 tokens?")  # fmt: skip
    return {
        spelling: SliceConfig(
            grid={
                "data.entity_tokens": [2, 4],
                "data.entity_spelling": [spelling],
                "train.mask_unit": ["token", "entity"],
            },  # fmt: skip
            compare="train.mask_unit",
            question=question.format(spelling),
        )
        for spelling in ("unique", "shared")
    }


def objective_attention_slices() -> dict[str, SliceConfig]:
    """The objective x attention grid (#28, section 3), one variable per paired test: the toy's
    one-token facts (1 layer, 4 heads, 3000 steps); docs/experiments/objective-attention.md defines every cell."""
    return {
        "family": SliceConfig(
            grid={"model.causal": [False, True]},
            compare="model.causal",
            question="The reference: the masked diffusion model (bidirectional) against the "
            "next-token ARM (causal).",
        ),
        "masked-attention": SliceConfig(
            grid={"model.causal": [False], "model.attention": ["auto", "causal"]},
            compare="model.attention",
            question="Masked objective: does causal attention lose the reversal bidirectional "
            "attention gives?",
        ),
        "next-token-attention": SliceConfig(
            grid={
                "model.causal": [True],
                "train.objective": ["prefix_lm"],
                "model.attention": ["auto", "full"],
            },  # fmt: skip
            compare="model.attention",
            question="Next-token objective, each prefix read on its own: does reading it both "
            "ways (full) reverse where reading it left to right (auto: the ARM's loss) does not?",
        ),
        "masked-ar": SliceConfig(
            # auto is next_token for the ARM: the family slice's ARM, trained once
            grid={"model.causal": [True], "train.objective": ["auto", "masked_ar"]},
            compare="train.objective",
            question="Causal attention: does masking the inputs (masked-AR, Pan et al.) make "
            "the ARM (auto: next_token) reverse?",
        ),
    }


WEIGHT_DECAYS = [0.0, 0.1, 1.0, 3.0]
"""AdamW's decoupled weight decay in the weight-decay experiment (Kim et al.'s threshold is 1)."""


def weight_decay_slices() -> dict[str, SliceConfig]:
    """ARMs that reverse (#28, section 4): Kim et al. (arXiv 2509.21993) see GPT-NeoX models
    trained from scratch reverse once weight decay reaches 1, where the inverse relation is
    trained on other facts. Here half of the toy's facts are trained in both directions (the
    inverse relation its own token) and the reverse is asked of the other half; each family's
    slice compares weight decays against none (paired by seed)."""
    question = ("With the inverse relation trained on half of the facts, does weight decay {} "
                "make the {} answer the reverse of the other half (fit first: forward, and the "
                "inverse statements it was trained on)?")  # fmt: skip
    return {
        "arm": SliceConfig(
            grid={"model.causal": [True], "train.weight_decay": WEIGHT_DECAYS},
            compare="train.weight_decay",
            question=question.format(">= 1", "ARM"),
        ),
        "mdm": SliceConfig(
            grid={"model.causal": [False], "train.weight_decay": WEIGHT_DECAYS},
            compare="train.weight_decay",
            question=question.format("(any)", "MDM"),
        ),
    }


def named_experiments() -> dict[str, Named]:
    """The registry of ``revcurse reproduce NAME`` sweeps (fresh objects on every call)."""
    return {
        "pe-ablation": Named(
            SweepConfig(
                name="pe-ablation",
                grid={"model.positional": ["rope", "sinusoidal", "learned", "alibi", "none"]}
                | CAUSAL,
            ),
            x="model.positional",
            question="Does the MDM's reversal need RoPE, or any positional encoding at all?",
        ),
        "depth": Named(
            SweepConfig(
                name="depth", grid={"model.n_layers": [1, 2, 4], "model.n_heads": [1, 4]} | CAUSAL
            ),
            x="model.n_layers",
            hue="model.n_heads",
            question="Does the one-layer mechanism survive depth and more heads?",
        ),
        "objective": Named(
            SweepConfig(name="objective", grid={}, variants=OBJECTIVES),
            x="variant",
            question="Which ingredient gives reversal: bidirectional attention, any-order "
            "masking, the masking schedule, or reversed data?",
        ),
        "distance": Named(
            SweepConfig(
                name="distance",
                grid={"model.n_heads": [4]},
                slices=distance_slices(),
            ),
            x="data.n_filler",
            question="Where does the MDM's reversal hold as the entities move apart, and is what "
            "breaks it the distance, the masking of the filler tokens, the number of heads, the "
            "positional encoding or the filler vocabulary? (Each slice answers one of these.)",
        ),
        "bridge": Named(
            SweepConfig(
                name="bridge",
                grid={"model.causal": [False, True], "model.n_heads": [4]},
                slices=bridge_slices(),
                train=TrainConfig(steps=6000, eval_every=0, checkpoint_every=500),
                probe=ProbeConfig(
                    enabled=False
                ),  # as published (probe the checkpoints: revcurse probe)
            ),
            x="data.entity_tokens",
            quick=[
                "seeds=[0]",
                "train.steps=3000",
                # the deep slice sets its own steps; --quick shortens them too (its grid as
                # defined, the steps alone changed)
                "slices.entity-length-deep.grid="
                + json.dumps(bridge_slices()["entity-length-deep"].grid | {"train.steps": [3000]}),
            ],
            question="From the toy towards text: where does MDM reversal degrade as entities "
            "grow longer, the relation is paraphrased and the facts multiply, and does the ARM "
            "ever reverse?",
        ),
        "entity-length": Named(
            SweepConfig(
                name="entity-length",
                grid={"model.causal": [False], "model.n_heads": [4], "model.n_layers": [2]},
                slices=entity_length_slices(),
                train=TrainConfig(steps=30000, eval_every=0, checkpoint_every=500),
                probe=ProbeConfig(enabled=False),  # probed afterwards from the final checkpoints
            ),
            x="data.entity_tokens",
            quick=["seeds=[0]", "train.steps=3000"],
            question="Does MDM reversal follow the entities' length or the tokens they share? "
            "(Each slice moves one; fit first; generation and likelihood rank read together.)",
        ),
        "objective-attention": Named(
            SweepConfig(
                name="objective-attention",
                grid={"model.n_heads": [4]},
                slices=objective_attention_slices(),
                train=TrainConfig(checkpoint_every=500),
                probe=ProbeConfig(enabled=False),  # prefix_lm cannot be probed (full attention)
            ),
            x="model.attention",
            quick=["seeds=[0]", "train.steps=1500"],
            question="Objective or attention? Next-token and masked objectives, each with "
            "causal and bidirectional attention, and masked-AR: which cells reverse?",
        ),
        "objective-attention-entities": Named(
            SweepConfig(
                name="objective-attention-entities",
                # entity-length's two-token, unshared cell (its MDM partly reverses by generation
                # and mostly by rank), with entity-length's depth and budget: its MDM and ARM
                # cells are entity-length's own runs (--reuse-runs).
                grid={
                    "model.n_heads": [4],
                    "model.n_layers": [2],
                    "data.entity_tokens": [2],
                    "data.entity_spelling": ["unique"],
                },  # fmt: skip
                slices=objective_attention_slices(),
                train=TrainConfig(steps=30000, eval_every=0, checkpoint_every=500),
                probe=ProbeConfig(enabled=False),  # as entity-length's cells were run
            ),
            x="model.attention",
            quick=["seeds=[0]", "train.steps=3000"],
            question="The objective x attention grid on two-token entities: which cells reverse "
            "where the MDM itself reverses by rank but only partly by generation?",
        ),
        "entity-masking": Named(
            SweepConfig(
                name="entity-masking",
                grid={"model.causal": [False], "model.n_heads": [4], "model.n_layers": [2]},
                slices=entity_masking_slices(),
                train=TrainConfig(steps=30000, eval_every=0, checkpoint_every=500),
                probe=ProbeConfig(enabled=False),  # entity-length's cells, as they were run
            ),
            x="data.entity_tokens",
            quick=["seeds=[0]", "train.steps=3000"],
            question="Does whole-entity masking (DiffER) restore MDM reversal of multi-token "
            "entities where token masking loses it?",
        ),
        "weight-decay": Named(
            SweepConfig(
                name="weight-decay",
                grid={"model.n_heads": [4], "model.n_layers": [2]},
                slices=weight_decay_slices(),
                data=ToyDataConfig(both_fraction=0.5),
                # A constant rate after warm-up: decoupled decay is lr x wd per step, and a
                # cosine schedule would weaken it tenfold by the end, where a late transition
                # would show. 20000 full-batch steps (20000 epochs of the 100 facts), 6.7x the
                # toy's budget; evaluated every 500 steps to draw the curves.
                train=TrainConfig(
                    steps=20000, schedule="constant", eval_every=500, checkpoint_every=500
                ),  # fmt: skip
                probe=ProbeConfig(enabled=False),  # not the question; costly on two layers
            ),
            x="train.weight_decay",
            quick=["seeds=[0]", "train.steps=3000"],
            curves=True,
            question="Does weight decay make an ARM reverse when the inverse relation is trained "
            'on other facts (Kim et al.), and does "the ARM never reverses" survive?',
        ),
        "scale": Named(
            SweepConfig(
                name="scale",
                grid={"data.n_pairs": [26, 100, 500, 2000], "model.d_model": [32, 128]} | CAUSAL,
                # 2000 pairs full-batch would cost ~20x the toy per step; minibatches keep it
                # comparable (steps stay fixed, so large sets see fewer epochs).
                train=TrainConfig(checkpoint_every=500, batch_size=256),
            ),
            x="data.n_pairs",
            hue="model.d_model",
            question="Where does capacity run out, and does reversal fail before memorisation?",
        ),
    }


def get_named(name: str) -> Named:
    named = named_experiments()
    if name not in named:
        raise KeyError(name)
    return named[name]


def prepare_sweep_dir(out: Path, cfg: SweepConfig, force: bool) -> None:
    """A sweep may write into an empty folder or resume its own (the same settings, bar how it
    executes); anything else is refused, ``--force`` or not for another sweep's folder, since two
    sweeps in one index would mix their runs."""
    if out.exists() and not out.is_dir():
        raise RevcurseError(f"{out}: exists and is not a directory")
    index = out / "index.sqlite"
    if out.is_dir() and any(out.iterdir()) and not force and not index.is_file():
        raise RevcurseError(
            f"{out}: directory is not empty and holds no sweep; choose another --out or pass "
            "--force"
        )
    if index.is_file():
        names = {r["experiment"] for r in Store(index, create=False).rows()}
        if names and names != {cfg.name}:
            raise RevcurseError(
                f"{out}: holds sweep {sorted(names)[0]!r}, not {cfg.name!r}; choose another --out"
            )
        saved = out / "config.yaml"
        if saved.is_file():
            try:
                before = settings(load_yaml(SweepConfig, saved))
            except RevcurseError as err:
                raise RevcurseError(f"{out}: its config.yaml is not a sweep's ({err})") from None
            here = settings(cfg)
            if before != here:
                raise RevcurseError(
                    f"{out}: holds a sweep of other settings ({first_difference(before, here)}); "
                    "resume it with the same settings, or choose another --out"
                )
    out.mkdir(parents=True, exist_ok=True)


def summarize(name: str, jobs, outcomes) -> dict[str, Any]:
    """Deterministic rows and per-group aggregates (a group: the labels without the seed)."""
    rows = []
    for job in jobs:
        outcome = outcomes[job.run_id]
        row = {"run_id": job.run_id, **job.labels, "status": outcome.status}
        if outcome.summary is not None:
            row |= {k: v for k, v in deterministic(outcome.summary).items() if k not in row}
        if outcome.error is not None:
            row["error"] = outcome.error
        rows.append(row)
    label_keys = cell_keys(jobs)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(cell_of(row, label_keys), []).append(row)
    aggregates = []
    for members in groups.values():
        agg = aggregate(members, [*METRICS, *PROBE_METRICS])
        cell: dict[str, Any] = {"labels": {k: members[0][k] for k in label_keys}}
        if "slices" in members[0]:
            cell["slices"] = list(dict.fromkeys(s for m in members for s in m["slices"]))
        fit = fit_summary(members, [f"reverse_{m}" for m in ANSWER_SOURCES])
        aggregates.append(cell | agg | {"fit": fit})
    return {
        "experiment": name,
        "rows": rows,
        "aggregates": aggregates,
        "n_runs": len(rows),
        "n_failed": sum(r["status"] == "failed" for r in rows),
    }


CURVE_METRICS = ("forward_accuracy", "reverse_both_accuracy", "reverse_accuracy")
"""What a sweep with curves (``Named.curves``) follows over training, where the runs have it."""


def curve_ranges(out: Path, jobs, outcomes) -> list[dict[str, Any]]:
    """What the curves show, as numbers a claim can cite: per cell (its seeds' finished runs) and
    metric of :data:`CURVE_METRICS`, the lowest and highest value any seed had at any evaluation
    during training (``min``, ``max``), how many evaluations that is over all seeds, and the range
    at each seed's last evaluation (``last_min``, ``last_max``)."""
    done = [j for j in jobs if outcomes[j.run_id].status == "done"]
    out_cells = []
    for cell in cells_of(jobs, done):
        entry: dict[str, Any] = {"labels": cell["labels"]}
        histories = [eval_history(out / "runs" / r, CURVE_METRICS) for r in cell["runs"]]
        for metric in CURVE_METRICS:
            runs = [history[metric][1] for history in histories]
            if not all(runs):
                continue
            every = [v for values in runs for v in values]
            last = [values[-1] for values in runs]
            entry[metric] = {"min": min(every), "max": max(every), "evaluations": len(every),
                             "last_min": min(last), "last_max": max(last)}  # fmt: skip
        out_cells.append(entry)
    return out_cells


def cell_keys(jobs) -> list[str]:
    """The labels that name a cell of the sweep, whose runs are its seeds. Slice membership is
    not one of them: a slice may hold only some of a cell's seeds."""
    return [k for k in jobs[0].labels if k not in ("seed", "slices")] if jobs else []


def cell_of(labels: dict[str, Any], keys: list[str]) -> tuple:
    return tuple(repr(labels[k]) for k in keys)


def cells_of(jobs, chosen) -> list[dict[str, Any]]:
    """The cells (labels without the seed, :func:`cell_keys` of ``jobs``) of the ``chosen`` jobs,
    in order of first appearance: ``{"labels", "runs"}``, the run ids of each cell's seeds."""
    keys = cell_keys(jobs)
    cells: dict[tuple, dict[str, Any]] = {}
    for job in chosen:
        cell = cells.setdefault(cell_of(job.labels, keys), {
            "labels": {k: job.labels[k] for k in keys}, "runs": []})  # fmt: skip
        cell["runs"].append(job.run_id)
    return list(cells.values())


def contrasts(cfg: SweepConfig, jobs, outcomes, correct=None, fit=None) -> list[dict[str, Any]]:
    """The paired tests the slices ask for (:attr:`SliceConfig.compare`): within each slice, for
    every combination of its other keys, each later value of the compared key against the first,
    on reverse accuracy paired by (seed, fact) over the seeds both cells finished. Each carries
    both cells' fit labels: a test between cells that did not fit is reported, not read.
    ``correct(cell, seeds)``: the per-seed, per-fact outcomes compared (default: whether each
    reverse query was answered right, the runs' generation; :mod:`.mc_draws` passes ranks);
    ``fit(cell, seeds)``: a cell's fit label (default: from the runs' own summaries;
    :mod:`.decoding_control` reads fit by each of its readings)."""
    correct = _reverse_correct if correct is None else correct
    if fit is None:

        def fit(cell: dict[int, Any], seeds: list[int]) -> str:
            return _fit_label(cell, seeds, outcomes)

    done = {j.run_id: j for j in jobs if outcomes[j.run_id].status == "done"}
    cells: dict[tuple, dict[int, Any]] = {}  # cell -> seed -> job
    label_keys = cell_keys(jobs)
    for job in done.values():
        cells.setdefault(cell_of(job.labels, label_keys), {})[job.labels["seed"]] = job
    out = []
    for slice_name, piece in cfg.slices.items():
        if not piece.compare:
            continue
        members = [j for j in done.values() if slice_name in j.labels.get("slices", [])]
        baseline, *others = piece.grid[piece.compare]
        where_keys = [k for k in cfg.slice_keys(slice_name) if k != piece.compare]
        seen: set[tuple] = set()
        for job in members:
            if job.labels[piece.compare] != baseline:
                continue
            base_key = cell_of(job.labels, label_keys)
            if base_key in seen:
                continue
            seen.add(base_key)
            where = {k: job.labels[k] for k in where_keys}
            for value in others:
                target = job.labels | {piece.compare: value}
                if piece.compare == "model.causal":  # the family label follows it
                    target["family"] = "arm" if value else "mdm"
                a = cells.get(cell_of(target, label_keys), {})
                b = cells[base_key]
                seeds = sorted(set(a) & set(b))
                if not seeds:
                    continue
                test = paired_comparison(correct(a, seeds), correct(b, seeds))
                out.append({
                    "slice": slice_name, "key": piece.compare, "value": value,
                    "baseline": baseline, "cell": where, "seeds": seeds,
                    "test": test,
                    "fit": {"value": fit(a, seeds), "baseline": fit(b, seeds)},
                    "decision": decision(test),
                })  # fmt: skip
    return out


def _reverse_correct(cell: dict[int, Any], seeds: list[int]) -> list[list[bool]]:
    """Per seed of a cell (seed -> job), whether each reverse query was answered right."""
    return [files.read_json(cell[s].run_dir / "predictions.json")["correct"]["reverse"]
            for s in seeds]  # fmt: skip


def _fit_label(cell: dict[int, Any], seeds: list[int], outcomes) -> str:
    return fit_summary([outcomes[cell[s].run_id].summary for s in seeds])["label"]


def finished_mdm_runs(jobs, outcomes) -> list[Job]:
    """The jobs of a sweep whose runs finished and are MDMs (what the sweep analyses re-read)."""
    return [j for j in jobs if outcomes[j.run_id].status == "done" and not j.config.model.causal]


def per_run_records(
    out: Path, chosen, read: Callable[[Path], dict[str, Any]], *, desc: str, progress: bool,
    reusable: Callable[[dict[str, Any]], bool] = lambda saved: True,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """An analysis's record of each ``chosen`` job (run id -> record): ``out/runs/<run_id>.json``
    where an earlier call left one that is ``reusable``, else ``read(job.run_dir)``, written
    there as soon as it is made, so an interrupted analysis resumes where it stopped. Every
    record is returned as read back from its file: a fresh one and a reused one are alike (JSON's
    keys and lists)."""
    records: dict[str, dict[str, Any]] = {}
    for job in tqdm(chosen, desc=desc, unit="run", disable=not progress):
        path = out / "runs" / f"{job.run_id}.json"
        saved = files.read_json(path) if path.is_file() else None
        if saved is None or not reusable(saved):
            files.write_json(path, read(job.run_dir))
            saved = files.read_json(path)
        records[job.run_id] = saved
    return records


def sweep_results(folder: Path) -> tuple[SweepConfig, list[Job], dict[str, Outcome]]:
    """A finished sweep's config, jobs and outcomes, read from its folder (``config.yaml``,
    ``summary.json`` and each run's own summary) without writing to it."""
    for name in ("config.yaml", "summary.json"):
        if not (folder / name).is_file():
            raise RevcurseError(f"{folder}: not a finished sweep (no {name})")
    cfg = load_yaml(SweepConfig, folder / "config.yaml")
    rows = files.read_json(folder / "summary.json")["rows"]
    jobs, outcomes = [], {}
    for labels, run in cfg.expand():
        row = next((r for r in rows if all(r.get(k) == v for k, v in labels.items())), None)
        if row is None:
            raise RevcurseError(f"{folder}/summary.json: no run with labels {labels}")
        job = Job(row["run_id"], labels, run, folder / "runs" / row["run_id"])
        done = row["status"] == "done"
        summary = files.read_json(job.run_dir / "summary.json") if done else None
        jobs.append(job)
        outcomes[job.run_id] = Outcome(row["status"], summary, row.get("error"))
    return cfg, jobs, outcomes


def run_sweep(
    cfg: SweepConfig,
    out: str | Path,
    *,
    command: str = "(library call)",
    progress: bool = True,
    force: bool = False,
    named: Named | None = None,
    log_with: tuple[str, ...] = (),
    reuse: Path | None = None,
) -> dict[str, Any]:
    """Run (or resume) a sweep into ``out``; write summary, timings and report; return summary
    (``log_with``: trackers every run mirrors its metrics to; ``reuse``: another sweep's folder
    whose finished runs of identical config are copied in rather than trained again)."""
    from revcurse.report.sweep import write_report  # matplotlib only when reporting

    out = Path(out)
    if reuse is not None:  # refused before any write
        check_reuse_source(reuse, "runs", "not a sweep folder")
    runs = cfg.expand()
    ours = (out / "index.sqlite").is_file()  # a sweep's folder from before, not a user's
    prepare_sweep_dir(out, cfg, force)
    # one sweep at a time in a folder: two started at once would both pass the checks above
    with files.run_lock(out, blocking=False):
        if ours:  # clear what a sweep killed mid-write left; no one writes now
            files.remove_temporaries(out)
        write_provenance(out, dump_yaml(cfg), command)
        store = Store(out / "index.sqlite")
        jobs = adopt_earlier_runs(make_jobs(runs, lambda run_id, _: out / "runs" / run_id),
                                  store, cfg.name)  # fmt: skip
        if reuse is not None:
            copied = copy_finished_runs(jobs, Path(reuse))
            print(f"copied {len(copied)} finished run(s) of identical config from {reuse}",
                  file=sys.stderr)  # fmt: skip
        start = time.perf_counter()
        outcomes = execute(jobs, store, cfg.name, workers=cfg.workers,
                           backend=cfg.backend, command=command, progress=progress,
                           log_with=log_with)  # fmt: skip
        summary = summarize(cfg.name, jobs, outcomes)
        if cfg.slices:
            summary["slices"] = {
                n: {"question": s.question, "keys": cfg.slice_keys(n), "compare": s.compare}
                for n, s in cfg.slices.items()
            }
            summary["contrasts"] = contrasts(cfg, jobs, outcomes)
        if named is not None and named.curves:
            summary["curves"] = curve_ranges(out, jobs, outcomes)
        files.write_json(out / "summary.json", summary)
        files.write_json(
            out / "timings.json",
            {
                "wall_seconds": wall_over_sittings(out / "timings.json", start, ours),
                "workers": cfg.workers,
                "backend": cfg.backend,
                "runs": {j.run_id: timings(outcomes[j.run_id].summary or {}) for j in jobs},
            },
        )
        write_report(out, cfg, summary, named)
        return summary


def load_sweep_config(
    name: str | None, config: Path | None, overrides: list[str], quick: bool
) -> tuple[SweepConfig, Named | None]:
    """The sweep of a named experiment or a YAML file, with ``--quick`` and overrides applied."""
    named = None
    if name is not None:
        named = get_named(name)
        cfg = named.sweep
        if config is not None:
            raise RevcurseError("pass either an experiment name or --config, not both")
    elif config is not None:
        cfg = load_yaml(SweepConfig, config)
    else:
        raise RevcurseError("a sweep needs --config FILE (see configs/sweep-example.yaml)")
    if quick:
        cfg = apply_overrides(cfg, named.quick if named else ["seeds=[0]", "train.steps=1500"])
    return apply_overrides(cfg, overrides), named
