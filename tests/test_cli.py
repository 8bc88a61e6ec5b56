"""End to end through the CLI: the toy reproduction's run directory, and bad input -> exit 2."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

TINY = [
    "--set", "data.n_pairs=10", "--set", "model.d_model=16", "--set", "train.steps=60",
    "--set", "train.warmup_steps=5", "--set", "train.eval_every=20", "--set", "train.log_every=10",
]  # fmt: skip


revcurse = run_cli


@pytest.mark.slow
def test_reproduce_toy_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "toy"
    result = revcurse(
        "reproduce", "toy", "--out", str(out), "--seeds", "2", "--workers", "2", "--no-progress",
        *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ["config.yaml", "command.txt", "env.json", "summary.json", "report.html",
                 "report.md", "figures/accuracy.png", "figures/training.png"]:  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert [(r["family"], r["seed"]) for r in rows] == [
        ("mdm", 0), ("mdm", 1), ("arm", 0), ("arm", 1)
    ]  # fmt: skip
    for row in rows:
        for key in ("forward_accuracy", "reverse_accuracy", "n_pairs", "positional", "d_model"):
            assert key in row
        run = out / "models" / f"{row['family']}-seed{row['seed']}"
        assert (run / "checkpoints" / "final.safetensors").is_file()
        assert (run / "metrics.jsonl").read_text().count("\n") >= 6
    assert summary["chance"]["reverse"] == pytest.approx(0.1)
    # The published comparison, recomputed by hand from each model's saved per-fact answers:
    # MDM - ARM over 2 seeds x 10 facts, and equal to the difference of the family means.
    for direction in ("forward", "reverse"):
        test = summary["comparison"][f"{direction}_accuracy"]
        correct = {
            (r["family"], r["seed"]): json.loads(
                (out / "models" / f"{r['family']}-seed{r['seed']}" / "predictions.json").read_text()
            )["correct"][direction]
            for r in rows
        }  # fmt: skip
        diff = [m - a for s in (0, 1) for m, a in zip(correct["mdm", s], correct["arm", s],
                                                      strict=True)]  # fmt: skip
        assert (test["n_seeds"], test["n_queries"]) == (2, 10)
        assert test["effect"] == pytest.approx(sum(diff) / 20)
        means = {f: sum(r[f"{direction}_accuracy"] for r in rows if r["family"] == f) / 2
                 for f in ("mdm", "arm")}  # fmt: skip
        assert test["effect"] == pytest.approx(means["mdm"] - means["arm"])
        assert test["ci"][0] <= test["effect"] <= test["ci"][1]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.split("<body>")[1]
    assert "reproduce toy" in (out / "command.txt").read_text()
    assert "MDM: forward" in result.stdout

    # The saved model re-evaluates to the same numbers.
    again = revcurse("evaluate", str(out / "models" / "mdm-seed0"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reverse_accuracy"] == rows[0]["reverse_accuracy"]

    # A second run into the same directory is refused, and nothing is overwritten.
    before = (out / "summary.json").read_bytes()
    refused = revcurse("reproduce", "toy", "--out", str(out), *TINY)
    assert refused.returncode == 2 and "not empty" in refused.stderr
    assert (out / "summary.json").read_bytes() == before


def test_train_single_model_in_process(tmp_path):
    from typer.testing import CliRunner

    from revcurse.cli import app

    out = tmp_path / "one"
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--no-progress", *TINY])
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file() and "MDM seed 0" in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["reproduce", "toy", "--set", "model.d_modle=8"], "did you mean 'model.d_model'"),
        (["reproduce", "toy", "--set", "train.steps=zero"], "field 'train.steps'"),
        (["reproduce", "toy", "--set", "model.norm=batchnorm"], "field 'model.norm'"),
        (["reproduce", "toyy"], "did you mean 'toy'"),
        (["reproduce", "toy", "--config", "/nonexistent.yaml"], "config file not found"),
        (["train", "--out", "x", "--set", "train.objective=next_token"], "train.objective"),
        (["evaluate", "/nonexistent/run"], "checkpoint not found"),
        (["config", "nope"], "unknown config kind"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragment):
    from typer.testing import CliRunner

    from revcurse.cli import app

    result = CliRunner().invoke(
        app, [*args, "--out", str(tmp_path / "o")] if args[0] == "reproduce" else args
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_config_command_prints_resolved_yaml():
    from typer.testing import CliRunner

    from revcurse.cli import app

    result = CliRunner().invoke(app, ["config", "run", "--set", "model.n_layers=3"])
    assert result.exit_code == 0
    assert "n_layers: 3" in result.stdout


def test_reproduce_parent_child_quick_through_the_cli(tmp_path):
    """`reproduce parent-child --quick` with tiny overrides: its own defaults (Parent–Child data,
    positional variants), one line per model, and a refused bad variant name exits 2."""
    out = tmp_path / "pc"
    tiny = ["--set", "run.train.steps=10", "--set", "run.model.d_model=16", "--set",
            "run.probe.enabled=false", "--set", 'variants={"mdm-none": ["model.positional=none"]}',
            "--set", "run.eval.n_mc=1"]  # fmt: skip
    result = revcurse("reproduce", "parent-child", "--quick", "--out", str(out), "--seeds", "1",
                      "--workers", "1", "--no-progress", *tiny)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [line.split(" ")[0] for line in result.stdout.splitlines()[:3]] == [
        "MDM", "ARM", "MDM-NONE"]  # fmt: skip
    assert "p2c_reverse" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "parent-child"
    bad = revcurse("reproduce", "parent-child", "--out", str(tmp_path / "bad"), "--set",
                   'variants={"arm": ["model.positional=none"]}')  # fmt: skip
    assert bad.returncode == 2 and "variants.arm" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_version_names_revcurse_and_torch():
    from importlib.metadata import version

    import torch

    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"revcurse {version('revcurse')} (torch {torch.__version__})"


def test_config_facts_prints_the_template_to_fill_in_without_a_file():
    """`revcurse config facts` is where a user starts, before any facts file exists: the template
    (run.path empty) on stdout, loadable once the path is filled in, and a note saying so."""
    import yaml

    done = run_cli("config", "facts")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["run"]["path"] == ""
    assert "set it to your facts file" in done.stderr


def test_runs_list_reads_folders_without_a_sweep_index(tmp_path):
    """`runs list` on a folder of single runs (a fine-tune, an evaluation, a toy run; each a
    config.yaml beside a summary.json) lists each with its headline numbers; a folder with none
    is a one-line refusal."""
    split = {"likelihood_top1": 0.25, "exact": 0.0}
    made = {
        "ft": {"family": "llama", "dataset": "parent-child", "before": {"reverse": split},
               "after": {"reverse": split | {"likelihood_top1": 0.5}}},
        "ev": {"family": "llada", "dataset": "parent-child", "splits": {"reverse": split}},
        "deep/toy": {"family": "mdm", "forward_accuracy": 1.0, "reverse_accuracy": 0.875},
    }  # fmt: skip
    for name, summary in made.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.yaml").write_text("{}\n")
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    done = run_cli("runs", "list", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ev  evaluate  llada on parent-child  reverse 0.250",
        "ft  finetune  llama on parent-child  before: reverse 0.250  after: reverse 0.500",
        "deep/toy  toy run  mdm  fwd 1.000 rev 0.875",
    ]
    empty = run_cli("runs", "list", str(tmp_path / "deep"))  # the toy run is one level down
    assert empty.returncode == 0 and empty.stdout.startswith("toy  toy run")
    (tmp_path / "none").mkdir()
    refused = run_cli("runs", "list", str(tmp_path / "none"))
    assert refused.returncode == 2 and "no finished run in it" in refused.stderr
