"""``revcurse finetune`` end to end on tiny random models (offline, CPU), and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import HANG_GUARD_S, run_cli

pytest.importorskip("peft")
pytest.importorskip("accelerate")

from typer.testing import CliRunner  # noqa: E402

from revcurse import files  # noqa: E402
from revcurse.cli import app  # noqa: E402
from revcurse.config import FinetuneConfig, apply_overrides, load_yaml  # noqa: E402
from revcurse.experiments.finetune import run_finetune  # noqa: E402
from revcurse.metrics import cue_metrics  # noqa: E402
from revcurse.models import hf  # noqa: E402

TINY = ["train.steps=12", "train.lr=3e-3", "data.max_eval=8", "data.max_train=64",
        "probe.n_facts=6", "probe.every=6", "eval.gen_length=4", "eval.n_distractors=3",
        "eval.n_mc=2", "train.log_every=4"]  # fmt: skip


revcurse = run_cli


@pytest.mark.parametrize("family", ["llada", "llama"])
def test_finetune_writes_a_complete_run_and_a_loadable_adapter(family, tmp_path):
    cfg = apply_overrides(FinetuneConfig(), [f"model.family={family}", *TINY])
    out = tmp_path / family
    summary = run_finetune(cfg, out, progress=False)
    for name in ["config.yaml", "command.txt", "env.json", "metrics.jsonl", "probes.jsonl",
                 "summary.json", "report.md", "timings.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "generations/before/forward.jsonl",
                 "generations/after/reverse.jsonl"]:  # fmt: skip
        assert (out / name).is_file(), name
    assert summary["lora_modules"] == 7 * cfg.model.n_layers  # attention + MLP, the default
    assert summary["causal"] == (family == "llama")
    # every split also reads its ranks apart where a shared word gives the answer away
    for stage in ("before", "after"):
        for split, m in summary[stage].items():
            records = files.read_jsonl(out / "generations" / stage / f"{split}.jsonl")
            assert {k: m[k] for k in cue_metrics(records)} == cue_metrics(records)
    # where the time went: evaluation before and after training, and the training itself
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"before_evaluation_seconds", "train_seconds", "tokens_per_second",
                            "after_evaluation_seconds"}  # fmt: skip
    assert all(v > 0 for v in timings.values())
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12]
    probes = [json.loads(x) for x in (out / "probes.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes] == [0, 6, 12]  # before, during, after
    # Every pairing the family has, each named: the MDM's mirror too, the ARM's forward only.
    expected = {"forward"} if family == "llama" else {"forward", "mirror"}
    assert set(probes[0]["pairings"]) == expected
    assert all(p["n_facts"] == 6 for p in probes[0]["pairings"].values())
    for split in ("forward", "reverse"):
        assert summary["after"][split]["n"] == 8
        lines = (out / "generations" / "after" / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == 8
    record = json.loads((out / "generations/after/forward.jsonl").read_text().splitlines()[0])
    assert record["prompt"].startswith("Who is")
    assert load_yaml(FinetuneConfig, out / "config.yaml") == cfg
    # The saved adapter attaches to a fresh base model and carries trained (non-zero) B factors.
    m = cfg.model
    shape = hf.TinyShape(m.hidden_size, m.n_layers, m.n_heads, m.n_kv_heads, m.intermediate_size)
    fresh = hf.build_tiny(family, summary["vocab_size"], shape, seed=cfg.train.seed)
    hf.load_adapter(fresh, out / "adapter")
    b = [p for n, p in fresh.named_parameters() if "lora_B" in n]
    assert len(b) == summary["lora_modules"] and all(p.abs().sum() > 0 for p in b)


def save_chat_checkpoint(path, family: str = "llama") -> None:
    """A tiny random ARM checkpoint directory with a word-level tokenizer over Parent–Child's
    words and a chat template (what `revcurse models tiny` writes)."""
    from revcurse.data.text_datasets import load_text_dataset
    from revcurse.models.tiny import write_tiny_checkpoint

    data = load_text_dataset(FinetuneConfig().data)
    texts = [p.prompt + a for ps in [data.train, *data.tests.values()] for p in ps
             for a in [p.completion, *p.answers]]  # fmt: skip
    write_tiny_checkpoint(path, texts, family)


def test_finetune_of_a_local_chat_checkpoint_uses_its_template(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    for chat in (True, False):
        cfg = apply_overrides(FinetuneConfig(), [
            "model.family=llama", f"model.path={ckpt}", f"model.chat_template={chat}", *TINY,
            "train.steps=4", "probe.every=0"])  # fmt: skip
        summary = run_finetune(cfg, tmp_path / f"run-{chat}", progress=False)
        assert summary["chat_template"] is chat
        assert summary["after"]["reverse"]["n"] == 8


def test_finetune_cli_and_its_refusals(tmp_path):
    out = tmp_path / "run"
    sets = [x for s in ["model.family=qwen2", *TINY] for x in ("--set", s)]
    ok = revcurse("finetune", "--out", str(out), "--no-progress", *sets)
    assert ok.returncode == 0, ok.stderr
    assert "reverse (reverse): exact" in ok.stdout

    again = revcurse("finetune", "--out", str(out), *sets)  # non-empty directory
    assert again.returncode == 2 and "not empty" in again.stderr

    cases = [
        (["--set", "model.family=gpt9"], "model.family"),
        (["--set", "data.splits=[nope]"], "unknown split 'nope'"),
        (["--set", "model.family=dream"], "remote code"),
        (["--set", "model.family=dream", "--set", "model.path=Dream-org/Dream-v0-Instruct-7B"],
         "--trust-remote-code"),
        (["--set", "model.family=llada", "--set", "model.path=/no/such/dir"], "local directory"),
        (["--set", "lora.target_modules=.*nothing"], "matched no module"),
        (["--set", "data.dataset=trex"], "data.path"),
        (["--set", "model.n_kv_heads=3"], "model.n_kv_heads"),
    ]  # fmt: skip
    runner = CliRunner()
    for args, fragment in cases:  # in-process: each would otherwise pay a fresh interpreter
        target = tmp_path / "bad"
        result = runner.invoke(app, ["finetune", "--out", str(target), *args])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, result.stderr)
        assert not target.exists(), args  # nothing written


def test_fsdp_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from accelerate.utils import DistributedType

    from revcurse import training
    from revcurse.errors import RevcurseError

    class Sharded:
        distributed_type = DistributedType.FSDP
        is_main_process = True

    monkeypatch.setattr(training, "make_accelerator", lambda device, *trackers: Sharded())
    with pytest.raises(RevcurseError, match="FSDP shards the weights"):
        run_finetune(apply_overrides(FinetuneConfig(), TINY), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # The processes that wait while the main one evaluates wait long enough for an 8B MDM.
    assert training.COLLECTIVE_TIMEOUT.total_seconds() >= 6 * 3600


def test_shipped_finetune_and_accelerate_configs_load():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted((root / "finetune").glob("*.yaml"))
    assert len(recipes) == 13  # 4 models x 3 datasets, and tiny-cpu
    # The paper's recipes are what their generator writes (one table of settings).
    check = subprocess.run([sys.executable, str(root.parent / "scripts" / "finetune_recipes.py"),
                            "--check"], capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout
    costs = subprocess.run([sys.executable, str(root.parent / "scripts" / "finetune_recipes.py"),
                            "--costs"], capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert costs.strip() in (root.parent / "docs" / "finetune.md").read_text()  # the docs' table
    families = {load_yaml(FinetuneConfig, p).model.family for p in recipes}
    # the A2D reading of a Llama checkpoint ships as the matched pair's config
    from revcurse.config import MatchedPairConfig

    pair = load_yaml(MatchedPairConfig, root / "matched-pair.yaml")
    assert pair == MatchedPairConfig()  # a plain dump of the defaults
    assert families | set(pair.families) == set(hf.FAMILIES)
    kinds = {load_config_from_file(str(p)).distributed_type.value
             for p in (root / "accelerate").glob("*.yaml")}  # fmt: skip
    assert {"MULTI_GPU", "FSDP", "DEEPSPEED", "NO"} <= kinds


@pytest.mark.slow
def test_finetune_runs_data_parallel_in_two_processes(tmp_path):
    """The accelerate code path with two CPU processes (gloo): the main one writes the run, and
    evaluation is split between them with the records of one process."""
    out = tmp_path / "ddp"
    sets = [x for s in ["model.family=llada", *TINY] for x in ("--set", s)]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "revcurse",
         "finetune", "--out", str(out), "--no-progress", *sets],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("report:") == 1  # only the main process reports
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert torch.cuda.is_available() or summary["n_train"] == 64
    # The configured batch (8) is the global one: each of the two processes trains on 4 rows.
    assert summary["batch"] == {"global_batch": 8, "processes": 2, "per_process": 4,
                                "micro_batch": 4, "accumulation": 1}  # fmt: skip
    # Evaluation ran across both processes (each its share of the queries, the Monte-Carlo
    # masks of every query drawn in both) and gathered the records one process makes: the
    # base model's evaluation, run here in one process, gives the same answers and ranks, and
    # the same scores up to the rounding of other batch compositions.
    one = tmp_path / "one"
    cfg = apply_overrides(FinetuneConfig(), ["model.family=llada", *TINY])
    run_finetune(cfg, one, progress=False)
    for split in ("forward", "reverse"):
        two_records = files.read_jsonl(out / "generations" / "before" / f"{split}.jsonl")
        one_records = files.read_jsonl(one / "generations" / "before" / f"{split}.jsonl")
        assert len(two_records) == len(one_records) > 2
        for a, b in zip(two_records, one_records, strict=True):
            assert (a["generation"], a["rank"], a["chain_rank"]) == (
                b["generation"], b["rank"], b["chain_rank"])  # fmt: skip
            assert a["candidate_logprobs"] == pytest.approx(b["candidate_logprobs"], abs=1e-5)
            assert a["candidate_chain_logprobs"] == pytest.approx(
                b["candidate_chain_logprobs"], abs=1e-5)  # fmt: skip


def test_gpu_smoke_script_checks_pass_on_cpu():
    """The script a lent GPU machine runs; here its checks on CPU in float32 (2 steps)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.smoke("llada", "cpu", torch.float32, steps=2, batch_size=4)
    assert result["ok"] and result["tokens_per_second"] > 0


