"""Benchmark: per-run overhead of the sweep machinery (target: < 2 s per run).

A sweep of N runs whose training is a single optimizer step (probes off), so nearly all of its wall
time is machinery: expanding the grid, spawning worker processes and importing torch there,
locking and writing run directories, the SQLite index, the summary and the report. Reported:
(sweep wall time - time spent inside train()) / N, with 2 worker processes and in-process.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from revcurse.config import SweepConfig, apply_overrides
from revcurse.experiments.sweep import run_sweep

sys.path.insert(0, __file__.rsplit("/", 1)[0])

N_RUNS = 12


def measure(workers: int) -> tuple[float, float]:
    cfg = apply_overrides(
        SweepConfig(name="overhead"),
        ["train.steps=1", "train.warmup_steps=0", "probe.enabled=false", f"workers={workers}",
         'grid={"model.positional": ["rope", "sinusoidal", "learned"], "model.causal": [false, true]}',
         "seeds=[0, 1]"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_sweep(cfg, Path(tmp) / "s", progress=False)
        wall = time.perf_counter() - start
        timing = json.loads((Path(tmp) / "s" / "timings.json").read_text())
    inside = sum(t.get("train_seconds", 0.0) for t in timing["runs"].values())
    return wall, (wall - inside / workers) / N_RUNS


def run() -> str:
    lines = [
        "## Sweep machinery overhead per run",
        "",
        f"A sweep of {N_RUNS} one-step runs (probes off): (wall - time inside train()) / runs.",
        "",
        "| workers | sweep wall (s) | overhead per run (s) | target < 2 s |",
        "|---|---|---|---|",
    ]
    for workers in (2, 1):
        wall, per_run = measure(workers)
        lines.append(
            f"| {workers} | {wall:.2f} | {per_run:.3f} | {'met' if per_run < 2 else 'NOT met'} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "With 2 workers the overhead includes spawning 2 processes and importing torch in each;",
        "the report (figures) is written once per sweep and is included, spread over the runs.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
