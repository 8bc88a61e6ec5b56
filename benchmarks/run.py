"""Run every benchmark and rewrite BENCHMARKS.md (``python benchmarks/run.py [--quick]``).

Each benchmark measures its variants side by side in this one run and reports ratios, so the file
always compares numbers taken on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import evaluation  # noqa: E402
import lora_step  # noqa: E402
import per_example  # noqa: E402
import probe_overhead  # noqa: E402
import sweep_overhead  # noqa: E402
import toy_scaling  # noqa: E402
import train_step  # noqa: E402
from common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no end-to-end toy run")
    parser.add_argument("--out", type=Path, default=HERE.parent / "BENCHMARKS.md")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        "# Benchmarks",
        "",
        f"Written by `python benchmarks/run.py` on {stamp}.",
        "",
        f"Machine: {machine()}.",
        "",
        train_step.run(repeats=repeats + 2),
        "",
        per_example.run(repeats=repeats + 2),
        "",
        lora_step.run(repeats=repeats + 2),
        "",
        probe_overhead.run(repeats=repeats),
        "",
        evaluation.run(repeats=repeats),
        "",
        sweep_overhead.run(),
        "",
        toy_scaling.run(end_to_end=not args.quick),
    ]
    args.out.write_text("\n".join(sections) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
