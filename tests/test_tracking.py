"""``--log-with``: trackers mirror a run's record (metrics.jsonl, probes.jsonl) and change nothing
in it. Each tracker's own files are read back and checked value by value against the record:
TensorBoard's event files with TensorBoard's reader, an offline W&B run's transaction log with
W&B's own record schema, an MLflow file store with MLflow's client."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, tiny_run_config
from test_finetune import TINY

from revcurse import files, tracking
from revcurse.config import FinetuneConfig, apply_overrides
from revcurse.errors import RevcurseError
from revcurse.experiments.finetune import run_finetune
from revcurse.experiments.toy_run import train
from revcurse.probes.runner import record_values


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """Every scalar TensorBoard holds for a run: tag -> step -> value."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(
        str(run / "trackers" / tracking.PROJECT), size_guidance={"scalars": 0}
    )
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def expected(lines: list[dict], prefix=lambda line: line["kind"]) -> dict[str, dict[int, float]]:
    """What the trackers should hold for record lines: every finite number, at its step."""
    out: dict[str, dict[int, float]] = {}
    for line in lines:
        for tag, value in tracking.scalars(prefix(line), line).items():
            out.setdefault(tag, {})[line["step"]] = value
    return out


def assert_same(logged: dict[int, float], record: dict[int, float], tag: str) -> None:
    assert logged.keys() == record.keys(), tag
    for step, value in record.items():  # TensorBoard stores float32
        assert logged[step] == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, step)


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-<id>.wandb``): a 7-byte header (``:W&B``,
    magic, version), then LevelDB-log framing in 32 KiB blocks (per chunk: CRC32, length, type:
    1 full, 2 first, 3 middle, 4 last), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too short for a chunk header: the block's zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_logged(run: Path) -> tuple[dict[str, dict[int, float]], dict]:
    """An offline W&B run's history (tag -> step -> value) and its config."""
    (path,) = (run / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    logged: dict[str, dict[int, float]] = {}
    config = {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                   for i in record.history.item}  # fmt: skip
            for tag, value in row.items():
                if not tag.startswith("_"):
                    logged.setdefault(tag, {})[row["_step"]] = value
        elif kind == "config":
            config |= {i.key: json.loads(i.value_json) for i in record.config.update}
    return logged, config


def mlflow_logged(run: Path, uri: str) -> tuple[dict[str, dict[int, float]], dict]:
    """An MLflow run's metric histories (tag -> step -> value) and its parameters, found in the
    ``revcurse`` experiment by the run folder's name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.PROJECT)
    (found,) = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.mlflow.runName = '{run.name}'")  # fmt: skip
    logged = {
        tag: {m.step: m.value for m in client.get_metric_history(found.info.run_id, tag)}
        for tag in found.data.metrics
    }
    return logged, found.data.params


@pytest.mark.parametrize("tracker", tracking.TRACKERS)
def test_each_tracker_holds_the_toy_runs_metrics_and_probes_exactly(tracker, tmp_path, monkeypatch):
    pytest.importorskip(tracker)
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("WANDB_MODE", "offline")  # no account, no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 otherwise wants a database
    cfg = apply_overrides(tiny_run_config(), ["probe.every=10"])
    plain = train(cfg, tmp_path / "plain")
    tracked = train(cfg, tmp_path / "tracked", log_with=(tracker,))
    # the trackers are a view: the run (its id, every number, its files) is the same without them
    drop = ("train_seconds", "probe_seconds")
    assert {k: v for k, v in plain.items() if k not in drop} == {
        k: v for k, v in tracked.items() if k not in drop
    }
    record = files.read_jsonl(tmp_path / "tracked" / "metrics.jsonl")
    assert record == files.read_jsonl(tmp_path / "plain" / "metrics.jsonl")

    want = expected(record)
    probes = files.read_jsonl(tmp_path / "tracked" / "probes" / "probes.jsonl")
    for tag, by_step in expected(
        [{"step": p["step"], **record_values(p)} for p in probes], lambda _: "probe"
    ).items():
        want[tag] = by_step
    assert {"train/loss", "eval/reverse_accuracy", "probe/attention_pearson_mirror"} <= set(want)
    if tracker == "tensorboard":
        logged = scalars(tmp_path / "tracked")
        (hparams,) = (tmp_path / "tracked" / "trackers").rglob("hparams.yml")
        config = yaml.safe_load(hparams.read_text())
    elif tracker == "wandb":
        logged, config = wandb_logged(tmp_path / "tracked")
    else:
        logged, config = mlflow_logged(tmp_path / "tracked", uri)
    assert set(logged) == set(want)
    for tag in want:
        assert_same(logged[tag], want[tag], tag)
    # the resolved config is stored as the run's hyperparameters (MLflow keeps them as text)
    assert str(config["model.d_model"]) == str(cfg.model.d_model)


def test_tensorboard_holds_a_finetune_runs_loss_and_evaluations(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = apply_overrides(FinetuneConfig(), ["model.family=llada", *TINY])
    summary = run_finetune(cfg, tmp_path / "run", progress=False, log_with=("tensorboard",))
    logged = scalars(tmp_path / "run")
    record = files.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    for tag, by_step in expected(record).items():
        assert_same(logged[tag], by_step, tag)
    for stage, step in (("before", 0), ("after", cfg.train.steps)):
        for split, metrics in summary[stage].items():
            assert logged[f"{stage}/{split}/exact"][step] == pytest.approx(metrics["exact"])


def test_trackers_are_checked_before_anything_is_written(tmp_path, monkeypatch):
    assert tracking.check_trackers(["tensorboard", "tensorboard"]) == ("tensorboard",)
    with pytest.raises(RevcurseError, match="did you mean 'tensorboard'"):
        tracking.check_trackers(["tensorbord"])
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RevcurseError, match=r"the wandb package is not installed \(pip install"):
        tracking.check_trackers(["wandb"])
    monkeypatch.undo()

    out = tmp_path / "run"
    done = run_cli("train", "--out", str(out), "--log-with", "tensorboard,tensorbord")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --log-with: unknown tracker 'tensorbord' (expected one of tensorboard, wandb, "
        "mlflow); did you mean 'tensorboard'?"
    ]
    assert not out.exists()


def test_the_command_line_logs_a_run_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    done = run_cli("train", "--out", str(out), "--log-with", "tensorboard", "--no-progress",
                   "--set", "train.steps=10", "--set", "train.log_every=5", "--set",
                   "probe.enabled=false")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [line["step"] for line in lines if line["kind"] == "train"]
    assert sorted(scalars(out)["train/loss"]) == train_steps == [5, 10]


def test_tensorboard_holds_a_text_runs_metrics_probes_and_evaluation(tmp_path):
    from revcurse.config import TextRunConfig
    from revcurse.experiments.from_scratch import train_run

    pytest.importorskip("tensorboard")
    cfg = apply_overrides(TextRunConfig(), ["n_people=2", "train.steps=8", "max_eval=4",
                                            "probe.n_facts=4", "probe.every=4",
                                            "train.log_every=4"])  # fmt: skip
    summary = train_run(cfg, tmp_path / "run", log_with=("tensorboard",))
    logged = scalars(tmp_path / "run")
    want = expected(files.read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    probes = files.read_jsonl(tmp_path / "run" / "probes.jsonl")
    want |= expected([{"step": p["step"], **record_values(p)} for p in probes], lambda _: "probe")
    for split, metrics in summary["splits"].items():
        for tag, value in tracking.scalars(f"eval/{split}", metrics).items():
            want[tag] = {cfg.train.steps: value}
    assert {"probe/attention_pearson_mirror", "eval/d2p_mirror_train/exact"} <= set(want)
    assert set(logged) == set(want)
    for tag in want:
        assert_same(logged[tag], want[tag], tag)


def test_a_tracker_missing_its_setup_or_failing_to_import_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch
):
    """W&B with neither offline mode, a key nor a login; MLflow 3 on a local folder without
    MLFLOW_ALLOW_FILE_STORE; a package that is installed but fails to import: each is one line,
    exit 2, and no run folder (a traceback after a half-written folder that blocked the retry,
    before)."""
    import importlib

    from typer.testing import CliRunner

    from revcurse.cli import app

    for var in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    tiny = ["--set", "data.n_pairs=4", "--set", "model.d_model=8", "--set", "model.n_heads=1",
            "--set", "train.steps=2", "--set", "probe.enabled=false"]  # fmt: skip

    def refused(tracker: str, fragment: str) -> None:
        out = tmp_path / f"run-{tracker}"
        result = CliRunner().invoke(app, ["train", "--out", str(out), "--no-progress",
                                          "--log-with", tracker, *tiny])  # fmt: skip
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.stderr
        assert not out.exists()

    refused("wandb", "set WANDB_MODE=offline")
    refused("mlflow", "MLFLOW_ALLOW_FILE_STORE=true")
    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "tensorboard":
            raise RuntimeError("protobuf version mismatch\nmore lines")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    refused("tensorboard", "fails to import (RuntimeError: protobuf version mismatch)")
