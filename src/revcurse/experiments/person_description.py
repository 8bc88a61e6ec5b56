"""``revcurse reproduce person-description``: from-scratch MDMs vs ARMs on Person–Description.

Berglund et al.'s Experiment 1 data, trained from scratch instead of fine-tuned (arXiv 2602.02133
runs its natural-language comparison the same way at small scale): a multi-layer bidirectional
Transformer with the masked-diffusion loss (MDM) and the same Transformer, causal, with the
next-token loss (ARM), pre-trained on the whole statements of ``all_prompts_train.jsonl`` (each
``[BOS] statement [EOS]``, word vocabulary), several seeds each. Every model is evaluated on

* the **training templates** (``*_train`` splits, :func:`training_template_splits`): the same
  direction (memorisation) and the reverse direction written in templates the model has read;
* the **held-out templates** of the released test files (10 templates never trained on),
  reported separately: a word-level model trained from scratch has never seen their wording;

with prefix / substring / exact match of the MDM sampler's or the ARM's greedy generations and the
likelihood rank of the right answer among 9 other people's (decoding-free). The attention and
gradient probes of :mod:`revcurse.probes.hf` run on (p2d same, p2d reverse) training-template pairs,
whose entities are multi-token names and descriptions, before and after training.

Models are trained in parallel worker processes by the sweep executor; each run writes its own
directory (config, metrics, probes, generations, safetensors weights, summary).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from revcurse import files, training
from revcurse.config import PersonDescriptionConfig, TextRunConfig, dump_yaml, to_dict
from revcurse.data.person_description import (
    TESTS,
    TRAIN_TEMPLATE_SPLITS,
    load_person_description,
    people,
    training_statements,
    training_template_splits,
)
from revcurse.data.schema import TextPair, mirror_query
from revcurse.data.text import TextBatch, WordTokenizer, encode_pairs, pad_with_eos
from revcurse.errors import RevcurseError
from revcurse.evaluation import evaluate_split, save_generations
from revcurse.experiments.executor import Outcome, guarded, train_families
from revcurse.experiments.rundir import start_experiment
from revcurse.models.transformer import TransformerLM
from revcurse.objectives import run_loss, text_objective
from revcurse.probes.hf import TextProbeRunner, encode_facts, paired_queries, probe_summary
from revcurse.probes.inputs import pairings_for
from revcurse.repro import seed_everything, write_provenance
from revcurse.stats import aggregate, paired_comparison

HELD_OUT = ("p2d_same", "p2d_reverse", "d2p_same", "d2p_reverse")
MIRRORS = {"p2d_mirror_train": ("p2d_same_train", "p2d_reverse_train"),
           "d2p_mirror_train": ("d2p_same_train", "d2p_reverse_train")}  # fmt: skip
"""Mirror split -> (the forward split whose statements it masks, the reverse split it mirrors):
``p2d_mirror_train`` asks "[M..M], known for being {D}." -> name, the reverse answer of
``p2d_reverse_train`` in the configuration the MDM trained on (bidirectional models only)."""
SPLITS: dict[str, str] = (
    dict(TRAIN_TEMPLATE_SPLITS) | dict.fromkeys(MIRRORS, "mirror")
    | {s: TESTS[s][1] for s in HELD_OUT}
)  # fmt: skip
"""Every evaluated split and its direction (forward = the trained one)."""
HEADLINE = "prefix"
"""Berglund's metric: the generation starts with the answer (names are followed by template text)."""


