"""Execute many runs: parallel worker processes (default) or a Ray cluster, resumable and indexed.

Every run has a directory and a row in the store (:mod:`revcurse.store`), keyed by the hash of its
resolved config. Executing a set of runs

* skips runs whose ``summary.json`` exists (finished earlier),
* resumes interrupted runs from ``checkpoints/last.safetensors`` (``train(..., resume=True)``),
* records a failing run's one-line error in the store and ``error.json`` and goes on with the rest.

Workers are spawned (not forked: torch's thread pools do not survive a fork) and die with the sweep
process (``PR_SET_PDEATHSIG`` on Linux), and each run holds an exclusive ``flock`` on its directory
while it trains, so a restarted sweep never trains a run twice at once. The Ray backend runs the same
function as Ray tasks; the run directories must then be on a filesystem every node sees.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from revcurse import files
from revcurse.config import RunConfig, config_hash, to_dict
from revcurse.files import model_dir
from revcurse.store import Store


@dataclass
class Job:
    """One run to execute: its id, the swept values that label it, its config and directory."""

    run_id: str
    labels: dict[str, Any]
    config: Any  # a RunConfig, or the config the executing worker function takes
    run_dir: Path


@dataclass
class Outcome:
    status: str  # done | failed
    summary: dict[str, Any] | None
    error: str | None


def make_jobs(
    runs: list[tuple[dict[str, Any], Any]], run_dir: Callable[[str, dict[str, Any]], Path]
) -> list[Job]:
    """Jobs from ``(labels, config)`` pairs; ``run_dir(run_id, labels)`` places each run."""
    jobs = []
    for labels, cfg in runs:
        run_id = config_hash(cfg)
        jobs.append(Job(run_id, labels, cfg, run_dir(run_id, labels)))
    return jobs


def adopt_earlier_runs(jobs: list[Job], store: Store, experiment: str) -> list[Job]:
    """Jobs of a sweep whose runs live in folders named by run id (``DIR/<run_id>``), each given
    back the id and folder of the furthest run of the same config the index already holds.

    A run id hashes the whole resolved config, so a field added to the config since the sweep
    started (at its default, computing what the run computed before) renames every run, and a
    resumed sweep would train them all again beside the finished ones. Identity is what
    :func:`_check_finished` proves, the config read back with today's defaults: a job takes over
    another row's run when that row's config equals the job's and its run got further (finished,
    or a checkpoint to resume from, against the job's own; a tie keeps the job's own). The other
    rows of a job's config leave the index; their folders stay where they are."""
    from revcurse.config import ConfigError, from_dict

    rows = store.rows(experiment)
    if not rows:
        return jobs

    def progress(run_id: str, parent: Path, status: str | None) -> int:
        folder = parent / run_id
        if status == "done" and (folder / "summary.json").is_file():
            return 2
        return int((folder / "checkpoints" / "last.safetensors").is_file())

    parsed: dict[tuple[type, str], Any] = {}

    def read(cls: type, row: dict[str, Any]) -> Any:  # each row's config parsed once
        if (cls, row["run_id"]) not in parsed:
            try:
                parsed[cls, row["run_id"]] = from_dict(cls, row["config"])
            except (ConfigError, TypeError):  # a config of another shape: no job's
                parsed[cls, row["run_id"]] = None
        return parsed[cls, row["run_id"]]

    ids = {job.run_id for job in jobs}
    adopted = []
    for job in jobs:
        parent = job.run_dir.parent
        own = next((r for r in rows if r["run_id"] == job.run_id), None)
        best, best_progress = None, progress(job.run_id, parent, own and own["status"])
        for row in rows:
            if row["run_id"] in ids or best_progress == 2:
                continue
            if read(type(job.config), row) != job.config:
                continue
            found = progress(row["run_id"], parent, row["status"])
            if found > best_progress:
                best, best_progress = row, found
        chosen = job if best is None else Job(best["run_id"], job.labels, job.config,
                                              parent / best["run_id"])  # fmt: skip
        ids.add(chosen.run_id)
        adopted.append(chosen)
    chosen_ids = {job.run_id for job in adopted}
    configs = [job.config for job in adopted]
    store.forget([r["run_id"] for r in rows if r["run_id"] not in chosen_ids
                  and any(read(type(c), r) == c for c in configs)])  # fmt: skip
    return adopted


COPIED_FROM = "copied_from.txt"
"""In a run copied from another sweep (:func:`copy_finished_runs`): where it was trained."""


def check_reuse_source(source: str | Path, folder: str, expected: str) -> None:
    """Refuse ``--reuse-runs`` naming a folder without the ``folder/`` its runs would be in (the
    callers ask before anything is written): ``expected`` says what it should have been."""
    from revcurse.errors import RevcurseError

    if not (Path(source) / folder).is_dir():
        raise RevcurseError(f"--reuse-runs {source}: {expected} (no {folder}/ in it)")


