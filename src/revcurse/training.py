"""The training loop: AdamW with warmup + decay, seeded draws, metrics.jsonl, safetensors checkpoints.

A run directory written by :func:`train` holds::

    config.yaml        the resolved RunConfig (a plain dump of the dataclasses)
    command.txt        the command that produced it
    env.json           versions, machine, git commit
    metrics.jsonl      {"kind": "train", step, loss, lr, grad_norm} and {"kind": "eval", step, ...}
    checkpoints/       final.safetensors (+ step-N.safetensors): model and AdamW state, generator
                       state; the metadata carries the config and vocabulary, so a checkpoint alone
                       rebuilds its model (load_checkpoint)
    predictions.json   per direction, the model's answer to every query and whether it is right
    summary.json       final metrics and config essentials
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from revcurse import files
from revcurse.config import (
    RunConfig,
    TextTrainConfig,
    TrainConfig,
    config_hash,
    dump_yaml,
    from_dict,
    load_yaml,
    to_dict,
)
from revcurse.data.schema import ReversalDataset
from revcurse.data.tokenize import Vocab, encode_statements, maskable_mask, span_mask
from revcurse.data.toy import build_toy
from revcurse.errors import RevcurseError
from revcurse.evaluation import evaluate
from revcurse.models.transformer import TransformerLM
from revcurse.objectives import training_loss
from revcurse.probes.runner import ProbeRunner
from revcurse.repro import seed_everything, write_provenance


def lr_factor(step: int, cfg: TrainConfig | TextTrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based): linear warmup, then decay to
    ``min_lr_ratio`` at the last step (cosine, linear) or none (constant)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (embeddings and projections), never on norms."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters; ~4x cheaper than foreach at toy sizes on CPU.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def build_dataset(cfg: RunConfig) -> tuple[ReversalDataset, Vocab]:
    """The dataset a run config describes, and its vocabulary."""
    dataset = build_toy(cfg.data)
    return dataset, Vocab.from_dataset(dataset)


def build_model(cfg: RunConfig, vocab_size: int) -> TransformerLM:
    """A freshly initialised model, seeded by ``cfg.train.seed``."""
    torch.manual_seed(cfg.train.seed)
    return TransformerLM(cfg.model, vocab_size)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    model: TransformerLM,
    optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator | None,
    step: int,
    cfg: RunConfig,
    vocab: Vocab,
    loop_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Model weights, AdamW moments, the generator state and the loop's own state (``loop.*``:
    the running loss sum since the last log line, ...) in one safetensors file."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"
    }
    if not cfg.model.tie_embeddings:
        tensors["model.lm_head.weight"] = model.lm_head.weight
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for param, state in optimizer.state.items():
            for key, value in state.items():
                tensors[f"optimizer.{names[id(param)]}.{key}"] = torch.as_tensor(value)
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    for key, value in (loop_state or {}).items():
        tensors[f"loop.{key}"] = value
    meta = {
        "format": "revcurse-checkpoint-1",
        "step": str(step),
        "config": json.dumps(to_dict(cfg)),
        "vocab": json.dumps(vocab.to_json()),
    }
    files.save_tensors(path, tensors, meta)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], RunConfig, Vocab, int]:
    """The tensors of a checkpoint and the config, vocabulary and step in its metadata (checked)."""
    tensors = files.load_tensors(path)
    return (tensors, *checkpoint_metadata(path))


def checkpoint_metadata(path: str | Path) -> tuple[RunConfig, Vocab, int]:
    """The config, vocabulary and step a checkpoint's header records (checked), without loading
    its tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise RevcurseError(f"{path}: not a valid safetensors file ({err})") from None
    if meta.get("format") != "revcurse-checkpoint-1":
        raise RevcurseError(f"{path}: not a revcurse checkpoint (metadata 'format' missing)")
    try:
        cfg = from_dict(RunConfig, json.loads(meta["config"]), where=f"{path} (metadata config)")
        vocab = Vocab(json.loads(meta["vocab"]))
        step = int(meta["step"])
    except (KeyError, ValueError, TypeError) as err:
        raise RevcurseError(f"{path}: corrupt checkpoint metadata ({err})") from None
    return cfg, vocab, step


