"""Sweeps: grid expansion, the run index, failure isolation, resume after SIGKILL, Ray backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from revcurse.config import SweepConfig, apply_overrides, config_hash, dump_yaml
from revcurse.errors import ConfigError
from revcurse.experiments.sweep import get_named, load_sweep_config, named_experiments, run_sweep
from revcurse.store import Store

TINY = [
    "data.n_pairs=6", "model.d_model=16", "train.steps=40", "train.warmup_steps=2",
    "train.log_every=10", "train.eval_every=20", "train.checkpoint_every=10",
    "probe.every=20", "probe.distances=[0]", "probe.per_example=false", "workers=1",
]  # fmt: skip


def tiny_sweep(**grid) -> SweepConfig:
    cfg = apply_overrides(SweepConfig(name="t"), TINY)
    return apply_overrides(cfg, [f"grid={json.dumps(grid)}", "seeds=[0, 1]"])


def test_grid_expansion_labels_and_unique_ids():
    cfg = tiny_sweep(**{"model.positional": ["rope", "alibi"], "model.causal": [False, True]})
    runs = cfg.expand()
    assert len(runs) == 2 * 2 * 2
    labels = [lab for lab, _ in runs]
    assert labels[0] == {
        "model.positional": "rope",
        "model.causal": False,
        "family": "mdm",
        "seed": 0,
    }
    assert len({config_hash(c) for _, c in runs}) == 8
    assert {c.model.positional for _, c in runs} == {"rope", "alibi"}


def test_variants_cross_the_grid():
    cfg = apply_overrides(
        tiny_sweep(**{"model.n_layers": [1, 2]}),
        ['variants={"a": ["train.lr=0.01"], "b": ["model.causal=true"]}'],
    )
    runs = cfg.expand()
    assert len(runs) == 2 * 2 * 2
    assert {(lab["variant"], c.train.lr, c.model.causal) for lab, c in runs} >= {
        ("a", 0.01, False), ("b", cfg.train.lr, True)
    }  # fmt: skip


def test_bad_grid_key_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'model.d_model'"):
        tiny_sweep(**{"model.d_modle": [8]})
    with pytest.raises(ConfigError, match="non-empty list"):
        tiny_sweep(**{"model.d_model": []})


def test_named_experiments_expand_to_valid_configs():
    sizes = {name: len(n.sweep.expand()) for name, n in named_experiments().items()}
    # 5 seeds each (the named experiments default to 5 seeds).
    assert sizes == {
        "pe-ablation": 50,
        "depth": 60,
        "objective": 30,
        "distance": 195,
        "bridge": 75,  # its two-layer slice trains the MDM only (#30)
        "entity-length": 50,  # 7 MDM cells and 3 ARM cells: shared cells run once
        "objective-attention": 30,  # 6 cells: the MDM and the ARM shared by two slices each
        "objective-attention-entities": 30,  # the same grid on two-token unshared entities
        "entity-masking": 40,  # L {2, 4} x spelling x mask unit, MDM
        "weight-decay": 40,  # 4 decays x MDM and ARM
        "scale": 80,
    }
    assert get_named("scale").sweep.train.batch_size == 256
    # --quick shortens the slice that sets its own steps as well
    quick, _ = load_sweep_config("bridge", None, [], quick=True)
    assert {run.train.steps for _, run in quick.expand()} == {3000}
    # the bridge's two-layer slice: the MDM only, compiled, in the full design and --quick alike
    for sweep in (get_named("bridge").sweep, quick):
        deep = {
            (r.model.causal, r.train.compile) for _, r in sweep.expand() if r.model.n_layers == 2
        }
        assert deep == {(False, True)}
    # entity-length: each slice moves one of length, spelling and pool; the cells, once each
    cells = {(r.data.entity_tokens, r.data.entity_spelling, r.data.entity_pool, r.model.causal)
             for _, r in get_named("entity-length").sweep.expand()}  # fmt: skip
    assert cells == {(1, "unique", 0, False), (2, "unique", 0, False), (4, "unique", 0, False),
                     (2, "shared", 0, False), (4, "shared", 0, False), (4, "shared", 15, False),
                     (2, "shared", 100, False), (1, "unique", 0, True), (2, "unique", 0, True),
                     (4, "unique", 0, True)}  # fmt: skip


def test_store_never_duplicates_and_records_status(tmp_path):
    store = Store(tmp_path / "index.sqlite")
    store.register("e", [("a", {"seed": 0}, {}), ("b", {"seed": 1}, {})])
    store.register("e", [("a", {"seed": 0}, {})])
    store.set_status("a", "done", {"reverse_accuracy": 1.0})
    store.set_status("b", "failed", error="boom")
    rows = store.rows()
    assert [(r["run_id"], r["status"]) for r in rows] == [("a", "done"), ("b", "failed")]
    assert rows[0]["summary"] == {"reverse_accuracy": 1.0} and rows[1]["error"] == "boom"
    assert store.integrity() == "ok"
    with pytest.raises(KeyError):
        store.set_status("zzz", "done")


def test_failing_run_is_recorded_and_others_finish(tmp_path):
    cfg = apply_overrides(
        tiny_sweep(**{"model.causal": [False]}),
        ['variants={"ok": [], "diverges": ["train.lr=1e30", "train.grad_clip=0"]}', "seeds=[0]"],
    )
    summary = run_sweep(cfg, tmp_path / "s", progress=False)
    status = {r["variant"]: r["status"] for r in summary["rows"]}
    assert status == {"ok": "done", "diverges": "failed"}
    failed = next(r for r in summary["rows"] if r["status"] == "failed")
    assert "non-finite loss" in failed["error"]
    assert (tmp_path / "s" / "runs" / failed["run_id"] / "error.json").is_file()
    assert summary["n_failed"] == 1 and len(summary["aggregates"]) == 1
    assert "Failed runs" in (tmp_path / "s" / "report.md").read_text()


def test_rerun_skips_finished_runs(tmp_path):
    cfg = tiny_sweep(**{"model.causal": [False, True]})
    first = run_sweep(cfg, tmp_path / "s", progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "runs").rglob("summary.json")}
    second = run_sweep(cfg, tmp_path / "s", progress=False)
    assert first == second
    assert stamp == {
        p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "runs").rglob("summary.json")
    }


def test_a_sweeps_wall_time_sums_its_sittings_and_no_one_elses(tmp_path):
    """timings.json's wall_seconds: a second sitting of a sweep adds its own seconds to what the
    first recorded (set by hand to 1000 s here, so the sum is read exactly), while a sweep written
    into a user's folder with --force does not count a timings.json it finds there."""
    cfg = tiny_sweep(**{"model.causal": [False]})
    run_sweep(cfg, tmp_path / "s", progress=False)
    timings = tmp_path / "s" / "timings.json"
    once = json.loads(timings.read_text())
    timings.write_text(json.dumps(once | {"wall_seconds": 1000.0}))
    run_sweep(cfg, tmp_path / "s", progress=False)
    twice = json.loads(timings.read_text())
    assert 1000.0 < twice["wall_seconds"] < 1000.0 + 600 and twice["runs"] == once["runs"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "timings.json").write_text(json.dumps({"wall_seconds": 1000.0}))
    run_sweep(cfg, theirs, progress=False, force=True)
    assert json.loads((theirs / "timings.json").read_text())["wall_seconds"] < 600


