"""User-facing errors.

Every problem caused by the user's input (a config value, a dataset line, a missing file, a run
directory that already exists) raises :class:`RevcurseError` with a one-line message naming the
file, line or field and what was expected. The CLI prints it as ``error: <message>`` and exits with
:data:`EXIT_USAGE`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class RevcurseError(Exception):
    """An error the user can fix; its message is a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ConfigError(RevcurseError):
    """A config file, key or value is invalid."""
