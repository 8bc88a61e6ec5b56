"""``revcurse finetune``: LoRA fine-tuning of a Hugging Face MDM or ARM on a reversal dataset.

The large-scale experiment of arXiv 2602.02133 (Sec. 5): fine-tune LLaDA / Dream (MDMs) and Llama /
Qwen (ARMs) with LoRA on forward statements (Parent–Child, Person–Description, T-REx), then compare
forward and reverse accuracy; the later version also checks the one-layer signatures (attention
coupling, gradient alignment) in these models. Each run evaluates every test split before and
after fine-tuning (generations saved for re-scoring), probes before, during (``probe.every``) and
after, and saves the adapters in peft format.

It trains through the one loop (:func:`revcurse.training.fit`), so a run with
``train.checkpoint_every`` resumes exactly (``revcurse finetune --resume``).

Run directory: ``config.yaml``, ``command.txt``, ``env.json``, ``metrics.jsonl`` (loss, lr),
``probes.jsonl``, ``before.json`` and ``generations/{before,after}/<split>.jsonl``,
``checkpoints/last.safetensors`` (while it runs), ``adapter/``, ``summary.json``, ``report.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from revcurse import files, training
from revcurse.config import FinetuneConfig, dump_yaml, load_yaml, to_dict
from revcurse.data.schema import TextDataset, TextPair, named_entities
from revcurse.data.text import (
    TextBatch,
    WordTokenizer,
    encode_pairs,
    entity_units,
    in_chat_frame,
    pad_with_eos,
)
from revcurse.data.text_datasets import load_text_dataset, probe_splits
from revcurse.decoding import counting_rows
from revcurse.errors import RevcurseError
from revcurse.evaluation import Shard, evaluate_split, save_generations
from revcurse.experiments.rundir import prepare_out_dir
from revcurse.metrics import cue_metrics
from revcurse.models import hf
from revcurse.models.gguf import resolve_model_path
from revcurse.objectives import run_loss, text_objective
from revcurse.probes.hf import encode_facts, paired_queries, probeable, text_measure
from revcurse.probes.inputs import pairings_for
from revcurse.probes.runner import GRADIENT_PAIRS, ProbeRunner, summary_layers
from revcurse.repro import seed_everything, use_threads, write_provenance
from revcurse.stats import with_se
from revcurse.tracking import MetricsLog


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RevcurseError("model.device: cuda requested but no GPU is visible")
    return requested


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, requested)


def build_model(cfg: FinetuneConfig, texts: list[str], trust_remote_code: bool):
    """``(model, tokenizer)``: published weights, or a tiny random model + word tokenizer."""
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    if cfg.model.path:
        path = resolve_model_path(cfg.model.path)  # a .gguf file: its converted folder
        # Weights first: their checks (remote code, local directory) fail before any download.
        model = hf.load_pretrained(cfg.model.family, path, dtype, device, trust_remote_code)
        tokenizer = hf.load_tokenizer(
            cfg.model.family, path, trust_remote_code, chat=cfg.model.chat_template
        )
    else:
        tokenizer = WordTokenizer.fit(texts)
        m = cfg.model
        shape = hf.TinyShape(m.hidden_size, m.n_layers, m.n_heads, m.n_kv_heads,
                             m.intermediate_size)  # fmt: skip
        model = hf.build_tiny(cfg.model.family, len(tokenizer), shape, seed=cfg.train.seed)
        model = model.to(device=device, dtype=dtype)
    return model, tokenizer


def as_replies(tokenizer: Any, dataset: TextDataset, tests: dict[str, list[TextPair]],
               train_pairs: list[TextPair]):  # fmt: skip
    """With a tokenizer in chat mode, every answer as a chat reply (:func:`in_chat_frame`);
    otherwise the pairs as they are."""
    if getattr(tokenizer, "chat", None) is None:
        return dataset, tests, train_pairs
    dataset, train_pairs, *framed = in_chat_frame(dataset, train_pairs, *tests.values())
    return dataset, dict(zip(tests, framed, strict=True)), train_pairs


def load_tests(cfg: FinetuneConfig) -> tuple[TextDataset, dict[str, list[TextPair]]]:
    """The dataset and the test splits to evaluate (``data.splits``, ``data.max_eval``)."""
    dataset = load_text_dataset(cfg.data)
    splits = cfg.data.splits or list(dataset.tests)
    unknown = [s for s in splits if s not in dataset.tests]
    if unknown:
        raise RevcurseError(
            f"data.splits: unknown split {unknown[0]!r} of {dataset.name}; "
            f"expected some of {sorted(dataset.tests)}"
        )
    return dataset, {s: of_trained_facts(cfg, dataset, dataset.tests[s])[: cfg.data.max_eval or None]
                     for s in splits}  # fmt: skip


def of_trained_facts(cfg: FinetuneConfig, dataset: TextDataset,
                     pairs: list[TextPair]) -> list[TextPair]:  # fmt: skip
    """The queries of a test split asked about facts the run trains on: all of them, unless
    ``data.max_train`` cuts the training statements and the dataset names its facts (then a
    reverse query about an untrained fact, which would measure nothing, is left out). The
    candidates a query is ranked against are drawn from the same queries' answers: against the
    whole split's, the trained names would stand out as the only familiar ones (a child named
    in a trained prompt ranks first for any parent), a rank gain with no reversal in it."""
    trained = dataset.train[: cfg.data.max_train or None]
    if len(trained) == len(dataset.train) or not all(p.fact for p in [*trained, *pairs]):
        return pairs
    facts = {p.fact for p in trained}
    return [p for p in pairs if p.fact in facts]


def say_subsample(cfg: FinetuneConfig, dataset: TextDataset, tests: dict[str, list]) -> None:
    """Say on stderr when the splits evaluated are a subsample (``data.max_eval`` queries, and
    with ``data.max_train`` those about the trained facts; never silent), once the run has
    started: a refusal stays one line."""
    cut = {s: (len(kept), len(dataset.tests[s])) for s, kept in tests.items()
           if len(kept) < len(dataset.tests[s])}  # fmt: skip
    if cut:
        sizes = ", ".join(f"{s} {n:,} of {total:,}" for s, (n, total) in cut.items())
        trained = (f" about the {cfg.data.max_train:,} trained statements' facts"
                   if cfg.data.max_train and cfg.data.max_train < len(dataset.train) else "")  # fmt: skip
        first = f"the first {cfg.data.max_eval}" if cfg.data.max_eval else "every one of the"
        hint = "; --set data.max_eval=0 evaluates every query" if cfg.data.max_eval else ""
        print(f"evaluating {first} queries of each split{trained} ({sizes}{hint})",
              file=sys.stderr)  # fmt: skip


def vocabulary_texts(dataset: TextDataset, train_pairs: list[TextPair]) -> list[str]:
    """The texts a tiny model's word tokenizer is fitted on (a run rebuilt from its config gets
    the same vocabulary)."""
    texts = [p.prompt + p.completion for p in train_pairs]
    return texts + [p.prompt + a for ps in dataset.tests.values() for p in ps for a in p.answers]


def uses_bos(tokenizer: Any) -> bool:
    """Pretrained models saw BOS at the start of every document (Llama, LLaDA); Qwen has none."""
    return getattr(tokenizer, "bos_id", None) is not None


def probe_runner(cfg: FinetuneConfig, dataset: TextDataset, model: Any, tokenizer: Any,
                 out: Path, *, enabled: bool = True, keep: bool = False,
                 log: MetricsLog | None = None) -> ProbeRunner:  # fmt: skip
    """The probes of a Hugging Face model on the dataset's probe splits, paired by fact."""
    spec = model.spec
    fwd_split, rev_split = probe_splits(dataset, cfg.data.dataset)
    facts = encode_facts(
        tokenizer,
        paired_queries(dataset.tests[fwd_split], dataset.tests[rev_split], cfg.probe.n_facts),
        pairings_for(spec.causal),
        bos=uses_bos(tokenizer),
    )
    measure = text_measure(
        facts,
        causal=spec.causal,
        mask_id=tokenizer.mask_id,
        layers=cfg.probe.layers or None,
        attention=spec.records_scores,
    )
    return ProbeRunner(measure, out / "probes.jsonl", every=cfg.probe.every,
                       enabled=enabled and cfg.probe.enabled and probeable(facts),
                       keep=keep, log=log)  # fmt: skip


