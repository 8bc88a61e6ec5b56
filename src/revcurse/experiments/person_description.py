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
from collections.abc import Callable
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

    for name in cfg.model_names():  # bad settings fail before any write
        prepare(cfg.run_config(name, cfg.seeds[0]))
    out = start_experiment(out, cfg, command, force, resume)
    start = time.perf_counter()
    summaries = train_families(out, cfg, "person-description", command, progress,
                               worker=execute_run)  # fmt: skip
    rows = []
    names = [name for name in cfg.model_names() for _ in cfg.seeds]  # train_families' order
    for name, s in zip(names, summaries, strict=True):
        # "family": the model's name in this experiment (mdm, arm or a variant)
        row = {"family": name, "seed": s["seed"], "final_loss": s["final_loss"]}
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
    fitted = fit_table(cfg, rows)
    summary = {
        "experiment": "person-description",
        "n_statements": summaries[0]["n_statements"],
        "splits": SPLITS,
        "headline_metric": HEADLINE,
        "chance_top1": summaries[0]["splits"]["p2d_reverse"]["chance_top1"],
        "rows": rows,
        "aggregate": {
            f: aggregate([r for r in rows if r["family"] == f], metrics) for f in cfg.model_names()
        },
        "fit": {
            "threshold": FIT,
            "metric": HEADLINE,
            "splits": FIT_SPLITS,
            "trains_mirror": {
                name: trains_mirror(cfg.run_config(name, cfg.seeds[0]))
                for name in cfg.model_names()
            },
            "fitted_seeds": fitted,
        },
        "comparison": compare_families(out, cfg, fitted),
        "variant_comparison": compare_variants(out, cfg, fitted),
        "probe_curves": probe_curves(out, cfg),
    }
    files.write_json(out / "summary.json", summary)
    files.write_json(out / "timings.json", {"wall_seconds": time.perf_counter() - start})
    write_report(out, cfg, summary)
    return summary


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and v == v]  # NaN: a head constant over facts
    return sum(finite) / len(finite) if finite else None


def _third(p: dict[str, Any], t: int, key: str) -> float | None:
    """Group ``t`` (near, middle, far) of :func:`~revcurse.probes.hf.attention_coupling`'s
    ``r_by_distance``: its correlation (mean over layers and heads) or its mean distance."""
    groups = p["attention"].get("r_by_distance", [])
    if len(groups) != 3:  # too few facts, or a record written before distances were kept
        return None
    if key == "r":
        return _mean(list(groups[t]["r_mean"].values()))
    return _mean(groups[t]["distance"])


THIRDS = ("near", "middle", "far")
CURVES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "attention_r": lambda p: _mean(list(p["attention"]["r_mean"].values())),
    **{
        f"attention_r_{label}": (lambda p, t=t: _third(p, t, "r")) for t, label in enumerate(THIRDS)
    },
    **{f"distance_{label}": (lambda p, t=t: _third(p, t, "d")) for t, label in enumerate(THIRDS)},
    "cos_pair_rev": lambda p: p["gradients"]["cos_pair_rev_mean"],
    "cos_pair_rev_storage": lambda p: _mean(p["gradients"]["cos_pair_rev_groups"]["storage"]),
    "cos_pair_rev_routing": lambda p: _mean(p["gradients"]["cos_pair_rev_groups"]["routing"]),
}
"""What :func:`probe_curves` follows over training, read from one pairing of a probe record:
attention correlation (mean over layers and heads), the same within the nearest, middle and
furthest third of the facts by total relative distance of the entity spans (with each third's
mean distance), and the gradient cosine of the paired and the reverse query (all parameters,
storage and routing parts)."""


def probe_curves(out: Path, cfg: PersonDescriptionConfig) -> dict[str, Any]:
    """Per model and pairing, each of :data:`CURVES` at every step all its seeds probed, mean over
    seeds; models without probes are left out."""
    curves: dict[str, Any] = {}
    for name in cfg.model_names():
        runs = []
        for seed in cfg.seeds:
            path = out / "models" / f"{name}-seed{seed}" / "probes.jsonl"
            runs.append({r["step"]: r for r in files.read_jsonl(path)} if path.exists() else {})
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        if not steps:
            continue
        curves[name] = {
            "steps": steps,
            "pairings": {
                pairing: {
                    key: [
                        _mean([read(r[step]["pairings"][pairing]) for r in runs]) for step in steps
                    ]  # fmt: skip
                    for key, read in CURVES.items()
                }
                for pairing in runs[0][steps[0]]["pairings"]
            },
        }
    return curves


