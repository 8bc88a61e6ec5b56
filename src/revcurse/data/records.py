"""Strict readers for dataset files: every malformed line is a one-line error with file:line and
the field, raised before anything is built (so nothing is half-written downstream)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.errors import RevcurseError


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise RevcurseError(f"{path}: dataset file not found")


def read_jsonl_records(
    path: str | Path, required: Sequence[str], nonempty: Sequence[str] = ()
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each line of a JSONL file; each record must be an object with
    string fields ``required`` (and non-blank ``nonempty`` ones)."""
    path = Path(path)
    _require_file(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is dropped
    except UnicodeDecodeError as err:
        raise RevcurseError(f"{path}: not UTF-8 text ({err.reason})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = files.loads(line)
        except json.JSONDecodeError as err:
            raise RevcurseError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise RevcurseError(
                f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
            )
        for name in required:
            if name not in record:
                raise RevcurseError(f"{path}:{lineno}: missing field '{name}'")
            if not isinstance(record[name], str):
                raise RevcurseError(
                    f"{path}:{lineno}: field '{name}': expected a string, got {record[name]!r}"
                )
        for name in nonempty:
            if not record[name].strip():
                raise RevcurseError(f"{path}:{lineno}: field '{name}': expected a non-empty string")
        yield lineno, record


def read_csv_records(
    path: str | Path, required: Sequence[str], nonempty: Sequence[str] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for each data row of a CSV file with a header naming ``required``
    (UTF-8; a byte-order mark, as spreadsheet programs write, is dropped)."""
    path = Path(path)
    _require_file(path)
    try:
        yield from _csv_rows(path, required, nonempty)
    except UnicodeDecodeError as err:
        raise RevcurseError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _csv_rows(
    path: Path, required: Sequence[str], nonempty: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise RevcurseError(f"{path}:1: header lacks column '{missing[0]}'")
        for row in reader:
            lineno = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise RevcurseError(f"{path}:{lineno}: expected {len(reader.fieldnames)} columns")
            for name in nonempty:
                if not row[name].strip():
                    raise RevcurseError(
                        f"{path}:{lineno}: field '{name}': expected a non-empty value"
                    )
            yield lineno, row