def evaluate_tests(cfg: FinetuneConfig, dataset: TextDataset, tests: dict[str, list[TextPair]],
                   model: Any, tokenizer: Any, generations: Path, shard: Shard | None = None,
                   progress: bool | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every test split by generation and likelihood (:func:`~revcurse.evaluation.evaluate_split`),
    one generator seeded by ``train.seed`` consumed split after split; generations saved under
    ``generations``. ``shard``: one of several processes, every one calling (each reads its
    share of the queries; the main one, ``rank`` 0, writes the records). ``progress``: show the
    bars (None: on a terminal only; True: in a log too, as a run's training bar is)."""
    from tqdm.auto import tqdm

    model.eval()
    gen = torch.Generator().manual_seed(cfg.train.seed)
    results = {}
    # queries done, split by split, with tqdm's rate and time left
    shown = None if progress is None else not progress
    bar = tqdm(total=sum(len(p) for p in tests.values()), desc=f"evaluate {generations.name}",
               unit="query", disable=shown, leave=False, mininterval=2.0)  # fmt: skip
    # inside a split, the sequences its likelihoods read (an MDM's Monte-Carlo bound reads
    # n_mc rows per candidate: minutes on a CPU), with their rate
    rows = tqdm(desc="  scoring", unit="row", disable=shown, leave=False, position=1,
                mininterval=2.0)  # fmt: skip
    for name, pairs in tests.items():
        bar.set_postfix_str(name)
        with counting_rows(rows.update):
            metrics, records = evaluate_split(model, tokenizer, pairs, model.spec.causal,
                                              cfg.eval, gen, bos=uses_bos(tokenizer),
                                              split=of_trained_facts(cfg, dataset,
                                                                     dataset.tests[name]),
                                              shard=shard)  # fmt: skip
        if shard is None or shard.rank == 0:
            save_generations(generations / f"{name}.jsonl", records)
        # the ranks also apart on the queries a shared word gives away (metrics.cue_metrics)
        results[name] = metrics | cue_metrics(records) | {"direction": dataset.directions[name]}
        bar.update(len(pairs))
    rows.close()
    bar.close()
    return results


def evaluation_shard(cfg: FinetuneConfig, accelerator: Any) -> Shard | None:
    """This process's :class:`~revcurse.evaluation.Shard` where evaluation can run across the
    processes and give one process's records: several processes, and decoding that draws nothing
    (temperature 0; LLaDA's low-confidence remasking, Dream's deterministic commits). Else None:
    the main process evaluates alone."""
    settings = cfg.eval
    deterministic = settings.temperature == 0 and (
        settings.remasking == "low_confidence" if settings.sampler == "llada"
        else settings.alg_temp == 0
    )  # fmt: skip
    if accelerator.num_processes < 2 or not deterministic:
        return None
    return Shard(accelerator.process_index, accelerator.num_processes)


def run_evaluation(
    cfg: FinetuneConfig,
    out: str | Path,
    *,
    trust_remote_code: bool = False,
    command: str = "(library call)",
    force: bool = False,
) -> dict[str, Any]:
    """``revcurse evaluate`` on a Hugging Face model, with ``model.adapter`` if given: every test
    split by generation and likelihood, the probes once (``probe.enabled``; gradients on the
    adapter's parameters, or on every parameter of a model without one: on an 8B model that is
    three model-sized gradients, so probe there with an adapter or not at all), no training. Writes
    a run directory: ``config.yaml``, ``command.txt``, ``env.json``, ``generations/<split>.jsonl``,
    ``probes.jsonl``, ``summary.json``, ``report.md``, ``timings.json``."""
    out = Path(out)
    cfg = absolute_paths(cfg)  # the run's config names its files from any working directory
    dataset, tests = load_tests(cfg)
    if out.is_dir() and any(out.iterdir()) and not force:
        prepare_out_dir(out, force)  # refuses before a large model is loaded
    if cfg.model.adapter:
        hf.check_adapter(cfg.model.adapter)
    use_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    train_pairs = dataset.train[: cfg.data.max_train or None]
    model, tokenizer = build_model(cfg, vocabulary_texts(dataset, train_pairs), trust_remote_code)
    dataset, tests, train_pairs = as_replies(tokenizer, dataset, tests, train_pairs)
    if cfg.model.adapter:
        hf.load_adapter(model, cfg.model.adapter, trainable=True)
    prepare_out_dir(out, force)
    write_provenance(out, dump_yaml(cfg), command)
    say_subsample(cfg, dataset, tests)
    probes = probe_runner(cfg, dataset, model, tokenizer, out)
    start = time.perf_counter()
    results = evaluate_tests(cfg, dataset, tests, model, tokenizer, out / "generations")
    evaluated = time.perf_counter()
    probes(model, 0, final=True)
    # wall-clock times apart from the summary, as every run keeps them, so reruns compare equal
    files.write_json(out / "timings.json", {"evaluation_seconds": evaluated - start,
                                            "probe_seconds": time.perf_counter() - evaluated})  # fmt: skip
    summary = {
        "family": model.spec.name,
        "causal": model.spec.causal,
        "dataset": dataset.name,
        "licence": dataset.licence,
        "model_path": cfg.model.path or "(tiny random model)",
        "adapter": cfg.model.adapter or None,
        "chat_template": getattr(tokenizer, "chat", None) is not None,
        "vocab_size": len(tokenizer),
        "splits": results,
        "probe": probes.summary() if probes.enabled else None,
    }
    files.write_json(out / "summary.json", summary)
    files.write_text(out / "report.md", render_evaluation(summary))
    return summary


METRICS = ("exact", "prefix", "substring", "likelihood_top1", "chance_top1")
"""The columns of a split's row in the reports (chance: of the likelihood rank)."""
HEADER = ["exact", "prefix", "substring", "likelihood top-1", "chance"]


def _metric_cells(m: dict[str, Any]) -> list[str]:
    """A split's proportions, each with its binomial standard error over the split's queries
    (chance is a design number: bare)."""
    return [f"{m[k]:.3f}" if k == "chance_top1" else with_se(m[k], m["n"]) for k in METRICS]


def render_evaluation(summary: dict[str, Any]) -> str:
    """A Markdown page: accuracy per split (generation and likelihood rank), probe signatures."""
    from revcurse.report.render import Para, Table, to_markdown

    adapter = f" + adapter {summary['adapter']}" if summary["adapter"] else ""
    blocks: list[Any] = [
        Para(
            f"Model: {summary['model_path']}{adapter} ({summary['family']}, "
            f"{'causal' if summary['causal'] else 'masked diffusion'}); dataset "
            f"{summary['dataset']} ({summary['licence']}). Exact / prefix: greedy generation; "
            "likelihood top-1: the answer ranked first among the candidates. Each proportion "
            "± its binomial standard error over the split's n queries."
        ),  # fmt: skip
        Table(
            ["split", "direction", "n", *HEADER],
            [
                [name, m["direction"], str(m["n"]), *_metric_cells(m)]
                for name, m in summary["splits"].items()
            ],
        ),  # fmt: skip
    ]
    probe = summary.get("probe")
    if probe and "final_step" in probe:
        rows = []
        for pairing in pairings_for(summary["causal"]):
            rows += [[f"attention r(S_{pairing}, S_rev), layer {n}",
                      _signed(probe.get(f"attention_pearson_{pairing}_layer{n}_final"))]
                     for n in summary_layers(probe, pairing)]  # fmt: skip
            rows.append(
                [
                    f"gradient cos({pairing}, rev), mean over facts",
                    _signed(probe.get(f"per_fact_cos_{GRADIENT_PAIRS[pairing]}_final")),
                ]
            )
        blocks.append(Table(["probe (pairing named)", "value"], rows))
    return to_markdown(
        f"Evaluation: {summary['family']} on {summary['dataset']}", blocks, Path(".")
    )


def absolute_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """``cfg`` with its local paths made absolute (a data file, a checkpoint folder or file, an
    adapter), so the run's config.yaml still names them from another working directory (a hub
    id, which is no local path, is left as it is)."""

    def absolute(path: str) -> str:
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, path=absolute(cfg.data.path)),
        model=dataclasses.replace(cfg.model, path=absolute(cfg.model.path),
                                  adapter=absolute(cfg.model.adapter)),
    )  # fmt: skip


