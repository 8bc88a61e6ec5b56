"""Shared helpers of the benchmarks: machine description and interleaved side-by-side timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of each variant, run in alternating order ``repeats`` times.

    Alternating (A B, B A, A B, ...) rather than all-A-then-all-B keeps slow drifts of the machine
    (thermal, other load) from favouring one variant.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def in_child(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """``python script --child ARGS`` in a process of its own (its peak memory, compilation and
    thread setting its own), failing loudly; the JSON object on its last line of output."""
    done = subprocess.run([sys.executable, script, "--child", *args], env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def overrides_cell(script: str, sets: list[str]) -> dict:
    """One cell of a benchmark whose cells are lists of dotted overrides: :func:`in_child` of
    ``script`` with ``sets`` as JSON (read back by :func:`overrides_main`)."""
    return in_child(script, json.dumps(sets))


def overrides_main(doc: str, child: Callable[[list[str]], dict], run: Callable[[], object]) -> None:
    """The command line of such a benchmark: ``--child JSON`` runs one cell in this process and
    prints its result as JSON (the last line :func:`in_child` reads); without it, the whole run."""
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
    else:
        run()
