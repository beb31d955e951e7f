"""The run record: a run directory's status, stop reason, summary.json and process record.

`RunRecord` is the one writer of summary.json. A run opens it first thing (status
`running`, the process record; a resume only once everything has loaded), notes what it learns as it goes (device, sizes), lets it
follow the trainer, and runs inside `record.recording()`, which turns how the run ended
(the loop's stop reason, or an exception) into a status and writes the summary once
more, also when the run fails. Under DDP only rank 0's record writes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from trainpipe.errors import ConfigError, StorageError
from trainpipe.loop.stop import Status, StopReason, stop_status
from trainpipe.run import failures, rundir, signals
from trainpipe.run.result import RunResult


class RunRecord:
    def __init__(self, run_dir: Path, cfg: Any, *, main: bool = True, prior_wall_time: float = 0.0,
                 on_start: Callable[[], None] | None = None) -> None:
        """The record of `cfg`'s run in `run_dir`. `prior_wall_time` is the time the run's
        earlier processes spent (a resumed run), added to wall_time_s.

        Without `on_start` it opens at once: summary.json says `running` and process.json
        names this process. With it (a resume), nothing is written until `begin()`, which
        calls `on_start()` (recording the resume) first: a run that cannot start leaves
        every file as it was."""
        self.run_dir, self.cfg, self.main = run_dir, cfg, main
        self.summary: dict[str, Any] = {"status": str(Status.RUNNING), "name": cfg.name, "seed": cfg.seed,
                                        "run_dir": str(run_dir)}
        self.trainer: Any = None
        self._started = time.perf_counter()
        self._prior_wall_time = prior_wall_time
        self._on_start = on_start
        self._writing = False  # whether this process has started writing the run's files
        if on_start is None:
            self.begin()

    def begin(self) -> None:
        """Start writing: `on_start()` (once), then summary.json and process.json."""
        if self._writing:
            return
        if self._on_start is not None:
            self._on_start()
        self._writing = True
        self.save()
        if self.main:
            rundir.write_process(self.run_dir)

    @property
    def status(self) -> str:
        return self.summary["status"]

    def save(self) -> None:
        if self.main and self._writing:
            rundir.write_summary(self.run_dir, self.summary)

    def note(self, facts: Mapping[str, Any]) -> None:
        """Add what the run learnt (device, sizes, test metrics) to the summary and write it."""
        self.summary.update(facts)
        self.save()

    def follow(self, trainer: Any) -> None:
        """The trainer whose state (epochs, bests, skipped steps, rollbacks) the record closes with."""
        self.trainer = trainer

    def stop(self, reason: StopReason | str, error: str | None = None) -> None:
        """Record why the run stopped, and the status that gives it."""
        self.summary.update({"status": str(stop_status(reason)), "stop_reason": str(reason)})
        if error is not None:
            self.summary["error"] = error

    def finished(self, state: Any) -> None:
        """The loop ended by itself: its final metrics (`state.final`) and its stop reason; for a
        signal's stop request, where it stopped (`stopped_at`: the checkpoint resumes there)."""
        self.summary.update(state.final)
        self.stop(state.stop_reason)
        if signals.signal_of(state.stop_reason) is not None:
            self.summary["stopped_at"] = {"epoch": state.epoch + (1 if state.batch else 0), "batch": state.batch,
                                          "step": state.step}

    @contextlib.contextmanager
    def recording(self) -> Iterator[RunRecord]:
        """Around the run: an exception becomes the run's stop reason (then goes on its way),
        and the summary is written at the end, however the run ended."""
        failing = True
        try:
            yield self
            failing = False
        except KeyboardInterrupt:
            if self.status != Status.INTERRUPTED:  # else a signal's stop request, recorded by `finished`
                self.stop(signals.interrupted_reason())
            raise
        except StorageError as e:
            self.stop(StopReason.STORAGE, str(e))
            if failures.classify(e) == failures.DISK_FULL:
                self.summary["cause"] = failures.DISK_FULL
            raise resumable(e, self.run_dir) from None
        except ConfigError as e:
            self.stop(StopReason.CONFIG_ERROR, str(e))
            raise
        except Exception as e:
            if cut_short_by_interrupt(e):
                self.stop(StopReason.INTERRUPTED)
                raise KeyboardInterrupt from e
            self.stop(StopReason.ERROR, f"{type(e).__name__}: {e}")
            self._machine_failure(e)
            raise
        finally:
            self._close(failing)

    def _machine_failure(self, e: Exception) -> None:
        """Out of memory, a lost GPU: the machine's failure, not the config's (a sweep retries
        it). The stop reason names it; `cause`, the batch size and the peak memory are kept."""
        t = self.trainer
        device = getattr(t, "device", None) or self.cfg.train.device
        batch = getattr(getattr(t, "data", None), "train", None)
        mf = failures.machine_failure(e, device=device,
                                      batch_size=getattr(batch, "batch_size", None) or self.cfg.data.batch_size)
        if mf is not None:
            reason = {failures.OOM: StopReason.OOM, failures.DEVICE_LOST: StopReason.DEVICE_LOST}.get(
                mf.cause, StopReason.STORAGE)  # an OSError of a full disk that no trainpipe writer named
            self.stop(reason, mf.describe())
            self.summary.update(mf.record())

    def result(self) -> RunResult:
        """The run's results as they stand: the summary, and the history and evaluated weights
        of the trainer it follows (none when it stopped before the trainer was built)."""
        t = self.trainer
        if t is None:
            return RunResult(self.run_dir, self.summary, [], self.cfg)
        return RunResult(self.run_dir, self.summary, list(t.state.history), self.cfg, t.eval_model)

    def _close(self, failing: bool) -> None:
        if self.trainer is not None:
            self.summary.update(trainer_facts(self.trainer, self.cfg))
        self.summary["wall_time_s"] = self._prior_wall_time + (time.perf_counter() - self._started)
        try:
            self.save()
        except StorageError as e:
            if not failing:  # otherwise the error already on its way says the same
                raise resumable(e, self.run_dir) from None


def cut_short_by_interrupt(e: BaseException) -> bool:
    """An error raised while a KeyboardInterrupt unwound (torch.save's zip writer, closed
    halfway through a checkpoint, raises its own RuntimeError on the way out): the run was
    interrupted, it did not crash. The file being written was a temporary one."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__context__
    return False


def bests(state: Any, monitor: str) -> dict[str, Any]:
    """The run's best epoch and value of the monitored metric, and how many epochs ran."""
    return {"best_epoch": state.best_epoch, "epochs_run": state.epoch, f"best/{monitor}": state.best_metric}


def trainer_facts(trainer: Any, cfg: Any) -> dict[str, Any]:
    """What the summary says of the loop, however it ended: bests, epochs, the loop's non-finite handling."""
    state = trainer.state
    out = bests(state, cfg.train.monitor)
    if cfg.train.on_nonfinite == "skip_step":
        out["skipped_steps"] = state.skipped_steps
    if state.rollbacks:
        out.update({"rollbacks": state.rollbacks, "lr_factor": trainer.schedule.factor("rollback")})
    return out


def resumable(e: StorageError, run_dir: Path) -> StorageError:
    """The storage error, plus what the user does next: checkpoints are replaced only by a
    complete new file, so the last one written is intact."""
    return StorageError(f"{e} The run stopped; its last complete checkpoint in {run_dir / rundir.CHECKPOINTS} "
                        f"is intact: free some space, then `{rundir.resume_command(run_dir)}` continues the run.",
                        path=e.path, errno=e.errno)