def _load_weights(model: TransformerLM, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load the ``model.*`` tensors of a checkpoint into ``model`` (strict: shapes must match)."""
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    if model.cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise RevcurseError(f"{path}: weights do not match the config ({detail})") from None


def load_checkpoint(path: str | Path) -> tuple[TransformerLM, RunConfig, Vocab, int]:
    """Rebuild a model from a checkpoint file alone (safetensors; never pickle)."""
    tensors, cfg, vocab, step = read_checkpoint(path)
    model = TransformerLM(cfg.model, len(vocab))
    _load_weights(model, tensors, Path(path))
    return model, cfg, vocab, step


def restore_training_state(
    path: Path,
    model: TransformerLM,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, dict[str, torch.Tensor]]:
    """Load weights, AdamW moments and generator state saved by :func:`save_checkpoint` into live
    objects; returns the step and the loop state."""
    tensors, _, _, step = read_checkpoint(path)
    _check_training_state(tensors, model, generator, path)
    _load_weights(model, tensors, path)
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, _, field = key.removeprefix("optimizer.").rpartition(".")
            optimizer.state[params[name]][field] = value
    generator.set_state(tensors["rng.generator"])
    loop = {k.removeprefix("loop."): v for k, v in tensors.items() if k.startswith("loop.")}
    return step, loop


LOOP_STATE = {"loss_sum": torch.float32, "loss_count": torch.int64, "mean_loss": torch.float64}
"""The loop's own state in a resume checkpoint, with the dtype each is saved in."""


def _check_training_state(
    tensors: dict[str, torch.Tensor], model: TransformerLM, generator: torch.Generator, path: Path
) -> None:
    """Refuse a resume checkpoint whose parts are missing or do not fit the live objects, before
    anything is loaded: weight dtypes, every AdamW moment's shape and dtype, the generator state's
    size, the loop state. (Wrongly shaped moments fed to fused AdamW turn into NaN, not an error.)"""

    def refuse(what: str) -> None:
        raise RevcurseError(f"{path}: not a resumable checkpoint of this run ({what})")

    params = dict(model.named_parameters())
    for name, p in params.items():
        saved = tensors.get(f"model.{name}")
        if saved is not None and saved.dtype != p.dtype:
            refuse(f"weight {name} is {saved.dtype}, expected {p.dtype}")
        for field in ("exp_avg", "exp_avg_sq"):
            moment = tensors.get(f"optimizer.{name}.{field}")
            if moment is None:
                refuse(f"optimizer state '{name}.{field}' missing")
            elif moment.shape != p.shape or moment.dtype != p.dtype:
                refuse(f"optimizer state '{name}.{field}' is {tuple(moment.shape)} "
                       f"{moment.dtype}, expected {tuple(p.shape)} {p.dtype}")  # fmt: skip
        if f"optimizer.{name}.step" not in tensors:
            refuse(f"optimizer state '{name}.step' missing")
    rng = tensors.get("rng.generator")
    expected = generator.get_state()
    if rng is None or rng.shape != expected.shape or rng.dtype != expected.dtype:
        refuse("generator state missing or of the wrong size")
    for key, dtype in LOOP_STATE.items():
        value = tensors.get(f"loop.{key}")
        if value is None or value.dtype != dtype or value.numel() != 1:
            refuse(f"loop state '{key}' missing or malformed")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The first dotted field where two config dicts differ, with both values."""
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found = _first_difference(x, y, f"{prefix}{key}.")
            if found:
                return found
        elif x != y:
            return f"field '{prefix}{key}': {x!r} there, {y!r} here"
    return ""


def check_resumable(out: Path, cfg: RunConfig, require_checkpoint: bool) -> bool:
    """Whether ``out`` holds a resumable run of exactly ``cfg``; refuses anything else without
    touching it. A run directory is proven ours by its ``config.yaml`` (equal to ``cfg``) and, when
    there is one, by its last checkpoint's own config metadata (equal too): a checkpoint copied
    from a run of another config with the same shapes is refused. ``require_checkpoint``: no
    checkpoint is an error (``revcurse train --resume``) rather than a fresh start (the executor,
    whose run directories are named by the config's hash)."""
    last = out / "checkpoints" / "last.safetensors"
    has_checkpoint = last.is_file()
    if not has_checkpoint:
        if require_checkpoint:
            raise RevcurseError(
                f"{out}: nothing to resume (no checkpoints/last.safetensors; train.checkpoint_every "
                f"is {cfg.train.checkpoint_every}); start it over with --force instead of --resume"
            )
        return False
    config = out / "config.yaml"
    if not config.is_file():
        raise RevcurseError(f"{out}: not a revcurse run (no config.yaml); refusing to resume here")
    try:
        saved = load_yaml(RunConfig, config)
    except RevcurseError as err:
        raise RevcurseError(f"{out}: not a resumable run ({err})") from None
    if saved != cfg:
        diff = _first_difference(to_dict(saved), to_dict(cfg))
        raise RevcurseError(f"{out}: holds a run of another config ({diff}); cannot resume it")
    ckpt_cfg, _, _ = checkpoint_metadata(last)
    if ckpt_cfg != cfg:
        diff = _first_difference(to_dict(ckpt_cfg), to_dict(cfg))
        raise RevcurseError(f"{last}: written by a run of another config ({diff}); cannot resume")
    return True


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _write_run_header(out_dir: Path, cfg: RunConfig, command: str | None) -> None:
    write_provenance(out_dir, dump_yaml(cfg), command)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)


def train(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool = False,
    command: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train one model as ``cfg`` says; write its run directory (if ``out_dir``); return its summary.

    Everything random (initialisation, batch order, mask ratios and masks) is drawn from generators
    seeded by ``cfg.train.seed``, so the same config gives the same summary. With ``resume`` and a
    ``checkpoints/last.safetensors`` of the same config in ``out_dir``, training continues from it
    and ends bit-identical to an uninterrupted run (metrics and probe records after the checkpoint
    are dropped and recomputed).
    """
    tc = cfg.train
    torch.set_num_threads(tc.threads)
    out = Path(out_dir) if out_dir is not None else None
    last = out / "checkpoints" / "last.safetensors" if out is not None else None
    resuming = bool(resume and out is not None and check_resumable(out, cfg, False))
    if out is not None and out.is_dir():
        files.remove_temporaries(out)  # a previous writer of this run killed mid-write
    if out is not None and not resuming:
        _write_run_header(out, cfg, command)

    dataset, vocab = build_dataset(cfg)
    data = encode_statements(vocab, dataset.train)  # [N, L]
    model = build_model(cfg, len(vocab))
    generator = seed_everything(tc.seed)
    optimizer = make_optimizer(model, tc)
    objective = cfg.objective
    probes = ProbeRunner(cfg, dataset, vocab, out, keep=resuming) if cfg.probe.enabled else None

    answers = span_mask(dataset.answer_spans, tuple(data.shape))  # [N, L], for answer_only
    maskable = maskable_mask(dataset, tc.maskable, tuple(data.shape))  # [N, L]

    def step_loss(rows: torch.Tensor | None) -> torch.Tensor:
        batch = data if rows is None else data[rows]
        return training_loss(
            objective, model, batch, vocab.mask_id, vocab.pad_id, tc.diffusion_eps, generator,
            mlm_ratio=tc.mlm_ratio, answer_mask=answers if rows is None else answers[rows],
            maskable=maskable if rows is None else maskable[rows],
        )  # fmt: skip

    def log(record: dict[str, Any]) -> None:
        if out is not None:
            files.append_jsonl(out / "metrics.jsonl", record)

    n = data.shape[0]
    batch_size = n if tc.batch_size == 0 else min(tc.batch_size, n)
    loss_sum, loss_count, mean_loss = torch.zeros(()), torch.zeros((), dtype=torch.long), math.nan
    first = 0
    if resuming:
        first, loop = restore_training_state(last, model, optimizer, generator)
        loss_sum, loss_count, mean_loss = loop["loss_sum"], loop["loss_count"], loop["mean_loss"]
        mean_loss = float(mean_loss)
        files.truncate_jsonl(out / "metrics.jsonl", first)
        if probes is not None:
            probes.truncate(first)
    elif probes is not None and (cfg.probe.every > 0 or 0 in cfg.probe.steps):
        probes(model, 0)
    start = time.perf_counter()
    model.train()
    bar = tqdm(
        range(first, tc.steps),
        initial=first,
        total=tc.steps,
        desc=f"{cfg.model.family} seed {tc.seed}",
        disable=not progress,
        leave=False,
        mininterval=0.5,
    )
    for step in bar:
        rows = None if batch_size == n else torch.randperm(n, generator=generator)[:batch_size]
        loss = step_loss(rows)
        if not torch.isfinite(loss):
            raise RevcurseError(
                f"non-finite loss ({loss.item()}) at step {step}; lower train.lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        # The schedule is a pure function of the step, so a resumed run needs no scheduler state.
        for group in optimizer.param_groups:
            group["lr"] = tc.lr * lr_factor(step, tc)
        optimizer.step()
        loss_sum += loss.detach()
        loss_count += 1

        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            mean_loss = (loss_sum / loss_count).item()
            loss_sum = torch.zeros(())
            loss_count = torch.zeros((), dtype=torch.long)
            lr = optimizer.param_groups[0]["lr"]
            log({"kind": "train", "step": done, "loss": mean_loss, "lr": lr,
                 "grad_norm": grad_norm.item()})  # fmt: skip
            bar.set_postfix(loss=f"{mean_loss:.3f}")
        if tc.eval_every and done % tc.eval_every == 0 and done != tc.steps:
            metrics = evaluate(model, dataset, vocab)
            metrics.pop("predictions"), metrics.pop("correct")
            log({"kind": "eval", "step": done, **metrics})
        if probes is not None and probes.due(done) and done != tc.steps:
            probes(model, done)
        if out is not None and tc.checkpoint_every and done % tc.checkpoint_every == 0:
            loop = {"loss_sum": loss_sum, "loss_count": loss_count,
                    "mean_loss": torch.tensor(mean_loss, dtype=torch.float64)}  # fmt: skip
            # No resume point at the last step: the records written after the loop (final probe,
            # final evaluation) carry that step too, so truncating to it on resume would keep them
            # and then write them again. Resuming from the previous checkpoint redoes the tail.
            if done != tc.steps:
                save_checkpoint(last, model, optimizer, generator, done, cfg, vocab, loop)
            if tc.keep_checkpoints:
                ckpt = out / "checkpoints" / f"step-{done:07d}.safetensors"
                save_checkpoint(ckpt, model, optimizer, generator, done, cfg, vocab, loop)
    bar.close()
    if probes is not None:
        probes(model, tc.steps, final=True)
    wall_seconds = time.perf_counter() - start
    probe_seconds = probes.seconds if probes is not None else 0.0

    metrics = evaluate(model, dataset, vocab)
    predictions = {"answers": metrics.pop("predictions"), "correct": metrics.pop("correct")}
    log({"kind": "eval", "step": tc.steps, **metrics})
    summary = {
        "family": cfg.model.family,
        "seed": tc.seed,
        "objective": objective,
        **metrics,
        "final_loss": mean_loss,
        "train_seconds": wall_seconds - probe_seconds,
        "probe_seconds": probe_seconds,
        "probe": probes.summary() if probes is not None else None,
        "n_params": model.num_parameters(),
        "config_hash": config_hash(cfg),
        **config_essentials(cfg),
    }
    if out is not None:
        ckpt = out / "checkpoints" / "final.safetensors"
        save_checkpoint(ckpt, model, optimizer, generator, tc.steps, cfg, vocab)
        files.write_json(out / "predictions.json", predictions)
        files.write_json(out / "summary.json", summary)
        last.unlink(missing_ok=True)  # the final checkpoint supersedes it
    return summary


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
        "steps": t.steps,
        "lr": t.lr,
        "batch_size": t.batch_size,
        "maskable": t.maskable,
    }
