"""metrics.jsonl: one JSON object per epoch (and per event), always written; and its reader."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe.loop.callbacks import Callback
from trainpipe.registry import TRACKERS

if TYPE_CHECKING:
    from trainpipe.config import RunConfig
    from trainpipe.loop.trainer import Trainer


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable instead of invalid
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut short by a crash is skipped."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class JsonlTracker(Callback):
    """Appends one JSON object per epoch to metrics.jsonl.

    The file always describes the run as it stands: on resume, and after a rollback
    re-runs epochs, the lines of epochs that were undone are dropped.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._last_epoch = 0

    def _keep_up_to(self, epoch: int) -> None:
        keep = [r for r in read_metrics(self.path) if r.get("epoch", 0) <= epoch]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.path.exists():
            self._keep_up_to(trainer.state.epoch)
        self._last_epoch = trainer.state.epoch

    def on_epoch_end(self, trainer: "Trainer") -> None:
        row = {k: _json_safe(v) for k, v in trainer.state.metrics.items()}
        epoch = int(row.get("epoch", 0))
        if epoch <= self._last_epoch:  # a rollback re-runs epochs
            self._keep_up_to(epoch - 1)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._last_epoch = epoch


@TRACKERS.register("jsonl")
def jsonl(run_dir: str | Path, cfg: "RunConfig", /) -> Callback:
    """metrics.jsonl in the run directory, one line per epoch (always on)."""
    return JsonlTracker(run_dir)


# ------------------------------------------------------------------------ plots
