"""``revcurse reproduce person-description``, ``parent-child`` and ``facts``: MDMs vs ARMs trained
from scratch on natural-language facts.

A multi-layer bidirectional Transformer with the masked-diffusion loss (MDM) and the same
Transformer, causal, with the next-token loss (ARM), pre-trained from scratch on whole statements
(each ``[BOS] statement [EOS]``, word vocabulary), several seeds each, and any **variants** (an MDM
or ARM with other settings: a masking choice, a positional encoding). arXiv 2602.02133 runs its
natural-language comparison the same way at small scale. Each dataset is a
:class:`~revcurse.data.tasks.Task` (:mod:`revcurse.data.tasks`): what is trained,
which splits are asked, which must be fitted first, which reverse splits are compared.

**Person–Description** (Berglund et al.'s Experiment 1 statements, ``all_prompts_train.jsonl``):

* the **training templates** (``*_train`` splits,
  :func:`~revcurse.data.person_description.training_template_splits`): the same
  direction (memorisation) and the reverse direction written in templates the model has read;
* the **held-out templates** of the released test files (10 templates never trained on),
  reported separately: a word-level model trained from scratch has never seen their wording.

**Parent–Child** (:func:`revcurse.data.parent_child.from_scratch`): half the child–parent pairs
trained forward only, the other half in both directions (which teaches the reverse template);
the reverse of the forward-only pairs is the test.

**Your facts** (``reproduce facts``, :func:`~revcurse.data.tasks.facts_task`): a facts file (:mod:`revcurse.data.facts`)
laid out by its groups. A group's trained directions are its training statements; a direction it
does not train is its reverse test, its mirror split and fit check come from the trained one, as
for Parent–Child's forward-only pairs (whose layout a facts file can state: tested).

Every model is scored with prefix / substring / exact match of the MDM sampler's or the ARM's
greedy generations and the likelihood rank of the right answer among 9 other answers of its split
(decoding-free). The attention and gradient probes of :mod:`revcurse.probes.hf` run on (forward,
reverse) pairs of multi-token entities before, during and after training. Reverse failures are
read only where a model fitted what it was trained on (:data:`FIT`), with paired tests.

Models are trained in parallel worker processes by the sweep executor; each run writes its own
directory (config, metrics, probes, generations, safetensors weights, summary).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from revcurse import files, training
from revcurse.config import PersonDescriptionConfig, TextRunConfig, dump_yaml, load_yaml, to_dict
from revcurse.data.schema import TextPair, mirror_query, named_entities, one_way
from revcurse.data.tasks import pin_facts, task_for
from revcurse.data.text import TextBatch, WordTokenizer, encode_pairs, entity_units, pad_with_eos
from revcurse.errors import RevcurseError
from revcurse.evaluation import evaluate_split, save_generations
from revcurse.experiments.executor import (
    Outcome,
    check_reuse_source,
    guarded,
    timings,
    train_families,
    wall_over_sittings,
)
from revcurse.experiments.rundir import start_experiment
from revcurse.files import model_dir
from revcurse.models.transformer import TransformerLM
from revcurse.objectives import run_loss, text_objective
from revcurse.probes.hf import encode_facts, paired_queries, probeable, text_measure
from revcurse.probes.inputs import PAIRINGS, pairings_for
from revcurse.probes.runner import GRADIENT_PAIRS, ProbeRunner, finite_mean, summary_layers
from revcurse.probes.runner import summarise as summarise_probes
from revcurse.repro import seed_everything, use_threads, write_provenance
from revcurse.stats import aggregate, paired_comparison
from revcurse.tracking import MetricsLog

HEADLINE = "prefix"
"""Berglund's metric: the generation starts with the answer (names are followed by template text)."""
FIT = 0.95
"""Fitted: the queries a model was trained on (forward; for an MDM trained on them also the
mirror) answered at least this often (prefix match) by one seed's model."""


