"""Reliability and security: bad inputs refused, SIGKILL survived, determinism, NaN, safe loading.

The bad-input catalogue below is also the table in docs/reliability.md (a test keeps them in sync).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import run_killed
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from revcurse import files
from revcurse.cli import app
from revcurse.data.parent_child import load_parent_child
from revcurse.data.person_description import load_pairs
from revcurse.errors import RevcurseError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.n_pairs=6", "--set", "model.d_model=16", "--set", "train.steps=30",
        "--set", "train.warmup_steps=2", "--set", "train.log_every=5", "--set", "train.eval_every=10",
        "--set", "train.checkpoint_every=10", "--set", "probe.every=10",
        "--set", "probe.distances=[0]"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run to tamper with."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--no-progress", *TINY])
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------------------------------
# The catalogue of bad inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    what: str
    setup: Callable[[Path, Path], list[str]]  # (tmp, trained run) -> CLI args
    expect: str  # a fragment of the one-line error
    # What the rest of the machine is like while the command runs: environment variables, a
    # failing library or disk (monkeypatch, tmp) ...
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    # ... and a folder whose run lock another process holds (tmp -> folder).
    locked: Callable[[Path], Path] | None = None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _pd_folder(tmp: Path, bad_line: str) -> Path:
    folder = tmp / "pd"
    src = ROOT / "src" / "revcurse" / "datasets" / "person_description"
    for f in src.glob("*.jsonl"):
        _write(folder / f.name, f.read_text())
    with (folder / "p2d_prompts_train.jsonl").open("a") as fh:
        fh.write(bad_line + "\n")
    return folder


def _pd_emptied(tmp: Path) -> Path:
    folder = _pd_folder(tmp, "")
    (folder / "p2d_reverse_prompts_test.jsonl").write_text("")
    return folder


def _pc(
    tmp: Path, body: str, header: str = "child,parent,parent_type,child_prediction,can_reverse"
):
    return _write(tmp / "pc.csv", header + "\n" + body + "\n")


def _copy_run(tmp: Path, run: Path) -> Path:
    import shutil

    dst = tmp / "copy"
    shutil.copytree(run, dst)
    return dst


def _tamper_checkpoint(tmp: Path, run: Path, how: str) -> Path:
    path = _copy_run(tmp, run) / "checkpoints" / "final.safetensors"
    from safetensors import safe_open
    from safetensors.torch import save_file

    if how == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "header":
        data = bytearray(path.read_bytes())
        data[8:20] = b"not json!!!!"
        path.write_bytes(bytes(data))
    elif how == "pickle":
        torch.save({"model.lm_head.weight": torch.zeros(2)}, path)
    else:
        tensors = files.load_tensors(path)
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        if how == "shape":
            tensors["model.model.norm.weight"] = torch.ones(7)
        elif how == "no-meta":
            meta = {}
        elif how == "bad-meta":
            meta["config"] = "{not json"
        elif how == "huge-meta":
            cfg = json.loads(meta["config"])
            cfg["model"]["d_model"] = 1_000_000_000
            meta["config"] = json.dumps(cfg)
        save_file(tensors, str(path), metadata=meta)
    return path


def _resumable(tmp: Path, run: Path, how: str = "") -> Path:
    """A copy of ``run`` made to look interrupted (a ``last`` checkpoint, no summary), then
    tampered as ``how`` says; returns the run directory."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    copy = _copy_run(tmp, run)
    (copy / "summary.json").unlink()
    final = copy / "checkpoints" / "final.safetensors"
    tensors = files.load_tensors(final)
    with safe_open(str(final), framework="pt") as fh:
        meta = fh.metadata()
    tensors |= {"loop.loss_sum": torch.zeros(()), "loop.loss_count": torch.zeros((), dtype=torch.long),
                "loop.mean_loss": torch.zeros((), dtype=torch.float64)}  # fmt: skip
    if how == "other-config":  # same shapes, another positional encoding
        cfg = json.loads(meta["config"])
        cfg["model"]["positional"] = "none"
        meta["config"] = json.dumps(cfg)
    elif how == "moment-shape":
        key = next(k for k in tensors if k.endswith(".exp_avg"))
        tensors[key] = torch.zeros(3)
    elif how == "no-loop":
        del tensors["loop.mean_loss"]
    elif how == "rng-size":
        tensors["rng.generator"] = tensors["rng.generator"][:10]
    elif how == "garbage-config":
        (copy / "config.yaml").write_text("model: [unclosed\n")
    elif how == "no-config":
        (copy / "config.yaml").unlink()
    save_file(tensors, str(copy / "checkpoints" / "last.safetensors"), metadata=meta)
    return copy


# Hugging Face checkpoints, adapters, trackers and locks (the surfaces of the second review)


def _hf(tmp: Path, how: str = "") -> Path:
    """A tiny random Llama chat checkpoint, then spoiled as ``how`` says."""
    from safetensors.torch import load_file, save_file
    from test_finetune import save_chat_checkpoint

    ckpt = tmp / "ckpt"
    save_chat_checkpoint(ckpt)
    weights = ckpt / "model.safetensors"
    state = load_file(weights)
    if how == "pickle-only":  # the same weights, as transformers' pickle file alone
        torch.save(state, ckpt / "pytorch_model.bin")
        weights.unlink()
    elif how == "missing-tensor":
        del state["model.layers.1.mlp.down_proj.weight"]
        save_file(state, weights, metadata={"format": "pt"})
    elif how == "nan":
        save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, weights,
                  metadata={"format": "pt"})  # fmt: skip
    return ckpt


def _gguf(tmp: Path, how: str) -> Path:
    """A GGUF file spoiled as ``how`` says (tests/tiny_gguf.py writes the sound one)."""
    from tiny_gguf import write_tiny_gguf

    path = tmp / "model.gguf"
    if how == "text":
        return _write(path, "a text file named like a GGUF file\n")
    if how == "architecture":  # a sound file of an architecture transformers cannot read
        write_tiny_gguf(path, architecture="rwkv6")
        return path
    write_tiny_gguf(tmp / "whole.gguf")
    data = (tmp / "whole.gguf").read_bytes()
    (tmp / "whole.gguf").unlink()
    return _write_bytes(path, data[:200])  # the header cut inside its key-value data


