"""``revcurse analyse decoding`` on a from-scratch text experiment (whole-entity masking's decoding
control on text, #28): the one-step reading against an independent argmax of the saved model,
the rank readings reproduced from the runs, fit first per reading, each variant's paired test
over its own fitted seeds, resume, and a tampered record refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from revcurse import files
from revcurse.config import PersonDescriptionConfig, apply_overrides
from revcurse.data.text import encode_prompt
from revcurse.errors import RevcurseError
from revcurse.experiments import from_scratch as F
from revcurse.experiments import text_decoding as T
from revcurse.files import model_dir

SMALL = ["run.dataset=parent-child", "run.n_people=4", "run.max_eval=6", "run.train.steps=200",
         "run.train.lr=3e-3", "run.model.d_model=32", "run.eval.n_mc=2",
         "run.eval.n_distractors=3", "run.probe.enabled=false", "seeds=[0, 1]", "workers=1",
         'variants={"mdm-entity": ["train.mask_unit=entity"]}']  # fmt: skip


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("pc") / "experiment"
    cfg = apply_overrides(PersonDescriptionConfig(), SMALL)
    F.run_from_scratch(cfg, out, progress=False)
    return out, F._pinned(cfg, out, True)


def test_the_text_control_reads_each_mdm_four_ways(experiment, tmp_path, monkeypatch):
    """(The tiny models fit little in seconds: the fit threshold is lowered so that readings fit
    different seeds and the tests over them run; the rule applied is the same.)"""
    out, cfg = experiment
    monkeypatch.setattr(F, "FIT", 0.25)
    control = tmp_path / "control"
    summary = T.measure(out, control, progress=False)
    assert list(summary["models"]) == ["mdm", "mdm-entity"]  # the ARM is not read
    task = F.task_for(cfg.run)
    forward = next(k for k, d in task.splits.items() if d == "forward")
    reverse = next(k for k, d in task.splits.items() if d == "reverse")

    # one step: each query's whole region filled at once is the saved model's argmax with every
    # answer position masked (the EOS fill of training after it), decoded up to EOS
    run = cfg.run_config("mdm-entity", 0)
    model, prepared = F.load_run_model(run, model_dir(out, "mdm-entity", 0))
    tok = prepared.tokenizer
    records = files.read_jsonl(model_dir(control, "mdm-entity", 0) / "generations" /
                               f"{forward}.jsonl")  # fmt: skip
    sampled = files.read_jsonl(model_dir(out, "mdm-entity", 0) / "generations" / f"{forward}.jsonl")
    # the check tells the readings apart: here one token per step answers otherwise
    assert any(a["generation"] != b["generation"] for a, b in zip(records, sampled, strict=True))
    length = prepared.gen_lengths[forward]
    for record in records:
        prompt = encode_prompt(tok, record["prompt"], True)
        ids = prompt + [tok.mask_id] * length
        ids += [tok.eos_id] * (run.model.max_seq_len - len(ids))
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, len(prompt) : len(prompt) + length]
        answer = logits.argmax(-1).tolist()
        if tok.eos_id in answer:
            answer = answer[: answer.index(tok.eos_id)]
        assert record["generation"] == tok.decode(answer)

    # the rank readings are the runs' own records, and the sampler's the runs' generations
    for name in ("mdm", "mdm-entity"):
        for seed in (0, 1):
            saved = files.read_json(model_dir(out, name, seed) / "summary.json")["splits"]
            again = files.read_json(model_dir(control, name, seed) / "summary.json")
            for split in saved:
                assert again[split]["likelihood_top1"] == saved[split]["likelihood_top1"]

    # fit first, per reading, at the lowered threshold (the readings fit different seeds) and at
    # none (every test runs, the one-step one on this control's records)
    _check_fit_and_tests(summary, control, out, task, reverse, at_least=2)
    monkeypatch.setattr(F, "FIT", 0.0)
    everything = T.measure(out, tmp_path / "all-fit", progress=False)
    _check_fit_and_tests(everything, tmp_path / "all-fit", out, task, reverse, at_least=4)
    # the one-step test reads this control's own records: mark every one-step reverse answer of
    # the variant right (its records and split metrics alike) and the test follows them
    for seed in (0, 1):
        run = model_dir(tmp_path / "all-fit", "mdm-entity", seed)
        path = run / "generations" / f"{reverse}.jsonl"
        records = [r | {"prefix": True} for r in files.read_jsonl(path)]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = files.read_json(run / "summary.json")
        metrics[reverse]["prefix"] = 1.0
        files.write_json(run / "summary.json", metrics)
    (tmp_path / "all-fit" / "summary.json").unlink()
    marked = T.measure(out, tmp_path / "all-fit", progress=False)
    assert marked["tests"]["one-step"]["mdm-entity"][f"{reverse}.prefix"]["effect"] > 0.5
    _check_fit_and_tests(marked, tmp_path / "all-fit", out, task, reverse, at_least=4)
    monkeypatch.setattr(F, "FIT", 0.25)

    # a rerun reuses the one-step records; the report is written
    stamp = (model_dir(control, "mdm", 0) / "summary.json").stat().st_mtime_ns
    assert T.measure(out, control, progress=False) == summary
    assert (model_dir(control, "mdm", 0) / "summary.json").stat().st_mtime_ns == stamp
    assert "one-step" in (control / "report.md").read_text()


def _check_fit_and_tests(summary, control, out, task, reverse, at_least):
    """Each reading's fitted seeds are those whose forward and mirror splits reach the threshold
    by its metric; each test runs over the seeds both models fitted by it, its effect the mean
    over them of the per-seed difference of that metric on the reverse split (read from the
    records the reading names: the runs' or this control's)."""
    tested = 0
    for reading, spec in summary["readings"].items():
        metric = spec["metric"]
        root = control if spec["records"] == "control" else out
        per_seed = {}
        for name in ("mdm", "mdm-entity"):
            for seed in (0, 1):
                splits = files.read_json(model_dir(root, name, seed) / "summary.json")
                per_seed[name, seed] = splits.get("splits", splits)
        fitted = {}
        for name in ("mdm", "mdm-entity"):
            group = next(iter(summary["models"][name][reading]["fitted_seeds"]))
            fwd, mirror = task.fit[group]
            fitted[name] = [s for s in (0, 1) if per_seed[name, s][fwd][metric] >= F.FIT
                            and per_seed[name, s][mirror][metric] >= F.FIT]  # fmt: skip
            assert summary["models"][name][reading]["fitted_seeds"][group] == fitted[name]
        test = summary["tests"][reading]["mdm-entity"][f"{reverse}.{metric}"]
        both = sorted(set(fitted["mdm"]) & set(fitted["mdm-entity"]))
        assert test["seeds"] == both
        tested += bool(both)
        if both:
            diffs = [per_seed["mdm-entity", s][reverse][metric] - per_seed["mdm", s][reverse][metric]
                     for s in both]  # fmt: skip
            assert test["effect"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-9)
    assert tested >= at_least  # readings that fit both models: their tests ran and were checked


def test_the_text_control_refuses_records_the_model_does_not_reproduce(experiment, tmp_path):
    """A run whose saved likelihoods are not what its model gives is named, nothing read into
    the control's folder for it; the CLI says it in one line, exit 2."""
    import shutil

    out, _ = experiment
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = model_dir(copy, "mdm", 0) / "generations"
    first = sorted(path.iterdir())[0]
    lines = first.read_text().splitlines()
    record = json.loads(lines[0])
    record["candidate_logprobs"][0] += 1.0
    first.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(RevcurseError, match="do not reproduce its saved records"):
        T.measure(copy, tmp_path / "control", progress=False)
    assert not (tmp_path / "control").exists()  # nothing half-written
    result = run_cli("analyse", "decoding", str(copy), "--out", str(tmp_path / "control2"),
                     "--no-progress")  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "do not reproduce its saved records" in lines[-1]
    assert len([line for line in lines if "error" in line.lower()]) == 1
    assert not (tmp_path / "control2").exists()
    # a folder holding another experiment's readings is refused before anything is read
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("readings: []\nexperiment: elsewhere\n")
    with pytest.raises(RevcurseError, match="another experiment"):
        T.measure(out, other, progress=False)
