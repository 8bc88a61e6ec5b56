"""THE training loop: every run kind (toy, from-scratch text, LoRA fine-tuning) trains through
:func:`fit`, with exact resume from ``checkpoints/last.safetensors``.

The loop takes a model, its training data as a :class:`~revcurse.data.text.TextBatch` and a loss
``loss_fn(model, batch, generator) -> scalar`` (one of :mod:`revcurse.objectives`), and builds
neither. One policy for everything a run kind could otherwise do its own way:

* **optimizer**: AdamW (fused) over the trainable parameters (``requires_grad``: all of a model
  trained from scratch, the adapters of a LoRA model), weight decay on matrices only (embeddings,
  projections, LoRA factors; never norms or biases);
* **schedule**: :func:`lr_factor`, a pure function of the step (linear warmup, then cosine / linear
  decay or constant), so a resumed run needs no scheduler state; the logged ``lr`` is the one the
  step used;
* **data order**: the whole set every step (``batch_size`` >= its size, or 0 on a set of at most
  :data:`FULL_BATCH_MAX` rows; no draw), or shuffled epochs drawn from the run's generator (0 on
  a larger set: batches of :data:`FULL_BATCH_MAX`), each batch cut to its longest real row;
* **batch**: ``batch_size`` is global. With ``P`` processes each trains on its ``1/P`` share of
  the step's rows (one shared draw: in several processes the order has its own generator seeded
  ``seed``), in passes of ``micro_batch_size`` rows whose gradients accumulate, each weighted by
  its share of the rows: the update is that of the whole batch (:func:`batch_layout`);
* **randomness**: one CPU generator seeded ``seed + process index`` draws the epochs and every
  mask of the loss;
* **non-finite loss**: a :class:`~revcurse.errors.RevcurseError` naming the step, before the
  update (nothing is written for that step);
* **metrics**: ``{"kind": "train", step, loss, lr, grad_norm}`` to ``metrics.jsonl`` every
  ``log_every`` steps, the loss averaged over the steps since the last line;
* **checkpoints**: every ``checkpoint_every`` steps a resume point with the trainable weights, the
  AdamW moments, the generator, the data order and the loop's own sums (``keep_checkpoints``: a
  ``step-N`` copy too). Resuming loads them and ends bit-identical to an uninterrupted run on CPU;
  a run of several processes (DDP) saves every process's generator and the shared order's, and
  resumes with as many processes.

It runs through ``accelerate``: ``accelerate launch`` with a config of ``configs/accelerate/``
spreads it over processes; a plain ``python`` call is the same code path in one process (bf16
autocast on GPU with :func:`make_accelerator`, float32 on CPU unless ``train.precision`` is bf16:
then the loss's forward runs under CPU bf16 autocast).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from revcurse import files
from revcurse.config import TrainConfig, from_dict, load_yaml, to_dict
from revcurse.data.text import TextBatch
from revcurse.errors import RevcurseError
from revcurse.tracking import MetricsLog

CHECKPOINT_FORMAT = "revcurse-checkpoint-1"
LossFn = Callable[[torch.nn.Module, TextBatch, torch.Generator], torch.Tensor]


def lr_factor(step: int, cfg: TrainConfig) -> float:
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


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters the loop optimises and checkpoints, by name (tied weights once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on matrices only (never norms, biases)."""
    params = list(trainable(model).values())
    if not params:
        raise RevcurseError("the model has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters; ~4x cheaper than foreach at toy sizes on CPU, and one
    # kernel instead of a loop over many small LoRA tensors.
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), fused=True)  # fmt: skip


COLLECTIVE_TIMEOUT = datetime.timedelta(hours=12)
"""How long a process waits in a collective: the other processes of a fine-tuning run wait in a
barrier while the main one evaluates and probes, which takes hours for an 8B MDM (see the cost
table of docs/finetune.md); the 30-minute default would kill them mid-run."""