def build_data(cfg: TextRunConfig) -> tuple[list[TextPair], dict[str, list[TextPair]]]:
    """The task's training statements and splits, with its mirror splits added."""
    task = task_for(cfg)
    statements, splits = task.build(cfg)
    for name, (forward, reverse) in task.mirrors.items():
        facts = paired_queries(splits[forward], splits[reverse], len(splits[reverse]))
        mirrors = (mirror_query(f, r.completion) for f, r in facts)
        splits[name] = [m for m in mirrors if m is not None]
    return statements, splits


@dataclass
class Prepared:
    """What a run trains on and is evaluated with, checked against the model's length."""

    statements: list[TextPair]
    """Training statements as (prompt, completion): the completion is what ``maskable: answer``
    lets the MDM mask."""
    splits: dict[str, list[TextPair]]
    tokenizer: WordTokenizer
    gen_lengths: dict[str, int]


def prepare(cfg: TextRunConfig) -> Prepared:
    """Data, vocabulary and per-split generation lengths; refuses a max_seq_len too short for the
    longest statement or query + answer (checked before any directory is written)."""
    statements, splits = build_data(cfg)
    # The vocabulary covers the held-out templates' words too (untrained embeddings), so their
    # prompts are read as words rather than as <unk>.
    tokenizer = WordTokenizer.fit(
        [s.prompt + s.completion for s in statements]
        + [p.prompt + a for v in splits.values() for p in v for a in p.answers]
    )
    gen_lengths = {k: 2 + max(len(tokenizer.encode(p.completion)) for p in v)
                   for k, v in splits.items()}  # fmt: skip
    longest = max(
        [2 + len(tokenizer.encode(s.prompt + s.completion)) for s in statements]
        + [1 + len(tokenizer.encode(p.prompt)) + gen_lengths[k] for k, v in splits.items()
           for p in v]
    )  # fmt: skip
    if longest > cfg.model.max_seq_len:
        raise RevcurseError(
            f"model.max_seq_len: expected >= {longest} (the longest statement or query), "
            f"got {cfg.model.max_seq_len}"
        )
    return Prepared(statements, splits, tokenizer, gen_lengths)


def training_batch(
    cfg: TextRunConfig,
    statements: list[TextPair],
    tokenizer: WordTokenizer,
    entities: Sequence[str] = (),
) -> TextBatch:
    """The statements as ``[BOS] statement`` rows whose ``answer_mask`` is what the MDM may mask:
    the whole statement (``train.maskable: all``, the pre-training loss) or only its completion
    (``answer``: the prompt part stays visible, the SFT loss). The MDM's rows are then filled with
    EOS to ``max_seq_len`` (maskable, so it learns to end its answers). An ARM's next-token loss
    reads every statement token either way. With ``train.mask_unit: entity`` every occurrence of
    one of ``entities`` in a statement is masked whole (:func:`~revcurse.data.text.entity_units`)."""
    causal = cfg.model.causal
    texts = [s.prompt + s.completion for s in statements]
    if cfg.train.maskable == "all" or causal:
        statements = [TextPair("", text) for text in texts]
    data = encode_pairs(tokenizer, statements, bos=True)
    if cfg.train.mask_unit == "entity":  # every named entity masked whole (DiffER)
        data.unit_start, _ = entity_units(tokenizer, texts, entities, data.ids, offset=1)
    if not causal:
        data = pad_with_eos(data, cfg.model.max_seq_len, tokenizer.eos_id)
    return data