def _hf_config(tmp: Path, text: str) -> Path:
    return _write(tmp / "cfg" / "config.json", text).parent


def _adapter(tmp: Path, how: str) -> Path:
    """A LoRA adapter made for a Llama of another width; ``linked``: its files as symlinks."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=32, tie_word_embeddings=False))  # fmt: skip
    foreign = tmp / "foreign-adapter"
    get_peft_model(small, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(
        foreign
    )
    if how != "linked":
        return foreign
    linked = tmp / "linked-adapter"
    linked.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (linked / name).symlink_to(foreign / name)
    return linked


def _llada(tmp: Path, how: str) -> Path:
    """A tiny LLaDA checkpoint in the published layout, spoiled as ``how`` says."""
    from safetensors.torch import save_file
    from test_hf import tiny_llada_config

    from revcurse.models.llada import LLaDAModelLM

    cfg = tiny_llada_config()
    folder = tmp / "llada"
    state = {k: v.contiguous() for k, v in LLaDAModelLM(cfg).state_dict().items()}
    config = cfg.to_dict() | {"model_type": "llada", "alibi": how == "alibi"}
    if how == "missing-tensor":
        del state["model.transformer.blocks.0.attn_norm.weight"]
    elif how == "text-number":
        config["d_model"] = "wide"
    _write(folder / "config.json", json.dumps(config))
    save_file(state, folder / "model.safetensors")
    if how == "truncated":
        shard = folder / "model.safetensors"
        shard.write_bytes(shard.read_bytes()[:100])
    return folder


def _no_tracker_setup(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        mp.delenv(var, raising=False)
    mp.setenv("NETRC", str(tmp / "no-netrc"))  # no stored W&B login either


def _broken_tensorboard(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    import importlib

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "tensorboard":
            raise RuntimeError("protobuf version mismatch\nmore lines")
        return real(name, *args, **kwargs)

    mp.setattr(importlib, "import_module", broken)


def _disk_full(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    import errno

    def failing(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    mp.setattr(files, "_atomic", failing)


def _symlinked_lock(tmp: Path, run: Path) -> Path:
    copy = _resumable(tmp, run)
    _write(tmp / "thesis.txt", "years of work\n")
    (copy / ".lock").unlink(missing_ok=True)  # the lock file the run left
    (copy / ".lock").symlink_to(tmp / "thesis.txt")
    return copy


def _facts_changed_after_finetune(tmp: Path) -> list[str]:
    """A two-step fine-tune of the tiny random model on a facts file, then one entity of the
    file renamed; the arguments that resume it."""
    from test_finetune import TINY as FT

    facts = tmp / "facts.jsonl"
    assert CliRunner().invoke(app, ["data", "convert", "parent-child", "--out", str(facts)])\
        .exit_code == 0  # fmt: skip
    sets = [x for v in [*FT, "train.steps=2", "probe.every=0", "data.dataset=facts",
                        f"data.path={facts}"] for x in ("--set", v)]  # fmt: skip
    args = ["finetune", "--out", str(tmp / "ft"), "--no-progress", *sets]
    assert CliRunner().invoke(app, args).exit_code == 0
    facts.write_text(facts.read_text().replace('"a": "', '"a": "Other ', 1))
    return [*args, "--resume"]


def _sweep_folder(tmp: Path) -> Path:
    """A finished one-run sweep under the default name."""
    grid = 'grid: {"model.positional": [rope]}\nseeds: [0]\n'
    args = ["sweep", "--out", str(tmp / "s"), "--no-progress", "--config",
            str(_write(tmp / "a.yaml", grid)), *TINY]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    return tmp / "s"


def _foreign_folder(tmp: Path) -> Path:
    """A user's folder that is not a revcurse run, with files a careless resume would clobber."""
    folder = tmp / "mine"
    _write(folder / "config.yaml", "my: own settings\n")
    _write(folder / "command.txt", "my notes\n")
    _write(folder / "metrics.jsonl", '{"mine": 1}\n')
    _write(folder / "drafts" / ".essay.tmp", "do not delete\n")
    return folder