def pin_facts(cfg: FinetuneConfig, resuming: Path | None) -> FinetuneConfig:
    """``cfg`` with its facts file's SHA-256 in ``data.path_sha256`` (other datasets unchanged),
    so the run's config names the facts it trains on; resuming the run in ``resuming``, a file
    that has changed since the run started is refused. Local paths are made absolute
    (:func:`absolute_paths`)."""
    cfg = absolute_paths(cfg)
    if cfg.data.dataset != "facts":
        return cfg
    path = Path(cfg.data.path)
    if not path.is_file():
        raise RevcurseError(f"data.path: {path}: facts file not found")
    digest = files.sha256(path)
    started = cfg.data.path_sha256
    if resuming is not None and (resuming / "config.yaml").is_file():
        started = started or load_yaml(FinetuneConfig, resuming / "config.yaml").data.path_sha256
    if started and started != digest:
        raise RevcurseError(
            f"data.path: {path} has changed since this run started (SHA-256 {digest[:12]}..., "
            f"the run's config has {started[:12]}...); fine-tune on the new facts in another --out"
        )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path_sha256=digest))


def training_data(cfg: FinetuneConfig, tokenizer: Any, train_pairs: list[TextPair],
                  dataset: TextDataset, *, bos: bool, causal: bool) -> TextBatch:  # fmt: skip
    """The fine-tune's training batch: each pair in its frame (a chat template's, or ``[BOS]``),
    the answer the part learned; an MDM's answers (ended by the end-of-turn token in a chat frame)
    padded with EOS that are trained on too (LLaDA's SFT recipe). With ``train.mask_unit:
    entity`` every entity the dataset names is masked whole where it occurs in an answer
    (:func:`~revcurse.data.text.entity_units`; the prompt is never masked in SFT)."""
    data = encode_pairs(tokenizer, train_pairs, bos=bos)
    if cfg.train.mask_unit == "entity":
        pairs = [*dataset.train, *(p for split in dataset.tests.values() for p in split)]
        prompts = data.prompt_mask.sum(dim=1).tolist()  # each answer's first position
        data.unit_start, _ = entity_units(tokenizer, [p.completion for p in train_pairs],
                                          named_entities(pairs), data.ids, prompts)  # fmt: skip
    if not causal:
        data = pad_with_eos(data, data.ids.shape[1], tokenizer.eos_id)
    return data