def train_run(
    cfg: TextRunConfig,
    out: Path,
    command: str = "(library call)",
    resume: bool = True,
    log_with: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train, evaluate and probe one from-scratch model; writes its run directory (``resume``:
    continue from its last checkpoint when it holds one of exactly this config; ``log_with``:
    trackers that mirror its metrics, probes and final evaluation)."""
    use_threads(cfg.train.threads)
    cfg = pin_facts(cfg)
    task = task_for(cfg)
    prepared = prepare(cfg)
    statements, splits, tokenizer = prepared.statements, prepared.splits, prepared.tokenizer
    out.mkdir(parents=True, exist_ok=True)
    resuming = resume and training.check_resumable(out, cfg, require_checkpoint=False)
    if training.holds_run(out, cfg):
        files.remove_temporaries(out)  # provably this run: clear what a killed writer left
    if not resuming:
        write_provenance(out, dump_yaml(cfg), command, announce=False)  # one model of many
    causal = cfg.model.causal
    seed_everything(cfg.train.seed)
    model = TransformerLM(cfg.model, len(tokenizer))
    named = named_entities([*statements, *(p for split in splits.values() for p in split)])
    data = training_batch(cfg, statements, tokenizer, named)
    accelerator = training.make_accelerator("cpu", log_with, out)
    log = MetricsLog(out, accelerator)
    log.start(to_dict(cfg))
    fill_to = None if causal else cfg.model.max_seq_len
    facts = encode_facts(
        tokenizer,
        paired_queries(splits[task.probe[0]], splits[task.probe[1]], cfg.probe.n_facts),
        pairings_for(causal),
        bos=True,
        fill=None if fill_to is None else (tokenizer.eos_id, fill_to),  # as in training
    )
    probes = ProbeRunner(text_measure(facts, causal=causal, mask_id=tokenizer.mask_id),
                         out / "probes.jsonl", every=cfg.probe.every,
                         enabled=cfg.probe.enabled and probeable(facts), keep=resuming,
                         log=log)  # fmt: skip
    if resuming:
        probes.truncate(training.read_step(out / "checkpoints" / "last.safetensors"))
    else:
        probes(model, 0)
    loss = run_loss(text_objective(causal, cfg.train.objective), tokenizer.mask_id,
                    eps=cfg.train.diffusion_eps,
                    weighting=cfg.train.loss_weighting, cart_p=cfg.train.cart_p)  # fmt: skip
    meta = {"config": json.dumps(to_dict(cfg)), "vocab": json.dumps(tokenizer.vocab.tokens)}
    fitted = training.fit(
        model, data, loss, cfg.train, out=out, meta=meta, resume=resuming,
        accelerator=accelerator, log=log,
        on_step=lambda done: probes(model, done) if probes.due(done) else None,
    )  # fmt: skip
    probes(model, cfg.train.steps, final=True)
    start = time.perf_counter()
    results = {}
    for name, (metrics, records) in evaluate_run(model, cfg, prepared):
        save_generations(out / "generations" / f"{name}.jsonl", records)
        results[name] = metrics
        log.track(f"eval/{name}", cfg.train.steps, metrics)
    log.close()
    files.save_tensors(
        out / "model.safetensors",
        model.state_dict(),
        {"vocab": json.dumps(tokenizer.vocab.tokens), "config": json.dumps(to_dict(cfg.model))},
    )
    summary = {
        "family": cfg.family,
        "seed": cfg.train.seed,
        "n_statements": len(statements),
        "vocab_size": len(tokenizer),
        "parameters": model.num_parameters(),
        "final_loss": fitted.mean_loss,
        "splits": results,
        "probe": probes.summary() if probes.enabled else None,
        "train_seconds": fitted.seconds,
        "eval_seconds": time.perf_counter() - start,
    }  # fmt: skip
    files.write_json(out / "summary.json", summary)
    (out / "checkpoints" / "last.safetensors").unlink(missing_ok=True)  # the run is complete
    return summary


def evaluate_run(
    model: TransformerLM, cfg: TextRunConfig, prepared: Prepared
) -> Iterator[tuple[str, tuple[dict[str, float], list[dict[str, Any]]]]]:
    """Every split the model is asked (a model read or attending one way has no mirror), in
    order: its metrics and per-query records. One generator, seeded by the run's seed, is
    consumed split after split, so evaluating a model again gives the same generations."""
    task, causal = task_for(cfg), cfg.model.causal
    gen = torch.Generator().manual_seed(cfg.train.seed)
    fill_to = None if causal else cfg.model.max_seq_len
    for name, pairs in prepared.splits.items():
        if one_way(cfg.model) and task.splits[name] == "mirror":
            continue  # its answer position cannot see the text after it
        settings = dataclasses.replace(cfg.eval, gen_length=prepared.gen_lengths[name])
        yield name, evaluate_split(model, prepared.tokenizer, pairs, causal, settings, gen,
                                   bos=True, eos_fill_to=fill_to)  # fmt: skip


REPRODUCED = ("generation", "candidates", "candidate_logprobs", "rank")
"""What a re-evaluation must give exactly as the original run did before its records are
replaced."""


def load_run_model(cfg: TextRunConfig, out: Path) -> tuple[TransformerLM, Prepared]:
    """A finished run's saved model in eval mode, with its data prepared (the run's thread count
    applied); refused when its vocabulary is not the one ``cfg`` builds."""
    use_threads(cfg.train.threads)
    prepared = prepare(cfg)
    path = out / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        saved_vocab = json.loads((f.metadata() or {}).get("vocab", "null"))
    if saved_vocab != prepared.tokenizer.vocab.tokens:
        raise RevcurseError(f"{path}: its vocabulary is not the one this config builds")
    model = TransformerLM(cfg.model, len(prepared.tokenizer))
    model.load_state_dict(files.load_tensors(path))
    return model.eval(), prepared


def reevaluate_run(cfg: TextRunConfig, out: Path) -> dict[str, Any]:
    """Evaluate a finished run's saved model again with the current evaluation and rewrite its
    generations and its summary's split metrics, other fields kept. The vocabulary must be the
    one the model was saved with, and every saved record's generation, candidates, likelihoods
    and rank must come out identical (so only what the current evaluation adds, e.g. the chain
    likelihood, is new); otherwise nothing is written and the run is named in the error."""
    model, prepared = load_run_model(cfg, out)
    results, written = {}, {}
    for name, (metrics, records) in evaluate_run(model, cfg, prepared):
        old = files.read_jsonl(out / "generations" / f"{name}.jsonl")
        if [{k: r[k] for k in REPRODUCED} for r in old] != [
            {k: r[k] for k in REPRODUCED} for r in records
        ]:
            raise RevcurseError(f"{out}: split {name} does not reproduce its saved records")
        results[name], written[name] = metrics, records
    for name, records in written.items():
        save_generations(out / "generations" / f"{name}.jsonl", records)
    summary = files.read_json(out / "summary.json") | {"splits": results}
    files.write_json(out / "summary.json", summary)
    return summary


def execute_run(
    cfg: TextRunConfig,
    run_dir: str,
    command: str,
    progress: bool = False,
    log_with: tuple[str, ...] = (),
) -> Outcome:
    """The executor's worker: one run, its failure recorded rather than raised."""
    return guarded(lambda path: train_run(cfg, path, command, log_with=log_with), run_dir)


