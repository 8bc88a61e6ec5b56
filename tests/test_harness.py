"""lm-evaluation-harness export: the exported tasks run offline in the harness itself on a tiny
random Hugging Face model, ask exactly revcurse's questions (prompts, accepted answers, the very
candidates of revcurse's likelihood ranking) and score generations as revcurse's exact match
does."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_cli
from hypothesis import given
from hypothesis import strategies as st
from test_finetune import save_chat_checkpoint

from revcurse.config import FinetuneConfig, TextDataConfig
from revcurse.data.text import WordTokenizer
from revcurse.data.text_datasets import load_text_dataset
from revcurse.evaluation import text_queries
from revcurse.harness import EXACT_MATCH, documents, export_harness
from revcurse.metrics import exact_match

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.metrics import exact_match_hf_evaluate  # noqa: E402

N = 6  # documents asked per task: enough to see every field, seconds on CPU


def harness_exact(generation: str, answers: list[str]) -> bool:
    """The exported generation metric, as the harness applies it to a multi-answer document."""
    kwargs = {k: v for k, v in EXACT_MATCH.items() if k not in ("metric", "aggregation",
                                                                 "higher_is_better")}  # fmt: skip
    score = exact_match_hf_evaluate(
        predictions=[generation] * len(answers), references=answers, **kwargs
    )
    return score["exact_match"] > 0


def test_exported_tasks_run_offline_on_a_tiny_model_and_ask_revcurses_questions(
    tmp_path, monkeypatch
):
    from lm_eval.tasks import TaskManager

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    save_chat_checkpoint(ckpt)
    dataset = load_text_dataset(FinetuneConfig().data)
    tasks, skipped = export_harness(dataset, tmp_path / "written", n_distractors=3, gen_length=4)
    assert skipped == [] and len(tasks) == 2 * len(dataset.tests)
    # portable: no file names where it was written, and it runs moved, from another directory
    assert not any(str(tmp_path) in f.read_text() for f in (tmp_path / "written").iterdir())
    shutil.move(tmp_path / "written", tmp_path / "moved" / "tasks")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    split = "reverse"  # prompts asked once with every accepted answer: several answers per doc
    gen, rank = f"revcurse_parent_child_{split}_gen", f"revcurse_parent_child_{split}_rank"
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(ckpt), "device": "cpu", "dtype": "float32"},
        tasks=[gen, rank],
        task_manager=TaskManager(include_path=str(tmp_path / "moved" / "tasks")),
        limit=N,
        log_samples=True,
    )
    pairs = dataset.tests[split]
    tokenizer = WordTokenizer.fit([p.prompt + a for p in pairs for a in [p.completion, *p.answers]])
    _, candidates = text_queries(tokenizer, pairs, 3)  # revcurse's own likelihood candidates

    ranked = sorted(results["samples"][rank], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in ranked] == list(range(N))
    for sample in ranked:
        i = sample["doc_id"]
        assert sample["doc"]["choices"] == candidates[i]
        assert [tuple(a) for a in sample["arguments"]] == [
            (pairs[i].prompt, c) for c in candidates[i]
        ]
    right = [
        max(range(len(s["filtered_resps"])), key=lambda j: s["filtered_resps"][j][0]) == 0
        for s in ranked
    ]
    assert results["results"][rank]["acc,none"] == pytest.approx(sum(right) / N)

    generated = results["samples"][gen]
    assert len(generated) == N
    for sample in generated:
        pair = pairs[sample["doc_id"]]
        assert sample["doc"]["answers"] == list(pair.answers) and sample["arguments"][0][0] == (
            pair.prompt
        )
        # the harness's score of its own generation is revcurse's exact match of it
        assert sample["exact_match"] == float(exact_match(sample["filtered_resps"][0],
                                                          pair.answers))  # fmt: skip


@given(
    words=st.lists(st.from_regex(r"[A-Za-z][a-z]{0,6}", fullmatch=True), min_size=1, max_size=3),
    spaces=st.lists(st.sampled_from(["", " ", "  ", "\t"]), min_size=4, max_size=4),
    upper=st.booleans(),
)
def test_the_generation_metric_agrees_with_revcurses_exact_match(words, spaces, upper):
    answer = " " + " ".join(words)
    generation = spaces[0] + (" " + spaces[1]).join(words) + spaces[2]
    generation = generation.upper() if upper else generation
    assert exact_match(generation, [answer]) and harness_exact(generation, [answer])
    other = answer + " Jr"
    assert not exact_match(generation, [other]) and not harness_exact(generation, [other])
    assert harness_exact(generation, [other, answer])  # any accepted answer counts
    punctuated = generation + "."  # revcurse keeps punctuation as a token: so must the harness
    assert not exact_match(punctuated, [answer]) and not harness_exact(punctuated, [answer])


def test_documents_put_the_answer_first_among_distinct_candidates():
    pairs = load_text_dataset(TextDataConfig(dataset="parent-child")).tests["reverse"][:50]
    for doc, pair in zip(documents(pairs, 9), pairs, strict=True):
        assert doc["gold"] == 0 and doc["choices"][0] == pair.completion
        assert len(set(doc["choices"])) == 10
        assert not set(doc["choices"][1:]) & set(pair.answers)


def test_cli_writes_the_tasks_and_refuses_bad_requests(tmp_path):
    done = run_cli("data", "harness", "parent-child", "--out", str(tmp_path / "tasks"))
    assert done.returncode == 0, done.stderr
    assert "--include_path" in done.stdout and "--tasks revcurse_parent_child" in done.stdout
    assert "--limit 64" in done.stdout  # what revcurse evaluate reads by default
    assert (tmp_path / "tasks" / "revcurse_parent_child.yaml").is_file()
    again = run_cli("data", "harness", "parent-child", "--out", str(tmp_path / "tasks"))
    assert again.returncode == 2 and "not an empty folder" in again.stderr
    for args in (["data", "harness", "parent-child"], ["data", "harness", "nope", "--out", "x"]):
        bad = run_cli(*args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "x").exists()