def run_finetune(
    cfg: FinetuneConfig,
    out: str | Path,
    *,
    trust_remote_code: bool = False,
    command: str = "(library call)",
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    log_with: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fine-tune, evaluate and probe; returns the summary written to ``out/summary.json``
    (``resume``: continue the run in ``out`` from its last checkpoint: adapters, AdamW state,
    schedule, data position and generator, so it ends as an uninterrupted run would;
    ``log_with``: trackers that mirror its metrics, probes and evaluations)."""
    out = Path(out)
    if cfg.model.adapter:
        raise RevcurseError(
            "model.adapter: fine-tuning starts new adapters; evaluate a saved adapter with "
            "`revcurse evaluate MODEL --adapter DIR`"
        )
    cfg = pin_facts(cfg, out if resume else None)
    dataset, tests = load_tests(cfg)
    # Fail before loading a large model: a directory that is not empty, or not this run.
    if resume:
        training.check_resumable(out, cfg, require_checkpoint=True)
    elif out.is_dir() and any(out.iterdir()) and not force:
        prepare_out_dir(out, force)
    accelerator = training.make_accelerator(resolve_device(cfg.model.device), log_with, out)
    if str(accelerator.distributed_type).endswith("FSDP"):
        raise RevcurseError(
            "FSDP shards the weights over the processes, but evaluation and probes run the whole "
            "model in the main process alone: fine-tune with configs/accelerate/ddp.yaml (LoRA on "
            "an 8B model in bf16 fits one 80 GB GPU per process) or deepspeed-zero2.yaml"
        )
    use_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    train_pairs = dataset.train[: cfg.data.max_train or None]
    model, tokenizer = build_model(cfg, vocabulary_texts(dataset, train_pairs), trust_remote_code)
    dataset, tests, train_pairs = as_replies(tokenizer, dataset, tests, train_pairs)
    spec = model.spec
    adapted = hf.add_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout,
                          cfg.lora.target_modules or None, which=cfg.lora.targets)  # fmt: skip
    # Only now, with data, model and adapters in hand, is anything written. Under `accelerate
    # launch` every process trains; only the main one writes, evaluates and probes.
    main = accelerator.is_main_process
    # One process at a time on a run (two `--resume` on one folder would both append records):
    # the main process holds its lock from the first write to the last.
    held = contextlib.ExitStack()
    if main:
        if not resume:
            prepare_out_dir(out, force)  # before the lock file, which makes the folder non-empty
        held.enter_context(files.run_lock(out, blocking=False))
    with held:
        if main:
            if resume:
                files.remove_temporaries(out)
            else:
                write_provenance(out, dump_yaml(cfg), command)
        log = MetricsLog(out, accelerator)
        log.start(to_dict(cfg))
        trainable = sum(p.numel() for p in hf.lora_parameters(model).values())
        total = sum(p.numel() for p in model.parameters())
        mask_id = tokenizer.mask_id
        bos = uses_bos(tokenizer)

        probes = probe_runner(
            cfg, dataset, model, tokenizer, out, enabled=main, keep=resume, log=log
        )

        # Evaluation across processes: each reads its share of every split's queries and the
        # records are gathered, the same as one process's (generation at temperature 0 does not
        # depend on the batch; the Monte-Carlo draws are made for every query in every process).
        shard = evaluation_shard(cfg, accelerator)

        def evaluate(stage: str) -> dict[str, dict[str, float]]:
            if not main and shard is None:
                return {}
            results = evaluate_tests(cfg, dataset, tests, model, tokenizer,
                                     out / "generations" / stage, shard,
                                     progress=progress and main)  # fmt: skip
            return results if main else {}

        if resume:  # the adapters are restored by the loop; "before" was measured on the base model
            before = files.read_json(out / "before.json") if main else {}
            probes.truncate(training.read_step(out / "checkpoints" / "last.safetensors"))
        else:
            if main:
                say_subsample(cfg, dataset, tests)
            began = time.perf_counter()
            before = evaluate("before")
            if main:
                files.write_json(out / "before.json", before)
                # kept for the final timings.json (a resumed run reads it back)
                files.write_json(out / "timings.json",
                                 {"before_evaluation_seconds": time.perf_counter() - began})  # fmt: skip
            probes(model, 0)

        data = training_data(cfg, tokenizer, train_pairs, dataset, bos=bos, causal=spec.causal)
        fitted = training.fit(
            model, data, run_loss(text_objective(spec.causal), mask_id, eps=cfg.train.diffusion_eps,
                                  weighting=cfg.train.loss_weighting, cart_p=cfg.train.cart_p),
            cfg.train, out=out, meta={"config": json.dumps(to_dict(cfg))},
            resume=resume, accelerator=accelerator, log=log,
            on_step=lambda done: probes(model, done) if probes.due(done) else None,
            progress=progress,
        )  # fmt: skip
        speed = {"train_seconds": fitted.seconds, "tokens_per_second": fitted.tokens_per_second}
        probes(model, cfg.train.steps, final=True)
        began = time.perf_counter()
        after = evaluate("after")
        if main:
            earlier = out / "timings.json"
            speed = (files.read_json(earlier) if earlier.is_file() else {}) | speed | {
                "after_evaluation_seconds": time.perf_counter() - began}  # fmt: skip
        for stage, step, results in (("before", 0, before), ("after", cfg.train.steps, after)):
            for split, metrics in results.items():
                log.track(f"{stage}/{split}", step, metrics)
        log.close()
        if not main:
            accelerator.wait_for_everyone()
            return {}
        hf.save_adapter(model, out / "adapter")

        summary = {
            "family": spec.name,
            "causal": spec.causal,
            "dataset": dataset.name,
            "licence": dataset.licence,
            "model_path": cfg.model.path or "(tiny random model)",
            # prompts and answers framed by the checkpoint's chat template (else plain text + EOS)
            "chat_template": getattr(tokenizer, "chat", None) is not None,
            "lora_modules": adapted,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "n_train": len(train_pairs),
            "batch": fitted.batch,  # the global batch, its split over processes and passes
            "vocab_size": len(tokenizer),
            "before": before,
            "after": after,
            "probe": probes.summary() if probes.enabled else None,
        }
        files.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        files.write_text(out / "timings.json", json.dumps(speed, indent=2) + "\n")
        files.write_text(out / "report.md", render_report(summary, speed))
        (out / "checkpoints" / "last.safetensors").unlink(missing_ok=True)  # the run is complete
        accelerator.wait_for_everyone()
        return summary


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def render_report(summary: dict[str, Any], speed: dict[str, float]) -> str:
    """A Markdown page: accuracy before/after per split, probe signatures, throughput."""
    from revcurse.report.render import Para, Table, to_markdown

    rows = [
        [split, summary[stage][split]["direction"], stage, *_metric_cells(summary[stage][split])]
        for split in summary["before"]
        for stage in ("before", "after")
    ]
    blocks = [
        Para(
            f"Model: `{summary['model_path']}` ({'ARM' if summary['causal'] else 'MDM'}); "
            f"{summary['lora_modules']} LoRA modules, {summary['trainable_parameters']:,} "
            f"trainable of {summary['total_parameters']:,} parameters; {summary['n_train']} "
            f"training statements. Data licence: {summary['licence']}."
        ),
        Table(["split", "direction", "stage", *HEADER], rows),
    ]
    probe = summary.get("probe")
    if probe and "first_step" in probe:
        probe_rows = []
        for pairing in pairings_for(summary["causal"]):
            labels = [
                (
                    f"attention r(S_{pairing}, S_rev), layer {n}",
                    f"attention_pearson_{pairing}_layer{n}",
                )
                for n in summary_layers(probe, pairing)
            ]
            labels.append((f"gradient cos({pairing}, rev) on LoRA parameters, mean over facts",
                           f"per_fact_cos_{GRADIENT_PAIRS[pairing]}"))  # fmt: skip
            probe_rows += [
                [text, _signed(probe.get(f"{label}_first")), _signed(probe.get(f"{label}_final"))]
                for text, label in labels
            ]
        blocks.append(Table(["probe (pairing named)", "before", "after"], probe_rows))
    blocks.append(Para(f"Training: {speed['tokens_per_second']:.0f} tokens/s, "
                       f"{speed['train_seconds']:.1f} s."))  # fmt: skip
    title = f"LoRA fine-tuning: {summary['family']} on {summary['dataset']}"
    return to_markdown(title, blocks, Path("."))