def quick(cfg: PersonDescriptionConfig) -> PersonDescriptionConfig:
    """``--quick``: 5 people per group, 1500 steps, 30 queries per split."""
    run = dataclasses.replace(
        cfg.run, n_people=5, max_eval=30,
        train=dataclasses.replace(cfg.run.train, steps=1500),
    )  # fmt: skip
    return dataclasses.replace(cfg, run=run)


def run_from_scratch(
    cfg: PersonDescriptionConfig,
    out: str | Path,
    *,
    command: str = "(library call)",
    progress: bool = True,
    force: bool = False,
    resume: bool = False,
    log_with: tuple[str, ...] = (),
    reuse: Path | None = None,
) -> dict[str, Any]:
    """Train every (model, seed) run of a from-scratch text experiment, then aggregate and write
    the report (``resume``: continue an interrupted run of it in ``out``; ``log_with``: trackers
    every run mirrors its metrics to; ``reuse``: another from-scratch experiment's folder, whose
    finished runs of identical settings are copied in instead of trained)."""
    from revcurse.report.from_scratch import write_report

    cfg = _pinned(cfg, Path(out), resume)
    task = task_for(cfg.run)
    for name in cfg.model_names():  # bad settings fail before any write
        prepare(cfg.run_config(name, cfg.seeds[0]))
    if reuse is not None:  # refused before any write
        check_reuse_source(reuse, "models", "expected a from-scratch experiment's folder")
    out = start_experiment(out, cfg, command, force, resume)
    start = time.perf_counter()
    summaries = train_families(out, cfg, task.name, command, progress, reuse=reuse,
                               worker=execute_run, log_with=log_with)  # fmt: skip
    summary = summarise(out, cfg, summaries)
    names = [f"{name}-seed{seed}" for name in cfg.model_names() for seed in cfg.seeds]
    files.write_json(out / "timings.json", {
        "wall_seconds": wall_over_sittings(out / "timings.json", start, resume),
        # each model's own training and evaluation (a model resumed from a checkpoint counts its
        # last sitting's training only; one copied by --reuse-runs, where it was trained)
        "runs": dict(zip(names, (timings(s) for s in summaries), strict=True)),
    })  # fmt: skip
    write_report(out, cfg, summary)
    return summary