def copy_finished_runs(jobs: list[Job], source: Path, folder: str = "runs") -> list[Job]:
    """Jobs whose run another experiment (the folder ``source``: a sweep's runs in ``runs/``, a
    family experiment's in ``models/``) has already finished, their folders copied in: a job
    with no folder of its own takes a copy of a finished run of ``source`` whose
    ``config.yaml`` loads to exactly its config (the proof :func:`_check_finished` asks of any
    run read back; training is deterministic, so training it again would give the same files),
    whatever that run was called there. The copy is written beside and renamed into place,
    ``.lock`` left out, with :data:`COPIED_FROM` naming its origin; ``source`` is only read.
    Returns the jobs copied."""
    from revcurse.config import ConfigError, load_yaml

    check_reuse_source(source, folder, "expected an experiment folder of this kind")
    runs = source / folder
    if not jobs:
        return []
    finished: dict[Path, Any] = {}
    for folder in sorted(p for p in runs.iterdir() if (p / "summary.json").is_file()):
        try:
            finished[folder] = load_yaml(type(jobs[0].config), folder / "config.yaml")
        except (ConfigError, OSError):  # a run of another kind, or unreadable: not a match
            continue
    copied = []
    for job in jobs:
        if job.run_dir.exists():  # its own run (finished, or to resume): never replaced
            continue
        match = next((f for f, config in finished.items() if config == job.config), None)
        if match is None:
            continue
        partial = job.run_dir.with_name(job.run_dir.name + ".copying")
        shutil.rmtree(partial, ignore_errors=True)  # a copy interrupted before its rename
        shutil.copytree(match, partial, ignore=shutil.ignore_patterns(".lock", "*.tmp"))
        (partial / COPIED_FROM).write_text(f"{match.resolve()}\n")
        partial.rename(job.run_dir)
        copied.append(job)
    return copied


def execute_one(
    cfg: RunConfig,
    run_dir: str,
    command: str,
    progress: bool = False,
    log_with: tuple[str, ...] = (),
) -> Outcome:
    """Train (or resume, or just read back) one toy run; never raises for a failing run."""
    from revcurse.experiments.toy_run import train  # imported in the worker, not at spawn

    return guarded(lambda path: train(cfg, path, command=command, resume=True, progress=progress,
                                      log_with=log_with), run_dir)  # fmt: skip


def guarded(run: Callable[[Path], dict[str, Any]], run_dir: str) -> Outcome:
    """``run(path)`` under the run's lock, unless its summary exists; a failure is recorded in
    ``error.json`` and returned, never raised, so the other runs go on."""
    path = Path(run_dir)
    try:
        with files.run_lock(path):
            done = path / "summary.json"
            if done.is_file():
                return Outcome("done", files.read_json(done), None)
            (path / "error.json").unlink(missing_ok=True)
            summary = run(path)
        return Outcome("done", summary, None)
    except Exception as err:  # a failing run is recorded, the others go on
        message = " ".join(f"{type(err).__name__}: {err}".split())
        files.write_json(
            path / "error.json", {"error": message, "traceback": traceback.format_exc()}
        )
        return Outcome("failed", None, message)


def _die_with_parent() -> None:
    """Worker initializer: receive SIGKILL when the sweep process dies (Linux), so a killed sweep
    leaves no orphan trainers behind; ignore SIGINT, which a terminal's Ctrl-C sends to the whole
    process group: the parent alone decides (it stops the workers, see :func:`_run_local`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


DIED = "the worker process died (killed by the OS: out of memory?)"
TICK_SECONDS = 2.0
"""How often the sweep process reads its runs' progress while several workers train them."""


