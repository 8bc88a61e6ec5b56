"""Benchmark: end-to-end ``revcurse reproduce toy`` wall time, and how one model's training time
scales with the number of pairs and with d_model (a plot: benchmarks/toy_scaling.png).

The scaling runs train one MDM for 300 steps without probes and report seconds per step, so the
full 3000-step time is ten times that; the end-to-end run is the real command with its defaults.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from revcurse.config import RunConfig, ToyExperimentConfig, apply_overrides  # noqa: E402
from revcurse.experiments.toy_run import train  # noqa: E402

HERE = Path(__file__).resolve().parent
PAIRS = [26, 100, 400, 1600, 10_000]
WIDTHS = [32, 64, 128, 256]
STEPS = 300


def per_step(overrides: list[str]) -> float:
    cfg = apply_overrides(RunConfig(), [*overrides, f"train.steps={STEPS}", "probe.enabled=false",
                                        "train.eval_every=0"])  # fmt: skip
    return train(cfg)["train_seconds"] / STEPS


def run(end_to_end: bool = True) -> str:
    torch.set_num_threads(1)
    lines = ["## `revcurse reproduce toy` end to end, and scaling", ""]
    if end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "revcurse", "reproduce", "toy", "--out",
                            f"{tmp}/toy", "--no-progress"], check=True, capture_output=True)  # fmt: skip
            wall = time.perf_counter() - start
        cfg = ToyExperimentConfig()
        models = len(cfg.families) * len(cfg.seeds)
        lines += [f"Default command ({models} models x {cfg.train.steps} steps, probes every "
                  f"{cfg.probe.every}, {cfg.workers} workers, report): **{wall:.1f} s** wall "
                  f"(target < 180 s: {'met' if wall < 180 else 'NOT met'}).", ""]  # fmt: skip
    pairs = {n: per_step([f"data.n_pairs={n}"]) for n in PAIRS}
    widths = {d: per_step([f"model.d_model={d}"]) for d in WIDTHS}
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(PAIRS, [pairs[n] * 3000 for n in PAIRS], marker="o")
    a.set_xscale("log"), a.set_yscale("log")
    a.set_xlabel("number of pairs (default batch)"), a.set_ylabel("s per model (3000 steps)")
    b.plot(WIDTHS, [widths[d] * 3000 for d in WIDTHS], marker="o", color="tab:orange")
    b.set_xscale("log", base=2), b.set_yscale("log")
    b.set_xlabel("d_model (100 pairs)"), b.set_ylabel("s per model (3000 steps)")
    fig.suptitle("Toy MDM training time on one core (measured at 300 steps, x10)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "toy_scaling.png", dpi=110)
    lines += [
        "| pairs (d_model 64) | s / step | s / model (3000 steps) |", "|---|---|---|",
        *[f"| {n:,} | {pairs[n] * 1e3:.2f} ms | {pairs[n] * 3000:.1f} |" for n in PAIRS],
        "",
        "| d_model (100 pairs) | s / step | s / model (3000 steps) |", "|---|---|---|",
        *[f"| {d} | {widths[d] * 1e3:.2f} ms | {widths[d] * 3000:.1f} |" for d in WIDTHS],
        "",
        "Up to 1,024 rows the default batch is the whole set, and past a few hundred pairs the",
        "time per step grows with the square of the pairs: the batch and the vocabulary (two",
        "entities per pair) both grow with them, so the unembedding and its softmax cost",
        "O(pairs^2). Beyond 1,024 rows the default batch stays at 1,024 rows",
        "(`training.FULL_BATCH_MAX`) and only the vocabulary keeps growing.",
        "",
        "![scaling](benchmarks/toy_scaling.png)",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
