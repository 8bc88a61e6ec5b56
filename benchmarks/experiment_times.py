"""Benchmark record: how long each published named experiment takes at 5 seeds on 2 cores.

Nothing is timed here. Every published experiment (``docs/results/<name>/``) keeps the seconds
each of its models took in ``timings.json``, measured by the run itself while the experiment's
other worker shared the machine; their sum is the one-thread work the experiment needs, and with
``W`` workers on ``W`` cores it takes ``sum / W`` of wall time and the tail of its last model.
That time at 2 workers is compared with a named experiment's 60-minute target on 2 cores, beside
the wall time the publishing run recorded (an older sweep's record holds its last sitting alone).
The machine is the one that published each experiment (an Intel Xeon or an AMD EPYC, 2 cores
each; the records do not say which).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "docs" / "results"
TARGET_MIN = 60.0
# the named experiments (`revcurse reproduce NAME`) whose results are published, in the order of
# docs/experiments.md; the toy reproduction records its models' wall time as a whole
NAMED = (
    "toy", "pe-ablation", "objective", "distance", "bridge", "entity-length",
    "objective-attention", "objective-attention-entities", "entity-masking", "weight-decay",
    "parent-child", "person-description",
)  # fmt: skip


def model_seconds(timings: dict) -> float | None:
    """The one-thread seconds of every model summed (training, probes, evaluation), or None when
    the record keeps only the experiment's wall time."""
    runs = timings.get("runs")
    if not runs:
        return None
    # a probe's seconds may be recorded twice, at the top and as "probe.probe_seconds"
    return sum(
        v
        for run in runs.values()
        for k, v in run.items()
        if k.endswith("_seconds") and "." not in k
    )


def workers(folder: Path, timings: dict) -> int:
    """The worker count the publishing run used: recorded, else its command's (default 2)."""
    if "workers" in timings:
        return int(timings["workers"])
    found = re.search(r"--workers\s+(\d+)", (folder / "command.txt").read_text())
    return int(found.group(1)) if found else 2


def run() -> str:
    rows = []
    for name in NAMED:
        folder = RESULTS / name
        timings = json.loads((folder / "timings.json").read_text())
        work = model_seconds(timings)
        wall = timings.get("wall_seconds", timings.get("train_wall_seconds"))
        at_two = None if work is None else work / 2 / 60
        verdict = (
            "not recorded" if at_two is None
            else "yes" if at_two <= 0.9 * TARGET_MIN
            else "at the limit" if at_two <= 1.1 * TARGET_MIN
            else "no"
        )  # fmt: skip
        rows.append([
            name, str(len(timings.get("runs") or {}) or "n/a"),
            "n/a" if work is None else f"{work / 60:.0f}",
            f"{wall / 60:.0f} ({workers(folder, timings)})" if wall else "n/a",
            "n/a" if at_two is None else f"{at_two:.0f}", verdict,
        ])  # fmt: skip
    header = ["experiment", "models", "model-minutes summed (one thread each)",
              "wall min recorded (workers)", "at 2 workers, min (summed / 2)",
              f"within {TARGET_MIN:.0f} min"]  # fmt: skip
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    return (
        "## Named experiments at 5 seeds on 2 cores (from their published records)\n\n"
        "Nothing re-timed: each published experiment's `timings.json` (docs/results/NAME/) holds "
        "the seconds each model took, measured while the experiment's other worker shared the "
        "machine (the machine that published each, a Xeon or an EPYC of 2 cores; the records do "
        "not name it); summed and halved, they are the wall time of 2 workers on 2 cores, less the tail where one "
        "worker waits for the other's last model (the limit is read within 10%). "
        "The recorded wall time is the publishing run's: a sweep published before sweeps "
        "summed their sittings records its last sitting only (so a few minutes for one resumed "
        "at its end), and a from-scratch experiment published before it recorded each model's "
        "seconds has its wall time alone. A model another experiment trained and this one copied "
        "(`--reuse-runs`) counts here as if trained again.\n\n" + table
    )


if __name__ == "__main__":
    print(run())