def test_a_second_finetune_on_a_run_being_trained_is_refused(tmp_path):
    """Two fine-tunes on one folder at once (two `--resume`, or a start-over beside a running
    one) would both append records: the main process holds the run's lock, and a second one
    stops with one line before writing anything of its own."""
    from revcurse.files import Busy, run_lock

    out = tmp_path / "ft"
    cfg = apply_overrides(FinetuneConfig(), [*TINY, "train.steps=2", "probe.every=0"])
    with (
        run_lock(out, blocking=False),  # another process training this run
        pytest.raises(Busy, match="another process is training this run"),
    ):
        run_finetune(cfg, out, progress=False, force=True)
    assert [p.name for p in out.iterdir()] == [".lock"]  # no config, no records
    assert run_finetune(cfg, out, progress=False, force=True)["after"]  # free again: it runs


def test_a_fine_tune_names_its_facts_and_refuses_to_resume_on_changed_ones(tmp_path):
    """The run's config pins its facts file's SHA-256; after the file changes (same count, other
    entities) a resume stops with one line naming data.path, and nothing in the run changes."""
    from revcurse import files
    from revcurse.errors import RevcurseError

    facts = tmp_path / "facts.jsonl"
    converted = CliRunner().invoke(app, ["data", "convert", "parent-child", "--out", str(facts)])
    assert converted.exit_code == 0, converted.output
    out = tmp_path / "ft"
    cfg = apply_overrides(FinetuneConfig(), [*TINY, "train.steps=2", "probe.every=0",
                                             "data.dataset=facts", f"data.path={facts}"])  # fmt: skip
    run_finetune(cfg, out, progress=False)
    saved = load_yaml(FinetuneConfig, out / "config.yaml")
    assert saved.data.path_sha256 == files.sha256(facts)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    facts.write_text(facts.read_text().replace('"a": "', '"a": "Other ', 1))
    with pytest.raises(RevcurseError, match=r"data.path: .*facts.jsonl has changed since this run"):
        run_finetune(cfg, out, progress=False, resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("chat", [False, True])
def test_whole_entity_masking_in_a_fine_tune_masks_each_answer_entity_as_one_unit(tmp_path, chat):
    """train.mask_unit=entity in a fine-tune: the answer's entity (the completion, its final
    period aside) is one unit wherever the frame puts it (a real chat template's, with a subword
    tokenizer's leading space; or [BOS] prompt answer EOS), the end token and the EOS fill are their
    own, and the prompt is never masked. Refused for an autoregressive family."""
    import dataclasses

    from revcurse.errors import ConfigError
    from revcurse.experiments.finetune import (
        build_model,
        load_tests,
        training_data,
        vocabulary_texts,
    )

    with pytest.raises(ConfigError, match="train.mask_unit': expected token for an autoregressive"):
        apply_overrides(FinetuneConfig(), ["model.family=llama", "train.mask_unit=entity"])
    sets = ["model.family=llada", "train.mask_unit=entity", *TINY]
    if chat:
        save_chat_checkpoint(tmp_path / "ckpt")
        sets = ["model.family=llama", f"model.path={tmp_path / 'ckpt'}", *TINY]
    cfg = apply_overrides(FinetuneConfig(), sets)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mask_unit="entity"))
    dataset, _ = load_tests(cfg)
    pairs = dataset.train[: cfg.data.max_train]
    _, tok = build_model(cfg, vocabulary_texts(dataset, pairs), False)
    data = training_data(cfg, tok, pairs, dataset, bos=not chat, causal=False)
    assert not (data.answer_mask & data.prompt_mask).any()
    held = 0
    for row, pair in enumerate(pairs):
        first = int(data.prompt_mask[row].sum())  # the answer's first position
        units = data.unit_start[row].tolist()
        assert units[:first] == list(range(first))  # the prompt: token units (never masked)
        entity = [i for i, u in enumerate(units) if u == first]
        if len(entity) > 1:
            held += 1
            want = tok.encode(pair.completion.rstrip().removesuffix("."))  # the space before it
            assert data.ids[row, entity].tolist() == want, (pair.completion, entity)
        rest = [i for i in range(first, len(units)) if i not in entity]
        assert all(units[i] == i for i in rest)  # end token and fill alone
    assert held >= len(pairs) // 2


def test_fine_tune_evaluation_shows_its_progress_in_a_log(tmp_path, capfd):
    """A fine-tune writing to a log (stderr not a terminal) shows its evaluations' bars as it
    shows its training bar, with --progress (the default); none with --no-progress."""
    cfg = apply_overrides(FinetuneConfig(), ["model.family=llama", *TINY, "train.steps=2",
                                             "probe.enabled=false"])  # fmt: skip
    run_finetune(cfg, tmp_path / "shown", progress=True)
    shown = capfd.readouterr().err
    assert "evaluate before" in shown and "evaluate after" in shown and "scoring" in shown
    run_finetune(cfg, tmp_path / "quiet", progress=False)
    assert "evaluate before" not in capfd.readouterr().err
