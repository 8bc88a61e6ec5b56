"""Exact resume for every run kind through the one loop (:func:`revcurse.training.fit`).

A run is interrupted inside a training step after its last checkpoint (the loss raises, as a
Ctrl-C would land there), then resumed from ``checkpoints/last.safetensors``; its trained weights
(all of them, or the LoRA adapters), metrics and probe records must equal an uninterrupted run's,
bit for bit. The toy run kind is covered by the SIGKILL tests of test_reliability.py; here the
text kinds: a from-scratch Person–Description model (minibatch epochs cut mid-epoch by the
checkpoint) and LoRA fine-tuning of tiny MDM and ARM models.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli, run_killed
from safetensors.torch import load_file

from revcurse import files
from revcurse.config import FinetuneConfig, TextRunConfig, apply_overrides


class Interrupt(Exception):
    """Stands in for a KeyboardInterrupt (which pytest would treat as the user's)."""


def interrupting(monkeypatch, at_call: int) -> None:
    """Make the training loss raise at its ``at_call``-th call (a step after a checkpoint)."""
    from revcurse import objectives

    original = objectives.training_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(objectives, "training_loss", loss)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def records(path, drop=("seconds",)) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in drop} for r in files.read_jsonl(path)]


def test_person_description_run_resumes_bit_identically(tmp_path, monkeypatch):
    from revcurse.experiments import from_scratch as pd

    # 2 people per group: 240 statements, batch 64 -> 3 batches an epoch; checkpoints every 4
    # steps land mid-epoch, so the saved permutation and position matter.
    cfg = apply_overrides(TextRunConfig(), ["n_people=2", "train.steps=14", "max_eval=4",
                                            "probe.n_facts=4", "probe.every=5",
                                            "train.checkpoint_every=4", "train.log_every=3"])  # fmt: skip
    full = pd.train_run(cfg, tmp_path / "full")
    with monkeypatch.context() as m:
        interrupting(m, at_call=11)  # inside step 11, after the checkpoint of step 8
        with pytest.raises(Interrupt):
            pd.train_run(cfg, tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "last.safetensors").is_file()
    resumed = pd.train_run(cfg, tmp_path / "cut")
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "cut"))
    assert same_tensors(a, b)
    assert records(tmp_path / "full" / "metrics.jsonl") == records(
        tmp_path / "cut" / "metrics.jsonl"
    )
    assert records(tmp_path / "full" / "probes.jsonl") == records(tmp_path / "cut" / "probes.jsonl")
    untimed = [
        {k: v for k, v in s["probe"].items() if k != "probe_seconds"} for s in (full, resumed)
    ]
    assert full["splits"] == resumed["splits"] and untimed[0] == untimed[1]
    assert not (tmp_path / "cut" / "checkpoints" / "last.safetensors").exists()


@pytest.mark.parametrize("family", ["llada", "llama"])
def test_finetune_resumes_bit_identically(family, tmp_path, monkeypatch):
    from revcurse.experiments import finetune

    cfg = apply_overrides(FinetuneConfig(), [
        f"model.family={family}", "train.steps=9", "train.lr=3e-3", "train.batch_size=8",
        "data.max_eval=4", "data.max_train=28", "probe.n_facts=4", "probe.every=4",
        "eval.gen_length=3", "eval.n_distractors=2", "eval.n_mc=2", "train.log_every=2",
        "train.checkpoint_every=3", "train.warmup_steps=2", "train.schedule=cosine",
    ])  # fmt: skip
    full = finetune.run_finetune(cfg, tmp_path / "full", progress=False)
    with monkeypatch.context() as m:
        interrupting(m, at_call=8)  # inside step 8, after the checkpoint of step 6
        with pytest.raises(Interrupt):
            finetune.run_finetune(cfg, tmp_path / "cut", progress=False)
    with pytest.raises(Exception, match="not empty"):  # no silent restart over it
        finetune.run_finetune(cfg, tmp_path / "cut", progress=False)
    resumed = finetune.run_finetune(cfg, tmp_path / "cut", progress=False, resume=True)
    a, b = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors"))
            for d in ("full", "cut"))  # fmt: skip
    assert same_tensors(a, b)
    assert records(tmp_path / "full" / "metrics.jsonl") == records(
        tmp_path / "cut" / "metrics.jsonl"
    )
    assert records(tmp_path / "full" / "probes.jsonl") == records(tmp_path / "cut" / "probes.jsonl")
    assert full["before"] == resumed["before"] and full["after"] == resumed["after"]


def test_finetune_resume_refuses_another_config(tmp_path, monkeypatch):
    from revcurse.errors import RevcurseError
    from revcurse.experiments import finetune

    cfg = apply_overrides(FinetuneConfig(), ["model.family=llama", "train.steps=6",
                                             "data.max_eval=2", "data.max_train=16",
                                             "probe.enabled=false", "train.checkpoint_every=2"])  # fmt: skip
    with monkeypatch.context() as m:
        interrupting(m, at_call=4)
        with pytest.raises(Interrupt):
            finetune.run_finetune(cfg, tmp_path / "cut", progress=False)
    other = apply_overrides(cfg, ["train.lr=1e-3"])
    before = sorted(p.name for p in (tmp_path / "cut").rglob("*"))
    with pytest.raises(RevcurseError, match="another config .*train.lr"):
        finetune.run_finetune(other, tmp_path / "cut", progress=False, resume=True)
    assert sorted(p.name for p in (tmp_path / "cut").rglob("*")) == before