def make_accelerator(
    device: str = "auto", log_with: Sequence[str] = (), out: Path | None = None
) -> Any:
    """An ``accelerate.Accelerator``: bf16 autocast on GPU, plain float32 on CPU, collectives that
    wait :data:`COLLECTIVE_TIMEOUT`; ``log_with`` trackers (checked by
    :func:`revcurse.tracking.check_trackers`) write under ``out/trackers``."""
    from accelerate import Accelerator, InitProcessGroupKwargs

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    tracked = bool(log_with) and out is not None
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else "bf16",
                       log_with=list(log_with) if tracked else None,
                       project_dir=str(out / "trackers") if tracked else None,
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------------


FULL_BATCH_MAX = 1024
"""``batch_size`` 0 trains on the whole set every step up to this many rows, and on shuffled
batches of this many beyond: a step's memory and time (rows x vocabulary logits, which both grow
with the number of facts) stay bounded as the facts multiply. Every published experiment with
``batch_size`` 0 has fewer rows, so it trains as it always did."""


def step_rows(batch_size: int, n: int) -> int:
    """Rows per optimizer step for ``train.batch_size`` on a set of ``n`` rows."""
    if batch_size == 0:
        return min(n, FULL_BATCH_MAX)
    return min(batch_size, n)


class DataOrder:
    """Which rows each step trains on: all of them (no draw), or shuffled epochs of ``batch_size``
    rows (the last partial batch dropped). Its state (the epoch's permutation and the position in
    it) goes into resume checkpoints."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n = n
        self.batch_size = step_rows(batch_size, n)
        self.full = self.batch_size == n
        self.generator = generator
        self.order = torch.zeros(0, dtype=torch.long)  # [n] once an epoch is drawn
        self.position = 0

    def next(self) -> torch.Tensor | None:
        """The next batch's row indices ``[batch_size]``; None for the whole set."""
        if self.full:
            return None
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        rows = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return rows

    def state(self) -> dict[str, torch.Tensor]:
        return {"order": self.order, "position": torch.tensor(self.position)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.order, self.position = state["order"], int(state["position"])


def select(data: TextBatch, rows: torch.Tensor | None, device: torch.device) -> TextBatch:
    """Rows ``rows`` of ``data`` (all for None), cut to their longest real length and moved to
    ``device``."""
    parts = (data.ids, data.prompt_mask, data.answer_mask, data.attention_mask)
    units = data.unit_start
    if rows is not None:
        parts = tuple(x[rows] for x in parts)
        units = None if units is None else units[rows]
    length = int(parts[3].sum(dim=1).max())  # attention_mask: the real tokens
    return TextBatch(*(x[:, :length].to(device) for x in parts),
                     None if units is None else units[:, :length])  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Resume checkpoints
# --------------------------------------------------------------------------------------------------


def save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator | None,
    step: int,
    meta: dict[str, str],
    loop_state: dict[str, torch.Tensor] | None = None,
    extra_rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """The trainable weights (``model.*``), AdamW moments (``optimizer.<param>.<field>``), the
    generator state and the loop's own state (``loop.*``) in one safetensors file; ``meta`` (the
    run's config as JSON, and whatever rebuilds its model) goes into its header. ``extra_rng``:
    the other processes' generators and the shared data-order one of a run of several processes
    (``rng.rank<r>``, ``rng.order``)."""
    params = trainable(model)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in params.items()}
    if optimizer is not None:
        names = {id(p): n for n, p in params.items()}
        for param, state in optimizer.state.items():
            for key, value in state.items():
                tensors[f"optimizer.{names[id(param)]}.{key}"] = torch.as_tensor(value)
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    for key, value in (extra_rng or {}).items():
        tensors[f"rng.{key}"] = value
    for key, value in (loop_state or {}).items():
        tensors[f"loop.{key}"] = value
    files.save_tensors(path, tensors, {"format": CHECKPOINT_FORMAT, "step": str(step), **meta})