CASES = [
    # configs and overrides
    Case("cfg-unknown-key", "override with a misspelt key",
         lambda t, r: ["reproduce", "toy", "--out", str(t / "o"), "--set", "model.d_modle=8"],
         "did you mean 'model.d_model'"),
    Case("cfg-int-type", "integer field given text",
         lambda t, r: ["reproduce", "toy", "--out", str(t / "o"), "--set", "train.steps=many"],
         "field 'train.steps': expected an integer"),
    Case("cfg-bool-type", "boolean field given text",
         lambda t, r: ["reproduce", "toy", "--out", str(t / "o"), "--set", "model.mlp=sometimes"],
         "field 'model.mlp': expected true or false"),
    Case("cfg-literal", "unknown choice",
         lambda t, r: ["reproduce", "toy", "--out", str(t / "o"), "--set", "model.norm=batchnorm"],
         "field 'model.norm': expected one of"),
    Case("cfg-heads", "heads do not divide d_model",
         lambda t, r: ["reproduce", "toy", "--out", str(t / "o"), "--set", "model.n_heads=3"],
         "expected a divisor of d_model=64"),
    Case("cfg-negative-lr", "negative learning rate",
         lambda t, r: ["reproduce", "toy", "--out", str(t / "o"), "--set", "train.lr=-0.1"],
         "field 'train.lr': expected a number > 0"),
    Case("cfg-dup-seeds", "duplicate seeds",
         lambda t, r: ["reproduce", "toy", "--out", str(t / "o"), "--set", "seeds=[1, 1]"],
         "expected distinct seeds"),
    Case("cfg-objective", "next-token objective on a bidirectional model",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "train.objective=next_token"],
         "field 'train.objective'"),
    Case("cfg-seq-len", "fillers longer than the model's positions",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "data.n_filler=80"],
         "field 'model.max_seq_len'"),
    Case("cfg-probe-distance", "probe distance beyond the model's positions",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "probe.distances=[100]"],
         "field 'probe.distances'"),
    Case("cfg-rope-odd", "RoPE with an odd head dimension",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "model.d_model=6",
                       "--set", "model.n_heads=2"],
         "even head dimension"),
    Case("cfg-mlm-ratio", "masking ratio above 1",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "train.mlm_ratio=1.5"],
         "field 'train.mlm_ratio'"),
    Case("cfg-inf", "an infinite value where a number is expected",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "model.mlp_ratio=.inf"],
         "field 'model.mlp_ratio': expected a finite number"),
    Case("cfg-rope-inf", "an infinite RoPE base",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "model.rope_base=.inf"],
         "field 'model.rope_base': expected a finite number"),
    Case("cfg-huge-seed", "a 30-digit seed",
         lambda t, r: ["train", "--out", str(t / "o"), "--set",
                       "train.seed=123456789012345678901234567890"],
         "field 'train.seed': expected an integer that fits in 64 bits"),
    Case("cfg-too-big", "a model that cannot fit in the machine's memory",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "model.d_model=1000000000"],
         "for weights, gradients and AdamW state; this machine has"),
    Case("ckpt-too-big", "a small checkpoint whose metadata claims a huge model",
         lambda t, r: ["evaluate", str(_tamper_checkpoint(t, r, "huge-meta"))],
         "this machine has"),
    Case("cfg-no-equals", "override without '='",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "train.lr"],
         "expected KEY=VALUE"),
    Case("cfg-section", "override that sets a whole section",
         lambda t, r: ["train", "--out", str(t / "o"), "--set", "model=3"],
         "is a section"),
    Case("yaml-syntax", "YAML syntax error",
         lambda t, r: ["train", "--out", str(t / "o"), "--config",
                       str(_write(t / "c.yaml", "model:\n  d_model: [1\n"))],
         "c.yaml:"),
    Case("yaml-unknown", "YAML with an unknown key",
         lambda t, r: ["train", "--out", str(t / "o"), "--config",
                       str(_write(t / "c.yaml", "model:\n  n_layer: 2\n"))],
         "unknown key 'model.n_layer'"),
    Case("yaml-scalar", "YAML that is not a mapping",
         lambda t, r: ["train", "--out", str(t / "o"), "--config", str(_write(t / "c.yaml", "7\n"))],
         "expected a mapping"),
    Case("yaml-missing", "config file that does not exist",
         lambda t, r: ["train", "--out", str(t / "o"), "--config", str(t / "nope.yaml")],
         "config file not found"),
    Case("sweep-grid-key", "sweep grid with a misspelt key",
         lambda t, r: ["sweep", "--out", str(t / "o"), "--config",
                       str(_write(t / "s.yaml", "grid:\n  model.posional: [rope]\n"))],
         "did you mean 'model.positional'"),
    Case("sweep-name-path", "a sweep name that is a path (it would write outside runs/)",
         lambda t, r: ["sweep", "--config", str(_write(t / "s.yaml", "name: ../../x\n"))],
         "field 'name': expected a plain name"),
    Case("sweep-grid-empty", "sweep grid with no values",
         lambda t, r: ["sweep", "--out", str(t / "o"), "--config",
                       str(_write(t / "s.yaml", "grid:\n  model.positional: []\n"))],
         "non-empty list"),
    # datasets
    Case("data-bad-json", "dataset line that is not JSON",
         lambda t, r: ["data", "person-description", "--path", str(_pd_folder(t, '{"prompt": "x"'))],
         "p2d_prompts_train.jsonl:901: invalid JSON"),
    Case("data-missing-field", "dataset line without its completion",
         lambda t, r: ["data", "person-description", "--path",
                       str(_pd_folder(t, '{"prompt": "x"}'))],
         "p2d_prompts_train.jsonl:901: missing field 'completion'"),
    Case("data-empty-answer", "dataset line with an empty answer",
         lambda t, r: ["data", "person-description", "--path",
                       str(_pd_folder(t, '{"prompt": "x", "completion": " "}'))],
         "field 'completion': expected a non-empty string"),
    Case("data-parent-type", "parent-child row with an unknown parent type",
         lambda t, r: ["data", "parent-child", "--path", str(_pc(t, "Kid,Mum,aunt,,False"))],
         "pc.csv:2: field 'parent_type'"),
    Case("data-header", "parent-child file without a 'parent' column",
         lambda t, r: ["data", "parent-child", "--path",
                       str(_pc(t, "Kid,mother", header="child,parent_type"))],
         "header lacks column 'parent'"),
    Case("data-csv-latin1", "a Parent–Child CSV that is not UTF-8 (a traceback before)",
         lambda t, r: ["data", "parent-child", "--path", str(_write_bytes(
             t / "pc.csv", "child,parent,parent_type,child_prediction,can_reverse\n"
             "Zoë,Mum,mother,,False\n".encode("latin-1")))],
         "pc.csv: not UTF-8 text"),
    Case("data-empty-split", "a Person–Description folder whose test file is empty",
         lambda t, r: ["data", "person-description", "--path", str(_pd_emptied(t))],
         "split 'p2d_reverse' is empty"),
    Case("data-trex-template", "T-REx template with two [X] slots",
         lambda t, r: ["data", "trex", "--path", str(
             _write(t / "tr" / "relations.jsonl",
                    '{"relation": "P1", "template": "[X] [X] [Y]"}\n').parent)],
         "field 'template'"),
    Case("data-trex-missing", "T-REx folder without relations.jsonl",
         lambda t, r: ["data", "trex", "--path", str(t)], "dataset file not found"),
    Case("data-unknown", "unknown dataset name",
         lambda t, r: ["data", "person-descripton"], "did you mean 'person-description'"),
    # commands and run directories
    Case("cli-experiment", "unknown experiment name",
         lambda t, r: ["reproduce", "pe-ablaton", "--out", str(t / "o")],
         "did you mean 'pe-ablation'"),
    Case("dir-not-empty", "training into a non-empty folder",
         lambda t, r: ["train", "--out", str(_write(t / "busy" / "notes.txt", "mine").parent)],
         "directory is not empty"),
    Case("dir-other-sweep", "sweep into a folder that is not a sweep",
         lambda t, r: ["reproduce", "depth", "--out",
                       str(_write(t / "busy" / "notes.txt", "mine").parent)],
         "holds no sweep"),
    Case("resume-finished", "resuming a finished run",
         lambda t, r: ["train", "--out", str(_copy_run(t, r)), "--resume", *TINY],
         "this run is finished"),
    Case("evaluate-missing", "evaluating a run directory that does not exist",
         lambda t, r: ["evaluate", str(t / "ghost")], "checkpoint not found"),
    Case("runs-not-sweep", "listing runs of a folder with neither a sweep index nor a finished run",
         lambda t, r: ["runs", "list", str(t)], "no sweep index and no finished run in it"),
    Case("resume-not-a-run", "resuming in a folder that is not a revcurse run",
         lambda t, r: ["train", "--out", str(_foreign_folder(t)), "--resume"],
         "nothing to resume"),
    Case("resume-other-config-ckpt", "a last checkpoint copied from a run of another config",
         lambda t, r: ["train", "--out", str(_resumable(t, r, "other-config")), "--resume", *TINY],
         "written by a run of another config (field 'model.positional'"),
    Case("resume-other-config", "resuming with another config than the run's",
         lambda t, r: ["train", "--out", str(_resumable(t, r)), "--resume", *TINY,
                       "--set", "train.lr=0.5"],
         "holds a run of another config (field 'train.lr'"),
    Case("resume-moment-shape", "optimizer moments of the wrong shape in the last checkpoint",
         lambda t, r: ["train", "--out", str(_resumable(t, r, "moment-shape")), "--resume", *TINY],
         "optimizer state"),
    Case("resume-no-loop-key", "a resume checkpoint missing a loop key",
         lambda t, r: ["train", "--out", str(_resumable(t, r, "no-loop")), "--resume", *TINY],
         "loop state 'mean_loss' missing"),
    Case("resume-rng-size", "a resume checkpoint whose generator state has the wrong size",
         lambda t, r: ["train", "--out", str(_resumable(t, r, "rng-size")), "--resume", *TINY],
         "generator state"),
    Case("resume-garbage-config", "a run directory whose config.yaml is garbage",
         lambda t, r: ["train", "--out", str(_resumable(t, r, "garbage-config")), "--resume",
                       *TINY],
         "not a resumable run"),
    Case("resume-no-config", "a run directory whose config.yaml was deleted",
         lambda t, r: ["train", "--out", str(_resumable(t, r, "no-config")), "--resume", *TINY],
         "not a revcurse run (no config.yaml)"),
    Case("yaml-alias", "a YAML alias (the alias bomb's building block)",
         lambda t, r: ["sweep", "--out", str(t / "o"), "--config", str(_write(
             t / "s.yaml", "grid:\n  model.positional: &a [rope]\n  model.norm: *a\n"))],
         "aliases (*name) are not allowed"),
    Case("yaml-deep", "a YAML config 20,000 levels deep (a RecursionError traceback before)",
         lambda t, r: ["sweep", "--out", str(t / "o"), "--config",
                       str(_write(t / "s.yaml", "grid: " + "[" * 20000 + "]" * 20000 + "\n"))],
         "nested more than 64 levels deep"),
    Case("yaml-repeated-key", "a YAML config naming one key twice (last one won silently)",
         lambda t, r: ["sweep", "--out", str(t / "o"), "--config",
                       str(_write(t / "s.yaml", "seeds: [0]\nname: a\nseeds: [1]\n"))],
         "s.yaml:3: key 'seeds' is repeated (first at line 1)"),
    Case("json-repeated-key", "a facts line naming one field twice (last one won silently)",
         lambda t, r: ["data", "facts", "--path", str(_write(t / "f.jsonl",
                       '{"id": "x", "a": "A", "a": "B", "b": "C", "forward": ["{a} {b}"], '
                       '"reverse": ["{b} {a}"]}\n'))],
         "f.jsonl:1: invalid JSON (key 'a' is repeated)"),
    Case("facts-group-path", "a facts group that is a path (its test files were written outside "
         "the output)",
         lambda t, r: ["data", "harness", "facts", "--out", str(t / "h"), "--path",
                       str(_write(t / "g.jsonl", '{"id": "x", "a": "A", "b": "B", "forward": '
                                  '["{a} {b}"], "reverse": ["{b} {a}"], '
                                  '"group": "../victim/PWNED"}\n'))],
         "g.jsonl:1: field 'group': expected a plain name"),
    Case("convert-overwrite", "data convert onto an existing file (overwritten before)",
         lambda t, r: ["data", "convert", "parent-child", "--out",
                       str(_write(t / "notes.jsonl", "my notes\n"))],
         "already exists"),
    Case("probe-overrides", "probe command given a non-probe override",
         lambda t, r: ["probe", str(r), "--set", "train.lr=1"], "only takes probe.*"),
    # checkpoints
    Case("ckpt-pickle", "a pickle file in place of a checkpoint",
         lambda t, r: ["evaluate", str(_tamper_checkpoint(t, r, "pickle"))],
         "not a valid safetensors file"),
    Case("ckpt-truncated", "a truncated checkpoint",
         lambda t, r: ["evaluate", str(_tamper_checkpoint(t, r, "truncate"))],
         "not a valid safetensors file"),
    Case("ckpt-header", "a checkpoint with a tampered header",
         lambda t, r: ["evaluate", str(_tamper_checkpoint(t, r, "header"))],
         "not a valid safetensors file"),
    Case("ckpt-shape", "a checkpoint with a wrongly shaped tensor",
         lambda t, r: ["evaluate", str(_tamper_checkpoint(t, r, "shape"))],
         "weights do not match the model"),
    Case("ckpt-no-meta", "a safetensors file without revcurse metadata",
         lambda t, r: ["evaluate", str(_tamper_checkpoint(t, r, "no-meta"))],
         "not a revcurse checkpoint"),
    Case("ckpt-bad-meta", "a checkpoint whose config metadata is not JSON",
         lambda t, r: ["evaluate", str(_tamper_checkpoint(t, r, "bad-meta"))],
         "corrupt checkpoint metadata"),
    # Hugging Face checkpoints and adapters (`evaluate`; `finetune` loads through the same code)
    Case("hf-pickle-only", "a checkpoint folder holding only pytorch_model.bin (unpickled before)",
         lambda t, r: ["evaluate", str(_hf(t, "pickle-only")), "--out", str(t / "ev")],
         "no *.safetensors weights (it holds pytorch_model.bin)"),
    Case("hf-missing-tensor", "a checkpoint lacking a tensor (random weights and a warning before)",
         lambda t, r: ["evaluate", str(_hf(t, "missing-tensor")), "--out", str(t / "ev")],
         "lacks 1 tensor(s) the model needs (model.layers.1.mlp.down_proj.weight)"),
    Case("hf-nan-weights", "a checkpoint whose weights are all NaN (every query scored as answered before)",
         lambda t, r: ["evaluate", str(_hf(t, "nan")), "--out", str(t / "ev")],
         "non-finite weights (NaN or inf) in model.embed_tokens.weight"),
    Case("hf-config-list", "a config.json that is a list (a traceback before)",
         lambda t, r: ["evaluate", str(_hf_config(t, "[1, 2]")), "--out", str(t / "ev")],
         "expected a JSON object with 'model_type'"),
    Case("hf-config-string", "a config.json that is a string",
         lambda t, r: ["evaluate", str(_hf_config(t, '"llama"')), "--out", str(t / "ev")],
         "expected a JSON object with 'model_type'"),
    Case("hf-config-no-type", "a config.json without model_type",
         lambda t, r: ["evaluate", str(_hf_config(t, '{"hidden": 8}')), "--out", str(t / "ev")],
         "expected a JSON object with 'model_type'"),
    Case("hf-config-deep", "a config.json nested 100,000 levels deep",
         lambda t, r: ["evaluate", str(_hf_config(t, "[" * 100_000 + "]" * 100_000)),
                       "--out", str(t / "ev")],
         "not a readable JSON object (RecursionError)"),
    Case("hf-config-repeated", "a config.json naming model_type twice",
         lambda t, r: ["evaluate", str(_hf_config(t, '{"model_type": "llama", "model_type": '
                                                      '"gpt2"}')), "--out", str(t / "ev")],
         "not a readable JSON object (key 'model_type' is repeated)"),
    Case("hf-model-type", "a checkpoint of an architecture revcurse does not load",
         lambda t, r: ["evaluate", str(_hf_config(t, '{"model_type": "gpt2"}')),
                       "--out", str(t / "ev")],
         "model_type 'gpt2' is none of"),
    Case("gguf-not-gguf", "a .gguf path that holds text",
         lambda t, r: ["evaluate", str(_gguf(t, "text")), "--out", str(t / "ev")],
         "not a GGUF file (it starts with b'a te'"),
    Case("gguf-truncated", "a GGUF file cut in its header",
         lambda t, r: ["evaluate", str(_gguf(t, "truncated")), "--out", str(t / "ev")],
         "a malformed or truncated GGUF file"),
    Case("gguf-architecture", "a GGUF file of an architecture transformers cannot read",
         lambda t, r: ["evaluate", str(_gguf(t, "architecture")), "--out", str(t / "ev")],
         "architecture 'rwkv6', which transformers cannot load from GGUF"),
    Case("models-unknown", "`models get` of a checkpoint revcurse does not know",
         lambda t, r: ["models", "get", "smollm3-135m", "--cache", str(t / "cache")],
         "unknown checkpoint 'smollm3-135m'; expected one of ['smollm2-135m-instruct']"),
    Case("models-tiny-exists", "`models tiny` into a folder that exists (it would mix checkpoints)",
         lambda t, r: ["models", "tiny", "--out", str(_write(t / "held" / "x", "mine").parent)],
         "already exists; choose a new folder (nothing was written)"),
    Case("models-tiny-facts", "`models tiny` over a facts file that does not exist",
         lambda t, r: ["models", "tiny", "--out", str(t / "ck"), "--facts", str(t / "no.jsonl")],
         "no.jsonl"),
    Case("adapter-foreign", "an adapter made for a model of another width (a traceback before)",
         lambda t, r: ["evaluate", str(_hf(t)), "--adapter", str(_adapter(t, "foreign")),
                       "--out", str(t / "ev")],
         "this adapter does not fit the model"),
    Case("adapter-linked", "adapter files that are links out of their folder (followed before)",
         lambda t, r: ["evaluate", str(_hf(t)), "--adapter", str(_adapter(t, "linked")),
                       "--out", str(t / "ev")],
         "outside the adapter folder"),
    Case("adapter-missing", "an adapter folder without adapter weights",
         lambda t, r: ["evaluate", str(_hf(t)), "--adapter", str(_write(t / "a" / "x", "").parent),
                       "--out", str(t / "ev")],
         "no adapter_model.safetensors"),
    Case("llada-alibi", "an LLaDA config.json with a field value revcurse does not implement",
         lambda t, r: ["evaluate", str(_llada(t, "alibi")), "--out", str(t / "ev")],
         "field 'alibi' = True is not supported"),
    Case("llada-text-number", "an LLaDA config.json holding text for a number (a traceback before)",
         lambda t, r: ["evaluate", str(_llada(t, "text-number")), "--out", str(t / "ev")],
         "field 'd_model': expected a number"),
    Case("llada-missing-tensor", "an LLaDA checkpoint lacking a tensor (a traceback before)",
         lambda t, r: ["evaluate", str(_llada(t, "missing-tensor")), "--out", str(t / "ev")],
         "lacks tensor(s) for this config.json (1: model.transformer.blocks.0.attn_norm.weight)"),
    Case("llada-truncated", "a truncated LLaDA shard (a SafetensorError traceback before)",
         lambda t, r: ["evaluate", str(_llada(t, "truncated")), "--out", str(t / "ev")],
         "model.safetensors: not a valid safetensors file"),
    # trackers: checked before the run folder exists (a half-written folder blocked the retry)
    Case("tracker-wandb", "W&B with neither offline mode, a key nor a login (a traceback before)",
         lambda t, r: ["train", "--out", str(t / "o"), "--log-with", "wandb", *TINY],
         "set WANDB_MODE=offline", patch=_no_tracker_setup),
    Case("tracker-mlflow", "MLflow on a local folder without MLFLOW_ALLOW_FILE_STORE",
         lambda t, r: ["train", "--out", str(t / "o"), "--log-with", "mlflow", *TINY],
         "MLFLOW_ALLOW_FILE_STORE=true", patch=_no_tracker_setup),
    Case("tracker-broken", "a tracker package that is installed but fails to import",
         lambda t, r: ["train", "--out", str(t / "o"), "--log-with", "tensorboard", *TINY],
         "fails to import (RuntimeError: protobuf version mismatch)", patch=_broken_tensorboard),
    # writing
    Case("disk-full", "a full disk (a 54-line traceback before)",
         lambda t, r: ["train", "--out", str(t / "o"), *TINY],
         "No space left on device", patch=_disk_full),
    Case("lock-symlink", "a run whose .lock is a symlink to a user's file (truncated before)",
         lambda t, r: ["train", "--out", str(_symlinked_lock(t, r)), "--resume", *TINY],
         "cannot be used as this run's lock"),
    Case("train-busy", "a second train --resume on a run being trained (both ran before)",
         lambda t, r: ["train", "--out", str(_resumable(t, r)), "--resume", *TINY],
         "another process is training this run", locked=lambda t: t / "copy"),
    Case("finetune-busy", "a fine-tune into a run being fine-tuned (both ran before)",
         lambda t, r: ["finetune", "--out", str(t / "ft"), "--force", "--no-progress"],
         "another process is training this run", locked=lambda t: t / "ft"),
    Case("finetune-facts-changed", "finetune --resume after its facts file changed (resumed on the "
         "new file before)", lambda t, r: _facts_changed_after_finetune(t),
         "facts.jsonl has changed since this run"),
    Case("finetune-not-empty", "a fine-tune into a non-empty folder",
         lambda t, r: ["finetune", "--out", str(_write(t / "mine" / "notes.txt", "x").parent)],
         "directory is not empty"),
    Case("sweep-other-grid", "a sweep of another grid into a sweep's folder under the same name "
         "(the grids mixed before)",
         lambda t, r: ["sweep", "--out", str(_sweep_folder(t)), "--no-progress", "--config",
                       str(_write(t / "b.yaml", 'grid: {"model.positional": [alibi]}\nseeds: '
                                  "[0]\n")), *TINY],
         "holds a sweep of other settings (field 'grid"),
    Case("sweep-busy", "a sweep into a folder another sweep is running in (both started before)",
         lambda t, r: ["sweep", "--out", str(_sweep_folder(t)), "--no-progress", "--config",
                       str(t / "a.yaml"), *TINY],
         "another process", locked=lambda t: t / "s"),
    Case("reuse-not-a-sweep", "reproduce --reuse-runs naming a folder that is not a sweep",
         lambda t, r: ["reproduce", "depth", "--quick", "--out", str(t / "o"), "--no-progress",
                       "--reuse-runs", str(_write(t / "mine" / "notes.txt", "x").parent)],
         "not a sweep folder"),
    Case("reuse-not-a-sweep-kind", "reproduce --reuse-runs for an experiment that copies no runs "
         "(the toy reproduction)",
         lambda t, r: ["reproduce", "toy", "--quick", "--out", str(t / "o"), "--no-progress",
                       "--reuse-runs", str(t)],
         "only a sweep or a from-scratch text experiment"),
    Case("reuse-not-a-scratch", "reproduce parent-child --reuse-runs naming a folder that holds no "
         "from-scratch experiment",
         lambda t, r: ["reproduce", "parent-child", "--quick", "--out", str(t / "o"),
                       "--no-progress", "--reuse-runs",
                       str(_write(t / "mine" / "notes.txt", "x").parent)],
         "no models/ in it"),
    Case("evaluate-experiment", "evaluate of an experiment folder (named a checkpoint the user "
         "never typed before)", lambda t, r: ["evaluate", str(_sweep_folder(t))],
         "an experiment folder of"),
    Case("evaluate-not-a-run", "evaluate of a folder that holds no run",
         lambda t, r: ["evaluate", str(_write(t / "mine" / "notes.txt", "x").parent)],
         "not a run directory"),
    Case("convert-dir", "data convert onto an existing folder (named an internal temporary before)",
         lambda t, r: ["data", "convert", "parent-child", "--out", str(_write(t / "d" / "x",
                                                                              "").parent)],
         "already exists"),
]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_catalogue_has_at_least_30_distinct_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_one_line_and_nothing_changes(
    tmp_path, trained, case, monkeypatch
):
    import contextlib

    args = case.setup(tmp_path, trained)
    if case.patch:
        case.patch(monkeypatch, tmp_path)
    with contextlib.ExitStack() as stack:
        if case.locked:  # held here: flock excludes a second open of the same file
            stack.enter_context(files.run_lock(case.locked(tmp_path), blocking=False))
        before = _snapshot(tmp_path)
        trained_before = _snapshot(trained)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (case.id, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (case.id, result.stderr)
    assert case.expect in lines[0], (case.id, lines[0])
    assert _snapshot(tmp_path) == before, f"{case.id}: files were written or changed"
    assert _snapshot(trained) == trained_before


def test_reliability_doc_lists_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"docs/reliability.md lacks {missing}"
    assert f"{len(CASES)} bad inputs" in (ROOT / "README.md").read_text()  # the README's count


# --------------------------------------------------------------------------------------------------
# SIGKILL, determinism, NaN
# --------------------------------------------------------------------------------------------------


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "revcurse", "train", "--out", str(out), "--no-progress",
            *TINY, "--set", "train.steps=400", *extra]  # fmt: skip


