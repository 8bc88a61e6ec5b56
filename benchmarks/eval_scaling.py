"""Benchmark: evaluation as the facts multiply, and `revcurse evaluate`, before and after batching.

Two costs, each measured on this commit's code ("after") and on commit ``BEFORE`` ("before", the
package as it was, checked out from git history into a temporary worktree), cell by cell in
alternating order, every cell in a process of its own (its peak resident memory is that
process's ``ru_maxrss``), one torch thread unless a row says otherwise:

* **toy evaluation against the number of facts**: :class:`revcurse.evaluation.ToyEvaluator` of an
  untrained default MDM on 100 / 1,000 / 10,000 pairs: CPU seconds of the first call (queries
  encoded and read), of a later call (what a run pays every ``eval_every`` steps), peak memory.
  Before, every query carried all N candidates as lists (N^2 entries) and the logits of every
  position were built ([Q, L, V]); after, the queries share one pool and are read 256 at a time,
  only the answer slot unembedded.
* **a training step** of the same toy at the default batch size (0), before (the whole set
  every step) and after (the whole set up to ``training.FULL_BATCH_MAX`` rows, batches beyond);
* both again **against the width** (``d_model`` 32 to 256 at 1,000 pairs);
* **``revcurse evaluate`` of a Hugging Face model** (:func:`revcurse.experiments.finetune.
  run_evaluation`, what the command runs): tiny random Llama (ARM) and LLaDA (MDM) on
  Parent–Child's first 32 and 128 facts as a facts file, each split evaluated whole (9
  distractors, 8 Monte-Carlo draws), probes off (they are not the evaluation, and batching does
  not touch them):
  wall and CPU seconds of a second call in the process (the first, timed apart, is mostly
  importing transformers: the same on both sides). Before scored one candidate of one query per forward pass and left
  torch's thread count at its default (every core); after, rows of all candidates share forward
  passes and the run's ``train.threads`` applies. "before, 1 thread" separates the two.

``python benchmarks/eval_scaling.py`` prints the section; ``benchmarks/run.py`` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from common import in_child

HERE = Path(__file__).resolve().parent
BEFORE = "2b053c6"
"""The last commit whose evaluation held every query's candidate list and scored one candidate
per forward pass (the code this benchmark's "after" replaced)."""
PAIRS = (100, 1000, 10_000)
D_MODELS = (32, 64, 128, 256)
"""The width axis, at :data:`WIDTH_PAIRS` pairs (the toy's default width is 64)."""
WIDTH_PAIRS = 1000
TRAIN_STEPS = 5
HF_FACTS = (32, 128)
"""Facts of the ``revcurse evaluate`` cells (every split evaluated whole)."""


def _settings(arg: str) -> list[str]:
    """A toy cell's overrides from ``PAIRS`` or ``PAIRS@D_MODEL``."""
    pairs, _, width = arg.partition("@")
    return [f"data.n_pairs={pairs}"] + ([f"model.d_model={width}"] if width else [])


def child(kind: str, arg: str, threads: int) -> dict:
    """One cell in this process: seconds (CPU and wall) and peak resident memory."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if kind == "toy":
        from revcurse.config import RunConfig, apply_overrides
        from revcurse.evaluation import ToyEvaluator
        from revcurse.experiments.toy_run import build_dataset, build_model

        cfg = apply_overrides(RunConfig(), _settings(arg))
        dataset, vocab = build_dataset(cfg)
        model = build_model(cfg, len(vocab)).eval()
        timed = []
        evaluator = None
        for _ in range(2):
            cpu, wall = time.process_time(), time.perf_counter()
            evaluator = evaluator or ToyEvaluator(dataset, vocab)
            metrics = evaluator(model)
            timed.append((time.process_time() - cpu, time.perf_counter() - wall))
        result = {"first_cpu": timed[0][0], "later_cpu": timed[1][0],
                  "reverse": metrics["reverse_candidate_accuracy"]}  # fmt: skip
    elif kind == "train":  # the pieces fit() runs each step: the order's rows, the loss, backward
        from revcurse.config import RunConfig, apply_overrides
        from revcurse.data.tokenize import training_batch
        from revcurse.experiments.toy_run import build_dataset, build_model, loss_of
        from revcurse.training import DataOrder, select

        cfg = apply_overrides(RunConfig(), _settings(arg))
        dataset, vocab = build_dataset(cfg)
        model = build_model(cfg, len(vocab))
        data = training_batch(dataset, vocab, cfg.objective, cfg.train.maskable)
        generator = torch.Generator().manual_seed(0)
        order, loss = DataOrder(len(data.ids), cfg.train.batch_size, generator), loss_of(cfg, vocab)
        cpu = []
        for _ in range(TRAIN_STEPS):
            start = time.process_time()
            batch = select(data, order.next(), torch.device("cpu"))
            loss(model, batch, generator).backward()
            cpu.append(time.process_time() - start)
        result = {"step_cpu": sorted(cpu)[len(cpu) // 2], "rows": len(batch.ids)}
    else:
        from revcurse.config import FinetuneConfig, apply_overrides
        from revcurse.experiments.finetune import run_evaluation

        family, _, facts = arg.partition("@")
        cfg = apply_overrides(FinetuneConfig(), [
            f"model.family={family}", "eval.n_mc=8", "data.dataset=facts", f"data.path={facts}",
            "data.max_eval=0", "probe.enabled=false"])  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            run_evaluation(cfg, Path(out) / "warm-up")  # imports and first calls, same both sides
            cpu, wall = time.process_time(), time.perf_counter()
            summary = run_evaluation(cfg, Path(out) / "run")
            result = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                      "splits": summary["splits"]}  # fmt: skip
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _write_facts(path: Path, n: int) -> None:
    """Parent–Child's first ``n`` facts as a facts file: small enough that each split
    is evaluated whole, so both sides rank the very same candidates (a split cut to its first
    queries draws them differently since commit 7b3c6b8, from the whole split)."""
    import dataclasses

    from revcurse.config import TextDataConfig
    from revcurse.data.facts import write_facts
    from revcurse.data.text_datasets import as_facts

    facts = as_facts(TextDataConfig(dataset="parent-child"))
    write_facts(path, dataclasses.replace(facts, facts=facts.facts[:n]))


def _cell(src: Path, kind: str, arg: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    return in_child(__file__, kind, arg, str(threads), env=env)


def run(pairs: tuple[int, ...] = PAIRS) -> str:
    start = time.perf_counter()
    after = HERE.parent / "src"
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), BEFORE],
                       cwd=HERE, check=True)  # fmt: skip
        try:
            before = worktree / "src"
            toy = {}
            for i, n in enumerate(pairs):
                order = [("before", before), ("after", after)]
                for name, src in order if i % 2 == 0 else reversed(order):
                    toy[name, n] = _cell(src, "toy", str(n), 1)
                    toy[name, "train", n] = _cell(src, "train", str(n), 1)
            for i, width in enumerate(D_MODELS):
                order = [("before", before), ("after", after)]
                arg = f"{WIDTH_PAIRS}@{width}"
                for name, src in order if i % 2 == 0 else reversed(order):
                    toy[name, "width", width] = _cell(src, "toy", arg, 1)
                    toy[name, "train-width", width] = _cell(src, "train", arg, 1)
            hf = {}
            for n in HF_FACTS:
                facts = Path(tmp) / f"facts{n}.jsonl"
                _write_facts(facts, n)
                for family in ("llama", "llada"):
                    for name, src, threads in (("before", before, 0), ("after", after, 1),
                                               ("before, 1 thread", before, 1)):  # fmt: skip
                        hf[name, family, n] = _cell(src, "hf", f"{family}@{facts}", threads)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=HERE,
                           check=False)  # fmt: skip
    lines = [
        "## Evaluation against the number of facts, and `revcurse evaluate` (before/after)",
        "",
        f"Before: commit `{BEFORE}`; after: this commit; each cell its own process, run in "
        "alternating order. Toy: an untrained default MDM, one thread.",
        "",
        "| pairs | first call CPU s (before / after) | later call CPU s (before / after) | "
        "speed-up (later) | peak memory MiB (before / after) | same reverse accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for n in pairs:
        b, a = toy["before", n], toy["after", n]
        lines.append(
            f"| {n:,} | {b['first_cpu']:.2f} / {a['first_cpu']:.2f} | {b['later_cpu']:.3f} / "
            f"{a['later_cpu']:.3f} | {b['later_cpu'] / a['later_cpu']:.1f}x | "
            f"{b['rss_mib']:,.0f} / {a['rss_mib']:,.0f} | "
            f"{'yes' if b['reverse'] == a['reverse'] else 'NO'} |"
        )
    lines += [
        "",
        f"A training step of the same toy at the default `train.batch_size` (0), median of "
        f"{TRAIN_STEPS}: before, the whole set every step; after, the whole set up to 1,024 rows "
        "and shuffled batches of 1,024 beyond (`training.FULL_BATCH_MAX`).",
        "",
        "| pairs | rows per step (before / after) | CPU s per step (before / after) | "
        "peak memory MiB (before / after) |",
        "|---|---|---|---|",
    ]
    for n in pairs:
        b, a = toy["before", "train", n], toy["after", "train", n]
        lines.append(f"| {n:,} | {b['rows']:,} / {a['rows']:,} | {b['step_cpu']:.3f} / "
                     f"{a['step_cpu']:.3f} | {b['rss_mib']:,.0f} / {a['rss_mib']:,.0f} |")  # fmt: skip
    lines += [
        "",
        f"Against the width, at {WIDTH_PAIRS:,} pairs (the toy's d_model is 64): a later "
        "evaluation call and a training step at the default batch, CPU seconds and peak memory.",
        "",
        "| d_model | evaluation CPU s (before / after) | speed-up | training step CPU s "
        "(before / after) | peak memory MiB, evaluation (before / after) | same reverse "
        "accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for width in D_MODELS:
        b, a = toy["before", "width", width], toy["after", "width", width]
        tb, ta = toy["before", "train-width", width], toy["after", "train-width", width]
        lines.append(
            f"| {width} | {b['later_cpu']:.3f} / {a['later_cpu']:.3f} | "
            f"{b['later_cpu'] / a['later_cpu']:.1f}x | {tb['step_cpu']:.3f} / "
            f"{ta['step_cpu']:.3f} | {b['rss_mib']:,.0f} / {a['rss_mib']:,.0f} | "
            f"{'yes' if b['reverse'] == a['reverse'] else 'NO'} |"
        )
    _figure(toy, pairs, HERE / "eval_scaling.png")
    (HERE / "eval_scaling.json").write_text(json.dumps(
        [{"key": list(k), "cell": v} for k, v in toy.items()], indent=1) + "\n")  # fmt: skip
    lines += [
        "",
        "The memory floor (about 380 MiB) is the interpreter with torch loaded. Evaluation ranks "
        "every query against every entity of its side, 3 x N queries x N candidates, so its cost "
        "grows with their product (N^2) however it is batched: it is now linear in the pairs "
        "scored, with memory bounded by the batch (256 queries x the vocabulary). A training "
        "step at the default batch is bounded by 1,024 rows.",
        "",
        "![evaluation and training against pairs and width](benchmarks/eval_scaling.png)",
    ]
    lines += [
        "",
        "`revcurse evaluate` of a tiny random Hugging Face model (Parent–Child's first "
        f"{' and '.join(map(str, HF_FACTS))} facts as a facts file, every split evaluated whole, "
        "10 candidates per query, 8 Monte-Carlo draws for the MDM, probes off):",
        "",
        "| model | facts | before (default threads) wall / CPU s | before, 1 thread wall / CPU s "
        "| after (train.threads = 1) wall / CPU s | speed-up, wall (vs before / vs before 1 thread) "
        "| same records |",
        "|---|---|---|---|---|---|---|",
    ]
    for family in ("llama", "llada"):
        for n in HF_FACTS:
            b, b1, a = (hf[k, family, n] for k in ("before", "before, 1 thread", "after"))
            same = _same_splits(b["splits"], a["splits"])
            lines.append(
                f"| {family} | {n} | {b['wall']:.2f} / {b['cpu']:.2f} | {b1['wall']:.2f} / "
                f"{b1['cpu']:.2f} | {a['wall']:.2f} / {a['cpu']:.2f} | {b['wall'] / a['wall']:.1f}x"
                f" / {b1['wall'] / a['wall']:.1f}x | {same} |"
            )
    lines += [
        "",
        "Same records: every split's metrics agree (ranks, generations, rates; log-probabilities "
        "to float rounding, since rows padded into one batch round differently in float32).",
        "",
        f"(measured in {time.perf_counter() - start:.0f} s)",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _figure(toy: dict, pairs: tuple[int, ...], path: Path) -> None:
    """CPU seconds and peak memory of evaluation (a later call) and a training step, before
    (dashed) and after (solid): against pairs (top row) and against d_model at
    :data:`WIDTH_PAIRS` pairs (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        NullFormatter,
        NullLocator,
    )

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2))
    rows = ((pairs, "", "train", "pairs (facts)"),
            (D_MODELS, "width", "train-width", f"d_model (at {WIDTH_PAIRS:,} pairs)"))  # fmt: skip
    for (xs, evaluation, training, xlabel), (ax_t, ax_m) in zip(rows, axes, strict=True):
        for what, colour, marker, key, kind in (
            ("evaluation", "C0", "o", "later_cpu", evaluation),
            ("training step", "C1", "s", "step_cpu", training),
        ):
            for name, style in (("before", "--"), ("after", "-")):
                cells = [toy[(name, kind, x) if kind else (name, x)] for x in xs]
                label = f"{what}, {name}"
                ax_t.plot(xs, [c[key] for c in cells], style, color=colour, marker=marker,
                          label=label)  # fmt: skip
                ax_m.plot(xs, [c["rss_mib"] / 1024 for c in cells], style, color=colour,
                          marker=marker, label=label)  # fmt: skip
        for ax, ylabel in ((ax_t, "CPU seconds (one thread)"), (ax_m, "peak memory (GiB)")):
            ax.set_xscale("log")
            ys = [y for line in ax.get_lines() for y in line.get_ydata()]
            if max(ys) / min(ys) > 3:  # a narrow range reads better on a linear axis
                ax.set_yscale("log")
                steps = (1.0,) if max(ys) / min(ys) > 100 else (1.0, 2.0, 5.0)  # not crowded
                ax.yaxis.set_major_locator(LogLocator(subs=steps))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
            # the measured sizes as plain numbers (log-axis labels like 3x10^1 collide)
            ax.xaxis.set_major_locator(FixedLocator(xs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax_t.set_title("time per call / per step")
        ax_m.set_title("peak resident memory of the process")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _same_splits(before: dict, after: dict) -> str:
    for split, b in before.items():
        a = after[split]
        for key, value in b.items():
            other = a.get(key)
            if isinstance(value, float) and isinstance(other, float):
                if abs(value - other) > 1e-6 * max(1.0, abs(value)):
                    return f"NO ({split} {key})"
            elif value != other:
                return f"NO ({split} {key})"
    return "yes"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "ARG", "THREADS"))
    parser.add_argument("--pairs", default=",".join(map(str, PAIRS)))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
    else:
        run(tuple(int(p) for p in args.pairs.split(",")))
