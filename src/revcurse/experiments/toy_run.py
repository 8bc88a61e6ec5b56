"""One toy model: build the synthetic facts and the Transformer a :class:`RunConfig` describes,
train it through the one loop (:func:`revcurse.training.fit`) with evaluation and probes as
callbacks, and write its run directory. The sweep executor runs these.

A run directory holds::

    config.yaml        the resolved RunConfig (a plain dump of the dataclasses)
    command.txt        the command that produced it
    env.json           versions, machine, git commit
    metrics.jsonl      {"kind": "train", step, loss, lr, grad_norm} and {"kind": "eval", step, ...}
    checkpoints/       final.safetensors (+ last / step-N.safetensors): weights, AdamW state,
                       generator and loop state; the metadata carries the config and vocabulary, so
                       a checkpoint alone rebuilds its model (load_checkpoint)
    probes/            the mechanism probes (see revcurse.probes.runner)
    predictions.json   per direction, the model's answer to every query and whether it is right
    summary.json       final metrics and config essentials
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from revcurse import files, training
from revcurse.config import RunConfig, config_hash, dump_yaml, entity_pool, from_dict, to_dict
from revcurse.data.schema import ReversalDataset
from revcurse.data.tokenize import TextBatch, Vocab, training_batch
from revcurse.data.toy import build_toy
from revcurse.errors import RevcurseError
from revcurse.evaluation import ToyEvaluator
from revcurse.models.transformer import TransformerLM
from revcurse.objectives import run_loss
from revcurse.probes.runner import ProbeRunner, toy_measure
from revcurse.repro import seed_everything, use_threads, write_provenance
from revcurse.tracking import MetricsLog


def build_dataset(cfg: RunConfig) -> tuple[ReversalDataset, Vocab]:
    """The dataset a run config describes, and its vocabulary."""
    dataset = build_toy(cfg.data)
    return dataset, Vocab.from_dataset(dataset)


def build_model(cfg: RunConfig, vocab_size: int) -> TransformerLM:
    """A freshly initialised model, seeded by ``cfg.train.seed``."""
    torch.manual_seed(cfg.train.seed)
    return TransformerLM(cfg.model, vocab_size)


def loss_of(cfg: RunConfig, vocab: Vocab) -> training.LossFn:
    """The run's training loss, ``loss(model, batch, generator)``."""
    return run_loss(cfg.objective, vocab.mask_id, eps=cfg.train.diffusion_eps,
                    mlm_ratio=cfg.train.mlm_ratio, weighting=cfg.train.loss_weighting,
                    cart_p=cfg.train.cart_p)  # fmt: skip


def checkpoint_meta(cfg: RunConfig, vocab: Vocab) -> dict[str, str]:
    """The header of a toy checkpoint: its config and vocabulary rebuild the model."""
    return {"config": json.dumps(to_dict(cfg)), "vocab": json.dumps(vocab.to_json())}


def checkpoint_metadata(path: str | Path) -> tuple[RunConfig, Vocab, int]:
    """The config, vocabulary and step a toy checkpoint's header records (checked), without
    loading its tensors."""
    path = Path(path)
    meta = training.read_header(path)
    try:
        cfg = from_dict(RunConfig, json.loads(meta["config"]), where=f"{path} (metadata config)")
        vocab = Vocab(json.loads(meta["vocab"]))
    except (KeyError, ValueError, TypeError) as err:
        raise RevcurseError(f"{path}: corrupt checkpoint metadata ({err})") from None
    return cfg, vocab, int(meta["step"])


def load_checkpoint(path: str | Path) -> tuple[TransformerLM, RunConfig, Vocab, int]:
    """Rebuild a model from a toy checkpoint file alone (safetensors; never pickle)."""
    cfg, vocab, step = checkpoint_metadata(path)
    model = TransformerLM(cfg.model, len(vocab))
    training.load_weights(model, files.load_tensors(path), Path(path))
    return model, cfg, vocab, step


