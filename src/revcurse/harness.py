"""Reversal splits as lm-evaluation-harness tasks (EleutherAI's ``lm_eval``), read from local files.

``revcurse data harness NAME --out DIR`` writes, for every test split of a dataset that is asked
as a plain prompt (infilling splits, which need a bidirectional model's answer slot, are left
out and named):

    <split>.jsonl                        one document per query: prompt, answers, choices, gold
    revcurse_<dataset>_<split>_gen.yaml   generate_until: greedy generation, exact match against
                                         any accepted answer
    revcurse_<dataset>_<split>_rank.yaml  multiple_choice: the answer ranked by log-likelihood
                                         among the very candidates revcurse's own likelihood
                                         ranking uses (:func:`revcurse.evaluation.candidates`,
                                         same distractors, same draw); ``acc`` is its top-1
    revcurse_<dataset>.yaml               the group of all of them

Run them with ``lm_eval --model hf --model_args pretrained=CKPT --include_path DIR --tasks
revcurse_<dataset>`` (or the LLaDA / dllm harness models). How they relate to revcurse's own
numbers, so that nobody reads one for the other:

* exact match ignores case and all whitespace; revcurse's ``exact`` compares lower-cased word and
  punctuation tokens, so the two agree except where two strings differ only in where a space falls
  (``"ab c"`` vs ``"a bc"``);
* the harness scores a candidate's tokens alone; revcurse also scores the end-of-sequence (or
  end-of-turn) token after it, and frames prompts with a chat template where the checkpoint has
  one (the harness does so with ``--apply_chat_template``). Expect close, not equal, numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from revcurse import files
from revcurse.data.text_datasets import TextDataset
from revcurse.evaluation import candidates

EXACT_MATCH = {
    "metric": "exact_match",
    "aggregation": "mean",
    "higher_is_better": True,
    "ignore_case": True,
    "regexes_to_ignore": [r"\s+"],
}
"""The generation tasks' metric: the harness's exact match, case and whitespace ignored."""
ACCURACY = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}


def task_prefix(dataset: str) -> str:
    """``revcurse_<dataset>``, the dataset's name made a harness identifier."""
    return "revcurse_" + re.sub(r"\W+", "_", dataset).strip("_").lower()


def documents(pairs, n_distractors: int, distractor_seed: int = 0) -> list[dict[str, Any]]:
    """One harness document per query: the prompt, its accepted answers, and the candidates of the
    likelihood ranking with the right one first (``gold`` 0)."""
    texts = candidates(pairs, n_distractors, distractor_seed)
    return [
        {"id": i, "prompt": p.prompt, "answers": list(p.answers), "choices": cs, "gold": 0}
        | ({"fact": p.fact} if p.fact else {})
        for i, (p, cs) in enumerate(zip(pairs, texts, strict=True))
    ]


def export_harness(
    dataset: TextDataset,
    out: Path,
    *,
    n_distractors: int,
    gen_length: int,
    distractor_seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Write the dataset's harness tasks into ``out`` (see the module docstring); returns the task
    names written and the splits left out (infilling)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefix = task_prefix(dataset.name)
    tasks: list[str] = []
    skipped: list[str] = []
    for split, pairs in dataset.tests.items():
        if not pairs or any(p.suffix for p in pairs):
            skipped.append(split)
            continue
        data = out / f"{split}.jsonl"
        docs = documents(pairs, n_distractors, distractor_seed)
        files.write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
        source = {
            "dataset_path": "json",
            # absolute: the harness resolves data files from where it runs, not from the YAML
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
            "test_split": "test",
            "doc_to_text": "{{prompt}}",
            "target_delimiter": "",  # answers carry their own leading space
            "metadata": {"version": 1.0, "direction": dataset.directions[split]},
        }
        gen = {
            "task": f"{prefix}_{split}_gen",
            **source,
            "output_type": "generate_until",
            "doc_to_target": "answers",
            "generation_kwargs": {"until": ["\n"], "max_gen_toks": gen_length, "do_sample": False},
            "metric_list": [EXACT_MATCH],
        }
        rank = {
            "task": f"{prefix}_{split}_rank",
            **source,
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "metric_list": [ACCURACY],
        }
        for task in (gen, rank):
            files.write_text(out / f"{task['task']}.yaml", _dump(task))
            tasks.append(task["task"])
    files.write_text(out / f"{prefix}.yaml", _dump({"group": prefix, "task": tasks}))
    return tasks, skipped


def _dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=1000)
