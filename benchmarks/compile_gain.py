"""Benchmark: what ``train.compile`` (torch.compile, inductor) gains on the bridge's deep slice.

The deep slice of ``reproduce bridge`` (and the cells of ``entity-length`` / ``entity-masking``)
trains two-layer, four-head toy models for 30,000 full-batch steps: the longest toy runs
revcurse publishes. Each cell is a process that runs two whole ``revcurse`` toy trainings
(:func:`revcurse.experiments.toy_run.train`, evaluation and probes off), eager or compiled: a
first of ``SHORT`` steps (its wall time holds the start-up, and for the compiled model its
compilation) and then one of ``LONG`` steps, whose training loop gives the steady cost per step
(the compiled graphs are reused: the second model has the first one's shapes). The fixed cost is
the first run's wall less its steps at the steady rate. One thread; eager and compiled processes
alternate, ``REPEATS`` each, medians reported. The break-even is the run length above which
compiling saves time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from common import overrides_cell, overrides_main

HERE = Path(__file__).resolve().parent
SHORT, LONG, REPEATS = 100, 1000, 2
CELLS = {"MDM, 2-token entities": ["model.causal=false", "data.entity_tokens=2"],
         "ARM, 2-token entities": ["model.causal=true", "data.entity_tokens=2"]}  # fmt: skip
DEEP = ["model.n_layers=2", "model.n_heads=4", "train.eval_every=0", "probe.enabled=false",
        "train.checkpoint_every=0"]  # fmt: skip


def child(sets: list[str]) -> dict[str, float]:
    """The two runs of one cell in this process: the first's wall seconds, the second's loop."""
    import torch

    from revcurse.config import RunConfig, apply_overrides
    from revcurse.experiments.toy_run import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    train(apply_overrides(RunConfig(), [*sets, f"train.steps={SHORT}"]))
    first = time.perf_counter() - start
    steady = train(apply_overrides(RunConfig(), [*sets, f"train.steps={LONG}"]))
    return {"first": first, "per_step": steady["train_seconds"] / LONG}


def run() -> str:
    start = time.perf_counter()
    lines = [
        "## `train.compile` on the bridge's deep slice (two layers, four heads, full batch)",
        "",
        f"Per cell, one process runs {SHORT} steps (start-up and compilation) and then {LONG} "
        f"steps (the steady rate); one thread; eager and compiled processes alternate, "
        f"{REPEATS} each, medians.",
        "",
        "| cell | ms per step: eager / compiled | speed-up per step | fixed s: eager / compiled "
        "| break-even (steps) | 30,000 steps, min: eager / compiled |",
        "|---|---|---|---|---|---|",
    ]
    for name, sets in CELLS.items():
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for i in range(2 * REPEATS):
            compiled = i % 4 in (1, 2)  # eager, compiled, compiled, eager, ...
            runs[compiled].append(
                overrides_cell(__file__, [*DEEP, *sets, f"train.compile={str(compiled).lower()}"])
            )
        per = {c: statistics.median(r["per_step"] for r in runs[c]) for c in runs}
        fixed = {c: statistics.median(r["first"] - SHORT * per[c] for r in runs[c]) for c in runs}
        saved = per[False] - per[True]
        even = f"{max(0.0, fixed[True] - fixed[False]) / saved:,.0f}" if saved > 0 else "never"
        full = {c: (fixed[c] + 30_000 * per[c]) / 60 for c in (False, True)}
        lines.append(
            f"| {name} | {per[False] * 1e3:.2f} / {per[True] * 1e3:.2f} | "
            f"{per[False] / per[True]:.2f}x | {fixed[False]:.1f} / {fixed[True]:.1f} | {even} | "
            f"{full[False]:.1f} / {full[True]:.1f} |"
        )
    lines += [
        "",
        "Compiling pays on runs longer than the break-even. It stays off by default: a compiled "
        "run equals the eager one only to float rounding (tests/test_training.py states the "
        "tolerance), and the published experiments reproduce bit for bit on the same machine "
        "and software as they were trained: eagerly, but for Person–Description, trained "
        "compiled (its command says so); turn it on (`--set train.compile=true`) for new long "
        "runs.",
    ]
    lines += ["", f"(measured in {time.perf_counter() - start:.0f} s)"]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    overrides_main(__doc__, child, run)