def _spread(pairs: list[TextPair], n: int) -> list[TextPair]:
    """``n`` queries evenly spaced over the split (so every person and many templates appear)."""
    if n == 0 or len(pairs) <= n:
        return list(pairs)
    return [pairs[(i * len(pairs)) // n] for i in range(n)]


def build_data(cfg: TextRunConfig) -> tuple[list[TextPair], dict[str, list[TextPair]]]:
    """Training statements of the first ``n_people`` of each group, and the evaluation splits
    (about those people only), each cut to ``max_eval`` evenly spread queries."""
    dataset = load_person_description()
    statements = training_statements(n_people=cfg.n_people)
    kept = {p.name for g in people().values() for p in g[: cfg.n_people]}
    splits = training_template_splits(n_people=cfg.n_people)
    for name in HELD_OUT:
        splits[name] = [p for p in dataset.tests[name] if any(n in p.prompt + p.completion
                                                               for n in kept)]  # fmt: skip
    splits = {k: _spread(v, cfg.max_eval) for k, v in splits.items()}
    for name, (forward, reverse) in MIRRORS.items():
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
    cfg: TextRunConfig, statements: list[TextPair], tokenizer: WordTokenizer
) -> TextBatch:
    """The statements as ``[BOS] statement`` rows whose ``answer_mask`` is what the MDM may mask:
    the whole statement (``train.maskable: all``, the pre-training loss) or only its completion
    (``answer``: the prompt part stays visible, the SFT loss). The MDM's rows are then filled with
    EOS to ``max_seq_len`` (maskable, so it learns to end its answers). An ARM's next-token loss
    reads every statement token either way."""
    causal = cfg.model.causal
    if cfg.train.maskable == "all" or causal:
        statements = [TextPair("", s.prompt + s.completion) for s in statements]
    data = encode_pairs(tokenizer, statements, bos=True)
    if not causal:
        data = pad_with_eos(data, cfg.model.max_seq_len, tokenizer.eos_id)
    return data


def train_run(
    cfg: TextRunConfig, out: Path, command: str = "(library call)", resume: bool = True
) -> dict[str, Any]:
    """Train, evaluate and probe one from-scratch model; writes its run directory (``resume``:
    continue from its last checkpoint when it holds one of exactly this config)."""
    torch.set_num_threads(cfg.train.threads)
    prepared = prepare(cfg)
    statements, splits, tokenizer = prepared.statements, prepared.splits, prepared.tokenizer
    gen_lengths = prepared.gen_lengths
    out.mkdir(parents=True, exist_ok=True)
    resuming = resume and training.check_resumable(out, cfg, require_checkpoint=False)
    files.remove_temporaries(out)
    if not resuming:
        write_provenance(out, dump_yaml(cfg), command)
    causal = cfg.model.causal
    seed_everything(cfg.train.seed)
    model = TransformerLM(cfg.model, len(tokenizer))
    data = training_batch(cfg, statements, tokenizer)
    fill_to = None if causal else cfg.model.max_seq_len
    facts = encode_facts(
        tokenizer,
        paired_queries(splits["p2d_same_train"], splits["p2d_reverse_train"], cfg.probe.n_facts),
        pairings_for(causal),
        bos=True,
        fill=None if fill_to is None else (tokenizer.eos_id, fill_to),  # as in training
    )
    probes = TextProbeRunner(model, facts, out / "probes.jsonl", causal=causal,
                             mask_id=tokenizer.mask_id, every=cfg.probe.every,
                             enabled=cfg.probe.enabled)  # fmt: skip
    if resuming:
        probes.truncate(training.read_step(out / "checkpoints" / "last.safetensors"))
    else:
        probes.start()
        probes(0)
    loss = run_loss(text_objective(causal), tokenizer.mask_id, eps=cfg.train.diffusion_eps)
    meta = {"config": json.dumps(to_dict(cfg)), "vocab": json.dumps(tokenizer.vocab.tokens)}
    fitted = training.fit(
        model, data, loss, cfg.train, out=out, meta=meta, resume=resuming,
        accelerator=training.make_accelerator("cpu"),
        on_step=lambda done: probes(done) if probes.due(done) else None,
    )  # fmt: skip
    after = probes(cfg.train.steps)
    start = time.perf_counter()
    results = {}
    gen = torch.Generator().manual_seed(cfg.train.seed)
    for name, pairs in splits.items():
        if causal and SPLITS[name] == "mirror":
            continue  # a causal model cannot be asked to fill text before its context
        settings = dataclasses.replace(cfg.eval, gen_length=gen_lengths[name])
        metrics, records = evaluate_split(
            model, tokenizer, pairs, causal, settings, gen, bos=True,
            eos_fill_to=fill_to,
        )  # fmt: skip
        save_generations(out / "generations" / f"{name}.jsonl", records)
        results[name] = metrics
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
        "probes": {"before": probe_summary(probes.at(0)), "after": probe_summary(after)},
        "train_seconds": fitted.seconds,
        "eval_seconds": time.perf_counter() - start,
    }  # fmt: skip
    files.write_json(out / "summary.json", summary)
    (out / "checkpoints" / "last.safetensors").unlink(missing_ok=True)  # the run is complete
    return summary


