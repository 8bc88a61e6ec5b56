"""Run the revcurse CLI and SIGKILL it at a point defined by the run's own progress.

Used by the crash tests instead of killing after a sleep: a kill timed by the clock lands wherever
the machine's speed puts it (after the run finished on a fast machine, before it started on a
loaded one), so whether a test exercises resuming depended on how busy the machine was.

Usage::

    python tests/progress_kill.py KILL_AT COUNT_FILE -- revcurse-args...

Every write a run makes goes through ``revcurse.files``: whole-file writes through ``_atomic``
(config, checkpoints, summaries) and metrics lines through ``append_jsonl``. Each call is one
*progress event*, numbered from 1. On event ``KILL_AT`` the process sends itself SIGKILL in the
middle of that write, the worst moment: an atomic write dies after its temporary file is complete
but before the rename; an append dies after half of its line is on disk. ``KILL_AT`` 0 never kills.
The number of events seen so far is written to ``COUNT_FILE`` (plain text) after each event, so a
reference run tells the test how many kill points a run has.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def main() -> None:
    kill_at, count_file = int(sys.argv[1]), Path(sys.argv[2])
    if sys.argv[3] != "--":
        raise SystemExit("usage: progress_kill.py KILL_AT COUNT_FILE -- ARGS...")
    cli_args = sys.argv[4:]

    from revcurse import files

    events = 0
    real_atomic = files._atomic

    def tick() -> bool:
        """Count one event; True when this one is the kill point."""
        nonlocal events
        events += 1
        count_file.write_text(str(events))
        return events == kill_at

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def atomic(path, write):
        if not tick():
            return real_atomic(path, write)

        def write_then_die(tmp):
            write(tmp)
            die()

        return real_atomic(path, write_then_die)

    def append_jsonl(path, record):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record) + "\n"
        killing = tick()
        with path.open("a") as fh:
            fh.write(line[: len(line) // 2] if killing else line)
            fh.flush()
        if killing:
            die()

    files._atomic = atomic
    files.append_jsonl = append_jsonl

    from revcurse.cli import main as cli_main

    sys.argv = ["revcurse", *cli_args]
    cli_main()


if __name__ == "__main__":
    main()