def _without_timings(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if not k.endswith("_seconds")}
    if out.get("probe"):
        out["probe"] = {k: v for k, v in out["probe"].items() if not k.endswith("_seconds")}
    return out


def _metrics_without_timings(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in files.read_jsonl(path)]


def _killed_at(out: Path, kill_at: int, *extra: str) -> subprocess.CompletedProcess:
    """Run ``train`` into ``out`` and SIGKILL it at its ``kill_at``-th write (0: never)."""
    return run_killed(kill_at, out.parent / f"{out.name}.events", *_train_cmd(out, *extra)[3:])


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_identical(tmp_path):
    # Kill points are write events of the run itself (a metrics line, a checkpoint, a summary),
    # each killed mid-write, so where a kill lands does not depend on the machine's speed.
    reference = tmp_path / "reference"
    ref = _killed_at(reference, 0)
    assert ref.returncode == 0, ref.stderr
    ref_ckpt = files.load_tensors(reference / "checkpoints" / "final.safetensors")
    rng = random.Random(0)
    points = sorted(rng.sample(range(1, ref.events + 1), 10))
    mid_training = 0
    for trial, kill_at in enumerate(points):
        out = tmp_path / f"trial{trial}"
        killed = _killed_at(out, kill_at)
        assert killed.returncode == -signal.SIGKILL and killed.events == kill_at, killed.stderr
        # Whatever the kill left behind is never a truncated file in place.
        for path in out.rglob("*"):
            if path.name.endswith(".tmp"):
                continue
            if path.suffix == ".safetensors":
                files.load_tensors(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
        has_checkpoint = (out / "checkpoints" / "last.safetensors").is_file()
        mid_training += has_checkpoint
        # What a user does: resume from the checkpoint, or start over where there is none yet.
        again = ["--resume"] if has_checkpoint else ["--force"]
        done = subprocess.run(_train_cmd(out, *again), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert _without_timings(files.read_json(out / "summary.json")) == _without_timings(
            files.read_json(reference / "summary.json")
        )
        ckpt = files.load_tensors(out / "checkpoints" / "final.safetensors")
        assert (
            all(torch.equal(ckpt[k], ref_ckpt[k]) for k in ref_ckpt)
            and ckpt.keys() == ref_ckpt.keys()
        )
        for name in ("metrics.jsonl", "probes/probes.jsonl"):
            assert _metrics_without_timings(out / name) == _metrics_without_timings(
                reference / name
            )
        assert not list(out.rglob("*.tmp"))
    assert mid_training >= 3, f"too few of the kill points {points} landed mid-training"


@pytest.mark.slow
def test_same_config_and_seed_give_bitwise_identical_results_across_processes(tmp_path):
    for name in ("a", "b"):
        subprocess.run(_train_cmd(tmp_path / name, "--set", "train.steps=60"), check=True,
                       capture_output=True)  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert _without_timings(files.read_json(a / "summary.json")) == _without_timings(
        files.read_json(b / "summary.json")
    )
    # Every tensor bitwise equal and the same metadata. (Not the raw bytes: safetensors writes the
    # metadata map in hash order, so headers of equal checkpoints can differ in key order.)
    from safetensors import safe_open

    ta, tb = (files.load_tensors(p / "checkpoints" / "final.safetensors") for p in (a, b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    metas = []
    for p in (a, b):
        with safe_open(str(p / "checkpoints" / "final.safetensors"), framework="pt") as fh:
            metas.append(fh.metadata())
    assert metas[0] == metas[1]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from revcurse import objectives
    from revcurse.config import RunConfig, apply_overrides
    from revcurse.experiments import toy_run

    calls = {"n": 0}
    original = objectives.training_loss

    def poisoned(*args, **kwargs):
        loss = original(*args, **kwargs)
        if not args[1].training:  # the probes' training-loss gradient (eval mode), not a step
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 15 else loss

    monkeypatch.setattr(objectives, "training_loss", poisoned)
    cfg = apply_overrides(RunConfig(), [a for a in TINY if a != "--set"])
    with pytest.raises(RevcurseError, match="non-finite loss .* at step 14"):
        toy_run.train(cfg, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    _, _, _, step = toy_run.load_checkpoint(last)
    assert step == 10  # the last checkpoint before the NaN, intact
    assert not (tmp_path / "run" / "summary.json").exists()


# --------------------------------------------------------------------------------------------------
# Parsing fuzz and safe loading
# --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=40), st.builds(json.dumps, st.dictionaries(
    st.sampled_from(["prompt", "completion", "x"]),
    st.one_of(st.text(max_size=10), st.integers(), st.none()), max_size=3))), max_size=5))  # fmt: skip