def _pinned(cfg: PersonDescriptionConfig, out: Path, resume: bool) -> PersonDescriptionConfig:
    """``cfg`` with its facts file's digest filled in (:func:`pin_facts`): when resuming, the one
    the experiment started with, so a facts file changed since is named as such."""
    run, saved = cfg.run, out / "config.yaml"
    if resume and run.dataset == "facts" and not run.path_sha256 and saved.is_file():
        before = load_yaml(type(cfg), saved).run
        if Path(before.path).resolve() == Path(run.path).resolve():
            run = dataclasses.replace(run, path_sha256=before.path_sha256)
    return dataclasses.replace(cfg, run=pin_facts(run))


def reevaluate(out: str | Path, cfg: PersonDescriptionConfig, command: str) -> dict[str, Any]:
    """``--reevaluate``: every finished model of the experiment in ``out`` evaluated again
    (:func:`reevaluate_run`, no training; a run whose splits already carry every current metric
    is kept as it is), then the summary and report rewritten; the command is added to
    ``command.txt``. ``cfg`` is the experiment's own saved config."""
    from revcurse.report.from_scratch import write_report

    out = Path(out)
    summaries = []
    for name in cfg.model_names():
        for seed in cfg.seeds:
            run = model_dir(out, name, seed)
            if not (run / "summary.json").is_file():
                raise RevcurseError(f"{run}: not a finished run (no summary.json)")
            done = files.read_json(run / "summary.json")
            if all("chain_top1" in m for m in done["splits"].values()):
                summaries.append(done)  # already evaluated by the current evaluation
            else:
                summaries.append(reevaluate_run(cfg.run_config(name, seed), run))
    summary = summarise(out, cfg, summaries)
    previous = (out / "command.txt").read_text() if (out / "command.txt").is_file() else ""
    files.write_text(out / "command.txt", previous.rstrip("\n") + "\n" + command + "\n")
    write_report(out, cfg, summary)
    return summary


