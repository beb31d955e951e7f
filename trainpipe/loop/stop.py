"""Why a run stopped, and the status each reason gives it: one table for the loop, the run
record (`trainpipe.run.record`) and the trackers.

A callback stops the loop with `state.should_stop = True` and a `state.stop_reason`; the
reasons the package sets are the members of `StopReason` (a `str`, so they compare with,
and are written as, their plain names). A caller's own callback may set any other string:
such a stop counts as a completed run.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A run's `status` in summary.json."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"


class StopReason(StrEnum):
    """A run's `stop_reason` in summary.json; `status` is the status it gives the run."""

    MAX_EPOCHS = "max_epochs"  # train.epochs ran
    EARLY_STOPPING = "early_stopping"
    NON_FINITE = "non_finite_loss"  # train.on_nonfinite gave up
    PRUNED = "pruned"  # a sweep's pruner stopped the trial
    INTERRUPTED = "interrupted"  # Ctrl-C that stopped the run at once (a second one, or before training)
    SIGINT = "sigint"  # a signal's stop request, honoured at a step boundary (trainpipe.run.signals)
    SIGTERM = "sigterm"
    SIGUSR1 = "sigusr1"
    STORAGE = "storage"  # a file could not be written (disk full, ...)
    CONFIG_ERROR = "config_error"  # bad input found once the run had started
    ERROR = "error"  # any other exception
    OOM = "oom"  # out of memory (CPU or GPU): the machine's failure (`trainpipe.run.failures`)
    DEVICE_LOST = "device_lost"  # a GPU stopped answering

    @property
    def status(self) -> Status:
        return _STATUS.get(self, Status.COMPLETED)


_STATUS = {
    StopReason.NON_FINITE: Status.FAILED,
    StopReason.PRUNED: Status.PRUNED,
    StopReason.INTERRUPTED: Status.INTERRUPTED,
    StopReason.SIGINT: Status.INTERRUPTED,
    StopReason.SIGTERM: Status.INTERRUPTED,
    StopReason.SIGUSR1: Status.INTERRUPTED,
    StopReason.STORAGE: Status.FAILED,
    StopReason.CONFIG_ERROR: Status.FAILED,
    StopReason.ERROR: Status.FAILED,
    StopReason.OOM: Status.FAILED,
    StopReason.DEVICE_LOST: Status.FAILED,
}


def stop_status(reason: str | None) -> Status:
    """The status a stop reason gives a run: a caller's own reason counts as completed; no
    reason at all (the loop was cut by an exception) as failed."""
    if reason is None:
        return Status.FAILED
    try:
        return StopReason(reason).status
    except ValueError:
        return Status.COMPLETED
