"""Errors that reach users.

`ConfigError` (and its subclasses) mean "the input was wrong": the CLI prints the
message as one paragraph on stderr and exits with code 2, without a traceback; in
IPython and Jupyter the same paragraph is all the cell shows (`_render_traceback_`).
`TrainingInterrupted` (a KeyboardInterrupt) is a run stopped by Ctrl-C or a notebook's
stop button: it carries the run directory and the result so far.
Anything else raised during training is a crash and exits with code 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """Bad user input: a config key, a value, a file or a component name."""

    def _render_traceback_(self) -> list[str]:
        # IPython (Jupyter, Colab) shows what this returns instead of the traceback: the
        # message is the whole story, and the frames around it are trainpipe's, not the user's.
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {' '.join(str(self).split())}"]


class DataError(ConfigError):
    """A dataset file is missing, truncated or malformed."""


class StorageError(ConfigError):
    """A file could not be written: the disk is full, over quota or read-only, or the path
    cannot hold a file. Nothing already on disk was changed by the failed write."""

    def __init__(self, message: str, *, path: Path | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by an interrupt (Ctrl-C, a notebook's stop button, the signals the README
    lists). The run directory keeps its last checkpoint and `summary.json` says
    `interrupted`; `run_dir` is that directory and `result` the RunResult so far (status
    "interrupted"). A KeyboardInterrupt, so that a loop over runs stops as it would without
    trainpipe."""

    def __init__(self, run_dir: Path, result: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.result = result
        super().__init__(self.message())

    def message(self) -> str:
        stopped = (self.result.summary.get("stopped_at") if self.result is not None else None) or {}
        if stopped.get("batch"):  # a signal's stop request: saved where it stopped, mid-epoch
            return (f"interrupted at epoch {stopped['epoch']}, batch {stopped['batch']}: {self.run_dir} saved a "
                    f"checkpoint there; trainpipe.resume({str(self.run_dir)!r}) continues the run from that step.")
        done = (self.result.summary.get("epochs_run") if self.result is not None else None) or 0
        at = f" after epoch {done}" if done else " before its first epoch ended"
        return (f"interrupted{at}: {self.run_dir} keeps its last checkpoint; "
                f"trainpipe.resume({str(self.run_dir)!r}) continues the run from there.")

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[33mTrainingInterrupted\x1b[0m: {self.message()}"]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return "; did you mean X?" for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def check_output(output: str | Path | None, flag: str = "--output") -> None:
    """Refuse an empty or blank output path: it would name the current directory, where a
    run's files would be mixed with the user's."""
    if output is not None and isinstance(output, str) and not output.strip():
        raise ConfigError(f"{flag} {output!r} names no directory (an empty path would write into the current "
                          f"directory, among your files). Give a directory, e.g. {flag} runs/try1, or leave "
                          f"{flag} out for the default.")