def test_fuzz_jsonl_dataset_parsing(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        pairs = load_pairs(path)
    except RevcurseError as err:
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: ", str(err)) and "\n" not in str(err)
    else:
        assert all(p.completion.strip() for p in pairs)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.text(alphabet="abcXYZ ,\"'\n", max_size=8), min_size=1, max_size=6),
                max_size=5))  # fmt: skip
def test_fuzz_csv_dataset_parsing(tmp_path_factory, rows):
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["child", "parent", "parent_type", "child_prediction", "can_reverse"])
    writer.writerows(rows)
    path = tmp_path_factory.mktemp("fuzz") / "pc.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    try:
        ds = load_parent_child(path)
    except RevcurseError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
    else:
        assert len(ds.train) == len(rows)


def test_source_never_uses_unsafe_loaders():
    """Only safetensors, JSON and YAML (safe_load) are read; no pickle, no remote code by default."""
    offenders = []
    for path in (ROOT / "src" / "revcurse").rglob("*.py"):
        text = path.read_text()
        for pattern in (r"torch\.load\(", r"\bimport pickle\b", r"pickle\.load", r"yaml\.load\(",
                        r"yaml\.unsafe_load", r"trust_remote_code\s*=\s*True", r"(?<![.\w])eval\("):  # fmt: skip
            if re.search(pattern, text):
                offenders.append(f"{path.name}: {pattern}")
    assert not offenders, offenders


