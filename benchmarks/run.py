"""Run every benchmark and rewrite BENCHMARKS.md (``python benchmarks/run.py [--quick]``).

Each benchmark measures its variants side by side in this one run and reports ratios, so the file
always compares numbers taken on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compile_gain  # noqa: E402
import eval_scaling  # noqa: E402
import evaluation  # noqa: E402
import experiment_times  # noqa: E402
import large_vocab_eval  # noqa: E402
import lora_step  # noqa: E402
import per_example  # noqa: E402
import probe_overhead  # noqa: E402
import sweep_overhead  # noqa: E402
import text_padding  # noqa: E402
import toy_scaling  # noqa: E402
import train_step  # noqa: E402
from common import machine  # noqa: E402


def sections(repeats: int, quick: bool) -> dict[str, Callable[[], str]]:
    """Each benchmark's section of BENCHMARKS.md, by module name, in file order."""
    return {
        "train_step": lambda: train_step.run(repeats=repeats + 2),
        "per_example": lambda: per_example.run(repeats=repeats + 2),
        "lora_step": lambda: lora_step.run(repeats=repeats + 2),
        "probe_overhead": lambda: probe_overhead.run(repeats=repeats),
        "evaluation": lambda: evaluation.run(repeats=repeats),
        "large_vocab_eval": lambda: large_vocab_eval.run(),
        "sweep_overhead": lambda: sweep_overhead.run(),
        "toy_scaling": lambda: toy_scaling.run(end_to_end=not quick),
        "eval_scaling": lambda: eval_scaling.run(
            eval_scaling.PAIRS[:2] if quick else eval_scaling.PAIRS
        ),
        "compile_gain": lambda: compile_gain.run(),
        "text_padding": lambda: text_padding.run(),
        "experiment_times": lambda: experiment_times.run(),
    }


# sections read from the published results' records rather than timed on this machine
RECORDS = {"experiment_times"}


def splice(text: str, section: str) -> str:
    """``text`` with the section that has ``section``'s heading replaced (appended if new)."""
    heading = section.splitlines()[0]
    parts = re.split(r"(?m)^(?=## )", text)
    for i, part in enumerate(parts):
        if part.splitlines()[0] == heading:
            parts[i] = section.rstrip("\n") + "\n\n"
            return "".join(parts).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no end-to-end toy run")
    parser.add_argument("--out", type=Path, default=HERE.parent / "BENCHMARKS.md")
    parser.add_argument("--only", default="",
                        help="comma-separated benchmarks to re-measure; their sections are "
                             "replaced in --out, the rest kept (a note says when each ran)")  # fmt: skip
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    runners = sections(repeats, args.quick)
    if args.only:
        chosen = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in runners]
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {unknown}; known: {list(runners)}")
        text = args.out.read_text()
        for name in chosen:
            body = runners[name]().rstrip("\n")
            how = f"`python benchmarks/run.py --only {name}`"
            note = (f"(Rewritten from the records on {stamp}: {how}.)" if name in RECORDS
                    else f"(Re-measured alone on {stamp}: {how}; machine: {machine()}.)")  # fmt: skip
            text = splice(text, f"{body}\n\n{note}")
        args.out.write_text(text)
        print(f"rewrote {', '.join(chosen)} in {args.out}")
        return
    body = [
        "# Benchmarks",
        "",
        f"Written by `python benchmarks/run.py` on {stamp}.",
        "",
        f"Machine: {machine()}.",
    ]
    for run in runners.values():
        body += ["", run()]
    args.out.write_text("\n".join(body) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