def execute_run(cfg: TextRunConfig, run_dir: str, command: str, progress: bool = False) -> Outcome:
    """The executor's worker: one run, its failure recorded rather than raised."""
    return guarded(lambda path: train_run(cfg, path, command), run_dir)


def quick(cfg: PersonDescriptionConfig) -> PersonDescriptionConfig:
    """``--quick``: 5 people per group, 1500 steps, 30 queries per split."""
    run = dataclasses.replace(
        cfg.run, n_people=5, max_eval=30,
        train=dataclasses.replace(cfg.run.train, steps=1500),
    )  # fmt: skip
    return dataclasses.replace(cfg, run=run)


def run_person_description(
    cfg: PersonDescriptionConfig,
    out: str | Path,
    *,
    command: str = "(library call)",
    progress: bool = True,
    force: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Train every (family, seed) model, then aggregate and write the report (``resume``:
    continue an interrupted run of it in ``out``)."""
    from revcurse.report.person_description import write_report

    prepare(cfg.run_config(cfg.families[0], cfg.seeds[0]))  # bad settings fail before any write
    out = start_experiment(out, cfg, command, force, resume)
    start = time.perf_counter()
    summaries = train_families(out, cfg, "person-description", command, progress,
                               worker=execute_run)  # fmt: skip
    rows = []
    for s in summaries:
        row = {"family": s["family"], "seed": s["seed"], "final_loss": s["final_loss"]}
        for split, m in s["splits"].items():
            for metric in ("prefix", "substring", "exact", "likelihood_top1"):
                row[f"{split}.{metric}"] = m[metric]
        for stage in ("before", "after"):
            p = s["probes"][stage]
            for pairing, q in (p or {}).items():
                row[f"probe.{stage}.{pairing}.cos_pair_rev"] = q["cos_pair_rev_mean"]
                for layer, r in q["attention_r_mean"].items():
                    row[f"probe.{stage}.{pairing}.attention_r.layer{layer}"] = r
        rows.append(row)
    metrics = [k for k in rows[0] if k not in ("family", "seed")]
    summary = {
        "experiment": "person-description",
        "n_statements": summaries[0]["n_statements"],
        "splits": SPLITS,
        "headline_metric": HEADLINE,
        "chance_top1": summaries[0]["splits"]["p2d_reverse"]["chance_top1"],
        "rows": rows,
        "aggregate": {
            f: aggregate([r for r in rows if r["family"] == f], metrics) for f in cfg.families
        },
        "comparison": compare_families(out, cfg),
    }
    files.write_json(out / "summary.json", summary)
    files.write_json(out / "timings.json", {"wall_seconds": time.perf_counter() - start})
    write_report(out, cfg, summary)
    return summary


COMPARED = ("p2d_reverse_train", "p2d_reverse", "d2p_reverse_train", "d2p_reverse")
"""The reverse splits on which the MDM-vs-ARM gap is tested."""


def compare_families(out: Path, cfg: PersonDescriptionConfig) -> dict[str, Any]:
    """Paired MDM-vs-ARM tests per reverse split and metric (generation prefix match, likelihood
    top-1): the two models of each seed on the same query (same candidates), from the saved
    per-query records."""
    if not {"mdm", "arm"} <= set(cfg.families):
        return {}

    def outcomes(family: str, split: str, metric: str) -> list[list[float]]:
        per_seed = []
        for seed in cfg.seeds:
            path = out / "models" / f"{family}-seed{seed}" / "generations" / f"{split}.jsonl"
            records = files.read_jsonl(path)
            per_seed.append([float(r["prefix"] if metric == "prefix" else r["rank"] == 1)
                             for r in records])  # fmt: skip
        return per_seed

    return {
        f"{split}.{metric}": paired_comparison(
            outcomes("mdm", split, metric), outcomes("arm", split, metric)
        )
        for split in COMPARED
        for metric in (HEADLINE, "likelihood_top1")
    }
