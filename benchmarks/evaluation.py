"""Benchmark: what the mirror direction adds to evaluation, measured side by side.

Evaluation now asks a bidirectional model three directions (forward, mirror, reverse) where it
asked two. Two costs are timed, each with and without the mirror queries, interleaved, median wall:

* toy: :func:`revcurse.evaluation.evaluate` on the default 100-pair MDM (one batched forward per
  direction), as a multiple of one full-batch training step of the same model;
* text: the Person-Description training-template splits of one MDM (sampler + 4-draw likelihood
  among 10 candidates) with and without the two mirror splits, on an untrained default model.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from revcurse.config import RunConfig, TextRunConfig
from revcurse.data.tasks import TASKS
from revcurse.data.tokenize import training_batch
from revcurse.evaluation import evaluate, evaluate_split
from revcurse.experiments.from_scratch import prepare
from revcurse.experiments.toy_run import build_dataset, build_model
from revcurse.models.transformer import TransformerLM
from revcurse.objectives import training_loss

SPLITS, MIRRORS = TASKS["person-description"].splits, TASKS["person-description"].mirrors
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import interleaved, median  # noqa: E402


def _toy(repeats: int) -> list[str]:
    cfg = RunConfig()
    dataset, vocab = build_dataset(cfg)
    model = build_model(cfg, len(vocab))
    without = dataclasses.replace(
        dataset, queries={d: q for d, q in dataset.queries.items() if d != "mirror"}
    )
    data = training_batch(dataset, vocab, "masked_diffusion", "all")
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = training_loss("masked_diffusion", model, data, vocab.mask_id, gen)
        loss.backward()

    def many(fn, n=50):
        return lambda: [fn() for _ in range(n)]

    times = interleaved({"step": many(step), "two": many(lambda: evaluate(model, without, vocab)),
                         "three": many(lambda: evaluate(model, dataset, vocab))}, repeats)  # fmt: skip
    t_step, t_two, t_three = (median(times[k]) / 50 for k in ("step", "two", "three"))
    return [
        f"| toy evaluate, 100 facts (ms per call) | {t_two * 1e3:.2f} | {t_three * 1e3:.2f} | "
        f"{t_three / t_two:.2f}x | {t_three / t_step:.2f} training steps |"
    ]


def _text(repeats: int) -> list[str]:
    cfg = TextRunConfig()
    prepared = prepare(cfg)
    tok = prepared.tokenizer
    torch.manual_seed(0)
    model = TransformerLM(cfg.model, len(tok)).eval()
    trained = [s for s in SPLITS if s.endswith("_train")]

    def evaluate_splits(names) -> None:
        gen = torch.Generator().manual_seed(0)
        for name in names:
            settings = dataclasses.replace(cfg.eval, gen_length=prepared.gen_lengths[name])
            evaluate_split(model, tok, prepared.splits[name], False, settings, gen, bos=True,
                           eos_fill_to=cfg.model.max_seq_len)  # fmt: skip

    plain = [s for s in trained if s not in MIRRORS]
    times = interleaved({"two": lambda: evaluate_splits(plain),
                         "three": lambda: evaluate_splits(trained)}, repeats)  # fmt: skip
    t_two, t_three = median(times["two"]), median(times["three"])
    return [
        f"| P-D training-template splits, one MDM (s) | {t_two:.2f} | {t_three:.2f} | "
        f"{t_three / t_two:.2f}x | {len(plain)} splits -> {len(trained)} |"
    ]


def run(repeats: int = 3) -> str:
    torch.set_num_threads(1)
    start = time.perf_counter()
    lines = [
        "## Evaluation cost of the mirror direction",
        "",
        f"Median wall of {repeats} interleaved repeats, 1 thread. Each row times the same model "
        "with and without the mirror queries.",
        "",
        "| what | without mirror | with mirror | ratio | note |",
        "|---|---|---|---|---|",
        *_toy(repeats),
        *_text(repeats),
        "",
        f"(measured in {time.perf_counter() - start:.0f} s)",
    ]
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