def summarise(out: Path, cfg: PersonDescriptionConfig, summaries: list[dict]) -> dict[str, Any]:
    """The experiment's summary from its runs' summaries (model-major, as :func:`train_families`
    returns them): per-run rows, aggregates, fit, paired tests, probe curves; written to
    ``summary.json``."""
    task = task_for(cfg.run)
    rows = []
    names = [name for name in cfg.model_names() for _ in cfg.seeds]  # train_families' order
    for name, s in zip(names, summaries, strict=True):
        # "family": the model's name in this experiment (mdm, arm or a variant)
        row = {"family": name, "seed": s["seed"], "final_loss": s["final_loss"]}
        for split, m in s["splits"].items():
            for metric in ("prefix", "substring", "exact", "likelihood_top1", "chain_top1"):
                if metric in m:  # chain_top1: runs evaluated since it exists
                    row[f"{split}.{metric}"] = m[metric]
        row |= probe_row(model_dir(out, name, s["seed"]) / "probes.jsonl")
        rows.append(row)
    metrics = [k for k in rows[0] if k not in ("family", "seed")]
    fitted = fit_table(cfg, rows)
    summary = {
        "experiment": task.name,
        "n_statements": summaries[0]["n_statements"],
        "splits": task.splits,
        "headline_metric": HEADLINE,
        "chance_top1": summaries[0]["splits"][next(iter(task.compared))]["chance_top1"],
        "rows": rows,
        "aggregate": {
            f: aggregate([r for r in rows if r["family"] == f], metrics) for f in cfg.model_names()
        },
        "fit": {
            "threshold": FIT,
            "metric": HEADLINE,
            "splits": task.fit,
            "trains_mirror": {
                name: trains_mirror(cfg.run_config(name, cfg.seeds[0]))
                for name in cfg.model_names()
            },
            "fitted_seeds": fitted,
        },
        "comparison": compare_families(out, cfg, fitted),
        "variant_comparison": compare_variants(out, cfg, fitted),
        # only where a variant is autoregressive: summaries of experiments without one unchanged
        **(
            {"variant_arm_comparison": versus_arm}
            if (versus_arm := compare_variants_with_arm(out, cfg, fitted))
            else {}
        ),
        "probe_curves": probe_curves(out, cfg),
    }
    files.write_json(out / "summary.json", summary)
    return summary


def probe_row(path: Path) -> dict[str, float]:
    """A run's probe numbers for the results table, from its records (:func:`summarise_probes`,
    the summary every run kind writes): per pairing, the gradient cosine of the paired and the
    reverse query (mean over facts) and each layer's attention correlation, before training (the
    first record, step 0) and after it (the last)."""
    records = files.read_jsonl(path) if path.exists() else []
    probe = summarise_probes(records)
    row = {}
    for stage, end in (("before", "first"), ("after", "final")):
        for pairing in PAIRINGS:
            if f"n_facts_{pairing}_{end}" not in probe:
                continue
            row[f"probe.{stage}.{pairing}.cos_pair_rev"] = probe[
                f"per_fact_cos_{GRADIENT_PAIRS[pairing]}_{end}"
            ]
            for n in summary_layers(probe, pairing):
                row[f"probe.{stage}.{pairing}.attention_r.layer{n}"] = probe[
                    f"attention_pearson_{pairing}_layer{n}_{end}"
                ]
    return row


def _third(p: dict[str, Any], t: int, key: str) -> float | None:
    """Group ``t`` (near, middle, far) of :func:`~revcurse.probes.hf.attention_coupling`'s
    ``r_by_distance``: its correlation (mean over layers and heads) or the midpoint of its
    range of distances."""
    groups = p["attention"].get("r_by_distance", [])
    if len(groups) != 3:  # too few facts, or a record written before distances were kept
        return None
    if key == "r":
        return finite_mean(list(groups[t]["r_mean"].values()))
    return finite_mean(groups[t]["distance"])


THIRDS = ("near", "middle", "far")
CURVES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "attention_r": lambda p: finite_mean(list(p["attention"]["r_mean"].values())),
    **{
        f"attention_r_{label}": (lambda p, t=t: _third(p, t, "r")) for t, label in enumerate(THIRDS)
    },
    **{f"distance_{label}": (lambda p, t=t: _third(p, t, "d")) for t, label in enumerate(THIRDS)},
    "cos_pair_rev": lambda p: p["gradients"]["cos_pair_rev_mean"],
    "cos_pair_rev_storage": lambda p: finite_mean(p["gradients"]["cos_pair_rev_groups"]["storage"]),
    "cos_pair_rev_routing": lambda p: finite_mean(p["gradients"]["cos_pair_rev_groups"]["routing"]),
}
"""What :func:`probe_curves` follows over training, read from one pairing of a probe record:
attention correlation (mean over layers and heads), the same within the nearest, middle and
furthest third of the facts by total relative distance of the entity spans (with the midpoint
of each third's range of distances), and the gradient cosine of the paired and the reverse query (all parameters,
storage and routing parts)."""


