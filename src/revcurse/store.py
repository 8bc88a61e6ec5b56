"""The index of runs and their results: one SQLite file per sweep output folder (``index.sqlite``).

One row per run, keyed by the run id (the hash of its resolved config), so registering a sweep
twice, or resuming it, never duplicates a run. Only the sweep's parent process writes, one short
transaction per change; SQLite's rollback journal makes each transaction atomic, so a SIGKILL at any
moment leaves the previous consistent state. Reports and ``revcurse runs`` read from here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from revcurse.errors import RevcurseError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    experiment  TEXT NOT NULL,
    labels      TEXT NOT NULL,   -- JSON: the swept values that tell this run apart
    config      TEXT NOT NULL,   -- JSON: the resolved RunConfig
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    summary     TEXT,            -- JSON: the run's summary (status done)
    error       TEXT,            -- one line (status failed)
    updated     REAL NOT NULL
);
"""

STATUSES = ("pending", "running", "done", "failed")


class Store:
    """Read and write the run index at ``path`` (created on first use)."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create:  # reading an existing index: never write to it (not even the schema)
            if not self.path.is_file():
                raise RevcurseError(f"{self.path}: no run index here (not a sweep output folder?)")
            try:
                with self._connect() as conn:
                    found = conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
                    ).fetchone()
            except sqlite3.DatabaseError as err:
                raise RevcurseError(f"{self.path}: not a revcurse run index ({err})") from None
            if found is None:
                raise RevcurseError(f"{self.path}: not a revcurse run index (no 'runs' table)")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as conn:
                conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise RevcurseError(f"{self.path}: not a revcurse run index ({err})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            with conn:  # one transaction: committed on success, rolled back on error
                yield conn
        finally:
            conn.close()

    def register(self, experiment: str, runs: list[tuple[str, dict, dict]]) -> None:
        """Add ``(run_id, labels, config)`` rows as pending; rows that exist are left alone."""
        now = time.time()
        with self._connect() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO runs (run_id, experiment, labels, config, status, updated) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                [
                    (rid, experiment, json.dumps(lab), json.dumps(cfg), now)
                    for rid, lab, cfg in runs
                ],
            )

    def forget(self, run_ids: list[str]) -> None:
        """Drop the rows of ``run_ids`` (runs another row of equal config stands for); their
        folders are left alone."""
        with self._connect() as conn:
            conn.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in run_ids])

    def set_status(
        self,
        run_id: str,
        status: str,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._connect() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, summary = ?, error = ?, updated = ? WHERE run_id = ?",
                (
                    status,
                    json.dumps(summary) if summary is not None else None,
                    error,
                    time.time(),
                    run_id,
                ),  # fmt: skip
            )
            if cur.rowcount != 1:
                raise KeyError(f"run {run_id} is not registered")

    def rows(
        self, experiment: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts (JSON columns decoded), ordered by run id."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if experiment is not None:
            query += " AND experiment = ?"
            args.append(experiment)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        try:
            with self._connect() as conn:
                conn.row_factory = sqlite3.Row
                records = conn.execute(query + " ORDER BY run_id", args).fetchall()
        except sqlite3.DatabaseError as err:  # a table of another shape
            raise RevcurseError(f"{self.path}: not a revcurse run index ({err})") from None
        out = []
        for r in records:
            row = dict(r)
            for key in ("run_id", "status", "labels", "config", "summary"):
                if key not in row:
                    raise RevcurseError(
                        f"{self.path}: not a revcurse run index (no column '{key}')"
                    )
            for key in ("labels", "config", "summary"):
                try:
                    row[key] = json.loads(row[key]) if row[key] is not None else None
                except (json.JSONDecodeError, TypeError):
                    raise RevcurseError(
                        f"{self.path}: run {row.get('run_id')!r}: column '{key}' is not valid JSON"
                    ) from None
            out.append(row)
        return out

    def integrity(self) -> str:
        """SQLite's own consistency check ('ok' when the file is sound)."""
        with self._connect() as conn:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]