def test_a_second_train_on_a_run_being_trained_is_refused(tmp_path, trained):
    """Two `train --resume` on one run used to both run (and duplicate 105 metric records): the
    second now finds the run's lock held and stops with one line, changing nothing."""
    run = _resumable(tmp_path, trained)
    before = _snapshot(run)
    with files.run_lock(run):  # another process training it
        after_lock = _snapshot(run)
        result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", *TINY])
    assert result.exit_code == 2
    assert "another process is training this run" in result.stderr
    assert _snapshot(run) == after_lock and set(after_lock) <= set(before) | {".lock"}


def test_files_follow_the_umask_like_any_other_program(tmp_path):
    """mkstemp creates 0600 files; revcurse's atomic writes used to keep that mode, so a shared
    results folder was unreadable to the group. Written files now get 0666 & ~umask."""
    path = tmp_path / "summary.json"
    files.write_json(path, {"a": 1})
    files.save_tensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)}, {})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what the umask gives an ordinary file
    for p in (path, tmp_path / "w.safetensors"):
        assert p.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == files.FILE_MODE


def test_disk_full_and_read_only_filesystems_are_one_line_errors(tmp_path, monkeypatch):
    import errno

    for code, words in ((errno.ENOSPC, "No space left on device"),
                        (errno.EROFS, "Read-only file system")):  # fmt: skip

        def failing(path, write, code=code):
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(files, "_atomic", failing)
        result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / f"o{code}"), *TINY])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "config.yaml" in lines[0], lines


