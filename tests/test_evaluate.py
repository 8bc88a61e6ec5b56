"""`revcurse evaluate` without training: a Hugging Face checkpoint (with or without a LoRA
adapter) or a revcurse run directory on reversal splits, your own facts included."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file
from test_finetune import TINY, save_chat_checkpoint
from typer.testing import CliRunner

from revcurse import files
from revcurse.cli import app
from revcurse.config import FinetuneConfig, apply_overrides
from revcurse.experiments.finetune import run_finetune

EVAL = [s for s in TINY if not s.startswith(("train.", "probe.every"))]


def invoke(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args])


def sets(*values: str) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def test_a_saved_adapter_evaluates_to_the_fine_tune_runs_own_after_metrics(tmp_path):
    """The fine-tune run directory, evaluated again from its saved adapter (and the tiny base
    model rebuilt from its config), gives every split's metrics its run reported after training:
    the adapter really is loaded (a base model without it scores otherwise)."""
    cfg = apply_overrides(FinetuneConfig(), ["model.family=qwen2", *TINY])
    summary = run_finetune(cfg, tmp_path / "ft", progress=False)
    result = invoke(str(tmp_path / "ft"), "--out", str(tmp_path / "ev"))
    assert result.exit_code == 0, result.output
    again = files.read_json(tmp_path / "ev" / "summary.json")
    assert again["splits"] == summary["after"]
    assert again["splits"] != summary["before"]
    assert again["adapter"] == str(tmp_path / "ft" / "adapter")
    assert (tmp_path / "ev" / "report.md").is_file() and (tmp_path / "ev" / "config.yaml").is_file()
    assert again["probe"]["final_step"] == 0 and "per_fact_cos_fwd_rev_final" in again["probe"]


def test_a_local_checkpoint_is_evaluated_on_your_own_facts(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    converted = CliRunner().invoke(app, ["data", "convert", "parent-child", "--out",
                                         str(tmp_path / "facts.jsonl")])  # fmt: skip
    assert converted.exit_code == 0, converted.output
    args = sets("data.dataset=facts", f"data.path={tmp_path / 'facts.jsonl'}", *EVAL)
    result = invoke(str(ckpt), "--out", str(tmp_path / "ev"), *args)
    assert result.exit_code == 0, result.output
    summary = files.read_json(tmp_path / "ev" / "summary.json")
    assert summary["family"] == "llama" and summary["adapter"] is None
    assert set(summary["splits"]) == {"forward", "reverse"}
    assert all(m["n"] == 8 for m in summary["splits"].values())
    lines = (tmp_path / "ev" / "generations" / "reverse.jsonl").read_text().splitlines()
    assert len(lines) == 8 and "prompt" in json.loads(lines[0])
    assert "reverse (reverse): exact" in result.output


def test_refusals_are_one_line_exit_2_and_write_nothing(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    pickled = tmp_path / "pickled"  # the same weights as pytorch_model.bin only
    save_chat_checkpoint(pickled)
    state = load_file(pickled / "model.safetensors")
    torch.save(state, pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    missing = tmp_path / "missing"  # one tensor fewer than the model needs
    save_chat_checkpoint(missing)
    state = load_file(missing / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, missing / "model.safetensors", metadata={"format": "pt"})
    nan = tmp_path / "nan"  # every weight NaN
    save_chat_checkpoint(nan)
    state = load_file(nan / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()},
              nan / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    odd = {}  # config.json files that are not what a checkpoint holds
    for name, text in {"list": "[1, 2]", "string": '"llama"', "no-type": '{"hidden": 8}',
                       "deep": "[" * 100_000 + "]" * 100_000,
                       "repeated": '{"model_type": "llama", "model_type": "gpt2"}'}.items():  # fmt: skip
        odd[name] = tmp_path / f"config-{name}"
        odd[name].mkdir()
        (odd[name] / "config.json").write_text(text)
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         intermediate_size=32, tie_word_embeddings=False))  # fmt: skip
    foreign = tmp_path / "foreign-adapter"  # made for a model of another width
    get_peft_model(small, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(
        foreign
    )
    linked = tmp_path / "linked-adapter"  # files that are links out of their folder
    linked.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (linked / name).symlink_to(foreign / name)
    cases = [
        ([str(ckpt), "--adapter", str(foreign)], "this adapter does not fit the model"),
        ([str(ckpt), "--adapter", str(linked)], "outside the adapter folder"),
        ([str(odd["list"])], "expected a JSON object with 'model_type'"),
        ([str(odd["string"])], "expected a JSON object with 'model_type'"),
        ([str(odd["no-type"])], "expected a JSON object with 'model_type'"),
        ([str(odd["deep"])], "not a readable JSON object (RecursionError)"),
        ([str(odd["repeated"])], "not a readable JSON object (key 'model_type' is repeated)"),
        ([str(pickled)], "no *.safetensors weights (it holds pytorch_model.bin)"),
        ([str(missing)], "lacks 1 tensor(s) the model needs (model.layers.1.mlp.down_proj.weight)"),
        ([str(nan)], "non-finite weights (NaN or inf) in model.embed_tokens.weight"),
        ([str(other)], "model_type 'gpt2' is none of"),
        ([str(ckpt), "--adapter", str(tmp_path)], "no adapter_model.safetensors"),
        ([str(ckpt), *sets("data.dataset=facts")], "data.path"),
        ([str(tmp_path / "nothing")], "nothing: checkpoint not found"),
    ]
    for args, fragment in cases:
        target = tmp_path / "bad"
        result = CliRunner().invoke(app, ["evaluate", *args, "--out", str(target)]
                                    if "--out" not in args else ["evaluate", *args])  # fmt: skip
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, result.stderr)
        assert not target.exists(), args