def train(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool = False,
    command: str | None = None,
    resume: bool = False,
    log_with: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train one model as ``cfg`` says; write its run directory (if ``out_dir``); return its summary.
    ``log_with``: trackers that mirror its metrics and probes (:mod:`revcurse.tracking`).

    Everything random (initialisation, batch order, mask ratios and masks) is drawn from generators
    seeded by ``cfg.train.seed``, so the same config gives the same summary. With ``resume`` and a
    ``checkpoints/last.safetensors`` of the same config in ``out_dir``, training continues from it
    and ends bit-identical to an uninterrupted run (metrics and probe records after the checkpoint
    are dropped and recomputed).
    """
    tc = cfg.train
    use_threads(tc.threads)
    out = Path(out_dir) if out_dir is not None else None
    resuming = bool(resume and out is not None and training.check_resumable(out, cfg, False))
    if out is not None and training.holds_run(out, cfg):  # resumed, or started over (--force)
        files.remove_temporaries(out)  # provably this run: clear what a killed writer left
    if out is not None and not resuming:
        write_provenance(out, dump_yaml(cfg), command, announce=False)  # one model of many

    dataset, vocab = build_dataset(cfg)
    data: TextBatch = training_batch(dataset, vocab, cfg.objective, tc.maskable, tc.mask_unit)
    model = build_model(cfg, len(vocab))
    seed_everything(tc.seed)
    accelerator = training.make_accelerator("cpu", log_with, out)
    log = MetricsLog(out, accelerator)
    log.start(to_dict(cfg))
    probes = None
    if cfg.probe.enabled:
        probes = probe_runner(cfg, dataset, vocab, out, keep=resuming, data=data, log=log)
    evaluate = ToyEvaluator(dataset, vocab)

    def on_step(done: int) -> None:
        if tc.eval_every and done % tc.eval_every == 0:
            scores = evaluate(model)
            scores.pop("predictions"), scores.pop("correct")
            log.write({"kind": "eval", "step": done, **scores})
        if probes is not None and probes.due(done):
            probes(model, done)

    if probes is not None:
        if resuming:
            probes.truncate(training.read_step(out / "checkpoints" / "last.safetensors"))
        elif cfg.probe.every > 0 or 0 in cfg.probe.steps:
            probes(model, 0)
    start = time.perf_counter()
    fitted = training.fit(
        model, data, loss_of(cfg, vocab), tc, out=out, meta=checkpoint_meta(cfg, vocab),
        resume=resuming, accelerator=accelerator, log=log, on_step=on_step, progress=progress,
        desc=f"{cfg.model.family} seed {tc.seed}",
    )  # fmt: skip
    if probes is not None:
        probes(model, tc.steps, final=True)
    wall_seconds = time.perf_counter() - start
    probe_seconds = probes.seconds if probes is not None else 0.0

    scores = evaluate(model)
    predictions = {"answers": scores.pop("predictions"), "correct": scores.pop("correct")}
    log.write({"kind": "eval", "step": tc.steps, **scores})
    log.close()
    summary = {
        "family": cfg.model.family,
        "seed": tc.seed,
        "objective": cfg.objective,
        **scores,
        "final_loss": fitted.mean_loss,
        "train_seconds": wall_seconds - probe_seconds,
        "probe_seconds": probe_seconds,
        "probe": probes.summary() if probes is not None else None,
        "n_params": model.num_parameters(),
        "config_hash": config_hash(cfg),
        **config_essentials(cfg),
    }
    if out is not None:
        final = out / "checkpoints" / "final.safetensors"
        training.save_state(final, model, fitted.optimizer, fitted.generator, tc.steps,
                            checkpoint_meta(cfg, vocab))  # fmt: skip
        files.write_json(out / "predictions.json", predictions)
        files.write_json(out / "summary.json", summary)
        (out / "checkpoints" / "last.safetensors").unlink(missing_ok=True)  # final supersedes it
    return summary


def probe_runner(
    cfg: RunConfig,
    dataset: ReversalDataset,
    vocab: Vocab,
    out: Path | None,
    prefix: str = "",
    keep: bool = False,
    data: TextBatch | None = None,
    log: MetricsLog | None = None,
) -> ProbeRunner:
    """The probes of a toy run: its facts, and its training loss on ``data`` (the run's training
    batch, built here when not given) with the probes' fixed mask draw (``probe.seed``), so the
    probed training-loss gradient is a function of the weights alone."""
    data = (
        training_batch(dataset, vocab, cfg.objective, cfg.train.maskable, cfg.train.mask_unit)
        if data is None
        else data
    )
    loss = loss_of(cfg, vocab)

    def train_loss(model: torch.nn.Module) -> torch.Tensor:
        return loss(model, data, torch.Generator().manual_seed(cfg.probe.seed))

    measure = toy_measure(cfg.probe, cfg.data, dataset, vocab, cfg.model.causal, train_loss)
    path = out / "probes" / f"{prefix}probes.jsonl" if out is not None else None
    return ProbeRunner(measure, path, every=cfg.probe.every, steps=cfg.probe.steps,
                       keep=keep, log=log)  # fmt: skip


def config_essentials(cfg: RunConfig) -> dict[str, Any]:
    """The config values a results table needs to tell runs apart."""
    m, d, t = cfg.model, cfg.data, cfg.train
    return {
        "positional": m.positional,
        "d_model": m.d_model,
        "n_layers": m.n_layers,
        "n_heads": m.n_heads,
        "mlp": m.mlp,
        "norm": m.norm,
        "rope_base": m.rope_base,
        "n_pairs": d.n_pairs,
        "n_filler": d.n_filler,
        "entity_tokens": d.entity_tokens,
        "entity_spelling": d.entity_spelling,
        "entity_pool": entity_pool(d),
        "n_templates": d.n_templates,
        "templates_per_fact": d.trained_templates,
        "steps": t.steps,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "maskable": t.maskable,
    }