def probe_curves(out: Path, cfg: PersonDescriptionConfig) -> dict[str, Any]:
    """Per model and pairing, each of :data:`CURVES` at every step all its seeds probed, mean over
    seeds; models without probes are left out."""
    curves: dict[str, Any] = {}
    for name in cfg.model_names():
        runs = []
        for seed in cfg.seeds:
            path = model_dir(out, name, seed) / "probes.jsonl"
            runs.append({r["step"]: r for r in files.read_jsonl(path)} if path.exists() else {})
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        if not steps:
            continue
        curves[name] = {
            "steps": steps,
            "pairings": {
                pairing: {
                    key: [
                        finite_mean([read(r[step]["pairings"][pairing]) for r in runs])
                        for step in steps
                    ]  # fmt: skip
                    for key, read in CURVES.items()
                }
                for pairing in runs[0][steps[0]]["pairings"]
            },
        }
    return curves


def trains_mirror(run: TextRunConfig) -> bool:
    """Whether a model is trained on its mirror queries: an MDM attending both ways that may mask
    the whole statement (with ``maskable: answer`` the prompt, and so the name of a p2d statement,
    is never masked)."""
    return not one_way(run.model) and run.train.maskable == "all"


def fitted_seeds(rows: list[dict[str, Any]], name: str, splits: tuple[str, str],
                 mirror: bool, metric: str = HEADLINE) -> list[int]:  # fmt: skip
    """The seeds whose model ``name`` fitted a statement group, ``splits`` = (its forward split,
    its mirror split, :attr:`Task.fit`): the forward split and, where the model trains on it
    (``mirror``), the mirror split, read by ``metric`` (the headline; a decoding control reads
    other ways)."""
    forward, mirrored = splits
    needed = (forward, mirrored) if mirror else (forward,)
    return [
        r["seed"] for r in rows
        if r["family"] == name and all(r[f"{split}.{metric}"] >= FIT for split in needed)
    ]  # fmt: skip


def _outcomes(out: Path, name: str, seeds: list[int], split: str,
              metric: str) -> list[list[float]]:  # fmt: skip
    """Per seed, model ``name``'s per-query outcomes on ``split`` (1/0: :data:`OUTCOMES`), from
    the saved records."""
    return [[float(OUTCOMES[metric](r)) for r in _outcome_records(out, name, seed, split)]
            for seed in seeds]  # fmt: skip


def _outcome_records(out: Path, name: str, seed: int, split: str) -> list[dict[str, Any]]:
    return files.read_jsonl(model_dir(out, name, seed) / "generations" / f"{split}.jsonl")


OUTCOMES: dict[str, Callable[[dict[str, Any]], bool]] = {
    HEADLINE: lambda r: r["prefix"],
    "likelihood_top1": lambda r: r["rank"] == 1,
    "chain_top1": lambda r: r["chain_rank"] == 1,
}
"""The per-query outcome behind each tested metric: the generation starts with the answer; the
answer ranks first by likelihood (the Monte-Carlo bound for an MDM); first by the chain
likelihood."""


def _paired(out: Path, fitted: dict[str, dict[str, list[int]]], a: str, b: str,
            splits: dict[str, str], first_seed: int) -> dict[str, Any]:  # fmt: skip
    """Model ``a`` vs model ``b``: the paired test per split and metric (generation prefix match,
    likelihood top-1) over the seeds where both models fitted the split's statement group
    (``splits``: split -> group; ``fitted``: model -> group -> seeds, as :func:`fit_table`). The
    two models of a seed answer the same queries, with the same candidates. A split with no such
    seed gets ``{"n_seeds": 0, "seeds": []}``; every test names its seeds."""
    tests: dict[str, Any] = {}
    for split, group in splits.items():
        # runs evaluated before the chain likelihood existed have no chain ranks
        chain = "chain_rank" in _outcome_records(out, a, first_seed, split)[0]
        for metric in (HEADLINE, "likelihood_top1", *(["chain_top1"] if chain else [])):
            tests[f"{split}.{metric}"] = paired_test(out, fitted, a, b, split, group, metric)
    return tests


