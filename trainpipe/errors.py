"""Errors that reach users.

`ConfigError` (and its subclasses) mean "the input was wrong": the CLI prints the
message as one paragraph on stderr and exits with code 2, without a traceback.
Anything else raised during training is a crash and exits with code 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class ConfigError(Exception):
    """Bad user input: a config key, a value, a file or a component name."""


class DataError(ConfigError):
    """A dataset file is missing, truncated or malformed."""


class StorageError(ConfigError):
    """A file could not be written: the disk is full, over quota or read-only, or the path
    cannot hold a file. Nothing already on disk was changed by the failed write."""

    def __init__(self, message: str, *, path: Path | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return "; did you mean X?" for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""
