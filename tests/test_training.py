"""Training loop: schedule, determinism, checkpoints (safetensors only), non-finite loss."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config

from revcurse import files
from revcurse.config import TrainConfig, apply_overrides
from revcurse.errors import RevcurseError
from revcurse.evaluation import evaluate
from revcurse.experiments.toy_run import build_dataset, load_checkpoint, train
from revcurse.training import lr_factor


def test_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(109, cfg) == pytest.approx(0.1)
    mid = lr_factor(10 + 99 // 2, cfg)
    assert 0.5 < mid < 0.6  # halfway through the cosine: 0.1 + 0.9 * ~0.5
    linear = TrainConfig(steps=110, warmup_steps=10, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(59, linear) == pytest.approx(1 - 49 / 99)
    assert lr_factor(80, TrainConfig(steps=110, warmup_steps=10, schedule="constant")) == 1.0


@pytest.mark.parametrize("causal", [False, True])
def test_same_config_same_summary(causal):
    cfg = tiny_run_config(causal=causal)
    a, b = train(cfg), train(cfg)
    for key in ("final_loss", "forward_accuracy", "reverse_answer_logprob"):
        assert a[key] == b[key]
    c = train(apply_overrides(cfg, ["train.seed=1"]))
    assert c["final_loss"] != a["final_loss"]


def test_run_directory_and_checkpoint_round_trip(tmp_path):
    cfg = tiny_run_config(causal=False)
    cfg = apply_overrides(cfg, ["train.checkpoint_every=10", "train.keep_checkpoints=true"])
    summary = train(cfg, tmp_path / "run", command="test")
    run = tmp_path / "run"
    for name in ["config.yaml", "command.txt", "env.json", "metrics.jsonl", "summary.json",
                 "predictions.json", "checkpoints/final.safetensors",
                 "checkpoints/step-0000010.safetensors"]:  # fmt: skip
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.tmp"))
    records = files.read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20]
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))

    model, loaded_cfg, vocab, step = load_checkpoint(run / "checkpoints" / "final.safetensors")
    assert loaded_cfg == cfg and step == 20
    dataset, _ = build_dataset(cfg)
    again = evaluate(model, dataset, vocab)
    assert again["forward_answer_logprob"] == pytest.approx(summary["forward_answer_logprob"])
    tensors = files.load_tensors(run / "checkpoints" / "final.safetensors")
    assert any(k.startswith("optimizer.") and k.endswith("exp_avg") for k in tensors)


def test_tied_checkpoint_round_trip(tmp_path):
    cfg = tiny_run_config(causal=True, tie_embeddings=True)
    train(cfg, tmp_path / "run")
    model, *_ = load_checkpoint(tmp_path / "run" / "checkpoints" / "final.safetensors")
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path):
    cfg = tiny_run_config(causal=False)
    train(cfg, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "final.safetensors"
    tensors = files.load_tensors(path)
    tensors["model.model.norm.weight"] = torch.zeros(3)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    files.save_tensors(path, tensors, meta)
    with pytest.raises(RevcurseError, match="weights do not match the model"):
        load_checkpoint(path)


def test_pickle_and_garbage_checkpoints_are_refused(tmp_path):
    pickled = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, pickled)  # a pickle-based file under a safetensors name
    with pytest.raises(RevcurseError, match="not a valid safetensors file"):
        load_checkpoint(pickled)
    with pytest.raises(RevcurseError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_non_finite_loss_stops_with_a_clear_message():
    cfg = apply_overrides(tiny_run_config(causal=True), ["train.lr=1e30", "train.grad_clip=0"])
    with pytest.raises(RevcurseError, match="non-finite loss"):
        train(cfg)


def _deterministic(summary: dict) -> dict:
    """A summary without its wall-clock timings (the only fields a rerun may change)."""
    out = {k: v for k, v in summary.items() if not k.endswith("_seconds")}
    if out.get("probe"):
        out["probe"] = {k: v for k, v in out["probe"].items() if not k.endswith("_seconds")}
    return out


def _train_interrupted(monkeypatch, cfg, out, step: int) -> None:
    """Train ``cfg`` into ``out`` and stop it (like a Ctrl-C) when it reaches optimizer ``step``."""
    from revcurse import training

    original = training.lr_factor

    def lr_factor(s, tc):
        if s == step:
            raise KeyboardInterrupt
        return original(s, tc)

    with monkeypatch.context() as m:
        m.setattr(training, "lr_factor", lr_factor)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out)


@pytest.mark.parametrize(
    ("causal", "compiled", "precision"),
    [(False, False, "auto"), (True, False, "auto"), (False, True, "auto"), (False, True, "bf16")],
)
def test_resume_from_checkpoint_is_bit_identical(tmp_path, monkeypatch, causal, compiled,
                                                 precision):  # fmt: skip
    """An interrupted run resumed from its checkpoint ends as the uninterrupted one, bit for bit:
    eagerly, and compiled (train.compile, as the Person-Description preset trains; the resumed
    process compiles the same graphs again), in float32 and in CPU bf16 autocast."""
    cfg = apply_overrides(
        tiny_run_config(causal=causal),
        ["train.steps=30", "train.checkpoint_every=10", "train.log_every=4", "probe.every=6",
         "probe.distances=[0]", f"train.compile={str(compiled).lower()}",
         f"train.precision={precision}"],
    )  # fmt: skip
    torch._dynamo.reset()  # each training compiles its own graphs, as in its own process
    full = train(cfg, tmp_path / "full")
    run = tmp_path / "run"
    _train_interrupted(monkeypatch, cfg, run, 25)  # after the checkpoint at 20; records to 24
    assert (run / "checkpoints" / "last.safetensors").is_file()
    assert '"step": 24' in (run / "metrics.jsonl").read_text()  # stale records to be redone
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # as a new process would, the resumed run compiles its graphs afresh
    counters.clear()
    resumed = train(cfg, run, resume=True)
    assert (counters["stats"]["unique_graphs"] > 0) == compiled  # it really ran compiled, or not
    assert _deterministic(resumed) == _deterministic(full)
    for name in ("metrics.jsonl", "probes/probes.jsonl"):
        strip = [
            {k: v for k, v in r.items() if k != "seconds"} for r in files.read_jsonl(run / name)
        ]
        ref = [{k: v for k, v in r.items() if k != "seconds"}
               for r in files.read_jsonl(tmp_path / "full" / name)]  # fmt: skip
        assert strip == ref, name
    a = files.load_tensors(run / "checkpoints" / "final.safetensors")
    b = files.load_tensors(tmp_path / "full" / "checkpoints" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (run / "checkpoints" / "last.safetensors").exists()


def test_resume_refuses_another_config(tmp_path, monkeypatch):
    cfg = apply_overrides(tiny_run_config(causal=False), ["train.checkpoint_every=10"])
    _train_interrupted(monkeypatch, cfg, tmp_path / "run", 15)
    with pytest.raises(RevcurseError, match="another config"):
        train(apply_overrides(cfg, ["train.lr=0.5"]), tmp_path / "run", resume=True)


def test_stale_temporaries_of_a_killed_writer_are_removed_on_resume(tmp_path, monkeypatch):
    cfg = apply_overrides(tiny_run_config(causal=False), ["train.checkpoint_every=10"])
    _train_interrupted(monkeypatch, cfg, tmp_path / "run", 15)
    # named as files._atomic names its temporaries (mkstemp in the target's folder)
    fd, name = tempfile.mkstemp(dir=tmp_path / "run" / "checkpoints", prefix=".last.safetensors.",
                                suffix=".tmp")  # fmt: skip
    os.write(fd, b"half a checkpoint")
    os.close(fd)
    stale = Path(name)
    theirs = tmp_path / "run" / ".my-notes.tmp"  # not ours: never deleted
    theirs.write_text("mine")
    train(cfg, tmp_path / "run", resume=True)
    assert not stale.exists() and theirs.read_text() == "mine"


def test_gradient_accumulation_gives_the_whole_batch_update():
    """A deterministic loss (next-token) on statements of one length: the same 8 rows per step in
    one pass, in passes of 2, or of 3 (3 + 3 + 2, weighted by rows) end at the same weights."""
    from revcurse.data.tokenize import training_batch
    from revcurse.experiments.toy_run import build_model
    from revcurse.objectives import run_loss
    from revcurse.training import batch_layout, fit

    cfg = tiny_run_config(causal=True)
    dataset, vocab = build_dataset(cfg)
    data = training_batch(dataset, vocab, "next_token", "all")
    ends = {}
    for micro in (0, 2, 3):
        train_cfg = apply_overrides(cfg.train, ["steps=3", "batch_size=8", "lr=0.01",
                                                f"micro_batch_size={micro}"])  # fmt: skip
        model = build_model(cfg, len(vocab))
        fitted = fit(model, data, run_loss("next_token", vocab.mask_id), train_cfg)
        ends[micro] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert fitted.batch["global_batch"] == 8
        assert fitted.batch["accumulation"] == {0: 1, 2: 4, 3: 3}[micro]
    torch.testing.assert_close(ends[2], ends[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ends[3], ends[0], rtol=1e-5, atol=1e-6)
    # Eight processes share a batch of 64 (8 rows each); it must split evenly.
    layout = batch_layout(100, apply_overrides(cfg.train, ["batch_size=64"]), 8)
    assert (layout["per_process"], layout["accumulation"]) == (8, 1)
    with pytest.raises(RevcurseError, match="do not split evenly over 3 processes"):
        batch_layout(100, apply_overrides(cfg.train, ["batch_size=64"]), 3)


def test_a_symlinked_run_lock_is_refused_and_its_target_left_untouched(tmp_path):
    """A run folder whose .lock is a symlink to a user's file: taking the lock refuses in one
    line, and the file it points to keeps every byte (opening it with 'w' truncated it)."""
    from revcurse.errors import RevcurseError
    from revcurse.files import run_lock

    victim = tmp_path / "thesis.txt"
    victim.write_text("years of work\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with (
        pytest.raises(RevcurseError, match=r"\.lock: cannot be used as this run's lock"),
        run_lock(run, blocking=False),
    ):
        pass
    assert victim.read_text() == "years of work\n"
    plain = tmp_path / "plain"
    with run_lock(plain, blocking=False):  # an ordinary run takes its lock as before
        assert (plain / ".lock").is_file()


def test_force_into_a_users_folder_leaves_their_hidden_files_alone(tmp_path):
    """--force lets a run write into a non-empty folder; it does not make the folder ours. A file
    of the user's that happens to look like one of revcurse's temporaries survives, below the
    folder and in it; only a resume of a run (its config matched) clears temporaries."""
    from typer.testing import CliRunner

    from revcurse.cli import app

    folder = tmp_path / "mine"
    (folder / "deep").mkdir(parents=True)
    keep = [folder / ".draft.abcdefgh.tmp", folder / "deep" / ".notes.12345678.tmp"]
    for path in keep:
        path.write_text("mine\n")
    tiny = ["--set", "data.n_pairs=4", "--set", "model.d_model=8", "--set", "model.n_heads=1",
            "--set", "train.steps=2", "--set", "train.warmup_steps=0", "--set", "probe.enabled=false"]  # fmt: skip
    result = CliRunner().invoke(
        app, ["train", "--out", str(folder), "--force", "--no-progress", *tiny]
    )
    assert result.exit_code == 0, result.output
    assert all(path.read_text() == "mine\n" for path in keep)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_good_file(
    tmp_path, monkeypatch
):
    """A checkpoint write that fails for lack of space (ENOSPC, as a full disk raises it) is a
    one-line error naming the file; the checkpoint it would have replaced keeps every byte and no
    temporary is left beside it."""
    import errno

    import revcurse.files as F
    from revcurse.errors import RevcurseError

    path = tmp_path / "checkpoints" / "last.safetensors"
    F.save_tensors(path, {"w": torch.ones(3)}, {"step": "10"})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(F, "save_file", full)
    with pytest.raises(RevcurseError, match=r"last.safetensors: could not be written \(No space"):
        F.save_tensors(path, {"w": torch.zeros(3)}, {"step": "20"})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.safetensors"]


def test_the_default_batch_is_the_whole_set_only_up_to_a_bound():
    """batch_size 0 keeps the whole set every step while it is small (every published run), and
    draws shuffled batches of FULL_BATCH_MAX rows once it is larger, so a step at 10,000 facts
    costs what one at 1,024 does."""
    from revcurse.config import TrainConfig
    from revcurse.training import FULL_BATCH_MAX, DataOrder, batch_layout

    small = DataOrder(FULL_BATCH_MAX, 0, torch.Generator().manual_seed(0))
    assert small.full and small.next() is None
    large = DataOrder(10_000, 0, torch.Generator().manual_seed(0))
    rows = [large.next() for _ in range(10_000 // FULL_BATCH_MAX)]
    assert not large.full and {len(r) for r in rows} == {FULL_BATCH_MAX}
    assert len(torch.cat(rows).unique()) == len(torch.cat(rows))  # one epoch: no row twice
    assert batch_layout(10_000, TrainConfig(batch_size=0), 1)["global_batch"] == FULL_BATCH_MAX
    assert batch_layout(10_000, TrainConfig(batch_size=20_000), 1)["global_batch"] == 10_000
    assert batch_layout(300, TrainConfig(batch_size=0), 1)["global_batch"] == 300


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_a_compiled_run_trains_the_uncompiled_runs_model(tmp_path, causal):
    """train.compile steps a torch.compile wrapper of the model: the same draws and updates, so
    the same losses and weights up to float rounding (inductor fuses and reorders float32
    arithmetic). Stated tolerance over 20 steps: losses within 1e-4 relative, weights within 1e-4;
    the checkpoint holds the plain model's weights (no compile wrapper's names)."""
    cfg = apply_overrides(tiny_run_config(causal=causal), ["train.checkpoint_every=10"])
    from torch._dynamo.utils import counters

    plain = train(cfg, tmp_path / "plain")
    torch._dynamo.reset()  # graphs another test compiled would be reused uncounted
    counters.clear()
    compiled = train(apply_overrides(cfg, ["train.compile=true"]), tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] > 0  # it really ran compiled
    assert compiled["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-4)
    losses = [[r["loss"] for r in files.read_jsonl(tmp_path / run / "metrics.jsonl")
               if r["kind"] == "train"] for run in ("plain", "compiled")]  # fmt: skip
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    a, _, _, _ = load_checkpoint(tmp_path / "plain" / "checkpoints" / "final.safetensors")
    b, _, _, _ = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "final.safetensors")
    for (name, x), (other, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert name == other
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_a_bf16_run_trains_the_float32_runs_model_in_bf16(tmp_path, causal):
    """train.precision=bf16 runs each step's forward under CPU bf16 autocast: the same draws and
    updates as the float32 run, up to bf16 rounding. Stated tolerance over 20 steps of the tiny
    run: losses within 1e-3 relative (measured: under 1e-4), weights within 1e-2; and not equal
    (it really ran in bf16). Evaluation reads the trained model in float32: the summary's
    likelihoods are those of the checkpoint's model read afresh, with no autocast."""
    cfg = apply_overrides(tiny_run_config(causal=causal), ["train.checkpoint_every=10"])
    plain = train(cfg, tmp_path / "plain")
    bf16_cfg = apply_overrides(cfg, ["train.precision=bf16"])
    bf16 = train(bf16_cfg, tmp_path / "bf16")
    losses = [[r["loss"] for r in files.read_jsonl(tmp_path / run / "metrics.jsonl")
               if r["kind"] == "train"] for run in ("plain", "bf16")]  # fmt: skip
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    assert max(abs(b - a) / abs(a) for a, b in zip(*losses, strict=True)) > 1e-6  # not float32
    a, _, _, _ = load_checkpoint(tmp_path / "plain" / "checkpoints" / "final.safetensors")
    b, _, vocab, _ = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "final.safetensors")
    for (name, x), (other, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert name == other and y.dtype == torch.float32
        torch.testing.assert_close(y, x, rtol=1e-2, atol=1e-2)
    again = evaluate(b, build_dataset(bf16_cfg)[0], vocab)
    for key in ("forward_answer_logprob", "reverse_answer_logprob"):
        assert bf16[key] == pytest.approx(again[key], rel=1e-6, abs=1e-9), key
        assert bf16[key] != plain[key], key  # a bf16-trained model, read in float32