def read_header(path: str | Path) -> dict[str, str]:
    """The metadata of a revcurse checkpoint (format checked), without loading its tensors."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise RevcurseError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise RevcurseError(f"{path}: not a valid safetensors file ({err})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise RevcurseError(f"{path}: not a revcurse checkpoint (metadata 'format' missing)")
    if "config" not in meta or not meta.get("step", "").isdigit():
        raise RevcurseError(f"{path}: corrupt checkpoint metadata (config or step missing)")
    return meta


def read_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was saved at."""
    return int(read_header(path)["step"])


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy the ``model.*`` tensors of a checkpoint into the trainable parameters of ``model``
    (every one present, shapes and dtypes equal)."""
    params = trainable(model)
    saved = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    if set(saved) != set(params):
        extra = sorted(set(saved) - set(params))[:1] or sorted(set(params) - set(saved))[:1]
        raise RevcurseError(f"{path}: weights do not match the model (parameter {extra[0]!r})")
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise RevcurseError(f"{path}: weights do not match the model ({name} is "
                                    f"{tuple(saved[name].shape)}, expected {tuple(p.shape)})")  # fmt: skip
            p.copy_(saved[name])


LOOP_STATE = {"loss_sum": torch.float32, "loss_count": torch.int64, "mean_loss": torch.float64,
              "order": torch.int64, "position": torch.int64}  # fmt: skip
"""The loop's own state in a resume checkpoint, with the dtype each is saved in."""


def _check_state(
    tensors: dict[str, torch.Tensor],
    model: torch.nn.Module,
    generator: torch.Generator,
    order: DataOrder,
    path: Path,
) -> None:
    """Refuse a resume checkpoint whose parts are missing or do not fit the live objects, before
    anything is loaded: weight dtypes, every AdamW moment's shape and dtype, the generator state's
    size, the loop state. (Wrongly shaped moments fed to fused AdamW turn into NaN, not an error.)"""

    def refuse(what: str) -> None:
        raise RevcurseError(f"{path}: not a resumable checkpoint of this run ({what})")

    for name, p in trainable(model).items():
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
        if value is None or value.dtype != dtype or (key != "order" and value.numel() != 1):
            refuse(f"loop state '{key}' missing or malformed")
    saved_order = tensors["loop.order"]
    if saved_order.numel() not in (0, order.n) or int(tensors["loop.position"]) > order.n:
        refuse("data order of another training set")


