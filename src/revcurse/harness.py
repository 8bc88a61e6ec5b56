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
    revcurse_docs.py                      reads a split's documents from the folder it lies in

The tasks name their documents by file name only and load them through ``revcurse_docs.py``
(the harness imports a task's ``!function`` from beside its YAML), so the folder can be moved or
copied to another machine and run from any working directory.

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
LOADER = "revcurse_docs"
"""The module written beside the tasks; its ``load`` is every task's ``custom_dataset``."""
LOADER_SOURCE = '''"""Documents of the revcurse harness tasks beside this file (written by `revcurse data harness`).

Each task names its split's file (``data_file``) relative to this folder, so the folder runs
wherever it is moved: ``lm_eval --include_path THIS_FOLDER ...``."""

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(data_file, **metadata):
    """The ``test`` split of this folder's ``data_file`` (the harness passes the task's metadata too)."""
    path = HERE / data_file
    if path.parent != HERE or path.suffix != ".jsonl":
        raise ValueError(f"data_file {data_file!r}: expected a .jsonl file name in {HERE}")
    return datasets.load_dataset("json", data_files={"test": str(path)})
'''


class _Function(str):
    """A YAML scalar written with the harness's ``!function`` tag (a function it imports)."""


class _TaskDumper(yaml.SafeDumper):
    pass


_TaskDumper.add_representer(
    _Function, lambda dumper, value: dumper.represent_scalar("!function", str(value))
)


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
            # read through the loader beside the YAML: the harness resolves a plain data file
            # from the directory it runs in, which would pin the tasks to one place
            "custom_dataset": _Function(f"{LOADER}.load"),
            "dataset_kwargs": {"data_file": data.name},
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
    files.write_text(out / f"{LOADER}.py", LOADER_SOURCE)
    return tasks, skipped


def _dump(obj: dict[str, Any]) -> str:
    return yaml.dump(obj, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True, width=1000)