FINETUNE = ["model.family=llada", "train.steps=9", "train.lr=3e-3", "train.batch_size=8",
            "data.max_eval=4", "data.max_train=28", "probe.n_facts=4", "probe.every=4",
            "eval.gen_length=3", "eval.n_distractors=2", "eval.n_mc=2", "train.log_every=2",
            "train.checkpoint_every=3"]  # fmt: skip


def _finetune(out, kill_at: int, *extra: str):
    """``revcurse finetune`` into ``out``, SIGKILLed at its ``kill_at``-th write (0: never)."""
    sets = [x for s in FINETUNE for x in ("--set", s)]
    return run_killed(kill_at, out.parent / f"{out.name}.events", "finetune", "--out", str(out),
                      "--no-progress", *sets, *extra)  # fmt: skip


@pytest.mark.slow
def test_finetune_killed_at_points_of_its_progress_then_resumed_is_identical(tmp_path):
    """The CLI end to end: a fine-tuning run SIGKILLed in the middle of one of its writes, then
    continued with ``--resume`` (or started over with ``--force`` where no checkpoint exists yet),
    ends with the adapters, metrics and summary of an uninterrupted run."""
    import random
    import signal

    reference = tmp_path / "reference"
    ref = _finetune(reference, 0)
    assert ref.returncode == 0, ref.stderr
    want = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    summary = files.read_json(reference / "summary.json")
    points = sorted(random.Random(0).sample(range(1, ref.events + 1), 4))
    resumed = 0
    for trial, kill_at in enumerate(points):
        out = tmp_path / f"trial{trial}"
        killed = _finetune(out, kill_at)
        assert killed.returncode == -signal.SIGKILL and killed.events == kill_at, killed.stderr
        has_checkpoint = (out / "checkpoints" / "last.safetensors").is_file()
        resumed += has_checkpoint
        again = _finetune(out, 0, "--resume" if has_checkpoint else "--force")
        assert again.returncode == 0, again.stderr
        got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        assert same_tensors(got, want), f"kill at write {kill_at}"
        assert files.read_json(out / "summary.json") == summary
        assert records(out / "metrics.jsonl") == records(reference / "metrics.jsonl")
        assert records(out / "probes.jsonl") == records(reference / "probes.jsonl")
        assert not (out / "checkpoints" / "last.safetensors").exists()
    assert resumed >= 1, f"no kill point of {points} left a checkpoint to resume"


@pytest.mark.slow
def test_two_process_finetune_resumes_bit_identically(tmp_path):
    """Data parallel over two CPU processes (gloo): a run resumed from its step-4 checkpoint
    (every process's generator and the shared data order restored) ends with the adapters and
    metrics of the uninterrupted run."""
    import shutil
    import subprocess
    import sys

    from conftest import HANG_GUARD_S

    sets = ["model.family=llada", "train.steps=12", "train.lr=3e-3", "train.batch_size=8",
            "data.max_eval=4", "data.max_train=40", "probe.n_facts=4", "probe.every=0",
            "eval.gen_length=3", "eval.n_distractors=2", "eval.n_mc=2", "train.log_every=2",
            "train.checkpoint_every=4", "train.keep_checkpoints=true"]  # fmt: skip

    def launch(out, *extra):
        args = [x for s in sets for x in ("--set", s)]
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
             "revcurse", "finetune", "--out", str(out), "--no-progress", *extra, *args],
            capture_output=True, text=True, timeout=HANG_GUARD_S,
        )  # fmt: skip
        # a rank's one-line refusal first: rank 0's traceback would push it out of the tail
        refusals = [line for line in done.stderr.splitlines() if "error: " in line]
        assert done.returncode == 0, "\n".join([*refusals, done.stderr[-3000:]])

    def stopped_after_step_4(out):  # the state of the run had it stopped after that checkpoint
        shutil.copytree(full, out)
        for name in ("adapter", "generations/after"):
            shutil.rmtree(out / name)
        for name in ("summary.json", "report.md", "timings.json"):
            (out / name).unlink()
        shutil.copy(out / "checkpoints" / "step-0000004.safetensors",
                    out / "checkpoints" / "last.safetensors")  # fmt: skip

    full, cut, alone = tmp_path / "full", tmp_path / "cut", tmp_path / "alone"
    launch(full)
    stopped_after_step_4(cut)
    launch(cut, "--resume")
    # One process cannot continue a run of two: its random streams are part of the run.
    stopped_after_step_4(alone)
    single = run_cli("finetune", "--out", str(alone), "--resume",
                     *[x for s in sets for x in ("--set", s)])  # fmt: skip
    assert single.returncode == 2 and "run of 2 process(es)" in single.stderr
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (full, cut))
    assert same_tensors(a, b)
    assert records(full / "metrics.jsonl") == records(cut / "metrics.jsonl")