def restore_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    order: DataOrder,
    rank: int = 0,
    processes: int = 1,
) -> tuple[int, dict[str, torch.Tensor]]:
    """Load what :func:`save_state` wrote into the live objects; returns the step and the loop's
    sums. Everything is checked before anything is loaded. In a run of several processes each
    takes its own generator (``rank``) and all the shared data order's."""
    tensors = files.load_tensors(path)
    header = read_header(path)
    step, saved = int(header["step"]), int(header.get("processes", "1"))
    if saved != processes:
        raise RevcurseError(
            f"{path}: written by a run of {saved} process(es); resume it with {saved}, not "
            f"{processes} (each process's random stream is part of the run)"
        )
    if processes > 1:  # rank > 0 only then (the count was checked above)
        for key in [f"rank{r}" for r in range(1, processes)] + ["order"]:
            if f"rng.{key}" not in tensors:
                raise RevcurseError(f"{path}: not a resumable checkpoint of this run (generator "
                                    f"'{key}' missing)")  # fmt: skip
        if rank > 0:
            tensors["rng.generator"] = tensors[f"rng.rank{rank}"]
    _check_state(tensors, model, generator, order, path)
    load_weights(model, tensors, path)
    params = trainable(model)
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            name, _, field = key.removeprefix("optimizer.").rpartition(".")
            optimizer.state[params[name]][field] = value
    generator.set_state(tensors["rng.generator"])
    if processes > 1:  # the shared order's own generator (one process draws from `generator`)
        order.generator.set_state(tensors["rng.order"])
    loop = {k.removeprefix("loop."): v for k, v in tensors.items() if k.startswith("loop.")}
    order.load(loop)
    return step, loop


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The first dotted field where two config dicts differ, with both values."""
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found = first_difference(x, y, f"{prefix}{key}.")
            if found:
                return found
        elif x != y:
            return f"field '{prefix}{key}': {x!r} there, {y!r} here"
    return ""


def holds_run(out: Path, cfg: Any) -> bool:
    """Whether ``out`` provably holds a run of exactly ``cfg`` (its ``config.yaml`` equals it),
    checkpoint or not: where a resume may clear the temporaries a killed writer left."""
    try:
        return (out / "config.yaml").is_file() and load_yaml(type(cfg), out / "config.yaml") == cfg
    except RevcurseError:
        return False


def check_resumable(out: Path, cfg: Any, require_checkpoint: bool) -> bool:
    """Whether ``out`` holds a resumable run of exactly ``cfg`` (any run config); refuses anything
    else without touching it. A run directory is proven ours by its ``config.yaml`` (equal to
    ``cfg``) and by its last checkpoint's own config metadata (equal too): a checkpoint copied from
    a run of another config with the same shapes is refused. ``require_checkpoint``: no checkpoint
    is an error (``--resume`` of one run, which also refuses a finished run) rather than a fresh
    start (an experiment's runs)."""
    last = out / "checkpoints" / "last.safetensors"
    if require_checkpoint and (out / "summary.json").is_file():
        raise RevcurseError(f"{out}: this run is finished (summary.json exists)")
    if not last.is_file():
        if require_checkpoint:
            every = getattr(getattr(cfg, "train", None), "checkpoint_every", "?")
            raise RevcurseError(
                f"{out}: nothing to resume (no checkpoints/last.safetensors; train.checkpoint_every "
                f"is {every}); start it over with --force instead of --resume"
            )
        return False
    config = out / "config.yaml"
    if not config.is_file():
        raise RevcurseError(f"{out}: not a revcurse run (no config.yaml); refusing to resume here")
    try:
        saved = load_yaml(type(cfg), config)
    except RevcurseError as err:
        raise RevcurseError(f"{out}: not a resumable run ({err})") from None
    if saved != cfg:
        diff = first_difference(to_dict(saved), to_dict(cfg))
        raise RevcurseError(f"{out}: holds a run of another config ({diff}); cannot resume it")
    try:
        ckpt_cfg = from_dict(type(cfg), json.loads(read_header(last)["config"]), where=str(last))
    except (ValueError, RevcurseError) as err:
        raise RevcurseError(f"{last}: corrupt checkpoint metadata ({err})") from None
    if ckpt_cfg != cfg:
        diff = first_difference(to_dict(ckpt_cfg), to_dict(cfg))
        raise RevcurseError(f"{last}: written by a run of another config ({diff}); cannot resume")
    return True


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def batch_layout(n_rows: int, cfg: TrainConfig, processes: int) -> dict[str, int]:
    """How one optimizer step's rows are spread: the global batch, each process's share, the rows
    per forward pass and the passes accumulated (logged with every run)."""
    rows = step_rows(cfg.batch_size, n_rows)
    if rows % processes:
        raise RevcurseError(
            f"train.batch_size: {rows} rows per step do not split evenly over {processes} "
            f"processes; choose a multiple of {processes}"
        )
    share = rows // processes
    micro = min(cfg.micro_batch_size or share, share)
    return {"global_batch": rows, "processes": processes, "per_process": share,
            "micro_batch": micro, "accumulation": -(-share // micro)}  # fmt: skip


@dataclass
class Fitted:
    """What :func:`fit` leaves: the live optimizer and generator (a final checkpoint saves them),
    the last logged mean loss and the loop's own wall time and token count."""

    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    mean_loss: float
    seconds: float
    tokens: int
    batch: dict[str, int]
    """:func:`batch_layout` of the run."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def fit(
    model: torch.nn.Module,
    data: TextBatch,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    out: Path | None = None,
    meta: dict[str, str] | None = None,
    resume: bool = False,
    accelerator: Any = None,
    log: MetricsLog | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> Fitted:
    """Optimise the trainable parameters of ``model`` on ``data`` for ``cfg.steps`` steps.

    ``out``: the run directory (``metrics.jsonl`` and ``checkpoints/`` go there; None writes
    nothing). ``meta``: the checkpoint header (the run's ``config`` JSON at least). ``resume``:
    continue from ``out/checkpoints/last.safetensors`` (the caller has proven it ours with
    :func:`check_resumable`); metrics after it are dropped and recomputed. ``log``: where the
    train lines go (default: ``out/metrics.jsonl`` and the accelerator's trackers); the caller
    starts and closes its trackers. ``on_step(done)`` runs after every optimizer step but the last
    (evaluation, probes); the caller handles the end.
    """
    from tqdm.auto import tqdm

    accelerator = accelerator or make_accelerator("cpu")
    generator = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
    optimizer = make_optimizer(model, cfg)
    single = accelerator.num_processes == 1
    layout = batch_layout(len(data.ids), cfg, accelerator.num_processes)
    # One process draws the order from its own generator (as every run always has); several share
    # one draw, so together they train on exactly the rows one process would.
    shared = generator if single else torch.Generator().manual_seed(cfg.seed)
    order = DataOrder(len(data.ids), cfg.batch_size, shared)
    last = out / "checkpoints" / "last.safetensors" if out is not None else None
    main = accelerator.is_main_process
    if log is None:
        log = MetricsLog(out, accelerator)
    loss_sum, loss_count, mean_loss = torch.zeros(()), torch.zeros((), dtype=torch.long), math.nan
    first = 0
    if resume:
        if not single and str(accelerator.distributed_type).endswith("DEEPSPEED"):
            raise RevcurseError(
                f"{last}: resuming under DeepSpeed is not supported (its optimizer state is "
                "sharded over the processes; revcurse saves the main process's); use DDP"
            )
        first, loop = restore_state(last, model, optimizer, generator, order,
                                    rank=accelerator.process_index,
                                    processes=accelerator.num_processes)  # fmt: skip
        loss_sum, loss_count = loop["loss_sum"], loop["loss_count"]
        mean_loss = float(loop["mean_loss"])
        log.truncate(first)
    else:
        log.clear()
    if main and (not single or layout["accumulation"] > 1):  # the layout a user chose, on stderr
        print(f"batch: {layout['global_batch']} rows per step = {layout['processes']} process(es) "
              f"x {layout['per_process']}, each in {layout['accumulation']} pass(es) of <= "
              f"{layout['micro_batch']}", file=sys.stderr)  # fmt: skip
    if single:
        # One process: accelerate's optimizer wrapper adds nothing but a package lookup per step
        # (~7% of a toy step); the model still goes through prepare (device, autocast).
        model = accelerator.prepare_model(model)
    else:  # DDP / FSDP / DeepSpeed re-point or wrap the optimizer: both go through prepare
        model, optimizer = accelerator.prepare(model, optimizer)
    params = list(trainable(model).values())
    compiling = contextlib.nullcontext()
    if cfg.compile:  # the loop steps the compiled wrapper; checkpoints unwrap it (same weights)
        # The positions a loss unembeds (``where``) are a data-dependent shape: traced into the
        # graph rather than splitting it (measured faster on the toy MDM; BENCHMARKS.md).
        compiling = torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True)
        model = torch.compile(model)
    # bf16 on CPU wraps the loss alone in autocast (accelerate's mixed precision would patch the
    # model's forward for good), so evaluation and probes, between steps and after, run in float32.
    bf16 = cfg.precision == "bf16" and accelerator.device.type == "cpu"
    plain = single and layout["accumulation"] == 1
    # the same every step
    whole = select(data, None, accelerator.device) if order.full and plain else None
    model.train()
    tokens, start = 0, time.perf_counter()
    bar = tqdm(range(first, cfg.steps), initial=first, total=cfg.steps, desc=desc,
               disable=not progress, leave=False, mininterval=0.5)  # fmt: skip
    with compiling:
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            if plain:
                batch = (
                    whole if whole is not None else select(data, order.next(), accelerator.device)
                )
                loss = _backward(model, batch, loss_fn, generator, accelerator, step, 1.0, bf16)
                # the whole set's tokens are counted once, after the loop
                step_tokens = int(batch.attention_mask.sum()) if whole is None else 0
            else:
                loss, step_tokens = _accumulate(model, data, order, layout, loss_fn, generator,
                                                accelerator, step, bf16)  # fmt: skip
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            if single:  # foreach: one fused norm over all gradients (what a toy step can afford)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
            else:  # sharded or replicated gradients: accelerate reduces the norm across processes
                grad_norm = accelerator.clip_grad_norm_(params, max_norm)
            lr = cfg.lr * lr_factor(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            loss_sum += loss.detach().float().cpu()
            loss_count += 1
            tokens += step_tokens

            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                mean_loss = (loss_sum / loss_count).item()
                loss_sum, loss_count = torch.zeros(()), torch.zeros((), dtype=torch.long)
                log.write({"kind": "train", "step": done, "loss": mean_loss, "lr": lr,
                           "grad_norm": float(grad_norm)})  # fmt: skip
                bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
            if on_step is not None and done != cfg.steps:
                on_step(done)
            if out is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                # Every process's generator goes into the checkpoint (a collective: all take part);
                # weights and AdamW moments are the same in every process under DDP.
                extra = {} if single else _other_generators(accelerator, generator, shared)
                header = {**(meta or {}), "processes": str(accelerator.num_processes)}
                loop = {"loss_sum": loss_sum, "loss_count": loss_count,
                        "mean_loss": torch.tensor(mean_loss, dtype=torch.float64), **order.state()}  # fmt: skip
                inner = accelerator.unwrap_model(model, keep_torch_compile=False)
                # No resume point at the last step: the records written after the loop (final probe,
                # final evaluation) carry that step too, so truncating to it on resume would keep them
                # and then write them again. Resuming from the previous checkpoint redoes the tail.
                if main and done != cfg.steps:
                    save_state(last, inner, optimizer, generator, done, header, loop, extra)
                if main and cfg.keep_checkpoints:
                    kept = out / "checkpoints" / f"step-{done:07d}.safetensors"
                    save_state(kept, inner, optimizer, generator, done, header, loop, extra)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    if whole is not None:
        tokens = int(whole.attention_mask.sum()) * (cfg.steps - first)
    return Fitted(optimizer, generator, mean_loss, seconds, tokens, layout)


def _other_generators(accelerator, generator: torch.Generator,
                     shared: torch.Generator) -> dict[str, torch.Tensor]:  # fmt: skip
    """The generator states of processes 1.. (``rank<r>``) and of the shared data order."""
    from accelerate.utils import gather_object

    states = gather_object([generator.get_state()])
    return {**{f"rank{r}": states[r] for r in range(1, len(states))},
            "order": shared.get_state()}  # fmt: skip


def _backward(model, batch: TextBatch, loss_fn: LossFn, generator, accelerator, step: int,
              weight: float, bf16: bool = False) -> torch.Tensor:  # fmt: skip
    """The loss of one forward pass (checked finite) and its gradient, scaled by ``weight``;
    ``bf16``: the forward under CPU bf16 autocast."""
    with accelerator.autocast(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = loss_fn(model, batch, generator)
    if not torch.isfinite(loss):
        raise RevcurseError(
            f"non-finite loss ({loss.item()}) at step {step}; lower train.lr or check the data"
        )
    accelerator.backward(loss * weight if weight != 1.0 else loss)
    return loss


def _accumulate(model, data: TextBatch, order: DataOrder, layout: dict[str, int],
                loss_fn: LossFn, generator, accelerator, step: int,
                bf16: bool = False) -> tuple[torch.Tensor, int]:  # fmt: skip
    """One step's gradient from this process's share of the global batch, in passes of
    ``micro_batch`` rows, each weighted by its share (gradient sync only on the last pass).
    Returns the share's mean loss and its token count."""
    rows = order.next()
    if rows is None:  # the whole set, in its order
        rows = torch.arange(len(data.ids))
    share = rows.tensor_split(layout["processes"])[accelerator.process_index]
    passes = share.split(layout["micro_batch"])
    total, tokens = torch.zeros(()), 0
    for i, part in enumerate(passes):
        batch = select(data, part, accelerator.device)
        weight = len(part) / len(share)
        last = i == len(passes) - 1
        sync = contextlib.nullcontext() if last or layout["processes"] == 1 else (
            accelerator.no_sync(model))  # fmt: skip
        with sync:
            loss = _backward(model, batch, loss_fn, generator, accelerator, step, weight, bf16)
        total += loss.detach().float().cpu() * weight
        tokens += int(batch.attention_mask.sum())
    return total, tokens
