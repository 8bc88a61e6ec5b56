"""Benchmark: what ``train.compile`` (torch.compile, inductor) gains on the bridge's deep slice.

The deep slice of ``reproduce bridge`` (and the cells of ``entity-length`` / ``entity-masking``)
trains two-layer, four-head toy models for 30,000 full-batch steps: the longest toy runs
revcurse publishes. Each cell here is a whole ``revcurse`` toy training run
(:func:`revcurse.experiments.toy_run.train`, evaluation and probes off) in a process of its own,
compiled or not, at two lengths; the difference of the two lengths is the steady per-step cost,
the rest the fixed cost (start-up, and for the compiled run its compilation). One thread, cells in
alternating order. The break-even is the run length above which compiling saves time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHORT, LONG = 200, 1200
CELLS = {"MDM, 2-token entities": ["model.causal=false", "data.entity_tokens=2"],
         "ARM, 2-token entities": ["model.causal=true", "data.entity_tokens=2"]}  # fmt: skip
DEEP = ["model.n_layers=2", "model.n_heads=4", "train.eval_every=0", "probe.enabled=false",
        "train.checkpoint_every=0"]  # fmt: skip


def child(sets: list[str]) -> float:
    """Wall seconds of one whole training run with these overrides, in this process."""
    import torch

    from revcurse.config import RunConfig, apply_overrides
    from revcurse.experiments.toy_run import train

    torch.set_num_threads(1)
    cfg = apply_overrides(RunConfig(), sets)
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def _cell(sets: list[str]) -> float:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(sets)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def run() -> str:
    start = time.perf_counter()
    lines = [
        "## `train.compile` on the bridge's deep slice (two layers, four heads, full batch)",
        "",
        f"Whole toy training runs of {SHORT} and {LONG} steps, each in its own process, one "
        "thread; per step = the difference of the two lengths over their difference in steps; "
        "fixed = the rest (start-up, final evaluation, and compilation when compiled).",
        "",
        "| cell | ms per step: eager / compiled | speed-up per step | fixed s: eager / compiled "
        "| break-even (steps) | 30,000 steps, min: eager / compiled |",
        "|---|---|---|---|---|---|",
    ]
    for name, sets in CELLS.items():
        t = {}
        for i, compiled in enumerate((False, True, True, False)):  # alternating
            for steps in (SHORT, LONG) if i % 2 == 0 else (LONG, SHORT):
                t[compiled, steps] = _cell([*DEEP, *sets, f"train.steps={steps}",
                                            f"train.compile={str(compiled).lower()}"])  # fmt: skip
        per = {c: (t[c, LONG] - t[c, SHORT]) / (LONG - SHORT) for c in (False, True)}
        fixed = {c: t[c, SHORT] - SHORT * per[c] for c in (False, True)}
        saved = per[False] - per[True]
        even = f"{(fixed[True] - fixed[False]) / saved:,.0f}" if saved > 0 else "never"
        full = {c: (fixed[c] + 30_000 * per[c]) / 60 for c in (False, True)}
        lines.append(
            f"| {name} | {per[False] * 1e3:.2f} / {per[True] * 1e3:.2f} | "
            f"{per[False] / per[True]:.2f}x | {fixed[False]:.1f} / {fixed[True]:.1f} | {even} | "
            f"{full[False]:.1f} / {full[True]:.1f} |"
        )
    lines += ["", f"(measured in {time.perf_counter() - start:.0f} s)"]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(child(json.loads(args.child)))
    else:
        run()