def _sweep_cmd(config, out):
    return [sys.executable, "-m", "revcurse", "sweep", "--config", str(config), "--out", str(out),
            "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume_gives_the_uninterrupted_summary(tmp_path):
    cfg = apply_overrides(
        tiny_sweep(**{"model.positional": ["rope", "learned"], "model.causal": [False, True]}),
        ["train.steps=300", "train.checkpoint_every=25", "workers=2"],
    )
    config = tmp_path / "sweep.yaml"
    config.write_text(dump_yaml(cfg))
    reference = subprocess.run(_sweep_cmd(config, tmp_path / "ref"), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(_sweep_cmd(config, out), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # Wait on the sweep's own progress (some runs finished, others mid-training: a checkpoint and no
    # summary), or its exit; never on the clock.
    while proc.poll() is None:
        done = list(out.glob("runs/*/summary.json"))
        mid = [p for p in out.glob("runs/*/checkpoints/last.safetensors")]
        if done and mid:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers
    proc.wait()
    assert done and mid, "the sweep finished before it could be killed mid-way"
    assert not (out / "summary.json").exists()

    resumed = subprocess.run(_sweep_cmd(config, out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "summary.json").read_text() == (tmp_path / "ref" / "summary.json").read_text()
    store = Store(out / "index.sqlite", create=False)
    assert store.integrity() == "ok"
    rows = store.rows()
    assert len(rows) == len({r["run_id"] for r in rows}) == 8
    assert all(r["status"] == "done" for r in rows)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_ray_backend_with_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    cfg = apply_overrides(
        tiny_sweep(**{"model.causal": [False, True]}), ["backend=ray", "seeds=[0]"]
    )
    try:
        summary = run_sweep(cfg, tmp_path / "ray", progress=False)
    finally:
        ray.shutdown()
    local = run_sweep(apply_overrides(cfg, ["backend=local"]), tmp_path / "local", progress=False)
    assert summary["n_failed"] == 0 and summary["rows"] == local["rows"]


def test_sweep_yaml_round_trip(tmp_path):
    cfg = tiny_sweep(**{"model.positional": ["rope", "none"]})
    path = tmp_path / "s.yaml"
    path.write_text(dump_yaml(cfg))
    assert yaml.safe_load(path.read_text())["grid"] == {"model.positional": ["rope", "none"]}
    from revcurse.config import load_yaml

    assert load_yaml(SweepConfig, path) == cfg


def test_sweep_and_runs_commands(tmp_path):
    from typer.testing import CliRunner

    from revcurse.cli import app

    config = tmp_path / "s.yaml"
    config.write_text(dump_yaml(tiny_sweep(**{"model.causal": [False, True]})))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(
        app, ["sweep", "--config", str(config), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "4 runs, 0 failed" in result.stdout
    # where it writes, said once and first (not once per run)
    assert result.stderr.splitlines()[0] == f"writing to {out}"
    assert result.stderr.count("writing to") == 1
    listed = runner.invoke(app, ["runs", "list", str(out)])
    assert listed.exit_code == 0 and listed.stdout.count(" done ") == 4
    compared = runner.invoke(app, ["runs", "compare", str(out), "--by", "model.causal"])
    assert compared.exit_code == 0 and "mdm" in compared.stdout and "arm" in compared.stdout
    for args, fragment in [
        (["runs", "compare", str(out), "--by", "model.caussal"], "did you mean 'model.causal'"),
        (
            ["runs", "compare", str(out), "--by", "model.causal", "--metric", "nope"],
            "unknown metric",
        ),
        (["runs", "list", str(tmp_path / "out" / "figures")], "no finished run in it"),
        (["sweep", "--out", str(tmp_path / "x")], "needs --config"),
        (["reproduce", "depth", "--out", str(out)], "holds sweep 't', not 'depth'"),
    ]:
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2, args
        assert fragment in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _dies_for_seed_1(cfg, run_dir, command, progress=False, log_with=()):
    """A worker that is SIGKILLed (like an OOM kill) when it gets the seed-1 run."""
    from revcurse.experiments.executor import Outcome

    if cfg.train.seed == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return Outcome("done", {"seed": cfg.train.seed}, None)


def test_a_worker_killed_by_the_os_fails_its_run_only(tmp_path):
    from revcurse.experiments.executor import DIED, _run_local, make_jobs

    cfg = apply_overrides(tiny_sweep(**{"model.causal": [False]}), ["seeds=[0, 1, 2, 3]"])
    jobs = make_jobs(cfg.expand(), lambda run_id, _: tmp_path / run_id)
    outcomes = {}
    _run_local(jobs, 2, "test", lambda job, out: outcomes.__setitem__(job.labels["seed"], out),
               False, worker=_dies_for_seed_1)  # fmt: skip
    assert outcomes[1].status == "failed" and outcomes[1].error == DIED
    assert {s: o.status for s, o in outcomes.items()} == {
        0: "done",
        1: "failed",
        2: "done",
        3: "done",
    }


def sliced_sweep() -> SweepConfig:
    cfg = apply_overrides(SweepConfig(name="sliced", grid={}), TINY)
    slices = {
        "masking": {"grid": {"data.n_filler": [0, 1], "train.maskable": ["all", "entities"]},
                    "compare": "train.maskable", "question": "q1"},
        "heads": {"grid": {"model.n_heads": [1, 2], "data.n_filler": [1]},
                  "compare": "model.n_heads", "seeds": [0]},
    }  # fmt: skip
    return apply_overrides(cfg, [f"slices={json.dumps(slices)}", "seeds=[0, 1]"])


def test_slices_share_their_common_cells_and_label_every_swept_key():
    runs = sliced_sweep().expand()
    # masking: 2 x 2 x 2 seeds = 8; heads: 2 x 1 seed, of which n_heads=1 (the default),
    # n_filler=1, maskable=all, seed 0 is already a masking run.
    assert len(runs) == 8 + 1
    keys = ["data.n_filler", "train.maskable", "model.n_heads"]
    for labels, cfg in runs:
        assert [k for k in labels if "." in k] == keys
        assert labels["model.n_heads"] == cfg.model.n_heads  # read from the config
    shared = [lab for lab, _ in runs if lab["slices"] == ["masking", "heads"]]
    assert shared == [{"data.n_filler": 1, "train.maskable": "all", "model.n_heads": 1,
                       "family": "mdm", "seed": 0, "slices": ["masking", "heads"]}]  # fmt: skip


def test_a_slice_compares_only_a_key_of_its_own():
    cfg = sliced_sweep()
    with pytest.raises(ConfigError, match=r"slices.heads.compare.*one of the slice's keys"):
        apply_overrides(cfg, ["slices.heads.compare=train.lr"])


def test_sliced_sweep_fit_readings_and_paired_tests_from_the_runs(tmp_path):
    """The sweep's contrasts are the paired tests of the runs' own per-fact reverse outcomes
    (recomputed here from predictions.json), and every cell carries its fit reading."""
    from revcurse.stats import fit_summary, paired_comparison

    cfg = sliced_sweep()
    summary = run_sweep(cfg, tmp_path / "s", progress=False)
    assert summary["n_runs"] == 9 and summary["n_failed"] == 0
    rows = {(r["data.n_filler"], r["train.maskable"], r["model.n_heads"], r["seed"]): r
            for r in summary["rows"]}  # fmt: skip
    tests = [c for c in summary["contrasts"] if c["slice"] == "masking"]
    assert [(c["cell"], c["value"], c["baseline"]) for c in tests] == [
        ({"data.n_filler": 0}, "entities", "all"), ({"data.n_filler": 1}, "entities", "all")
    ]  # fmt: skip

    def correct(n_filler, maskable, heads, seed):
        run = tmp_path / "s" / "runs" / rows[n_filler, maskable, heads, seed]["run_id"]
        return json.loads((run / "predictions.json").read_text())["correct"]["reverse"]

    for c in tests:
        k = c["cell"]["data.n_filler"]
        expected = paired_comparison([correct(k, "entities", 1, s) for s in (0, 1)],
                                     [correct(k, "all", 1, s) for s in (0, 1)])  # fmt: skip
        assert c["test"] == expected
    (heads,) = [c for c in summary["contrasts"] if c["slice"] == "heads"]
    assert heads["seeds"] == [0] and heads["test"]["n_seeds"] == 1
    for agg in summary["aggregates"]:
        members = [r for r in summary["rows"] if all(r[k] == v for k, v in agg["labels"].items())]
        assert agg["fit"] == fit_summary(members)
    assert "Slice masking" in (tmp_path / "s" / "report.md").read_text()


def test_a_finished_run_of_another_config_is_not_read_back(tmp_path):
    """Experiments name their runs by model and seed (``models/mdm-seed0``), so a rerun into the
    same directory with other settings finds finished runs under the same names: they are read
    back only if their config is exactly the job's, else the experiment stops naming the field,
    and the finished run is left as it was."""
    from revcurse.config import ToyExperimentConfig
    from revcurse.errors import RevcurseError
    from revcurse.experiments.toy import run_toy

    tiny = ["data.n_pairs=8", "model.d_model=16", "model.n_heads=2", "train.steps=20",
            "train.warmup_steps=2", "train.log_every=5", "train.eval_every=10",
            "probe.enabled=false", "families=[mdm]", "seeds=[0]", "workers=1"]  # fmt: skip
    cfg = apply_overrides(ToyExperimentConfig(), tiny)
    run_toy(cfg, tmp_path / "t", progress=False)
    done = tmp_path / "t" / "models" / "mdm-seed0" / "summary.json"
    before = done.read_bytes()
    run_toy(cfg, tmp_path / "t", progress=False, force=True)  # same config: read back
    assert done.read_bytes() == before
    other = apply_overrides(cfg, ["train.steps=30"])
    with pytest.raises(RevcurseError, match=r"mdm-seed0: a finished run of another config.*steps"):
        run_toy(other, tmp_path / "t", progress=False, force=True)
    assert done.read_bytes() == before


def test_a_slice_figure_puts_the_filler_count_else_the_compared_key_on_its_axis(tmp_path):
    from revcurse.report.sweep import figure_axis, slice_figure

    def cells(**values):
        keys = list(values)
        rows = [dict(zip(keys, combo, strict=True)) for combo in zip(*values.values(), strict=True)]
        fit = {"reverse": {"mean": 0.5}}
        return keys, [{"labels": r, "fit": fit} for r in rows]

    keys, made = cells(**{"data.n_filler": [0, 4], "model.n_heads": [1, 4]})
    assert figure_axis(keys, made, "model.n_heads") == "data.n_filler"
    keys, made = cells(**{"data.entity_tokens": [1, 2, 4], "model.causal": [False] * 3})
    assert figure_axis(keys, made, "data.entity_tokens") == "data.entity_tokens"
    keys, made = cells(**{"data.n_pairs": [100, 400]})
    assert figure_axis(keys, made, "") == "data.n_pairs"  # no compared key: the one that varies
    keys, made = cells(**{"model.positional": ["rope", "none"]})
    assert figure_axis(keys, made, "model.positional") is None  # not a number
    keys, made = cells(**{"data.entity_tokens": [1, 2, 4], "model.causal": [False] * 3})
    path = slice_figure("length", "data.entity_tokens", keys, made, tmp_path / "f.png")
    assert path.is_file() and path.stat().st_size > 0


def test_contrasts_read_value_minus_baseline_with_each_cells_own_fit(tmp_path):
    """Contrasts on hand-made runs (no training): in the masking slice the 'entities' cells answer
    every reverse query and fit (with one filler: on seed 0 only), the 'all' baseline cells
    answer none and do not fit their mirror. Without fillers the contrast is entities - all = +1
    on both seeds, decided 'higher'; with one filler +0.5, all of it from one seed, so the
    crossed interval reaches 0 and it stays 'undecided' although its permutation p is small. Each
    carries the value cell's fit label ('reverses') and the baseline's ('unfitted')."""
    from types import SimpleNamespace

    from revcurse import files
    from revcurse.experiments.sweep import contrasts

    cfg = sliced_sweep()
    jobs, outcomes = [], {}
    for n, (labels, _) in enumerate(cfg.expand()):
        good = labels["train.maskable"] == "entities" and (
            labels["data.n_filler"] == 0 or labels["seed"] == 0
        )
        run_dir = tmp_path / f"run{n}"
        files.write_json(run_dir / "predictions.json",
                         {"correct": {"reverse": [good] * 6}})  # fmt: skip
        jobs.append(SimpleNamespace(run_id=f"r{n}", labels=labels, run_dir=run_dir))
        outcomes[f"r{n}"] = SimpleNamespace(status="done", summary={
            "forward_accuracy": 1.0, "mirror_accuracy": 1.0 if good else 0.5,
            "reverse_accuracy": 1.0 if good else 0.0})  # fmt: skip
    masking = [c for c in contrasts(cfg, jobs, outcomes) if c["slice"] == "masking"]
    assert [c["cell"] for c in masking] == [{"data.n_filler": 0}, {"data.n_filler": 1}]
    for c, effect, decided in zip(masking, (1.0, 0.5), ("higher", "undecided"), strict=True):
        assert (c["value"], c["baseline"], c["seeds"]) == ("entities", "all", [0, 1])
        assert c["test"]["effect"] == effect and c["test"]["n_queries"] == 6
        assert c["decision"] == decided
        assert c["fit"] == {"value": "reverses", "baseline": "unfitted"}
    assert masking[1]["test"]["p"] < 0.05 and masking[1]["test"]["ci"][0] <= 0


def test_one_folder_holds_one_sweep_and_one_sweep_runs_in_it_at_a_time(tmp_path):
    """A second sweep of another grid under the same default name would mix its runs into the
    first one's index: refused naming the field, --force or not. The same sweep resumes, with
    other workers too (how it executes is not what it computes). And while one sweep holds the
    folder, another started beside it stops with one line."""
    from revcurse.errors import RevcurseError
    from revcurse.files import Busy, run_lock

    out = tmp_path / "s"
    cfg = apply_overrides(tiny_sweep(**{"model.positional": ["rope"]}), ["seeds=[0]", "name=sweep"])
    run_sweep(cfg, out, progress=False)
    index = (out / "index.sqlite").read_bytes()
    other = apply_overrides(cfg, ['grid={"model.positional": ["alibi"]}'])
    for force in (False, True):
        with pytest.raises(RevcurseError, match=r"holds a sweep of other settings \(field 'grid"):
            run_sweep(other, out, progress=False, force=force)
    assert (out / "index.sqlite").read_bytes() == index
    again = run_sweep(apply_overrides(cfg, ["workers=1"]), out, progress=False)
    assert again["n_runs"] == 1 and again["n_failed"] == 0
    with (
        run_lock(out, blocking=False),  # a sweep running in this folder
        pytest.raises(Busy, match="another process"),
    ):
        run_sweep(cfg, out, progress=False)


def test_runs_of_a_sweep_started_before_a_config_field_was_added_are_not_trained_again(tmp_path):
    """A field added to RunConfig renames every run (the id hashes the whole config), and a
    resumed sweep used to train all of them again beside the finished ones (seen on a 100-run
    sweep resumed after train.mask_unit was added: every cell twice). A run whose config, read
    with today's defaults, is the job's is taken back: finished, or resumed from its checkpoint;
    the renamed row it stood beside leaves the index."""
    import shutil

    out = tmp_path / "s"
    cfg = tiny_sweep(**{"model.positional": ["rope"]})
    first = run_sweep(cfg, out, progress=False)
    store = Store(out / "index.sqlite")
    rows = store.rows()
    assert len(rows) == 2  # two seeds

    # Make the folder look written before train.mask_unit existed: the field absent from every
    # config and each run under the id that config hashed to; one run not finished (no summary,
    # no checkpoint to resume from) and the renamed row of the other already registered, pending.
    import sqlite3

    old_ids = {}
    for row in rows:
        config = row["config"]
        del config["train"]["mask_unit"]
        old = "old" + row["run_id"][3:]
        old_ids[row["run_id"]] = old
        shutil.move(out / "runs" / row["run_id"], out / "runs" / old)
        saved = yaml.safe_load((out / "runs" / old / "config.yaml").read_text())
        del saved["train"]["mask_unit"]
        (out / "runs" / old / "config.yaml").write_text(yaml.safe_dump(saved))
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE runs SET run_id = ?, config = ? WHERE run_id = ?",
                         (old, json.dumps(config), row["run_id"]))  # fmt: skip
    unfinished, finished = rows[0]["run_id"], rows[1]["run_id"]
    (out / "runs" / old_ids[unfinished] / "summary.json").unlink()
    store.set_status(old_ids[unfinished], "pending")
    store.register("t", [(finished, rows[1]["labels"], rows[1]["config"])])

    again = run_sweep(cfg, out, progress=False)
    # the finished run read back under its old id; the other trained again (nothing to resume
    # from) under its own; the rows they stood beside gone from the index
    assert {r["run_id"]: r["status"] for r in store.rows()} == {
        old_ids[finished]: "done",
        unfinished: "done",
    }
    assert not (out / "runs" / finished).exists()
    assert json.loads((out / "runs" / unfinished / "summary.json").read_text())
    # the same results, one run under its old name
    name = {finished: old_ids[finished], unfinished: unfinished}
    assert again["rows"] == [r | {"run_id": name[r["run_id"]]} for r in first["rows"]]
    assert again["aggregates"] == first["aggregates"]


def test_the_weight_decay_experiment_compares_decays_per_family_and_draws_curves(tmp_path):
    """`reproduce weight-decay --quick`, shrunk: both families' slices compare each decay with
    none, and the report draws every cell's accuracies over training from the runs' evaluations."""
    from typer.testing import CliRunner

    from revcurse.cli import app

    out = tmp_path / "wd"
    sets = ["data.n_pairs=10", "train.steps=40", "train.eval_every=10", "model.d_model=16",
            "train.warmup_steps=2", "workers=1"]  # fmt: skip
    result = CliRunner().invoke(app, ["reproduce", "weight-decay", "--quick", "--out", str(out),
                                      "--no-progress", *[x for s in sets for x in ("--set", s)]])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["slices"]) == {"arm", "mdm"} and summary["n_runs"] == 8
    compared = {(c["slice"], c["value"]) for c in summary["contrasts"]}
    assert compared == {(s, v) for s in ("arm", "mdm") for v in (0.1, 1.0, 3.0)}
    assert all(r["reverse_both_accuracy"] is not None for r in summary["rows"])
    assert (out / "figures" / "curves.png").is_file()
    assert "figures/curves.png" in (out / "report.md").read_text()
    # the curves' ranges, recomputed by hand from every cell's runs' evaluations
    moved = 0
    for cell in summary["curves"]:
        labels = cell["labels"]
        runs = [r["run_id"] for r in summary["rows"]
                if all(r[k] == v for k, v in labels.items())]  # fmt: skip
        for metric in ("forward_accuracy", "reverse_accuracy"):
            evals = [[m[metric] for m in map(json.loads, (out / "runs" / r / "metrics.jsonl")
                      .read_text().splitlines()) if m["kind"] == "eval"] for r in runs]  # fmt: skip
            every = [v for run in evals for v in run]
            assert len(every) == 4 * len(runs)  # steps 10, 20, 30 and 40 of each seed
            assert cell[metric] == {"min": min(every), "max": max(every),
                                    "evaluations": len(every),
                                    "last_min": min(e[-1] for e in evals),
                                    "last_max": max(e[-1] for e in evals)}  # fmt: skip
            moved += min(every) != min(e[-1] for e in evals)
    assert moved  # some curve's lowest point is not at its end: the ranges are not the last values


def test_mc_draws_rescores_a_sweeps_mdm_runs_and_redoes_its_paired_tests(tmp_path):
    """`revcurse analyse mc-draws` on a tiny two-slice sweep of one- and two-token entities:
    every MDM run scored by each scorer; the exact scorer's per-fact correctness is the ranking of
    mdm_exact_bound computed here; the paired tests are the sweep's, one set per scorer, and with
    one-token answers every scorer agrees (each draw masks the one token). The sweep folder is not
    written to; a second call reuses the per-run scores."""
    import torch
    from typer.testing import CliRunner

    from revcurse.cli import app
    from revcurse.data.toy import build_toy
    from revcurse.decoding import mdm_exact_bound
    from revcurse.evaluation import per_candidate, toy_queries
    from revcurse.experiments.toy_run import load_checkpoint
    from revcurse.metrics import likelihood_rank

    cfg = apply_overrides(tiny_sweep(), [
        'grid={"model.causal": [false]}', "data.entity_spelling=unique",
        'slices={"length": {"grid": {"data.entity_tokens": [1, 2]}, '
        '"compare": "data.entity_tokens"}}'])  # fmt: skip
    sweep = tmp_path / "s"
    run_sweep(cfg, sweep, progress=False)
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    out = tmp_path / "mc"
    args = ["analyse", "mc-draws", str(sweep), "--out", str(out), "--draws", "2,4",
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorers"] == ["mc-2", "mc-4", "exact", "chain"]
    assert len(summary["cells"]) == 2 and all(len(c["runs"]) == 2 for c in summary["cells"])
    for name in summary["scorers"]:
        (test,) = summary["contrasts"][name]
        assert (test["slice"], test["value"], test["baseline"]) == ("length", 2, 1)
    two = next(c for c in summary["cells"] if c["labels"]["data.entity_tokens"] == 2)
    run = two["runs"][0]
    model, run_cfg, vocab, _ = load_checkpoint(sweep / "runs" / run / "checkpoints" /
                                               "final.safetensors")  # fmt: skip
    queries = toy_queries(build_toy(run_cfg.data), vocab, "reverse")
    exact = per_candidate(queries, lambda ps, cands, ss: mdm_exact_bound(
        model.eval(), ps, cands, mask_id=vocab.mask_id, suffix=ss))  # fmt: skip
    saved = json.loads((out / "runs" / f"{run}.json").read_text())
    assert saved["correct"]["exact"] == (likelihood_rank(exact) == 1).tolist()
    one = next(c for c in summary["cells"] if c["labels"]["data.entity_tokens"] == 1)
    assert len({one["accuracy"][n]["mean"] for n in summary["scorers"]}) == 1
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before
    stamp = (out / "runs" / f"{run}.json").stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "runs" / f"{run}.json").stat().st_mtime_ns == stamp
    assert torch.is_tensor(exact)


def test_decoding_control_reads_each_mdm_checkpoint_four_ways_fit_first_by_each(tmp_path):
    """`revcurse analyse decoding` on a tiny sweep of two-token entities, token against whole-
    entity masking: the sampler reading is the runs' own generation (same answers, same
    correctness); one-step is the argmax of every masked position with the whole answer masked,
    computed here from the logits; rank is the exact bound's ranking and one-step-rank the
    ranking by the masked marginals. Each reading's fit labels are fit_summary of its own
    accuracies, and the paired tests carry them. The sweep folder is not written to."""
    import torch
    from typer.testing import CliRunner

    from revcurse.cli import app
    from revcurse.data.toy import build_toy
    from revcurse.decoding import mdm_exact_bound, mdm_one_step_logprob
    from revcurse.evaluation import per_candidate, toy_queries
    from revcurse.experiments.toy_run import load_checkpoint
    from revcurse.metrics import likelihood_rank
    from revcurse.stats import fit_summary

    cfg = apply_overrides(tiny_sweep(), [
        'grid={"model.causal": [false]}', "data.entity_tokens=2", "probe.enabled=false",
        'slices={"unit": {"grid": {"train.mask_unit": ["token", "entity"]}, '
        '"compare": "train.mask_unit"}}'])  # fmt: skip
    sweep = tmp_path / "s"
    run_sweep(cfg, sweep, progress=False)
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    out = tmp_path / "d"
    result = CliRunner().invoke(app, ["analyse", "decoding", str(sweep), "--out", str(out),
                                      "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["readings"] == ["sampler", "one-step", "rank", "one-step-rank"]
    assert summary["sampler_differs"] == 0
    runs = [r for c in summary["cells"] for r in c["runs"]]
    assert len(runs) == 4
    for run in runs:
        saved = json.loads((out / "runs" / f"{run}.json").read_text())
        recorded = json.loads((sweep / "runs" / run / "predictions.json").read_text())
        assert saved["correct"]["sampler"] == {k: recorded["correct"][k]
                                               for k in ("forward", "mirror", "reverse")}  # fmt: skip
        model, run_cfg, vocab, _ = load_checkpoint(sweep / "runs" / run / "checkpoints" /
                                                   "final.safetensors")  # fmt: skip
        model.eval()
        queries = toy_queries(build_toy(run_cfg.data), vocab, "reverse")
        one_step = []
        for prompt, suffix in zip(queries.prompts, queries.suffixes, strict=True):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + [vocab.mask_id] * 2 + suffix]))[0]
            one_step.append(logits[len(prompt) : len(prompt) + 2].argmax(-1).tolist())
        assert saved["answers"]["one-step"]["reverse"] == [" ".join(vocab.decode(a))
                                                           for a in one_step]  # fmt: skip
        assert saved["answers"]["sampler"]["reverse"] == recorded["answers"]["reverse"]
        assert saved["correct"]["one-step"]["reverse"] == [
            a == r for a, r in zip(one_step, queries.answers, strict=True)]  # fmt: skip
        for reading, bound in (("rank", mdm_exact_bound), ("one-step-rank", mdm_one_step_logprob)):
            scores = per_candidate(queries, lambda ps, cands, ss, bound=bound, m=model, k=vocab.mask_id: bound(
                m, ps, cands, mask_id=k, suffix=ss))  # fmt: skip
            assert saved["correct"][reading]["reverse"] == (likelihood_rank(scores) == 1).tolist()
    for cell in summary["cells"]:
        for reading, read in cell["readings"].items():
            rows = [{f"{k}_accuracy": v for k, v in json.loads(
                (out / "runs" / f"{r}.json").read_text())["accuracy"][reading].items()}
                for r in cell["runs"]]  # fmt: skip
            assert read["fit"] == fit_summary(rows)
    for reading in summary["readings"]:
        (test,) = summary["contrasts"][reading]
        labels = {c["labels"]["train.mask_unit"]: c["readings"][reading]["fit"]["label"]
                  for c in summary["cells"]}  # fmt: skip
        assert test["fit"] == {"value": labels["entity"], "baseline": labels["token"]}
    assert "one-step-rank" in (out / "report.md").read_text()
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_a_slice_comparing_the_family_pairs_the_arm_with_the_mdm(tmp_path):
    """The family label follows model.causal, so a slice comparing model.causal found no ARM cell
    to pair with the MDM and silently reported no test (the objective-attention sweep's family
    slice, caught when it was first run). Hand-made runs: the MDM answers every reverse query, the
    ARM none: ARM - MDM = -1, decided lower."""
    from types import SimpleNamespace

    from revcurse import files
    from revcurse.experiments.sweep import contrasts

    cfg = apply_overrides(tiny_sweep(), [
        'grid={"model.n_heads": [4]}',
        'slices={"family": {"grid": {"model.causal": [false, true]}, '
        '"compare": "model.causal"}}'])  # fmt: skip
    jobs, outcomes = [], {}
    for n, (labels, _) in enumerate(cfg.expand()):
        mdm = labels["family"] == "mdm"
        run_dir = tmp_path / f"run{n}"
        files.write_json(run_dir / "predictions.json", {"correct": {"reverse": [mdm] * 5}})
        jobs.append(SimpleNamespace(run_id=f"r{n}", labels=labels, run_dir=run_dir))
        outcomes[f"r{n}"] = SimpleNamespace(status="done", summary={
            "forward_accuracy": 1.0, "mirror_accuracy": 1.0 if mdm else None,
            "reverse_accuracy": 1.0 if mdm else 0.0})  # fmt: skip
    (test,) = contrasts(cfg, jobs, outcomes)
    assert (test["value"], test["baseline"], test["test"]["effect"]) == (True, False, -1.0)
    assert test["decision"] == "lower" and test["fit"] == {"value": "fails", "baseline": "reverses"}
    # another reading's fit labels (the decoding control's), asked per cell and its seeds

    def fit(cell, seeds):
        return f"{cell[seeds[0]].labels['family']} over {len(seeds)} seeds"

    (test,) = contrasts(cfg, jobs, outcomes, fit=fit)
    assert test["fit"] == {"value": "arm over 2 seeds", "baseline": "mdm over 2 seeds"}


def test_analyse_probes_summarises_each_multi_token_cells_position_grids(tmp_path):
    """`revcurse analyse probes` on a tiny sweep of one- and two-token entities: only the two-token
    MDM cell is probed; its grids are the mean over seeds and heads of each run's final record,
    recomputed here from the per-run files; the sweep folder is not written to."""
    import numpy as np
    from typer.testing import CliRunner

    from revcurse.cli import app

    cfg = apply_overrides(tiny_sweep(), [
        'grid={"model.causal": [false]}', "data.entity_spelling=unique", "probe.enabled=false",
        'slices={"length": {"grid": {"data.entity_tokens": [1, 2]}, '
        '"compare": "data.entity_tokens"}}'])  # fmt: skip
    sweep = tmp_path / "s"
    run_sweep(cfg, sweep, progress=False)
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    out = tmp_path / "pr"
    result = CliRunner().invoke(app, ["analyse", "probes", str(sweep), "--out", str(out),
                                      "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    (cell,) = summary["cells"]
    assert cell["labels"]["data.entity_tokens"] == 2 and len(cell["runs"]) == 2
    records = [json.loads((out / "runs" / f"{r}.json").read_text()) for r in cell["runs"]]
    for pairing in ("mirror", "forward"):
        grids = [np.mean(r["pairings"][pairing]["attention"]["mass_grid_rev"]["0"], axis=0)
                 for r in records]  # fmt: skip
        np.testing.assert_allclose(cell["probes"][pairing]["grid_rev"]["0"],
                                   np.mean(grids, axis=0), rtol=1e-12)  # fmt: skip
        assert np.array(cell["probes"][pairing]["grid_pair"]["0"]).shape == (2, 2)
    assert (out / "figures" / "grids.png").is_file()
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_a_sweep_copies_another_sweeps_finished_runs_of_identical_config(tmp_path):
    """--reuse-runs: runs of another sweep whose config is exactly one of this sweep's are copied
    in (same bytes, plus where they came from) and not trained; runs of other configs are
    trained; the other sweep is only read; a run this sweep already has is never replaced."""
    import hashlib

    from revcurse.experiments.executor import COPIED_FROM

    first = tiny_sweep(**{"model.causal": [False]})
    run_sweep(first, tmp_path / "first", progress=False)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in (tmp_path / "first").rglob("*") if p.is_file()}  # fmt: skip
    second = apply_overrides(tiny_sweep(**{"model.causal": [False, True]}), ["name=second"])
    summary = run_sweep(second, tmp_path / "second", progress=False, reuse=tmp_path / "first")
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (tmp_path / "first").rglob("*") if p.is_file()}  # fmt: skip
    assert after == before
    runs = {r["run_id"]: r for r in summary["rows"]}
    copied = [i for i in runs if (tmp_path / "second" / "runs" / i / COPIED_FROM).is_file()]
    assert sorted(runs[i]["family"] for i in copied) == ["mdm", "mdm"]  # the ARMs were trained
    assert all(runs[i]["status"] == "done" for i in runs)
    for run_id in copied:
        origin = Path((tmp_path / "second" / "runs" / run_id / COPIED_FROM).read_text().strip())
        for name in ("summary.json", "predictions.json", "checkpoints/final.safetensors"):
            assert (origin / name).read_bytes() == (
                tmp_path / "second" / "runs" / run_id / name).read_bytes()  # fmt: skip
    mine = tmp_path / "second" / "runs" / copied[0] / "summary.json"
    stamp = mine.stat().st_mtime_ns
    run_sweep(second, tmp_path / "second", progress=False, reuse=tmp_path / "first")
    assert mine.stat().st_mtime_ns == stamp


def test_several_workers_show_the_steps_inside_their_runs(tmp_path):
    """What the sweep's bar shows while runs train in other processes: each run's last logged
    training step (read from the end of its metrics.jsonl, a line being written skipped), all
    of a finished run's steps, summed against the steps asked."""
    from revcurse.experiments.executor import Job, last_step, steps_done

    cfg = apply_overrides(tiny_sweep(), ["train.steps=40"]).expand()[0][1]
    jobs = [Job(name, {}, cfg, tmp_path / name) for name in ("a", "b", "c")]
    (tmp_path / "a").mkdir()
    lines = [{"kind": "train", "step": 10, "loss": 1.0}, {"kind": "eval", "step": 10},
             {"kind": "train", "step": 20, "loss": 0.5}]  # fmt: skip
    (tmp_path / "a" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "st'
    )
    assert last_step(tmp_path / "a") == 20 and last_step(tmp_path / "b") == 0
    assert steps_done(jobs, finished={"c"}) == (20 + 0 + 40, 120)