def last_step(run_dir: Path) -> int:
    """The last training step a run logged (its ``metrics.jsonl``, read from the end); 0 before
    its first line. Read while the run writes: a partial last line is skipped."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            tail = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") == "train":
            return int(record.get("step", 0))
    return 0


def steps_done(jobs: list[Job], finished: set[str]) -> tuple[int, int]:
    """Training steps done and asked over ``jobs`` (a finished run counts all of its steps): the
    aggregate a sweep shows while several workers train."""
    done = total = 0
    for job in jobs:
        steps = int(getattr(getattr(job.config, "train", None), "steps", 0) or 0)
        total += steps
        done += steps if job.run_id in finished else min(steps, last_step(job.run_dir))
    return done, total


def _run_local(
    jobs: list[Job],
    workers: int,
    command: str,
    on_done,
    progress: bool,
    worker=execute_one,
    log_with: tuple[str, ...] = (),
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Run ``worker(config, run_dir, command, progress, log_with)`` for every job in spawned
    processes (in this one with one worker); ``on_tick`` runs every :data:`TICK_SECONDS` while
    they train (the progress of the runs inside, which the workers cannot draw themselves)."""
    if workers == 1:
        for job in jobs:
            on_done(job, worker(job.config, str(job.run_dir), command, progress, log_with))
        return
    ctx = multiprocessing.get_context("spawn")
    _quiet_resource_tracker()
    remaining = {job.run_id: job for job in jobs}
    try:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_die_with_parent)
        try:
            futures = {
                pool.submit(worker, job.config, str(job.run_dir), command, False, log_with): job
                for job in jobs
            }
            pending = set(futures)
            while pending:  # woken by each finished run, and every few seconds for progress
                finished, pending = wait(pending, timeout=TICK_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = futures[future]
                    on_done(job, future.result())
                    del remaining[job.run_id]
                if on_tick is not None:
                    on_tick()
        except BaseException:  # KeyboardInterrupt (Ctrl-C, SIGTERM) above all
            _stop(pool)
            raise
        pool.shutdown()
    except BrokenProcessPool:
        # A worker died (SIGKILL, OOM) and took the pool down without saying which run it was
        # training. Run what is left one per fresh single-worker pool: the culprit fails alone,
        # the others resume from their checkpoints.
        for job in remaining.values():
            try:
                with ProcessPoolExecutor(1, mp_context=ctx, initializer=_die_with_parent) as solo:
                    outcome = solo.submit(
                        worker, job.config, str(job.run_dir), command, False, log_with
                    ).result()
            except BrokenProcessPool:
                files.write_json(job.run_dir / "error.json", {"error": DIED})
                outcome = Outcome("failed", None, DIED)
            on_done(job, outcome)


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with its stderr on /dev/null. Workers stopped
    mid-run (Ctrl-C) leave their queues' semaphores to it; it unlinks them and reports each as
    "leaked", lines that would bury the one-line message telling the user how to resume."""
    from multiprocessing import resource_tracker

    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: queued runs never start, running ones are killed where they are (their
    files are written atomically and they resume from their last checkpoint). A second Ctrl-C
    while this runs is ignored, so stopping can never hang or be cut short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # No public API kills a pool's workers before Python 3.14 (terminate_workers); shutdown alone
    # would wait for every running run to finish.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(jobs: list[Job], workers: int, command: str, on_done, worker=execute_one,
             log_with: tuple[str, ...] = ()) -> None:  # fmt: skip
    try:
        import ray
    except ImportError:
        from revcurse.errors import RevcurseError

        raise RevcurseError("--backend ray needs Ray: pip install 'revcurse[ray]'") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:  # a local instance sized like the local backend
            kwargs["num_cpus"] = workers
        ray.init(address=address, **kwargs)
    remote = ray.remote(num_cpus=1)(worker)
    pending = {
        remote.remote(job.config, str(job.run_dir), command, False, log_with): job for job in jobs
    }
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            on_done(pending.pop(ref), ray.get(ref))


def _check_finished(job: Job) -> None:
    """A finished run is read back only if it provably is this job: its ``config.yaml`` loads to
    exactly the job's config (fields added to the config since it was written take their
    defaults); otherwise the experiment stops, naming the run and the first differing field."""
    from revcurse.config import load_yaml
    from revcurse.errors import RevcurseError
    from revcurse.training import first_difference

    saved_path = job.run_dir / "config.yaml"
    saved = load_yaml(type(job.config), saved_path) if saved_path.is_file() else None
    if saved != job.config:
        what = ("no config.yaml" if saved is None
                else first_difference(to_dict(saved), to_dict(job.config)))  # fmt: skip
        raise RevcurseError(
            f"{job.run_dir}: a finished run of another config ({what}); choose another --out"
        )


def execute(
    jobs: list[Job],
    store: Store,
    experiment: str,
    *,
    workers: int = 2,
    backend: str = "local",
    command: str = "(library call)",
    progress: bool = True,
    worker: Callable[..., Outcome] = execute_one,
    log_with: tuple[str, ...] = (),
) -> dict[str, Outcome]:
    """Run every job not finished yet; returns the outcome of every job (finished ones included).

    ``worker(config, run_dir, command, progress, log_with)`` executes one job (a module-level
    function, so spawned processes and Ray can import it); the default trains a toy
    :class:`RunConfig`. ``log_with``: the trackers every run mirrors its metrics to."""
    store.register(experiment, [(j.run_id, j.labels, to_dict(j.config)) for j in jobs])
    outcomes: dict[str, Outcome] = {}
    todo = []
    for job in jobs:
        done = job.run_dir / "summary.json"
        if done.is_file():
            _check_finished(job)
            outcomes[job.run_id] = Outcome("done", files.read_json(done), None)
            store.set_status(job.run_id, "done", outcomes[job.run_id].summary)
        else:
            todo.append(job)

    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=experiment, unit="run",
               disable=not progress)  # fmt: skip

    def on_done(job: Job, outcome: Outcome) -> None:
        outcomes[job.run_id] = outcome
        store.set_status(job.run_id, outcome.status, outcome.summary, outcome.error)
        bar.update()
        if outcome.status == "failed":
            bar.write(f"run {job.run_id} {job.labels} failed: {outcome.error}")

    for job in todo:
        store.set_status(job.run_id, "running")
    workers = max(1, min(workers, len(todo) or 1))

    def on_tick() -> None:  # several workers: the steps inside the runs, not just finished runs
        done, total = steps_done(todo, set(outcomes))
        if total:
            bar.set_postfix_str(f"steps {done:,}/{total:,} ({100 * done / total:.0f}%)")

    try:
        if backend == "ray":
            _run_ray(todo, workers, command, on_done, worker, log_with)
        else:
            _run_local(todo, workers, command, on_done, progress and workers == 1, worker,
                       log_with, on_tick if progress else None)  # fmt: skip
    except KeyboardInterrupt:
        # The index stays consistent: a run that did not finish is pending again, to be resumed.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for job in todo:
            if job.run_id not in outcomes:
                store.set_status(job.run_id, "pending")
        raise
    finally:
        bar.close()
    return outcomes


def execute_all(jobs: list[Job], store: Store, experiment: str, **kwargs: Any) -> list[dict]:
    """:func:`execute`, for experiments that need every run: the summaries in job order, or a
    :class:`RevcurseError` naming the first run that failed."""
    from revcurse.errors import RevcurseError

    outcomes = execute(jobs, store, experiment, **kwargs)
    for job in jobs:
        if outcomes[job.run_id].status != "done":
            raise RevcurseError(f"{job.run_dir}: training failed: {outcomes[job.run_id].error}")
    return [outcomes[j.run_id].summary for j in jobs]


def train_families(
    out: Path,
    cfg: Any,
    experiment: str,
    command: str,
    progress: bool,
    reuse: Path | None = None,
    **kwargs: Any,
) -> list[dict]:
    """Every (model, seed) run of an experiment config (``cfg.model_names()``: the families and
    any variants; ``cfg.seeds``, ``cfg.workers``, ``cfg.run_config(name, seed)``), each in
    ``out/models/<name>-seed<k>``, indexed in ``out/index.sqlite``: the summaries, model-major.
    The skeleton the toy and the from-scratch text experiments share (``reuse``: another such
    experiment's folder whose finished runs of identical config are copied in rather than
    trained, :func:`copy_finished_runs`; ``kwargs``: the executor's, e.g. its ``worker``)."""
    runs = [
        ({"family": name, "seed": s}, cfg.run_config(name, s))
        for name in cfg.model_names()
        for s in cfg.seeds
    ]
    jobs = make_jobs(runs, lambda _, lab: model_dir(out, lab["family"], lab["seed"]))
    if reuse is not None:
        copied = copy_finished_runs(jobs, Path(reuse), "models")
        print(f"copied {len(copied)} finished run(s) of identical config from {reuse}",
              file=sys.stderr)  # fmt: skip
    return execute_all(jobs, Store(out / "index.sqlite"), experiment, workers=cfg.workers,
                       command=command, progress=progress, **kwargs)  # fmt: skip


def deterministic(summary: dict[str, Any]) -> dict[str, Any]:
    """A run summary flattened for tables (``probe.*`` keys) without wall-clock timings, which are
    the only fields that differ between reruns of the same config."""
    flat = {k: v for k, v in summary.items() if k != "probe" and not k.endswith("_seconds")}
    for key, value in (summary.get("probe") or {}).items():
        if not key.endswith("_seconds"):
            flat[f"probe.{key}"] = value
    return flat


def wall_over_sittings(timings_file: Path, start: float, resumed: bool) -> float:
    """Wall seconds since ``start`` (a ``time.perf_counter()`` reading) plus, when this sitting
    ``resumed`` an experiment of its own, the ``wall_seconds`` its earlier sittings recorded in
    ``timings_file``: an experiment run over several sittings reports its whole wall time (a
    sitting killed before its end records nothing, so only finished sittings are summed)."""
    earlier = files.read_json(timings_file) if resumed and timings_file.is_file() else {}
    return earlier.get("wall_seconds", 0.0) + time.perf_counter() - start


def timings(summary: dict[str, Any]) -> dict[str, float]:
    """The wall-clock fields of a run summary."""
    out = {k: v for k, v in summary.items() if k.endswith("_seconds")}
    out |= {
        f"probe.{k}": v for k, v in (summary.get("probe") or {}).items() if k.endswith("_seconds")
    }
    return out