def test_run_index_is_never_written_when_read_and_bad_rows_are_one_line(tmp_path):
    import sqlite3

    empty = tmp_path / "index.sqlite"
    empty.write_bytes(b"")
    result = CliRunner().invoke(app, ["runs", "list", str(tmp_path)])
    assert result.exit_code == 2 and "not a revcurse run index" in result.stderr
    assert empty.read_bytes() == b""  # no schema written into the user's file
    from revcurse.store import Store

    store = Store(tmp_path / "good" / "index.sqlite")
    store.register("x", [("r1", {"a": 1}, {"b": 2})])
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE runs SET labels = '{broken'")
    result = CliRunner().invoke(app, ["runs", "list", str(tmp_path / "good")])
    assert result.exit_code == 2 and "column 'labels' is not valid JSON" in result.stderr
    other = tmp_path / "other" / "index.sqlite"  # a 'runs' table of another shape
    other.parent.mkdir()
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE runs (run_id TEXT)")
        conn.execute("INSERT INTO runs VALUES ('y')")
    result = CliRunner().invoke(app, ["runs", "list", str(other.parent)])
    assert result.exit_code == 2 and "no column 'status'" in result.stderr


def test_a_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    """Spreadsheet programs write a BOM; it used to glue itself to the first column's name and the
    loader reported a misleading missing column 'child'."""
    body = "child,parent,parent_type,child_prediction,can_reverse\nKid,Mum,mother,,False\n"
    plain = load_parent_child(_write_bytes(tmp_path / "a.csv", body.encode()))
    bom = load_parent_child(_write_bytes(tmp_path / "b.csv", b"\xef\xbb\xbf" + body.encode()))
    assert (
        [p.prompt for p in bom.train] == [p.prompt for p in plain.train] == ["Who is Kid's mother?"]
    )


