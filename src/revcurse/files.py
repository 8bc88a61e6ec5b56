"""Atomic file writes and the layout of a run directory.

Every file a run writes goes through a temporary file in the same directory followed by
``os.replace``, so a crash (or SIGKILL) never leaves a truncated file in place: a reader sees the old
version or the new one. JSONL metrics are appended whole lines at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from revcurse.config import is_plain_name
from revcurse.errors import RevcurseError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""The mode a plainly created file would get under the process's umask (read at import).
``mkstemp`` creates its files 0600 whatever the umask; they are set to this before the rename."""


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:  # a full disk, a quota, a read-only folder
        Path(tmp).unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise RevcurseError(
            f"{path}: could not be written ({reason}); the file it would replace is intact"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
"""The names :func:`_atomic` gives its temporary files (``.NAME.`` + mkstemp's 8 characters)."""


def remove_temporaries(root: str | Path) -> int:
    """Delete the temporary files a killed writer of ours left under ``root``; the files they were
    meant to replace are intact. Only files named as :func:`_atomic` names them are touched, and
    only call it on a directory that is provably a revcurse run or experiment, where no other
    process writes."""
    removed = 0
    for tmp in Path(root).rglob(".*.tmp"):
        if TEMPORARY.match(tmp.name) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


class Busy(RevcurseError):
    """Another process holds the lock of a run directory."""


@contextlib.contextmanager
def run_lock(run_dir: Path, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a run directory's ``.lock`` file while training it.

    ``blocking`` waits for another holder (the sweep executor's workers); otherwise a held lock is
    a one-line error (two ``revcurse train --resume`` on one run). The lock dies with its process.

    When the work inside fails before writing anything but the lock (a full disk at the first
    file, say), the lock file, and the folder if this call made it, are removed again: a retry
    does not meet a folder that is "not empty" with nothing of the run in it.
    """
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    made_lock = not lock.exists()
    try:
        # O_NOFOLLOW and no O_TRUNC: a .lock that is a symlink is refused, and whatever it is,
        # locking never truncates or writes it
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise RevcurseError(f"{lock}: cannot be used as this run's lock ({err.strerror}; is it a "
                            "symlink?); remove it if it is not yours") from None  # fmt: skip
    with os.fdopen(fd, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"{run_dir}: another process is training this run") from None
        try:
            yield
        except BaseException:
            if made_lock and [p.name for p in run_dir.iterdir()] == [".lock"]:
                lock.unlink()
                if created:
                    run_dir.rmdir()
            raise
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def model_dir(out: Path, name: str, seed: int) -> Path:
    """Where an experiment of several models (``reproduce toy``, the from-scratch experiments)
    keeps model ``name``'s run of ``seed``: ``out/models/<name>-seed<seed>``."""
    return out / "models" / f"{name}-seed{seed}"


def plain_name(value: str, where: str) -> str:
    """``value`` if it is a plain name (:data:`revcurse.config.PLAIN_NAME`, the sweep name's rule
    too), else a one-line error naming ``where`` (the file:line and field). Names that become
    file names are checked where they enter, never trusted at the write."""
    if not is_plain_name(value):
        raise RevcurseError(
            f"{where}: expected a plain name (letters, digits, '_', '.', '-'; no path), "
            f"got {value!r}"
        )
    return value


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic(Path(path), lambda tmp: tmp.write_text(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic(Path(path), lambda tmp: tmp.write_bytes(data))


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (names a data file's exact content)."""
    path = Path(path)
    if not path.is_file():
        raise RevcurseError(f"{path}: file not found")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a single line (one write call, flushed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line is reported with file:line."""
    path = Path(path)
    if not path.is_file():
        raise RevcurseError(f"{path}: file not found")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(loads(line))
        except json.JSONDecodeError as err:
            raise RevcurseError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    return records


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def truncate_jsonl(path: str | Path, step: int) -> list[dict[str, Any]]:
    """Keep the records of a step-keyed JSONL file up to ``step`` (atomic rewrite); return them.

    Used when a run resumes from a checkpoint: records written after it are recomputed.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if lines and not _parses(lines[-1]):
        # A process killed while appending can leave a torn last line; it is redone on resume.
        lines = lines[:-1]
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not _parses(line):
            raise RevcurseError(f"{path}:{lineno}: invalid JSON")
        records.append(json.loads(line))
    kept = [r for r in records if r["step"] <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


class _RepeatedKey(json.JSONDecodeError):
    """A JSON object that names one key twice (``json`` keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(f"key {key!r} is repeated", "", 0)
        out[key] = value
    return out


def loads(text: str) -> Any:
    """``json.loads`` that refuses an object naming a key twice (a ``JSONDecodeError`` whose
    ``msg`` names the key): every JSON and JSONL file revcurse reads goes through it."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def read_json(path: str | Path) -> Any:
    """Read a JSON file with a one-line error naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise RevcurseError(f"{path}: file not found")
    try:
        return loads(path.read_text())
    except json.JSONDecodeError as err:
        line = "" if isinstance(err, _RepeatedKey) else f":{err.lineno}"
        raise RevcurseError(f"{path}{line}: invalid JSON ({err.msg})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Save tensors as safetensors atomically (contiguous CPU copies; shared storage is split)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(flat, str(tmp), metadata=meta))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle); a missing or corrupt file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise RevcurseError(f"{path}: checkpoint not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RevcurseError(f"{path}: not a valid safetensors file ({err})") from None