FIT = 0.95
"""Fitted: the training-template queries a model was trained on (forward; for the MDM also the
mirror) answered at least this often (prefix match) by one seed's model."""
FIT_SPLITS = {"p2d": ("p2d_same_train", "p2d_mirror_train"),
              "d2p": ("d2p_same_train", "d2p_mirror_train")}  # fmt: skip
"""Per statement group, the splits that must be fitted before its reverse splits are read."""
COMPARED = ("p2d_reverse_train", "p2d_reverse", "d2p_reverse_train", "d2p_reverse")
"""The reverse splits on which the MDM-vs-ARM gap is tested."""
VARIANT_COMPARED = ("p2d_same_train", *COMPARED)
"""A variant is compared with the MDM on the reverse splits and on the forward split it has to
fit first (a masking choice may change what the model memorises)."""


def trains_mirror(run: TextRunConfig) -> bool:
    """Whether a model is trained on its mirror queries: an MDM that may mask the whole statement
    (with ``maskable: answer`` the prompt, and so the name of a p2d statement, is never masked)."""
    return not run.model.causal and run.train.maskable == "all"


def fitted_seeds(rows: list[dict[str, Any]], name: str, group: str, mirror: bool) -> list[int]:
    """The seeds whose model ``name`` fitted statement group ``group``: its forward split and,
    where the model trains on it (``mirror``), its mirror split (:data:`FIT_SPLITS`)."""
    forward, mirrored = FIT_SPLITS[group]
    needed = (forward, mirrored) if mirror else (forward,)
    return [
        r["seed"] for r in rows
        if r["family"] == name and all(r[f"{split}.{HEADLINE}"] >= FIT for split in needed)
    ]  # fmt: skip


def _outcomes(out: Path, name: str, seeds: list[int], split: str,
              metric: str) -> list[list[float]]:  # fmt: skip
    """Per seed, model ``name``'s per-query outcomes on ``split`` (1/0: the generation starts with
    the answer, or the answer ranks first by likelihood), from the saved records."""
    per_seed = []
    for seed in seeds:
        path = out / "models" / f"{name}-seed{seed}" / "generations" / f"{split}.jsonl"
        records = files.read_jsonl(path)
        per_seed.append([float(r["prefix"] if metric == "prefix" else r["rank"] == 1)
                         for r in records])  # fmt: skip
    return per_seed


def _paired(out: Path, fitted: dict[str, dict[str, list[int]]], a: str, b: str,
            splits: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """Model ``a`` vs model ``b``: the paired test per split and metric (generation prefix match,
    likelihood top-1) over the seeds where both models fitted the split's statement group
    (``fitted``: model -> group -> seeds, as :func:`fitted_seeds`; the
    two models of a seed answer the same queries, with the same candidates). A split with no
    such seed gets ``{"n_seeds": 0}``; every test names its seeds."""
    tests: dict[str, Any] = {}
    for split in splits:
        group = split[:3]
        seeds = sorted(set(fitted[a][group]) & set(fitted[b][group]))
        for metric in (HEADLINE, "likelihood_top1"):
            key = f"{split}.{metric}"
            if not seeds:
                tests[key] = {"n_seeds": 0, "seeds": []}
                continue
            tests[key] = paired_comparison(
                _outcomes(out, a, seeds, split, metric), _outcomes(out, b, seeds, split, metric)
            ) | {"seeds": seeds}
    return tests


def fit_table(cfg: PersonDescriptionConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and statement group, the seeds that fitted it."""
    return {
        name: {group: fitted_seeds(rows, name, group,
                                   trains_mirror(cfg.run_config(name, cfg.seeds[0])))
               for group in FIT_SPLITS}
        for name in cfg.model_names()
    }  # fmt: skip


def compare_families(out: Path, cfg: PersonDescriptionConfig,
                     fitted: dict[str, dict[str, list[int]]]) -> dict[str, Any]:  # fmt: skip
    """Paired MDM-vs-ARM tests per reverse split and metric (effect = MDM - ARM)."""
    if not {"mdm", "arm"} <= set(cfg.families):
        return {}
    return _paired(out, fitted, "mdm", "arm", COMPARED)


def compare_variants(out: Path, cfg: PersonDescriptionConfig,
                     fitted: dict[str, dict[str, list[int]]]) -> dict[str, Any]:  # fmt: skip
    """Per variant, its paired tests against the MDM (effect = variant - MDM) on the forward split
    and the reverse splits."""
    return {name: _paired(out, fitted, name, "mdm", VARIANT_COMPARED) for name in cfg.variants}
