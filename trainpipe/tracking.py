"""Where metrics go: metrics.jsonl (always), the console, and optional trackers.

Trackers are callbacks registered in `TRACKERS`; optional back ends (TensorBoard,
W&B) are imported only when a config enables them.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe.callbacks import Callback
from trainpipe.registry import TRACKERS

if TYPE_CHECKING:
    from trainpipe.engine import Trainer


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable instead of invalid
    return v


class JsonlTracker(Callback):
    """Appends one JSON object per epoch to metrics.jsonl."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"

    def on_fit_start(self, trainer: "Trainer") -> None:
        # On resume, epochs after the checkpoint were lost with the crash: drop their
        # lines so the file says exactly what the resumed run went through.
        if self.path.exists():
            keep = [l for l in self.path.read_text().splitlines()
                    if l.strip() and json.loads(l).get("epoch", 0) <= trainer.state.epoch]
            self.path.write_text("".join(l + "\n" for l in keep))

    def on_epoch_end(self, trainer: "Trainer") -> None:
        row = {k: _json_safe(v) for k, v in trainer.state.metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


@TRACKERS.register("jsonl")
def jsonl(run_dir: str | Path, /) -> Callback:
    """metrics.jsonl in the run directory, one line per epoch (always on)."""
    return JsonlTracker(run_dir)


def console_is_interactive() -> bool:
    if os.environ.get("CI"):
        return False
    try:
        from IPython import get_ipython  # noqa: F401

        if get_ipython() is not None:  # Jupyter: rich renders its live widgets there
            return True
    except ImportError:
        pass
    return sys.stdout.isatty()


class ProgressBar:
    """A rich progress bar per epoch: batches, loss, accuracy, images/s, ETA."""

    def __init__(self, epochs: int, batch_size_of: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.epochs = epochs
        self._bs = batch_size_of
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True,
        )
        self._task = None
        self._t0 = 0.0

    def start_epoch(self, epoch: int, n_batches: int) -> None:
        import time

        self._t0 = time.perf_counter()
        self._progress.start()
        self._task = self._progress.add_task("train", total=n_batches, epoch=epoch + 1, epochs=self.epochs, stats="")

    def update(self, done: int, loss_sum: Any, correct: Any, seen: int) -> None:
        import time

        rate = seen / max(time.perf_counter() - self._t0, 1e-9)
        stats = f"loss {float(loss_sum) / seen:.4f}  acc {int(correct) / seen:.4f}  {rate:,.0f} img/s"
        self._progress.update(self._task, completed=done, stats=stats)

    def end_epoch(self) -> None:
        self._progress.remove_task(self._task)
        self._progress.stop()
