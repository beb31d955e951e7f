"""metrics.jsonl: one JSON object per epoch, always written (read with `rundir.read_metrics`)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe import files
from trainpipe.loop.callbacks import Callback
from trainpipe.run import rundir
from trainpipe.registry import TRACKERS

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.loop.trainer import Trainer


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable instead of invalid
    return v


class JsonlTracker(Callback):
    """Appends one JSON object per epoch to metrics.jsonl.

    The file always describes the run as it stands: on resume, and after a rollback
    re-runs epochs, the lines of epochs that were undone are dropped.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / rundir.METRICS
        self._last_epoch = 0

    def _keep_up_to(self, epoch: int) -> None:
        keep = [r for r in rundir.read_jsonl(self.path) if r.get("epoch", 0) <= epoch]
        files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.path.exists():
            self._say_cut_lines(trainer.state.epoch)
            self._keep_up_to(trainer.state.epoch)
        self._last_epoch = trainer.state.epoch

    def _say_cut_lines(self, epoch: int) -> None:
        """A resume drops lines that a stopped process left cut short: say so, and whether an
        epoch's row is lost for good (one the checkpoint had already passed)."""
        cut = rundir.unreadable_lines(self.path)
        if not cut:
            return
        have = {r.get("epoch") for r in rundir.read_jsonl(self.path)}
        lost = [e for e in range(1, epoch + 1) if e not in have]
        lines = ", ".join(map(str, cut))
        print(f"warning: {self.path}: line{'s' if len(cut) > 1 else ''} {lines} cut short (a process stopped while "
              f"writing {'them' if len(cut) > 1 else 'it'}) and dropped; training continues after epoch {epoch}, so "
              f"later epochs are logged anew"
              + (f"; the rows of epochs {', '.join(map(str, lost))} are lost." if lost else "."), file=sys.stderr)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        row = {k: _json_safe(v) for k, v in trainer.state.metrics.items()}
        epoch = int(row.get("epoch", 0))
        if epoch <= self._last_epoch:  # a rollback re-runs epochs
            self._keep_up_to(epoch - 1)
        files.append_text(self.path, json.dumps(row) + "\n")
        self._last_epoch = epoch


@TRACKERS.register("jsonl")
def jsonl(run_dir: str | Path, cfg: "RunConfig", /) -> Callback:
    """metrics.jsonl in the run directory, one line per epoch (always on)."""
    return JsonlTracker(run_dir)