def test_report_markdown_escapes_text_that_comes_from_data(tmp_path):
    """Dataset strings reach report tables (generations, prompts); Markdown viewers render raw
    HTML, and a '|' or a newline breaks a table row. Both are escaped now."""
    from revcurse.report.render import Check, Para, Pre, Table, to_markdown

    evil = "<script>alert(1)</script> a|b\nc"
    text = to_markdown("t", [Para(evil), Table(["prompt"], [[evil]]), Check(evil, evil, True),
                             Pre("```\nfenced\n```")], tmp_path)  # fmt: skip
    assert "<script>" not in text and "&lt;script&gt;" in text
    row = next(line for line in text.splitlines() if line.startswith("| &lt;script"))
    assert row.count(" | ") == 0 and "a\\|b c" in row  # one cell, on one line
    assert "````\n```\nfenced\n```\n````" in text  # a longer fence around a fenced text


def test_repeated_and_conflicting_records_are_named_in_warnings(tmp_path):
    body = ("Kid,Mum,mother,,False\nKid,Mum,mother,,False\nKid,Ann,mother,,False\n"
            "Tot,Dad,father,,False\n")  # fmt: skip
    result = CliRunner().invoke(app, ["data", "parent-child", "--path", str(_pc(tmp_path, body))])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: pc.csv:3: repeats pc.csv:2 (split 'train')",
        "warning: pc.csv:4: conflicts with pc.csv:2: same prompt, answer 'Ann' vs 'Mum' (split "
        "'train')",
    ]


def _group_running(pgid: int) -> list[str]:
    """Processes of a process group that are still running: zombies excluded, and so are
    processes already tearing down, which ps shows as ``[name]`` once the kernel has released
    their command line (seen under load: a helper of the exited parent, such as
    multiprocessing's resource tracker, caught mid-exit). A worker still training keeps its full
    command line and is reported."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [" ".join(r) for r in rows
            if r[0] == str(pgid) and not r[1].startswith("Z")
            and not (len(r) == 3 and r[2].startswith("[") and r[2].endswith("]"))]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c twice", "sigterm"])
def test_interrupting_a_multi_run_job_stops_everything_and_it_resumes(tmp_path, how):
    """Ctrl-C used to stop only the running models while queued ones went on training, a second
    Ctrl-C hung, and SIGTERM likewise. The interrupt is sent when the job's first run has written
    metrics (its own progress, not the clock)."""
    from conftest import HANG_GUARD_S

    from revcurse.store import Store

    out = tmp_path / "toy"
    cmd = [sys.executable, "-m", "revcurse", "reproduce", "toy", "--out", str(out), "--seeds", "4",
           "--workers", "2", "--no-progress", "--set", "data.n_pairs=10", "--set",
           "model.d_model=16", "--set", "train.steps=1000", "--set", "train.warmup_steps=5",
           "--set", "train.eval_every=0", "--set", "train.checkpoint_every=50",
           "--set", "probe.enabled=false"]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = out / "models" / "mdm-seed0" / "metrics.jsonl"
    while proc.poll() is None and not first.is_file():
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:  # a terminal's Ctrl-C goes to the whole process group
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == (143 if how == "sigterm" else 130), err
    lines = err.strip().splitlines()  # where it writes (said first), then one line on the stop
    assert lines[0] == f"writing to {out}" and len(lines) == 2, err
    assert "--resume" in lines[1] and "Traceback" not in err, err
    assert "last checkpoint" in lines[1]  # says what a resume trains again
    assert not _group_running(proc.pid), "a worker outlived the interrupt"
    # Queued runs never started; the index holds no run as 'running'.
    started = {p.name for p in (out / "models").iterdir()}
    assert started <= {"mdm-seed0", "mdm-seed1"}, started
    statuses = [r["status"] for r in Store(out / "index.sqlite", create=False).rows()]
    assert "running" not in statuses and len(statuses) == 8
    # The printed command resumes it to the end.
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True,
                             timeout=HANG_GUARD_S)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert len(files.read_json(out / "summary.json")["rows"]) == 8