def paired_test(root: Path, fitted: dict[str, dict[str, list[int]]], a: str, b: str, split: str,
                group: str, metric: str) -> dict[str, Any]:  # fmt: skip
    """One paired test of :func:`_paired`: ``a`` - ``b`` on ``split`` by ``metric`` over the seeds
    both fitted ``group``, reading the records of the runs under ``root`` (an experiment's folder,
    or one laid out like it)."""
    seeds = sorted(set(fitted[a][group]) & set(fitted[b][group]))
    if not seeds:
        return {"n_seeds": 0, "seeds": []}
    return paired_comparison(
        _outcomes(root, a, seeds, split, metric), _outcomes(root, b, seeds, split, metric)
    ) | {"seeds": seeds}


def paired_by(root: Path, fitted: dict[str, dict[str, list[int]]], a: str, b: str,
              splits: dict[str, str], metric: str) -> dict[str, Any]:  # fmt: skip
    """:func:`paired_test` on every split of ``splits`` (split -> group) by one ``metric``."""
    return {f"{split}.{metric}": paired_test(root, fitted, a, b, split, group, metric)
            for split, group in splits.items()}  # fmt: skip


def fit_table(cfg: PersonDescriptionConfig, rows: list[dict[str, Any]], metric: str = HEADLINE,
              names: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Per model (``names``, default every one) and statement group, the seeds that fitted it,
    read by ``metric``."""
    task = task_for(cfg.run)
    return {
        name: {group: fitted_seeds(rows, name, splits,
                                   trains_mirror(cfg.run_config(name, cfg.seeds[0])), metric)
               for group, splits in task.fit.items()}
        for name in (cfg.model_names() if names is None else names)
    }  # fmt: skip


def compare_families(out: Path, cfg: PersonDescriptionConfig,
                     fitted: dict[str, dict[str, list[int]]]) -> dict[str, Any]:  # fmt: skip
    """Paired MDM-vs-ARM tests per reverse split and metric (effect = MDM - ARM)."""
    if not {"mdm", "arm"} <= set(cfg.families):
        return {}
    return _paired(out, fitted, "mdm", "arm", task_for(cfg.run).compared, cfg.seeds[0])


def compare_variants(out: Path, cfg: PersonDescriptionConfig,
                     fitted: dict[str, dict[str, list[int]]]) -> dict[str, Any]:  # fmt: skip
    """Per variant, its paired tests against the MDM (effect = variant - MDM) on the task's
    forward splits of :attr:`Task.variant_compared` and its reverse splits."""
    splits = variant_splits(cfg)
    return {name: _paired(out, fitted, name, "mdm", splits, cfg.seeds[0]) for name in cfg.variants}


def variant_splits(cfg: PersonDescriptionConfig) -> dict[str, str]:
    """The splits a variant is compared on (split -> statement group): the task's forward splits
    of :attr:`Task.variant_compared` and its reverse splits."""
    task = task_for(cfg.run)
    group_of = {forward: group for group, (forward, _) in task.fit.items()}
    return {s: group_of[s] for s in task.variant_compared} | task.compared


def compare_variants_with_arm(out: Path, cfg: PersonDescriptionConfig,
                              fitted: dict[str, dict[str, list[int]]]) -> dict[str, Any]:  # fmt: skip
    """Per autoregressive variant (masked-AR: an ARM trained on masked inputs), its paired tests
    against the plain ARM as well (effect = variant - ARM), on the same splits as
    :func:`compare_variants`: what the variant changes holding the causal model fixed."""
    if "arm" not in cfg.families:
        return {}
    splits = variant_splits(cfg)
    return {name: _paired(out, fitted, name, "arm", splits, cfg.seeds[0]) for name in cfg.variants
            if cfg.run_config(name, cfg.seeds[0]).model.causal}  # fmt: skip
