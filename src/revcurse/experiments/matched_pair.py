"""One set of weights, two families: the matched pair (#32).

The paper compares LLaDA-8B with Llama-3.1-8B, models of different data, tokenizer and training,
so the family difference is confounded with everything else. Here one Llama-architecture
checkpoint (by default SmolLM2-135M-Instruct, ``revcurse models get``) is fine-tuned twice per
seed with the same LoRA, facts, steps and evaluation:

* as an ARM (family ``llama``): causal attention, the next-token loss on the answer;
* as an MDM (family ``llama-a2d``): the same weights read with attention both ways, a borrowed
  mask token and Dream's shifted logits (:data:`revcurse.models.hf.FAMILIES`), trained with
  LLaDA's SFT loss (the answer masked at rate t, Eq. 5), decoded by LLaDA's sampler and ranked
  by the Monte-Carlo likelihood bound; dllm's AR-to-diffusion ("A2D") conversion, without its
  continued pre-training.

The two differ in the attention mask, the objective and the decoding, and in nothing else. Each
run is an ordinary fine-tune run (:func:`~revcurse.experiments.finetune.run_finetune`), in
``out/models/<family>-seed<s>/``, resumable. The summary reads fit first, by generation and by
likelihood rank separately: a seed's model has fitted when its forward (trained) split after
fine-tuning reaches :data:`~revcurse.experiments.from_scratch.FIT` by that reading (generation,
likelihood rank, chain rank: :data:`READINGS`). A converted
model that never learned to denoise may fit nothing; then its reverse is not read. The reverse
splits are compared A2D − ARM paired by (seed, query) over the seeds both fitted
(:func:`~revcurse.stats.paired_comparison`), and also over every seed, marked as such.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.config import MatchedPairConfig
from revcurse.errors import RevcurseError
from revcurse.experiments.executor import wall_over_sittings
from revcurse.experiments.finetune import run_finetune
from revcurse.experiments.from_scratch import FIT, HEADLINE, OUTCOMES
from revcurse.experiments.rundir import start_experiment
from revcurse.files import model_dir
from revcurse.metrics import cue_metrics, word_cue
from revcurse.stats import aggregate, decision, paired_comparison

READINGS = {"generation": HEADLINE, "rank": "likelihood_top1", "chain": "chain_top1"}
"""The three readings of an answer: the generation starts with it (``prefix``); it ranks first
among the candidates by likelihood (the A2D's by the Monte-Carlo bound); it ranks first by the
chain likelihood (the A2D's answer unmasked one token at a time; the ARM's exact likelihood
again)."""


QUERY_SETS = {"every query": "comparison", "no shared word": "comparison_uncued"}
"""The reverse tests' two query sets (summary keys): every query, and those whose answer is not
the only candidate sharing a word with them (:func:`~revcurse.metrics.word_cue`)."""


def run_config(cfg: MatchedPairConfig, family: str, seed: int):
    """The fine-tune settings of one run: the shared ones with the family and seed set."""
    base = cfg.finetune
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, family=family),
        train=dataclasses.replace(base.train, seed=seed),
    )  # fmt: skip


def quick(cfg: MatchedPairConfig) -> MatchedPairConfig:
    """``--quick``: one seed, 32 training facts, 40 steps, 16 queries per split."""
    base = cfg.finetune
    base = dataclasses.replace(
        base, data=dataclasses.replace(base.data, max_train=32, max_eval=16),
        train=dataclasses.replace(base.train, steps=40, checkpoint_every=20),
    )  # fmt: skip
    return dataclasses.replace(cfg, finetune=base, seeds=cfg.seeds[:1])


def run_matched_pair(
    cfg: MatchedPairConfig,
    out: str | Path,
    *,
    command: str = "(library call)",
    progress: bool = True,
    force: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune every (family, seed) run (finished runs are kept, interrupted ones resume from
    their last checkpoint), then write ``summary.json`` and ``report.md``."""
    if not cfg.finetune.model.path:
        raise RevcurseError("finetune.model.path: expected a Llama-architecture checkpoint (a "
                            "folder, a hub id or a .gguf file; `revcurse models get "
                            "smollm2-135m-instruct` prints one)")  # fmt: skip
    for family in cfg.families:  # bad settings fail before any write
        run_config(cfg, family, cfg.seeds[0]).validate("matched-pair")
    from revcurse.models.gguf import resolve_model_path
    from revcurse.models.hf import load_tokenizer

    # the MDM borrows its [MASK] from the tokenizer: a tokenizer with none fails here, not after
    # the ARM's runs
    load_tokenizer(cfg.families[1], resolve_model_path(cfg.finetune.model.path))
    out = start_experiment(out, cfg, command, force, resume)
    start = time.perf_counter()
    times: dict[str, float] = {}
    for seed in cfg.seeds:
        for family in cfg.families:
            run = model_dir(out, family, seed)
            if (run / "summary.json").is_file():
                continue
            began = time.perf_counter()
            again = (run / "checkpoints" / "last.safetensors").is_file()
            run_finetune(run_config(cfg, family, seed), run, command=command, progress=progress,
                         resume=again, force=not again and run.exists())  # fmt: skip
            times[f"{family}-seed{seed}"] = time.perf_counter() - began
    summary = summarise(out, cfg)
    previous = files.read_json(out / "timings.json") if (out / "timings.json").is_file() else {}
    files.write_json(out / "timings.json", {
        "wall_seconds": wall_over_sittings(out / "timings.json", start, resume),
        "runs": previous.get("runs", {}) | times,
        # each run's own record: training, and evaluation before and after it (a run resumed
        # across sittings counts its last sitting's training only)
        "run_timings": {
            f"{family}-seed{seed}": files.read_json(model_dir(out, family, seed) / "timings.json")
            for seed in cfg.seeds for family in cfg.families
        },
    })  # fmt: skip
    write_report(out, summary)
    return summary


def _records(
    out: Path, family: str, seed: int, split: str, stage: str = "after"
) -> list[dict[str, Any]]:
    return files.read_jsonl(model_dir(out, family, seed) / "generations" / stage / f"{split}.jsonl")


def summarise(out: Path, cfg: MatchedPairConfig) -> dict[str, Any]:
    """Rows (family, seed, each split's metrics before and after), fit per reading, and the
    paired A2D − ARM tests on each reverse split per reading."""
    rows, directions, shares = [], {}, {}
    records: dict[tuple[str, int, str, str], list[dict[str, Any]]] = {}  # each file read once
    for family in cfg.families:
        for seed in cfg.seeds:
            s = files.read_json(model_dir(out, family, seed) / "summary.json")
            row: dict[str, Any] = {"family": family, "seed": seed}
            for stage in ("before", "after"):
                for split, m in s[stage].items():
                    directions[split] = m["direction"]
                    for metric in ("exact", HEADLINE, "likelihood_top1", "chain_top1"):
                        if metric in m:
                            row[f"{stage}.{split}.{metric}"] = m[metric]
                    records[family, seed, stage, split] = _records(out, family, seed, split, stage)
                    # the ranks apart where a shared word gives the answer away, from the
                    # records (runs older than metrics.cue_metrics lack them in their summary)
                    cues = cue_metrics(records[family, seed, stage, split])
                    shares[split] = cues.pop("cued_share")
                    row |= {f"{stage}.{split}.{k}": v for k, v in cues.items() if v is not None}
            row["n"] = {split: m["n"] for split, m in s["after"].items()}
            chance = {split: m["chance_top1"] for split, m in s["after"].items()}
            rows.append(row)
    forward = [s for s, d in directions.items() if d == "forward"]
    reverse = [s for s, d in directions.items() if d == "reverse"]
    fitted = {
        reading: {f: [r["seed"] for r in rows if r["family"] == f
                      and all(r[f"after.{s}.{metric}"] >= FIT for s in forward)]
                  for f in cfg.families}
        for reading, metric in READINGS.items()
    }  # fmt: skip
    metrics = [k for k in rows[0] if k not in ("family", "seed", "n")]
    # The same tests on the queries no shared word gives away: every run asks the same queries
    # of the same candidates, so they are the same queries in every run.
    tests: dict[str, Any] = {}
    uncued: dict[str, Any] = {}
    mdm, arm = cfg.families[1], cfg.families[0]
    for split in reverse:
        asked = records[arm, cfg.seeds[0], "after", split]
        keep = [not word_cue(r["prompt"], r["candidates"], r.get("suffix", "")) for r in asked]
        for reading, metric in READINGS.items():
            for over, seeds in (("fitted", sorted(set(fitted[reading][mdm]) &
                                                  set(fitted[reading][arm]))),
                                ("all", list(cfg.seeds))):  # fmt: skip
                key = f"{split}.{reading}.{over}"
                if not seeds:
                    tests[key] = uncued[key] = {"n_seeds": 0, "seeds": []}
                    continue
                a, b = ([[float(OUTCOMES[metric](r)) for r in records[f, s, "after", split]]
                         for s in seeds] for f in (mdm, arm))  # fmt: skip
                test = paired_comparison(a, b)
                tests[key] = test | {"seeds": seeds, "decision": decision(test)}
                if any(keep):
                    a, b = ([[x for x, k in zip(row, keep, strict=True) if k] for row in side]
                            for side in (a, b))  # fmt: skip
                    test = paired_comparison(a, b)
                    uncued[key] = test | {"seeds": seeds, "decision": decision(test)}
    summary = {
        "experiment": "matched-pair",
        "model_path": cfg.finetune.model.path,
        "families": cfg.families,
        "seeds": cfg.seeds,
        "directions": directions,
        "chance_top1": chance,  # per split; every run asks the same queries of the same candidates
        "cued_share": shares,  # per split: the queries whose answer alone shares a word with them
        "rows": rows,
        "aggregate": {
            f: aggregate([r for r in rows if r["family"] == f], metrics) for f in cfg.families
        },  # fmt: skip
        "fit": {"threshold": FIT, "readings": READINGS, "splits": forward, "fitted_seeds": fitted},
        "comparison": tests,
        "comparison_uncued": uncued,
    }
    files.write_json(out / "summary.json", summary)
    return summary


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """``report.md``: per family and split the metrics before and after (mean ± sd over seeds),
    the seeds that fitted by each reading, and the paired tests."""
    from revcurse.report.figures import before_and_after
    from revcurse.report.render import Figure, Heading, Para, Table, to_markdown
    from revcurse.stats import comparison_cells

    def pm(agg: dict[str, Any], key: str) -> str:
        return f"{agg[key]['mean']:.3f} ± {agg[key]['std']:.3f}" if key in agg else "n/a"

    rows = []
    for family in summary["families"]:
        agg = summary["aggregate"][family]
        for split, direction in summary["directions"].items():
            rows.append([family, f"{split} ({direction})",
                         *(pm(agg, f"{stage}.{split}.{metric}")
                           for stage in ("before", "after")
                           for metric in (HEADLINE, "likelihood_top1", "chain_top1"))])  # fmt: skip
    cue_rows = [
        [family, split, *(pm(summary["aggregate"][family], f"after.{split}.{metric}_{kind}")
                          for metric in ("likelihood_top1", "chain_top1")
                          for kind in ("cued", "uncued"))]
        for family in summary["families"] for split in summary["directions"]
    ]  # fmt: skip
    fit = summary["fit"]
    fitted = [[reading, *(f"{len(fit['fitted_seeds'][reading][f])}/{len(summary['seeds'])}"
                          for f in summary["families"])] for reading in fit["readings"]]  # fmt: skip
    tests = []
    for queries, comparison in QUERY_SETS.items():
        for key, t in summary[comparison].items():
            split, reading, over = key.split(".")
            if not t.get("seeds"):
                tests.append([split, reading, queries, over, "no seed", "", "", "", ""])
                continue
            tests.append([split, reading, queries, over, ",".join(map(str, t["seeds"])),
                          *comparison_cells(t)[:3], t["decision"]])  # fmt: skip
    mdm, arm = summary["families"][1], summary["families"][0]
    blocks = [
        Para(f"One checkpoint ({summary['model_path']}) fine-tuned with LoRA as an ARM ({arm}) "
             f"and as an MDM ({mdm}), seeds {summary['seeds']}: same facts, steps and "
             "evaluation. prefix: the generation starts with the answer; likelihood top-1: the "
             "answer ranks first among the candidates (the MDM's by the Monte-Carlo bound); "
             "chain top-1: first by the chain likelihood (the MDM's answer unmasked a token at "
             "a time; the ARM's exact likelihood again)."),
        Table(["family", "split", "prefix, before", "likelihood top-1, before",
               "chain top-1, before", "prefix, after", "likelihood top-1, after",
               "chain top-1, after"], rows),
        Heading("Fit first"),
        Para(f"A seed's model has fitted when every forward (trained) split reaches "
             f"{fit['threshold']} after fine-tuning, by generation (prefix), by rank "
             "(likelihood top-1) or by chain rank, each reading on its own."),
        Table(["reading", *summary["families"]], fitted),
        Heading("Named by a shared word, and the rest"),
        Para("The ranks after fine-tuning apart on the queries whose answer is the only "
             "candidate sharing a word with them (a surname, on Parent–Child: a rank won there "
             "may read the name, not the fact) and on the rest; share of such queries: "
             + ", ".join(f"{k} {v:.2f}" for k, v in summary["cued_share"].items()) + "."),
        Table(["family", "split", "rank, cued", "rank, the rest", "chain rank, cued",
               "chain rank, the rest"], cue_rows),
        Heading(f"{mdm} − {arm} on the reverse splits"),
        Para("Paired by seed and query, over the seeds where both fitted by that reading "
             "(fitted) and over every seed (all: a gap between models that did not fit their "
             "facts is not a reversal result)."),
        Table(["split", "reading", "queries", "seeds over", "seeds", "difference",
               "95% interval", "p", "decision"], tests),
    ]  # fmt: skip
    figure = before_and_after(summary["rows"], summary["families"], summary["fit"]["readings"],
                              list(summary["directions"]), out / "figures" / "readings.png",
                              chance=max(summary["chance_top1"].values()))  # fmt: skip
    caption = ("Each reading per family and split, before (pale) and after (solid) fine-tuning: "
               "bars the seed means, dots the seeds.")  # fmt: skip
    blocks.insert(2, Figure(figure, caption))
    files.write_text(out / "report.md", to_markdown("The matched pair", blocks, out))
